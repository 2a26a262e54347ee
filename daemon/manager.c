/* SPDX-License-Identifier: Apache-2.0 */
/* manager.c - the event loop, signals, sd_notify and the graceful shutdown of every subsystem.
 *
 * Start-up order: data dir, then the member (RocksDB + Raft), then the listeners, then READY=1.
 * Shutdown on SIGTERM/SIGINT: close the listeners, give in-flight proposals up to STOP_DRAIN_USEC to
 * become durable and be answered, then free the HTTP side, then the member (which closes RocksDB
 * cleanly). As etcd2 does, the process then dies by the signal that stopped it. */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <systemd/sd-daemon.h>

#include "config-build.h"
#include "import.h"
#include "log.h"
#include "manager.h"
#include "members.h"
#include "srv.h"

#define STATUS_INTERVAL_USEC (5 * USEC_PER_SEC)
#define STOP_DRAIN_USEC (5 * USEC_PER_SEC)
#define DRAIN_POLL_USEC (10 * USEC_PER_MSEC)
#define READY_POLL_USEC (2 * USEC_PER_MSEC)
/* etcd2 serves clients before the member has published its attributes, but only says READY=1 after.
 * We hold the listeners back for a short while so that the first request already sees this member
 * (with socket activation, clients simply wait in the listen backlog meanwhile). */
#define SERVE_BEFORE_PUBLISH_USEC (2 * USEC_PER_SEC)
#define BUS_POLL_USEC (100 * USEC_PER_MSEC)
/* The proxy's first refresh asks each peer URL with a 10 s timeout; serve anyway after this long. */
#define PROXY_FIRST_REFRESH_USEC (15 * USEC_PER_SEC)

static void manager_fail(Manager *m, int r);

static void manager_update_status(Manager *m) {
        if (!m->server)
                return;
        (void) sd_notifyf(false,
                          "STATUS=%s member %" PRIx64 " of cluster %" PRIx64 ", term %" PRIu64
                          ", index %" PRIu64 ", leader %" PRIx64,
                          m->stopping ? "Stopping:" : "Serving:",
                          server_member_id(m->server), server_cluster_id(m->server),
                          server_raft_term(m->server), server_raft_index(m->server),
                          server_leader_id(m->server));
}

/* A timer that keeps firing (its callback moves it on with sd_event_source_set_time()), first at `usec`. */
static int manager_add_timer(Manager *m, sd_event_source **ret, uint64_t usec, uint64_t accuracy,
                             sd_event_time_handler_t cb, const char *description) {
        int r;

        r = sd_event_add_time(m->event, ret, CLOCK_MONOTONIC, usec, accuracy, cb, m);
        if (r < 0)
                return log_error_errno(r, "Failed to add %s timer: %m", description);
        (void) sd_event_source_set_description(*ret, description);
        (void) sd_event_source_set_enabled(*ret, SD_EVENT_ON);
        return 0;
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        manager_update_status(m);
        (void) sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
        return 0;
}

static int on_drain_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        unsigned n = m->server ? server_n_pending(m->server) : 0;

        if (n > 0 && usec < m->stop_deadline_usec) {
                (void) sd_event_source_set_time(s, usec + DRAIN_POLL_USEC);
                return 0;
        }
        if (n > 0)
                log_warning("%u proposals still pending at shutdown (no quorum?), giving up on them; their clients see the connection close", n);
        return sd_event_exit(m->event, 0);
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;
        uint64_t now;
        int r;

        if (m->stopping) {
                log_notice("Received signal %u again, exiting at once", si->ssi_signo);
                return sd_event_exit(m->event, 0);
        }
        m->stopping = true;
        m->exit_signal = si->ssi_signo;
        log_notice("Received %s, shutting down", strsignal(si->ssi_signo));
        (void) sd_notify(false, "STOPPING=1");
        manager_update_status(m);

        if (m->http)
                endpoints_stop_listening(m->http);

        r = sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return sd_event_exit(m->event, 0);
        m->stop_deadline_usec = now + STOP_DRAIN_USEC;
        /* on_drain_timer() re-arms it while proposals are still pending */
        r = manager_add_timer(m, &m->drain_timer, now, 1000, on_drain_timer, "shutdown-drain");
        if (r < 0)
                return sd_event_exit(m->event, 0);
        return 0;
}

static void raise_nofile_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        if (rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        log_warning_errno(-errno, "Failed to raise RLIMIT_NOFILE, ignoring: %m");
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur <= 150)
                log_warning("RLIMIT_NOFILE is %llu, too low for serving clients", (unsigned long long) rl.rlim_cur);
}

typedef enum DataDirKind {
        DATA_DIR_EMPTY,
        DATA_DIR_MEMBER,
        DATA_DIR_PROXY,
} DataDirKind;

/* etcd2's data dir rules (reference §1.4): "member" -> member, "proxy" -> proxy, both -> fatal. */
static int manager_check_data_dir(Manager *m, DataDirKind *ret) {
        const char *d = m->config->data_dir;
        struct stat st;
        bool has_member, has_proxy;
        char *p;

        if (mkdir(d, 0700) < 0 && errno != EEXIST)
                return log_error_errno(-errno, "Failed to create data dir '%s': %m", d);
        if (stat(d, &st) < 0)
                return log_error_errno(-errno, "Failed to stat data dir '%s': %m", d);
        if (!S_ISDIR(st.st_mode))
                return log_error_errno(-ENOTDIR, "Data dir '%s' is not a directory", d);

        if (asprintf(&p, "%s/member", d) < 0)
                return log_oom();
        has_member = access(p, F_OK) >= 0;
        free(p);
        if (asprintf(&p, "%s/proxy", d) < 0)
                return log_oom();
        has_proxy = access(p, F_OK) >= 0;
        free(p);

        if (has_member && has_proxy)
                return log_error_errno(-EINVAL, "Invalid datadir '%s': both member and proxy directories exist", d);
        *ret = has_member ? DATA_DIR_MEMBER : has_proxy ? DATA_DIR_PROXY : DATA_DIR_EMPTY;
        return 0;
}

/* The bus reads the member's state through these; all cheap. */
static uint64_t bus_cluster_id(void *userdata) {
        Manager *m = userdata;
        return m->server ? server_cluster_id(m->server) : 0;
}

static uint64_t bus_member_id(void *userdata) {
        Manager *m = userdata;
        return m->server ? server_member_id(m->server) : 0;
}

static uint64_t bus_leader_id(void *userdata) {
        Manager *m = userdata;
        return m->server ? server_leader_id(m->server) : 0;
}

static int bus_members(void *userdata, BusMember **ret, size_t *ret_n) {
        Manager *m = userdata;
        Member *ms = NULL;
        BusMember *bm;
        size_t n = 0;
        int r;

        if (!m->server) {
                /* a proxy keeps no member list of its own */
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        r = members_load(server_store(m->server), &ms, &n);
        if (r < 0)
                return r;
        bm = calloc(MAX(n, (size_t) 1), sizeof(BusMember));
        if (!bm) {
                members_free(ms, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                bm[i] = (BusMember) {
                        .id = ms[i].id,
                        .name = TAKE_PTR(ms[i].name),
                        .peer_urls = TAKE_PTR(ms[i].peer_urls),
                        .client_urls = TAKE_PTR(ms[i].client_urls),
                        /* a single member reaches itself; per-peer reachability comes with the transport */
                        .reachable = ms[i].id == server_member_id(m->server),
                };
        }
        members_free(ms, n);
        *ret = bm;
        *ret_n = n;
        return 0;
}

static uint64_t bus_raft_term(void *userdata) {
        Manager *m = userdata;
        return m->server ? server_raft_term(m->server) : 0;
}

static uint64_t bus_raft_index(void *userdata) {
        Manager *m = userdata;
        return m->server ? server_raft_index(m->server) : 0;
}

static uint64_t bus_etcd_index(void *userdata) {
        Manager *m = userdata;
        return m->server ? store_index(server_store(m->server)) : 0;
}

static BusRole bus_role(void *userdata) {
        Manager *m = userdata;
        return m->server ? (BusRole) server_role(m->server) : BUS_ROLE_PROXY;
}

static bool bus_healthy(void *userdata) {
        Manager *m = userdata;
        char **e;

        if (m->server)
                return server_leader_id(m->server) != 0;
        e = m->proxy ? proxy_endpoints(m->proxy) : NULL;
        return e && e[0];
}

static int on_bus_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        bus_notify_changed(m->bus);
        (void) sd_event_source_set_time(s, usec + BUS_POLL_USEC);
        return 0;
}

/* D-Bus methods: membership changes commit through Raft first, so the reply comes later. */
static void on_bus_member_done(int error, uint64_t id, void *userdata) {
        sd_bus_message *m = userdata;
        const char *msg = NULL;

        switch (error) {
        case 0:
                break;
        case -EEXIST:
                msg = "A member with this ID exists already";
                break;
        case -EADDRINUSE:
                error = -EEXIST;
                msg = "A peer URL is in use by another member";
                break;
        case -ENOENT:
                msg = "No such member";
                break;
        case -EIDRM:
                error = -EEXIST;
                msg = "The member was removed before; removed IDs never return";
                break;
        case -EPERM:
                msg = "Refused by --strict-reconfig-check: the cluster would lose quorum";
                break;
        case -ETIMEDOUT:
                msg = "The change did not commit in time (no leader?)";
                break;
        case -EBUSY:
                msg = "Another membership change is in progress";
                break;
        default:
                break;
        }
        (void) bus_reply_method(m, error, id, msg);
        sd_bus_message_unref(m);
}

static int bus_op_add_member(void *userdata, sd_bus_message *m, char **peer_urls, uint64_t *ret_id,
                             sd_bus_error *error) {
        Manager *mgr = userdata;
        int r;

        if (!mgr->server)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED, "This etcd2 is a proxy, not a member");

        sd_bus_message_ref(m);
        r = server_member_add(mgr->server, peer_urls, strv_length(peer_urls), on_bus_member_done, m);
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        return 1;
}

static int bus_op_remove_member(void *userdata, sd_bus_message *m, uint64_t id, sd_bus_error *error) {
        Manager *mgr = userdata;
        int r;

        if (!mgr->server)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED, "This etcd2 is a proxy, not a member");

        sd_bus_message_ref(m);
        r = server_member_remove(mgr->server, id, on_bus_member_done, m);
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        return 1;
}

static void on_bus_backup_done(int r, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = userdata;
        _cleanup_free_ char *msg = NULL;
        const char *path = NULL;

        (void) sd_bus_message_rewind(m, true);
        (void) sd_bus_message_read(m, "s", &path);
        if (r == -EEXIST) {
                r = -EINVAL;
                if (asprintf(&msg, "'%s' already holds a member's data", path ?: "?") < 0)
                        msg = NULL;
        } else if (r < 0 && asprintf(&msg, "Backup to '%s' failed: %s", path ?: "?", strerror(-r)) < 0)
                msg = NULL;
        (void) bus_reply_method(m, r, 0, msg);
}

static int bus_op_backup(void *userdata, sd_bus_message *m, const char *path, sd_bus_error *error) {
        Manager *mgr = userdata;
        int r;

        if (!mgr->server)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED, "This etcd2 is a proxy, not a member");

        /* the checkpoint runs off the loop; the reply comes when it is done */
        sd_bus_message_ref(m);
        r = server_backup(mgr->server, path, on_bus_backup_done, m);
        if (r < 0)
                sd_bus_message_unref(m);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED,
                                         "Another backup is running; try again when it is done");
        if (r < 0)
                return sd_bus_error_setf(error, BUS_ERROR_FAILED, "Backup to '%s' failed: %s", path, strerror(-r));
        return 1;
}

/* Has this member's own attributes (name, client URLs) been written through the log? */
static bool manager_member_published(Manager *m) {
        char path[128];

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes",
                        server_member_id(m->server));
        return store_lookup(server_store(m->server), path) != NULL;
}

static int manager_start_serving(Manager *m) {
        int r;

        if (m->http)
                return 0;
        r = endpoints_new(m->event, m->config, m->server, NULL, &m->http);
        if (r < 0)
                return r;
        log_info("etcd2 %s: member %" PRIx64 " of cluster %" PRIx64 " serving client requests",
                 ETCD2_VERSION, server_member_id(m->server), server_cluster_id(m->server));
        return 0;
}

static void manager_notify_ready(Manager *m) {
        if (m->ready)
                return;
        m->ready = true;
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
        if (!getenv("NOTIFY_SOCKET"))
                log_debug("Not started by systemd with Type=notify; READY=1 not sent");
}

static int on_ready_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        bool published = manager_member_published(m);
        int r;

        if (published || usec >= m->start_usec + SERVE_BEFORE_PUBLISH_USEC) {
                r = manager_start_serving(m);
                if (r < 0) {
                        manager_fail(m, r);
                        return 0;
                }
        }
        if (published) {
                manager_notify_ready(m);
                m->ready_timer = sd_event_source_disable_unref(m->ready_timer);
                return 0;
        }
        (void) sd_event_source_set_time(s, usec + READY_POLL_USEC);
        return 0;
}

int manager_new(Config *config, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return log_oom();
        m->config = config;

        r = sd_event_default(&m->event);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to allocate event loop: %m");
        }
        (void) sd_event_set_watchdog(m->event, true);

        r = sd_event_add_signal(m->event, &m->sigterm_source, SIGTERM | SD_EVENT_SIGNAL_PROCMASK, on_stop_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, &m->sigint_source, SIGINT | SD_EVENT_SIGNAL_PROCMASK, on_stop_signal, m);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to install signal handlers: %m");
        }
        (void) signal(SIGPIPE, SIG_IGN);

        *ret = m;
        return 0;
}

static int manager_start_bus(Manager *m) {
        const BusProvider provider = {
                .cluster_id = bus_cluster_id,
                .member_id = bus_member_id,
                .leader_id = bus_leader_id,
                .members = bus_members,
                .raft_term = bus_raft_term,
                .raft_index = bus_raft_index,
                .etcd_index = bus_etcd_index,
                .role = bus_role,
                .healthy = bus_healthy,
                .userdata = m,
        };
        const BusOps ops = {
                .add_member = bus_op_add_member,
                .remove_member = bus_op_remove_member,
                .backup = bus_op_backup,
                .userdata = m,
        };
        int r;

        /* Without a bus (no system bus here) this warns and gives a disabled object. */
        r = bus_new(m->event, m->config, &provider, &ops, &m->bus);
        if (r < 0)
                return r;
        if (bus_is_enabled(m->bus)) {
                uint64_t now;

                r = sd_event_now(m->event, CLOCK_MONOTONIC, &now);
                if (r >= 0)
                        r = manager_add_timer(m, &m->bus_timer, now + BUS_POLL_USEC, 10 * USEC_PER_MSEC,
                                              on_bus_timer, "bus-notify");
                if (r < 0)
                        return r;
        }
        return 0;
}

static int manager_start_member(Manager *m) {
        int r;

        /* etcd2 purges old snap/ and wal/ files beyond these counts; our RocksDB store compacts its own
         * files and keeps no old snapshots or WAL segments around, so there is never anything to purge. */
        if (m->config->max_snapshots != 5 || m->config->max_wals != 5)
                log_notice("--max-snapshots=%u/--max-wals=%u: the RocksDB store keeps no old snapshot or WAL "
                           "files, nothing to purge", m->config->max_snapshots, m->config->max_wals);

        r = server_new(m->event, m->config, &m->server);
        if (r < 0)
                return r;

        r = manager_start_bus(m);
        if (r < 0)
                return r;

        r = sd_event_now(m->event, CLOCK_MONOTONIC, &m->start_usec);
        if (r < 0)
                return log_error_errno(r, "Failed to read the clock: %m");
        if (manager_member_published(m)) {
                r = manager_start_serving(m);
                if (r < 0)
                        return r;
                manager_notify_ready(m);
        } else {
                r = manager_add_timer(m, &m->ready_timer, m->start_usec + READY_POLL_USEC, USEC_PER_MSEC,
                                      on_ready_timer, "wait-published");
                if (r < 0)
                        return r;
        }
        return 0;
}

static int manager_proxy_serve(Manager *m) {
        int r;

        r = endpoints_new(m->event, m->config, NULL, m->proxy, &m->http);
        if (r < 0)
                return r;
        log_info("etcd2 %s: proxy (%s) serving client requests", ETCD2_VERSION,
                 m->config->proxy == PROXY_READONLY ? "readonly" : "on");
        manager_notify_ready(m);
        return 0;
}

static int on_proxy_ready_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        int r;

        if (!proxy_refreshed(m->proxy) && usec < m->start_usec + PROXY_FIRST_REFRESH_USEC) {
                (void) sd_event_source_set_time(s, usec + READY_POLL_USEC);
                return 0;
        }
        m->ready_timer = sd_event_source_disable_unref(m->ready_timer);
        r = manager_proxy_serve(m);
        if (r < 0)
                manager_fail(m, r);
        return 0;
}

/* Proxy mode: `peer_urls` NULL means <data-dir>/proxy/cluster holds them. As etcd2, the listeners open once
 * the first refresh of the members' client URLs is done (with socket activation, clients wait in the
 * backlog meanwhile). */
static int manager_start_proxy(Manager *m, char **peer_urls) {
        int r;

        /* Go's transport put a deadline on each write of a request to a member; libcurl has no per-write
         * timeout (and a low-speed limit would cut idle watches), so say that the value is not used. */
        if (m->config->proxy_write_timeout_ms != 5000)
                log_notice("--proxy-write-timeout=%u: this etcd2's proxy has no per-write timeout towards the "
                           "members; --proxy-dial-timeout and --proxy-read-timeout apply", m->config->proxy_write_timeout_ms);
        r = proxy_new(m->event, m->config, peer_urls, &m->proxy);
        if (r < 0)
                return r;
        r = manager_start_bus(m);
        if (r < 0)
                return r;
        r = sd_event_now(m->event, CLOCK_MONOTONIC, &m->start_usec);
        if (r < 0)
                return log_error_errno(r, "Failed to read the clock: %m");
        return manager_add_timer(m, &m->ready_timer, m->start_usec + READY_POLL_USEC, USEC_PER_MSEC,
                                 on_proxy_ready_timer, "wait-proxy-refresh");
}

/* A proxy in front of the cluster "name=URL,...": all of its peer URLs. */
static int manager_start_proxy_from_cluster(Manager *m, const char *cluster) {
        _cleanup_strv_free_ char **urls = NULL;
        ClusterMember *ms = NULL;
        size_t n = 0, k = 0;
        int r;

        r = config_cluster_parse(cluster, &ms, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                k += ms[i].peer_urls.n;
        urls = calloc(k + 1, sizeof(char *));
        r = urls ? 0 : -ENOMEM;
        k = 0;
        for (size_t i = 0; r >= 0 && i < n; i++)
                for (size_t j = 0; r >= 0 && j < ms[i].peer_urls.n; j++)
                        if (!(urls[k++] = strdup(ms[i].peer_urls.urls[j].str)))
                                r = -ENOMEM;
        config_cluster_members_free(ms, n);
        if (r < 0)
                return log_oom();
        if (k == 0)
                return log_error_errno(-EINVAL, "No peer URLs in cluster '%s' for the proxy", cluster);
        return manager_start_proxy(m, urls);
}

static void manager_fail(Manager *m, int r) {
        m->failed = true;
        (void) sd_notifyf(false, "STATUS=Failed to start: %s\nERRNO=%i", strerror(r < 0 ? -r : EIO), r < 0 ? -r : EIO);
        (void) sd_event_exit(m->event, r < 0 ? r : -EIO);
}

static int on_discovery_done_later(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        /* free the discovery client outside its own callback */
        m->discovery = discovery_free(m->discovery);
        m->glue = curl_glue_free(m->glue);
        sd_event_source_disable_unref(s);
        return 0;
}

static void manager_discovery_finish(Manager *m) {
        sd_event_source *s = NULL;

        if (sd_event_add_defer(m->event, &s, on_discovery_done_later, m) >= 0) {
                (void) sd_event_source_set_description(s, "discovery-free");
                (void) sd_event_source_set_floating(s, true);
                sd_event_source_unref(s);
        }
}

static void on_discovery_done(Discovery *d, int error, bool full, const char *cluster, void *userdata) {
        Manager *m = userdata;
        int r;

        manager_discovery_finish(m);
        if (m->stopping)
                return;
        if (error < 0)
                return manager_fail(m, error);

        if (m->config->proxy != PROXY_OFF) {
                log_info("discovery: proxying to the cluster %s", cluster);
                r = manager_start_proxy_from_cluster(m, cluster);
        } else if (full) {
                if (streq(strempty(m->config->discovery_fallback), "exit")) {
                        log_error("discovery: cluster is full");
                        return manager_fail(m, -ENOSPC);
                }
                log_notice("discovery cluster full, falling back to proxy");
                r = manager_start_proxy_from_cluster(m, cluster);
        } else {
                log_info("discovery: bootstrapping the cluster %s", cluster);
                r = config_set_initial_cluster(m->config, cluster, m->config->discovery);
                if (r >= 0)
                        r = manager_start_member(m);
        }
        if (r < 0)
                manager_fail(m, r);
}

static int manager_start_discovery(Manager *m) {
        const Config *c = m->config;
        _cleanup_free_ char *value = NULL;
        int r;

        r = curl_glue_new(m->event, &m->glue);
        if (r < 0)
                return log_error_errno(r, "Failed to set up libcurl: %m");
        r = discovery_new(m->event, m->glue, c->discovery, c->discovery_proxy, &m->discovery);
        if (r < 0)
                return r;

        if (c->proxy != PROXY_OFF)
                return discovery_get(m->discovery, on_discovery_done, m);

        /* the registration value is etcd2's initialPeerURLsMap.String(): our own name=peerURL pairs */
        value = config_members_string(c->initial_members, c->n_initial_members);
        if (!value)
                return log_oom();
        log_info("discovery: registering member %" PRIx64 " (%s) with %s", c->member_id, value, c->discovery);
        return discovery_join(m->discovery, c->member_id, value, on_discovery_done, m);
}

static int manager_start_srv(Manager *m) {
        Config *c = m->config;
        _cleanup_free_ char *cluster = NULL;
        bool found = false;
        int r;

        r = srv_get_cluster(c->name, c->discovery_srv, &c->initial_advertise_peer_urls, &cluster);
        if (r < 0)
                return r;
        if (c->proxy != PROXY_OFF)
                return manager_start_proxy_from_cluster(m, cluster);

        /* etcd2: a member must find itself among the records */
        {
                ClusterMember *ms = NULL;
                size_t n = 0;

                r = config_cluster_parse(cluster, &ms, &n);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < n && !found; i++)
                        found = streq(ms[i].name, c->name);
                config_cluster_members_free(ms, n);
        }
        if (!found)
                return log_error_errno(-ENOENT, "cannot find local etcd member \"%s\" in SRV records", c->name);
        r = config_set_initial_cluster(c, cluster, c->initial_cluster_token);
        if (r < 0)
                return r;
        return manager_start_member(m);
}

int manager_start(Manager *m) {
        const Config *c = m->config;
        DataDirKind kind = DATA_DIR_EMPTY;
        uint64_t now;
        int r;

        raise_nofile_limit();

        /* --import-v2-data-dir: our data dir is made from etcd's first, then the member starts on it. */
        if (c->import_v2_data_dir) {
                r = import_v2_data_dir(c);
                if (r < 0)
                        return r;
        }

        r = manager_check_data_dir(m, &kind);
        if (r < 0)
                return r;

        r = sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return log_error_errno(r, "Failed to read the clock: %m");
        r = manager_add_timer(m, &m->status_timer, now + STATUS_INTERVAL_USEC, USEC_PER_SEC,
                              on_status_timer, "status");
        if (r < 0)
                return r;

        switch (kind) {
        case DATA_DIR_MEMBER:
                /* etcd2: a member's data dir wins over --proxy and every bootstrap flag */
                if (!isempty(c->discovery))
                        log_notice("discovery token ignored since a cluster has already been initialized. "
                                   "Valid cluster configuration found in the data dir");
                if (c->proxy != PROXY_OFF)
                        log_notice("The data dir '%s' holds a member: starting as a member, ignoring --proxy",
                                   c->data_dir);
                return manager_start_member(m);
        case DATA_DIR_PROXY:
                if (c->proxy == PROXY_OFF)
                        log_notice("The data dir '%s' holds a proxy's state: starting as a proxy", c->data_dir);
                return manager_start_proxy(m, NULL);
        default:
                break;
        }

        if (!isempty(c->discovery))
                return manager_start_discovery(m);
        if (!isempty(c->discovery_srv))
                return manager_start_srv(m);
        if (c->proxy != PROXY_OFF)
                return manager_start_proxy_from_cluster(m, c->initial_cluster);
        return manager_start_member(m);
}

int manager_run(Manager *m) {
        return sd_event_loop(m->event);
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        m->http = endpoints_free(m->http);
        m->discovery = discovery_free(m->discovery);
        m->glue = curl_glue_free(m->glue);
        m->proxy = proxy_free(m->proxy);
        m->ready_timer = sd_event_source_disable_unref(m->ready_timer);
        m->bus_timer = sd_event_source_disable_unref(m->bus_timer);
        m->bus = bus_free(m->bus);
        m->server = server_free(m->server);
        m->status_timer = sd_event_source_disable_unref(m->status_timer);
        m->drain_timer = sd_event_source_disable_unref(m->drain_timer);
        m->sigterm_source = sd_event_source_disable_unref(m->sigterm_source);
        m->sigint_source = sd_event_source_disable_unref(m->sigint_source);
        m->event = sd_event_unref(m->event);
        m->config = config_free(m->config);
        free(m);
        return NULL;
}
