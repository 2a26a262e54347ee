/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-snapshot.c - libFuzzer target for snapshot records (snapshot.c): restore data as fsm->restore
 * gets it (classified, then a leader's export loaded into a Store, record by record) and the chunk
 * frames a leader streams to a follower. The first byte picks the parser. */

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

        if (size < 1 || size > 1024 * 1024)
                return 0;

        switch (data[0] % 2) {
        case 0:
                (void) snapshot_classify(data + 1, size - 1, &kind, &applied);
                if (snapshot_load_store(data + 1, size - 1, NULL, &st, &applied, &etcd_index) >= 0) {
                        StoreResult res = {};

                        assert(st);
                        if (store_get(st, "/", true, true, 0, &res) >= 0)
                                store_result_done(&res);
                        store_free(st);
                }
                break;
        case 1:
                if (snapshot_chunk_decode(data + 1, size - 1, &c) >= 0) {
                        uint8_t *enc = NULL;
                        size_t enc_size;

                        assert(c.records_size == 0 ||
                               (c.records >= data + 1 && c.records + c.records_size <= data + size));
                        assert(snapshot_chunk_encode(1, &c, &enc, &enc_size) >= 0);
                        free(enc);
                }
                break;
        }
        return 0;
}
