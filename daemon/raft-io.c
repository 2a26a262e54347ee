/* SPDX-License-Identifier: Apache-2.0 */
/* raft-io.c - our struct raft_io for libraft: sd-event ticks, group commit to RocksDB, transport hooks. */

/*
 * libraft drives all I/O through this object and expects every request to complete
 * asynchronously: no callback ever fires from inside a raft_io method. Everything that completes
 * later goes through one ONESHOT defer source ("raft-io-work"):
 *
 *  - append(): libraft appends one entry per raft_apply(). Entries are serialized into the
 *    accumulating group's RocksDB WriteBatch. At the end of the loop iteration (the defer handler)
 *    the group goes to the writer thread, which writes it with sync=1 (group commit: one fdatasync
 *    for everything appended meanwhile) and signals an eventfd; the loop then fires every append
 *    callback of the group. While one group is being synced the loop keeps serving requests and the
 *    next group accumulates; it is handed over as soon as the previous one is done, so under load
 *    the groups grow with the fsync latency. The two groups and their batches are reused: the steady
 *    state allocates nothing per entry here.
 *  - send(): handed to the transport set with raft_io_set_transport() (the peer layer), which
 *    reports completion with raft_io_send_done(); without one (a single member never sends) it
 *    completes with RAFT_NOCONNECTION. Received messages come in through raft_io_deliver().
 *  - snapshot_put(), close(): done synchronously inside the call, callback deferred.
 *    snapshot_get() (only used to send a snapshot to a follower) returns a reference to a stream
 *    of the applied state, which snapshot.c sends in bounded chunks ahead of the InstallSnapshot.
 *    snapshot_put() of such a reference (the follower staged the stream complete) writes a durable
 *    install marker with the group; the writer thread then switches to the staged state and builds
 *    the new Store (persist.h: staged install). An export (a leader of an earlier version: the
 *    whole state in the message) replaces our state in the same batch as the snapshot record.
 *  - recover() (--force-new-cluster) appends a configuration entry synchronously.
 *
 * set_term()/set_vote() are synchronous and synced, as Raft requires them durable before the
 * reply that depends on them (Raft thesis, Figure 3.1). The log's last index is tracked here, since
 * append() is not told the indexes: it starts from load()/bootstrap() and follows append, truncate
 * and snapshot installs.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "codec.h"
#include "log.h"
#include "metrics.h"
#include "raft-guard.h"
#include "raft-io.h"

/* The coarsest tick we give libraft (see io_start()). */
#define RAFT_IO_TICK_MAX_MSEC 10u

/* How long applied state without log entries may wait for a group to ride with. */
#define RAFT_IO_LAZY_USEC (50 * USEC_PER_MSEC)
/* After a storage failure: how long the loop may still run to send the 5xx answers of the failed
 * proposals before the process exits (nothing can be written or decided meanwhile, see raft_io_fatal()). */
#define RAFT_IO_FATAL_GRACE_USEC (200 * USEC_PER_MSEC)

typedef enum CompletionKind {
        COMPLETION_SEND,
        COMPLETION_SNAPSHOT_PUT,
        COMPLETION_SNAPSHOT_GET,
        COMPLETION_ASYNC_WORK,
} CompletionKind;

typedef struct Completion {
        CompletionKind kind;
        void *req;
        void *cb;
        void *arg;
        int status;
} Completion;

/* A request that completes when its group is durable: an append, or a snapshot_put. */
typedef struct PendingAppend {
        void *req;
        void *cb;
        bool snapshot;
        /* An append made while libraft handled a follower's AppendEntries: that one, for the result its
         * completion sends (raft_guard_follower_cap()). */
        bool ae_context;
        raft_term ae_term;
        raft_index ae_end;
} PendingAppend;

/* Entries appended together and made durable by one synced write. */
typedef struct AppendGroup {
        PersistBatch *batch;
        PendingAppend *appends;
        size_t n, alloc;
        bool install;             /* the batch holds a staged install's marker: finish it after */
        uint64_t write_usec;      /* how long its synced write took (the writer measures, the loop reads) */
} AppendGroup;

struct RaftIo {
        struct raft_io io;
        sd_event *event;
        Persist *persist;

        sd_event_source *tick_source;
        sd_event_source *work_source;
        sd_event_source *lazy_source;
        unsigned tick_msecs;
        raft_io_tick_cb tick_cb;
        raft_io_recv_cb recv_cb;

        RaftIoSendFunc send_func;
        void *send_userdata;

        RaftIoEventCallback event_cb;
        RaftIoBatchCallback batch_cb;
        void *event_userdata;

        uint64_t last_index;      /* index of the last entry in the log (appended, maybe not synced) */
        raft_id id;
        unsigned seed;

        AppendGroup groups[2];
        AppendGroup *acc;         /* accumulating */
        AppendGroup *flight;      /* being written by the writer thread, or NULL */

        /* The writer thread: takes `flight`, writes it synced, sets `flight_done`. */
        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool job_ready, job_done, stop;
        int job_result;
        int efd;
        sd_event_source *efd_source;

        Completion *completions;
        size_t n_completions, n_completions_alloc;

        /* Snapshot streams: IDs we hand out (leader); the stream staged complete (follower), its
         * install in a group, and the Store the writer thread built from it. */
        uint64_t stream_seq;
        bool staged, installing;
        uint64_t staged_id, staged_applied, staged_etcd_index;
        RaftIoInstallLoader install_loader;
        void *install_userdata;
        void *installed;

        raft_io_close_cb close_cb;
        bool closing;

        /* Storage failed (raft_io_fatal()): libraft is frozen, nothing is written, the process exits. */
        bool failed;
        RaftIoFatalCallback fatal_cb;
        void *fatal_userdata;
        sd_event_source *fatal_source;
        /* The leader-side guard around libraft 0.15 (raft-guard.c) and the defer source that runs
         * libraft's tick when the guard made followers due (new commit index, held-back results). */
        struct raft *raft;
        RaftGuard guard;
        sd_event_source *notify_source;
};

static void raft_io_exit_default(int status) {
        /* _exit(), not exit() or a return through the manager: the normal shutdown closes libraft, drains
         * this io (more synced writes) and closes RocksDB (which may flush memtables), all on a database
         * whose last write failed in an unknown state. Skipping every destructor is the point; the kernel
         * closes the files and systemd (Restart=on-failure) starts us again. */
        (void) fflush(stdout);
        (void) fflush(stderr);
        _exit(status);
}

void (*raft_io_exit)(int status) = raft_io_exit_default;

static int grow(void **array, size_t *alloc, size_t need, size_t size) {
        size_t n;
        void *p;

        if (need <= *alloc)
                return 0;
        n = MAX(*alloc * 2, (size_t) 16);
        if (n < need)
                n = need;
        p = realloc(*array, n * size);
        if (!p)
                return -ENOMEM;
        *array = p;
        *alloc = n;
        return 0;
}

static void work_schedule(RaftIo *rio) {
        if (rio->failed)
                return;
        (void) sd_event_source_set_enabled(rio->work_source, SD_EVENT_ONESHOT);
}

static int on_fatal_exit(sd_event_source *s, uint64_t usec, void *userdata) {
        raft_io_exit(EXIT_FAILURE);
        return 0;
}

static int on_fatal(sd_event_source *s, void *userdata) {
        RaftIo *rio = userdata;
        int r;

        /* From the loop, outside any libraft call: the owner fails its waiting proposals (5xx). */
        if (rio->fatal_cb)
                rio->fatal_cb(rio, rio->fatal_userdata);
        s = sd_event_source_disable_unref(s);
        rio->fatal_source = NULL;
        r = sd_event_add_time_relative(rio->event, &rio->fatal_source, CLOCK_MONOTONIC, RAFT_IO_FATAL_GRACE_USEC,
                                       USEC_PER_MSEC, on_fatal_exit, rio);
        if (r < 0)
                raft_io_exit(EXIT_FAILURE);
        else
                (void) sd_event_source_set_priority(rio->fatal_source, SD_EVENT_PRIORITY_IMPORTANT);
        return 0;
}

/* Every failed write of Raft state ends here; `error` is the negative errno, `what` completes "Failed
 * to ...". libraft 0.15 reacts to a failed append by truncating its in-memory log and reusing the
 * indexes without calling truncate(), so handing it RAFT_IOERR and going on leaves a log with a hole
 * (entries acknowledged after it are lost on restart, or the member refuses to start); etcd2 calls
 * Fatalf here. So: no callback of ours reaches libraft again (appends and sends are accepted and never
 * complete, ticks and received messages are dropped), the database takes no more writes (persist.c
 * refuses them once one failed), the owner answers its waiting proposals with an error from the loop,
 * and the process exits non-zero after RAFT_IO_FATAL_GRACE_USEC; at once if the loop is not running
 * (start-up, shutdown). A write that was in the failed batch may or may not be on disk: it was never
 * acknowledged, and on restart Raft decides it like any uncommitted entry. */
/* The LOG_CRIT line and the STATUS=/ERRNO= for systemd of a member that stops. */
static void fatal_report(RaftIo *rio, int error, const char *what, const char *why) {
        char member[64], errno_field[32];

        (void) snprintf(member, sizeof member, "ETCD_MEMBER_ID=%" PRIx64, (uint64_t) rio->id);
        (void) snprintf(errno_field, sizeof errno_field, "ETCD_STORAGE_ERRNO=%i", -error);
        (void) log_struct_errno(LOG_CRIT, error, LOG_FIELDS(member, "ETCD_EVENT=storage-failed", errno_field),
                                "Failed to %s: %m. Stopping: %s", what, why);
        (void) sd_notifyf(false, "STATUS=Storage failure: failed to %s: %s\nERRNO=%i", what, strerror(-error),
                          -error);
}

void raft_io_die(RaftIo *rio, int error, const char *what) {
        if (error >= 0)
                error = -EIO;
        fatal_report(rio, error, what, "memory and disk could disagree if it went on (a restart continues "
                     "from what is on disk).");
        raft_io_exit(EXIT_FAILURE);
        _exit(EXIT_FAILURE);   /* a unit test's raft_io_exit returns; this path must not */
}

static void raft_io_fatal(RaftIo *rio, int error, const char *what) {
        int state;

        if (rio->failed)
                return;
        rio->failed = true;
        if (error >= 0)
                error = -EIO;

        fatal_report(rio, error, what, "a member that cannot persist its Raft log must not go on (restart it "
                     "once the disk is fixed).");

        rio->tick_source = sd_event_source_disable_unref(rio->tick_source);
        (void) sd_event_source_set_enabled(rio->lazy_source, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(rio->work_source, SD_EVENT_OFF);

        state = sd_event_get_state(rio->event);
        if (state != SD_EVENT_RUNNING && state != SD_EVENT_PENDING && state != SD_EVENT_ARMED &&
            state != SD_EVENT_PREPARING) {
                raft_io_exit(EXIT_FAILURE);
                return;
        }
        if (sd_event_add_defer(rio->event, &rio->fatal_source, on_fatal, rio) < 0) {
                raft_io_exit(EXIT_FAILURE);
                return;
        }
        (void) sd_event_source_set_priority(rio->fatal_source, SD_EVENT_PRIORITY_IMPORTANT);
        (void) sd_event_source_set_description(rio->fatal_source, "raft-io-fatal");
}

bool raft_io_failed(RaftIo *rio) {
        return rio->failed;
}

void raft_io_set_fatal_callback(RaftIo *rio, RaftIoFatalCallback cb, void *userdata) {
        rio->fatal_cb = cb;
        rio->fatal_userdata = userdata;
}

static int completion_add(RaftIo *rio, CompletionKind kind, void *req, void *cb, void *arg, int status) {
        if (grow((void **) &rio->completions, &rio->n_completions_alloc, rio->n_completions + 1,
                 sizeof(Completion)) < 0)
                return RAFT_NOMEM;
        rio->completions[rio->n_completions++] = (Completion) {
                .kind = kind, .req = req, .cb = cb, .arg = arg, .status = status,
        };
        work_schedule(rio);
        return 0;
}

static unsigned fire_completions_and_close(RaftIo *rio);

static int group_write(RaftIo *rio, AppendGroup *g);

static void *writer_thread(void *userdata) {
        RaftIo *rio = userdata;

        (void) pthread_setname_np(pthread_self(), "raft-writer");
        pthread_mutex_lock(&rio->lock);
        for (;;) {
                AppendGroup *g;
                int r;

                while (!rio->job_ready && !rio->stop)
                        pthread_cond_wait(&rio->cond, &rio->lock);
                if (rio->stop)
                        break;
                g = rio->flight;
                pthread_mutex_unlock(&rio->lock);

                r = group_write(rio, g);

                pthread_mutex_lock(&rio->lock);
                rio->job_ready = false;
                rio->job_done = true;
                rio->job_result = r;
                pthread_cond_broadcast(&rio->cond);
                (void) eventfd_write(rio->efd, 1);
        }
        pthread_mutex_unlock(&rio->lock);
        return NULL;
}

/* Writes a group, synced (writer thread, or inline). A group with a staged snapshot install (its
 * batch holds the durable marker) then replaces the live state with the staged one and builds the
 * new Store, all off the loop; snapshot_put's callback fires after, and fsm->restore only swaps. */
static int group_write(RaftIo *rio, AppendGroup *g) {
        uint64_t start = metrics_now_usec();
        int r;

        r = persist_write(g->batch, true);
        /* read by the loop after the hand-back under rio->lock (group_collect()), or inline */
        g->write_usec = metrics_now_usec() - start;
        if (r < 0 || !g->install)
                return r;
        r = persist_install_finish(rio->persist, NULL, NULL);
        if (r >= 0 && rio->install_loader)
                r = rio->install_loader(rio->persist, &rio->installed, rio->install_userdata);
        if (r < 0) {
                /* The durable marker says "install this staging", the live state may be half gone:
                 * running on (a new stream would overwrite the staging) could lose the state. Stop;
                 * a restart finishes the install from the marker. */
                raft_io_die(rio, r, "install the staged snapshot");
        }
        return r;
}

/* Fires the callbacks of a written group and empties it. */
static unsigned group_complete(RaftIo *rio, AppendGroup *g, int r) {
        size_t n = g->n;

        /* Appends made from inside the callbacks go to the other group. */
        g->n = 0;
        if (g->install) {
                g->install = false;
                rio->installing = false;
        }
        if (r < 0 || rio->failed) {
                /* Never RAFT_IOERR to libraft (see raft_io_fatal()): these requests never complete. */
                char what[96];

                if (n > 0)
                        (void) snprintf(what, sizeof what, "persist %zu Raft log entries (group commit)", n);
                else
                        (void) snprintf(what, sizeof what, "persist the applied state");
                raft_io_fatal(rio, r, what);
                return 0;
        }
        /* etcd2's WAL fsync and backend commit are both our one synced write of the group */
        metrics_observe(&metrics.wal_fsync, &metrics_disk_buckets, g->write_usec);
        metrics_observe(&metrics.backend_commit, &metrics_disk_buckets, g->write_usec);
        for (size_t i = 0; i < n; i++) {
                PendingAppend *a = &g->appends[i];

                if (a->snapshot) {
                        ((raft_io_snapshot_put_cb) a->cb)(a->req, 0);
                        continue;
                }
                if (a->ae_context)
                        raft_guard_follower_enter(&rio->guard, a->ae_term, a->ae_end);
                ((raft_io_append_cb) a->cb)(a->req, 0);
                raft_guard_follower_leave(&rio->guard);
        }
        return (unsigned) n;
}

/* Seals the accumulating group (the batch callback adds its last state) and starts the other one. */
static AppendGroup *acc_take(RaftIo *rio) {
        AppendGroup *g = rio->acc;

        if (rio->batch_cb)
                rio->batch_cb(rio, g->batch, rio->event_userdata);
        rio->acc = g == &rio->groups[0] ? &rio->groups[1] : &rio->groups[0];
        return g;
}

static bool group_empty(AppendGroup *g) {
        return g->n == 0 && persist_batch_count(g->batch) == 0;
}

/* Hands the accumulating group to the writer thread, if it is idle and there is something to write. */
static void group_submit(RaftIo *rio, bool force) {
        AppendGroup *g;

        if (rio->failed || rio->flight || group_empty(rio->acc))
                return;
        if (rio->acc->n == 0 && !force) {
                /* Only applied state, which the log can reproduce: no hurry. Let it ride with the next
                 * appends rather than spending an fsync on it now; write it after a while if idle. */
                if (sd_event_source_get_enabled(rio->lazy_source, NULL) <= 0) {
                        (void) sd_event_source_set_time_relative(rio->lazy_source, RAFT_IO_LAZY_USEC);
                        (void) sd_event_source_set_enabled(rio->lazy_source, SD_EVENT_ONESHOT);
                }
                return;
        }

        if (!rio->thread_started) {
                /* no thread (start-up or shutdown): write inline */
                g = acc_take(rio);
                (void) group_complete(rio, g, group_write(rio, g));
                return;
        }

        (void) sd_event_source_set_enabled(rio->lazy_source, SD_EVENT_OFF);
        g = acc_take(rio);
        pthread_mutex_lock(&rio->lock);
        rio->flight = g;
        rio->job_ready = true;
        rio->job_done = false;
        pthread_cond_broadcast(&rio->cond);
        pthread_mutex_unlock(&rio->lock);
}

/* Collects the in-flight group if the writer is done (wait: block until it is). */
static unsigned group_collect(RaftIo *rio, bool wait) {
        AppendGroup *g;
        bool done;
        int r;

        if (!rio->flight || rio->failed)
                return 0;
        pthread_mutex_lock(&rio->lock);
        while (wait && !rio->job_done)
                pthread_cond_wait(&rio->cond, &rio->lock);
        done = rio->job_done;
        r = rio->job_result;
        if (done)
                rio->job_done = false;
        pthread_mutex_unlock(&rio->lock);
        if (!done)
                return 0;

        g = TAKE_PTR(rio->flight);
        return group_complete(rio, g, r);
}

/* Synchronously: the in-flight group, then whatever accumulated. */
static unsigned flush_appends(RaftIo *rio) {
        unsigned n;

        n = group_collect(rio, true);
        if (!rio->failed && !group_empty(rio->acc)) {
                AppendGroup *g = acc_take(rio);

                n += group_complete(rio, g, group_write(rio, g));
        }
        return n;
}

/* After libraft ran from the loop: the server's callback first (its proposals may already carry the new
 * commit index to the followers), then the guard, which may want followers told now. */
static void after_raft(RaftIo *rio) {
        if (rio->event_cb && !rio->closing)
                rio->event_cb(rio, rio->event_userdata);
        if (rio->raft && !rio->closing && !rio->failed && raft_guard_due(&rio->guard, rio->raft))
                (void) sd_event_source_set_enabled(rio->notify_source, SD_EVENT_ONESHOT);
}

/* libraft sends an AppendEntries to a follower marked due only from its tick; running the tick from
 * here (a defer source: never from inside a libraft callback such as fsm->apply) sends it now. The
 * tick's timers read io->time(), so the extra tick fires none of them early. The source runs after
 * the normal-priority ones: under load the proposals handled meanwhile carry the commit index in
 * their AppendEntries, and then nobody is due any more. */
static int on_commit_notify(sd_event_source *s, void *userdata) {
        RaftIo *rio = userdata;

        if (rio->failed || rio->closing || !rio->tick_cb || !rio->raft || raft_state(rio->raft) != RAFT_LEADER)
                return 0;
        if (!raft_guard_after(&rio->guard, rio->raft))
                return 0;
        rio->tick_cb(&rio->io);
        after_raft(rio);
        return 0;
}

static int on_writer_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        RaftIo *rio = userdata;
        eventfd_t v;

        (void) eventfd_read(rio->efd, &v);
        (void) group_collect(rio, false);
        if (rio->failed)
                return 0;
        (void) fire_completions_and_close(rio);
        /* Answering the waiters first lets the proposals they trigger join the next group. */
        after_raft(rio);
        group_submit(rio, false);
        return 0;
}

static int on_lazy(sd_event_source *s, uint64_t usec, void *userdata) {
        RaftIo *rio = userdata;

        group_submit(rio, true);
        return 0;
}

static unsigned fire_completions(RaftIo *rio) {
        unsigned done = 0;

        if (rio->failed)
                return 0;
        /* Callbacks may add completions (and move the array): index it afresh each time; the ones
         * added meanwhile run in this round too. */
        for (size_t i = 0; i < rio->n_completions; i++) {
                Completion c = rio->completions[i];

                done++;

                switch (c.kind) {
                case COMPLETION_SEND:
                        ((raft_io_send_cb) c.cb)(c.req, c.status);
                        break;
                case COMPLETION_SNAPSHOT_PUT:
                        ((raft_io_snapshot_put_cb) c.cb)(c.req, c.status);
                        break;
                case COMPLETION_SNAPSHOT_GET:
                        ((raft_io_snapshot_get_cb) c.cb)(c.req, c.arg, c.status);
                        break;
                case COMPLETION_ASYNC_WORK: {
                        struct raft_io_async_work *w = c.req;
                        ((raft_io_async_work_cb) c.cb)(w, w->work ? w->work(w) : 0);
                        break;
                }
                }
        }
        rio->n_completions = 0;
        return done;
}

static unsigned fire_completions_and_close(RaftIo *rio) {
        unsigned done = fire_completions(rio);

        if (rio->closing && rio->close_cb && !rio->flight && group_empty(rio->acc)) {
                raft_io_close_cb cb = TAKE_PTR(rio->close_cb);

                cb(&rio->io);
                done++;
        }
        return done;
}

/* Everything, synchronously (shutdown). */
static unsigned do_work_sync(RaftIo *rio) {
        unsigned done = 0, k;

        do {
                k = flush_appends(rio);
                k += fire_completions_and_close(rio);
                done += k;
        } while (k > 0);
        return done;
}

static int on_work(sd_event_source *s, void *userdata) {
        RaftIo *rio = userdata;

        if (rio->failed)
                return 0;
        group_submit(rio, rio->closing);
        (void) fire_completions_and_close(rio);
        after_raft(rio);
        return 0;
}

unsigned raft_io_drain(RaftIo *rio) {
        /* A member whose storage failed does not go through the shutdown (nor ever exits 0). */
        if (rio->failed) {
                raft_io_exit(EXIT_FAILURE);
                return 0;   /* only a test's raft_io_exit returns */
        }
        return do_work_sync(rio);
}

unsigned raft_io_n_pending_appends(RaftIo *rio) {
        return (unsigned) (rio->acc->n + (rio->flight ? rio->flight->n : 0));
}

static raft_time io_time(struct raft_io *io) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (raft_time) ts.tv_sec * 1000 + (raft_time) ts.tv_nsec / 1000000;
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        RaftIo *rio = userdata;

        if (rio->failed)
                return 0;
        (void) sd_event_source_set_time(s, usec + rio->tick_msecs * USEC_PER_MSEC);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ON);
        if (rio->tick_cb)
                rio->tick_cb(&rio->io);
        after_raft(rio);
        return 0;
}

static int io_init(struct raft_io *io, raft_id id, const char *address) {
        RaftIo *rio = io->impl;

        rio->id = id;
        rio->seed = (unsigned) (id ^ (id >> 32) ^ (uint64_t) io_time(io) ^ (uint64_t) getpid());
        return 0;
}

static void io_close(struct raft_io *io, raft_io_close_cb cb) {
        RaftIo *rio = io->impl;

        rio->closing = true;
        rio->close_cb = cb;
        rio->tick_source = sd_event_source_disable_unref(rio->tick_source);
        rio->notify_source = sd_event_source_disable_unref(rio->notify_source);
        work_schedule(rio);
}

/* Accumulates entry data for load(): one raft_malloc'd batch that all entries point into. */
typedef struct LoadState {
        struct raft_entry *entries;
        size_t n, alloc;
        uint8_t *data;
        size_t data_len, data_alloc;
        uint64_t first_index;
} LoadState;

static int load_entry(uint64_t index, uint64_t term, unsigned type, const void *data, size_t len,
                      void *userdata) {
        LoadState *st = userdata;

        if (st->n == 0)
                st->first_index = index;
        if (st->n == st->alloc) {
                size_t na = MAX(st->alloc * 2, (size_t) 64);
                void *p = raft_realloc(st->entries, na * sizeof(struct raft_entry));
                if (!p)
                        return -ENOMEM;
                st->entries = p;
                st->alloc = na;
        }
        if (st->data_len + len > st->data_alloc) {
                size_t na = MAX(st->data_alloc * 2, st->data_len + len + 4096);
                void *p = raft_realloc(st->data, na);
                if (!p)
                        return -ENOMEM;
                st->data = p;
                st->data_alloc = na;
        }
        memcpy(st->data + st->data_len, data, len);
        st->entries[st->n++] = (struct raft_entry) {
                .term = term,
                .type = (unsigned short) type,
                /* an offset for now; turned into a pointer once the batch stops moving */
                .buf = { .base = (void *) (uintptr_t) st->data_len, .len = len },
        };
        st->data_len += len;
        return 0;
}

int raft_io_configuration_encode(const struct raft_configuration *c, void **ret, size_t *ret_len) {
        size_t len = 4;
        uint8_t *buf, *p;

        for (unsigned i = 0; i < c->n; i++)
                len += 8 + 1 + 2 + strlen(c->servers[i].address ?: "");
        buf = malloc(len);
        if (!buf)
                return -ENOMEM;
        p = buf;
        p[0] = (uint8_t) (c->n >> 24);
        p[1] = (uint8_t) (c->n >> 16);
        p[2] = (uint8_t) (c->n >> 8);
        p[3] = (uint8_t) c->n;
        p += 4;
        for (unsigned i = 0; i < c->n; i++) {
                const char *a = c->servers[i].address ?: "";
                size_t al = strlen(a);

                codec_put_be64(p, c->servers[i].id);
                p[8] = (uint8_t) c->servers[i].role;
                p[9] = (uint8_t) (al >> 8);
                p[10] = (uint8_t) al;
                memcpy(p + 11, a, al);
                p += 11 + al;
        }
        *ret = buf;
        *ret_len = len;
        return 0;
}

int raft_io_configuration_decode(const void *buf, size_t len, struct raft_configuration *ret) {
        const uint8_t *p = buf;
        struct raft_configuration c;
        unsigned n;

        if (len < 4)
                return -EBADMSG;
        n = ((unsigned) p[0] << 24) | ((unsigned) p[1] << 16) | ((unsigned) p[2] << 8) | p[3];
        p += 4;
        len -= 4;
        raft_configuration_init(&c);
        for (unsigned i = 0; i < n; i++) {
                _cleanup_(freep) char *addr = NULL;
                size_t al;

                if (len < 11)
                        goto fail;
                al = ((size_t) p[9] << 8) | p[10];
                if (len < 11 + al)
                        goto fail;
                addr = strndup((const char *) p + 11, al);
                if (!addr || strlen(addr) != al)
                        goto fail;
                if (raft_configuration_add(&c, codec_get_be64(p), addr, p[8]) != 0)
                        goto fail;
                p += 11 + al;
                len -= 11 + al;
        }
        if (len != 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        raft_configuration_close(&c);
        return -EBADMSG;
}

static int snapshot_from_persist(const PersistSnapshot *ps, struct raft_snapshot **ret) {
        struct raft_snapshot *s;

        s = raft_calloc(1, sizeof(*s));
        if (!s)
                return RAFT_NOMEM;
        s->index = ps->index;
        s->term = ps->term;
        s->configuration_index = ps->conf_index;
        if (raft_io_configuration_decode(ps->conf, ps->conf_len, &s->configuration) < 0) {
                raft_free(s);
                return RAFT_CORRUPT;
        }
        s->bufs = raft_malloc(sizeof(struct raft_buffer));
        if (!s->bufs)
                goto nomem;
        s->bufs[0].base = raft_malloc(MAX(ps->data_len, (size_t) 1));
        if (!s->bufs[0].base) {
                raft_free(s->bufs);
                goto nomem;
        }
        memcpy(s->bufs[0].base, ps->data, ps->data_len);
        s->bufs[0].len = ps->data_len;
        s->n_bufs = 1;
        *ret = s;
        return 0;
nomem:
        raft_configuration_close(&s->configuration);
        raft_free(s);
        return RAFT_NOMEM;
}

static int io_load(struct raft_io *io, raft_term *term, raft_id *voted_for, struct raft_snapshot **snapshot,
                   raft_index *start_index, struct raft_entry *entries[], size_t *n_entries) {
        RaftIo *rio = io->impl;
        _cleanup_(persist_snapshot_done) PersistSnapshot ps = {};
        struct raft_snapshot *snap = NULL;
        LoadState st = {};
        uint64_t t, v;
        int r;

        r = persist_hard_state_load(rio->persist, &t, &v);
        if (r < 0)
                return RAFT_IOERR;
        r = persist_snapshot_load(rio->persist, &ps);
        if (r < 0)
                return RAFT_IOERR;
        if (ps.index > 0) {
                r = snapshot_from_persist(&ps, &snap);
                if (r != 0)
                        return r;
        }

        r = persist_log_foreach(rio->persist, 1, load_entry, &st);
        if (r < 0)
                goto fail;
        if (st.n > 0 && snap && st.first_index > snap->index + 1) {
                log_error("Raft log starts at %" PRIu64 ", after the snapshot at %llu: entries are missing.",
                          st.first_index, snap->index);
                goto fail;
        }
        if (st.n > 0 && !snap && st.first_index != 1) {
                log_error("Raft log starts at %" PRIu64 " without a snapshot: entries are missing.", st.first_index);
                goto fail;
        }
        for (size_t i = 0; i < st.n; i++) {
                st.entries[i].buf.base = st.data + (uintptr_t) st.entries[i].buf.base;
                st.entries[i].batch = st.data;
        }
        if (st.n == 0 && st.data) {
                raft_free(st.data);
                st.data = NULL;
        }

        *term = t;
        *voted_for = v;
        *snapshot = snap;
        *start_index = st.n > 0 ? st.first_index : snap ? snap->index + 1 : 1;
        *entries = st.entries;
        *n_entries = st.n;
        rio->last_index = st.n > 0 ? st.first_index + st.n - 1 : snap ? snap->index : 0;
        return 0;

fail:
        raft_free(st.entries);
        raft_free(st.data);
        if (snap) {
                raft_configuration_close(&snap->configuration);
                raft_free(snap->bufs[0].base);
                raft_free(snap->bufs);
                raft_free(snap);
        }
        return RAFT_CORRUPT;
}

static int io_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
        RaftIo *rio = io->impl;
        int r;

        /* libraft asks for ticks every heartbeat interval, but all its timers compare io->time() with
         * their deadlines, so ticking more often only makes them exact: with etcd2's 100 ms heartbeat a
         * follower would notice a dead leader (and a candidate its election timeout) up to 100 ms late. */
        rio->tick_msecs = MIN(msecs, RAFT_IO_TICK_MAX_MSEC);
        msecs = rio->tick_msecs;
        rio->tick_cb = tick;
        rio->recv_cb = recv;
        /* accuracy 1 ms: 0 would mean sd-event's default of 250 ms */
        r = sd_event_add_time_relative(rio->event, &rio->tick_source, CLOCK_MONOTONIC,
                                       msecs * USEC_PER_MSEC, USEC_PER_MSEC, on_tick, rio);
        if (r < 0)
                return RAFT_IOERR;
        (void) sd_event_source_set_description(rio->tick_source, "raft-tick");
        return 0;
}

static int io_bootstrap(struct raft_io *io, const struct raft_configuration *conf) {
        RaftIo *rio = io->impl;
        struct raft_buffer buf;
        uint64_t t, v, first, last;
        int r;

        r = persist_hard_state_load(rio->persist, &t, &v);
        if (r < 0)
                return RAFT_IOERR;
        r = persist_log_bounds(rio->persist, &first, &last);
        if (r < 0)
                return RAFT_IOERR;
        if (t != 0 || last != 0)
                return RAFT_CANTBOOTSTRAP;

        r = raft_configuration_encode(conf, &buf);
        if (r != 0)
                return r;
        /* Entry 1 and term 1 in one synced write: a crash leaves either both or neither. */
        persist_batch_log_append(rio->acc->batch, 1, 1, RAFT_CHANGE, buf.base, buf.len);
        persist_batch_term(rio->acc->batch, 1);
        raft_free(buf.base);
        r = persist_write(rio->acc->batch, true);
        if (r < 0) {
                raft_io_fatal(rio, r, "persist the bootstrap configuration");
                return RAFT_IOERR;
        }
        rio->last_index = 1;
        return 0;
}

/* --force-new-cluster: a configuration entry after the last one, in the current term, written at
 * once (before raft_start() loads the log); it takes effect as the latest configuration. */
static int io_recover(struct raft_io *io, const struct raft_configuration *conf) {
        RaftIo *rio = io->impl;
        _cleanup_(persist_snapshot_done) PersistSnapshot ps = {};
        struct raft_buffer buf;
        uint64_t t, v, first, last;
        int r;

        r = persist_hard_state_load(rio->persist, &t, &v);
        if (r < 0)
                return RAFT_IOERR;
        r = persist_log_bounds(rio->persist, &first, &last);
        if (r < 0)
                return RAFT_IOERR;
        if (last == 0) {
                r = persist_snapshot_load(rio->persist, &ps);
                if (r < 0)
                        return RAFT_IOERR;
                last = ps.index;
        }
        if (t == 0 && last == 0)
                return RAFT_NOTFOUND;

        r = raft_configuration_encode(conf, &buf);
        if (r != 0)
                return r;
        persist_batch_log_append(rio->acc->batch, last + 1, MAX(t, (uint64_t) 1), RAFT_CHANGE, buf.base, buf.len);
        raft_free(buf.base);
        r = persist_write(rio->acc->batch, true);
        if (r < 0) {
                raft_io_fatal(rio, r, "persist the recovered configuration");
                return RAFT_IOERR;
        }
        rio->last_index = last + 1;
        log_info("Appended a configuration of %u member(s) at Raft index %" PRIu64 ".", conf->n, last + 1);
        return 0;
}

/* A failed term or vote: libraft gets RAFT_IOERR (it must not act on the term or vote), but it gets
 * no further chance to act at all (raft_io_fatal()). */
static int io_set_term(struct raft_io *io, raft_term term) {
        RaftIo *rio = io->impl;
        int r;

        if (rio->failed)
                return RAFT_IOERR;
        r = persist_set_term(rio->persist, term);
        if (r < 0) {
                raft_io_fatal(rio, r, "persist the Raft term");
                return RAFT_IOERR;
        }
        return 0;
}

static int io_set_vote(struct raft_io *io, raft_id server_id) {
        RaftIo *rio = io->impl;
        int r;

        if (rio->failed)
                return RAFT_IOERR;
        r = persist_set_vote(rio->persist, server_id);
        if (r < 0) {
                raft_io_fatal(rio, r, "persist the Raft vote");
                return RAFT_IOERR;
        }
        return 0;
}

/* etcd_network_peer_round_trip_time_seconds: a heartbeat to a peer is timed until that peer's next
 * AppendEntries result (one at a time per peer; one lost is given up after RTT_GIVE_UP_USEC). */
#define RTT_GIVE_UP_USEC (5 * USEC_PER_SEC)

static void rtt_heartbeat_sent(uint64_t id) {
        MetricsPeerRtt *p = metrics_peer_rtt(&metrics, id);
        uint64_t now = metrics_now_usec();

        if (p && (p->pending_usec == 0 || now - p->pending_usec > RTT_GIVE_UP_USEC))
                p->pending_usec = now;
}

static void rtt_result_received(uint64_t id) {
        MetricsPeerRtt *p = metrics_peer_rtt(&metrics, id);

        if (!p || p->pending_usec == 0)
                return;
        metrics_observe(&p->rtt, &metrics_rtt_buckets, metrics_now_usec() - p->pending_usec);
        p->pending_usec = 0;
}

static int io_send(struct raft_io *io, struct raft_io_send *req, const struct raft_message *message,
                   raft_io_send_cb cb) {
        RaftIo *rio = io->impl;
        struct raft_message capped;
        int r;

        req->cb = cb;
        if (rio->failed)
                return 0;   /* never sent, never completed: nothing leaves a member that is stopping */
        if (message->type == RAFT_IO_APPEND_ENTRIES_RESULT) {
                /* A follower claims only what the leader's AppendEntries checked (raft-guard.h). The
                 * transport serializes the message before it returns: a copy on the stack will do. */
                capped = *message;
                if (raft_guard_follower_cap(&rio->guard, &capped)) {
                        log_debug("Raft: result to %" PRIu64 " claims %" PRIu64 ", not %" PRIu64
                                  " (entries past that are not known to be the leader's).",
                                  (uint64_t) message->server_id,
                                  (uint64_t) capped.append_entries_result.last_log_index,
                                  (uint64_t) message->append_entries_result.last_log_index);
                        message = &capped;
                }
        }
        if (rio->raft)
                raft_guard_note_send(&rio->guard, rio->raft, message);
        if (message->type == RAFT_IO_APPEND_ENTRIES && message->append_entries.n_entries == 0)
                rtt_heartbeat_sent(message->server_id);
        if (!rio->send_func)
                /* No transport (a single member never sends): fail like an unreachable peer would. */
                return completion_add(rio, COMPLETION_SEND, req, (void *) cb, NULL, RAFT_NOCONNECTION);

        r = rio->send_func(rio, req, message, rio->send_userdata);
        if (r < 0)
                return completion_add(rio, COMPLETION_SEND, req, (void *) cb, NULL, RAFT_NOCONNECTION);
        return 0;
}

void raft_io_send_done(RaftIo *rio, struct raft_io_send *req, int status) {
        if (completion_add(rio, COMPLETION_SEND, req, (void *) req->cb, NULL, status) != 0)
                log_oom();
}

void raft_io_deliver(RaftIo *rio, struct raft_message *message) {
        if (!rio->recv_cb || rio->closing || rio->failed)
                return;
        if (message->type == RAFT_IO_APPEND_ENTRIES_RESULT)
                rtt_result_received(message->server_id);
        /* On a leader, an AppendEntries result that would let libraft 0.15 count an older term's entry
         * is lowered first (raft-guard.c has the argument). */
        if (rio->raft)
                (void) raft_guard_filter_recv(&rio->guard, rio->raft, message);
        /* On a follower, the result libraft sends from inside (or from the completion of the append it
         * makes) answers this AppendEntries: the guard caps its claim at what it checked. */
        if (message->type == RAFT_IO_APPEND_ENTRIES)
                raft_guard_follower_enter(&rio->guard, message->append_entries.term,
                                          message->append_entries.prev_log_index +
                                          message->append_entries.n_entries);
        rio->recv_cb(&rio->io, message);
        raft_guard_follower_leave(&rio->guard);
        after_raft(rio);
}

void raft_io_set_raft(RaftIo *rio, struct raft *raft) {
        rio->raft = raft;
}

const RaftGuard *raft_io_guard(RaftIo *rio) {
        return &rio->guard;
}

void raft_io_set_transport(RaftIo *rio, RaftIoSendFunc send, void *userdata) {
        rio->send_func = send;
        rio->send_userdata = userdata;
}

static int io_append(struct raft_io *io, struct raft_io_append *req, const struct raft_entry entries[],
                     unsigned n, raft_io_append_cb cb) {
        RaftIo *rio = io->impl;
        AppendGroup *g = rio->acc;

        if (rio->closing)
                return RAFT_CANCELED;
        if (rio->failed) {
                req->cb = cb;
                return 0;   /* accepted, never written, never completed (raft_io_fatal()) */
        }
        if (grow((void **) &g->appends, &g->alloc, g->n + 1, sizeof(PendingAppend)) < 0)
                return RAFT_NOMEM;

        /* The batch copies the data: libraft's buffers are only valid until the callback. */
        for (unsigned i = 0; i < n; i++)
                persist_batch_log_append(g->batch, ++rio->last_index, entries[i].term, entries[i].type,
                                         entries[i].buf.base, entries[i].buf.len);
        req->cb = cb;
        g->appends[g->n] = (PendingAppend) { .req = req, .cb = (void *) cb };
        g->appends[g->n].ae_context = raft_guard_follower_context(&rio->guard, &g->appends[g->n].ae_term,
                                                                  &g->appends[g->n].ae_end);
        g->n++;
        raft_io_kick(rio);
        return 0;
}

static int io_truncate(struct raft_io *io, raft_index index) {
        RaftIo *rio = io->impl;

        if (rio->failed)
                return RAFT_IOERR;
        /* Ordered after the appends already in the batch and before the ones that follow. */
        persist_batch_log_truncate(rio->acc->batch, index);
        if (!rio->flight && rio->acc->n == 0) {
                int r;

                if (rio->batch_cb)
                        rio->batch_cb(rio, rio->acc->batch, rio->event_userdata);
                r = persist_write(rio->acc->batch, true);
                if (r < 0) {
                        raft_io_fatal(rio, r, "truncate the Raft log");
                        return RAFT_IOERR;
                }
        } else
                work_schedule(rio);
        rio->last_index = index > 0 ? index - 1 : 0;
        return 0;
}

/* The records of a snapshot, whether one export buffer (below) or a stream's chunks (snapshot.c). */
int raft_io_snapshot_records_parse(const void *buf, size_t size, RaftIoExportRecordFunc cb, void *userdata,
                                   uint64_t *ret_n) {
        const uint8_t *p = buf;
        uint64_t n_records = 0;
        size_t off = 0;

        while (off < size) {
                uint64_t klen, vlen;
                const uint8_t *k, *v;
                char kind = (char) p[off++];
                size_t n;

                if (kind != 'n' && kind != 'h')
                        return -EBADMSG;
                n = codec_varint_get(p + off, size - off, &klen);
                if (n == 0 || klen > size - off - n)
                        return -EBADMSG;
                off += n;
                k = p + off;
                off += klen;
                n = codec_varint_get(p + off, size - off, &vlen);
                if (n == 0 || vlen > size - off - n)
                        return -EBADMSG;
                off += n;
                v = p + off;
                off += vlen;
                if ((kind == 'h' && klen != 8) || (kind == 'n' && (klen == 0 || memchr(k, 0, klen))))
                        return -EBADMSG;
                if (cb) {
                        int r = cb(kind, k, klen, v, vlen, userdata);
                        if (r < 0)
                                return r;
                }
                n_records++;
        }
        if (ret_n)
                *ret_n = n_records;
        return 0;
}

int raft_io_snapshot_export_parse(const void *buf, size_t len, uint64_t *ret_applied, uint64_t *ret_etcd_index,
                                  RaftIoExportRecordFunc cb, void *userdata) {
        const uint8_t *p = buf;

        if (len < RAFT_IO_SNAPSHOT_EXPORT_HEADER || memcmp(p, RAFT_IO_SNAPSHOT_EXPORT_MAGIC, 8) != 0)
                return -EBADMSG;
        if (ret_applied)
                *ret_applied = codec_get_be64(p + 8);
        if (ret_etcd_index)
                *ret_etcd_index = codec_get_be64(p + 16);
        return raft_io_snapshot_records_parse(p + RAFT_IO_SNAPSHOT_EXPORT_HEADER, len - RAFT_IO_SNAPSHOT_EXPORT_HEADER,
                                              cb, userdata, NULL);
}

typedef struct InstallCtx {
        PersistBatch *batch;
} InstallCtx;

/* Everything install_record() could refuse, checked before the state is cleared in the batch. */
static int validate_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                           void *userdata) {
        return kind == 'n' && memchr(key, 0, key_len) ? -EBADMSG : 0;
}

static int install_record(char kind, const void *key, size_t key_len, const void *value, size_t value_len,
                          void *userdata) {
        InstallCtx *c = userdata;

        /* Counted key straight into the batch: no copy (a stack copy sized by the sender overflowed
         * with a 64 MiB key). A key with a NUL inside could never be loaded: refused. */
        if (kind == 'n') {
                if (memchr(key, 0, key_len))
                        return -EBADMSG;
                persist_batch_node_put_raw(c->batch, key, key_len, value, value_len);
        } else
                persist_batch_history_put_raw(c->batch, key, key_len, value, value_len);
        return 0;
}

static int io_snapshot_put(struct raft_io *io, unsigned trailing, struct raft_io_snapshot_put *req,
                           const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb) {
        RaftIo *rio = io->impl;
        PersistSnapshot ps = {
                .index = snapshot->index,
                .term = snapshot->term,
                .conf_index = snapshot->configuration_index,
        };
        uint64_t keep_from;
        size_t total = 0;
        uint8_t *p;
        int r;

        if (rio->closing)
                return RAFT_CANCELED;
        if (rio->failed) {
                req->cb = cb;
                return 0;   /* accepted, never written, never completed (raft_io_fatal()) */
        }
        r = raft_io_configuration_encode(&snapshot->configuration, &ps.conf, &ps.conf_len);
        if (r < 0)
                return RAFT_NOMEM;
        for (unsigned i = 0; i < snapshot->n_bufs; i++)
                total += snapshot->bufs[i].len;
        ps.data = p = malloc(MAX(total, (size_t) 1));
        if (!p) {
                persist_snapshot_done(&ps);
                return RAFT_NOMEM;
        }
        for (unsigned i = 0; i < snapshot->n_bufs; i++) {
                memcpy(p, snapshot->bufs[i].base, snapshot->bufs[i].len);
                p += snapshot->bufs[i].len;
        }
        ps.data_len = total;

        if (total == RAFT_IO_SNAPSHOT_REF_SIZE && memcmp(ps.data, RAFT_IO_SNAPSHOT_REF_MAGIC, 8) == 0) {
                /* A leader's streamed state, staged complete (snapshot.c): the install marker goes
                 * into this group's synced batch, after what the FSM applied before; the writer then
                 * switches to the staged state (group_write). */
                uint64_t id = codec_get_be64((uint8_t *) ps.data + 8);
                uint8_t *marker;

                if (!rio->staged || rio->staged_id != id || rio->installing) {
                        log_error("Snapshot stream %" PRIx64 " is not staged, refusing the snapshot.", id);
                        persist_snapshot_done(&ps);
                        return RAFT_CORRUPT;
                }
                marker = malloc(16);
                if (!marker ||
                    grow((void **) &rio->acc->appends, &rio->acc->alloc, rio->acc->n + 1, sizeof(PendingAppend)) < 0) {
                        free(marker);
                        persist_snapshot_done(&ps);
                        return RAFT_NOMEM;
                }
                memcpy(marker, RAFT_IO_SNAPSHOT_MARKER_MAGIC, 8);
                codec_put_be64(marker + 8, rio->staged_applied);
                free(ps.data);
                ps.data = marker;
                ps.data_len = 16;
                if (trailing == 0) {
                        keep_from = UINT64_MAX;
                        rio->last_index = snapshot->index;
                } else
                        keep_from = snapshot->index > trailing ? snapshot->index - trailing + 1 : 1;
                if (rio->batch_cb)
                        rio->batch_cb(rio, rio->acc->batch, rio->event_userdata);
                r = persist_batch_install_begin(rio->acc->batch, &ps, keep_from, rio->staged_applied,
                                                rio->staged_etcd_index);
                persist_snapshot_done(&ps);
                if (r < 0)
                        return RAFT_NOMEM;
                rio->acc->install = true;
                rio->installing = true;
                rio->staged = false;
                log_info("Installing the leader's snapshot from stream %" PRIx64 ": Raft index %llu, state as of %"
                         PRIu64 " (etcd index %" PRIu64 ").", id, snapshot->index, rio->staged_applied,
                         rio->staged_etcd_index);
                req->cb = cb;
                rio->acc->appends[rio->acc->n++] = (PendingAppend) { .req = req, .cb = (void *) cb, .snapshot = true };
                raft_io_kick(rio);
                return 0;
        }
        if (total >= RAFT_IO_SNAPSHOT_EXPORT_HEADER && memcmp(ps.data, RAFT_IO_SNAPSHOT_EXPORT_MAGIC, 8) == 0) {
                /* A leader's export: its state replaces ours in the same write as the snapshot record,
                 * which keeps only a marker. What the FSM applied before goes first. */
                InstallCtx ctx = { .batch = rio->acc->batch };
                uint64_t applied = 0, etcd_index = 0;
                uint8_t *marker;

                if (raft_io_snapshot_export_parse(ps.data, total, &applied, &etcd_index, validate_record, NULL) < 0) {
                        log_error("Received a malformed snapshot, refusing it.");
                        persist_snapshot_done(&ps);
                        return RAFT_CORRUPT;
                }
                if (rio->batch_cb)
                        rio->batch_cb(rio, rio->acc->batch, rio->event_userdata);
                persist_batch_state_clear(rio->acc->batch);
                (void) raft_io_snapshot_export_parse(ps.data, total, NULL, NULL, install_record, &ctx);
                persist_batch_applied(rio->acc->batch, applied, etcd_index);
                marker = malloc(16);
                if (!marker) {
                        persist_snapshot_done(&ps);
                        return RAFT_NOMEM;
                }
                memcpy(marker, RAFT_IO_SNAPSHOT_MARKER_MAGIC, 8);
                codec_put_be64(marker + 8, applied);
                free(ps.data);
                ps.data = marker;
                ps.data_len = 16;
                log_info("Installing a snapshot of the leader: Raft index %llu, state as of %" PRIu64 " (etcd index %"
                         PRIu64 ", %zu bytes).", snapshot->index, applied, etcd_index, total);
        }

        /* trailing == 0: an installed snapshot replaces the whole log. */
        if (trailing == 0) {
                keep_from = UINT64_MAX;
                rio->last_index = snapshot->index;
        } else
                keep_from = snapshot->index > trailing ? snapshot->index - trailing + 1 : 1;

        /* Into the accumulating group: ordered after the applied state the FSM wrote for the entries
         * it covers, so log entries never disappear before their effects are stored. */
        if (grow((void **) &rio->acc->appends, &rio->acc->alloc, rio->acc->n + 1, sizeof(PendingAppend)) < 0) {
                persist_snapshot_done(&ps);
                return RAFT_NOMEM;
        }
        persist_batch_snapshot_put(rio->acc->batch, &ps, keep_from);
        persist_snapshot_done(&ps);
        log_debug("Snapshot at Raft index %llu queued, log kept from %" PRIu64 ".", snapshot->index, keep_from);

        req->cb = cb;
        rio->acc->appends[rio->acc->n++] = (PendingAppend) { .req = req, .cb = (void *) cb, .snapshot = true };
        raft_io_kick(rio);
        return 0;
}

static void snapshot_free_raft(struct raft_snapshot *snap) {
        if (!snap)
                return;
        raft_configuration_close(&snap->configuration);
        for (unsigned i = 0; i < snap->n_bufs; i++)
                raft_free(snap->bufs[i].base);
        raft_free(snap->bufs);
        raft_free(snap);
}

static int io_snapshot_get(struct raft_io *io, struct raft_io_snapshot_get *req, raft_io_snapshot_get_cb cb) {
        RaftIo *rio = io->impl;
        _cleanup_(persist_snapshot_done) PersistSnapshot ps = {};
        struct raft_snapshot *snap = NULL;
        uint8_t *ref;
        int r;

        if (rio->closing)
                return RAFT_CANCELED;
        r = persist_snapshot_load(rio->persist, &ps);
        if (r < 0)
                return RAFT_IOERR;
        if (ps.index == 0)
                return RAFT_NOTFOUND;
        r = snapshot_from_persist(&ps, &snap);
        if (r != 0)
                return r;

        /* For a follower: a reference to a stream of the applied state (raft-io.h), which the peer
         * layer sends ahead of the InstallSnapshot (snapshot.c). Nothing is read here. */
        ref = raft_malloc(RAFT_IO_SNAPSHOT_REF_SIZE);
        if (!ref) {
                snapshot_free_raft(snap);
                return RAFT_NOMEM;
        }
        memcpy(ref, RAFT_IO_SNAPSHOT_REF_MAGIC, 8);
        codec_put_be64(ref + 8, ((uint64_t) io_time(io) << 16) ^ ++rio->stream_seq ^ ((uint64_t) rio->id << 40));
        raft_free(snap->bufs[0].base);
        snap->bufs[0].base = ref;
        snap->bufs[0].len = RAFT_IO_SNAPSHOT_REF_SIZE;
        req->cb = cb;
        r = completion_add(rio, COMPLETION_SNAPSHOT_GET, req, (void *) cb, snap, 0);
        if (r != 0)
                snapshot_free_raft(snap);
        return r;
}

static int io_random(struct raft_io *io, int min, int max) {
        RaftIo *rio = io->impl;

        if (max <= min)
                return min;
        return min + (int) (rand_r(&rio->seed) % (unsigned) (max - min));
}

static int io_async_work(struct raft_io *io, struct raft_io_async_work *req, raft_io_async_work_cb cb) {
        RaftIo *rio = io->impl;

        req->cb = cb;
        return completion_add(rio, COMPLETION_ASYNC_WORK, req, (void *) cb, NULL, 0);
}

int raft_io_new(sd_event *event, Persist *persist, RaftIo **ret) {
        _cleanup_(raft_io_freep) RaftIo *rio = NULL;
        int r;

        rio = calloc(1, sizeof(*rio));
        if (!rio)
                return -ENOMEM;
        rio->event = sd_event_ref(event);
        rio->persist = persist;

        rio->efd = -1;
        for (size_t i = 0; i < 2; i++) {
                r = persist_batch_new(persist, &rio->groups[i].batch);
                if (r < 0)
                        return r;
        }
        rio->acc = &rio->groups[0];

        r = sd_event_add_time_relative(event, &rio->lazy_source, CLOCK_MONOTONIC, RAFT_IO_LAZY_USEC,
                                       USEC_PER_MSEC, on_lazy, rio);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(rio->lazy_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(rio->lazy_source, "raft-io-lazy");

        rio->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (rio->efd < 0)
                return -errno;
        r = sd_event_add_io(event, &rio->efd_source, rio->efd, EPOLLIN, on_writer_done, rio);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(rio->efd_source, "raft-io-writer");
        pthread_mutex_init(&rio->lock, NULL);
        pthread_cond_init(&rio->cond, NULL);
        r = -pthread_create(&rio->thread, NULL, writer_thread, rio);
        if (r < 0)
                return r;
        rio->thread_started = true;
        r = sd_event_add_defer(event, &rio->work_source, on_work, rio);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(rio->work_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(rio->work_source, "raft-io-work");
        r = sd_event_add_defer(event, &rio->notify_source, on_commit_notify, rio);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(rio->notify_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(rio->notify_source, "raft-commit-notify");
        (void) sd_event_source_set_priority(rio->notify_source, SD_EVENT_PRIORITY_NORMAL + 1);

        rio->io = (struct raft_io) {
                .version = 2,
                .impl = rio,
                .init = io_init,
                .close = io_close,
                .load = io_load,
                .start = io_start,
                .bootstrap = io_bootstrap,
                .recover = io_recover,
                .set_term = io_set_term,
                .set_vote = io_set_vote,
                .send = io_send,
                .append = io_append,
                .truncate = io_truncate,
                .snapshot_put = io_snapshot_put,
                .snapshot_get = io_snapshot_get,
                .time = io_time,
                .random = io_random,
                .async_work = io_async_work,
        };

        *ret = TAKE_PTR(rio);
        return 0;
}

RaftIo *raft_io_free(RaftIo *rio) {
        if (!rio)
                return NULL;
        sd_event_source_disable_unref(rio->tick_source);
        sd_event_source_disable_unref(rio->work_source);
        sd_event_source_disable_unref(rio->lazy_source);
        sd_event_source_disable_unref(rio->fatal_source);
        sd_event_source_disable_unref(rio->notify_source);
        raft_guard_done(&rio->guard);
        if (rio->thread_started) {
                /* libraft is gone: wait for a write in progress, but fire no callbacks */
                pthread_mutex_lock(&rio->lock);
                while (rio->flight && !rio->job_done)
                        pthread_cond_wait(&rio->cond, &rio->lock);
                rio->stop = true;
                pthread_cond_broadcast(&rio->cond);
                pthread_mutex_unlock(&rio->lock);
                (void) pthread_join(rio->thread, NULL);
                pthread_mutex_destroy(&rio->lock);
                pthread_cond_destroy(&rio->cond);
        }
        if (rio->installed && rio->install_loader)
                rio->install_loader(NULL, &rio->installed, rio->install_userdata);   /* frees it */
        sd_event_source_disable_unref(rio->efd_source);
        if (rio->efd >= 0)
                (void) close(rio->efd);
        for (size_t i = 0; i < 2; i++) {
                persist_batch_free(rio->groups[i].batch);
                free(rio->groups[i].appends);
        }
        free(rio->completions);
        sd_event_unref(rio->event);
        free(rio);
        return NULL;
}

void raft_io_snapshot_staged(RaftIo *rio, uint64_t stream_id, uint64_t applied, uint64_t etcd_index) {
        rio->staged = true;
        rio->staged_id = stream_id;
        rio->staged_applied = applied;
        rio->staged_etcd_index = etcd_index;
}

void raft_io_snapshot_unstage(RaftIo *rio) {
        rio->staged = false;
}

bool raft_io_installing(RaftIo *rio) {
        return rio->installing;
}

void raft_io_set_install_loader(RaftIo *rio, RaftIoInstallLoader loader, void *userdata) {
        rio->install_loader = loader;
        rio->install_userdata = userdata;
}

void *raft_io_take_installed(RaftIo *rio, uint64_t *ret_applied) {
        *ret_applied = rio->staged_applied;
        return TAKE_PTR(rio->installed);
}

PersistBatch *raft_io_batch(RaftIo *rio) {
        return rio->acc->batch;
}

void raft_io_kick(RaftIo *rio) {
        if (!rio->flight && !rio->failed)
                work_schedule(rio);
}

struct raft_io *raft_io_get(RaftIo *rio) {
        return &rio->io;
}

void raft_io_set_event_callback(RaftIo *rio, RaftIoEventCallback cb, RaftIoBatchCallback batch_cb,
                                void *userdata) {
        rio->event_cb = cb;
        rio->batch_cb = batch_cb;
        rio->event_userdata = userdata;
}
