/* SPDX-License-Identifier: Apache-2.0 */
/* main.c - etcd2: argv/env -> manager_new() -> manager_start() -> sd_event_loop(). */

#include <malloc.h>
#include <signal.h>
#include <stdlib.h>

#include <systemd/sd-daemon.h>

#include "config-build.h"
#include "credentials.h"
#include "log.h"
#include "manager.h"

extern char **environ;

int main(int argc, char *argv[]) {
        Config *config = NULL;
        Manager *m = NULL;
        int exit_status = 0, sig, r;
        bool failed;

        /* Values of up to 1 MiB come and go in request and answer buffers. glibc raises its mmap
         * threshold after the first such buffer is freed, and from then on keeps them in the heap,
         * where they stay after the free: twenty 1 MiB writes grew the RSS by ~110 MiB instead of ~50.
         * A fixed threshold gives big buffers back to the kernel when freed. */
        (void) mallopt(M_MMAP_THRESHOLD, 256 * 1024);

        r = config_load(argc, argv, environ, &config, &exit_status);
        if (r < 0) {
                log_error_errno(r, "Failed to load configuration: %m");
                return 1;
        }
        if (r > 0)
                return exit_status;

        /* Under LoadCredential=, --cert-file cert.pem etc. name credentials (credentials.h); a missing one
         * is a configuration error like any other: exit 1 with a message naming it. */
        r = credentials_resolve(config, getenv("CREDENTIALS_DIRECTORY"));
        if (r < 0) {
                config_free(config);
                return 1;
        }

        r = manager_new(config, &m);
        if (r < 0) {
                config_free(config);
                return 1;
        }

        r = manager_start(m);
        if (r < 0) {
                (void) sd_notifyf(false, "STATUS=Failed to start: %s\nERRNO=%i", strerror(-r), -r);
                manager_free(m);
                return 1;
        }

        r = manager_run(m);
        sig = m->exit_signal;
        failed = m->failed;
        manager_free(m);
        if (r < 0) {
                /* a failed discovery or start-up step has said why already */
                if (!failed)
                        log_error_errno(r, "Event loop failed: %m");
                return 1;
        }
        log_info("etcd2 stopped");

        /* etcd2 re-raises the signal that stopped it, so the process dies by it. */
        if (sig > 0) {
                (void) signal(sig, SIG_DFL);
                sigset_t ss;
                sigemptyset(&ss);
                sigaddset(&ss, sig);
                (void) sigprocmask(SIG_UNBLOCK, &ss, NULL);
                (void) raise(sig);
        }
        return 0;
}
