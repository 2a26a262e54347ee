/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.h - the Prometheus counters and histograms of etcd 2.3's /metrics, and their text (pure but /proc). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * One process-wide set of metrics, as etcd2's are package globals registered with Prometheus' default
 * registry. Every field is owned by the event loop thread: plain increments, no locks, no allocation.
 * What another thread measures (the raft writer's synced write) reaches the loop with the results it
 * hands over already and is observed there. Label sets are fixed arrays indexed by an enum (or an HTTP
 * status), so a hook is one increment; series that were never touched are not written, as with Go's
 * *Vec types. Gauges that mirror state elsewhere (leader, indexes, watchers, peer bytes) are filled by
 * their owner just before a scrape (metrics_collect_func).
 */

typedef enum MetricsMethod {
        METRICS_METHOD_GET,
        METRICS_METHOD_QGET,     /* a quorum GET: etcdhttp's methodFromRequest() */
        METRICS_METHOD_PUT,
        METRICS_METHOD_POST,
        METRICS_METHOD_DELETE,
        METRICS_METHOD_HEAD,
        METRICS_METHOD_OTHER,    /* the proxy forwards any method: the rest share one label "other" */
        _METRICS_METHOD_MAX,
        _METRICS_METHOD_INVALID = -22,
} MetricsMethod;

/* The store's read and write actions (store/metrics.go labels). */
typedef enum MetricsStoreRead {
        METRICS_STORE_GET,
        METRICS_STORE_GET_RECURSIVE,
        _METRICS_STORE_READ_MAX,
} MetricsStoreRead;

typedef enum MetricsStoreWrite {
        METRICS_STORE_SET,
        METRICS_STORE_CREATE,
        METRICS_STORE_UPDATE,
        METRICS_STORE_DELETE,
        METRICS_STORE_COMPARE_AND_SWAP,
        METRICS_STORE_COMPARE_AND_DELETE,
        _METRICS_STORE_WRITE_MAX,
} MetricsStoreWrite;

/* proxy/metrics.go's forwardingError */
typedef enum MetricsProxyDrop {
        METRICS_PROXY_ZERO_ENDPOINTS,
        METRICS_PROXY_FAILED_SENDING_REQUEST,
        METRICS_PROXY_FAILED_GETTING_RESPONSE,
        METRICS_PROXY_CLOSED_PREMATURELY,
        _METRICS_PROXY_DROP_MAX,
} MetricsProxyDrop;

/* Fixed buckets: upper bounds in microseconds (exact: etcd's are powers of two times 100 us, 500 us
 * or 1 ms); counts[i] holds the observations in (bound[i-1], bound[i]], counts[n] those above the last
 * bound. Written cumulatively, as Prometheus wants them. */
#define METRICS_BUCKETS_MAX 16
typedef struct MetricsHistogram {
        uint64_t counts[METRICS_BUCKETS_MAX + 1];
        uint64_t count;
        uint64_t sum_usec;
} MetricsHistogram;

typedef struct MetricsBuckets {
        unsigned n;
        uint64_t bound_usec[METRICS_BUCKETS_MAX];
} MetricsBuckets;

/* HTTP status codes counted per method: 100..599 */
#define METRICS_STATUS_MIN 100
#define METRICS_STATUS_MAX 599
#define METRICS_N_STATUS (METRICS_STATUS_MAX - METRICS_STATUS_MIN + 1)

/* Peers with their own series; more than this (a 33-member cluster) share nothing and are not shown. */
#define METRICS_PEERS_MAX 32
typedef struct MetricsPeer {
        uint64_t id;
        uint64_t sent_bytes, received_bytes;
} MetricsPeer;

/* Round trips to a peer: a Raft heartbeat (an AppendEntries without entries) until the next
 * AppendEntries result from that peer. etcd2 probes with its own GETs instead; the family is the same. */
typedef struct MetricsPeerRtt {
        uint64_t id;
        uint64_t pending_usec;   /* when the heartbeat being timed left, 0 if none */
        MetricsHistogram rtt;
} MetricsPeerRtt;

typedef struct Metrics {
        /* etcdserver/etcdhttp/metrics.go */
        uint64_t http_received[_METRICS_METHOD_MAX];
        uint64_t http_failed[_METRICS_METHOD_MAX][METRICS_N_STATUS];
        MetricsHistogram http_duration[_METRICS_METHOD_MAX];

        /* etcdserver/metrics.go: the gauges are set by the collector */
        bool server;             /* a member (not a proxy): the server families are written */
        bool has_leader;
        uint64_t leader_changes;
        uint64_t proposals_committed, proposals_applied, proposals_pending;
        uint64_t proposals_failed;

        /* wal/metrics.go, storage/backend/metrics.go: both are our group commit's synced write */
        MetricsHistogram wal_fsync;
        MetricsHistogram backend_commit;

        /* rafthttp/metrics.go: filled by the collector */
        MetricsPeer peers[METRICS_PEERS_MAX];
        size_t n_peers;
        MetricsPeerRtt rtts[METRICS_PEERS_MAX];   /* by the loop: metrics_peer_rtt() */
        size_t n_rtts;

        /* store/metrics.go */
        uint64_t store_reads[_METRICS_STORE_READ_MAX];
        uint64_t store_writes[_METRICS_STORE_WRITE_MAX];
        uint64_t store_expires;
        uint64_t store_watch_requests;
        uint64_t store_watchers;          /* set by the collector */

        /* proxy/metrics.go */
        bool proxy;              /* proxy mode: the proxy families are written */
        uint64_t proxy_requests[_METRICS_METHOD_MAX];
        uint64_t proxy_handled[_METRICS_METHOD_MAX][METRICS_N_STATUS];
        uint64_t proxy_dropped[_METRICS_METHOD_MAX][_METRICS_PROXY_DROP_MAX];
        MetricsHistogram proxy_duration[_METRICS_METHOD_MAX];
} Metrics;

/* The process' metrics. */
extern Metrics metrics;

extern const MetricsBuckets metrics_http_buckets;    /* ExponentialBuckets(0.0005, 2, 13) */
extern const MetricsBuckets metrics_disk_buckets;    /* ExponentialBuckets(0.001, 2, 14) */
extern const MetricsBuckets metrics_rtt_buckets;     /* ExponentialBuckets(0.0001, 2, 14) */

MetricsMethod metrics_method_from_string(const char *method);
const char *metrics_method_to_string(MetricsMethod m);

static inline void metrics_observe(MetricsHistogram *h, const MetricsBuckets *b, uint64_t usec) {
        unsigned i = 0;

        while (i < b->n && usec > b->bound_usec[i])
                i++;
        h->counts[i]++;
        h->count++;
        h->sum_usec += usec;
}

static inline void metrics_http_failed(MetricsMethod m, unsigned status) {
        if (status >= METRICS_STATUS_MIN && status <= METRICS_STATUS_MAX)
                metrics.http_failed[m][status - METRICS_STATUS_MIN]++;
}

/* The round-trip state of peer `id` (added on first use), or NULL past METRICS_PEERS_MAX peers. */
MetricsPeerRtt *metrics_peer_rtt(Metrics *m, uint64_t id);

/* Monotonic microseconds (vDSO clock_gettime: tens of nanoseconds). */
uint64_t metrics_now_usec(void);

/* Called before a scrape to set the gauges that mirror other state. */
typedef void (*MetricsCollectFunc)(Metrics *m, void *userdata);
void metrics_set_collector(MetricsCollectFunc func, void *userdata);

/* The Prometheus text exposition (format 0.0.4) of m, families in name order. Process metrics are read
 * from /proc/self when `process` is set. Returns 0 or -ENOMEM; *ret is malloc'ed. */
int metrics_format(const Metrics *m, bool process, char **ret, size_t *ret_len);
/* metrics_format() of the process' metrics, after running the collector. */
int metrics_scrape(char **ret, size_t *ret_len);

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
