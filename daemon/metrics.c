/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.c - Prometheus counters and histograms of etcd 2.3's /metrics, and their text exposition. */

/*
 * The names, types, labels, help texts and buckets are etcd v2.3.8's (etcdserver/metrics.go,
 * etcdserver/etcdhttp/metrics.go, wal/metrics.go, storage/backend/metrics.go, rafthttp/metrics.go,
 * store/metrics.go, proxy/metrics.go) and client_golang's process collector, so that dashboards and
 * alert rules written against etcd2 work unchanged. Counting is the modules' business (metrics.h: plain
 * increments on the loop); this file only formats. A scrape allocates its text once (open_memstream)
 * and reads /proc/self for the process metrics; nothing here runs per request.
 */

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "metrics.h"

Metrics metrics;

#define EXP_BUCKETS(start_usec) \
        { (start_usec), (start_usec) << 1, (start_usec) << 2, (start_usec) << 3, (start_usec) << 4, \
          (start_usec) << 5, (start_usec) << 6, (start_usec) << 7, (start_usec) << 8, (start_usec) << 9, \
          (start_usec) << 10, (start_usec) << 11, (start_usec) << 12, (start_usec) << 13 }

const MetricsBuckets metrics_http_buckets = { .n = 13, .bound_usec = EXP_BUCKETS(500) };
const MetricsBuckets metrics_disk_buckets = { .n = 14, .bound_usec = EXP_BUCKETS(1000) };
const MetricsBuckets metrics_rtt_buckets = { .n = 14, .bound_usec = EXP_BUCKETS(100) };

static const char *const method_table[_METRICS_METHOD_MAX] = {
        [METRICS_METHOD_GET] = "GET",
        [METRICS_METHOD_QGET] = "QGET",
        [METRICS_METHOD_PUT] = "PUT",
        [METRICS_METHOD_POST] = "POST",
        [METRICS_METHOD_DELETE] = "DELETE",
        [METRICS_METHOD_HEAD] = "HEAD",
        [METRICS_METHOD_OTHER] = "other",
};

static const char *const store_read_table[_METRICS_STORE_READ_MAX] = {
        [METRICS_STORE_GET] = "get",
        [METRICS_STORE_GET_RECURSIVE] = "getRecursive",
};

static const char *const store_write_table[_METRICS_STORE_WRITE_MAX] = {
        [METRICS_STORE_SET] = "set",
        [METRICS_STORE_CREATE] = "create",
        [METRICS_STORE_UPDATE] = "update",
        [METRICS_STORE_DELETE] = "delete",
        [METRICS_STORE_COMPARE_AND_SWAP] = "compareAndSwap",
        [METRICS_STORE_COMPARE_AND_DELETE] = "compareAndDelete",
};

static const char *const proxy_drop_table[_METRICS_PROXY_DROP_MAX] = {
        [METRICS_PROXY_ZERO_ENDPOINTS] = "zero_endpoints",
        [METRICS_PROXY_FAILED_SENDING_REQUEST] = "failed_sending_request",
        [METRICS_PROXY_FAILED_GETTING_RESPONSE] = "failed_getting_response",
        [METRICS_PROXY_CLOSED_PREMATURELY] = "closed_prematurely",
};

static void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

static MetricsCollectFunc collect_func;
static void *collect_userdata;

MetricsMethod metrics_method_from_string(const char *method) {
        if (!method)
                return _METRICS_METHOD_INVALID;
        for (MetricsMethod m = 0; m < METRICS_METHOD_OTHER; m++)
                if (m != METRICS_METHOD_QGET && streq(method, method_table[m]))
                        return m;
        return METRICS_METHOD_OTHER;
}

const char *metrics_method_to_string(MetricsMethod m) {
        if ((int) m < 0 || m >= _METRICS_METHOD_MAX)
                return NULL;
        return method_table[m];
}

MetricsPeerRtt *metrics_peer_rtt(Metrics *m, uint64_t id) {
        for (size_t i = 0; i < m->n_rtts; i++)
                if (m->rtts[i].id == id)
                        return &m->rtts[i];
        if (m->n_rtts >= METRICS_PEERS_MAX)
                return NULL;
        m->rtts[m->n_rtts] = (MetricsPeerRtt) { .id = id };
        return &m->rtts[m->n_rtts++];
}

uint64_t metrics_now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

void metrics_set_collector(MetricsCollectFunc func, void *userdata) {
        collect_func = func;
        collect_userdata = userdata;
}

/* --- the text format ------------------------------------------------------------------------- */

static void header(FILE *f, const char *name, const char *type, const char *help) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Go's strconv.FormatFloat(v, 'g', -1, 64) for the values we write: integers exactly, fractions
 * with the shortest digits that read back the same. */
static void put_double(FILE *f, double v) {
        char buf[32];

        for (int prec = 1; prec <= 17; prec++) {
                snprintf(buf, sizeof buf, "%.*g", prec, v);
                if (strtod(buf, NULL) == v)
                        break;
        }
        fputs(buf, f);
}

static void put_seconds(FILE *f, uint64_t usec) {
        put_double(f, (double) usec / 1e6);
}

/* `labels` is the series' own labels ("" or `method="GET"`), written before le. */
static void put_histogram(FILE *f, const char *name, const char *labels, const MetricsHistogram *h,
                          const MetricsBuckets *b) {
        const char *sep = *labels ? "," : "";
        uint64_t cum = 0;

        for (unsigned i = 0; i < b->n; i++) {
                cum += h->counts[i];
                fprintf(f, "%s_bucket{%s%sle=\"", name, labels, sep);
                put_seconds(f, b->bound_usec[i]);
                fprintf(f, "\"} %" PRIu64 "\n", cum);
        }
        fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, sep, h->count);
        fprintf(f, "%s_sum%s%s%s ", name, *labels ? "{" : "", labels, *labels ? "}" : "");
        put_seconds(f, h->sum_usec);
        fprintf(f, "\n%s_count%s%s%s %" PRIu64 "\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
                h->count);
}

/* client_golang leaves out a *Vec family none of whose series exists yet. */
static bool any_nonzero(const uint64_t *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (v[i] > 0)
                        return true;
        return false;
}

static void put_method_histograms(FILE *f, const char *name, const char *help, const MetricsHistogram *h) {
        bool any = false;

        for (MetricsMethod m = 0; m < _METRICS_METHOD_MAX; m++)
                any = any || h[m].count > 0;
        if (!any)
                return;
        header(f, name, "histogram", help);
        for (MetricsMethod m = 0; m < _METRICS_METHOD_MAX; m++) {
                char labels[32];

                if (h[m].count == 0)
                        continue;
                snprintf(labels, sizeof labels, "method=\"%s\"", method_table[m]);
                put_histogram(f, name, labels, &h[m], &metrics_http_buckets);
        }
}

static void put_method_counters(FILE *f, const char *name, const char *help, const uint64_t *v) {
        if (!any_nonzero(v, _METRICS_METHOD_MAX))
                return;
        header(f, name, "counter", help);
        for (MetricsMethod m = 0; m < _METRICS_METHOD_MAX; m++)
                if (v[m] > 0)
                        fprintf(f, "%s{method=\"%s\"} %" PRIu64 "\n", name, method_table[m], v[m]);
}

static void put_status_counters(FILE *f, const char *name, const char *help,
                                const uint64_t (*v)[METRICS_N_STATUS]) {
        if (!any_nonzero(&v[0][0], _METRICS_METHOD_MAX * METRICS_N_STATUS))
                return;
        header(f, name, "counter", help);
        for (MetricsMethod m = 0; m < _METRICS_METHOD_MAX; m++)
                for (unsigned i = 0; i < METRICS_N_STATUS; i++)
                        if (v[m][i] > 0)
                                fprintf(f, "%s{code=\"%u\",method=\"%s\"} %" PRIu64 "\n", name,
                                        i + METRICS_STATUS_MIN, method_table[m], v[m][i]);
}

static void put_scalar(FILE *f, const char *name, const char *type, const char *help, uint64_t v) {
        header(f, name, type, help);
        fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void put_disk(FILE *f, const Metrics *m) {
        header(f, "etcd_disk_backend_commit_duration_seconds", "histogram",
               "The latency distributions of commit called by backend.");
        put_histogram(f, "etcd_disk_backend_commit_duration_seconds", "", &m->backend_commit,
                      &metrics_disk_buckets);
        header(f, "etcd_disk_wal_fsync_duration_seconds", "histogram",
               "The latency distributions of fsync called by wal.");
        put_histogram(f, "etcd_disk_wal_fsync_duration_seconds", "", &m->wal_fsync, &metrics_disk_buckets);
}

static void put_network(FILE *f, const Metrics *m) {
        bool rtt = false;

        for (size_t i = 0; i < m->n_rtts; i++)
                rtt = rtt || m->rtts[i].rtt.count > 0;
        if (m->n_peers == 0 && !rtt)
                return;
        header(f, "etcd_network_peer_received_bytes_total", "counter",
               "The total number of bytes received from peers.");
        for (size_t i = 0; i < m->n_peers; i++)
                fprintf(f, "etcd_network_peer_received_bytes_total{From=\"%" PRIx64 "\"} %" PRIu64 "\n",
                        m->peers[i].id, m->peers[i].received_bytes);
        if (rtt)
                header(f, "etcd_network_peer_round_trip_time_seconds", "histogram",
                       "Round-Trip-Time histogram between peers.");
        for (size_t i = 0; i < m->n_rtts; i++) {
                char labels[40];

                if (m->rtts[i].rtt.count == 0)
                        continue;
                snprintf(labels, sizeof labels, "To=\"%" PRIx64 "\"", m->rtts[i].id);
                put_histogram(f, "etcd_network_peer_round_trip_time_seconds", labels, &m->rtts[i].rtt,
                              &metrics_rtt_buckets);
        }
        header(f, "etcd_network_peer_sent_bytes_total", "counter", "The total number of bytes sent to peers.");
        for (size_t i = 0; i < m->n_peers; i++)
                fprintf(f, "etcd_network_peer_sent_bytes_total{To=\"%" PRIx64 "\"} %" PRIu64 "\n",
                        m->peers[i].id, m->peers[i].sent_bytes);
}

static void put_proxy(FILE *f, const Metrics *m) {
        if (any_nonzero(&m->proxy_dropped[0][0], _METRICS_METHOD_MAX * _METRICS_PROXY_DROP_MAX))
                header(f, "etcd_proxy_dropped_total", "counter", "Counter of requests dropped on the proxy.");
        for (MetricsMethod me = 0; me < _METRICS_METHOD_MAX; me++)
                for (MetricsProxyDrop d = 0; d < _METRICS_PROXY_DROP_MAX; d++)
                        if (m->proxy_dropped[me][d] > 0)
                                fprintf(f, "etcd_proxy_dropped_total{method=\"%s\",proxying_error=\"%s\"} %" PRIu64 "\n",
                                        method_table[me], proxy_drop_table[d], m->proxy_dropped[me][d]);
        put_status_counters(f, "etcd_proxy_handled_total",
                            "Counter of requests fully handled (by authoratitave servers)", m->proxy_handled);
        put_method_histograms(f, "etcd_proxy_handling_duration_seconds",
                              "Bucketed histogram of handling time of successful events (non-watches), by method "
                              "(GET/PUT etc.).", m->proxy_duration);
        put_method_counters(f, "etcd_proxy_requests_total", "Counter requests incoming by method.",
                            m->proxy_requests);
}

static void put_server(FILE *f, const Metrics *m) {
        put_scalar(f, "etcd_server_has_leader", "gauge", "Whether or not a leader exists. 1 is existence, 0 is not.",
                   m->has_leader);
        put_scalar(f, "etcd_server_leader_changes_seen_total", "counter", "The number of leader changes seen.",
                   m->leader_changes);
        put_scalar(f, "etcd_server_proposals_applied_total", "gauge",
                   "The total number of consensus proposals applied.", m->proposals_applied);
        put_scalar(f, "etcd_server_proposals_committed_total", "gauge",
                   "The total number of consensus proposals committed.", m->proposals_committed);
        put_scalar(f, "etcd_server_proposals_failed_total", "counter", "The total number of failed proposals seen.",
                   m->proposals_failed);
        put_scalar(f, "etcd_server_proposals_pending", "gauge", "The current number of pending proposals to commit.",
                   m->proposals_pending);
}

static void put_store(FILE *f, const Metrics *m) {
        put_scalar(f, "etcd_store_expires_total", "counter", "Total number of expired keys.", m->store_expires);
        if (any_nonzero(m->store_reads, _METRICS_STORE_READ_MAX))
                header(f, "etcd_store_reads_total", "counter",
               "Total number of reads action by (get/getRecursive), local to this member.");
        for (MetricsStoreRead a = 0; a < _METRICS_STORE_READ_MAX; a++)
                if (m->store_reads[a] > 0)
                        fprintf(f, "etcd_store_reads_total{action=\"%s\"} %" PRIu64 "\n", store_read_table[a],
                                m->store_reads[a]);
        put_scalar(f, "etcd_store_watch_requests_total", "counter",
                   "Total number of incoming watch requests (new or reestablished).", m->store_watch_requests);
        put_scalar(f, "etcd_store_watchers", "gauge", "Count of currently active watchers.", m->store_watchers);
        if (any_nonzero(m->store_writes, _METRICS_STORE_WRITE_MAX))
                header(f, "etcd_store_writes_total", "counter",
               "Total number of writes (e.g. set/compareAndDelete) seen by this member.");
        for (MetricsStoreWrite a = 0; a < _METRICS_STORE_WRITE_MAX; a++)
                if (m->store_writes[a] > 0)
                        fprintf(f, "etcd_store_writes_total{action=\"%s\"} %" PRIu64 "\n", store_write_table[a],
                                m->store_writes[a]);
}

/* --- process metrics (client_golang's process collector, from /proc/self) --------------------- */

static void put_process(FILE *f) {
        _cleanup_(fclosep) FILE *stat = NULL;
        unsigned long long utime = 0, stime = 0, starttime = 0, vsize = 0;
        long long rss = 0;
        long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
        uint64_t btime = 0;
        struct rlimit rl;
        unsigned n_fds = 0;
        DIR *d;

        stat = fopen("/proc/self/stat", "re");
        if (stat) {
                char line[1024], *p;

                /* the command may hold spaces and parentheses: fields start after the last ')' */
                if (fgets(line, sizeof line, stat) && (p = strrchr(line, ')')))
                        (void) sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                                      "%*d %*d %llu %llu %lld", &utime, &stime, &starttime, &vsize, &rss);
        }
        {
                _cleanup_(fclosep) FILE *s = fopen("/proc/stat", "re");
                char line[256];

                while (s && fgets(line, sizeof line, s))
                        if (sscanf(line, "btime %" SCNu64, &btime) == 1)
                                break;
        }
        d = opendir("/proc/self/fd");
        if (d) {
                struct dirent *de;

                while ((de = readdir(d)))
                        if (de->d_name[0] != '.')
                                n_fds++;
                n_fds--;   /* the directory's own fd */
                closedir(d);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                rl.rlim_cur = 0;
        if (ticks <= 0)
                ticks = 100;

        header(f, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        fputs("process_cpu_seconds_total ", f);
        put_double(f, (double) (utime + stime) / (double) ticks);
        fputc('\n', f);
        put_scalar(f, "process_max_fds", "gauge", "Maximum number of open file descriptors.", rl.rlim_cur);
        put_scalar(f, "process_open_fds", "gauge", "Number of open file descriptors.", n_fds);
        header(f, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        fputs("process_resident_memory_bytes ", f);
        put_double(f, (double) rss * (double) page);
        fputc('\n', f);
        header(f, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
        fputs("process_start_time_seconds ", f);
        put_double(f, (double) btime + (double) starttime / (double) ticks);
        fputc('\n', f);
        header(f, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        fputs("process_virtual_memory_bytes ", f);
        put_double(f, (double) vsize);
        fputc('\n', f);
}

int metrics_format(const Metrics *m, bool process, char **ret, size_t *ret_len) {
        char *text = NULL;
        size_t len = 0;
        FILE *f;

        assert(m);
        assert(ret);

        f = open_memstream(&text, &len);
        if (!f)
                return -ENOMEM;

        /* client_golang writes the families sorted by name */
        if (m->server)
                put_disk(f, m);
        put_status_counters(f, "etcd_http_failed_total",
                            "Counter of handle failures of requests (non-watches), by method (GET/PUT etc.) and "
                            "code (400, 500 etc.).", m->http_failed);
        put_method_counters(f, "etcd_http_received_total",
                            "Counter of requests received into the system (successfully parsed and authd).",
                            m->http_received);
        put_method_histograms(f, "etcd_http_successful_duration_seconds",
                              "Bucketed histogram of processing time (s) of successfully handled requests "
                              "(non-watches), by method (GET/PUT etc.).", m->http_duration);
        if (m->server)
                put_network(f, m);
        if (m->proxy)
                put_proxy(f, m);
        if (m->server) {
                put_server(f, m);
                put_store(f, m);
        }
        if (process)
                put_process(f);

        if (ferror(f)) {
                fclose(f);
                free(text);
                return -ENOMEM;
        }
        if (fclose(f) != 0) {
                free(text);
                return -ENOMEM;
        }
        *ret = text;
        if (ret_len)
                *ret_len = len;
        return 0;
}

int metrics_scrape(char **ret, size_t *ret_len) {
        if (collect_func)
                collect_func(&metrics, collect_userdata);
        return metrics_format(&metrics, true, ret, ret_len);
}
