/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-codec.c - libFuzzer target for the Raft entry codec (codec.c): the envelope, the request inside it
 * and varints. Whatever decodes must encode and decode again to the same request. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_str(const char *a, const char *b) {
        assert(!a == !b);
        assert(!a || strcmp(a, b) == 0);
}

static void check_request(const void *buf, size_t len) {
        StoreRequest req = {}, again = {};
        void *enc;
        size_t n;
        int r;

        r = codec_request_decode(buf, len, &req);
        if (r < 0) {
                assert(r == -EBADMSG);
                return;
        }
        n = codec_request_size(&req);
        enc = malloc(n ? n : 1);
        assert(enc);
        assert(codec_request_write(&req, enc) <= n);
        r = codec_request_decode(enc, n, &again);
        assert(r == 0);
        same_str(req.path, again.path);
        assert(!req.value == !again.value && req.value_len == again.value_len);
        assert(!req.value || memcmp(req.value, again.value, req.value_len) == 0);
        assert(req.method == again.method && req.dir == again.dir && req.prev_exist == again.prev_exist);
        assert(req.prev_index == again.prev_index && req.expiration_usec == again.expiration_usec);
        same_str(req.prev_value, again.prev_value);
        free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint64_t origin, id, v;
        const void *inner;
        size_t inner_len;

        check_request(data, size);
        if (codec_envelope_decode(data, size, &origin, &id, &inner, &inner_len) == 0) {
                assert((const uint8_t *) inner >= data && (const uint8_t *) inner + inner_len <= data + size);
                check_request(inner, inner_len);
        }
        if (codec_varint_get(data, size, &v) > 0) {
                uint8_t b[10];
                size_t k = codec_varint_put(b, v);
                uint64_t w;
                assert(codec_varint_get(b, k, &w) == k && w == v);
        }
        return 0;
}
