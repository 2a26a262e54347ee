/* SPDX-License-Identifier: Apache-2.0 */
/* http-util.h - pure helpers of the HTTP side: Go-compatible URL, form, path, JSON and time text [no I/O]. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer, always NUL-terminated when data != NULL. */
typedef struct HttpBuf {
        char *data;
        size_t len;
        size_t alloc;
} HttpBuf;

int http_buf_reserve(HttpBuf *b, size_t extra);
int http_buf_append(HttpBuf *b, const void *p, size_t n);
int http_buf_puts(HttpBuf *b, const char *s);
int http_buf_printf(HttpBuf *b, const char *fmt, ...) __attribute__((__format__(printf, 2, 3)));
/* Appends s as a JSON string literal (with quotes), escaped as Go's encoding/json does. */
int http_buf_json_string(HttpBuf *b, const char *s, size_t n);
void http_buf_done(HttpBuf *b);

/* Percent-decoding as Go's url.PathUnescape (plus=false) or url.QueryUnescape (plus=true: '+' is a
 * space). Returns -EINVAL on a bad escape; then *ret_bad (if non-NULL) points at the bad '%'. The result
 * is malloc'd and NUL-terminated; *ret_len excludes the NUL (values may contain NUL bytes). */
int http_unescape(const char *s, size_t n, bool plus, char **ret, size_t *ret_len, const char **ret_bad);

/* Go's path.Clean. */
char *http_path_clean(const char *p);
/* Go's http.ServeMux cleanPath(): a leading "/", path.Clean, trailing slash kept. */
char *http_mux_clean_path(const char *p);
/* True if http_mux_clean_path(p) would return p unchanged (the common case: no allocation needed). */
bool http_mux_path_is_clean(const char *p);
/* Escapes a path for a Location header as Go's url.URL.EscapedPath() does. */
int http_buf_escape_path(HttpBuf *b, const char *p);

/* A parsed form (query string and/or x-www-form-urlencoded body), in order of appearance. */
typedef struct HttpFormField {
        char *key;
        char *value;
        size_t value_len;
} HttpFormField;

typedef struct HttpForm {
        HttpFormField *fields;
        size_t n;
        size_t alloc;
        /* Lookup table (open addressing over indexes into fields, first occurrence of each key wins),
         * built by the first http_form_get() on a form with many fields: a request's ~15 lookups stay
         * O(1) however many fields a client sends. */
        uint32_t *slots;
        size_t n_slots;
} HttpForm;

/* Go's ParseForm has no cap on the number of fields (only the 10 MB body cap), but a body of 5 million
 * empty fields would hold our single event loop for seconds; no real client sends more than a few
 * dozen. Past this many fields (body and query together) http_form_parse() fails with -E2BIG. */
#define HTTP_FORM_FIELDS_MAX 10000

/* Parses "a=1&b=2;c" as Go's url.ParseQuery (separators '&' and ';' as Go 1.7 did) and appends the
 * fields. A bad escape skips that field and the first such error is reported in *ret_error (malloc'd,
 * Go's text: invalid URL escape "%zz"); the function still returns 0 then. -ENOMEM, or -E2BIG once the
 * form would hold more than HTTP_FORM_FIELDS_MAX fields (it stops there, without reading the rest). */
int http_form_parse(HttpForm *f, const char *s, size_t n, char **ret_error);
/* First value of key (as url.Values.Get): the field, or NULL if absent. */
const HttpFormField *http_form_get(const HttpForm *f, const char *key);
void http_form_done(HttpForm *f);

/* Go's strconv.ParseBool and strconv.ParseUint(s, 10, 64). -EINVAL/-ERANGE on failure. */
int go_parse_bool(const char *s, bool *ret);
int go_parse_uint64(const char *s, uint64_t *ret);

/* Go's time.Duration.String() for a duration given in nanoseconds, e.g. "1m23.456789012s". */
int http_buf_go_duration(HttpBuf *b, uint64_t nsec);
/* Go's time.Time JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed) for a wall-clock time in
 * microseconds, in the local time zone ("Z" for UTC). */
int http_buf_rfc3339(HttpBuf *b, uint64_t usec);

/* Go's encoding/json checkValid(): NULL if data is one valid JSON value (with whitespace around),
 * else Go's SyntaxError text ("unexpected end of JSON input", "invalid character 'x' looking for
 * beginning of value", ...), malloc'ed. *ret_oom is set when that allocation failed. */
char *go_json_syntax_error(const char *data, size_t len, bool *ret_oom);

/* Go's encoding/json field matching (Go 1.19, as etcd 3.4.23 and etcd 2.3.8 are built): the value of
 * the last member of object o whose key is name, or equals it under Go's EqualFold: ASCII letters in
 * either case, 'K' (U+212A KELVIN SIGN) for k and 'ſ' (U+017F LATIN SMALL LETTER LONG S) for s. name is
 * ASCII. Unknown keys are ignored. A JSON null sets a slice, map or pointer field to nil but leaves a
 * string, number, bool or struct field as it was: with null_clears false, nulls are passed over. NULL if
 * nothing matched (or the match is null), or o is not an object. Go decides exact-name-first only between
 * two fields whose names fold alike (none of etcd's request structs has such a pair); within one field the
 * last key in the document wins, spelled exactly or not. json-c keeps an exactly repeated key once, at its
 * first place with its last value, so {"a":1,"A":2,"a":3} gives 2 here where Go gives 3. */
struct json_object *go_json_field(struct json_object *o, const char *name, bool null_clears);
/* Whether key equals name under Go's EqualFold as above (exposed for tests). */
bool go_json_key_matches(const char *key, const char *name);
