/* SPDX-License-Identifier: Apache-2.0 */
/* codec.c - compact binary encoding of replicated StoreRequests [no I/O, fuzzed]. */

/*
 * A Raft entry of type RAFT_COMMAND carries one StoreRequest in this layout:
 *
 *   u8 version (CODEC_REQUEST_VERSION)   u8 method   u8 flags   u8 prev_exist + 1
 *   varint prev_index   varint expiration_usec   varint time_usec
 *   varint path_len  path bytes  NUL
 *   [varint value_len  value bytes  NUL]            if FLAG_VALUE
 *   [varint prev_value_len  prev_value bytes  NUL]  if FLAG_PREV_VALUE
 *
 * The trailing NULs let the decoder hand out pointers into the entry buffer without copying; the
 * path and prevValue must not contain NUL (they are C strings in the store), values may. Decoding
 * accepts exactly one encoding per request: unknown flags, trailing bytes, overlong varints and
 * missing terminators are all rejected, so a corrupt entry is never half-applied.
 */

#include <errno.h>
#include <string.h>

#include "codec.h"

enum {
        FLAG_DIR        = 1 << 0,
        FLAG_RECURSIVE  = 1 << 1,
        FLAG_SORTED     = 1 << 2,
        FLAG_REFRESH    = 1 << 3,
        FLAG_VALUE      = 1 << 4,
        FLAG_PREV_VALUE = 1 << 5,
        _FLAG_ALL       = (1 << 6) - 1,
};

#define VARINT_MAX 10

size_t codec_varint_put(void *p, uint64_t v) {
        uint8_t *b = p;
        size_t n = 0;

        while (v >= 0x80) {
                b[n++] = (uint8_t) (v | 0x80);
                v >>= 7;
        }
        b[n++] = (uint8_t) v;
        return n;
}

size_t codec_varint_get(const void *p, size_t len, uint64_t *ret) {
        const uint8_t *b = p;
        uint64_t v = 0;

        for (size_t i = 0; i < len && i < VARINT_MAX; i++) {
                uint64_t bits = b[i] & 0x7f;

                /* The tenth byte may only hold the top bit of a 64-bit value. */
                if (i == VARINT_MAX - 1 && bits > 1)
                        return 0;
                v |= bits << (7 * i);
                if (!(b[i] & 0x80)) {
                        /* Reject non-minimal encodings (a trailing zero byte) except for 0 itself. */
                        if (i > 0 && b[i] == 0)
                                return 0;
                        *ret = v;
                        return i + 1;
                }
        }
        return 0;
}

static size_t varint_size(uint64_t v) {
        size_t n = 1;

        while (v >= 0x80) {
                v >>= 7;
                n++;
        }
        return n;
}

static size_t string_size(size_t len) {
        return varint_size(len) + len + 1;
}

size_t codec_request_size(const StoreRequest *req) {
        size_t n = 4;

        n += varint_size(req->prev_index) + varint_size(req->expiration_usec) + varint_size(req->time_usec);
        n += string_size(req->path ? strlen(req->path) : 0);
        if (req->value)
                n += string_size(req->value_len);
        if (req->prev_value)
                n += string_size(strlen(req->prev_value));
        return n;
}

static uint8_t *put_string(uint8_t *p, const char *s, size_t len) {
        p += codec_varint_put(p, len);
        if (len > 0)
                memcpy(p, s, len);
        p += len;
        *p++ = 0;
        return p;
}

size_t codec_request_write(const StoreRequest *req, void *buf) {
        uint8_t *p = buf;
        uint8_t flags = 0;

        flags |= req->dir ? FLAG_DIR : 0;
        flags |= req->recursive ? FLAG_RECURSIVE : 0;
        flags |= req->sorted ? FLAG_SORTED : 0;
        flags |= req->refresh ? FLAG_REFRESH : 0;
        flags |= req->value ? FLAG_VALUE : 0;
        flags |= req->prev_value ? FLAG_PREV_VALUE : 0;

        *p++ = CODEC_REQUEST_VERSION;
        *p++ = (uint8_t) req->method;
        *p++ = flags;
        *p++ = (uint8_t) (req->prev_exist < 0 ? 0 : req->prev_exist > 0 ? 2 : 1);
        p += codec_varint_put(p, req->prev_index);
        p += codec_varint_put(p, req->expiration_usec);
        p += codec_varint_put(p, req->time_usec);
        p = put_string(p, req->path, req->path ? strlen(req->path) : 0);
        if (req->value)
                p = put_string(p, req->value, req->value_len);
        if (req->prev_value)
                p = put_string(p, req->prev_value, strlen(req->prev_value));

        return (size_t) (p - (uint8_t *) buf);
}

typedef struct Reader {
        const uint8_t *p;
        size_t left;
} Reader;

static int read_varint(Reader *r, uint64_t *ret) {
        size_t n = codec_varint_get(r->p, r->left, ret);

        if (n == 0)
                return -EBADMSG;
        r->p += n;
        r->left -= n;
        return 0;
}

/* Reads a length-prefixed, NUL-terminated string; `c_string` forbids embedded NULs. */
static int read_string(Reader *r, bool c_string, const char **ret, size_t *ret_len) {
        uint64_t len;
        int k;

        k = read_varint(r, &len);
        if (k < 0)
                return k;
        if (len >= r->left || r->p[len] != 0)
                return -EBADMSG;
        if (c_string && memchr(r->p, 0, len))
                return -EBADMSG;

        *ret = (const char *) r->p;
        if (ret_len)
                *ret_len = len;
        r->p += len + 1;
        r->left -= len + 1;
        return 0;
}

int codec_request_decode(const void *buf, size_t len, StoreRequest *ret) {
        Reader r = { .p = buf, .left = len };
        StoreRequest req = {};
        uint8_t flags;
        int k;

        if (!buf || len < 4)
                return -EBADMSG;
        if (r.p[0] != CODEC_REQUEST_VERSION)
                return -EBADMSG;
        if (r.p[1] >= _STORE_METHOD_MAX)
                return -EBADMSG;
        flags = r.p[2];
        if (flags & ~_FLAG_ALL)
                return -EBADMSG;
        if (r.p[3] > 2)
                return -EBADMSG;

        req.method = (StoreMethod) r.p[1];
        req.dir = flags & FLAG_DIR;
        req.recursive = flags & FLAG_RECURSIVE;
        req.sorted = flags & FLAG_SORTED;
        req.refresh = flags & FLAG_REFRESH;
        req.prev_exist = (int) r.p[3] - 1;
        r.p += 4;
        r.left -= 4;

        k = read_varint(&r, &req.prev_index);
        if (k < 0)
                return k;
        k = read_varint(&r, &req.expiration_usec);
        if (k < 0)
                return k;
        k = read_varint(&r, &req.time_usec);
        if (k < 0)
                return k;
        k = read_string(&r, true, &req.path, NULL);
        if (k < 0)
                return k;
        if (flags & FLAG_VALUE) {
                k = read_string(&r, false, &req.value, &req.value_len);
                if (k < 0)
                        return k;
        }
        if (flags & FLAG_PREV_VALUE) {
                k = read_string(&r, true, &req.prev_value, NULL);
                if (k < 0)
                        return k;
        }
        if (r.left != 0)
                return -EBADMSG;

        *ret = req;
        return 0;
}

size_t codec_envelope_write_header(uint64_t origin, uint64_t id, void *buf) {
        uint8_t *p = buf;

        *p++ = CODEC_ENVELOPE_VERSION;
        p += codec_varint_put(p, origin);
        p += codec_varint_put(p, id);
        return (size_t) (p - (uint8_t *) buf);
}

int codec_envelope_decode(const void *buf, size_t len, uint64_t *ret_origin, uint64_t *ret_id,
                          const void **ret_inner, size_t *ret_inner_len) {
        Reader r = { .p = buf, .left = len };
        uint64_t origin, id;

        if (!buf || len < 1)
                return -EBADMSG;
        if (r.p[0] == CODEC_REQUEST_VERSION) {
                *ret_origin = *ret_id = 0;
                *ret_inner = buf;
                *ret_inner_len = len;
                return 0;
        }
        if (r.p[0] != CODEC_ENVELOPE_VERSION)
                return -EBADMSG;
        r.p++;
        r.left--;
        if (read_varint(&r, &origin) < 0 || read_varint(&r, &id) < 0)
                return -EBADMSG;
        if (r.left < 1 || r.p[0] != CODEC_REQUEST_VERSION)
                return -EBADMSG;
        *ret_origin = origin;
        *ret_id = id;
        *ret_inner = r.p;
        *ret_inner_len = r.left;
        return 0;
}
