/* SPDX-License-Identifier: Apache-2.0 */
/* peer-codec.h - framed binary encoding of libraft's struct raft_message for the peer stream [no I/O, fuzzed]. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "macro.h"

/*
 * Frame layout (all header fields big-endian):
 *
 *   u32 magic (PEER_FRAME_MAGIC)  u8 version  u8 type (RAFT_IO_*)  u16 flags (0)
 *   u32 body length  u64 sender member ID  u64 cluster ID
 *   body: varint-encoded message, see peer-codec.c
 *
 * Many frames follow each other on one connection; the decoder never trusts the length field for
 * allocation, only the bytes that actually arrived.
 */
#define PEER_FRAME_MAGIC UINT32_C(0x65327266) /* "e2rf" */
#define PEER_FRAME_VERSION 1
#define PEER_FRAME_HEADER_SIZE 28

/* Default cap of one frame's body (snapshots are the large ones). */
#define PEER_FRAME_BODY_MAX_DEFAULT ((size_t) 512 * 1024 * 1024)
/* Per-type caps, checked on the declared length as soon as a frame's header arrived, before any of its
 * body is buffered (an impersonated sender can't make us hold more than its type needs):
 * - votes, their results, append results, timeout-now: fixed fields plus the sender address;
 * - a member-layer frame (PEER_FRAME_TYPE_OPAQUE) carries at most one forwarded proposal, whose value
 *   is bounded by the client API's HTTP_BODY_MAX (10 MiB) and its key and query by the request URI
 *   (12 KiB), or a membership request (64 URLs, each < PEER_ADDRESS_MAX);
 * - AppendEntries: libraft 0.15 sends the whole missing tail of the log in one message (no
 *   MaxSizePerMsg), so only the generic cap applies; InstallSnapshot likewise until snapshots travel
 *   in bounded chunks (add their frame types to peer_frame_body_max()'s table). */
#define PEER_FRAME_SMALL_BODY_MAX ((size_t) 4096)
#define PEER_FRAME_OPAQUE_BODY_MAX ((size_t) 16 * 1024 * 1024)

/* Longest sender/server address carried, and most servers in a snapshot's configuration. */
#define PEER_ADDRESS_MAX 1024
#define PEER_SERVERS_MAX 1024

typedef struct PeerFrameHeader {
        uint8_t version;
        uint8_t type;
        uint32_t body_size;
        uint64_t sender_id;
        uint64_t cluster_id;
} PeerFrameHeader;

/* A decoded frame. message.server_id is the sender's ID and message.server_address points to
 * sender_address (never NULL, possibly ""), which is what raft_io's recv_cb expects.
 *
 * The payload (append entries: the raft_malloc'd entries array plus the one raft_malloc'd batch
 * that every entry's buffer points into; install snapshot: the configuration and the data buffer,
 * all raft_malloc'd) is owned by the frame until peer_frame_hand_over() says libraft took it. */
typedef struct PeerFrame {
        uint64_t cluster_id;
        uint64_t sender_id;
        char *sender_address;   /* malloc'd, NUL-terminated, owned by the frame in every case */
        struct raft_message message;
        bool owns_payload;
        /* PEER_FRAME_TYPE_OPAQUE only (message.type is then PEER_FRAME_TYPE_OPAQUE and the rest of
         * `message` is zero): the body as sent, malloc'd, owned by the frame. */
        void *opaque;
        size_t opaque_size;
} PeerFrame;

/* A frame of the member layer rather than a raft message (proposals forwarded to the leader and
 * their refusals): the body is opaque bytes, not interpreted here; sender_address is "". */
#define PEER_FRAME_TYPE_OPAQUE 64

/* The largest body a frame of `type` may declare (0 for an unknown type). */
size_t peer_frame_body_max(uint8_t type);

/* Writes the header of an opaque frame with a body of `body_size` bytes into buf
 * (PEER_FRAME_HEADER_SIZE bytes); the body follows it. */
void peer_frame_write_opaque_header(uint64_t cluster_id, uint64_t sender_id, uint32_t body_size, void *buf);

/* Parses the fixed header. Returns 0, -EAGAIN if fewer than PEER_FRAME_HEADER_SIZE bytes were given,
 * -EBADMSG on a bad magic, nonzero flags or unknown type, -EPROTONOSUPPORT on another version. */
int peer_frame_header_parse(const void *buf, size_t size, PeerFrameHeader *ret);

/* Exact size of the whole frame (header included) for `m` sent by a member at `sender_address`
 * (NULL means ""). Returns -EINVAL for an unknown type, an entry type, role or address that the
 * decoder would refuse, or -E2BIG when the body does not fit in 32 bits. */
int peer_frame_size(const struct raft_message *m, const char *sender_address, size_t *ret);

/* Writes the frame into `buf` (peer_frame_size() bytes, which must have succeeded) and returns the
 * number of bytes written. m->server_id/server_address (the destination) are not encoded. */
size_t peer_frame_write(const struct raft_message *m, uint64_t cluster_id, uint64_t sender_id,
                        const char *sender_address, void *buf);

/* Both of the above into a fresh malloc'd buffer. */
int peer_frame_encode(const struct raft_message *m, uint64_t cluster_id, uint64_t sender_id,
                      const char *sender_address, void **ret, size_t *ret_size);

/* Decodes exactly one whole frame (header + body, `size` bytes). Every byte is validated: a
 * truncated, padded or malformed frame gives -EBADMSG (or -EPROTONOSUPPORT, see above) and
 * leaves *ret untouched; -ENOMEM on allocation failure. Allocations are bounded by `size`. */
int peer_frame_decode(const void *buf, size_t size, PeerFrame *ret);

/* Libraft took the payload (call right after passing &f->message to recv_cb). */
static inline struct raft_message *peer_frame_hand_over(PeerFrame *f) {
        f->owns_payload = false;
        return &f->message;
}

/* Frees what the frame still owns and zeroes it. Takes NULL and an all-zero frame. */
void peer_frame_done(PeerFrame *f);

/* Incremental decoder for a byte stream of frames. */
typedef struct PeerDecoder PeerDecoder;

/* body_max: bodies longer than this, or than peer_frame_body_max() of their type, are refused with
 * -E2BIG as soon as the header arrived (0 = PEER_FRAME_BODY_MAX_DEFAULT). */
int peer_decoder_new(size_t body_max, PeerDecoder **ret);
PeerDecoder *peer_decoder_free(PeerDecoder *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(PeerDecoder *, peer_decoder_free);

/* Appends arbitrary bytes of the stream (any chunking). Memory grows with the bytes given, never
 * with a length announced by the peer. */
int peer_decoder_feed(PeerDecoder *d, const void *data, size_t size);

/* Zero-copy variant of feed for read(2)/recv(2): returns a buffer of at least `min_size` writable
 * bytes at the end of the stream (its size in *ret_size); after reading n bytes into it, call
 * peer_decoder_commit(d, n). */
int peer_decoder_get_space(PeerDecoder *d, size_t min_size, void **ret, size_t *ret_size);
void peer_decoder_commit(PeerDecoder *d, size_t n);

/* Returns 1 and fills *ret with the next whole frame, 0 when more bytes are needed, < 0 when the
 * stream is corrupt (the connection must be dropped: the decoder stays failed). Header errors are
 * reported as soon as the 28 header bytes arrived, before the body. */
int peer_decoder_next(PeerDecoder *d, PeerFrame *ret);

/* Bytes buffered but not yet returned as frames. */
size_t peer_decoder_pending(const PeerDecoder *d);
