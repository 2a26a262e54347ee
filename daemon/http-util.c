/* SPDX-License-Identifier: Apache-2.0 */
/* http-util.c - pure helpers of the HTTP side: Go-compatible URL, form, path, JSON and time text [no I/O]. */

/*
 * etcd2 is a Go program, and much of what a client sees of it comes from Go's standard library rather
 * than from etcd itself: how the query string is split and unescaped (url.ParseQuery), which paths the
 * ServeMux redirects (cleanPath), how JSON strings are escaped (encoding/json with HTML escaping), how
 * uptimes and times print (time.Duration.String, time.Time.MarshalJSON). This file reproduces those
 * rules, without I/O, so that the unit test can check them alone.
 */

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "http-util.h"
#include "macro.h"

static inline void *mfree_buf(void *p) {
        free(p);
        return NULL;
}

int http_buf_reserve(HttpBuf *b, size_t extra) {
        size_t need;
        char *p;

        if (extra > SIZE_MAX - b->len - 1)
                return -ENOMEM;
        need = b->len + extra + 1;
        if (need <= b->alloc)
                return 0;

        size_t a = MAX(need, b->alloc * 2);
        a = MAX(a, (size_t) 256);
        p = realloc(b->data, a);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->alloc = a;
        return 0;
}

int http_buf_append(HttpBuf *b, const void *p, size_t n) {
        int r;

        r = http_buf_reserve(b, n);
        if (r < 0)
                return r;
        if (n > 0)
                memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
}

int http_buf_puts(HttpBuf *b, const char *s) {
        return http_buf_append(b, s, strlen(s));
}

int http_buf_printf(HttpBuf *b, const char *fmt, ...) {
        va_list ap;
        int n, r;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;

        r = http_buf_reserve(b, (size_t) n);
        if (r < 0)
                return r;

        va_start(ap, fmt);
        (void) vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t) n;
        return 0;
}

void http_buf_done(HttpBuf *b) {
        b->data = mfree_buf(b->data);
        b->len = b->alloc = 0;
}

/* Length of a valid UTF-8 sequence at s (n bytes left), 0 if invalid. Go rejects overlongs and
 * surrogates, as this does. */
static size_t utf8_valid_len(const unsigned char *s, size_t n, uint32_t *ret_cp) {
        uint32_t cp;
        size_t len;

        if (s[0] < 0x80) {
                *ret_cp = s[0];
                return 1;
        }
        if ((s[0] & 0xe0) == 0xc0) {
                len = 2;
                cp = s[0] & 0x1f;
        } else if ((s[0] & 0xf0) == 0xe0) {
                len = 3;
                cp = s[0] & 0x0f;
        } else if ((s[0] & 0xf8) == 0xf0) {
                len = 4;
                cp = s[0] & 0x07;
        } else
                return 0;
        if (len > n)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret_cp = cp;
        return len;
}

int http_buf_json_string(HttpBuf *b, const char *s, size_t n) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *u = (const unsigned char *) s;
        size_t start = 0, i = 0;
        int r;

        r = http_buf_reserve(b, n + 2);
        if (r < 0)
                return r;
        b->data[b->len++] = '"';

        while (i < n) {
                char esc[8];
                size_t esc_len = 0, adv = 1;
                uint32_t cp;

                if (u[i] >= 0x20 && u[i] < 0x80 && u[i] != '"' && u[i] != '\\' &&
                    u[i] != '<' && u[i] != '>' && u[i] != '&') {
                        i++;
                        continue;
                }
                if (u[i] < 0x80) {
                        switch (u[i]) {
                        case '"': memcpy(esc, "\\\"", 2); esc_len = 2; break;
                        case '\\': memcpy(esc, "\\\\", 2); esc_len = 2; break;
                        case '\n': memcpy(esc, "\\n", 2); esc_len = 2; break;
                        case '\r': memcpy(esc, "\\r", 2); esc_len = 2; break;
                        case '\t': memcpy(esc, "\\t", 2); esc_len = 2; break;
                        default:
                                memcpy(esc, "\\u00", 4);
                                esc[4] = hex[u[i] >> 4];
                                esc[5] = hex[u[i] & 0xf];
                                esc_len = 6;
                        }
                } else {
                        adv = utf8_valid_len(u + i, n - i, &cp);
                        if (adv == 0) {
                                memcpy(esc, "\\ufffd", 6);
                                esc_len = 6;
                                adv = 1;
                        } else if (cp == 0x2028 || cp == 0x2029) {
                                memcpy(esc, cp == 0x2028 ? "\\u2028" : "\\u2029", 6);
                                esc_len = 6;
                        } else {
                                i += adv;
                                continue;
                        }
                }

                r = http_buf_append(b, s + start, i - start);
                if (r < 0)
                        return r;
                r = http_buf_append(b, esc, esc_len);
                if (r < 0)
                        return r;
                i += adv;
                start = i;
        }

        r = http_buf_append(b, s + start, i - start);
        if (r < 0)
                return r;
        return http_buf_append(b, "\"", 1);
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int http_unescape(const char *s, size_t n, bool plus, char **ret, size_t *ret_len, const char **ret_bad) {
        char *d;
        size_t j = 0;

        d = malloc(n + 1);
        if (!d)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                if (s[i] == '%') {
                        int hi = -1, lo = -1;

                        if (i + 2 < n) {
                                hi = unhex(s[i + 1]);
                                lo = unhex(s[i + 2]);
                        }
                        if (hi < 0 || lo < 0) {
                                free(d);
                                if (ret_bad)
                                        *ret_bad = s + i;
                                return -EINVAL;
                        }
                        d[j++] = (char) (hi << 4 | lo);
                        i += 2;
                } else if (plus && s[i] == '+')
                        d[j++] = ' ';
                else
                        d[j++] = s[i];
        }
        d[j] = 0;
        *ret = d;
        if (ret_len)
                *ret_len = j;
        return 0;
}

char *http_path_clean(const char *p) {
        /* Go's path.Clean: the lexical rules of Plan 9's cleanname. */
        size_t n = strlen(p), r = 0, w = 0, dotdot = 0;
        bool rooted;
        char *out;

        if (n == 0)
                return strdup(".");

        rooted = p[0] == '/';
        out = malloc(n + 2);
        if (!out)
                return NULL;

        if (rooted) {
                out[w++] = '/';
                r = 1;
                dotdot = 1;
        }

        while (r < n) {
                if (p[r] == '/')
                        r++;
                else if (p[r] == '.' && (r + 1 == n || p[r + 1] == '/'))
                        r++;
                else if (p[r] == '.' && p[r + 1] == '.' && (r + 2 == n || p[r + 2] == '/')) {
                        r += 2;
                        if (w > dotdot) {
                                w--;
                                while (w > dotdot && out[w] != '/')
                                        w--;
                        } else if (!rooted) {
                                if (w > 0)
                                        out[w++] = '/';
                                out[w++] = '.';
                                out[w++] = '.';
                                dotdot = w;
                        }
                } else {
                        if ((rooted && w != 1) || (!rooted && w != 0))
                                out[w++] = '/';
                        for (; r < n && p[r] != '/'; r++)
                                out[w++] = p[r];
                }
        }

        if (w == 0)
                out[w++] = '.';
        out[w] = 0;
        return out;
}

char *http_mux_clean_path(const char *p) {
        _cleanup_(freep) char *q = NULL;
        size_t n = strlen(p);
        char *c;

        if (n == 0)
                return strdup("/");
        if (p[0] != '/') {
                q = malloc(n + 2);
                if (!q)
                        return NULL;
                q[0] = '/';
                memcpy(q + 1, p, n + 1);
                p = q;
                n++;
        }

        c = http_path_clean(p);
        if (!c)
                return NULL;
        if (p[n - 1] == '/' && !streq(c, "/")) {
                size_t l = strlen(c);
                char *t = realloc(c, l + 2);
                if (!t) {
                        free(c);
                        return NULL;
                }
                t[l] = '/';
                t[l + 1] = 0;
                c = t;
        }
        return c;
}

bool http_mux_path_is_clean(const char *p) {
        if (p[0] != '/')
                return false;

        /* every segment after a '/' must be non-empty and not "." or "..", except an empty last one
         * (a trailing slash, which the mux keeps) */
        for (const char *s = p + 1;; ) {
                const char *e = strchrnul(s, '/');
                size_t l = e - s;

                if (*e == 0)
                        return !(l == 1 && s[0] == '.') && !(l == 2 && s[0] == '.' && s[1] == '.');
                if (l == 0 || (l == 1 && s[0] == '.') || (l == 2 && s[0] == '.' && s[1] == '.'))
                        return false;
                s = e + 1;
        }
}

int http_buf_escape_path(HttpBuf *b, const char *p) {
        static const char hex[] = "0123456789ABCDEF";
        int r;

        for (const unsigned char *u = (const unsigned char *) p; *u; u++) {
                bool keep = (*u >= 'a' && *u <= 'z') || (*u >= 'A' && *u <= 'Z') || (*u >= '0' && *u <= '9') ||
                            strchr("-_.~$&+,/:;=@", *u);
                if (keep)
                        r = http_buf_append(b, u, 1);
                else {
                        char e[3] = { '%', hex[*u >> 4], hex[*u & 15] };
                        r = http_buf_append(b, e, 3);
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

static int form_add(HttpForm *f, char *key, char *value, size_t value_len) {
        if (f->n >= f->alloc) {
                size_t a = MAX(f->alloc * 2, (size_t) 16);
                HttpFormField *t = realloc(f->fields, a * sizeof(HttpFormField));
                if (!t)
                        return -ENOMEM;
                f->fields = t;
                f->alloc = a;
        }
        f->fields[f->n++] = (HttpFormField) { .key = key, .value = value, .value_len = value_len };
        /* a parse after a lookup: the table is rebuilt by the next lookup */
        f->slots = mfree_buf(f->slots);
        f->n_slots = 0;
        return 0;
}

static char *escape_error(const char *bad, const char *end) {
        /* Go: EscapeError's text is `invalid URL escape ` + strconv.Quote(up to 3 bytes from the '%'). */
        size_t l = MIN((size_t) (end - bad), (size_t) 3);
        HttpBuf b = {};

        if (http_buf_puts(&b, "invalid URL escape \"") < 0)
                goto fail;
        for (size_t i = 0; i < l; i++) {
                unsigned char c = bad[i];
                int r;
                if (c == '"' || c == '\\')
                        r = http_buf_printf(&b, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        r = http_buf_printf(&b, "\\x%02x", c);
                else
                        r = http_buf_append(&b, &c, 1);
                if (r < 0)
                        goto fail;
        }
        if (http_buf_puts(&b, "\"") < 0)
                goto fail;
        return b.data;
fail:
        http_buf_done(&b);
        return NULL;
}

int http_form_parse(HttpForm *f, const char *s, size_t n, char **ret_error) {
        const char *end = s + n;

        while (s < end) {
                const char *sep, *eq, *bad = NULL;
                char *key = NULL, *value = NULL;
                size_t value_len = 0;
                int r;

                for (sep = s; sep < end && *sep != '&' && *sep != ';'; sep++)
                        ;
                if (sep == s) {
                        s++;
                        continue;
                }
                /* before unescaping: a flood of fields costs one short scan, not millions of mallocs */
                if (f->n >= HTTP_FORM_FIELDS_MAX)
                        return -E2BIG;
                eq = memchr(s, '=', sep - s);

                r = http_unescape(s, (eq ?: sep) - s, true, &key, NULL, &bad);
                if (r >= 0) {
                        if (eq)
                                r = http_unescape(eq + 1, sep - eq - 1, true, &value, &value_len, &bad);
                        else {
                                value = strdup("");
                                r = value ? 0 : -ENOMEM;
                        }
                        if (r < 0)
                                key = mfree_buf(key);
                }
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        if (ret_error && !*ret_error) {
                                *ret_error = escape_error(bad, sep);
                                if (!*ret_error)
                                        return -ENOMEM;
                        }
                } else {
                        r = form_add(f, key, value, value_len);
                        if (r < 0) {
                                free(key);
                                free(value);
                                return r;
                        }
                }
                s = sep < end ? sep + 1 : end;
        }
        return 0;
}

/* Below this many fields a linear scan is as cheap as hashing. */
#define FORM_LINEAR_MAX 16

static uint32_t form_hash(const char *s) {
        /* FNV-1a */
        uint32_t h = 2166136261u;

        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 16777619u;
        }
        return h;
}

static int form_index(HttpForm *f) {
        size_t cap = 32;

        while (cap < f->n * 2)
                cap *= 2;
        f->slots = malloc(cap * sizeof(uint32_t));
        if (!f->slots)
                return -ENOMEM;
        f->n_slots = cap;
        for (size_t i = 0; i < cap; i++)
                f->slots[i] = UINT32_MAX;
        for (size_t i = 0; i < f->n; i++)
                for (size_t j = form_hash(f->fields[i].key) & (cap - 1);; j = (j + 1) & (cap - 1)) {
                        if (f->slots[j] == UINT32_MAX) {
                                f->slots[j] = (uint32_t) i;
                                break;
                        }
                        /* keep the first occurrence: url.Values.Get returns the first value */
                        if (streq(f->fields[f->slots[j]].key, f->fields[i].key))
                                break;
                }
        return 0;
}

const HttpFormField *http_form_get(const HttpForm *f, const char *key) {
        HttpForm *m = (HttpForm *) f; /* the lookup table is a cache, not part of the value */

        if (f->n > FORM_LINEAR_MAX && (f->slots || form_index(m) >= 0)) {
                for (size_t j = form_hash(key) & (f->n_slots - 1);; j = (j + 1) & (f->n_slots - 1)) {
                        if (f->slots[j] == UINT32_MAX)
                                return NULL;
                        if (streq(f->fields[f->slots[j]].key, key))
                                return &f->fields[f->slots[j]];
                }
        }
        for (size_t i = 0; i < f->n; i++)
                if (streq(f->fields[i].key, key))
                        return &f->fields[i];
        return NULL;
}

void http_form_done(HttpForm *f) {
        for (size_t i = 0; i < f->n; i++) {
                free(f->fields[i].key);
                free(f->fields[i].value);
        }
        f->fields = mfree_buf(f->fields);
        f->n = f->alloc = 0;
        f->slots = mfree_buf(f->slots);
        f->n_slots = 0;
}

int go_parse_bool(const char *s, bool *ret) {
        static const char *const t[] = { "1", "t", "T", "TRUE", "true", "True" };
        static const char *const fa[] = { "0", "f", "F", "FALSE", "false", "False" };

        for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                if (streq(s, t[i])) {
                        *ret = true;
                        return 0;
                }
                if (streq(s, fa[i])) {
                        *ret = false;
                        return 0;
                }
        }
        return -EINVAL;
}

int go_parse_uint64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (!*s)
                return -EINVAL;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                if (v > (UINT64_MAX - (uint64_t) (*s - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (uint64_t) (*s - '0');
        }
        *ret = v;
        return 0;
}

/* Appends the integer part and, if non-zero, the fraction with trailing zeros dropped: Go's fmtFrac. */
static int buf_frac(HttpBuf *b, uint64_t v, unsigned prec) {
        uint64_t div = 1;
        char frac[32];
        int r;

        for (unsigned i = 0; i < prec; i++)
                div *= 10;
        r = http_buf_printf(b, "%llu", (unsigned long long) (v / div));
        if (r < 0 || v % div == 0)
                return r;

        snprintf(frac, sizeof frac, "%0*llu", (int) prec, (unsigned long long) (v % div));
        for (size_t l = strlen(frac); l > 0 && frac[l - 1] == '0'; l--)
                frac[l - 1] = 0;
        return http_buf_printf(b, ".%s", frac);
}

int http_buf_go_duration(HttpBuf *b, uint64_t ns) {
        uint64_t secs;
        int r;

        if (ns == 0)
                return http_buf_puts(b, "0s");
        if (ns < 1000)
                return http_buf_printf(b, "%lluns", (unsigned long long) ns);
        if (ns < 1000000) {
                r = buf_frac(b, ns, 3);
                return r < 0 ? r : http_buf_puts(b, "\xc2\xb5s");
        }
        if (ns < 1000000000) {
                r = buf_frac(b, ns, 6);
                return r < 0 ? r : http_buf_puts(b, "ms");
        }

        secs = ns / 1000000000;
        if (secs >= 3600) {
                r = http_buf_printf(b, "%lluh", (unsigned long long) (secs / 3600));
                if (r < 0)
                        return r;
        }
        if (secs >= 60) {
                r = http_buf_printf(b, "%llum", (unsigned long long) (secs / 60 % 60));
                if (r < 0)
                        return r;
        }
        r = buf_frac(b, (secs % 60) * 1000000000 + ns % 1000000000, 9);
        return r < 0 ? r : http_buf_puts(b, "s");
}

int http_buf_rfc3339(HttpBuf *b, uint64_t usec) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        char frac[16] = "";
        struct tm tm;
        int r;

        if (!localtime_r(&t, &tm))
                return -EINVAL;

        if (usec % USEC_PER_SEC != 0) {
                snprintf(frac, sizeof frac, ".%06llu", (unsigned long long) (usec % USEC_PER_SEC));
                /* trailing zeros go, as Go's RFC3339Nano; the fraction is not 0, so the dot stays */
                for (size_t l = strlen(frac); l > 1 && frac[l - 1] == '0'; l--)
                        frac[l - 1] = 0;
        }

        r = http_buf_printf(b, "%04d-%02d-%02dT%02d:%02d:%02d%s", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                            tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
        if (r < 0)
                return r;
        if (tm.tm_gmtoff == 0)
                return http_buf_puts(b, "Z");

        long off = tm.tm_gmtoff / 60;
        char sign = off < 0 ? '-' : '+';
        if (off < 0)
                off = -off;
        return http_buf_printf(b, "%c%02ld:%02ld", sign, off / 60, off % 60);
}

/* --- Go's encoding/json scanner errors -------------------------------------------------------- */

/* encoding/json quoteChar(): the byte as a Go rune, quoted as strconv.Quote() does, in '...' */
static void go_quote_char(unsigned char c, char buf[16]) {
        static const char esc[] = { ['\a'] = 'a', ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r',
                                    ['\t'] = 't', ['\v'] = 'v' };

        if (c == '\'')
                snprintf(buf, 16, "'\\''");
        else if (c == '\\')
                snprintf(buf, 16, "'\\\\'");
        else if (c < sizeof esc && esc[c])
                snprintf(buf, 16, "'\\%c'", esc[c]);
        else if (c < 0x20 || c == 0x7f)
                snprintf(buf, 16, "'\\x%02x'", c);
        else if ((c >= 0x80 && c <= 0xa0) || c == 0xad)
                snprintf(buf, 16, "'\\u%04x'", c);
        else if (c >= 0x80)
                snprintf(buf, 16, "'%c%c'", 0xc0 | (c >> 6), 0x80 | (c & 0x3f));
        else
                snprintf(buf, 16, "'%c'", c);
}

enum {
        GJ_VALUE,        /* a value must begin */
        GJ_VALUE_OR_END, /* after '[' */
        GJ_KEY_OR_END,   /* after '{' */
        GJ_KEY,          /* after ',' in an object */
        GJ_COLON,        /* after a key */
        GJ_OBJ_NEXT,     /* after a member's value */
        GJ_ARR_NEXT,     /* after an element */
        GJ_TOP_END,      /* after the top-level value */
};

/* The next byte; past the end a space once (Go's scanner eof() steps so), then false. */
static bool gj_next(const char *data, size_t len, size_t *i, unsigned char *c) {
        if (*i < len) {
                *c = (unsigned char) data[(*i)++];
                return true;
        }
        *c = ' ';
        return (*i)++ == len;
}

char *go_json_syntax_error(const char *data, size_t len, bool *ret_oom) {
        _cleanup_free_ char *stack = NULL; /* '{' or '[' per open container */
        size_t depth = 0;
        int state = GJ_VALUE;
        const char *ctx = NULL;
        char q[16], what[64], *m;
        size_t i = 0;
        unsigned char c = 0;

        *ret_oom = false;
        stack = malloc(len + 1);
        if (!stack) {
                *ret_oom = true;
                return NULL;
        }

#define FAIL(context) do { ctx = (context); goto fail; } while (0)
        /* at the end, Go's scanner steps once more with a space: literals and numbers end or fail so */
#define NEXT() gj_next(data, len, &i, &c)
        for (;;) {
                bool more = i < len;
                bool is_value = false;

                if (!more) {
                        if (state == GJ_TOP_END)
                                return NULL;
                        goto eof;
                }
                c = (unsigned char) data[i++];
                if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
                        continue;

                switch (state) {
                case GJ_TOP_END:
                        FAIL("after top-level value");
                case GJ_COLON:
                        if (c != ':')
                                FAIL("after object key");
                        state = GJ_VALUE;
                        continue;
                case GJ_OBJ_NEXT:
                        if (c == ',') {
                                state = GJ_KEY;
                                continue;
                        }
                        if (c != '}')
                                FAIL("after object key:value pair");
                        depth--;
                        break;
                case GJ_ARR_NEXT:
                        if (c == ',') {
                                state = GJ_VALUE;
                                continue;
                        }
                        if (c != ']')
                                FAIL("after array element");
                        depth--;
                        break;
                case GJ_KEY_OR_END:
                case GJ_KEY:
                        if (c == '}' && state == GJ_KEY_OR_END) {
                                depth--;
                                break;
                        }
                        if (c != '"')
                                FAIL("looking for beginning of object key string");
                        is_value = true;
                        break;
                case GJ_VALUE_OR_END:
                        if (c == ']') {
                                depth--;
                                break;
                        }
                        __attribute__((fallthrough));
                case GJ_VALUE:
                        is_value = true;
                        break;
                }

                if (is_value) {
                        bool key = state == GJ_KEY_OR_END || state == GJ_KEY;

                        if (c == '{') {
                                stack[depth++] = '{';
                                state = GJ_KEY_OR_END;
                                continue;
                        }
                        if (c == '[') {
                                stack[depth++] = '[';
                                state = GJ_VALUE_OR_END;
                                continue;
                        }
                        if (c == '"') {
                                for (;;) {
                                        if (i >= len)
                                                goto eof;
                                        c = (unsigned char) data[i++];
                                        if (c == '"')
                                                break;
                                        if (c < 0x20)
                                                FAIL("in string literal");
                                        if (c != '\\')
                                                continue;
                                        /* an escape cut by the end fails on eof()'s space */
                                        (void) NEXT();
                                        if (c == 'u') {
                                                for (int k = 0; k < 4; k++) {
                                                        (void) NEXT();
                                                        if (!isxdigit(c))
                                                                FAIL("in \\u hexadecimal character escape");
                                                }
                                        } else if (!strchr("bfnrt\\/\"", c) || c == 0)
                                                FAIL("in string escape code");
                                }
                                if (key) {
                                        state = GJ_COLON;
                                        continue;
                                }
                        } else if (c == 't' || c == 'f' || c == 'n') {
                                const char *lit = c == 't' ? "true" : c == 'f' ? "false" : "null";
                                for (const char *l = lit + 1; *l; l++) {
                                        (void) NEXT();
                                        if (c != (unsigned char) *l) {
                                                snprintf(what, sizeof what, "in literal %s (expecting '%c')", lit, *l);
                                                FAIL(what);
                                        }
                                }
                        } else if (c == '-' || (c >= '0' && c <= '9')) {
                                if (c == '-') {
                                        (void) NEXT();
                                        if (!(c >= '0' && c <= '9'))
                                                FAIL("in numeric literal");
                                }
                                if (c != '0')
                                        while (NEXT() && c >= '0' && c <= '9')
                                                ;
                                else
                                        (void) NEXT();
                                if (c == '.') {
                                        (void) NEXT();
                                        if (!(c >= '0' && c <= '9'))
                                                FAIL("after decimal point in numeric literal");
                                        while (NEXT() && c >= '0' && c <= '9')
                                                ;
                                }
                                if (c == 'e' || c == 'E') {
                                        (void) NEXT();
                                        if (c == '+' || c == '-')
                                                (void) NEXT();
                                        if (!(c >= '0' && c <= '9'))
                                                FAIL("in exponent of numeric literal");
                                        while (NEXT() && c >= '0' && c <= '9')
                                                ;
                                }
                                /* the byte that ended the number belongs to what follows */
                                i--;
                        } else
                                FAIL("looking for beginning of value");
                }

                /* a value (or container) ended */
                state = depth == 0 ? GJ_TOP_END : stack[depth - 1] == '{' ? GJ_OBJ_NEXT : GJ_ARR_NEXT;
        }
#undef NEXT
#undef FAIL
eof:
        m = strdup("unexpected end of JSON input");
        *ret_oom = !m;
        return m;
fail:
        go_quote_char(c, q);
        if (asprintf(&m, "invalid character %s %s", q, ctx) < 0) {
                *ret_oom = true;
                return NULL;
        }
        return m;
}

/* --- Go's encoding/json field names ------------------------------------------------------------ */

/* encoding/json's equalFoldRight() for an ASCII name: the only non-ASCII runes that fold to an ASCII letter
 * under unicode.SimpleFold are U+212A (k) and U+017F (s); anything else non-ASCII never matches. */
bool go_json_key_matches(const char *key, const char *name) {
        const unsigned char *k = (const unsigned char *) key;

        for (const char *n = name; *n; n++) {
                char lc = (char) tolower((unsigned char) *n);

                if (*k < 0x80) {
                        if (*k == 0 || (*k != (unsigned char) *n && !(isalpha(*k) && tolower(*k) == lc)))
                                return false;
                        k++;
                } else if (lc == 'k' && k[0] == 0xe2 && k[1] == 0x84 && k[2] == 0xaa)
                        k += 3;
                else if (lc == 's' && k[0] == 0xc5 && k[1] == 0xbf)
                        k += 2;
                else
                        return false;
        }
        return *k == 0;
}

struct json_object *go_json_field(struct json_object *o, const char *name, bool null_clears) {
        json_object *found = NULL;

        if (!o || !json_object_is_type(o, json_type_object))
                return NULL;
        /* json.Unmarshal stores every matching member in turn: the last one stays */
        json_object_object_foreach(o, key, v)
                if ((v || null_clears) && go_json_key_matches(key, name))
                        found = v;
        return found;
}
