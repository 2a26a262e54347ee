/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-config.c - libFuzzer target for flags and ETCD_* parsing (config.c): the input's lines are the
 * arguments, except lines "ETCD_..." which form the environment; the whole input also goes through the
 * URL and --initial-cluster parsers. */

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ARGS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *s, *argv[MAX_ARGS + 2], *envp[MAX_ARGS + 1], *line, *save = NULL, *error = NULL;
        int argc = 0, n_env = 0, status = 0;
        ClusterMember *m = NULL;
        size_t n = 0;
        EtcdUrl u = {};
        Config *c = NULL;

        s = malloc(size + 1);
        assert(s);
        memcpy(s, data, size);
        s[size] = 0;

        if (etcd_url_parse(s, &u, &error) >= 0)
                etcd_url_done(&u);
        free(error);
        if (config_cluster_parse(s, &m, &n) >= 0)
                config_cluster_members_free(m, n);

        argv[argc++] = (char *) "etcd2";
        for (line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (strncmp(line, "ETCD_", 5) == 0) {
                        if (n_env < MAX_ARGS)
                                envp[n_env++] = line;
                } else if (argc < MAX_ARGS + 1)
                        argv[argc++] = line;
        }
        argv[argc] = NULL;
        envp[n_env] = NULL;
        if (config_load(argc, argv, envp, &c, &status) == 0)
                config_free(c);
        free(s);
        return 0;
}
