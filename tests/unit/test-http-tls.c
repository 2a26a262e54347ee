/* SPDX-License-Identifier: Apache-2.0 */
/* test-http-tls.c - our HTTP layer (http-server.c) over TLS on a real sd-event loop, driven by a GnuTLS
 * client thread over 127.0.0.1: keep-alive and answers larger than a record and than the socket buffer,
 * client certificates (required; none, a foreign CA's, one not meant for clients are refused), plain HTTP
 * and stalled handshakes closed without disturbing a good client, a fan-out of 100 answers over TLS (the
 * sender thread's path). Certificates are made at test time by
 * openssl in a temporary directory (skipped without openssl). */

#include <errno.h>
#include <poll.h>
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
#include <gnutls/gnutls.h>

#include "http-server.h"
#include "macro.h"
#include "test-util.h"
#include "tls-test-util.h"

#define BIG ((size_t) 300 * 1000)

static sd_event *ev;
static HttpServer *server;
static HttpService *service;
static uint16_t port;
static unsigned n_done;
static char *big;
#define FAN 100
static HttpRequest *fan[FAN];
static unsigned n_fan;

static HttpBodyMode h_begin(HttpRequest *r) {
        return HTTP_BODY_READ;
}

static void h_handle(HttpRequest *r) {
        if (streq(r->uri, "/fan")) {
                /* the last one answers them all at once, as a watch event does: a batch for two threads
                 * (the layer's sender thread writes half of the TLS sessions) */
                fan[n_fan++] = r;
                if (n_fan == FAN)
                        for (unsigned i = 0; i < FAN; i++)
                                http_reply(fan[i], 200, "text/plain", big, 20000);
                return;
        }
        if (streq(r->uri, "/big")) {
                http_reply(r, 200, "text/plain", big, BIG);
                return;
        }
        http_reply(r, 200, "text/plain", r->uri, r->uri_len);
}

static void h_done(HttpRequest *r) {
        n_done++;
}

static const HttpHandler handler = {
        .begin = h_begin,
        .handle = h_handle,
        .done = h_done,
};

/* --- fixtures ------------------------------------------------------------------------------------- */

static int make_certs(void **state) {
        tls_test_make_certs("test-http-tls", "ca ca; ca foreign; cert server ca serverAuth; "
                            "cert client ca clientAuth; cert serveronly ca serverAuth; "
                            "cert intruder foreign clientAuth");
        big = malloc(BIG);
        assert_non_null(big);
        for (size_t i = 0; i < BIG; i++)
                big[i] = (char) ('a' + i % 26);
        return 0;
}

static int remove_certs(void **state) {
        tls_test_remove_certs();
        free(big);
        return 0;
}

static int setup(void **state) {
        HttpLimits l = { .head_max = 4096, .body_max = 1000, .head_timeout_usec = 500 * USEC_PER_MSEC };
        HttpTlsConfig tls = {
                .cert_file = tls_test_file("server", "crt"),
                .key_file = tls_test_file("server", "key"),
                .trusted_ca_file = tls_test_file("ca", "crt"),
                .client_cert_auth = true,
        };

        assert_int_equal(sd_event_new(&ev), 0);
        assert_int_equal(http_server_new(ev, &server), 0);
        assert_int_equal(http_server_add_service(server, "test", &handler, NULL, &l, &service), 0);
        assert_int_equal(http_service_set_tls(service, &tls), 0);
        port = 0;
        assert_int_equal(http_service_add_tls_listener(service, test_listen(&port)), 0);
        n_done = 0;
        return 0;
}

static int teardown(void **state) {
        server = http_server_free(server);
        ev = sd_event_unref(ev);
        return 0;
}

/* --- tests ---------------------------------------------------------------------------------------- */

static void c_keepalive(void) {
        static char buf[BIG + 4096];
        TlsClient t;

        assert_int_equal(tls_client_open(&t, port, "client"), 0);
        tls_client_send(&t, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_client_answer(&t, buf, sizeof buf), 2);
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "/a");
        /* larger than a record and than the socket buffer, then pipelined small ones */
        tls_client_send(&t, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_client_answer(&t, buf, sizeof buf), (ssize_t) BIG);
        assert_memory_equal(strstr(buf, "\r\n\r\n") + 4, big, BIG);
        tls_client_send(&t, "GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_client_answer(&t, buf, sizeof buf), 2);
        tls_client_close(&t);
}

static void test_keepalive(void **state) {
        test_run_client(ev, c_keepalive);
        assert_true(n_done >= 3);
}

static void c_refusals(void) {
        static const char *const bad[] = { NULL, "intruder", "serveronly" };
        char buf[4096];
        TlsClient good, t;
        int stalled, plain;

        assert_int_equal(tls_client_open(&good, port, "client"), 0);
        tls_client_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"); /* in time for the 500 ms head timeout */
        assert_int_equal(tls_client_answer(&good, buf, sizeof buf), 3);
        /* a connection that never says anything, one cut inside its ClientHello */
        stalled = test_connect(port);
        assert_int_equal(send(stalled, "\x16\x03\x01\x02\x00\x01", 6, MSG_NOSIGNAL), 6);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = tls_client_open(&t, port, bad[i]);

                /* TLS 1.3: the server's verdict may come with the first read instead */
                if (r == 0) {
                        tls_client_send(&t, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_int_equal(tls_client_answer(&t, buf, sizeof buf), -1);
                }
                tls_client_close(&t);
                /* the good client is not disturbed */
                tls_client_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
                assert_int_equal(tls_client_answer(&good, buf, sizeof buf), 3);
        }

        /* plain HTTP: closed without an answer */
        plain = test_connect(port);
        assert_int_equal(send(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, MSG_NOSIGNAL), 27);
        {
                struct pollfd p = { .fd = plain, .events = POLLIN };
                ssize_t k;

                assert_int_equal(poll(&p, 1, 3000), 1);
                k = recv(plain, buf, sizeof buf, 0);
                assert_true(k <= 0 || memcmp(buf, "HTTP/", 5) != 0);
        }
        (void) close(plain);

        /* the stalled handshake is closed by the head timeout (500 ms) */
        {
                struct pollfd p = { .fd = stalled, .events = POLLIN };

                assert_int_equal(poll(&p, 1, 3000), 1);
                assert_true(recv(stalled, buf, sizeof buf, 0) <= 0);
        }
        (void) close(stalled);
        tls_client_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_client_answer(&good, buf, sizeof buf), 3);
        tls_client_close(&good);
}

static void test_refusals(void **state) {
        test_run_client(ev, c_refusals);
        assert_int_equal(http_service_n_connections(service), 0);
}

static void c_fan(void) {
        static TlsClient t[FAN];
        static char buf[32768];

        for (unsigned i = 0; i < FAN; i++) {
                assert_int_equal(tls_client_open(&t[i], port, "client"), 0);
                tls_client_send(&t[i], "GET /fan HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        for (unsigned i = 0; i < FAN; i++) {
                assert_int_equal(tls_client_answer(&t[i], buf, sizeof buf), 20000);
                assert_memory_equal(strstr(buf, "\r\n\r\n") + 4, big, 20000);
                tls_client_close(&t[i]);
        }
}

static void test_fan_out(void **state) {
        n_fan = 0;
        test_run_client(ev, c_fan);
        assert_int_equal(n_done, FAN);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fan_out, setup, teardown),
        };

        return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
