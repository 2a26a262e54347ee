/* SPDX-License-Identifier: Apache-2.0 */
/* test-http.c - the pure helpers of the HTTP side against Go's standard library behaviour. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <json-c/json.h>

#include "http-util.h"
#include "macro.h"

static void check_clean(const char *in, const char *want) {
        char *c = http_path_clean(in);

        assert_non_null(c);
        assert_string_equal(c, want);
        free(c);
}

/* Cases from Go's path.Clean tests. */
static void test_path_clean(void **state) {
        check_clean("", ".");
        check_clean("abc", "abc");
        check_clean("abc/def", "abc/def");
        check_clean("a/b/c", "a/b/c");
        check_clean(".", ".");
        check_clean("..", "..");
        check_clean("../..", "../..");
        check_clean("../../abc", "../../abc");
        check_clean("/abc", "/abc");
        check_clean("/", "/");
        check_clean("abc/", "abc");
        check_clean("abc/def/", "abc/def");
        check_clean("/abc/", "/abc");
        check_clean("//abc", "/abc");
        check_clean("///abc", "/abc");
        check_clean("//abc//", "/abc");
        check_clean("abc//def//ghi", "abc/def/ghi");
        check_clean("abc/./def", "abc/def");
        check_clean("/./abc/def", "/abc/def");
        check_clean("abc/.", "abc");
        check_clean("abc/def/ghi/../jkl", "abc/def/jkl");
        check_clean("abc/def/../ghi/../jkl", "abc/jkl");
        check_clean("abc/def/..", "abc");
        check_clean("abc/def/../..", ".");
        check_clean("/abc/def/../..", "/");
        check_clean("abc/def/../../..", "..");
        check_clean("/abc/def/../../..", "/");
        check_clean("abc/def/../../../ghi/jkl/../../../mno", "../../mno");
        check_clean("abc/./../def", "def");
        check_clean("abc//./../def", "def");
        check_clean("abc/../../././../def", "../../def");
        check_clean("/1/", "/1");
        check_clean("/1/foo/../../x", "/x");
}

static void check_mux(const char *in, const char *want) {
        char *c = http_mux_clean_path(in);

        assert_non_null(c);
        assert_string_equal(c, want);
        free(c);
}

static void test_mux_clean_path(void **state) {
        check_mux("", "/");
        check_mux("/v2/keys", "/v2/keys");
        check_mux("/v2/keys/", "/v2/keys/");
        check_mux("//v2/keys", "/v2/keys");
        check_mux("/v2/keys/a/../b", "/v2/keys/b");
        check_mux("/v2/keys/./foo/", "/v2/keys/foo/");
        check_mux("/v2/keys/x/..", "/v2/keys");
        check_mux("v2", "/v2");
        check_mux("/..", "/");
}

static void test_mux_path_is_clean(void **state) {
        const char *paths[] = { "/", "/v2/keys", "/v2/keys/", "//v2", "/v2//keys", "/v2/./k", "/v2/k/.",
                                "/v2/k/..", "/..", "/.", "/v2/k/../x", "v2", "", "/v2/.k", "/v2/..k/", "/a/b/c/" };

        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                char *c = http_mux_clean_path(paths[i]);
                assert_non_null(c);
                /* must agree with the slow path on every input */
                assert_int_equal(http_mux_path_is_clean(paths[i]), streq(c, paths[i]));
                free(c);
        }
        assert_true(http_mux_path_is_clean("/v2/keys/foo/"));
        assert_false(http_mux_path_is_clean("/v2/keys//foo"));
}

static void test_unescape(void **state) {
        const char *bad = NULL;
        char *s = NULL;
        size_t n;

        assert_int_equal(http_unescape("a%20b+c", 7, false, &s, &n, NULL), 0);
        assert_string_equal(s, "a b+c");
        assert_int_equal(n, 5);
        free(s);

        assert_int_equal(http_unescape("a%20b+c", 7, true, &s, &n, NULL), 0);
        assert_string_equal(s, "a b c");
        free(s);

        assert_int_equal(http_unescape("x%00y", 5, false, &s, &n, NULL), 0);
        assert_int_equal(n, 3);
        assert_memory_equal(s, "x\0y", 3);
        free(s);

        const char *in = "ab%zz";
        assert_int_equal(http_unescape(in, 5, false, &s, &n, &bad), -EINVAL);
        assert_ptr_equal(bad, in + 2);
        assert_int_equal(http_unescape("ab%4", 4, false, &s, &n, NULL), -EINVAL);
        assert_int_equal(http_unescape("%", 1, true, &s, &n, NULL), -EINVAL);
}

static void test_form(void **state) {
        HttpForm f = {};
        char *err = NULL;
        const HttpFormField *v;

        assert_int_equal(http_form_parse(&f, "value=a+b%21&ttl=&x;dir=true&value=second", 41, &err), 0);
        assert_null(err);
        v = http_form_get(&f, "value");
        assert_non_null(v);
        assert_string_equal(v->value, "a b!");
        assert_int_equal(v->value_len, 4);
        v = http_form_get(&f, "ttl");
        assert_non_null(v);
        assert_int_equal(v->value_len, 0);
        v = http_form_get(&f, "x");
        assert_non_null(v);
        assert_string_equal(v->value, "");
        assert_string_equal(http_form_get(&f, "dir")->value, "true");
        assert_null(http_form_get(&f, "prevExist"));

        /* A bad escape skips that field, reports Go's error text, and parsing goes on. */
        assert_int_equal(http_form_parse(&f, "a=%zz&b=%4&c=1", 14, &err), 0);
        assert_non_null(err);
        assert_string_equal(err, "invalid URL escape \"%zz\"");
        assert_null(http_form_get(&f, "a"));
        assert_null(http_form_get(&f, "b"));
        assert_string_equal(http_form_get(&f, "c")->value, "1");
        free(err);
        http_form_done(&f);

        err = NULL;
        assert_int_equal(http_form_parse(&f, "k=%4", 4, &err), 0);
        assert_string_equal(err, "invalid URL escape \"%4\"");
        free(err);
        http_form_done(&f);
}

/* Many fields: lookups go through the hash table and still return the first value of a key; past
 * HTTP_FORM_FIELDS_MAX the parse stops with -E2BIG. */
static void test_form_many(void **state) {
        HttpForm f = {};
        HttpBuf b = {};
        char *err = NULL;

        assert_int_equal(http_buf_puts(&b, "value=first&"), 0);
        for (unsigned i = 0; i < 500; i++)
                assert_int_equal(http_buf_printf(&b, "k%u=%u&", i, i), 0);
        assert_int_equal(http_buf_puts(&b, "value=second&ttl=5"), 0);
        assert_int_equal(http_form_parse(&f, b.data, b.len, &err), 0);
        assert_null(err);
        assert_string_equal(http_form_get(&f, "value")->value, "first");
        assert_string_equal(http_form_get(&f, "k499")->value, "499");
        assert_string_equal(http_form_get(&f, "ttl")->value, "5");
        assert_null(http_form_get(&f, "prevExist"));
        /* a second parse (the query after the body) invalidates the table */
        assert_int_equal(http_form_parse(&f, "prevExist=true&value=third", 26, &err), 0);
        assert_string_equal(http_form_get(&f, "prevExist")->value, "true");
        assert_string_equal(http_form_get(&f, "value")->value, "first");
        http_form_done(&f);
        http_buf_done(&b);

        for (unsigned i = 0; i < HTTP_FORM_FIELDS_MAX; i++)
                assert_int_equal(http_buf_puts(&b, "a&"), 0);
        assert_int_equal(http_form_parse(&f, b.data, b.len, &err), 0);
        assert_int_equal(f.n, HTTP_FORM_FIELDS_MAX);
        assert_int_equal(http_form_parse(&f, "a", 1, &err), -E2BIG);
        http_form_done(&f);
        assert_int_equal(http_buf_puts(&b, "a"), 0);
        assert_int_equal(http_form_parse(&f, b.data, b.len, &err), -E2BIG);
        assert_null(err);
        http_form_done(&f);
        http_buf_done(&b);
}

static void check_go_json(const char *in, size_t len, const char *want) {
        bool oom = true;
        char *got = go_json_syntax_error(in, len, &oom);

        assert_false(oom);
        if (!want)
                assert_null(got);
        else
                assert_string_equal(got, want);
        free(got);
}

/* Go's encoding/json messages, as etcd 3.4 answers them (tests/integration/test_json_errors_diff.py
 * compares more against the real thing) */
static void test_go_json_syntax_error(void **state) {
#define J(in, want) check_go_json(in, sizeof(in) - 1, want)
        J("{\"a\":[1,2.5e-3,true,false,null,\"\\u00e9\\n\"]} ", NULL);
        J(" 0 ", NULL);
        J("", "unexpected end of JSON input");
        J("{\"a\":", "unexpected end of JSON input");
        J("\"ab", "unexpected end of JSON input");
        J("x", "invalid character 'x' looking for beginning of value");
        J("{'a'}", "invalid character '\\'' looking for beginning of object key string");
        J("{\"a\" 1}", "invalid character '1' after object key");
        J("{\"a\":1 \"b\"}", "invalid character '\"' after object key:value pair");
        J("[1 2]", "invalid character '2' after array element");
        J("{}x", "invalid character 'x' after top-level value");
        J("01", "invalid character '1' after top-level value");
        J("tru", "invalid character ' ' in literal true (expecting 'e')");
        J("nUll", "invalid character 'U' in literal null (expecting 'u')");
        J("1.", "invalid character ' ' after decimal point in numeric literal");
        J("1e+x", "invalid character 'x' in exponent of numeric literal");
        J("-", "invalid character ' ' in numeric literal");
        J("\"\\q\"", "invalid character 'q' in string escape code");
        J("\"\\", "invalid character ' ' in string escape code");
        J("\"\\u12x4\"", "invalid character 'x' in \\u hexadecimal character escape");
        J("\"\x01\"", "invalid character '\\x01' in string literal");
        J("\"\n\"", "invalid character '\\n' in string literal");
        J("\x80", "invalid character '\\u0080' looking for beginning of value");
        J("\xe9", "invalid character '\xc3\xa9' looking for beginning of value");
        J("\\", "invalid character '\\\\' looking for beginning of value");
        check_go_json("[1]\0", 4, "invalid character '\\x00' after top-level value");
#undef J
}

/* the field go_json_field() picks in a document, as a JSON text ("absent" for none) */
static void check_field(const char *doc, const char *name, bool null_clears, const char *want) {
        json_object *o = json_tokener_parse(doc), *v;

        assert_true(o || streq(doc, "null"));
        v = go_json_field(o, name, null_clears);
        assert_string_equal(v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : "absent", want);
        json_object_put(o);
}

/* encoding/json's field matching as etcd 3.4 (Go 1.19) decodes request bodies
 * (tests/integration/test_json_fields_diff.py compares against the real thing) */
static void test_go_json_field(void **state) {
        /* any case; unknown keys ignored */
        check_field("{\"x\":1,\"peerURLs\":[\"a\"]}", "peerURLs", true, "[\"a\"]");
        check_field("{\"PEERURLS\":[\"a\"]}", "peerURLs", true, "[\"a\"]");
        check_field("{\"PeerUrls\":2}", "peerURLs", true, "2");
        check_field("{\"peerURL\":1,\"peerURLss\":2,\"peer_URLs\":3}", "peerURLs", true, "absent");
        check_field("{}", "user", true, "absent");
        /* the last matching key wins: an exact spelling earlier does not beat a folded one later */
        check_field("{\"peerURLs\":1,\"PEERURLS\":2}", "peerURLs", true, "2");
        check_field("{\"PEERURLS\":1,\"peerURLs\":2}", "peerURLs", true, "2");
        check_field("{\"User\":\"a\",\"x\":0,\"uSER\":\"b\"}", "user", true, "\"b\"");
        /* a null clears a slice, but leaves a string as it was */
        check_field("{\"roles\":[\"a\"],\"ROLES\":null}", "roles", true, "absent");
        check_field("{\"user\":\"a\",\"USER\":null}", "user", false, "\"a\"");
        /* Go's EqualFold: KELVIN SIGN for k, LONG S for s (also escaped); nothing else non-ASCII */
        check_field("{\"\xe2\x84\xaa" "v\":1}", "kv", true, "1");
        check_field("{\"\\u212aV\":1}", "kv", true, "1");
        check_field("{\"u\xc5\xbf" "er\":1}", "user", true, "1");
        check_field("{\"rever\xc5\xbf" "e\":1,\"roles\xc5\xbf\":2}", "revoke", true, "absent");
        check_field("{\"wr\xc4\xb1" "te\":1,\"\xc3\x9c" "ser\":2}", "write", true, "absent");
        assert_true(go_json_key_matches("PeRmIsSiOnS", "permissions"));
        assert_false(go_json_key_matches("permission", "permissions"));
        assert_false(go_json_key_matches("\xe2\x84", "k"));
        assert_false(go_json_key_matches("\xc5", "s"));
        assert_false(go_json_key_matches("@", "`"));
        /* not an object */
        check_field("[{\"user\":1}]", "user", true, "absent");
        check_field("\"user\"", "user", true, "absent");
        check_field("null", "user", true, "absent");
}

static void test_go_parse(void **state) {
        bool b;
        uint64_t u;

        assert_int_equal(go_parse_bool("true", &b), 0);
        assert_true(b);
        assert_int_equal(go_parse_bool("T", &b), 0);
        assert_true(b);
        assert_int_equal(go_parse_bool("1", &b), 0);
        assert_true(b);
        assert_int_equal(go_parse_bool("False", &b), 0);
        assert_false(b);
        assert_int_equal(go_parse_bool("0", &b), 0);
        assert_false(b);
        assert_int_equal(go_parse_bool("", &b), -EINVAL);
        assert_int_equal(go_parse_bool("yes", &b), -EINVAL);
        assert_int_equal(go_parse_bool("tRUE", &b), -EINVAL);

        assert_int_equal(go_parse_uint64("0", &u), 0);
        assert_int_equal(u, 0);
        assert_int_equal(go_parse_uint64("18446744073709551615", &u), 0);
        assert_true(u == UINT64_MAX);
        assert_int_equal(go_parse_uint64("18446744073709551616", &u), -ERANGE);
        assert_int_equal(go_parse_uint64("", &u), -EINVAL);
        assert_int_equal(go_parse_uint64("-1", &u), -EINVAL);
        assert_int_equal(go_parse_uint64("+1", &u), -EINVAL);
        assert_int_equal(go_parse_uint64("1 ", &u), -EINVAL);
}

static void check_json(const char *in, size_t n, const char *want) {
        HttpBuf b = {};

        assert_int_equal(http_buf_json_string(&b, in, n), 0);
        assert_string_equal(b.data, want);
        http_buf_done(&b);
}

static void test_json_string(void **state) {
        check_json("plain", 5, "\"plain\"");
        check_json("", 0, "\"\"");
        check_json("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
        check_json("\n\r\t\x01", 4, "\"\\n\\r\\t\\u0001\"");
        check_json("<a&b>", 5, "\"\\u003ca\\u0026b\\u003e\"");
        check_json("/x/y", 4, "\"/x/y\"");
        check_json("caf\xc3\xa9", 5, "\"caf\xc3\xa9\"");
        check_json("\xff" "a", 2, "\"\\ufffda\"");
        check_json("\xe2\x80\xa8", 3, "\"\\u2028\"");
        check_json("a\0b", 3, "\"a\\u0000b\"");
}

static void check_duration(uint64_t ns, const char *want) {
        HttpBuf b = {};

        assert_int_equal(http_buf_go_duration(&b, ns), 0);
        assert_string_equal(b.data, want);
        http_buf_done(&b);
}

/* Go's time.Duration.String() */
static void test_duration(void **state) {
        check_duration(0, "0s");
        check_duration(1, "1ns");
        check_duration(1100, "1.1\xc2\xb5s");
        check_duration(2200000, "2.2ms");
        check_duration(3300000000ULL, "3.3s");
        check_duration(4ULL * 60 * 1000000000 + 5000000000ULL, "4m5s");
        check_duration(4ULL * 60 * 1000000000 + 5001000000ULL, "4m5.001s");
        check_duration(5ULL * 3600 * 1000000000 + 6ULL * 60 * 1000000000 + 7001000000ULL, "5h6m7.001s");
        check_duration(3600ULL * 1000000000, "1h0m0s");
        check_duration(607916628202ULL, "10m7.916628202s");
}

static void test_rfc3339(void **state) {
        HttpBuf b = {};

        setenv("TZ", "UTC", 1);
        assert_int_equal(http_buf_rfc3339(&b, 1795091683194051ULL), 0);
        assert_string_equal(b.data, "2026-11-19T12:34:43.194051Z");
        http_buf_done(&b);
        assert_int_equal(http_buf_rfc3339(&b, 1795091683000000ULL), 0);
        assert_string_equal(b.data, "2026-11-19T12:34:43Z");
        http_buf_done(&b);
        assert_int_equal(http_buf_rfc3339(&b, 1795091683100000ULL), 0);
        assert_string_equal(b.data, "2026-11-19T12:34:43.1Z");
        http_buf_done(&b);
}

static void test_escape_path(void **state) {
        HttpBuf b = {};

        assert_int_equal(http_buf_escape_path(&b, "/v2/keys/a b?c#d%e/$&+,:;=@~"), 0);
        assert_string_equal(b.data, "/v2/keys/a%20b%3Fc%23d%25e/$&+,:;=@~");
        http_buf_done(&b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_path_clean),
                cmocka_unit_test(test_mux_clean_path),
                cmocka_unit_test(test_mux_path_is_clean),
                cmocka_unit_test(test_unescape),
                cmocka_unit_test(test_form),
                cmocka_unit_test(test_form_many),
                cmocka_unit_test(test_go_parse),
                cmocka_unit_test(test_go_json_syntax_error),
                cmocka_unit_test(test_go_json_field),
                cmocka_unit_test(test_json_string),
                cmocka_unit_test(test_duration),
                cmocka_unit_test(test_rfc3339),
                cmocka_unit_test(test_escape_path),
        };

        return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
