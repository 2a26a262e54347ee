/* SPDX-License-Identifier: Apache-2.0 */
/* main.c - etcd2: argv/env -> manager_new() -> manager_start() -> sd_event_loop(). */

#include <signal.h>

#include <systemd/sd-daemon.h>

#include "config-build.h"
#include "log.h"
#include "manager.h"

extern char **environ;

int main(int argc, char *argv[]) {
        Config *config = NULL;
        Manager *m = NULL;
        int exit_status = 0, sig, r;
        bool failed;

        r = config_load(argc, argv, environ, &config, &exit_status);
        if (r < 0) {
                log_error_errno(r, "Failed to load configuration: %m");
                return 1;
        }
        if (r > 0)
                return exit_status;

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
