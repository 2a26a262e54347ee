/* SPDX-License-Identifier: Apache-2.0 */
/* auth-worker.c - bcrypt off the event loop: one thread hashes and verifies v2 auth passwords. */

/*
 * A bcrypt at etcd2's cost (10) takes ~50-100 ms: on the loop it would stall every client for each
 * new credential or wrong password. Jobs go to one thread through a mutex-protected FIFO; finished ones
 * come back through an eventfd watched by sd-event and their callbacks run on the loop thread. One
 * thread is enough here (2 cores, shared with the member's own work) and bounds what a flood of bad
 * passwords can cost: they queue behind each other, up to AUTH_WORKER_QUEUE_MAX, then are refused.
 *
 * Threads share only the two lists and the stop flag (under the mutex) and a job's inputs/outputs (its
 * inputs are written before it is queued, its outputs before it is handed back). `cancelled` is read and
 * written on the loop thread only.
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "auth.h"
#include "auth-worker.h"
#include "log.h"
#include "macro.h"

#define AUTH_WORKER_QUEUE_MAX 256

struct AuthJob {
        AuthJob *next;
        char *password;
        char *hash;              /* in: the hash to check against (NULL = make one); out: the new hash */
        bool check;
        bool ok;
        bool cancelled;
        AuthJobCallback cb;
        void *userdata;
};

struct AuthWorker {
        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        AuthJob *pending, **pending_tail;
        AuthJob *done, **done_tail;
        unsigned n_pending;
        bool stop;
        int efd;
        sd_event_source *source;
};

static AuthJob *job_free(AuthJob *j) {
        if (!j)
                return NULL;
        if (j->password) {
                explicit_bzero(j->password, strlen(j->password));
                free(j->password);
        }
        free(j->hash);
        free(j);
        return NULL;
}

static void *worker_main(void *arg) {
        AuthWorker *w = arg;

        for (;;) {
                AuthJob *j;

                pthread_mutex_lock(&w->lock);
                while (!w->stop && !w->pending)
                        pthread_cond_wait(&w->cond, &w->lock);
                if (w->stop) {
                        pthread_mutex_unlock(&w->lock);
                        return NULL;
                }
                j = w->pending;
                w->pending = j->next;
                if (!w->pending)
                        w->pending_tail = &w->pending;
                pthread_mutex_unlock(&w->lock);

                j->next = NULL;
                if (j->check)
                        j->ok = auth_check_password(j->hash, j->password);
                else {
                        char *h = NULL;
                        j->ok = auth_hash_password(j->password, &h) >= 0;
                        j->hash = h;
                }

                pthread_mutex_lock(&w->lock);
                *w->done_tail = j;
                w->done_tail = &j->next;
                w->n_pending--;
                pthread_mutex_unlock(&w->lock);
                (void) eventfd_write(w->efd, 1);
        }
}

static int on_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        AuthWorker *w = userdata;
        AuthJob *list;
        eventfd_t v;

        (void) eventfd_read(w->efd, &v);
        pthread_mutex_lock(&w->lock);
        list = w->done;
        w->done = NULL;
        w->done_tail = &w->done;
        pthread_mutex_unlock(&w->lock);

        while (list) {
                AuthJob *j = list;

                list = j->next;
                if (!j->cancelled)
                        j->cb(j, j->userdata);
                job_free(j);
        }
        return 0;
}

int auth_worker_new(sd_event *event, AuthWorker **ret) {
        AuthWorker *w;
        int r;

        w = calloc(1, sizeof(AuthWorker));
        if (!w)
                return -ENOMEM;
        w->pending_tail = &w->pending;
        w->done_tail = &w->done;
        w->efd = -1;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);

        w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->efd < 0) {
                r = -errno;
                auth_worker_free(w);
                return r;
        }
        r = sd_event_add_io(event, &w->source, w->efd, EPOLLIN, on_done, w);
        if (r < 0) {
                auth_worker_free(w);
                return r;
        }
        (void) sd_event_source_set_description(w->source, "auth-worker");
        r = -pthread_create(&w->thread, NULL, worker_main, w);
        if (r < 0) {
                auth_worker_free(w);
                return r;
        }
        w->started = true;
        *ret = w;
        return 0;
}

AuthWorker *auth_worker_free(AuthWorker *w) {
        if (!w)
                return NULL;
        if (w->started) {
                pthread_mutex_lock(&w->lock);
                w->stop = true;
                pthread_cond_signal(&w->cond);
                pthread_mutex_unlock(&w->lock);
                (void) pthread_join(w->thread, NULL);
        }
        while (w->pending) {
                AuthJob *j = w->pending;
                w->pending = j->next;
                job_free(j);
        }
        while (w->done) {
                AuthJob *j = w->done;
                w->done = j->next;
                job_free(j);
        }
        sd_event_source_disable_unref(w->source);
        if (w->efd >= 0)
                (void) close(w->efd);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        free(w);
        return NULL;
}

int auth_worker_submit(AuthWorker *w, const char *password, const char *hash, AuthJobCallback cb,
                       void *userdata, AuthJob **ret) {
        AuthJob *j;

        j = calloc(1, sizeof(AuthJob));
        if (!j)
                return -ENOMEM;
        j->password = strdup(password);
        j->hash = hash ? strdup(hash) : NULL;
        j->check = hash;
        j->cb = cb;
        j->userdata = userdata;
        if (!j->password || (hash && !j->hash)) {
                job_free(j);
                return -ENOMEM;
        }

        pthread_mutex_lock(&w->lock);
        if (w->n_pending >= AUTH_WORKER_QUEUE_MAX) {
                pthread_mutex_unlock(&w->lock);
                job_free(j);
                return -EBUSY;
        }
        *w->pending_tail = j;
        w->pending_tail = &j->next;
        w->n_pending++;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        *ret = j;
        return 0;
}

void auth_job_cancel(AuthJob *j) {
        if (j)
                j->cancelled = true;
}

bool auth_job_ok(const AuthJob *j) {
        return j->ok;
}

const char *auth_job_hash(const AuthJob *j) {
        return j->hash;
}
