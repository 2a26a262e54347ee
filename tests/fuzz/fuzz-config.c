/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-config.c - libFuzzer target for flags and ETCD_* parsing (config.c). The input is lines: those
 * that start with "ETCD_" are the environment, the others the arguments; config_load() parses them as
 * etcd2 would, and each line also goes through the URL and --initial-cluster parsers alone. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define LINES_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *argv[LINES_MAX + 2], *envp[LINES_MAX + 1];
        int argc = 1, envc = 0, exit_status = 0;
        Config *c = NULL;
        char *text, *save = NULL;

        if (size > 64 * 1024)
                return 0;
        text = strndup((const char *) data, size);
        if (!text)
                return 0;

        argv[0] = (char *) "etcd2";
        for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                if (strncmp(l, "ETCD_", 5) == 0) {
                        if (envc < LINES_MAX)
                                envp[envc++] = l;
                } else if (argc < LINES_MAX + 1)
                        argv[argc++] = l;
        }
        argv[argc] = NULL;
        envp[envc] = NULL;

        if (config_load(argc, argv, envp, &c, &exit_status) == 0)
                config_free(c);

        for (int i = 1; i < argc; i++) {
                EtcdUrl u = {};
                ClusterMember *m = NULL;
                size_t n = 0;
                char *error = NULL;

                if (etcd_url_parse(argv[i], &u, &error) >= 0)
                        etcd_url_done(&u);
                free(error);
                if (config_cluster_parse(argv[i], &m, &n) >= 0)
                        config_cluster_members_free(m, n);
        }
        free(text);
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        /* -h and --version print to stdout, bad flags to stderr: expected here, not worth reading. */
        log_set_max_level(LOG_CRIT);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
        if (!freopen("/dev/null", "w", stdout))
                return 0;
#endif
        return 0;
}
