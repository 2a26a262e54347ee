/* SPDX-License-Identifier: Apache-2.0 */
/* auth-worker.h - bcrypt off the event loop: one thread hashes and verifies v2 auth passwords. */
#pragma once

#include <stdbool.h>

#include <systemd/sd-event.h>

typedef struct AuthWorker AuthWorker;
typedef struct AuthJob AuthJob;

/* Runs on the loop thread once the job is done; the job is freed after it returns. */
typedef void (*AuthJobCallback)(AuthJob *j, void *userdata);

int auth_worker_new(sd_event *event, AuthWorker **ret);
AuthWorker *auth_worker_free(AuthWorker *w);

/* hash NULL: make a new bcrypt hash of password; else check password against hash. -EBUSY when too
 * many jobs wait already (a flood of bad credentials must not grow the queue without bound). */
int auth_worker_submit(AuthWorker *w, const char *password, const char *hash, AuthJobCallback cb,
                       void *userdata, AuthJob **ret);
/* The callback will not run (the request went away); the worker frees the job. Loop thread only. */
void auth_job_cancel(AuthJob *j);

bool auth_job_ok(const AuthJob *j);           /* check: the password matched; hash: it worked */
const char *auth_job_hash(const AuthJob *j);  /* hash: the new hash */
