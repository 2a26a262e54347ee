/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-form.c - libFuzzer target for the query/form decoder under every key request (http-util.c):
 * Go's url.ParseQuery, url.Values.Get, strconv.ParseBool/ParseUint on each value, as client-api.c
 * reads value, ttl, dir, prevExist, prevIndex, recursive, sorted, wait, waitIndex, quorum, stream... */

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const keys[] = {
        "value", "ttl", "dir", "prevExist", "prevIndex", "prevValue", "recursive", "sorted", "wait",
        "waitIndex", "quorum", "stream", "refresh", "noValueOnSuccess", "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        HttpForm f = {};
        char *error = NULL;
        int r;

        if (size > 256 * 1024)
                return 0;

        r = http_form_parse(&f, (const char *) data, size, &error);
        assert(r == 0 || r == -E2BIG || r == -ENOMEM);
        free(error);
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                const HttpFormField *v = http_form_get(&f, keys[i]);
                bool b;
                uint64_t u;

                if (!v)
                        continue;
                assert(strlen(v->value) <= v->value_len);
                (void) go_parse_bool(v->value, &b);
                (void) go_parse_uint64(v->value, &u);
        }
        for (size_t i = 0; i < f.n; i++)
                assert(http_form_get(&f, f.fields[i].key));
        http_form_done(&f);
        return 0;
}
