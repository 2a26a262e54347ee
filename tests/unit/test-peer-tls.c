/* SPDX-License-Identifier: Apache-2.0 */
/* test-peer-tls.c - raft streams over TLS: transports in one process whose inbound side is our HTTP server
 * with a TLS listener requiring client certificates (as the daemon's peer service), handing upgraded
 * streams with their GnuTLS session to peer_transport_accept(); outbound streams to https URLs with
 * peer_transport_set_tls(). Certificates are made at test time with openssl (skipped without it). */

#include <arpa/inet.h>
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

#include "http-server.h"
#include "log.h"
#include "peer.h"
#include "test-util.h"
#include "tls-test-util.h"
#include "tls.h"

#define CLUSTER UINT64_C(0x5eed5eed5eed5eed)
#define BIG ((size_t) 3 * 1024 * 1024)

static sd_event *event;
static uint8_t *big;

typedef struct Node {
        PeerTransport *t;
        HttpServer *http;
        HttpService *service;
        uint64_t id;
        char url[64];
        unsigned n_votes, n_opaque, n_big;
        uint64_t last_term;
} Node;

typedef struct Upgrade {
        Node *node;
        char from[32], cluster[32], version[32];
} Upgrade;

/* --- the member's side ---------------------------------------------------------------------------- */

static void on_recv(PeerTransport *t, PeerFrame *f, void *userdata) {
        Node *n = userdata;

        if (f->message.type == RAFT_IO_REQUEST_VOTE) {
                n->n_votes++;
                assert_true(f->message.request_vote.term > n->last_term);   /* in order */
                n->last_term = f->message.request_vote.term;
        } else if (f->message.type == PEER_FRAME_TYPE_OPAQUE) {
                n->n_opaque++;
                if (f->opaque_size == BIG) {
                        assert_memory_equal(f->opaque, big, BIG);
                        n->n_big++;
                }
        }
}

static void on_taken(int fd, gnutls_session_t tls, const void *extra, size_t extra_len, void *userdata) {
        Upgrade *u = userdata;

        if (fd >= 0) {
                assert_non_null(tls);   /* a TLS listener: the session comes with the socket */
                (void) peer_transport_accept(u->node->t, fd, tls, u->from, u->cluster, u->version, NULL, extra,
                                             extra_len, NULL, NULL);
        }
        free(u);
}

static HttpBodyMode h_begin(HttpRequest *r) {
        Node *n = r->userdata;
        const char *from = http_request_header(r, "X-Server-From");
        const char *cluster = http_request_header(r, "X-Etcd-Cluster-ID");
        const char *version = http_request_header(r, "X-Server-Version");
        Upgrade *u;

        if (!streq(r->method, "POST") || !streq(r->uri, "/raft/stream") || !from || !cluster) {
                http_reply(r, 404, "text/plain", "", 0);
                return HTTP_BODY_DISCARD;
        }
        if (peer_transport_check(n->t, from, cluster, version, NULL) != 101) {
                http_reply(r, 412, "text/plain", "", 0);
                return HTTP_BODY_DISCARD;
        }
        u = calloc(1, sizeof(Upgrade));
        assert_non_null(u);
        u->node = n;
        snprintf(u->from, sizeof u->from, "%s", from);
        snprintf(u->cluster, sizeof u->cluster, "%s", cluster);
        snprintf(u->version, sizeof u->version, "%s", strempty(version));
        http_response_header(r, "Upgrade", "etcd2-raft/1");
        http_upgrade(r, 101, on_taken, u);
        return HTTP_BODY_DISCARD;
}

static void h_handle(HttpRequest *r) {
}

static const HttpHandler handler = { .begin = h_begin, .handle = h_handle };

/* A member: its peer service over TLS with client certificates (cert `cert`, trusting `ca`), its
 * outgoing streams with the same files. */
static void node_start(Node *n, uint64_t id, const char *cert, const char *ca) {
        HttpLimits l = { .head_max = 65536, .body_max = 1000, .head_timeout_usec = 5 * USEC_PER_SEC,
                         .idle_timeout_usec = 30 * USEC_PER_SEC };
        uint16_t port = 0;

        n->id = id;
        assert_int_equal(http_server_new(event, &n->http), 0);
        assert_int_equal(http_server_add_service(n->http, "peer", &handler, n, &l, &n->service), 0);
        assert_int_equal(http_service_set_tls(n->service, &(HttpTlsConfig) {
                .cert_file = tls_test_file(cert, "crt"), .key_file = tls_test_file(cert, "key"),
                .trusted_ca_file = tls_test_file(ca, "crt"), .client_cert_auth = true,
        }), 0);
        assert_int_equal(http_service_add_tls_listener(n->service, test_listen(&port)), 0);
        snprintf(n->url, sizeof n->url, "https://127.0.0.1:%u", port);

        assert_int_equal(peer_transport_new(event, id, CLUSTER, n->url, &n->t), 0);
        peer_transport_set_handlers(n->t, on_recv, NULL, NULL, n);
        assert_int_equal(peer_transport_set_tls(n->t, &(TlsInfo) {
                .cert_file = tls_test_file(cert, "crt"), .key_file = tls_test_file(cert, "key"),
                .trusted_ca_file = tls_test_file(ca, "crt"),
        }), 0);
}

static void node_stop(Node *n) {
        /* as the daemon: streams handed over end before the HTTP server */
        peer_transport_close_accepted(n->t);
        n->http = http_server_free(n->http);
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
static bool big_reached(void *userdata) {
        return ((Node *) userdata)->n_big >= want;
}

/* --- tests ---------------------------------------------------------------------------------------- */

static void test_exchange(void **state) {
        Node a = {}, b = {};
        PeerStats st;

        node_start(&a, 1, "server", "ca");
        node_start(&b, 2, "server", "ca");

        /* many small frames at once: gathered into records */
        for (unsigned i = 1; i <= 2000; i++)
                send_vote(&a, &b, i);
        want = 2000;
        test_run_until(event, votes_reached, &b, 10 * USEC_PER_SEC);
        assert_int_equal(b.last_term, 2000);

        /* frames far beyond a record and the socket buffer, mixed with small ones: the writes block
         * (GnuTLS holds a record) and resume */
        for (unsigned i = 0; i < 3; i++) {
                assert_int_equal(peer_transport_send_opaque(a.t, b.id, NULL, big, BIG, 0), 0);
                send_vote(&a, &b, 3000 + i);
        }
        want = 3;
        test_run_until(event, big_reached, &b, 30 * USEC_PER_SEC);
        want = 2003;
        test_run_until(event, votes_reached, &b, 5 * USEC_PER_SEC);
        assert_int_equal(peer_transport_stats(a.t, b.id, &st), 0);
        assert_true(st.connected);
        assert_int_equal(st.n_dropped, 0);
        assert_int_equal(st.n_lost, 0);
        assert_int_equal(peer_transport_n_inbound(b.t), 1);

        /* and the other way */
        send_vote(&b, &a, 5);
        want = 1;
        test_run_until(event, votes_reached, &a, 5 * USEC_PER_SEC);
        assert_int_equal(peer_transport_n_inbound(a.t), 1);

        node_stop(&a);
        node_stop(&b);
}

/* A member whose certificate another CA signed: its streams are refused (the handshake fails), and so
 * are ours to it (its certificate does not verify); nothing is delivered either way, it is retried. */
static void test_foreign_certificate(void **state) {
        Node a = {}, s = {};
        PeerStats st;

        node_start(&a, 1, "server", "ca");
        node_start(&s, 3, "stranger", "ca");
        for (unsigned i = 1; i <= 10; i++) {
                send_vote(&s, &a, i);
                send_vote(&a, &s, i);
        }
        test_run_for(event, 1500 * USEC_PER_MSEC);
        assert_int_equal(a.n_votes, 0);
        assert_int_equal(s.n_votes, 0);
        assert_int_equal(peer_transport_n_inbound(a.t), 0);
        assert_int_equal(peer_transport_n_inbound(s.t), 0);
        assert_int_equal(peer_transport_stats(s.t, a.id, &st), 0);
        assert_false(st.connected);
        assert_true(st.n_lost >= 2);   /* retried with backoff */
        assert_int_equal(peer_transport_stats(a.t, s.id, &st), 0);
        assert_false(st.connected);
        assert_true(st.n_lost >= 2);

        node_stop(&a);
        node_stop(&s);
}

/* An https URL whose member certificate does not match the name we dial: refused (Go checks the IP SAN
 * as well). Our certificates name 127.0.0.1; "localhost" resolves to it but is not in the SANs. */
static void test_name_mismatch(void **state) {
        Node a = {}, b = {};
        PeerStats st;
        char url[64];

        node_start(&a, 1, "server", "ca");
        node_start(&b, 2, "server", "ca");
        snprintf(url, sizeof url, "https://localhost:%s", strrchr(b.url, ':') + 1);
        assert_int_equal(peer_transport_set_address(a.t, b.id, url), 0);
        send_vote(&a, &b, 1);
        test_run_for(event, 800 * USEC_PER_MSEC);
        assert_int_equal(b.n_votes, 0);
        assert_int_equal(peer_transport_stats(a.t, b.id, &st), 0);
        assert_false(st.connected);

        node_stop(&a);
        node_stop(&b);
}

/* A member whose certificate is for TLS clients only: Go refuses it as a server, so do we. */
static void test_server_purpose(void **state) {
        Node a = {}, b = {};
        PeerStats st;

        node_start(&a, 1, "server", "ca");
        node_start(&b, 2, "clientonly", "ca");
        send_vote(&a, &b, 1);
        test_run_for(event, 800 * USEC_PER_MSEC);
        assert_int_equal(b.n_votes, 0);
        assert_int_equal(peer_transport_stats(a.t, b.id, &st), 0);
        assert_false(st.connected);
        assert_true(st.n_lost >= 1);

        node_stop(&a);
        node_stop(&b);
}

static int make_certs(void **state) {
        tls_test_make_certs("test-peer-tls", "ca ca; ca foreign; cert server ca serverAuth,clientAuth; "
                            "cert stranger foreign serverAuth,clientAuth; cert clientonly ca clientAuth");
        big = malloc(BIG);
        assert_non_null(big);
        for (size_t i = 0; i < BIG; i++)
                big[i] = (uint8_t) (i * 7 + i / 4096);
        assert_int_equal(sd_event_new(&event), 0);
        return 0;
}

static int remove_certs(void **state) {
        tls_test_remove_certs();
        free(big);
        event = sd_event_unref(event);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_exchange),
                cmocka_unit_test(test_foreign_certificate),
                cmocka_unit_test(test_name_mismatch),
                cmocka_unit_test(test_server_purpose),
        };

        log_set_max_level(LOG_WARNING);
        return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
