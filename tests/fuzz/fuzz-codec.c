/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-codec.c - libFuzzer target for the Raft entry codec (codec.c): the envelope, the request inside
 * it, varints. Whatever decodes must encode again and decode to the same request. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool str_eq(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

static void check_request(const void *buf, size_t len) {
        StoreRequest req = {}, again = {};
        void *enc;
        size_t n;
        int r;

        r = codec_request_decode(buf, len, &req);
        if (r < 0)
                return;

        n = codec_request_size(&req);
        enc = malloc(n ? n : 1);
        assert(enc);
        assert(codec_request_write(&req, enc) <= n);
        r = codec_request_decode(enc, codec_request_write(&req, enc), &again);
        assert(r >= 0);
        assert(again.method == req.method);
        assert(str_eq(again.path, req.path));
        assert(again.value_len == req.value_len);
        assert(req.value_len == 0 || memcmp(again.value, req.value, req.value_len) == 0);
        assert(again.dir == req.dir && again.prev_exist == req.prev_exist);
        assert(again.prev_index == req.prev_index && again.recursive == req.recursive);
        assert(again.sorted == req.sorted && again.refresh == req.refresh);
        assert(again.expiration_usec == req.expiration_usec && again.time_usec == req.time_usec);
        free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint64_t origin, id, v;
        const void *inner;
        size_t inner_len;
        uint8_t *copy;

        if (size > 1024 * 1024)
                return 0;

        /* codec_varint_get() on the raw bytes. */
        if (codec_varint_get(data, size, &v) > 0) {
                uint8_t tmp[16];

                assert(codec_varint_put(tmp, v) <= 10);
        }

        /* As a replicated entry: the envelope, then the request in it. */
        copy = malloc(size ? size : 1);
        assert(copy);
        memcpy(copy, data, size);
        if (codec_envelope_decode(copy, size, &origin, &id, &inner, &inner_len) >= 0) {
                uint8_t h[CODEC_ENVELOPE_HEADER_MAX];

                assert((const uint8_t *) inner >= copy && (const uint8_t *) inner + inner_len <= copy + size);
                assert(codec_envelope_write_header(origin, id, h) <= CODEC_ENVELOPE_HEADER_MAX);
                check_request(inner, inner_len);
        }
        /* As a bare request. */
        check_request(copy, size);
        free(copy);
        return 0;
}
