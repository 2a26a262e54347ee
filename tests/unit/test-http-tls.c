/* SPDX-License-Identifier: Apache-2.0 */
/* test-http-tls.c - our HTTP layer (http-server.c) over TLS on a real sd-event loop, driven by a GnuTLS
 * client thread over 127.0.0.1: keep-alive and answers larger than a record and than the socket buffer,
 * client certificates (required; none, a foreign CA's, one not meant for clients are refused), plain HTTP
 * and stalled handshakes closed without disturbing a good client, a fan-out of 100 answers over TLS (the
 * sender thread's path). Certificates are made at test time by
 * openssl in a temporary directory (skipped without openssl). */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <gnutls/gnutls.h>

#include "http-server.h"
#include "macro.h"

#define BIG ((size_t) 300 * 1000)

static char dir[] = "/tmp/test-http-tls-XXXXXX";
static sd_event *ev;
static HttpServer *server;
static HttpService *service;
static uint16_t port;
static int done_fd = -1;
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

static const char *path(const char *name) {
        static char buf[4][256];
        static unsigned i;
        char *p = buf[i++ % 4];

        snprintf(p, 256, "%s/%s", dir, name);
        return p;
}

/* --- the client thread ----------------------------------------------------------------------------- */

typedef void (*ClientFunc)(void);
static ClientFunc client_func;

static int client_connect(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        return fd;
}

typedef struct Tls {
        int fd;
        gnutls_session_t s;
        gnutls_certificate_credentials_t cred;
} Tls;

/* A TLS client (cert: NULL or a name of the test's certificates); returns the handshake's result. */
static int tls_open(Tls *t, const char *cert) {
        char crt[64], key[64];
        int r;

        t->fd = client_connect();
        assert_int_equal(gnutls_certificate_allocate_credentials(&t->cred), 0);
        assert_true(gnutls_certificate_set_x509_trust_file(t->cred, path("ca.crt"), GNUTLS_X509_FMT_PEM) > 0);
        if (cert) {
                snprintf(crt, sizeof crt, "%s.crt", cert);
                snprintf(key, sizeof key, "%s.key", cert);
                assert_int_equal(gnutls_certificate_set_x509_key_file(t->cred, path(crt), path(key), GNUTLS_X509_FMT_PEM), 0);
        }
        assert_int_equal(gnutls_init(&t->s, GNUTLS_CLIENT), 0);
        assert_int_equal(gnutls_set_default_priority(t->s), 0);
        assert_int_equal(gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, t->cred), 0);
        gnutls_session_set_verify_cert(t->s, NULL, 0);
        gnutls_transport_set_int(t->s, t->fd);
        gnutls_handshake_set_timeout(t->s, 5000);
        do
                r = gnutls_handshake(t->s);
        while (r < 0 && !gnutls_error_is_fatal(r));
        return r;
}

static void tls_close(Tls *t) {
        gnutls_deinit(t->s);
        gnutls_certificate_free_credentials(t->cred);
        (void) close(t->fd);
}

static void tls_send(Tls *t, const char *s) {
        assert_int_equal(gnutls_record_send(t->s, s, strlen(s)), (ssize_t) strlen(s));
}

/* Reads one answer with a Content-Length into buf; returns the body's length, or -1 if the connection
 * failed or closed first. */
static ssize_t tls_answer(Tls *t, char *buf, size_t size) {
        size_t len = 0;

        for (;;) {
                const char *e;
                ssize_t k;

                buf[len] = 0;
                e = strstr(buf, "\r\n\r\n");
                if (e) {
                        const char *cl = strstr(buf, "Content-Length: ");
                        size_t head = (size_t) (e + 4 - buf), n;

                        assert_non_null(cl);
                        n = strtoul(cl + 16, NULL, 10);
                        if (len >= head + n)
                                return (ssize_t) n;
                }
                if (len + 1 >= size)
                        return -1;
                k = gnutls_record_recv(t->s, buf + len, size - 1 - len);
                if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
                        continue;
                if (k <= 0)
                        return -1;
                len += (size_t) k;
        }
}

static void *client_main(void *arg) {
        uint64_t one = 1;

        client_func();
        (void) write(done_fd, &one, sizeof one);
        return NULL;
}

static int on_client_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return sd_event_exit(ev, 0);
}

static void run_client(ClientFunc f) {
        sd_event_source *s = NULL;
        pthread_t t;
        uint64_t v;

        client_func = f;
        assert_int_equal(sd_event_add_io(ev, &s, done_fd, EPOLLIN, on_client_done, NULL), 0);
        assert_int_equal(pthread_create(&t, NULL, client_main, NULL), 0);
        assert_int_equal(sd_event_loop(ev), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        (void) read(done_fd, &v, sizeof v);
        sd_event_source_disable_unref(s);
        for (int i = 0; i < 20; i++)
                (void) sd_event_run(ev, 1000);
}

/* --- fixtures ------------------------------------------------------------------------------------- */

static int make_certs(void **state) {
        char cmd[4096];

        if (system("command -v openssl >/dev/null") != 0) {
                fprintf(stderr, "openssl not installed\n");
                exit(77);
        }
        assert_non_null(mkdtemp(dir));
        snprintf(cmd, sizeof cmd,
                 "exec >/dev/null 2>&1; set -e; cd %s; "
                 "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key -out $1.crt "
                 "  -days 2 -subj /CN=$1 -addext basicConstraints=critical,CA:TRUE "
                 "  -addext keyUsage=critical,keyCertSign,cRLSign; }; "
                 "cert() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key -out $1.csr "
                 "  -subj /CN=$1; "
                 "  printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=%%s\\n"
                 "subjectAltName=IP:127.0.0.1\\n' $3 > $1.ext; "
                 "  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt -days 2 "
                 "  -extfile $1.ext; }; "
                 "ca ca; ca foreign; cert server ca serverAuth; cert client ca clientAuth; "
                 "cert serveronly ca serverAuth; cert intruder foreign clientAuth",
                 dir);
        assert_int_equal(system(cmd), 0);
        big = malloc(BIG);
        assert_non_null(big);
        for (size_t i = 0; i < BIG; i++)
                big[i] = (char) ('a' + i % 26);
        return 0;
}

static int remove_certs(void **state) {
        char cmd[256];

        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        (void) system(cmd);
        free(big);
        return 0;
}

static int setup(void **state) {
        HttpLimits l = { .head_max = 4096, .body_max = 1000, .head_timeout_usec = 500 * USEC_PER_MSEC };
        HttpTlsConfig tls = {
                .cert_file = path("server.crt"),
                .key_file = path("server.key"),
                .trusted_ca_file = path("ca.crt"),
                .client_cert_auth = true,
        };
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof sa;
        int fd;

        assert_int_equal(sd_event_new(&ev), 0);
        assert_int_equal(http_server_new(ev, &server), 0);
        assert_int_equal(http_server_add_service(server, "test", &handler, NULL, &l, &service), 0);
        assert_int_equal(http_service_set_tls(service, &tls), 0);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(listen(fd, 128), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &sl), 0);
        port = ntohs(sa.sin_port);
        assert_int_equal(http_service_add_tls_listener(service, fd), 0);
        done_fd = eventfd(0, EFD_CLOEXEC);
        n_done = 0;
        return 0;
}

static int teardown(void **state) {
        server = http_server_free(server);
        ev = sd_event_unref(ev);
        (void) close(done_fd);
        return 0;
}

/* --- tests ---------------------------------------------------------------------------------------- */

static void c_keepalive(void) {
        static char buf[BIG + 4096];
        Tls t;

        assert_int_equal(tls_open(&t, "client"), 0);
        tls_send(&t, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_answer(&t, buf, sizeof buf), 2);
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, "/a");
        /* larger than a record and than the socket buffer, then pipelined small ones */
        tls_send(&t, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_answer(&t, buf, sizeof buf), (ssize_t) BIG);
        assert_memory_equal(strstr(buf, "\r\n\r\n") + 4, big, BIG);
        tls_send(&t, "GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_answer(&t, buf, sizeof buf), 2);
        tls_close(&t);
}

static void test_keepalive(void **state) {
        run_client(c_keepalive);
        assert_true(n_done >= 3);
}

static void c_refusals(void) {
        static const char *const bad[] = { NULL, "intruder", "serveronly" };
        char buf[4096];
        Tls good, t;
        int stalled, plain;

        assert_int_equal(tls_open(&good, "client"), 0);
        tls_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"); /* in time for the 500 ms head timeout */
        assert_int_equal(tls_answer(&good, buf, sizeof buf), 3);
        /* a connection that never says anything, one cut inside its ClientHello */
        stalled = client_connect();
        assert_int_equal(send(stalled, "\x16\x03\x01\x02\x00\x01", 6, MSG_NOSIGNAL), 6);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int r = tls_open(&t, bad[i]);

                /* TLS 1.3: the server's verdict may come with the first read instead */
                if (r == 0) {
                        tls_send(&t, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_int_equal(tls_answer(&t, buf, sizeof buf), -1);
                }
                tls_close(&t);
                /* the good client is not disturbed */
                tls_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
                assert_int_equal(tls_answer(&good, buf, sizeof buf), 3);
        }

        /* plain HTTP: closed without an answer */
        plain = client_connect();
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
        tls_send(&good, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_int_equal(tls_answer(&good, buf, sizeof buf), 3);
        tls_close(&good);
}

static void test_refusals(void **state) {
        run_client(c_refusals);
        assert_int_equal(http_service_n_connections(service), 0);
}

static void c_fan(void) {
        static Tls t[FAN];
        static char buf[32768];

        for (unsigned i = 0; i < FAN; i++) {
                assert_int_equal(tls_open(&t[i], "client"), 0);
                tls_send(&t[i], "GET /fan HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        for (unsigned i = 0; i < FAN; i++) {
                assert_int_equal(tls_answer(&t[i], buf, sizeof buf), 20000);
                assert_memory_equal(strstr(buf, "\r\n\r\n") + 4, big, 20000);
                tls_close(&t[i]);
        }
}

static void test_fan_out(void **state) {
        n_fan = 0;
        run_client(c_fan);
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
