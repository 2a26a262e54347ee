/* SPDX-License-Identifier: Apache-2.0 */
/* test-http-client.c - the upstream HTTP client (http-client.c) on a real sd-event loop, against a small
 * scripted HTTP/1.1 server in threads over 127.0.0.1: keep-alive reuse, Content-Length, chunked and
 * close-delimited bodies, HEAD, 1xx, pause/resume, cancel mid-body, reset before a response, refused
 * connects, and the retry of a reused connection that died. Every test runs twice: over TCP, and over TLS
 * (https:// upstream; the server threads speak GnuTLS, certificates made with openssl at test time), plus
 * the TLS refusals: a server certificate from a CA we do not trust or for another host, a server that
 * wants a client certificate we do not have or do not present right. */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#include "http-client.h"
#include "http-util.h"
#include "macro.h"
#include "tls-test-util.h"
#include "tls.h"

#define BIG_SIZE ((size_t) 1024 * 1024)

static sd_event *ev;
static HttpClient *client;
static uint16_t port;
static int listen_fd = -1;
static pthread_t server_thread;
static atomic_uint n_accepted;
static atomic_uint n_server_closed;     /* connections the server saw end */

/* TLS: the server's credentials (NULL: plain TCP), whether it requires a client certificate, and what the
 * client presents and trusts */
static gnutls_certificate_credentials_t server_cred;
static bool server_wants_cert;
static const char *client_cert, *client_ca = "ca", *client_host = "127.0.0.1";

typedef struct SConn {
        int fd;
        gnutls_session_t tls;
} SConn;

static ssize_t s_recv(SConn *c, void *p, size_t n) {
        ssize_t k;

        if (!c->tls)
                return recv(c->fd, p, n, 0);
        do
                k = gnutls_record_recv(c->tls, p, n);
        while (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED);
        return k;
}

/* --- the server: one thread per connection, blocking I/O ---------------------------------------- */

static bool write_all(SConn *s, const void *p, size_t n) {
        const char *c = p;

        while (n > 0) {
                ssize_t k = s->tls ? gnutls_record_send(s->tls, c, MIN(n, (size_t) 16384)) : send(s->fd, c, n, MSG_NOSIGNAL);
                if (k <= 0)
                        return false;
                c += k;
                n -= (size_t) k;
        }
        return true;
}

/* Reads one request head (and its Content-Length body); false at EOF. */
static bool read_request(SConn *fd, char *method, size_t msize, char *path, size_t psize, HttpBuf *in) {
        char *end;

        for (;;) {
                char buf[4096];
                ssize_t k;

                if (in->data && (end = strstr(in->data, "\r\n\r\n"))) {
                        size_t head = (size_t) (end + 4 - in->data), body = 0;
                        const char *cl = strcasestr(in->data, "\r\nContent-Length: ");

                        if (cl && cl < end)
                                body = strtoul(cl + 18, NULL, 10);
                        while (in->len < head + body) {
                                k = s_recv(fd, buf, sizeof buf);
                                if (k <= 0)
                                        return false;
                                assert_int_equal(http_buf_append(in, buf, (size_t) k), 0);
                        }
                        assert_int_equal(sscanf(in->data, "%15s %255s", method, path), 2);
                        (void) msize;
                        (void) psize;
                        memmove(in->data, in->data + head + body, in->len - head - body);
                        in->len -= head + body;
                        in->data[in->len] = 0;
                        return true;
                }
                k = s_recv(fd, buf, sizeof buf);
                if (k <= 0)
                        return false;
                assert_int_equal(http_buf_append(in, buf, (size_t) k), 0);
        }
}

static void *serve_conn(void *arg) {
        SConn conn = { .fd = (int) (intptr_t) arg }, *fd = &conn;
        _cleanup_(http_buf_done) HttpBuf in = {};
        unsigned n = 0;
        char method[16], path[256];
        int r;

        if (server_cred) {
                assert_int_equal(gnutls_init(&conn.tls, GNUTLS_SERVER), 0);
                assert_int_equal(gnutls_set_default_priority(conn.tls), 0);
                assert_int_equal(gnutls_credentials_set(conn.tls, GNUTLS_CRD_CERTIFICATE, server_cred), 0);
                if (server_wants_cert) {
                        gnutls_certificate_server_set_request(conn.tls, GNUTLS_CERT_REQUIRE);
                        gnutls_session_set_verify_cert(conn.tls, NULL, 0);
                }
                gnutls_transport_set_int(conn.tls, conn.fd);
                do
                        r = gnutls_handshake(conn.tls);
                while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
                if (r < 0)
                        goto out; /* a refusal test */
        }
        while (read_request(fd, method, sizeof method, path, sizeof path, &in)) {
                n++;
                if (streq(path, "/len")) {
                        static const char a[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nX-Empty:\r\n\r\nhello";
                        if (!write_all(fd, a, strlen(a)))
                                break;
                } else if (streq(path, "/lenbye")) {
                        static const char a[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye";
                        (void) write_all(fd, a, strlen(a));
                        usleep(20000);
                        break; /* then ends the idle keep-alive connection */
                } else if (streq(path, "/head")) {
                        static const char a[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                        if (!write_all(fd, a, strlen(a)))
                                break;
                } else if (streq(path, "/chunked")) {
                        static const char a[] = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                "3\r\nhel\r\n";
                        static const char b[] = "2\r\nlo\r\n0\r\n\r\n";
                        if (!write_all(fd, a, strlen(a)))
                                break;
                        usleep(20000);
                        if (!write_all(fd, b, strlen(b)))
                                break;
                } else if (streq(path, "/close")) {
                        static const char a[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, until EOF";
                        (void) write_all(fd, a, strlen(a));
                        break;
                } else if (streq(path, "/interim")) {
                        static const char a[] = "HTTP/1.1 100 Continue\r\n\r\n"
                                                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if (!write_all(fd, a, strlen(a)))
                                break;
                } else if (streq(path, "/echo")) {
                        char a[256];
                        snprintf(a, sizeof a, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(method), method);
                        if (!write_all(fd, a, strlen(a)))
                                break;
                } else if (streq(path, "/big")) {
                        static char chunk[16384];
                        char a[128];
                        bool ok = true;

                        memset(chunk, 'x', sizeof chunk);
                        snprintf(a, sizeof a, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", BIG_SIZE);
                        ok = write_all(fd, a, strlen(a));
                        for (size_t off = 0; ok && off < BIG_SIZE; off += sizeof chunk)
                                ok = write_all(fd, chunk, sizeof chunk);
                        if (!ok)
                                break;
                } else if (streq(path, "/stale") && n > 1) {
                        break; /* a keep-alive connection that died: closed without an answer */
                } else if (streq(path, "/stale")) {
                        static const char a[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
                        if (!write_all(fd, a, strlen(a)))
                                break;
                } else if (streq(path, "/hang")) {
                        usleep(600000); /* past the read timeout of test_read_timeout */
                        break;
                } else if (streq(path, "/reset")) {
                        struct linger l = { .l_onoff = 1, .l_linger = 0 };
                        (void) setsockopt(fd->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
                        break;
                } else if (streq(path, "/bad")) {
                        static const char a[] = "HTTP/1.1 abc\r\n\r\n";
                        (void) write_all(fd, a, strlen(a));
                        break;
                } else
                        break;
        }
out:
        /* no close_notify: a dead server as over TCP */
        if (conn.tls)
                gnutls_deinit(conn.tls);
        (void) close(conn.fd);
        atomic_fetch_add(&n_server_closed, 1);
        return NULL;
}

static void *serve(void *arg) {
        for (;;) {
                pthread_t t;
                int fd = accept(listen_fd, NULL, NULL);

                if (fd < 0)
                        return NULL;
                atomic_fetch_add(&n_accepted, 1);
                assert_int_equal(pthread_create(&t, NULL, serve_conn, (void *) (intptr_t) fd), 0);
                pthread_detach(t);
        }
}

/* --- the client side ------------------------------------------------------------------------------ */

typedef struct Result {
        HttpClientRequest *q;
        unsigned status;
        int64_t content_length;
        HttpBuf headers;        /* "name=value\n" */
        HttpBuf body;
        unsigned n_pieces, n_pieces_paused;
        bool head_seen, finished;
        int error;
        /* behaviour */
        bool pause_first;       /* pause in the first body piece */
        bool cancel_first;      /* cancel in the first body piece */
        bool cancel_in_head;
} Result;

static void on_head(HttpClientRequest *q, unsigned status, const HttpClientHeader *h, size_t n, int64_t cl,
                    void *userdata) {
        Result *res = userdata;

        assert_false(res->head_seen);
        res->head_seen = true;
        res->status = status;
        res->content_length = cl;
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(strlen(h[i].name), h[i].name_len);
                assert_int_equal(strlen(h[i].value), h[i].value_len);
                assert_int_equal(http_buf_printf(&res->headers, "%s=%s\n", h[i].name, h[i].value), 0);
        }
        if (res->cancel_in_head) {
                http_client_request_cancel(q);
                res->q = NULL;
        }
}

static void on_body(HttpClientRequest *q, const void *data, size_t n, void *userdata) {
        Result *res = userdata;

        assert_false(res->finished);
        assert_non_null(res->q);
        if (http_client_request_is_paused(q))
                res->n_pieces_paused++;
        res->n_pieces++;
        assert_int_equal(http_buf_append(&res->body, data, n), 0);
        if (res->pause_first && res->n_pieces == 1)
                http_client_request_pause(q);
        if (res->cancel_first && res->n_pieces == 1) {
                http_client_request_cancel(q);
                res->q = NULL;
        }
}

static void on_done(HttpClientRequest *q, int error, void *userdata) {
        Result *res = userdata;

        assert_false(res->finished);
        assert_ptr_equal(res->q, q);
        res->finished = true;
        res->error = error;
        res->q = NULL;
}

static const HttpClientOps ops = { .head = on_head, .body = on_body, .done = on_done };

static void result_done(Result *res) {
        http_buf_done(&res->headers);
        http_buf_done(&res->body);
}

static uint64_t now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void run_until(bool *flag, unsigned timeout_ms) {
        uint64_t end = now_ms() + timeout_ms;

        while (!*flag && now_ms() < end)
                assert_true(sd_event_run(ev, 10 * 1000) >= 0);
        assert_true(*flag);
}

static void run_for(unsigned ms) {
        uint64_t end = now_ms() + ms;

        while (now_ms() < end)
                assert_true(sd_event_run(ev, 5 * 1000) >= 0);
}

static HttpUpstream *upstream(void) {
        char url[64];
        HttpUpstream *u;

        snprintf(url, sizeof url, "%s://%s:%u", server_cred ? "https" : "http", client_host, port);
        assert_int_equal(http_client_upstream(client, url, &u), 0);
        return u;
}

static void start(HttpUpstream *u, const char *method, const char *path, Result *res) {
        HttpClientSpec s = {
                .method = method,
                .target = path,
                .target_len = strlen(path),
                .head = streq(method, "HEAD"),
        };

        assert_int_equal(http_client_request_start(u, &s, &ops, res, &res->q), 0);
}

static void get(HttpUpstream *u, const char *method, const char *path, Result *res) {
        start(u, method, path, res);
        run_until(&res->finished, 5000);
}

/* A client with the TLS settings of the test (they matter only for https:// upstreams). */
static void client_make(const HttpClientOptions *o) {
        gnutls_certificate_credentials_t cred;
        TlsInfo info = {
                .cert_file = client_cert ? tls_test_file(client_cert, "crt") : NULL,
                .key_file = client_cert ? tls_test_file(client_cert, "key") : NULL,
                .trusted_ca_file = tls_test_file(client_ca, "crt"),
        };

        assert_int_equal(http_client_new(ev, o, &client), 0);
        if (server_cred) {
                assert_int_equal(tls_client_credentials_new(&info, &cred), 0);
                http_client_set_tls(client, cred);
        }
}

static int setup(void **state) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;
        HttpClientOptions o = { .connect_timeout_usec = 1000000 };

        assert_int_equal(sd_event_new(&ev), 0);
        client_make(&o);
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(listen_fd >= 0);
        assert_int_equal(bind(listen_fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(listen(listen_fd, 64), 0);
        assert_int_equal(getsockname(listen_fd, (struct sockaddr *) &sa, &len), 0);
        port = ntohs(sa.sin_port);
        atomic_store(&n_accepted, 0);
        atomic_store(&n_server_closed, 0);
        assert_int_equal(pthread_create(&server_thread, NULL, serve, NULL), 0);
        return 0;
}

static int teardown(void **state) {
        client = http_client_free(client);
        (void) shutdown(listen_fd, SHUT_RDWR);
        pthread_join(server_thread, NULL);
        (void) close(listen_fd);
        listen_fd = -1;
        ev = sd_event_unref(ev);
        /* connection threads still running hold no reference to server_cred once the client is gone and
         * they saw the end: wait for them before the credentials go */
        for (unsigned i = 0; i < 500 && atomic_load(&n_server_closed) < atomic_load(&n_accepted); i++)
                usleep(2000);
        if (server_cred)
                gnutls_certificate_free_credentials(server_cred);
        server_cred = NULL;
        server_wants_cert = false;
        client_cert = NULL;
        client_ca = "ca";
        client_host = "127.0.0.1";
        return 0;
}

/* The same server over TLS (server certificate for 127.0.0.1 from "ca"). */
static int setup_tls(void **state) {
        assert_int_equal(gnutls_certificate_allocate_credentials(&server_cred), 0);
        assert_int_equal(gnutls_certificate_set_x509_key_file(server_cred, tls_test_file("server", "crt"),
                                                              tls_test_file("server", "key"), GNUTLS_X509_FMT_PEM), 0);
        assert_true(gnutls_certificate_set_x509_trust_file(server_cred, tls_test_file("ca", "crt"), GNUTLS_X509_FMT_PEM) > 0);
        return setup(state);
}

static int make_certs(void **state) {
        tls_test_make_certs("test-http-client", "ca ca; ca foreign; cert server ca serverAuth; "
                            "cert client ca clientAuth; cert intruder foreign clientAuth");
        return 0;
}

static int remove_certs(void **state) {
        tls_test_remove_certs();
        return 0;
}

static void test_length_and_keepalive(void **state) {
        HttpUpstream *u = upstream();

        for (unsigned i = 0; i < 3; i++) {
                Result res = {};

                get(u, "GET", "/len", &res);
                assert_int_equal(res.error, 0);
                assert_int_equal(res.status, 200);
                assert_int_equal(res.content_length, 5);
                assert_string_equal(res.body.data, "hello");
                assert_string_equal(res.headers.data, "Content-Length=5\nX-A=b\nX-Empty=\n");
                result_done(&res);
                assert_int_equal(http_upstream_n_idle(u), 1);
        }
        /* one connection for all three */
        assert_int_equal(atomic_load(&n_accepted), 1);
        assert_int_equal(http_upstream_n_connections(u), 1);
}

static void test_chunked(void **state) {
        HttpUpstream *u = upstream();
        Result res = {};

        get(u, "GET", "/chunked", &res);
        assert_int_equal(res.error, 0);
        assert_int_equal(res.status, 201);
        assert_int_equal(res.content_length, -1);
        assert_string_equal(res.body.data, "hello");
        assert_true(res.n_pieces >= 2);
        assert_int_equal(http_upstream_n_idle(u), 1);
        result_done(&res);
}

static void test_close_delimited(void **state) {
        HttpUpstream *u = upstream();
        Result res = {};

        get(u, "GET", "/close", &res);
        assert_int_equal(res.error, 0);
        assert_string_equal(res.body.data, "hello, until EOF");
        /* not for the pool */
        assert_int_equal(http_upstream_n_idle(u), 0);
        assert_int_equal(http_upstream_n_connections(u), 0);
        result_done(&res);
}

static void test_head_and_interim(void **state) {
        HttpUpstream *u = upstream();
        Result res = {}, res2 = {}, res3 = {};

        get(u, "HEAD", "/head", &res);
        assert_int_equal(res.error, 0);
        assert_int_equal(res.content_length, 5);
        assert_int_equal(res.body.len, 0);
        assert_int_equal(http_upstream_n_idle(u), 1);

        /* the connection is still in sync: the next answer is read right */
        get(u, "GET", "/interim", &res2);
        assert_int_equal(res2.error, 0);
        assert_int_equal(res2.status, 200);
        assert_string_equal(res2.body.data, "ok");

        get(u, "PUT", "/echo", &res3);
        assert_string_equal(res3.body.data, "PUT");
        assert_int_equal(atomic_load(&n_accepted), 1);
        result_done(&res);
        result_done(&res2);
        result_done(&res3);
}

static void test_pause_resume(void **state) {
        HttpUpstream *u = upstream();
        Result res = { .pause_first = true };
        unsigned pieces;

        start(u, "GET", "/big", &res);
        while (res.n_pieces == 0)
                assert_true(sd_event_run(ev, 1000 * 1000) >= 0);
        assert_true(http_client_request_is_paused(res.q));
        pieces = res.n_pieces;
        /* paused: nothing is delivered, however long */
        run_for(100);
        assert_int_equal(res.n_pieces, pieces);
        assert_false(res.finished);
        http_client_request_resume(res.q);
        run_until(&res.finished, 5000);
        assert_int_equal(res.error, 0);
        assert_int_equal(res.body.len, BIG_SIZE);
        assert_int_equal(res.n_pieces_paused, 0);
        assert_int_equal(http_upstream_n_idle(u), 1);
        result_done(&res);
}

static void test_cancel_mid_body(void **state) {
        HttpUpstream *u = upstream();
        Result res = { .cancel_first = true }, res2 = { .cancel_in_head = true };

        start(u, "GET", "/big", &res);
        while (res.n_pieces == 0)
                assert_true(sd_event_run(ev, 1000 * 1000) >= 0);
        run_for(50);
        assert_int_equal(res.n_pieces, 1);
        assert_false(res.finished);
        /* the unfinished connection is closed, not pooled */
        assert_int_equal(http_upstream_n_connections(u), 0);

        start(u, "GET", "/len", &res2);
        while (!res2.head_seen)
                assert_true(sd_event_run(ev, 1000 * 1000) >= 0);
        run_for(50);
        assert_false(res2.finished);
        assert_int_equal(res2.n_pieces, 0);
        assert_int_equal(http_upstream_n_connections(u), 0);

        /* and a cancel before anything happened */
        {
                Result res3 = {};

                start(u, "GET", "/len", &res3);
                http_client_request_cancel(res3.q);
                run_for(50);
                assert_false(res3.head_seen);
                assert_false(res3.finished);
                result_done(&res3);
        }
        result_done(&res);
        result_done(&res2);
}

static void test_reset_and_refused(void **state) {
        HttpUpstream *u = upstream(), *dead;
        Result res = {}, res2 = {}, res3 = {};
        int fd;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;
        char url[64];

        /* reset before any response byte, on a fresh connection: an error, no retry */
        get(u, "GET", "/reset", &res);
        assert_false(res.head_seen);
        assert_true(res.error < 0);
        assert_int_equal(atomic_load(&n_accepted), 1);

        /* a malformed response */
        get(u, "GET", "/bad", &res3);
        assert_false(res3.head_seen);
        assert_int_equal(res3.error, -EPROTO);

        /* a port nobody listens on */
        fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof sa), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        snprintf(url, sizeof url, "http://127.0.0.1:%u/", ntohs(sa.sin_port));
        assert_int_equal(http_client_upstream(client, url, &dead), 0);
        get(dead, "GET", "/len", &res2);
        assert_false(res2.head_seen);
        assert_int_equal(res2.error, -ECONNREFUSED);
        (void) close(fd);

        assert_int_equal(http_client_upstream(client, "ftp://127.0.0.1:1", &dead), -EPROTONOSUPPORT);
        /* https:// is ours too (TLS: tests/integration/test_proxy_tls.py) */
        assert_int_equal(http_client_upstream(client, "https://127.0.0.1:1", &dead), 0);
        result_done(&res);
        result_done(&res2);
        result_done(&res3);
}

static void test_stale_retry(void **state) {
        HttpUpstream *u = upstream();
        Result res = {}, res2 = {};

        get(u, "GET", "/len", &res);
        assert_int_equal(res.error, 0);
        assert_int_equal(http_upstream_n_idle(u), 1);

        /* the pooled connection dies on reuse before any response byte: sent again on a new one */
        get(u, "GET", "/stale", &res2);
        assert_int_equal(res2.error, 0);
        assert_string_equal(res2.body.data, "fresh");
        assert_int_equal(atomic_load(&n_accepted), 2);
        result_done(&res);
        result_done(&res2);
}

static void test_idle_closed_by_upstream(void **state) {
        HttpUpstream *u = upstream();
        Result res = {}, res2 = {};

        get(u, "GET", "/lenbye", &res);
        assert_string_equal(res.body.data, "bye");
        assert_int_equal(http_upstream_n_idle(u), 1);
        /* the server ends its side of the idle connection: the pool notices without a request */
        run_for(100);
        assert_int_equal(http_upstream_n_idle(u), 0);
        assert_int_equal(http_upstream_n_connections(u), 0);
        get(u, "GET", "/len", &res2);
        assert_string_equal(res2.body.data, "hello");
        assert_int_equal(atomic_load(&n_accepted), 2);
        result_done(&res);
        result_done(&res2);
}

static void test_many_concurrent(void **state) {
        HttpUpstream *u = upstream();
        Result res[32] = {};

        for (unsigned i = 0; i < ELEMENTSOF(res); i++)
                start(u, "GET", i % 2 ? "/len" : "/chunked", &res[i]);
        for (unsigned i = 0; i < ELEMENTSOF(res); i++) {
                run_until(&res[i].finished, 5000);
                assert_int_equal(res[i].error, 0);
                assert_string_equal(res[i].body.data, "hello");
        }
        assert_int_equal(http_upstream_n_idle(u), ELEMENTSOF(res));
        /* and again: all on pooled connections */
        for (unsigned i = 0; i < ELEMENTSOF(res); i++) {
                result_done(&res[i]);
                res[i] = (Result) {};
                start(u, "GET", "/len", &res[i]);
        }
        for (unsigned i = 0; i < ELEMENTSOF(res); i++)
                run_until(&res[i].finished, 5000);
        assert_int_equal(atomic_load(&n_accepted), ELEMENTSOF(res));
        for (unsigned i = 0; i < ELEMENTSOF(res); i++)
                result_done(&res[i]);
}

static void test_read_timeout(void **state) {
        HttpClientOptions o = { .read_timeout_usec = 200000 };
        HttpUpstream *u;
        Result res = {}, res2 = {};
        uint64_t t0;

        /* a client of its own, with a read timeout */
        client = http_client_free(client);
        client_make(&o);
        u = upstream();

        t0 = now_ms();
        get(u, "GET", "/hang", &res);
        assert_int_equal(res.error, -ETIMEDOUT);
        assert_false(res.head_seen);
        assert_true(now_ms() - t0 >= 190 && now_ms() - t0 < 550);
        assert_int_equal(http_upstream_n_connections(u), 0);

        /* a paused response does not time out */
        res2.pause_first = true;
        start(u, "GET", "/big", &res2);
        while (res2.n_pieces == 0)
                assert_true(sd_event_run(ev, 1000 * 1000) >= 0);
        run_for(400);
        assert_false(res2.finished);
        http_client_request_resume(res2.q);
        run_until(&res2.finished, 5000);
        assert_int_equal(res2.error, 0);
        assert_int_equal(res2.body.len, BIG_SIZE);
        result_done(&res);
        result_done(&res2);
}

/* --- TLS only ------------------------------------------------------------------------------------- */

static void remake_client(void) {
        HttpClientOptions o = { .connect_timeout_usec = 1000000 };

        client = http_client_free(client);
        client_make(&o);
}

static void test_tls_server_refused(void **state) {
        Result res = {}, res2 = {}, res3 = {};

        /* a server certificate from a CA we do not trust */
        client_ca = "foreign";
        remake_client();
        get(upstream(), "GET", "/len", &res);
        assert_false(res.head_seen);
        assert_int_equal(res.error, -EKEYREJECTED);

        /* for another host: the certificate names 127.0.0.1, we asked localhost */
        client_ca = "ca";
        client_host = "localhost";
        remake_client();
        get(upstream(), "GET", "/len", &res2);
        assert_false(res2.head_seen);
        assert_int_equal(res2.error, -EKEYREJECTED);

        /* and right: served */
        client_host = "127.0.0.1";
        remake_client();
        get(upstream(), "GET", "/len", &res3);
        assert_int_equal(res3.error, 0);
        assert_string_equal(res3.body.data, "hello");
        result_done(&res);
        result_done(&res2);
        result_done(&res3);
}

static void test_tls_client_certificate(void **state) {
        Result res = {}, res2 = {}, res3 = {}, res4 = {};
        HttpUpstream *u;

        server_wants_cert = true;

        /* none, or one from a foreign CA: the server ends the connection; an error before any response
         * (over TLS 1.3 our handshake is done before the server looks: its alert comes on the first read),
         * and no retry on a fresh connection */
        remake_client();
        get(upstream(), "GET", "/len", &res);
        assert_false(res.head_seen);
        assert_true(res.error < 0);
        client_cert = "intruder";
        remake_client();
        get(upstream(), "GET", "/len", &res2);
        assert_false(res2.head_seen);
        assert_true(res2.error < 0);
        assert_int_equal(atomic_load(&n_accepted), 2);

        /* ours: served, on one kept-alive connection */
        client_cert = "client";
        remake_client();
        u = upstream();
        get(u, "GET", "/len", &res3);
        assert_int_equal(res3.error, 0);
        get(u, "PUT", "/echo", &res4);
        assert_string_equal(res4.body.data, "PUT");
        assert_int_equal(atomic_load(&n_accepted), 3);
        assert_int_equal(http_upstream_n_idle(u), 1);
        result_done(&res);
        result_done(&res2);
        result_done(&res3);
        result_done(&res4);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_length_and_keepalive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chunked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_close_delimited, setup, teardown),
                cmocka_unit_test_setup_teardown(test_head_and_interim, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pause_resume, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_mid_body, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reset_and_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stale_retry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_idle_closed_by_upstream, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_concurrent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_timeout, setup, teardown),

                /* the same over TLS */
                cmocka_unit_test_setup_teardown(test_length_and_keepalive, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_chunked, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_close_delimited, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_head_and_interim, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_pause_resume, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_mid_body, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_reset_and_refused, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_stale_retry, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_idle_closed_by_upstream, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_many_concurrent, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_read_timeout, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_tls_server_refused, setup_tls, teardown),
                cmocka_unit_test_setup_teardown(test_tls_client_certificate, setup_tls, teardown),
        };

        return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
