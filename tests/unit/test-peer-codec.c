/* SPDX-License-Identifier: Apache-2.0 */
/* test-peer-codec.c - round trips, truncation, garbage and hostile lengths for the peer frame codec. */

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "peer-codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CLUSTER UINT64_C(0xcdf818194e3a8c32)
#define SENDER UINT64_C(0x8e9e05c52164694d)
#define ADDRESS "http://127.0.0.1:2380"

/* A raft heap that counts live allocations, to prove that decoded payloads come from raft_malloc
 * and that peer_frame_done()/libraft-style release leave nothing behind. */
static long raft_live;

static void *heap_malloc(void *data, size_t size) {
        void *p = malloc(size);
        if (p)
                raft_live++;
        return p;
}

static void heap_free(void *data, void *ptr) {
        if (ptr)
                raft_live--;
        free(ptr);
}

static void *heap_calloc(void *data, size_t nmemb, size_t size) {
        void *p = calloc(nmemb, size);
        if (p)
                raft_live++;
        return p;
}

static void *heap_realloc(void *data, void *ptr, size_t size) {
        void *p = realloc(ptr, size);
        if (p && !ptr)
                raft_live++;
        return p;
}

static void *heap_aligned_alloc(void *data, size_t alignment, size_t size) {
        void *p = aligned_alloc(alignment, size);
        if (p)
                raft_live++;
        return p;
}

static void heap_aligned_free(void *data, size_t alignment, void *ptr) {
        heap_free(data, ptr);
}

static struct raft_heap counting_heap = {
        .malloc = heap_malloc,
        .free = heap_free,
        .calloc = heap_calloc,
        .realloc = heap_realloc,
        .aligned_alloc = heap_aligned_alloc,
        .aligned_free = heap_aligned_free,
};

static int heap_setup(void **state) {
        raft_live = 0;
        raft_heap_set(&counting_heap);
        return 0;
}

static int heap_teardown(void **state) {
        raft_heap_set_default();
        assert_int_equal(raft_live, 0);
        return 0;
}

/* Sample messages of every type. */
static struct raft_entry sample_entries[] = {
        { .term = 3, .type = RAFT_COMMAND, .buf = { (char *) "hello", 5 } },
        { .term = 3, .type = RAFT_BARRIER, .buf = { NULL, 0 } },
        { .term = UINT64_MAX, .type = RAFT_CHANGE, .buf = { (char *) "\0\1\2\3", 4 } },
};

static struct raft_server sample_servers[] = {
        { .id = 1, .address = (char *) "http://127.0.0.1:2380", .role = RAFT_VOTER },
        { .id = UINT64_MAX, .address = (char *) "http://127.0.0.1:2381", .role = RAFT_STANDBY },
        { .id = 77, .address = (char *) "", .role = RAFT_SPARE },
};

static size_t sample_messages(struct raft_message *m) {
        size_t n = 0;

        m[n++] = (struct raft_message) {
                .type = RAFT_IO_REQUEST_VOTE,
                .request_vote = { .term = 5, .candidate_id = 2, .last_log_index = 1000,
                                  .last_log_term = 4, .disrupt_leader = true, .pre_vote = false },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_REQUEST_VOTE,
                .request_vote = { .term = 0, .candidate_id = UINT64_MAX, .pre_vote = true },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_REQUEST_VOTE_RESULT,
                .request_vote_result = { .term = 6, .vote_granted = true, .pre_vote = raft_tribool_true },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_REQUEST_VOTE_RESULT,
                .request_vote_result = { .term = 6, .vote_granted = false, .pre_vote = raft_tribool_unknown },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_APPEND_ENTRIES,
                .append_entries = { .term = 7, .prev_log_index = 10, .prev_log_term = 6, .leader_commit = 9 },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_APPEND_ENTRIES,
                .append_entries = { .term = 7, .prev_log_index = 10, .prev_log_term = 6, .leader_commit = 9,
                                    .entries = sample_entries, .n_entries = ELEMENTSOF(sample_entries) },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_APPEND_ENTRIES,
                .append_entries = { .term = 7, .entries = sample_entries + 1, .n_entries = 1 },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_APPEND_ENTRIES_RESULT,
                .append_entries_result = { .term = 8, .rejected = 11, .last_log_index = 12 },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_INSTALL_SNAPSHOT,
                .install_snapshot = { .term = 9, .last_index = 5000, .last_term = 8, .conf_index = 4000,
                                      .conf = { sample_servers, ELEMENTSOF(sample_servers) },
                                      .data = { (char *) "snapshot-bytes", 14 } },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_INSTALL_SNAPSHOT,
                .install_snapshot = { .term = 9 },
        };
        m[n++] = (struct raft_message) {
                .type = RAFT_IO_TIMEOUT_NOW,
                .timeout_now = { .term = 10, .last_log_index = 20, .last_log_term = 10 },
        };
        return n;
}

static void *encode(const struct raft_message *m, size_t *ret_size) {
        void *buf;
        size_t n;

        assert_int_equal(peer_frame_size(m, ADDRESS, &n), 0);
        assert_int_equal(peer_frame_encode(m, CLUSTER, SENDER, ADDRESS, &buf, ret_size), 0);
        assert_int_equal(*ret_size, n);
        return buf;
}

static void assert_message_equal(const struct raft_message *a, const struct raft_message *b) {
        assert_int_equal(a->type, b->type);

        switch (a->type) {
        case RAFT_IO_REQUEST_VOTE:
                assert_int_equal(a->request_vote.term, b->request_vote.term);
                assert_int_equal(a->request_vote.candidate_id, b->request_vote.candidate_id);
                assert_int_equal(a->request_vote.last_log_index, b->request_vote.last_log_index);
                assert_int_equal(a->request_vote.last_log_term, b->request_vote.last_log_term);
                assert_int_equal(a->request_vote.disrupt_leader, b->request_vote.disrupt_leader);
                assert_int_equal(a->request_vote.pre_vote, b->request_vote.pre_vote);
                break;
        case RAFT_IO_REQUEST_VOTE_RESULT:
                assert_int_equal(a->request_vote_result.term, b->request_vote_result.term);
                assert_int_equal(a->request_vote_result.vote_granted, b->request_vote_result.vote_granted);
                assert_int_equal(a->request_vote_result.pre_vote, b->request_vote_result.pre_vote);
                break;
        case RAFT_IO_APPEND_ENTRIES:
                assert_int_equal(a->append_entries.term, b->append_entries.term);
                assert_int_equal(a->append_entries.prev_log_index, b->append_entries.prev_log_index);
                assert_int_equal(a->append_entries.prev_log_term, b->append_entries.prev_log_term);
                assert_int_equal(a->append_entries.leader_commit, b->append_entries.leader_commit);
                assert_int_equal(a->append_entries.n_entries, b->append_entries.n_entries);
                for (unsigned i = 0; i < a->append_entries.n_entries; i++) {
                        const struct raft_entry *x = &a->append_entries.entries[i], *y = &b->append_entries.entries[i];

                        assert_int_equal(x->term, y->term);
                        assert_int_equal(x->type, y->type);
                        assert_int_equal(x->buf.len, y->buf.len);
                        if (x->buf.len > 0)
                                assert_memory_equal(x->buf.base, y->buf.base, x->buf.len);
                }
                break;
        case RAFT_IO_APPEND_ENTRIES_RESULT:
                assert_int_equal(a->append_entries_result.term, b->append_entries_result.term);
                assert_int_equal(a->append_entries_result.rejected, b->append_entries_result.rejected);
                assert_int_equal(a->append_entries_result.last_log_index,
                                 b->append_entries_result.last_log_index);
                break;
        case RAFT_IO_INSTALL_SNAPSHOT: {
                const struct raft_install_snapshot *x = &a->install_snapshot, *y = &b->install_snapshot;

                assert_int_equal(x->term, y->term);
                assert_int_equal(x->last_index, y->last_index);
                assert_int_equal(x->last_term, y->last_term);
                assert_int_equal(x->conf_index, y->conf_index);
                assert_int_equal(x->conf.n, y->conf.n);
                for (unsigned i = 0; i < x->conf.n; i++) {
                        assert_int_equal(x->conf.servers[i].id, y->conf.servers[i].id);
                        assert_int_equal(x->conf.servers[i].role, y->conf.servers[i].role);
                        assert_string_equal(x->conf.servers[i].address, y->conf.servers[i].address);
                }
                assert_int_equal(x->data.len, y->data.len);
                if (x->data.len > 0)
                        assert_memory_equal(x->data.base, y->data.base, x->data.len);
                break;
        }
        case RAFT_IO_TIMEOUT_NOW:
                assert_int_equal(a->timeout_now.term, b->timeout_now.term);
                assert_int_equal(a->timeout_now.last_log_index, b->timeout_now.last_log_index);
                assert_int_equal(a->timeout_now.last_log_term, b->timeout_now.last_log_term);
                break;
        default:
                fail();
        }
}

static void test_roundtrip_all_types(void **state) {
        struct raft_message m[16];
        size_t n = sample_messages(m);

        for (size_t i = 0; i < n; i++) {
                PeerFrameHeader h;
                PeerFrame f = {};
                size_t size;
                _cleanup_(freep) void *buf = encode(&m[i], &size);

                assert_int_equal(peer_frame_header_parse(buf, size, &h), 0);
                assert_int_equal(h.type, m[i].type);
                assert_int_equal(h.sender_id, SENDER);
                assert_int_equal(h.cluster_id, CLUSTER);
                assert_int_equal(h.body_size, size - PEER_FRAME_HEADER_SIZE);

                assert_int_equal(peer_frame_decode(buf, size, &f), 0);
                assert_int_equal(f.cluster_id, CLUSTER);
                assert_int_equal(f.sender_id, SENDER);
                assert_int_equal(f.message.server_id, SENDER);
                assert_string_equal(f.message.server_address, ADDRESS);
                assert_message_equal(&m[i], &f.message);
                peer_frame_done(&f);
                assert_int_equal(raft_live, 0);
                assert_null(f.sender_address);
        }
}

/* What libraft does with a received AppendEntries/InstallSnapshot after peer_frame_hand_over(). */
static void raft_style_release(struct raft_message *m) {
        if (m->type == RAFT_IO_APPEND_ENTRIES) {
                void *batch = NULL;

                for (unsigned i = 0; i < m->append_entries.n_entries; i++) {
                        assert_non_null(m->append_entries.entries[i].batch);
                        if (m->append_entries.entries[i].batch != batch) {
                                batch = m->append_entries.entries[i].batch;
                                raft_free(batch);
                        }
                }
                raft_free(m->append_entries.entries);
        } else if (m->type == RAFT_IO_INSTALL_SNAPSHOT) {
                raft_configuration_close(&m->install_snapshot.conf);
                raft_free(m->install_snapshot.data.base);
        }
}

static void test_ownership_raft_malloc(void **state) {
        struct raft_message m[16];
        size_t n = sample_messages(m);

        for (size_t i = 0; i < n; i++) {
                PeerFrame f = {};
                size_t size;
                _cleanup_(freep) void *buf = encode(&m[i], &size);

                assert_int_equal(peer_frame_decode(buf, size, &f), 0);
                if (m[i].type == RAFT_IO_APPEND_ENTRIES && m[i].append_entries.n_entries > 0) {
                        /* entries array + one batch, every entry pointing into it */
                        assert_int_equal(raft_live, 2);
                        for (unsigned j = 0; j < f.message.append_entries.n_entries; j++) {
                                struct raft_entry *e = &f.message.append_entries.entries[j];

                                assert_ptr_equal(e->batch, f.message.append_entries.entries[0].batch);
                                assert_true((uint8_t *) e->buf.base >= (uint8_t *) e->batch);
                        }
                } else if (m[i].type == RAFT_IO_APPEND_ENTRIES)
                        assert_null(f.message.append_entries.entries);
                else if (m[i].type == RAFT_IO_INSTALL_SNAPSHOT) {
                        /* servers array + each address + data */
                        unsigned k = m[i].install_snapshot.conf.n;

                        assert_int_equal(raft_live, (k > 0 ? 1 + k : 0) + 1);
                        assert_non_null(f.message.install_snapshot.data.base);
                } else
                        assert_int_equal(raft_live, 0);

                raft_style_release(peer_frame_hand_over(&f));
                peer_frame_done(&f);
                assert_int_equal(raft_live, 0);
        }
}

static void test_truncated_every_offset(void **state) {
        struct raft_message m[16];
        size_t n = sample_messages(m);

        for (size_t i = 0; i < n; i++) {
                size_t size;
                _cleanup_(freep) uint8_t *buf = encode(&m[i], &size);
                _cleanup_(freep) uint8_t *longer = malloc(size + 1);

                for (size_t k = 0; k < size; k++) {
                        _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;
                        PeerFrame f = {};

                        assert_int_equal(peer_frame_decode(buf, k, &f), -EBADMSG);
                        assert_null(f.sender_address);

                        assert_int_equal(peer_decoder_new(0, &d), 0);
                        assert_int_equal(peer_decoder_feed(d, buf, k), 0);
                        assert_int_equal(peer_decoder_next(d, &f), 0);
                        assert_int_equal(peer_decoder_pending(d), k);
                        /* ... and the rest completes it. */
                        assert_int_equal(peer_decoder_feed(d, buf + k, size - k), 0);
                        assert_int_equal(peer_decoder_next(d, &f), 1);
                        assert_message_equal(&m[i], &f.message);
                        peer_frame_done(&f);
                        assert_int_equal(peer_decoder_next(d, &f), 0);
                }

                /* A body cut short but with a matching length field: fix up the header each time. */
                for (size_t k = PEER_FRAME_HEADER_SIZE; k < size; k++) {
                        PeerFrame f = {};
                        size_t body = k - PEER_FRAME_HEADER_SIZE;

                        buf[8] = body >> 24, buf[9] = body >> 16, buf[10] = body >> 8, buf[11] = body;
                        assert_int_equal(peer_frame_decode(buf, k, &f), -EBADMSG);
                }

                /* One trailing byte too many. */
                memcpy(longer, buf, size);
                longer[size] = 0;
                {
                        size_t body = size + 1 - PEER_FRAME_HEADER_SIZE;
                        PeerFrame f = {};

                        longer[8] = body >> 24, longer[9] = body >> 16, longer[10] = body >> 8;
                        longer[11] = body;
                        assert_int_equal(peer_frame_decode(longer, size + 1, &f), -EBADMSG);
                }
        }
        assert_int_equal(raft_live, 0);
}

static void test_header_errors(void **state) {
        struct raft_message m = { .type = RAFT_IO_TIMEOUT_NOW, .timeout_now = { .term = 1 } };
        size_t size;
        _cleanup_(freep) uint8_t *buf = encode(&m, &size);
        PeerFrameHeader h;
        PeerFrame f = {};
        uint8_t copy[64];

        assert_true(size <= sizeof(copy));
        assert_int_equal(peer_frame_header_parse(buf, PEER_FRAME_HEADER_SIZE - 1, &h), -EAGAIN);

        memcpy(copy, buf, size);
        copy[0] ^= 1;
        assert_int_equal(peer_frame_decode(copy, size, &f), -EBADMSG);

        memcpy(copy, buf, size);
        copy[4] = PEER_FRAME_VERSION + 1;
        assert_int_equal(peer_frame_decode(copy, size, &f), -EPROTONOSUPPORT);

        memcpy(copy, buf, size);
        copy[7] = 1;    /* flags */
        assert_int_equal(peer_frame_decode(copy, size, &f), -EBADMSG);

        memcpy(copy, buf, size);
        copy[5] = 0;
        assert_int_equal(peer_frame_decode(copy, size, &f), -EBADMSG);
        copy[5] = RAFT_IO_TIMEOUT_NOW + 1;
        assert_int_equal(peer_frame_decode(copy, size, &f), -EBADMSG);

        /* Non-minimal varint for the term: 0x81 0x00 instead of 0x01. */
        {
                uint8_t nm[64];
                size_t body_off = PEER_FRAME_HEADER_SIZE + 1 + strlen(ADDRESS);

                assert_int_equal(buf[body_off], 1);
                memcpy(nm, buf, body_off);
                nm[body_off] = 0x81;
                nm[body_off + 1] = 0x00;
                memcpy(nm + body_off + 2, buf + body_off + 1, size - body_off - 1);
                nm[11]++;
                assert_int_equal(peer_frame_decode(nm, size + 1, &f), -EBADMSG);
        }

        /* A corrupt header makes the stream decoder fail for good. */
        {
                _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;

                memcpy(copy, buf, size);
                copy[1] = 'X';
                assert_int_equal(peer_decoder_new(0, &d), 0);
                assert_int_equal(peer_decoder_feed(d, copy, PEER_FRAME_HEADER_SIZE), 0);
                assert_int_equal(peer_decoder_next(d, &f), -EBADMSG);
                assert_int_equal(peer_decoder_feed(d, buf, size), -EBADMSG);
                assert_int_equal(peer_decoder_next(d, &f), -EBADMSG);
        }
}

static void test_encoder_refuses(void **state) {
        struct raft_entry bad_entry = { .term = 1, .type = 9, .buf = { (char *) "x", 1 } };
        struct raft_server dup[] = {
                { .id = 1, .address = (char *) "a", .role = RAFT_VOTER },
                { .id = 1, .address = (char *) "b", .role = RAFT_VOTER },
        };
        struct raft_server zero[] = { { .id = 0, .address = (char *) "a", .role = RAFT_VOTER } };
        struct raft_server role[] = { { .id = 1, .address = (char *) "a", .role = 3 } };
        struct raft_message m;
        char longaddr[PEER_ADDRESS_MAX + 2];
        size_t n;

        m = (struct raft_message) { .type = 0 };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        m = (struct raft_message) { .type = RAFT_IO_TIMEOUT_NOW + 1 };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        m = (struct raft_message) { .type = RAFT_IO_APPEND_ENTRIES,
                                    .append_entries = { .entries = &bad_entry, .n_entries = 1 } };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        m = (struct raft_message) { .type = RAFT_IO_INSTALL_SNAPSHOT,
                                    .install_snapshot = { .conf = { dup, 2 } } };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        dup[1].id = 2, dup[1].address = (char *) "a";
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        dup[1].address = (char *) "b";
        assert_int_equal(peer_frame_size(&m, NULL, &n), 0);
        m.install_snapshot.conf = (struct raft_configuration) { zero, 1 };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);
        m.install_snapshot.conf = (struct raft_configuration) { role, 1 };
        assert_int_equal(peer_frame_size(&m, NULL, &n), -EINVAL);

        memset(longaddr, 'a', sizeof(longaddr) - 1);
        longaddr[sizeof(longaddr) - 1] = 0;
        m = (struct raft_message) { .type = RAFT_IO_TIMEOUT_NOW };
        assert_int_equal(peer_frame_size(&m, longaddr, &n), -EINVAL);
        longaddr[PEER_ADDRESS_MAX] = 0;
        assert_int_equal(peer_frame_size(&m, longaddr, &n), 0);
        /* A NULL address is sent as "" and arrives as "", not NULL (libraft strcmp()s it). */
        {
                void *buf;
                PeerFrame f = {};

                assert_int_equal(peer_frame_encode(&m, 1, 2, NULL, &buf, &n), 0);
                assert_int_equal(peer_frame_decode(buf, n, &f), 0);
                assert_string_equal(f.message.server_address, "");
                peer_frame_done(&f);
                free(buf);
        }
}

/* Builds a frame around a hand-made body. */
static size_t make_frame(uint8_t *out, uint8_t type, const uint8_t *body, size_t body_size) {
        memset(out, 0, PEER_FRAME_HEADER_SIZE);
        out[0] = 0x65, out[1] = 0x32, out[2] = 0x72, out[3] = 0x66;
        out[4] = PEER_FRAME_VERSION;
        out[5] = type;
        out[8] = body_size >> 24, out[9] = body_size >> 16, out[10] = body_size >> 8, out[11] = body_size;
        if (body_size > 0)
                memcpy(out + PEER_FRAME_HEADER_SIZE, body, body_size);
        return PEER_FRAME_HEADER_SIZE + body_size;
}

static void test_hostile_lengths(void **state) {
        /* addr "", term..leader_commit 0, n_entries = 2^63 (varint), nothing after */
        static const uint8_t ae_many[] = { 0, 1, 1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                                           0x80, 0x01 };
        /* one entry claiming 2^40 bytes of payload */
        static const uint8_t ae_huge_entry[] = { 0, 1, 1, 1, 1, 1, 1, RAFT_COMMAND, 0x80, 0x80, 0x80, 0x80,
                                                 0x80, 0x20, 'x' };
        /* two entries whose lengths add up to more than the rest */
        static const uint8_t ae_sum[] = { 0, 1, 1, 1, 1, 2, 1, RAFT_COMMAND, 2, 1, RAFT_COMMAND, 2, 'a', 'b',
                                          'c' };
        /* snapshot with 2^32 servers, and one with a 2^50 data length */
        static const uint8_t is_servers[] = { 0, 1, 1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 1, 1, 0 };
        static const uint8_t is_data[] = { 0, 1, 1, 1, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
                                           'x' };
        /* sender address of 2^20 bytes */
        static const uint8_t addr[] = { 0x80, 0x80, 0x40, 'a' };
        /* an eleven-byte varint */
        static const uint8_t varint[] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                          0x01, 1, 1 };
        /* a ten-byte varint with more than 64 bits */
        static const uint8_t varint65[] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                                            1, 1 };
        /* address with a NUL inside */
        static const uint8_t nul[] = { 2, 'a', 0, 1, 1, 1 };
        static const struct {
                uint8_t type;
                const uint8_t *body;
                size_t size;
        } cases[] = {
                { RAFT_IO_APPEND_ENTRIES, ae_many, sizeof(ae_many) },
                { RAFT_IO_APPEND_ENTRIES, ae_huge_entry, sizeof(ae_huge_entry) },
                { RAFT_IO_APPEND_ENTRIES, ae_sum, sizeof(ae_sum) },
                { RAFT_IO_INSTALL_SNAPSHOT, is_servers, sizeof(is_servers) },
                { RAFT_IO_INSTALL_SNAPSHOT, is_data, sizeof(is_data) },
                { RAFT_IO_TIMEOUT_NOW, addr, sizeof(addr) },
                { RAFT_IO_TIMEOUT_NOW, varint, sizeof(varint) },
                { RAFT_IO_TIMEOUT_NOW, varint65, sizeof(varint65) },
                { RAFT_IO_TIMEOUT_NOW, nul, sizeof(nul) },
        };
        uint8_t frame[128];

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                PeerFrame f = {};
                size_t n = make_frame(frame, cases[i].type, cases[i].body, cases[i].size);

                assert_int_equal(peer_frame_decode(frame, n, &f), -EBADMSG);
                assert_int_equal(raft_live, 0);
        }

        /* Sanity checks of make_frame(): the largest ten-byte varint and a matching sum do decode. */
        {
                static const uint8_t max[] = { 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                                               1, 1 };
                PeerFrame f = {};
                size_t n = make_frame(frame, RAFT_IO_TIMEOUT_NOW, max, sizeof(max));

                assert_int_equal(peer_frame_decode(frame, n, &f), 0);
                assert_true(f.message.timeout_now.term == UINT64_MAX);
                peer_frame_done(&f);
        }
        {
                static const uint8_t ok[] = { 0, 1, 1, 1, 1, 2, 1, RAFT_COMMAND, 2, 1, RAFT_COMMAND, 1, 'a', 'b',
                                              'c' };
                PeerFrame f = {};
                size_t n = make_frame(frame, RAFT_IO_APPEND_ENTRIES, ok, sizeof(ok));

                assert_int_equal(peer_frame_decode(frame, n, &f), 0);
                assert_int_equal(f.message.append_entries.n_entries, 2);
                assert_memory_equal(f.message.append_entries.entries[1].buf.base, "c", 1);
                peer_frame_done(&f);
        }

        /* A 4 GiB body announced to the stream decoder: refused from the header alone... */
        {
                _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;
                PeerFrame f = {};

                make_frame(frame, RAFT_IO_APPEND_ENTRIES, NULL, 0);
                frame[8] = frame[9] = frame[10] = frame[11] = 0xff;
                assert_int_equal(peer_decoder_new(1 << 20, &d), 0);
                assert_int_equal(peer_decoder_feed(d, frame, PEER_FRAME_HEADER_SIZE), 0);
                assert_int_equal(peer_decoder_next(d, &f), -E2BIG);
        }
        /* ... and an acceptable 400 MB one allocates nothing until the bytes arrive. */
        {
                _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;
                PeerFrame f = {};

                make_frame(frame, RAFT_IO_INSTALL_SNAPSHOT, NULL, 0);
                frame[8] = 400 * 1024 * 1024 >> 24;
                assert_int_equal(peer_decoder_new(0, &d), 0);
                assert_int_equal(peer_decoder_feed(d, frame, PEER_FRAME_HEADER_SIZE), 0);
                assert_int_equal(peer_decoder_next(d, &f), 0);
                assert_int_equal(peer_decoder_pending(d), PEER_FRAME_HEADER_SIZE);
        }
        /* Each type has its own cap, checked from the header: a vote (or a member-layer frame) that
         * announces more than its type can hold is refused before any body byte is buffered, while
         * the same length is fine for an InstallSnapshot (see above). */
        {
                static const struct { uint8_t type; uint32_t size; int expect; } size_cases[] = {
                        { RAFT_IO_REQUEST_VOTE, PEER_FRAME_SMALL_BODY_MAX + 1, -E2BIG },
                        { RAFT_IO_REQUEST_VOTE, PEER_FRAME_SMALL_BODY_MAX, 0 },
                        { RAFT_IO_REQUEST_VOTE_RESULT, 1 << 20, -E2BIG },
                        { RAFT_IO_APPEND_ENTRIES_RESULT, 1 << 20, -E2BIG },
                        { RAFT_IO_TIMEOUT_NOW, 1 << 20, -E2BIG },
                        { PEER_FRAME_TYPE_OPAQUE, PEER_FRAME_OPAQUE_BODY_MAX + 1, -E2BIG },
                        { PEER_FRAME_TYPE_OPAQUE, PEER_FRAME_OPAQUE_BODY_MAX, 0 },
                        { RAFT_IO_APPEND_ENTRIES, PEER_FRAME_BODY_MAX_DEFAULT + 1, -E2BIG },
                        { RAFT_IO_APPEND_ENTRIES, 64 * 1024 * 1024, 0 },
                };

                for (size_t i = 0; i < ELEMENTSOF(size_cases); i++) {
                        _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;
                        PeerFrame f = {};

                        make_frame(frame, size_cases[i].type, NULL, 0);
                        frame[8] = (uint8_t) (size_cases[i].size >> 24);
                        frame[9] = (uint8_t) (size_cases[i].size >> 16);
                        frame[10] = (uint8_t) (size_cases[i].size >> 8);
                        frame[11] = (uint8_t) size_cases[i].size;
                        assert_int_equal(peer_decoder_new(0, &d), 0);
                        assert_int_equal(peer_decoder_feed(d, frame, PEER_FRAME_HEADER_SIZE), 0);
                        assert_int_equal(peer_decoder_next(d, &f), size_cases[i].expect);
                        assert_int_equal(peer_decoder_pending(d), PEER_FRAME_HEADER_SIZE);
                }
                assert_int_equal(peer_frame_body_max(200), 0);
        }
}

static uint64_t xorshift(uint64_t *s) {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        return *s;
}

static uint64_t test_seed(void) {
        const char *e = getenv("PEER_CODEC_SEED");
        uint64_t seed = e ? strtoull(e, NULL, 0) : (uint64_t) time(NULL) * 2654435761u + 1;

        printf("# seed: PEER_CODEC_SEED=%" PRIu64 "\n", seed);
        return seed ?: 1;
}

static void test_random_garbage(void **state) {
        uint64_t s = test_seed();
        struct raft_message m[16];
        size_t n = sample_messages(m);
        uint8_t buf[512];

        /* Pure noise, then valid frames with a few bytes flipped: never a crash, never a leak, and
         * whatever still decodes must re-encode to the same bytes (checked by the fuzz target). */
        for (int iter = 0; iter < 20000; iter++) {
                size_t len = xorshift(&s) % sizeof(buf);

                for (size_t i = 0; i < len; i++)
                        buf[i] = xorshift(&s);
                assert_int_equal(LLVMFuzzerTestOneInput(buf, len), 0);
        }

        for (int iter = 0; iter < 20000; iter++) {
                size_t size;
                const struct raft_message *msg = &m[xorshift(&s) % n];
                _cleanup_(freep) uint8_t *frame = encode(msg, &size);
                int flips = 1 + xorshift(&s) % 3;

                for (int k = 0; k < flips; k++)
                        frame[xorshift(&s) % size] ^= 1 + xorshift(&s) % 255;
                assert_int_equal(LLVMFuzzerTestOneInput(frame, size), 0);
                /* and as a body with a made-up header */
                assert_int_equal(LLVMFuzzerTestOneInput(frame + PEER_FRAME_HEADER_SIZE - 1,
                                                        size - PEER_FRAME_HEADER_SIZE + 1), 0);
        }
        assert_int_equal(raft_live, 0);
}

static void test_stream_random_chunks(void **state) {
        uint64_t s = test_seed();
        struct raft_message m[16];
        size_t n = sample_messages(m), total = 0, off = 0, got = 0;
        _cleanup_(peer_decoder_freep) PeerDecoder *d = NULL;
        _cleanup_(freep) uint8_t *stream = NULL;
        const size_t count = 1000;
        size_t *which = calloc(count, sizeof(size_t));

        assert_non_null(which);
        for (size_t i = 0; i < count; i++) {
                size_t size;

                which[i] = xorshift(&s) % n;
                assert_int_equal(peer_frame_size(&m[which[i]], ADDRESS, &size), 0);
                total += size;
        }
        stream = malloc(total);
        assert_non_null(stream);
        for (size_t i = 0; i < count; i++)
                off += peer_frame_write(&m[which[i]], CLUSTER, SENDER + i, ADDRESS, stream + off);
        assert_int_equal(off, total);

        assert_int_equal(peer_decoder_new(0, &d), 0);
        for (off = 0; off < total; ) {
                size_t chunk = MIN((size_t) (1 + xorshift(&s) % 300), total - off);
                PeerFrame f = {};
                int r;

                /* Alternate between copying in and reading "into" the decoder. */
                if (xorshift(&s) & 1)
                        assert_int_equal(peer_decoder_feed(d, stream + off, chunk), 0);
                else {
                        void *space;
                        size_t avail;

                        assert_int_equal(peer_decoder_get_space(d, chunk, &space, &avail), 0);
                        assert_true(avail >= chunk);
                        memcpy(space, stream + off, chunk);
                        peer_decoder_commit(d, chunk);
                }
                off += chunk;
                while ((r = peer_decoder_next(d, &f)) > 0) {
                        assert_true(got < count);
                        assert_int_equal(f.sender_id, SENDER + got);
                        assert_message_equal(&m[which[got]], &f.message);
                        peer_frame_done(&f);
                        got++;
                }
                assert_int_equal(r, 0);
        }
        assert_int_equal(got, count);
        assert_int_equal(peer_decoder_pending(d), 0);
        free(which);
}

static void test_fuzz_replay(void **state) {
        static const uint8_t empty[1];
        static const uint8_t body_ae[] = { 0, 5, 1, 1, 1, 1, 2, RAFT_COMMAND, 1, 'z' };
        static const uint8_t body_is[] = { 4, 1, 1, 1, 1, 1, 1, 1, 1, 'a', 2, 'h', 'i' };
        static const uint8_t body_rv[] = { 2, 0, 'x', 'y', 1, 2, 3, 4, 3 };
        static const uint8_t header_only[] = { 0x65, 0x32, 0x72, 0x66, 1, 3, 0, 0, 0, 0, 0, 1 };
        struct raft_message m[16];
        size_t n = sample_messages(m);

        assert_int_equal(LLVMFuzzerTestOneInput(empty, 0), 0);
        assert_int_equal(LLVMFuzzerTestOneInput(body_ae, sizeof(body_ae)), 0);
        assert_int_equal(LLVMFuzzerTestOneInput(body_is, sizeof(body_is)), 0);
        assert_int_equal(LLVMFuzzerTestOneInput(body_rv, sizeof(body_rv)), 0);
        assert_int_equal(LLVMFuzzerTestOneInput(header_only, sizeof(header_only)), 0);
        for (size_t i = 0; i < n; i++) {
                size_t size;
                _cleanup_(freep) uint8_t *buf = encode(&m[i], &size);

                assert_int_equal(LLVMFuzzerTestOneInput(buf, size), 0);
        }
        assert_int_equal(raft_live, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_roundtrip_all_types, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_ownership_raft_malloc, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_truncated_every_offset, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_header_errors, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_encoder_refuses, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_hostile_lengths, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_random_garbage, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_stream_random_chunks, heap_setup, heap_teardown),
                cmocka_unit_test_setup_teardown(test_fuzz_replay, heap_setup, heap_teardown),
        };

        return cmocka_run_group_tests_name("peer-codec", tests, NULL, NULL);
}
