/* SPDX-License-Identifier: Apache-2.0 */
/* peer-codec.c - framed binary encoding of libraft's struct raft_message [no I/O, fuzzed]. */

/*
 * Members stream raft messages to each other over one connection each way; every message is one
 * frame: the fixed 28-byte header of peer-codec.h and a body of unsigned LEB128 varints:
 *
 *   all types:             varint addr_len, addr bytes (sender's raft address, no NUL)
 *   REQUEST_VOTE:          term, candidate_id, last_log_index, last_log_term, u8 flags
 *                          (bit 0 disrupt_leader, bit 1 pre_vote)
 *   REQUEST_VOTE_RESULT:   term, u8 vote_granted (0/1), u8 pre_vote (raft_tribool 0..2)
 *   APPEND_ENTRIES:        term, prev_log_index, prev_log_term, leader_commit, n_entries,
 *                          n x (term, u8 type, len), then the n entry payloads back to back
 *   APPEND_ENTRIES_RESULT: term, rejected, last_log_index
 *   INSTALL_SNAPSHOT:      term, last_index, last_term, conf_index, n_servers,
 *                          n x (id, u8 role, addr_len, addr bytes), data_len, data bytes
 *   TIMEOUT_NOW:           term, last_log_index, last_log_term
 *
 * Entry payloads come after all entry headers so that the decoder knows the total before it
 * allocates, and can put every payload into one raft_malloc'd batch: libraft frees received
 * entries batch-wise (one raft_free per distinct entry->batch, then the array), so each received
 * entry must point into a raft_malloc'd batch.
 *
 * Decoding accepts exactly one encoding per message: overlong varints, unknown flags or types,
 * out-of-range booleans, duplicate servers and trailing bytes are all refused with -EBADMSG, so a
 * fuzzer can check decode(encode(decode(x))) == x. Every count is checked against the bytes that
 * remain before anything is allocated, so memory is bounded by a small multiple of the input.
 */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "peer-codec.h"

#define VARINT_MAX 10

/* Minimal encoded sizes, used to bound counts by the bytes that remain. */
#define ENTRY_HEADER_MIN 3      /* term, type, len */
#define SERVER_MIN 3            /* id, role, addr_len */

/* A decoder buffer larger than this is released whenever it runs empty. */
#define DECODER_KEEP_MAX ((size_t) 1024 * 1024)

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static void put_be16(uint8_t *p, uint16_t v) {
        p[0] = v >> 8;
        p[1] = v;
}

static void put_be32(uint8_t *p, uint32_t v) {
        for (int i = 3; i >= 0; i--, v >>= 8)
                p[i] = v & 0xff;
}

static void put_be64(uint8_t *p, uint64_t v) {
        for (int i = 7; i >= 0; i--, v >>= 8)
                p[i] = v & 0xff;
}

static uint64_t get_be(const uint8_t *p, size_t n) {
        uint64_t v = 0;

        for (size_t i = 0; i < n; i++)
                v = (v << 8) | p[i];
        return v;
}

/* The writer: with buf == NULL it only counts, so that sizing and writing can never disagree. */
typedef struct Writer {
        uint8_t *buf;
        size_t n;
} Writer;

static void w_u8(Writer *w, uint8_t v) {
        if (w->buf)
                w->buf[w->n] = v;
        w->n++;
}

static void w_varint(Writer *w, uint64_t v) {
        while (v >= 0x80) {
                w_u8(w, (uint8_t) (v | 0x80));
                v >>= 7;
        }
        w_u8(w, (uint8_t) v);
}

static void w_bytes(Writer *w, const void *p, size_t n) {
        if (w->buf && n > 0)
                memcpy(w->buf + w->n, p, n);
        w->n += n;
}

static void w_string(Writer *w, const char *s) {
        size_t n = strlen(s);

        w_varint(w, n);
        w_bytes(w, s, n);
}

/* The reader: every accessor fails once the body is exhausted; errors are sticky. */
typedef struct Reader {
        const uint8_t *p;
        size_t left;
        bool bad;
} Reader;

static uint64_t r_varint(Reader *r) {
        uint64_t v = 0;

        for (size_t i = 0; i < VARINT_MAX && i < r->left; i++) {
                uint64_t bits = r->p[i] & 0x7f;

                /* The tenth byte may hold only the top bit of a 64-bit value. */
                if (i == VARINT_MAX - 1 && bits > 1)
                        break;
                v |= bits << (7 * i);
                if (!(r->p[i] & 0x80)) {
                        /* Only the minimal encoding: no trailing zero group. */
                        if (i > 0 && bits == 0)
                                break;
                        r->p += i + 1;
                        r->left -= i + 1;
                        return v;
                }
        }
        r->bad = true;
        r->left = 0;
        return 0;
}

static uint8_t r_u8(Reader *r) {
        uint8_t v;

        if (r->left < 1) {
                r->bad = true;
                return 0;
        }
        v = r->p[0];
        r->p++;
        r->left--;
        return v;
}

static const uint8_t *r_bytes(Reader *r, uint64_t n) {
        const uint8_t *p = r->p;

        if (n > r->left) {
                r->bad = true;
                r->left = 0;
                return NULL;
        }
        r->p += n;
        r->left -= n;
        return p;
}

static bool r_bool(Reader *r) {
        uint8_t v = r_u8(r);

        if (v > 1)
                r->bad = true;
        return v;
}

/* Reads addr_len + bytes; the result points into the input, is not NUL-terminated, and holds no NUL. */
static const char *r_string(Reader *r, size_t *ret_len) {
        uint64_t n = r_varint(r);
        const uint8_t *p;

        if (n > PEER_ADDRESS_MAX) {
                r->bad = true;
                return NULL;
        }
        p = r_bytes(r, n);
        if (!p || memchr(p, 0, n)) {
                r->bad = true;
                return NULL;
        }
        *ret_len = n;
        return (const char *) p;
}

static bool type_valid(unsigned type) {
        return type >= RAFT_IO_APPEND_ENTRIES && type <= RAFT_IO_TIMEOUT_NOW;
}

static bool entry_type_valid(unsigned type) {
        return type >= RAFT_COMMAND && type <= RAFT_CHANGE;
}

static bool role_valid(int role) {
        return role == RAFT_STANDBY || role == RAFT_VOTER || role == RAFT_SPARE;
}

/* Indexed by frame type; a type missing here is refused. Easy to extend: one line per new type. */
static const size_t body_max_table[PEER_FRAME_TYPE_OPAQUE + 1] = {
        [RAFT_IO_APPEND_ENTRIES] = PEER_FRAME_BODY_MAX_DEFAULT,
        [RAFT_IO_APPEND_ENTRIES_RESULT] = PEER_FRAME_SMALL_BODY_MAX,
        [RAFT_IO_REQUEST_VOTE] = PEER_FRAME_SMALL_BODY_MAX,
        [RAFT_IO_REQUEST_VOTE_RESULT] = PEER_FRAME_SMALL_BODY_MAX,
        [RAFT_IO_INSTALL_SNAPSHOT] = PEER_FRAME_BODY_MAX_DEFAULT,
        [RAFT_IO_TIMEOUT_NOW] = PEER_FRAME_SMALL_BODY_MAX,
        [PEER_FRAME_TYPE_OPAQUE] = PEER_FRAME_OPAQUE_BODY_MAX,
};

size_t peer_frame_body_max(uint8_t type) {
        return type < ELEMENTSOF(body_max_table) ? body_max_table[type] : 0;
}

int peer_frame_header_parse(const void *buf, size_t size, PeerFrameHeader *ret) {
        const uint8_t *p = buf;
        PeerFrameHeader h;

        assert(buf || size == 0);
        assert(ret);

        if (size < PEER_FRAME_HEADER_SIZE)
                return -EAGAIN;
        if (get_be(p, 4) != PEER_FRAME_MAGIC)
                return -EBADMSG;

        h = (PeerFrameHeader) {
                .version = p[4],
                .type = p[5],
                .body_size = (uint32_t) get_be(p + 8, 4),
                .sender_id = get_be(p + 12, 8),
                .cluster_id = get_be(p + 20, 8),
        };
        if (h.version != PEER_FRAME_VERSION)
                return -EPROTONOSUPPORT;
        if (get_be(p + 6, 2) != 0 || (!type_valid(h.type) && h.type != PEER_FRAME_TYPE_OPAQUE))
                return -EBADMSG;

        *ret = h;
        return 0;
}

/* Checks what the decoder would refuse, so that we never send a frame the peer drops. */
static int message_validate(const struct raft_message *m, const char *sender_address) {
        if (!type_valid(m->type))
                return -EINVAL;
        if (strlen(sender_address) > PEER_ADDRESS_MAX)
                return -EINVAL;

        switch (m->type) {

        case RAFT_IO_APPEND_ENTRIES: {
                const struct raft_append_entries *a = &m->append_entries;

                if (a->n_entries > 0 && !a->entries)
                        return -EINVAL;
                for (unsigned i = 0; i < a->n_entries; i++)
                        if (!entry_type_valid(a->entries[i].type) ||
                            (a->entries[i].buf.len > 0 && !a->entries[i].buf.base))
                                return -EINVAL;
                break;
        }

        case RAFT_IO_REQUEST_VOTE_RESULT:
                if ((unsigned) m->request_vote_result.pre_vote > raft_tribool_false)
                        return -EINVAL;
                break;

        case RAFT_IO_INSTALL_SNAPSHOT: {
                const struct raft_install_snapshot *s = &m->install_snapshot;

                if (s->conf.n > PEER_SERVERS_MAX || (s->conf.n > 0 && !s->conf.servers))
                        return -EINVAL;
                if (s->data.len > 0 && !s->data.base)
                        return -EINVAL;
                for (unsigned i = 0; i < s->conf.n; i++) {
                        const struct raft_server *srv = &s->conf.servers[i];

                        if (srv->id == 0 || !role_valid(srv->role) || !srv->address ||
                            strlen(srv->address) > PEER_ADDRESS_MAX)
                                return -EINVAL;
                        for (unsigned j = 0; j < i; j++)
                                if (s->conf.servers[j].id == srv->id ||
                                    streq(s->conf.servers[j].address, srv->address))
                                        return -EINVAL;
                }
                break;
        }

        default:
                break;
        }

        return 0;
}

static void body_write(Writer *w, const struct raft_message *m, const char *sender_address) {
        w_string(w, sender_address);

        switch (m->type) {

        case RAFT_IO_REQUEST_VOTE: {
                const struct raft_request_vote *v = &m->request_vote;

                w_varint(w, v->term);
                w_varint(w, v->candidate_id);
                w_varint(w, v->last_log_index);
                w_varint(w, v->last_log_term);
                w_u8(w, (v->disrupt_leader ? 1 : 0) | (v->pre_vote ? 2 : 0));
                break;
        }

        case RAFT_IO_REQUEST_VOTE_RESULT: {
                const struct raft_request_vote_result *v = &m->request_vote_result;

                w_varint(w, v->term);
                w_u8(w, v->vote_granted ? 1 : 0);
                w_u8(w, (uint8_t) v->pre_vote);
                break;
        }

        case RAFT_IO_APPEND_ENTRIES: {
                const struct raft_append_entries *a = &m->append_entries;

                w_varint(w, a->term);
                w_varint(w, a->prev_log_index);
                w_varint(w, a->prev_log_term);
                w_varint(w, a->leader_commit);
                w_varint(w, a->n_entries);
                for (unsigned i = 0; i < a->n_entries; i++) {
                        w_varint(w, a->entries[i].term);
                        w_u8(w, (uint8_t) a->entries[i].type);
                        w_varint(w, a->entries[i].buf.len);
                }
                for (unsigned i = 0; i < a->n_entries; i++)
                        w_bytes(w, a->entries[i].buf.base, a->entries[i].buf.len);
                break;
        }

        case RAFT_IO_APPEND_ENTRIES_RESULT: {
                const struct raft_append_entries_result *a = &m->append_entries_result;

                w_varint(w, a->term);
                w_varint(w, a->rejected);
                w_varint(w, a->last_log_index);
                break;
        }

        case RAFT_IO_INSTALL_SNAPSHOT: {
                const struct raft_install_snapshot *s = &m->install_snapshot;

                w_varint(w, s->term);
                w_varint(w, s->last_index);
                w_varint(w, s->last_term);
                w_varint(w, s->conf_index);
                w_varint(w, s->conf.n);
                for (unsigned i = 0; i < s->conf.n; i++) {
                        w_varint(w, s->conf.servers[i].id);
                        w_u8(w, (uint8_t) s->conf.servers[i].role);
                        w_string(w, s->conf.servers[i].address);
                }
                w_varint(w, s->data.len);
                w_bytes(w, s->data.base, s->data.len);
                break;
        }

        case RAFT_IO_TIMEOUT_NOW: {
                const struct raft_timeout_now *t = &m->timeout_now;

                w_varint(w, t->term);
                w_varint(w, t->last_log_index);
                w_varint(w, t->last_log_term);
                break;
        }

        default:
                assert(false);
        }
}

int peer_frame_size(const struct raft_message *m, const char *sender_address, size_t *ret) {
        Writer w = {};
        int r;

        assert(m);
        assert(ret);

        sender_address = strempty(sender_address);
        r = message_validate(m, sender_address);
        if (r < 0)
                return r;

        body_write(&w, m, sender_address);
        if (w.n > UINT32_MAX)
                return -E2BIG;

        *ret = PEER_FRAME_HEADER_SIZE + w.n;
        return 0;
}

size_t peer_frame_write(const struct raft_message *m, uint64_t cluster_id, uint64_t sender_id,
                        const char *sender_address, void *buf) {
        Writer w = { .buf = (uint8_t *) buf + PEER_FRAME_HEADER_SIZE };
        uint8_t *p = buf;

        assert(m);
        assert(buf);
        assert(type_valid(m->type));

        body_write(&w, m, strempty(sender_address));
        assert(w.n <= UINT32_MAX);

        put_be32(p, PEER_FRAME_MAGIC);
        p[4] = PEER_FRAME_VERSION;
        p[5] = (uint8_t) m->type;
        put_be16(p + 6, 0);
        put_be32(p + 8, (uint32_t) w.n);
        put_be64(p + 12, sender_id);
        put_be64(p + 20, cluster_id);

        return PEER_FRAME_HEADER_SIZE + w.n;
}

int peer_frame_encode(const struct raft_message *m, uint64_t cluster_id, uint64_t sender_id,
                      const char *sender_address, void **ret, size_t *ret_size) {
        _cleanup_(freep) void *buf = NULL;
        size_t n;
        int r;

        assert(ret);
        assert(ret_size);

        r = peer_frame_size(m, sender_address, &n);
        if (r < 0)
                return r;

        buf = malloc(n);
        if (!buf)
                return -ENOMEM;

        n = peer_frame_write(m, cluster_id, sender_id, sender_address, buf);
        *ret = TAKE_PTR(buf);
        *ret_size = n;
        return 0;
}

void peer_frame_write_opaque_header(uint64_t cluster_id, uint64_t sender_id, uint32_t body_size, void *buf) {
        uint8_t *p = buf;

        assert(buf);
        put_be32(p, PEER_FRAME_MAGIC);
        p[4] = PEER_FRAME_VERSION;
        p[5] = PEER_FRAME_TYPE_OPAQUE;
        put_be16(p + 6, 0);
        put_be32(p + 8, body_size);
        put_be64(p + 12, sender_id);
        put_be64(p + 20, cluster_id);
}

static void payload_free(struct raft_message *m) {
        switch (m->type) {

        case RAFT_IO_APPEND_ENTRIES:
                /* All entries share one batch (see the top of this file). */
                if (m->append_entries.entries) {
                        raft_free(m->append_entries.entries[0].batch);
                        raft_free(m->append_entries.entries);
                }
                m->append_entries.entries = NULL;
                m->append_entries.n_entries = 0;
                break;

        case RAFT_IO_INSTALL_SNAPSHOT:
                raft_configuration_close(&m->install_snapshot.conf);
                raft_free(m->install_snapshot.data.base);
                m->install_snapshot.data = (struct raft_buffer) {};
                break;

        default:
                break;
        }
}

void peer_frame_done(PeerFrame *f) {
        if (!f)
                return;

        if (f->owns_payload)
                payload_free(&f->message);
        free(f->opaque);
        free(f->sender_address);
        *f = (PeerFrame) {};
}

static int decode_append_entries(Reader *r, struct raft_append_entries *ret) {
        struct raft_entry *entries = NULL;
        uint8_t *batch = NULL;
        struct raft_append_entries a = {};
        uint64_t n, total = 0;
        Reader scan;

        a.term = r_varint(r);
        a.prev_log_index = r_varint(r);
        a.prev_log_term = r_varint(r);
        a.leader_commit = r_varint(r);
        n = r_varint(r);
        if (r->bad || n > r->left / ENTRY_HEADER_MIN)
                return -EBADMSG;

        /* First pass: validate the entry headers and add up the payload sizes. */
        scan = *r;
        for (uint64_t i = 0; i < n; i++) {
                uint64_t len;

                (void) r_varint(&scan);
                if (!entry_type_valid(r_u8(&scan)))
                        return -EBADMSG;
                len = r_varint(&scan);
                if (scan.bad || len > scan.left)
                        return -EBADMSG;
                total += len;
        }
        if (scan.bad || total != scan.left)
                return -EBADMSG;

        if (n > 0) {
                const uint8_t *data = scan.p;

                entries = raft_calloc(n, sizeof(struct raft_entry));
                /* Never a zero-sized batch: libraft requires entry->batch != NULL. */
                batch = raft_malloc(MAX(total, (uint64_t) 1));
                if (!entries || !batch) {
                        raft_free(entries);
                        raft_free(batch);
                        return -ENOMEM;
                }
                memcpy(batch, data, total);

                /* Second pass: fill in, payloads in order out of the batch. */
                total = 0;
                for (uint64_t i = 0; i < n; i++) {
                        entries[i].term = r_varint(r);
                        entries[i].type = r_u8(r);
                        entries[i].buf.len = r_varint(r);
                        entries[i].buf.base = batch + total;
                        entries[i].batch = batch;
                        total += entries[i].buf.len;
                }
                assert(!r->bad);
        }
        (void) r_bytes(r, r->left);

        a.entries = entries;
        a.n_entries = (unsigned) n;
        *ret = a;
        return 0;
}

static void servers_free(struct raft_server *servers, size_t n) {
        for (size_t i = 0; i < n; i++)
                raft_free(servers[i].address);
        raft_free(servers);
}

static int decode_install_snapshot(Reader *r, struct raft_install_snapshot *ret) {
        struct raft_install_snapshot s = {};
        struct raft_server *servers = NULL;
        const uint8_t *data;
        uint64_t n, len;
        size_t i;
        void *base;

        s.term = r_varint(r);
        s.last_index = r_varint(r);
        s.last_term = r_varint(r);
        s.conf_index = r_varint(r);
        n = r_varint(r);
        if (r->bad || n > PEER_SERVERS_MAX || n > r->left / SERVER_MIN)
                return -EBADMSG;

        if (n > 0) {
                servers = raft_calloc(n, sizeof(struct raft_server));
                if (!servers)
                        return -ENOMEM;
        }

        for (i = 0; i < n; i++) {
                const char *addr;
                size_t addr_len = 0;

                servers[i].id = r_varint(r);
                servers[i].role = r_u8(r);
                addr = r_string(r, &addr_len);
                if (r->bad || servers[i].id == 0 || !role_valid(servers[i].role))
                        goto bad;

                for (size_t j = 0; j < i; j++)
                        if (servers[j].id == servers[i].id ||
                            (strlen(servers[j].address) == addr_len &&
                             memcmp(servers[j].address, addr, addr_len) == 0))
                                goto bad;

                servers[i].address = raft_malloc(addr_len + 1);
                if (!servers[i].address) {
                        servers_free(servers, i);
                        return -ENOMEM;
                }
                memcpy(servers[i].address, addr, addr_len);
                servers[i].address[addr_len] = 0;
        }

        len = r_varint(r);
        if (r->bad || len != r->left)
                goto bad;
        data = r_bytes(r, len);

        base = raft_malloc(MAX(len, (uint64_t) 1));
        if (!base) {
                servers_free(servers, n);
                return -ENOMEM;
        }
        if (len > 0)
                memcpy(base, data, len);

        s.conf = (struct raft_configuration) { .servers = servers, .n = (unsigned) n };
        s.data = (struct raft_buffer) { .base = base, .len = len };
        *ret = s;
        return 0;

bad:
        servers_free(servers, i);
        return -EBADMSG;
}

int peer_frame_decode(const void *buf, size_t size, PeerFrame *ret) {
        PeerFrameHeader h;
        struct raft_message m = {};
        _cleanup_(freep) char *address = NULL;
        const char *addr;
        size_t addr_len = 0;
        Reader rd;
        int r;

        assert(buf || size == 0);
        assert(ret);

        r = peer_frame_header_parse(buf, size, &h);
        if (r == -EAGAIN)
                return -EBADMSG;
        if (r < 0)
                return r;
        if (size - PEER_FRAME_HEADER_SIZE != h.body_size)
                return -EBADMSG;

        if (h.type == PEER_FRAME_TYPE_OPAQUE) {
                _cleanup_(freep) void *body = NULL;

                body = malloc(MAX(h.body_size, (uint32_t) 1));
                address = strdup("");
                if (!body || !address)
                        return -ENOMEM;
                memcpy(body, (const uint8_t *) buf + PEER_FRAME_HEADER_SIZE, h.body_size);
                m.type = PEER_FRAME_TYPE_OPAQUE;
                m.server_id = h.sender_id;
                m.server_address = address;
                *ret = (PeerFrame) {
                        .cluster_id = h.cluster_id,
                        .sender_id = h.sender_id,
                        .sender_address = TAKE_PTR(address),
                        .message = m,
                        .opaque = TAKE_PTR(body),
                        .opaque_size = h.body_size,
                };
                return 0;
        }

        rd = (Reader) { .p = (const uint8_t *) buf + PEER_FRAME_HEADER_SIZE, .left = h.body_size };

        addr = r_string(&rd, &addr_len);
        if (rd.bad)
                return -EBADMSG;

        m.type = h.type;
        switch (h.type) {

        case RAFT_IO_REQUEST_VOTE: {
                uint8_t flags;

                m.request_vote.term = r_varint(&rd);
                m.request_vote.candidate_id = r_varint(&rd);
                m.request_vote.last_log_index = r_varint(&rd);
                m.request_vote.last_log_term = r_varint(&rd);
                flags = r_u8(&rd);
                if (flags & ~3u)
                        return -EBADMSG;
                m.request_vote.disrupt_leader = flags & 1;
                m.request_vote.pre_vote = flags & 2;
                break;
        }

        case RAFT_IO_REQUEST_VOTE_RESULT: {
                uint8_t t;

                m.request_vote_result.term = r_varint(&rd);
                m.request_vote_result.vote_granted = r_bool(&rd);
                t = r_u8(&rd);
                if (t > raft_tribool_false)
                        return -EBADMSG;
                m.request_vote_result.pre_vote = (raft_tribool) t;
                break;
        }

        case RAFT_IO_APPEND_ENTRIES_RESULT:
                m.append_entries_result.term = r_varint(&rd);
                m.append_entries_result.rejected = r_varint(&rd);
                m.append_entries_result.last_log_index = r_varint(&rd);
                break;

        case RAFT_IO_TIMEOUT_NOW:
                m.timeout_now.term = r_varint(&rd);
                m.timeout_now.last_log_index = r_varint(&rd);
                m.timeout_now.last_log_term = r_varint(&rd);
                break;

        case RAFT_IO_APPEND_ENTRIES:
                r = decode_append_entries(&rd, &m.append_entries);
                if (r < 0)
                        return r;
                break;

        case RAFT_IO_INSTALL_SNAPSHOT:
                r = decode_install_snapshot(&rd, &m.install_snapshot);
                if (r < 0)
                        return r;
                break;

        default:
                assert(false);
        }

        /* The variable-size decoders consume everything on success; the fixed ones must end exactly. */
        if (rd.bad || rd.left > 0) {
                assert(h.type != RAFT_IO_APPEND_ENTRIES && h.type != RAFT_IO_INSTALL_SNAPSHOT);
                return -EBADMSG;
        }

        address = strndup(addr ?: "", addr_len);
        if (!address) {
                payload_free(&m);
                return -ENOMEM;
        }

        m.server_id = h.sender_id;
        m.server_address = address;
        *ret = (PeerFrame) {
                .cluster_id = h.cluster_id,
                .sender_id = h.sender_id,
                .sender_address = TAKE_PTR(address),
                .message = m,
                .owns_payload = true,
        };
        return 0;
}

struct PeerDecoder {
        uint8_t *buf;
        size_t allocated;
        size_t start, end;      /* unconsumed bytes are buf[start..end) */
        size_t body_max;
        int error;              /* sticky: a corrupt stream cannot be resynchronized */
};

int peer_decoder_new(size_t body_max, PeerDecoder **ret) {
        PeerDecoder *d;

        assert(ret);

        d = calloc(1, sizeof(PeerDecoder));
        if (!d)
                return -ENOMEM;
        d->body_max = body_max > 0 ? MIN(body_max, (size_t) UINT32_MAX) : PEER_FRAME_BODY_MAX_DEFAULT;
        *ret = d;
        return 0;
}

PeerDecoder *peer_decoder_free(PeerDecoder *d) {
        if (!d)
                return NULL;
        free(d->buf);
        free(d);
        return NULL;
}

/* Makes room for `size` more bytes after d->end. */
static int decoder_reserve(PeerDecoder *d, size_t size) {
        if (d->start == d->end) {
                d->start = d->end = 0;
                /* Do not keep a snapshot-sized buffer around after the snapshot went through. */
                if (d->allocated > DECODER_KEEP_MAX) {
                        d->buf = mfree(d->buf);
                        d->allocated = 0;
                }
        }

        if (d->allocated - d->end < size) {
                size_t used = d->end - d->start;

                /* Move the partial frame to the front first; grow only if that is not enough. */
                if (d->start > 0) {
                        memmove(d->buf, d->buf + d->start, used);
                        d->start = 0;
                        d->end = used;
                }
                if (d->allocated - used < size) {
                        size_t want;
                        uint8_t *b;

                        if (used + size < used)
                                return -ENOMEM;
                        /* Doubling keeps appends amortized O(1) and stays within twice what arrived. */
                        want = MAX(used + size, d->allocated * 2);
                        b = realloc(d->buf, want);
                        if (!b)
                                return -ENOMEM;
                        d->buf = b;
                        d->allocated = want;
                }
        }
        return 0;
}

int peer_decoder_feed(PeerDecoder *d, const void *data, size_t size) {
        int r;

        assert(d);
        assert(data || size == 0);

        if (d->error < 0)
                return d->error;
        if (size == 0)
                return 0;

        r = decoder_reserve(d, size);
        if (r < 0)
                return r;

        memcpy(d->buf + d->end, data, size);
        d->end += size;
        return 0;
}

int peer_decoder_get_space(PeerDecoder *d, size_t min_size, void **ret, size_t *ret_size) {
        int r;

        assert(d);
        assert(min_size > 0);
        assert(ret);
        assert(ret_size);

        if (d->error < 0)
                return d->error;

        r = decoder_reserve(d, min_size);
        if (r < 0)
                return r;

        *ret = d->buf + d->end;
        *ret_size = d->allocated - d->end;
        return 0;
}

void peer_decoder_commit(PeerDecoder *d, size_t n) {
        assert(d);
        assert(n <= d->allocated - d->end);

        d->end += n;
}

int peer_decoder_next(PeerDecoder *d, PeerFrame *ret) {
        PeerFrameHeader h;
        size_t avail, frame_size;
        int r;

        assert(d);
        assert(ret);

        if (d->error < 0)
                return d->error;

        avail = d->end - d->start;
        if (avail < PEER_FRAME_HEADER_SIZE)
                return 0;
        r = peer_frame_header_parse(d->buf + d->start, avail, &h);
        if (r == -EAGAIN)
                return 0;
        if (r < 0)
                return (d->error = r);
        /* Before buffering any of the body: the declared length against the cap of its type. */
        if (h.body_size > d->body_max || h.body_size > peer_frame_body_max(h.type))
                return (d->error = -E2BIG);

        frame_size = PEER_FRAME_HEADER_SIZE + (size_t) h.body_size;
        if (avail < frame_size)
                return 0;

        r = peer_frame_decode(d->buf + d->start, frame_size, ret);
        if (r == -ENOMEM)
                return r;               /* not the peer's fault: the caller may retry */
        if (r < 0)
                return (d->error = r);

        d->start += frame_size;
        return 1;
}

size_t peer_decoder_pending(const PeerDecoder *d) {
        return d ? d->end - d->start : 0;
}
