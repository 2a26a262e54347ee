/* SPDX-License-Identifier: Apache-2.0 */
/* codec.h - compact binary encoding of replicated StoreRequests and small records [no I/O, fuzzed]. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Version byte at the start of every encoded request; a member refuses entries of a version it
 * does not know rather than applying them wrongly. */
#define CODEC_REQUEST_VERSION 1

/* Upper bound of the encoded size of `req` (exact, in fact). The caller allocates that many bytes
 * (e.g. with raft_malloc()) and calls codec_request_write(). */
size_t codec_request_size(const StoreRequest *req);
/* Writes the encoding of `req` into `buf` (codec_request_size(req) bytes); returns the length. */
size_t codec_request_write(const StoreRequest *req, void *buf);

/* Decodes `buf` into *ret without copying: ret->path, ret->value and ret->prev_value point into `buf`
 * (the encoding carries the NUL terminators), so `buf` must outlive *ret. Every byte is validated;
 * garbage yields -EBADMSG and leaves *ret untouched. */
int codec_request_decode(const void *buf, size_t len, StoreRequest *ret);

/* Fixed-width big-endian integers: RocksDB keys sort in index order with them. */
static inline void codec_put_be64(void *p, uint64_t v) {
        uint8_t *b = p;
        for (int i = 7; i >= 0; i--) {
                b[i] = v & 0xff;
                v >>= 8;
        }
}

static inline uint64_t codec_get_be64(const void *p) {
        const uint8_t *b = p;
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = (v << 8) | b[i];
        return v;
}

/* Unsigned LEB128 varints. codec_varint_get() returns the number of bytes consumed, 0 on error. */
size_t codec_varint_put(void *p, uint64_t v);
size_t codec_varint_get(const void *p, size_t len, uint64_t *ret);

/* Envelope of a replicated entry (and of a proposal forwarded to the leader): who proposed it and
 * the proposer's request ID, so that the proposing member answers its client when IT applies the
 * entry (etcd2's wait-by-ID). Layout: u8 CODEC_ENVELOPE_VERSION, varint origin member ID, varint
 * request ID, then the request as codec_request_write() encodes it. Entries written before the
 * envelope existed (a bare request, version byte 1) decode with origin = id = 0. */
#define CODEC_ENVELOPE_VERSION 2
#define CODEC_ENVELOPE_HEADER_MAX 21

/* Writes the envelope header into buf (at most CODEC_ENVELOPE_HEADER_MAX bytes); returns its length. */
size_t codec_envelope_write_header(uint64_t origin, uint64_t id, void *buf);
/* Splits an entry into origin, ID and the encoded request (pointing into buf). -EBADMSG on garbage. */
int codec_envelope_decode(const void *buf, size_t len, uint64_t *ret_origin, uint64_t *ret_id,
                          const void **ret_inner, size_t *ret_inner_len);
