/* SPDX-License-Identifier: Apache-2.0 */
/* test-peer.c - the peer transport: two (or three) transports in one process on 127.0.0.1. */

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "peer.h"
#include "test-util.h"

#define CLUSTER UINT64_C(0xacccc8912db0cd57)

typedef struct Node {
        PeerTransport *t;
        uint64_t id;
        uint16_t port;
        char url[64];
        unsigned n_votes, n_appends, n_opaque, n_entries;
        uint64_t last_term;
        char last_opaque[64];
        int refused_status;
        int check_answer;        /* what the check callback answers */
        /* AppendEntries as received: prev_log_index, prev_log_term, n_entries, first entry's term */
        uint64_t ae[16][4];
} Node;

static sd_event *event;

static void on_recv(PeerTransport *t, PeerFrame *f, void *userdata) {
        Node *n = userdata;

        switch (f->message.type) {
        case RAFT_IO_REQUEST_VOTE:
                n->n_votes++;
                n->last_term = f->message.request_vote.term;
                break;
        case RAFT_IO_APPEND_ENTRIES:
                if (n->n_appends < ELEMENTSOF(n->ae)) {
                        const struct raft_append_entries *ae = &f->message.append_entries;

                        n->ae[n->n_appends][0] = ae->prev_log_index;
                        n->ae[n->n_appends][1] = ae->prev_log_term;
                        n->ae[n->n_appends][2] = ae->n_entries;
                        n->ae[n->n_appends][3] = ae->n_entries > 0 ? ae->entries[0].term : 0;
                }
                n->n_appends++;
                n->n_entries += f->message.append_entries.n_entries;
                for (unsigned i = 0; i < f->message.append_entries.n_entries; i++)
                        assert_int_equal(f->message.append_entries.entries[i].buf.len, 1000);
                break;
        case PEER_FRAME_TYPE_OPAQUE:
                n->n_opaque++;
                assert_true(f->opaque_size < sizeof(n->last_opaque));
                memcpy(n->last_opaque, f->opaque, f->opaque_size);
                n->last_opaque[f->opaque_size] = 0;
                break;
        default:
                break;
        }
}

static int on_check(PeerTransport *t, uint64_t from, void *userdata) {
        Node *n = userdata;

        return n->check_answer;
}

static void on_refused(PeerTransport *t, uint64_t peer, int status, void *userdata) {
        Node *n = userdata;

        n->refused_status = status;
}

static void node_start(Node *n, uint64_t id, uint64_t cluster, uint16_t port) {
        int fd;

        n->id = id;
        n->port = port;
        fd = test_listen(&n->port);
        snprintf(n->url, sizeof(n->url), "http://127.0.0.1:%u", n->port);
        assert_int_equal(peer_transport_new(event, id, cluster, n->url, &n->t), 0);
        peer_transport_set_handlers(n->t, on_recv, on_check, on_refused, n);
        assert_int_equal(peer_transport_listen(n->t, fd), 0);
}

static void node_stop(Node *n) {
        n->t = peer_transport_free(n->t);
}

static void send_vote(Node *from, Node *to, uint64_t term) {
        struct raft_message m = {
                .type = RAFT_IO_REQUEST_VOTE,
                .server_id = to->id,
                .server_address = to->url,
                .request_vote = { .term = term, .candidate_id = from->id, .last_log_index = 7, .last_log_term = 1 },
        };

        (void) peer_transport_send_raft(from->t, &m);
}

static unsigned want;
static bool votes_reached(void *userdata) {
        return ((Node *) userdata)->n_votes >= want;
}
static bool refused_set(void *userdata) {
        return ((Node *) userdata)->refused_status != 0;
}

static void test_exchange(void **state) {
        Node a = {}, b = {};
        struct raft_entry entries[5];
        static uint8_t payload[5][1000];
        PeerStats st;

        node_start(&a, 1, CLUSTER, 0);
        node_start(&b, 2, CLUSTER, 0);

        /* Many frames in one loop iteration: they are batched on one connection. */
        for (unsigned i = 1; i <= 1000; i++)
                send_vote(&a, &b, i);
        for (unsigned i = 0; i < 5; i++) {
                memset(payload[i], 'a' + i, sizeof(payload[i]));
                entries[i] = (struct raft_entry) { .term = 3, .type = RAFT_COMMAND,
                                                   .buf = { payload[i], sizeof(payload[i]) } };
        }
        {
                struct raft_message m = {
                        .type = RAFT_IO_APPEND_ENTRIES,
                        .server_id = b.id,
                        .server_address = b.url,
                        .append_entries = { .term = 3, .prev_log_index = 1, .prev_log_term = 1, .leader_commit = 1,
                                            .entries = entries, .n_entries = 5 },
                };
                assert_int_equal(peer_transport_send_raft(a.t, &m), 0);
        }
        assert_int_equal(peer_transport_send_opaque(a.t, b.id, NULL, "hello", 5, 0), 0);
        want = 1000;
        test_run_until(event, votes_reached, &b, 5000000);
        test_run_for(event, 100000);
        assert_int_equal(b.n_votes, 1000);
        assert_int_equal(b.last_term, 1000);   /* in order */
        assert_int_equal(b.n_appends, 1);
        assert_int_equal(b.n_entries, 5);
        assert_int_equal(b.n_opaque, 1);
        assert_string_equal(b.last_opaque, "hello");
        assert_int_equal(peer_transport_n_inbound(b.t), 1);
        assert_int_equal(peer_transport_stats(a.t, b.id, &st), 0);
        assert_true(st.connected);
        assert_int_equal(st.n_sent, 1002);
        assert_int_equal(st.n_dropped, 0);

        /* And the other way, on a connection of its own. */
        send_vote(&b, &a, 5);
        want = 1;
        test_run_until(event, votes_reached, &a, 5000000);
        assert_int_equal(peer_transport_n_inbound(a.t), 1);

        /* Unknown opaque destination without an address. */
        assert_int_equal(peer_transport_send_opaque(a.t, 99, NULL, "x", 1, 0), -ENOENT);

        node_stop(&a);
        node_stop(&b);
}

static bool entries_reached(void *userdata) {
        return ((Node *) userdata)->n_entries >= want;
}

/* An AppendEntries over the frame bound goes as several valid ones (libraft 0.15 sends a follower's
 * whole missing tail in one): consecutive entries, each with the prev_log_index/prev_log_term of the
 * entry before its first, and all of them under the receiver's cap. */
static void test_append_split(void **state) {
        Node a = {}, b = {};
        struct raft_entry entries[10];
        static uint8_t payload[10][1000];

        node_start(&a, 1, CLUSTER, 0);
        node_start(&b, 2, CLUSTER, 0);
        /* a cap of 16 KiB: pieces of at most 4 KiB, so three 1000-byte entries each */
        peer_transport_set_frame_max(a.t, 16384);
        peer_transport_set_frame_max(b.t, 16384);
        for (unsigned i = 0; i < 10; i++) {
                memset(payload[i], 'a' + i, sizeof(payload[i]));
                entries[i] = (struct raft_entry) { .term = 4 + i / 4, .type = RAFT_COMMAND,
                                                   .buf = { payload[i], sizeof(payload[i]) } };
        }
        {
                struct raft_message m = {
                        .type = RAFT_IO_APPEND_ENTRIES,
                        .server_id = b.id,
                        .server_address = b.url,
                        .append_entries = { .term = 7, .prev_log_index = 20, .prev_log_term = 3, .leader_commit = 20,
                                            .entries = entries, .n_entries = 10 },
                };
                assert_int_equal(peer_transport_send_raft(a.t, &m), 0);
        }
        want = 10;
        test_run_until(event, entries_reached, &b, 5000000);
        assert_int_equal(b.n_appends, 4);
        for (unsigned k = 0, first = 0; k < 4; k++) {
                assert_int_equal(b.ae[k][0], 20 + first);
                assert_int_equal(b.ae[k][1], first == 0 ? 3 : entries[first - 1].term);
                assert_int_equal(b.ae[k][2], k < 3 ? 3 : 1);
                assert_int_equal(b.ae[k][3], entries[first].term);
                first += (unsigned) b.ae[k][2];
        }
        node_stop(&a);
        node_stop(&b);
}

static void test_reconnect(void **state) {
        Node a = {}, b = {};
        uint16_t port;
        uint64_t t0;

        node_start(&a, 1, CLUSTER, 0);
        node_start(&b, 2, CLUSTER, 0);
        send_vote(&a, &b, 1);
        want = 1;
        test_run_until(event, votes_reached, &b, 5000000);

        /* b goes away; a notices, keeps sending (queued), and reconnects once b is back. */
        port = b.port;
        node_stop(&b);
        for (unsigned i = 0; i < 10; i++) {
                send_vote(&a, &b, 100 + i);
                test_run_for(event, 50000);
        }
        memset(&b, 0, sizeof(b));
        node_start(&b, 2, CLUSTER, port);
        t0 = test_now_usec();
        send_vote(&a, &b, 200);
        test_run_until(event, votes_reached, &b, 5000000);
        /* Backoff is capped at 1 s. */
        assert_true(test_now_usec() - t0 < 1500000);
        test_run_for(event, 200000);
        assert_int_equal(b.last_term, 200);
        node_stop(&a);
        node_stop(&b);
}

static void test_refusals(void **state) {
        Node a = {}, b = {}, c = {};

        node_start(&a, 1, CLUSTER, 0);
        node_start(&b, 2, CLUSTER, 0);
        node_start(&c, 3, CLUSTER + 1, 0);

        /* Another cluster: 412, nothing delivered. */
        send_vote(&c, &b, 1);
        test_run_until(event, refused_set, &c, 5000000);
        assert_int_equal(c.refused_status, 412);
        assert_int_equal(b.n_votes, 0);

        /* A removed member: 410; an unknown one: 404. */
        b.check_answer = 410;
        send_vote(&a, &b, 1);
        test_run_until(event, refused_set, &a, 5000000);
        assert_int_equal(a.refused_status, 410);
        assert_int_equal(b.n_votes, 0);
        b.check_answer = 404;
        a.refused_status = 0;
        test_run_until(event, refused_set, &a, 5000000);     /* the retry */
        assert_int_equal(a.refused_status, 404);

        /* Accepted again once b agrees. */
        b.check_answer = 0;
        want = 1;
        send_vote(&a, &b, 2);
        test_run_until(event, votes_reached, &b, 5000000);

        /* The HTTP server's check: status codes for the upgrade. */
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "2.3.8", NULL), 101);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "2.2.0", "2.2.0"), 101);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd58", NULL, NULL), 412);
        assert_int_equal(peer_transport_check(b.t, "zz", "acccc8912db0cd57", NULL, NULL), 400);
        assert_int_equal(peer_transport_check(b.t, "0", "acccc8912db0cd57", NULL, NULL), 400);
        /* Versions (etcd2's checkVersionCompability): too old, another major, a newer minimum. */
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "2.1.0", NULL), 412);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "3.4.0", NULL), 412);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "2.3.8", "2.4.0"), 412);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "x", NULL), 412);
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", NULL, NULL), 412); /* = 2.0.0 */
        /* Nobody else is us, whatever the member layer says. */
        assert_int_equal(peer_transport_check(b.t, "2", "acccc8912db0cd57", "2.3.8", NULL), 404);
        b.check_answer = 410;
        assert_int_equal(peer_transport_check(b.t, "1", "acccc8912db0cd57", "2.3.8", NULL), 410);

        node_stop(&a);
        node_stop(&b);
        node_stop(&c);
}

static int connect_to(uint16_t port) {
        struct timeval tv = { .tv_sec = 0, .tv_usec = 20000 };
        int fd = test_connect(port);

        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
        return fd;
}

/* Reads until EOF (true) or nothing for `usec` of loop time (false); collects what came. */
static bool read_until_eof(int fd, char *buf, size_t size, uint64_t usec) {
        uint64_t end = test_now_usec() + usec;
        size_t n = 0;

        while (test_now_usec() < end) {
                ssize_t k;

                assert_true(sd_event_run(event, 10000) >= 0);
                k = recv(fd, buf + n, size - 1 - n, MSG_DONTWAIT);
                if (k == 0 || (k < 0 && errno == ECONNRESET)) {
                        buf[n] = 0;
                        return true;
                }
                if (k > 0)
                        n += (size_t) k;
                buf[n] = 0;
        }
        return false;
}

/* Polls the loop until `fd` sees EOF (true) or `usec` passed (false). */
static bool wait_closed(int fd, uint64_t usec) {
        char buf[256];

        return read_until_eof(fd, buf, sizeof(buf), usec);
}

/* One stream per sender: a newer one from the same ID replaces the older; a silent stream ends at the
 * idle timeout; our own listener closes connections beyond its cap at once. */
static void test_streams_replaced_idle_capped(void **state) {
        Node b = {};
        char buf[512];
        const char *req = "POST /raft/stream HTTP/1.1\r\nHost: x\r\nX-Etcd-Cluster-ID: acccc8912db0cd57\r\n"
                          "X-Server-From: 1\r\nX-Server-Version: 2.3.8\r\nConnection: Upgrade\r\n"
                          "Upgrade: etcd2-raft/1\r\n\r\n";
        int fd1, fd2, many[72];
        unsigned n_closed = 0;

        node_start(&b, 2, CLUSTER, 0);

        fd1 = connect_to(b.port);
        assert_true(write(fd1, req, strlen(req)) == (ssize_t) strlen(req));
        assert_false(read_until_eof(fd1, buf, sizeof(buf), 300000));
        assert_non_null(strstr(buf, "101"));
        assert_int_equal(peer_transport_n_inbound(b.t), 1);
        fd2 = connect_to(b.port);
        assert_true(write(fd2, req, strlen(req)) == (ssize_t) strlen(req));
        assert_true(wait_closed(fd1, 2000000));       /* the older one is gone */
        assert_int_equal(peer_transport_n_inbound(b.t), 1);
        assert_true(peer_transport_has_inbound(b.t, 1));

        /* Idle: housekeeping runs every second, so within 2 s of the 300 ms timeout. */
        peer_transport_set_stream_idle_timeout(b.t, 300000);
        assert_true(wait_closed(fd2, 3000000));
        assert_int_equal(peer_transport_n_inbound(b.t), 0);
        close(fd1);
        close(fd2);

        /* More silent connections than the cap (64): the excess is closed at once, the rest at the
         * handshake deadline. */
        for (size_t i = 0; i < ELEMENTSOF(many); i++) {
                many[i] = connect_to(b.port);
                /* accept as we go: a full backlog would stall connect() with the loop not running */
                for (unsigned k = 0; k < 5; k++)
                        (void) sd_event_run(event, 1000);
        }
        for (unsigned k = 0; k < 20; k++)
                (void) sd_event_run(event, 10000);
        for (size_t i = 0; i < ELEMENTSOF(many); i++) {
                char c;
                ssize_t k = recv(many[i], &c, 1, MSG_DONTWAIT);

                if (k == 0 || (k < 0 && errno == ECONNRESET))
                        n_closed++;
        }
        assert_true(n_closed >= ELEMENTSOF(many) - 64);
        assert_true(n_closed < ELEMENTSOF(many));
        for (size_t i = 0; i < ELEMENTSOF(many); i++)
                close(many[i]);
        node_stop(&b);
}

static void test_garbage(void **state) {
        Node a = {}, b = {};
        char buf[1024];
        const char *req = "POST /raft/stream HTTP/1.1\r\nHost: x\r\nX-Etcd-Cluster-ID: acccc8912db0cd57\r\n"
                          "X-Server-From: 1\r\nX-Server-Version: 2.3.8\r\nConnection: Upgrade\r\nUpgrade: etcd2-raft/1\r\n\r\n";
        int fd;

        node_start(&a, 1, CLUSTER, 0);
        node_start(&b, 2, CLUSTER, 0);

        /* Not an upgrade request at all. */
        fd = connect_to(b.port);
        assert_true(write(fd, "GET / HTTP/1.1\r\n\r\n", 18) == 18);
        assert_true(read_until_eof(fd, buf, sizeof(buf), 2000000));
        assert_non_null(strstr(buf, "404"));
        close(fd);

        /* Wrong upgrade token. */
        fd = connect_to(b.port);
        {
                const char *bad = "POST /raft/stream HTTP/1.1\r\nX-Etcd-Cluster-ID: 1\r\nX-Server-From: 1\r\n"
                                  "Upgrade: h2c\r\n\r\n";

                assert_true(write(fd, bad, strlen(bad)) == (ssize_t) strlen(bad));
        }
        assert_true(read_until_eof(fd, buf, sizeof(buf), 2000000));
        assert_non_null(strstr(buf, "400"));
        close(fd);

        /* A valid upgrade followed by garbage: the stream is reset, nothing delivered. */
        fd = connect_to(b.port);
        assert_true(write(fd, req, strlen(req)) == (ssize_t) strlen(req));
        assert_true(write(fd, "this is not a frame, not at all.", 32) == 32);
        assert_true(read_until_eof(fd, buf, sizeof(buf), 2000000));
        assert_non_null(strstr(buf, "101"));
        close(fd);

        /* A frame claiming another sender than the stream's: reset too. */
        fd = connect_to(b.port);
        assert_true(write(fd, req, strlen(req)) == (ssize_t) strlen(req));
        {
                struct raft_message m = { .type = RAFT_IO_REQUEST_VOTE, .request_vote = { .term = 9 } };
                void *frame;
                size_t size;

                assert_int_equal(peer_frame_encode(&m, CLUSTER, 7, "", &frame, &size), 0);
                assert_true(write(fd, frame, size) == (ssize_t) size);
                free(frame);
        }
        assert_true(read_until_eof(fd, buf, sizeof(buf), 2000000));
        close(fd);

        /* A head that never ends is cut off (no crash, no unbounded buffer). */
        fd = connect_to(b.port);
        memset(buf, 'x', sizeof(buf));
        for (unsigned i = 0; i < 5; i++)
                (void) write(fd, buf, sizeof(buf));
        assert_true(read_until_eof(fd, buf, sizeof(buf), 2000000));
        close(fd);

        assert_int_equal(b.n_votes, 0);
        assert_int_equal(peer_transport_n_inbound(b.t), 0);

        /* b still serves a good peer. */
        want = 1;
        send_vote(&a, &b, 3);
        test_run_until(event, votes_reached, &b, 5000000);
        node_stop(&a);
        node_stop(&b);
}

static uint64_t tags[8];
static unsigned n_tags;

static void collect_tag(uint64_t tag, void *userdata) {
        if (n_tags < 8)
                tags[n_tags] = tag;
        n_tags++;
}

static void test_backpressure(void **state) {
        Node a = {};
        Node nobody = { .id = 5 };
        PeerStats st;
        int r, n_dropped = 0;

        node_start(&a, 1, CLUSTER, 0);
        /* A port nobody listens on: everything queues, up to the cap. */
        {
                uint16_t port = 0;
                int fd = test_listen(&port);

                close(fd);
                snprintf(nobody.url, sizeof(nobody.url), "http://127.0.0.1:%u", port);
        }
        peer_transport_set_queue_max(a.t, 4096);
        for (unsigned i = 0; i < 1000; i++) {
                struct raft_message m = {
                        .type = RAFT_IO_REQUEST_VOTE,
                        .server_id = nobody.id,
                        .server_address = nobody.url,
                        .request_vote = { .term = i + 1 },
                };

                r = peer_transport_send_raft(a.t, &m);
                assert_true(r == 0 || r == -ENOBUFS);
                n_dropped += r == -ENOBUFS;
        }
        assert_true(n_dropped > 800);
        test_run_for(event, 300000);
        assert_int_equal(peer_transport_stats(a.t, nobody.id, &st), 0);
        assert_false(st.connected);
        assert_int_equal(st.n_dropped, (uint64_t) n_dropped);

        /* Unsent tagged frames can be taken back (they certainly never arrived). */
        peer_transport_cancel_unsent(a.t, nobody.id, NULL, NULL);
        assert_int_equal(peer_transport_send_opaque(a.t, nobody.id, NULL, "p1", 2, 11), 0);
        assert_int_equal(peer_transport_send_opaque(a.t, nobody.id, NULL, "p2", 2, 12), 0);
        n_tags = 0;
        peer_transport_cancel_unsent(a.t, nobody.id, collect_tag, NULL);
        assert_int_equal(n_tags, 2);
        assert_int_equal(tags[0], 11);
        assert_int_equal(tags[1], 12);
        n_tags = 0;
        peer_transport_cancel_unsent(a.t, nobody.id, collect_tag, NULL);
        assert_int_equal(n_tags, 0);

        /* Dropping the peer frees its queue. */
        peer_transport_drop(a.t, nobody.id);
        assert_int_equal(peer_transport_stats(a.t, nobody.id, &st), -ENOENT);
        node_stop(&a);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_exchange),
                cmocka_unit_test(test_append_split),
                cmocka_unit_test(test_reconnect),
                cmocka_unit_test(test_refusals),
                cmocka_unit_test(test_garbage),
                cmocka_unit_test(test_streams_replaced_idle_capped),
                cmocka_unit_test(test_backpressure),
        };
        int r;

        log_set_max_level(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_ERR);
        assert_int_equal(sd_event_new(&event), 0);
        r = cmocka_run_group_tests(tests, NULL, NULL);
        sd_event_unref(event);
        return r;
}
