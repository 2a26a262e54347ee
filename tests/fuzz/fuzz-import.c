/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-import.c - libFuzzer target for the etcd v2 data-dir import (import.c): WAL file framing and
 * records, and Go's RFC 3339 times. The first byte picks the parser. */

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int count_record(int64_t type, uint32_t crc, const uint8_t *d, size_t len, void *userdata) {
        (void) type;
        (void) crc;
        if (len > 0) {
                volatile uint8_t x = d[0] ^ d[len - 1];   /* ASan checks the bounds */
                (void) x;
        }
        (*(size_t *) userdata)++;
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        if (data[0] & 1) {
                char *s = malloc(size);
                uint64_t usec;

                assert(s);
                memcpy(s, data + 1, size - 1);
                s[size - 1] = 0;
                (void) import_parse_time(s, &usec);
                free(s);
                return 0;
        }
        for (int last = 0; last <= 1; last++) {
                uint32_t crc = 0;
                size_t n = 0;
                char *error = NULL;
                int r;

                r = import_wal_file_decode(data + 1, size - 1, last, &crc, count_record, &n, &error);
                assert(r == 0 || r == 1 || r == -EBADMSG || r == -ENOMEM);
                assert(r != 1 || last);
                free(error);
        }
        return 0;
}
