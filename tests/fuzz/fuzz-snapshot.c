/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-snapshot.c - libFuzzer target for snapshot records (snapshot.c): restore data classification, the
 * store export loader and streamed chunk bodies. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        SnapshotKind kind;
        SnapshotChunk c = {};
        uint64_t applied, etcd_index;
        Store *st = NULL;

        (void) snapshot_classify(data, size, &kind, &applied);
        if (snapshot_load_store(data, size, NULL, &st, &applied, &etcd_index) >= 0)
                store_free(st);
        if (snapshot_chunk_decode(data, size, &c) == 0) {
                uint8_t *enc;
                size_t n;

                assert(c.records_size == 0 || (c.records >= data && c.records + c.records_size <= data + size));
                if (snapshot_chunk_encode(7, &c, &enc, &n) == 0)
                        free(enc);
        }
        return 0;
}
