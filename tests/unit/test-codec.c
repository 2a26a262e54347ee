/* SPDX-License-Identifier: Apache-2.0 */
/* test-codec.c - round trips and rejection of malformed encodings of replicated requests. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

static void *encode(const StoreRequest *req, size_t *ret_len) {
        size_t n = codec_request_size(req);
        void *buf = malloc(n);

        assert_non_null(buf);
        *ret_len = codec_request_write(req, buf);
        assert_int_equal(*ret_len, n);
        return buf;
}

static void test_roundtrip_full(void **state) {
        static const char value[] = "va\0lue";
        StoreRequest req = {
                .method = STORE_METHOD_PUT,
                .path = "/1/foo/bar",
                .value = value,
                .value_len = sizeof(value) - 1,
                .dir = false,
                .prev_exist = 1,
                .prev_value = "old",
                .prev_index = 123456789012ULL,
                .recursive = true,
                .sorted = true,
                .refresh = true,
                .expiration_usec = 1700000000123456ULL,
                .time_usec = UINT64_MAX,
        }, out;
        size_t len;
        void *buf = encode(&req, &len);

        assert_int_equal(codec_request_decode(buf, len, &out), 0);
        assert_int_equal(out.method, STORE_METHOD_PUT);
        assert_string_equal(out.path, "/1/foo/bar");
        assert_int_equal(out.value_len, 6);
        assert_memory_equal(out.value, value, 6);
        assert_int_equal(out.value[6], 0);
        assert_false(out.dir);
        assert_int_equal(out.prev_exist, 1);
        assert_string_equal(out.prev_value, "old");
        assert_int_equal(out.prev_index, 123456789012ULL);
        assert_true(out.recursive);
        assert_true(out.sorted);
        assert_true(out.refresh);
        assert_int_equal(out.expiration_usec, 1700000000123456ULL);
        assert_int_equal(out.time_usec, UINT64_MAX);
        free(buf);
}

static void test_roundtrip_minimal(void **state) {
        for (int m = 0; m < _STORE_METHOD_MAX; m++)
                for (int pe = -1; pe <= 1; pe++) {
                        StoreRequest req = { .method = m, .path = "/", .prev_exist = pe, .dir = pe == 0 }, out;
                        size_t len;
                        void *buf = encode(&req, &len);

                        assert_int_equal(codec_request_decode(buf, len, &out), 0);
                        assert_int_equal(out.method, m);
                        assert_int_equal(out.prev_exist, pe);
                        assert_int_equal(out.dir, pe == 0);
                        assert_string_equal(out.path, "/");
                        assert_null(out.value);
                        assert_null(out.prev_value);
                        free(buf);
                }
}

static void test_empty_value_kept(void **state) {
        StoreRequest req = { .method = STORE_METHOD_POST, .path = "/1/q", .value = "", .prev_value = "" }, out;
        size_t len;
        void *buf = encode(&req, &len);

        assert_int_equal(codec_request_decode(buf, len, &out), 0);
        assert_non_null(out.value);
        assert_int_equal(out.value_len, 0);
        assert_non_null(out.prev_value);
        assert_string_equal(out.prev_value, "");
        free(buf);
}

static void test_reject_truncated_and_trailing(void **state) {
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/k", .value = "v", .value_len = 1 }, out;
        size_t len;
        uint8_t *buf = encode(&req, &len), *big;

        for (size_t i = 0; i < len; i++)
                assert_int_equal(codec_request_decode(buf, i, &out), -EBADMSG);
        big = malloc(len + 1);
        memcpy(big, buf, len);
        big[len] = 0;
        assert_int_equal(codec_request_decode(big, len + 1, &out), -EBADMSG);
        assert_int_equal(codec_request_decode(NULL, 0, &out), -EBADMSG);
        free(big);
        free(buf);
}

static void test_reject_bad_fields(void **state) {
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/k", .prev_value = "p" }, out;
        size_t len;
        uint8_t *buf = encode(&req, &len);

        buf[0] = 99;                       /* version */
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        buf[0] = CODEC_REQUEST_VERSION;
        buf[1] = _STORE_METHOD_MAX;        /* method */
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        buf[1] = STORE_METHOD_PUT;
        buf[2] |= 0x80;                    /* unknown flag */
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        buf[2] &= 0x7f;
        buf[3] = 3;                        /* prev_exist */
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        buf[3] = 0;
        assert_int_equal(codec_request_decode(buf, len, &out), 0);
        /* an embedded NUL in the path: "/1/k" -> "/\0/k" */
        buf[4 + 3 + 1 + 1] = 0;
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        buf[4 + 3 + 1 + 1] = '1';
        /* missing terminator of the last string */
        buf[len - 1] = 'x';
        assert_int_equal(codec_request_decode(buf, len, &out), -EBADMSG);
        free(buf);
}

static void test_varint(void **state) {
        static const uint64_t values[] = { 0, 1, 127, 128, 300, 16383, 16384, UINT32_MAX, UINT64_MAX - 1, UINT64_MAX };
        uint8_t buf[16];
        uint64_t v;

        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                size_t n = codec_varint_put(buf, values[i]);

                assert_int_equal(codec_varint_get(buf, n, &v), n);
                assert_int_equal(v, values[i]);
                assert_int_equal(codec_varint_get(buf, n - 1, &v), 0);
        }
        /* non-minimal: 0x80 0x00 */
        buf[0] = 0x80;
        buf[1] = 0x00;
        assert_int_equal(codec_varint_get(buf, 2, &v), 0);
        /* overflow: ten bytes with high bits in the last */
        memset(buf, 0xff, 9);
        buf[9] = 0x02;
        assert_int_equal(codec_varint_get(buf, 10, &v), 0);
        codec_put_be64(buf, 0x0102030405060708ULL);
        assert_int_equal(buf[0], 1);
        assert_int_equal(buf[7], 8);
        assert_int_equal(codec_get_be64(buf), 0x0102030405060708ULL);
}

/* Random mutations never crash the decoder and anything it accepts re-encodes identically. */
static void test_fuzz_mutations(void **state) {
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/fuzz", .value = "value", .value_len = 5,
                             .prev_value = "x", .prev_index = 77, .expiration_usec = 99 }, out;
        size_t len;
        uint8_t *buf = encode(&req, &len);
        unsigned seed = 12345;

        for (int i = 0; i < 200000; i++) {
                uint8_t *m = malloc(len);
                size_t mlen = len - (size_t) (rand_r(&seed) % 3);

                memcpy(m, buf, len);
                for (int k = rand_r(&seed) % 4; k >= 0; k--)
                        m[rand_r(&seed) % mlen] = (uint8_t) rand_r(&seed);
                if (codec_request_decode(m, mlen, &out) == 0) {
                        size_t n2;
                        void *again = encode(&out, &n2);

                        assert_int_equal(n2, mlen);
                        assert_memory_equal(again, m, mlen);
                        free(again);
                }
                free(m);
        }
        free(buf);
}

static void test_envelope(void **state) {
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/1/a", .value = "b", .value_len = 1, .prev_exist = -1 };
        uint8_t buf[256], h[CODEC_ENVELOPE_HEADER_MAX];
        uint64_t origin = 1, id = 1;
        const void *inner;
        size_t n, len, inner_len;
        StoreRequest out;

        /* An envelope: origin and request ID in front of the request. */
        n = codec_envelope_write_header(UINT64_C(0xfedcba9876543210), UINT64_MAX, h);
        assert_true(n <= CODEC_ENVELOPE_HEADER_MAX);
        memcpy(buf, h, n);
        len = n + codec_request_write(&req, buf + n);
        assert_int_equal(codec_envelope_decode(buf, len, &origin, &id, &inner, &inner_len), 0);
        assert_true(origin == UINT64_C(0xfedcba9876543210));
        assert_true(id == UINT64_MAX);
        assert_ptr_equal(inner, buf + n);
        assert_int_equal(inner_len, len - n);
        assert_int_equal(codec_request_decode(inner, inner_len, &out), 0);
        assert_string_equal(out.path, "/1/a");

        /* A bare request (entries of before the envelope): origin and ID 0. */
        len = codec_request_write(&req, buf);
        assert_int_equal(codec_envelope_decode(buf, len, &origin, &id, &inner, &inner_len), 0);
        assert_true(origin == 0 && id == 0);
        assert_ptr_equal(inner, buf);

        /* Garbage: unknown version, truncated varints, no request after the header. */
        buf[0] = 9;
        assert_int_equal(codec_envelope_decode(buf, len, &origin, &id, &inner, &inner_len), -EBADMSG);
        assert_int_equal(codec_envelope_decode(h, 1, &origin, &id, &inner, &inner_len), -EBADMSG);
        assert_int_equal(codec_envelope_decode(h, n, &origin, &id, &inner, &inner_len), -EBADMSG);
        assert_int_equal(codec_envelope_decode(h, 0, &origin, &id, &inner, &inner_len), -EBADMSG);
        memcpy(buf, h, n);
        buf[n] = 7;
        assert_int_equal(codec_envelope_decode(buf, n + 1, &origin, &id, &inner, &inner_len), -EBADMSG);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_roundtrip_full),
                cmocka_unit_test(test_roundtrip_minimal),
                cmocka_unit_test(test_empty_value_kept),
                cmocka_unit_test(test_reject_truncated_and_trailing),
                cmocka_unit_test(test_reject_bad_fields),
                cmocka_unit_test(test_varint),
                cmocka_unit_test(test_fuzz_mutations),
                cmocka_unit_test(test_envelope),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
