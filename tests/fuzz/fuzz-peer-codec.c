/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-peer-codec.c - libFuzzer target for the peer frame decoder; also replayed by test-peer-codec. */

/*
 * Each input is tried twice: as a raw stream (through the incremental decoder, fed in chunks whose
 * sizes come from the input itself), and as the body of a frame whose valid header we make up, so
 * that the fuzzer does not have to guess the magic to reach the body decoders. Whatever decodes
 * must encode back to the very same bytes (the encoding is canonical) and free cleanly.
 */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peer-codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_roundtrip(const uint8_t *frame, size_t size) {
        PeerFrame f = {};
        void *again = NULL;
        size_t again_size = 0;
        int r;

        r = peer_frame_decode(frame, size, &f);
        if (r < 0) {
                assert(r == -EBADMSG || r == -EPROTONOSUPPORT || r == -ENOMEM);
                return;
        }

        assert(f.message.server_address == f.sender_address);
        if (f.message.type == PEER_FRAME_TYPE_OPAQUE) {
                uint8_t h[PEER_FRAME_HEADER_SIZE];

                assert(f.opaque_size + PEER_FRAME_HEADER_SIZE == size);
                peer_frame_write_opaque_header(f.cluster_id, f.sender_id, (uint32_t) f.opaque_size, h);
                assert(memcmp(h, frame, sizeof(h)) == 0);
                assert(f.opaque_size == 0 || memcmp(f.opaque, frame + sizeof(h), f.opaque_size) == 0);
                peer_frame_done(&f);
                return;
        }
        r = peer_frame_encode(&f.message, f.cluster_id, f.sender_id, f.sender_address, &again, &again_size);
        assert(r == 0);
        assert(again_size == size);
        assert(memcmp(again, frame, size) == 0);

        free(again);
        peer_frame_done(&f);
}

static void feed_stream(const uint8_t *data, size_t size) {
        PeerDecoder *d = NULL;
        size_t off = 0;
        int r;

        r = peer_decoder_new(1 << 20, &d);
        assert(r == 0);

        while (off < size) {
                /* Chunk sizes 1..64 taken from the stream itself. */
                size_t n = MIN((size_t) (data[off] & 63) + 1, size - off);

                r = peer_decoder_feed(d, data + off, n);
                if (r < 0)
                        break;
                off += n;

                for (;;) {
                        PeerFrame f = {};

                        r = peer_decoder_next(d, &f);
                        if (r <= 0)
                                break;
                        peer_frame_done(&f);
                }
                if (r < 0)
                        break;
        }

        peer_decoder_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint8_t *frame;

        if (size > 1024 * 1024)
                return 0;

        check_roundtrip(data, size);
        feed_stream(data, size);

        if (size < 1)
                return 0;

        /* A made-up valid header, type from the first byte, body = the rest. */
        frame = malloc(PEER_FRAME_HEADER_SIZE + size - 1);
        assert(frame);
        memset(frame, 0, PEER_FRAME_HEADER_SIZE);
        frame[0] = 0x65, frame[1] = 0x32, frame[2] = 0x72, frame[3] = 0x66;
        frame[4] = PEER_FRAME_VERSION;
        frame[5] = RAFT_IO_APPEND_ENTRIES + data[0] % 6;
        frame[8] = (size - 1) >> 24, frame[9] = (size - 1) >> 16, frame[10] = (size - 1) >> 8;
        frame[11] = size - 1;
        frame[19] = 7;  /* sender 7 */
        frame[27] = 9;  /* cluster 9 */
        memcpy(frame + PEER_FRAME_HEADER_SIZE, data + 1, size - 1);

        check_roundtrip(frame, PEER_FRAME_HEADER_SIZE + size - 1);
        feed_stream(frame, PEER_FRAME_HEADER_SIZE + size - 1);

        free(frame);
        return 0;
}
