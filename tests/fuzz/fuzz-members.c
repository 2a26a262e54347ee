/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-members.c - libFuzzer target for the members' JSON as the store holds it (members.c): the values
 * of /0/members/<id>/raftAttributes and /attributes come from raft entries (any member's proposals) and
 * from an imported data dir. The input is NUL-separated values: raftAttributes of member 1, attributes
 * of member 1, raftAttributes of member 2, ...; an empty value leaves that key out. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "members.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define VALUES_MAX 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *p = data, *end = data + size;
        Member *m = NULL;
        size_t n = 0;
        Store *st = NULL;

        if (size > 256 * 1024)
                return 0;
        if (store_new(&st) < 0)
                abort();
        for (unsigned i = 0; i < VALUES_MAX && p < end; i++) {
                const uint8_t *q = memchr(p, 0, (size_t) (end - p));
                StoreRequest req = { .method = STORE_METHOD_PUT, .prev_exist = -1 };
                StoreResult res = {};
                char path[96];

                if (!q)
                        q = end;
                snprintf(path, sizeof(path), "%s/%x/%s", STORE_MEMBERS_PREFIX, i / 2 + 1,
                         i % 2 ? "attributes" : "raftAttributes");
                req.path = path;
                req.value = (const char *) p;
                req.value_len = (size_t) (q - p);
                if (q > p && store_apply(st, &req, 0, &res) >= 0)
                        store_result_done(&res);
                p = q + 1;
        }
        if (members_load(st, &m, &n) >= 0) {
                for (size_t i = 0; i < n; i++) {
                        if (!m[i].name || !m[i].peer_urls || !m[i].client_urls)
                                abort();
                        for (char **u = m[i].peer_urls; *u; u++)
                                (void) strlen(*u);
                        for (char **u = m[i].client_urls; *u; u++)
                                (void) strlen(*u);
                }
                members_free(m, n);
        }
        store_free(st);
        return 0;
}
