/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-srv.c - libFuzzer target for DNS SRV answers (srv.c, --discovery-srv): the input is the answer a
 * resolver returned, as srv_parse_answer() gets it from res_nquery(). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        SrvRecord *records = NULL;
        char *error = NULL;
        size_t n = 0;

        if (srv_parse_answer(data, size, "_etcd-server._tcp.example.com", &records, &n, &error) >= 0) {
                for (size_t i = 0; i < n; i++)
                        if (strnlen(records[i].target, sizeof(records[i].target)) == sizeof(records[i].target))
                                abort();
                free(records);
        }
        free(error);
        return 0;
}
