/* SPDX-License-Identifier: Apache-2.0 */
/* http-client.c - an HTTP/1.1 client on sd-event over llhttp (HTTP_RESPONSE mode), for the proxy. */

/*
 * Why not libcurl: per proxied GET libcurl cost a quarter of the proxy's CPU (its own allocations, header
 * parsing with sscanf/strlen) plus two poll() calls per request (the dead-connection check on reuse, and
 * a probe after the timeout kick). This client does one sendmsg() per request (head and body) and one
 * recv() per response of ordinary size, with no epoll_ctl() on a reused connection.
 *
 * Connections. Each upstream (scheme, host:port, path of a URL) has a pool of idle keep-alive
 * connections (LIFO: the warmest first). Every socket sits in ONE inner epoll set, which is one io source
 * in sd-event (sd-event dispatches one source per iteration: a source per socket is quadratic with many
 * watches). A socket is registered once, for EPOLLIN|EPOLLRDHUP, and stays so while idle: an idle
 * connection that reports anything (the upstream closed it, or sent junk) is closed then, so a reuse needs
 * no liveness probe. EPOLLOUT is added only while connecting or while a request is partly written; a paused
 * request's socket leaves the set until resumed.
 *
 * Requests. A request goes to an idle connection, else to a new non-blocking connect (the upstream's
 * addresses in turn). Its head and body leave in one sendmsg(). A reused connection that dies before any
 * response byte (EOF, reset, broken pipe) is retried once on a new connection, as libcurl does. The
 * response is parsed by llhttp: 1xx heads are skipped, the final head goes to head(), the body (by
 * Content-Length, chunked, or up to EOF; none for HEAD, 204, 304) to body() piece by piece, and done()
 * ends it. The connection returns to the pool only when the response was complete, keep-alive, and
 * nothing followed it.
 *
 * TLS (https:// upstreams). After the connect a GnuTLS client session (tls_client_session_new(): SNI, the
 * chain and the host checked as Go's crypto/tls does) shakes hands non-blocking in CONN_HANDSHAKE, a step
 * whenever the socket moves in the direction GnuTLS asked for, within CLIENT_TLS_HANDSHAKE_USEC (Go's
 * http.Transport TLSHandshakeTimeout). Then only the two places that touch the socket differ: conn_send()
 * writes one record per call (head and a small body gathered into one record, a large piece sent from
 * where it is; a send that would block is finished by gnutls_record_send(s, NULL, 0), GnuTLS keeping the
 * record), and conn_read() reads until GnuTLS says EAGAIN (a record is at most 16 KiB, and GnuTLS may hold
 * decrypted bytes the socket no longer shows: a short read says nothing, and a resumed connection looks at
 * gnutls_record_check_pending() before waiting for epoll). A server that refuses our certificate after a
 * TLS 1.3 handshake shows up as an alert on the first read: a transport error before any response byte.
 * A reused connection that died is retried once, as over TCP.
 *
 * Re-entrancy. Callbacks run only from the client's own sources (io, timer, defer), with c->dispatching
 * set; a failure found inside http_client_request_start() is queued and reported from the defer source.
 * Connections closed during a dispatch are freed at its end (an epoll batch may still name them). A
 * callback may cancel its own request (q->in_cb: the code around the callback finishes the job).
 */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <llhttp.h>

#include "http-client.h"
#include "http-util.h"
#include "log.h"
#include "macro.h"
#include "tls.h"

#define CLIENT_READ_BUFFER ((size_t) 64 * 1024)
#define CLIENT_DEFAULT_MAX_IDLE 256u
#define CLIENT_REQUEST_POOL_MAX 256u
#define CLIENT_BUFFER_KEEP ((size_t) 64 * 1024)
#define CLIENT_DNS_CACHE_USEC (60 * USEC_PER_SEC)       /* libcurl's default DNS cache timeout */
#define CLIENT_TLS_RECORD ((size_t) 16 * 1024)           /* the largest TLS record payload */
#define CLIENT_TLS_HANDSHAKE_USEC (10 * USEC_PER_SEC)   /* Go's http.Transport TLSHandshakeTimeout */

typedef enum ConnState {
        CONN_CONNECTING,
        CONN_HANDSHAKE,                 /* TLS: connected, the handshake is under way */
        CONN_BUSY,
        CONN_IDLE,
} ConnState;

typedef struct HeaderSpan {
        size_t name_off, name_len, value_off, value_len;
} HeaderSpan;

typedef struct HttpClientConn HttpClientConn;
struct HttpClientConn {
        HttpClient *client;
        HttpUpstream *up;
        HttpClientConn *prev, *next;    /* the upstream's idle list, or the client's active list */
        HttpClientConn *dead_next;      /* closed, to free at the end of the dispatch */
        HttpClientConn *resume_next;
        int fd;
        gnutls_session_t tls;           /* NULL: plain TCP */
        bool tls_again;                 /* a record send would have blocked: finish it before more */
        uint32_t registered;            /* events in the epoll set, 0: not in it */
        ConnState state;
        bool dead;
        bool in_idle_list;
        bool reused;                    /* served a response before the current request */
        bool got_bytes;                 /* response bytes arrived for the current request */
        bool message_done;
        bool stopped;                   /* paused: out of the epoll set */
        bool on_resume_list;
        bool interim;                   /* parsing a 1xx head */
        uint8_t hstate;                 /* see on_header_field() */
        size_t addr_idx;
        uint64_t deadline;              /* CLOCK_MONOTONIC, 0: none */
        HttpClientRequest *req;
        llhttp_t parser;

        HttpBuf hbuf;                   /* header names and values, each NUL-terminated */
        HeaderSpan *hdr;
        size_t n_hdr, hdr_alloc;

        size_t out_off;                 /* bytes of head + body written */
        HttpBuf held;                   /* a body piece that arrived while paused */
        HttpBuf pending;                /* unparsed input left when paused */
};

typedef struct UpstreamAddr {
        struct sockaddr_storage sa;
        socklen_t len;
} UpstreamAddr;

struct HttpUpstream {
        HttpClient *client;
        char *url;                      /* as given, the lookup key */
        char *host;                     /* without brackets */
        char *authority;                /* host:port as in the URL, for Host */
        char *path;
        uint16_t port;
        bool numeric;
        bool tls;                       /* https:// */
        UpstreamAddr *addrs;
        size_t n_addrs;
        uint64_t resolved_usec;
        HttpClientConn *idle;
        unsigned n_idle, n_conns;
};

struct HttpClientRequest {
        HttpClient *client;
        HttpUpstream *up;
        HttpClientConn *conn;
        const HttpClientOps *ops;
        void *userdata;
        HttpClientRequest *next;        /* completion queue, or free list */
        HttpBuf head;
        const void *body;
        size_t body_len;
        int error;
        unsigned in_cb;
        bool head_method;
        bool paused;
        bool cancelled;
        bool head_seen;
        bool retried;
        bool queued;
};

struct HttpClient {
        sd_event *event;
        HttpClientOptions opt;
        int epoll_fd;
        sd_event_source *io, *timer, *defer;
        uint64_t timer_at;              /* UINT64_MAX: off */
        HttpUpstream **ups;
        size_t n_ups;
        HttpClientConn *active;         /* connecting and busy connections */
        HttpClientConn *dead;
        HttpClientConn *resumed;
        HttpClientRequest *completions, *completions_tail;
        HttpClientRequest *free_reqs;
        unsigned n_free_reqs;
        unsigned n_idle;
        unsigned dispatching;
        unsigned starting;              /* inside http_client_request_start(): no callbacks */
        void (*flush)(void *userdata);
        void *flush_userdata;
        llhttp_settings_t settings;
        char *rbuf;
        gnutls_certificate_credentials_t tls_cred;      /* for https:// upstreams, owned */
};

static void conn_io_error(HttpClientConn *conn, int error);
static int req_connect_new(HttpClientRequest *q);

static uint64_t client_now(HttpClient *c) {
        uint64_t t;

        if (sd_event_now(c->event, CLOCK_MONOTONIC, &t) < 0) {
                struct timespec ts;

                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                t = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
        }
        return t;
}

static void client_arm(HttpClient *c, uint64_t deadline) {
        if (deadline == 0 || deadline >= c->timer_at)
                return;
        if (sd_event_source_set_time(c->timer, deadline) < 0 ||
            sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT) < 0) {
                log_warning("http-client: failed to arm the timer, ignoring");
                return;
        }
        c->timer_at = deadline;
}

static void conn_set_deadline(HttpClientConn *conn, uint64_t timeout_usec) {
        HttpClient *c = conn->client;

        conn->deadline = timeout_usec > 0 ? client_now(c) + timeout_usec : 0;
        client_arm(c, conn->deadline);
}

/* --- connections ------------------------------------------------------------------------------ */

static int conn_register(HttpClientConn *conn, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.ptr = conn };

        if (conn->registered == events)
                return 0;
        if (events == 0) {
                (void) epoll_ctl(conn->client->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
                conn->registered = 0;
                return 0;
        }
        if (epoll_ctl(conn->client->epoll_fd, conn->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, conn->fd, &ev) < 0)
                return -errno;
        conn->registered = events;
        return 0;
}

static void active_link(HttpClientConn *conn) {
        HttpClient *c = conn->client;

        conn->prev = NULL;
        conn->next = c->active;
        if (c->active)
                c->active->prev = conn;
        c->active = conn;
}

static void conn_unlink(HttpClientConn *conn) {
        HttpClient *c = conn->client;
        HttpUpstream *up = conn->up;

        if (conn->next)
                conn->next->prev = conn->prev;
        if (conn->prev)
                conn->prev->next = conn->next;
        else if (conn->in_idle_list)
                up->idle = conn->next;
        else if (c->active == conn)
                c->active = conn->next;
        if (conn->in_idle_list) {
                up->n_idle--;
                c->n_idle--;
                conn->in_idle_list = false;
        }
        conn->prev = conn->next = NULL;
}

static void conn_free(HttpClientConn *conn) {
        http_buf_done(&conn->hbuf);
        http_buf_done(&conn->held);
        http_buf_done(&conn->pending);
        free(conn->hdr);
        free(conn);
}

/* Closes the socket; the object is freed once out of the dispatch (client_reap()). */
static void conn_close(HttpClientConn *conn) {
        HttpClient *c = conn->client;

        if (conn->dead)
                return;
        assert(!conn->req || conn->req->conn == conn);
        if (conn->req)
                conn->req->conn = NULL;
        conn->req = NULL;
        conn_unlink(conn);
        if (conn->tls) {
                gnutls_deinit(conn->tls);
                conn->tls = NULL;
        }
        if (conn->fd >= 0) {
                if (conn->registered)
                        (void) epoll_ctl(c->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
                (void) close(conn->fd);
                conn->fd = -1;
        }
        conn->registered = 0;
        conn->up->n_conns--;
        conn->dead = true;
        conn->dead_next = c->dead;
        c->dead = conn;
}

static void client_reap(HttpClient *c) {
        HttpClientConn **p = &c->dead;

        if (c->dispatching > 0)
                return;
        while (*p) {
                HttpClientConn *conn = *p;

                if (conn->on_resume_list) {
                        p = &conn->dead_next;
                        continue;
                }
                *p = conn->dead_next;
                conn_free(conn);
        }
}

/* --- requests --------------------------------------------------------------------------------- */

static void req_free(HttpClientRequest *q) {
        HttpClient *c = q->client;

        assert(!q->conn);
        if (c->n_free_reqs >= CLIENT_REQUEST_POOL_MAX) {
                http_buf_done(&q->head);
                free(q);
                return;
        }
        if (q->head.alloc > CLIENT_BUFFER_KEEP)
                http_buf_done(&q->head);
        q->head.len = 0;
        q->next = c->free_reqs;
        c->free_reqs = q;
        c->n_free_reqs++;
}

static void client_schedule(HttpClient *c) {
        (void) sd_event_source_set_enabled(c->defer, SD_EVENT_ONESHOT);
}

/* The end of a request: done() now if we are in a dispatch, else from the defer source. */
static void req_finish(HttpClientRequest *q, int error) {
        HttpClient *c = q->client;

        assert(!q->conn);
        if (q->cancelled) {
                if (q->in_cb == 0)
                        req_free(q);
                return;
        }
        if (c->dispatching == 0 || c->starting > 0) {
                q->error = error;
                q->queued = true;
                q->next = NULL;
                if (c->completions_tail)
                        c->completions_tail->next = q;
                else
                        c->completions = q;
                c->completions_tail = q;
                client_schedule(c);
                return;
        }
        q->in_cb++;
        q->ops->done(q, error, q->userdata);
        q->in_cb--;
        req_free(q);
}

/* --- sending ---------------------------------------------------------------------------------- */

/* One TLS record of what is left from `off` (head, then body): bytes written or a GnuTLS error. */
static ssize_t conn_tls_send(HttpClientConn *conn, size_t off) {
        HttpClientRequest *q = conn->req;
        char buf[CLIENT_TLS_RECORD];
        size_t h, take;

        if (conn->tls_again)
                /* GnuTLS holds the record it could not send: NULL, 0 sends that one (and returns its length) */
                return gnutls_record_send(conn->tls, NULL, 0);
        if (off >= q->head.len) {
                size_t b = off - q->head.len;

                return gnutls_record_send(conn->tls, (const char *) q->body + b, MIN(q->body_len - b, CLIENT_TLS_RECORD));
        }
        h = q->head.len - off;
        if (h >= CLIENT_TLS_RECORD || q->body_len == 0)
                return gnutls_record_send(conn->tls, q->head.data + off, MIN(h, CLIENT_TLS_RECORD));
        /* head and (the start of) the body in one record: one packet for a small request, as over TCP */
        take = MIN(q->body_len, CLIENT_TLS_RECORD - h);
        memcpy(buf, q->head.data + off, h);
        memcpy(buf + h, q->body, take);
        return gnutls_record_send(conn->tls, buf, h + take);
}

static void conn_send(HttpClientConn *conn) {
        HttpClientRequest *q = conn->req;
        size_t total = q->head.len + q->body_len, off = conn->out_off;
        struct iovec iov[2];
        struct msghdr mh = { .msg_iov = iov };
        ssize_t n;

        while (conn->tls && off < total) {
                n = conn_tls_send(conn, off);
                if (n >= 0) {
                        conn->tls_again = false;
                        off += (size_t) n;
                        continue;
                }
                if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN) {
                        conn->tls_again = true;
                        if (n == GNUTLS_E_AGAIN)
                                break;
                        continue;
                }
                log_debug("http-client: TLS write to %s failed: %s", conn->up->authority, gnutls_strerror((int) n));
                conn_io_error(conn, -ECONNRESET);
                return;
        }
        while (!conn->tls && off < total) {
                mh.msg_iovlen = 0;
                if (off < q->head.len)
                        iov[mh.msg_iovlen++] = (struct iovec) { q->head.data + off, q->head.len - off };
                if (q->body_len > 0) {
                        size_t b = off > q->head.len ? off - q->head.len : 0;
                        iov[mh.msg_iovlen++] = (struct iovec) { (char *) q->body + b, q->body_len - b };
                }
                n = sendmsg(conn->fd, &mh, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        conn_io_error(conn, -errno);
                        return;
                }
                off += (size_t) n;
        }
        conn->out_off = off;
        if (conn_register(conn, EPOLLIN | EPOLLRDHUP | (off < total ? EPOLLOUT : 0)) < 0) {
                conn_io_error(conn, -errno);
                return;
        }
}

static void conn_begin_request(HttpClientConn *conn, HttpClientRequest *q) {
        HttpClient *c = conn->client;

        conn->req = q;
        q->conn = conn;
        conn->got_bytes = conn->message_done = conn->interim = conn->stopped = false;
        conn->hstate = 0;
        conn->n_hdr = 0;
        conn->hbuf.len = 0;
        conn->held.len = conn->pending.len = 0;
        conn->out_off = 0;
        llhttp_init(&conn->parser, HTTP_RESPONSE, &c->settings);
        conn->parser.data = conn;
}

static void conn_connected(HttpClientConn *conn) {
        conn->state = CONN_BUSY;
        conn_set_deadline(conn, conn->client->opt.read_timeout_usec);
        conn_send(conn);
}

/* A failure before the request went out (connect, handshake): the next address is not tried, the
 * request ends. */
static void conn_fail(HttpClientConn *conn, int error) {
        HttpClientRequest *q = conn->req;

        conn_close(conn);
        req_finish(q, error);
}

/* One step of the TLS handshake; done: the request goes out. */
static void conn_handshake(HttpClientConn *conn) {
        int r;

        do
                r = gnutls_handshake(conn->tls);
        while (r == GNUTLS_E_INTERRUPTED);
        if (r == GNUTLS_E_AGAIN) {
                /* the inner epoll set is level-triggered: wait for the direction GnuTLS blocked on only */
                r = conn_register(conn, EPOLLRDHUP | (gnutls_record_get_direction(conn->tls) == 0 ? EPOLLIN : EPOLLOUT));
                if (r < 0)
                        conn_fail(conn, r);
                return;
        }
        if (r < 0) {
                /* a certificate we do not trust, or not TLS at all: as a refused connection (no retry of a
                 * fresh connection), the caller's failover takes the next upstream */
                log_debug("http-client: TLS handshake with %s failed: %s", conn->up->authority, gnutls_strerror(r));
                conn_fail(conn, r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR ? -EKEYREJECTED : -ECONNABORTED);
                return;
        }
        conn_connected(conn);
}

/* The socket is connected: a TLS upstream shakes hands first. */
static void conn_established(HttpClientConn *conn) {
        int r;

        if (!conn->up->tls) {
                conn_connected(conn);
                return;
        }
        r = tls_client_session_new(conn->client->tls_cred, conn->up->host, conn->fd, &conn->tls);
        if (r < 0) {
                conn_fail(conn, r);
                return;
        }
        conn->tls_again = false;
        conn->state = CONN_HANDSHAKE;
        conn_set_deadline(conn, CLIENT_TLS_HANDSHAKE_USEC);
        conn_handshake(conn);
}

/* Starts a connect to the upstream's addresses from conn->addr_idx on. */
static int conn_connect(HttpClientConn *conn) {
        HttpUpstream *up = conn->up;
        int r = -EHOSTUNREACH;

        for (; conn->addr_idx < up->n_addrs; conn->addr_idx++) {
                const UpstreamAddr *a = &up->addrs[conn->addr_idx];
                int one = 1, fd;

                if (conn->fd >= 0) {
                        if (conn->registered)
                                (void) epoll_ctl(conn->client->epoll_fd, EPOLL_CTL_DEL, conn->fd, NULL);
                        conn->registered = 0;
                        (void) close(conn->fd);
                        conn->fd = -1;
                }
                fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        return -errno;
                conn->fd = fd;
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                if (connect(fd, (const struct sockaddr *) &a->sa, a->len) < 0 && errno != EINPROGRESS) {
                        r = -errno;
                        continue;
                }
                /* connected or not, EPOLLOUT tells (at once if it is) */
                r = conn_register(conn, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
                if (r < 0)
                        return r;
                conn->state = CONN_CONNECTING;
                conn_set_deadline(conn, conn->client->opt.connect_timeout_usec);
                return 0;
        }
        return r;
}

static int upstream_resolve(HttpUpstream *up);

/* q on a new connection. On failure nothing is left behind and q is not finished. */
static int req_connect_new(HttpClientRequest *q) {
        HttpUpstream *up = q->up;
        HttpClientConn *conn;
        int r;

        r = upstream_resolve(up);
        if (r < 0)
                return r;
        conn = calloc(1, sizeof(HttpClientConn));
        if (!conn)
                return -ENOMEM;
        conn->client = up->client;
        conn->up = up;
        conn->fd = -1;
        r = conn_connect(conn);
        if (r < 0) {
                if (conn->fd >= 0)
                        (void) close(conn->fd);
                conn_free(conn);
                return r;
        }
        up->n_conns++;
        active_link(conn);
        conn_begin_request(conn, q);
        return 0;
}

/* A transport failure of conn's request. A reused connection that died before any response byte: the
 * request goes again on a new connection, once. */
static void conn_io_error(HttpClientConn *conn, int error) {
        HttpClientRequest *q = conn->req;
        bool retry = conn->reused && !conn->got_bytes && !q->retried;
        int r;

        conn_close(conn);
        if (retry && !q->cancelled) {
                log_debug("http-client: reused connection to %s failed (%s), retrying on a new one",
                          q->up->authority, strerror(-error));
                q->retried = true;
                r = req_connect_new(q);
                if (r >= 0)
                        return;
                error = r;
        }
        req_finish(q, error);
}

/* --- receiving -------------------------------------------------------------------------------- */

static HttpClientConn *parser_conn(llhttp_t *p) {
        return p->data;
}

static int on_message_begin(llhttp_t *p) {
        HttpClientConn *conn = parser_conn(p);

        conn->hstate = 0;
        conn->n_hdr = 0;
        conn->hbuf.len = 0;
        return 0;
}

/* hstate: 0 between headers, 1 in a name, 2 in a value. Names and values are NUL-terminated in hbuf. */
static int on_header_field(llhttp_t *p, const char *at, size_t n) {
        HttpClientConn *conn = parser_conn(p);

        if (conn->hstate != 1) {
                if (conn->n_hdr >= conn->hdr_alloc) {
                        size_t na = MAX(conn->hdr_alloc * 2, (size_t) 16);
                        HeaderSpan *t = reallocarray(conn->hdr, na, sizeof(HeaderSpan));

                        if (!t)
                                return -1;
                        conn->hdr = t;
                        conn->hdr_alloc = na;
                }
                conn->hdr[conn->n_hdr++] = (HeaderSpan) { .name_off = conn->hbuf.len };
                conn->hstate = 1;
        }
        conn->hdr[conn->n_hdr - 1].name_len += n;
        return http_buf_append(&conn->hbuf, at, n) < 0 ? -1 : 0;
}

static int on_header_field_complete(llhttp_t *p) {
        HttpClientConn *conn = parser_conn(p);

        if (conn->hstate != 1)
                return 0;
        conn->hstate = 3; /* name done, value not begun */
        return http_buf_append(&conn->hbuf, "", 1) < 0 ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
        HttpClientConn *conn = parser_conn(p);

        if (conn->n_hdr == 0)
                return 0;
        if (conn->hstate != 2) {
                conn->hdr[conn->n_hdr - 1].value_off = conn->hbuf.len;
                conn->hstate = 2;
        }
        conn->hdr[conn->n_hdr - 1].value_len += n;
        return http_buf_append(&conn->hbuf, at, n) < 0 ? -1 : 0;
}

static int on_header_value_complete(llhttp_t *p) {
        HttpClientConn *conn = parser_conn(p);

        if (conn->n_hdr == 0)
                return 0;
        if (conn->hstate != 2) /* an empty value */
                conn->hdr[conn->n_hdr - 1].value_off = conn->hbuf.len;
        conn->hstate = 0;
        return http_buf_append(&conn->hbuf, "", 1) < 0 ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p) {
        HttpClientConn *conn = parser_conn(p);
        HttpClientRequest *q = conn->req;
        HttpClientHeader hv[64], *h = hv;
        _cleanup_free_ HttpClientHeader *heap = NULL;
        unsigned status = p->status_code;
        int64_t cl;

        if (status < 200) {
                if (status == 101)
                        return -1; /* nobody asked for an upgrade */
                conn->interim = true;
                return 0;
        }
        conn->interim = false;

        if (conn->n_hdr > ELEMENTSOF(hv)) {
                heap = calloc(conn->n_hdr, sizeof(HttpClientHeader));
                if (!heap)
                        return -1;
                h = heap;
        }
        for (size_t i = 0; i < conn->n_hdr; i++)
                h[i] = (HttpClientHeader) {
                        .name = conn->hbuf.data + conn->hdr[i].name_off,
                        .name_len = conn->hdr[i].name_len,
                        .value = conn->hbuf.data + conn->hdr[i].value_off,
                        .value_len = conn->hdr[i].value_len,
                };
        cl = (p->flags & F_CONTENT_LENGTH) ? (int64_t) p->content_length : -1;

        q->head_seen = true;
        q->in_cb++;
        q->ops->head(q, status, h, conn->n_hdr, cl, q->userdata);
        q->in_cb--;
        if (q->cancelled)
                return -1;
        return q->head_method ? 1 : 0; /* 1: no body, whatever the head says */
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
        HttpClientConn *conn = parser_conn(p);
        HttpClientRequest *q = conn->req;

        if (q->paused) {
                /* paused outside a body callback: hold this piece back (llhttp counts it as consumed) */
                if (http_buf_append(&conn->held, at, n) < 0)
                        return -1;
                return HPE_PAUSED;
        }
        q->in_cb++;
        q->ops->body(q, at, n, q->userdata);
        q->in_cb--;
        if (q->cancelled)
                return -1;
        return q->paused ? HPE_PAUSED : 0;
}

static int on_message_complete(llhttp_t *p) {
        HttpClientConn *conn = parser_conn(p);

        if (conn->interim) {
                conn->interim = false;
                return 0; /* a 1xx: the real response follows */
        }
        conn->message_done = true;
        return HPE_PAUSED;
}

/* The response is complete: the connection goes back to the pool if it may, then done(). */
static void conn_message_done(HttpClientConn *conn, bool leftover) {
        HttpClient *c = conn->client;
        HttpClientRequest *q = conn->req;
        bool keep = !leftover && llhttp_should_keep_alive(&conn->parser) &&
                (!conn->tls || gnutls_record_check_pending(conn->tls) == 0);

        conn->req = NULL;
        q->conn = NULL;
        if (keep && c->n_idle < c->opt.max_idle && conn->state == CONN_BUSY) {
                HttpUpstream *up = conn->up;

                conn_unlink(conn);
                conn->state = CONN_IDLE;
                conn->deadline = 0;
                conn->reused = true;
                conn->in_idle_list = true;
                conn->next = up->idle;
                if (up->idle)
                        up->idle->prev = conn;
                up->idle = conn;
                up->n_idle++;
                c->n_idle++;
                if (conn->hbuf.alloc > CLIENT_BUFFER_KEEP)
                        http_buf_done(&conn->hbuf);
        } else
                conn_close(conn);
        req_finish(q, 0);
}

/* Parses input of conn's request. False when the connection is no longer to be read here (the response
 * ended, the request was cancelled or paused, or an error closed it). */
static bool conn_feed(HttpClientConn *conn, const char *data, size_t n) {
        HttpClientRequest *q = conn->req;
        llhttp_errno_t e;
        const char *pos;

        if (llhttp_get_errno(&conn->parser) == HPE_PAUSED)
                llhttp_resume(&conn->parser);
        e = llhttp_execute(&conn->parser, data, n);
        if (q->cancelled) {
                conn_close(conn);
                req_free(q);
                return false;
        }
        if (e == HPE_OK)
                return true;
        if (e == HPE_PAUSED) {
                pos = llhttp_get_error_pos(&conn->parser);
                if (!pos)
                        pos = data + n;
                if (conn->message_done) {
                        conn_message_done(conn, pos < data + n);
                        return false;
                }
                /* paused by (or for) the caller: keep the rest, stop reading */
                conn->pending.len = 0;
                if (pos < data + n && http_buf_append(&conn->pending, pos, (size_t) (data + n - pos)) < 0) {
                        conn_close(conn);
                        req_finish(q, -ENOMEM);
                        return false;
                }
                conn->stopped = true;
                conn->deadline = 0;
                (void) conn_register(conn, 0);
                return false;
        }
        log_debug("http-client: bad response from %s: %s (%s)", conn->up->authority, llhttp_errno_name(e),
                  strempty(llhttp_get_error_reason(&conn->parser)));
        conn_close(conn);
        req_finish(q, -EPROTO);
        return false;
}

static void conn_eof(HttpClientConn *conn) {
        HttpClientRequest *q = conn->req;
        llhttp_errno_t e;

        if (!conn->got_bytes) {
                conn_io_error(conn, -ECONNRESET);
                return;
        }
        if (llhttp_get_errno(&conn->parser) == HPE_PAUSED)
                llhttp_resume(&conn->parser);
        e = llhttp_finish(&conn->parser);
        if (q->cancelled) {
                conn_close(conn);
                req_free(q);
                return;
        }
        if ((e == HPE_OK || e == HPE_PAUSED) && conn->message_done) {
                conn_message_done(conn, true /* closed: not for the pool */);
                return;
        }
        conn_close(conn);
        req_finish(q, q->head_seen ? -EPIPE : -ECONNRESET);
}

/* Reads like recv(): bytes, 0 at the end, or -1 with errno. Over TLS the end of the stream without a
 * close_notify is an end too (as Go's client and libcurl take it). */
static ssize_t conn_recv(HttpClientConn *conn, void *buf, size_t size) {
        if (!conn->tls)
                return recv(conn->fd, buf, size, 0);
        return tls_recv(conn->tls, buf, size, conn->up->authority, NULL);
}

static void conn_read(HttpClientConn *conn) {
        HttpClient *c = conn->client;

        /* over TLS a record is at most 16 KiB: more rounds, and on until EAGAIN (see the top) */
        for (unsigned k = 0; k < (conn->tls ? 16u : 4u); k++) {
                ssize_t n = conn_recv(conn, c->rbuf, CLIENT_READ_BUFFER);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return;
                        conn_io_error(conn, -errno);
                        return;
                }
                if (n == 0) {
                        conn_eof(conn);
                        return;
                }
                conn->got_bytes = true;
                if (c->opt.read_timeout_usec > 0)
                        conn->deadline = client_now(c) + c->opt.read_timeout_usec;
                if (!conn_feed(conn, c->rbuf, (size_t) n))
                        return;
                if (!conn->tls && (size_t) n < CLIENT_READ_BUFFER)
                        return;
        }
        /* a level-triggered socket with more comes back; bytes GnuTLS holds would not */
        if (conn->tls && gnutls_record_check_pending(conn->tls) > 0 && !conn->on_resume_list) {
                conn->on_resume_list = true;
                conn->resume_next = c->resumed;
                c->resumed = conn;
                client_schedule(c);
        }
}

static void conn_event(HttpClientConn *conn, uint32_t events) {
        int err = 0;
        socklen_t len = sizeof err;

        switch (conn->state) {
        case CONN_IDLE:
                /* the upstream closed it (or sent what nobody asked for) */
                conn_close(conn);
                return;

        case CONN_CONNECTING:
                if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                        return;
                if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                if (err != 0) {
                        int r;

                        conn->addr_idx++;
                        r = conn->addr_idx < conn->up->n_addrs ? conn_connect(conn) : -err;
                        if (r < 0)
                                conn_fail(conn, r);
                        return;
                }
                conn_established(conn);
                return;

        case CONN_HANDSHAKE:
                conn_handshake(conn);
                return;

        case CONN_BUSY:
                if ((events & EPOLLOUT) && conn->out_off < conn->req->head.len + conn->req->body_len) {
                        HttpClientRequest *q = conn->req;

                        conn_send(conn);
                        if (conn->dead || conn->req != q)
                                return;
                }
                if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
                        conn_read(conn);
                return;
        }
}

/* --- resuming --------------------------------------------------------------------------------- */

static void conn_resume(HttpClientConn *conn) {
        HttpClient *c = conn->client;
        HttpClientRequest *q = conn->req;

        if (conn->held.len > 0) {
                /* deliver through rbuf: the callback may pause again and refill held */
                size_t n = conn->held.len;

                memcpy(c->rbuf, conn->held.data, n);
                conn->held.len = 0;
                q->in_cb++;
                q->ops->body(q, c->rbuf, n, q->userdata);
                q->in_cb--;
                if (q->cancelled) {
                        conn_close(conn);
                        req_free(q);
                        return;
                }
                if (q->paused)
                        return;
        }
        conn->stopped = false;
        if (conn->pending.len > 0) {
                size_t n = conn->pending.len;

                memcpy(c->rbuf, conn->pending.data, n);
                conn->pending.len = 0;
                if (!conn_feed(conn, c->rbuf, n))
                        return;
        }
        if (conn_register(conn, EPOLLIN | EPOLLRDHUP) < 0) {
                conn_io_error(conn, -errno);
                return;
        }
        conn_set_deadline(conn, c->opt.read_timeout_usec);
        if (conn->tls && gnutls_record_check_pending(conn->tls) > 0)
                conn_read(conn); /* decrypted bytes the socket does not announce */
}

/* --- event sources ---------------------------------------------------------------------------- */

static void client_dispatch_end(HttpClient *c) {
        c->dispatching--;
        if (c->dispatching == 0 && c->flush)
                c->flush(c->flush_userdata);
        client_reap(c);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpClient *c = userdata;
        struct epoll_event ev[64];
        int n;

        n = epoll_wait(c->epoll_fd, ev, ELEMENTSOF(ev), 0);
        if (n < 0) {
                if (errno != EINTR)
                        log_warning_errno(-errno, "http-client: failed to read the epoll fd, ignoring: %m");
                return 0;
        }
        c->dispatching++;
        for (int i = 0; i < n; i++) {
                HttpClientConn *conn = ev[i].data.ptr;

                if (!conn->dead)
                        conn_event(conn, ev[i].events);
        }
        client_dispatch_end(c);
        return 0;
}

static int on_defer(sd_event_source *s, void *userdata) {
        HttpClient *c = userdata;

        c->dispatching++;
        while (c->completions) {
                HttpClientRequest *q = c->completions;

                c->completions = q->next;
                if (!c->completions)
                        c->completions_tail = NULL;
                q->next = NULL;
                q->queued = false;
                req_finish(q, q->error);
        }
        while (c->resumed) {
                HttpClientConn *conn = c->resumed;

                c->resumed = conn->resume_next;
                conn->resume_next = NULL;
                conn->on_resume_list = false;
                if (conn->dead || !conn->req || conn->req->paused)
                        continue;
                if (conn->stopped)
                        conn_resume(conn);
                else if (conn->state == CONN_BUSY && conn->tls)
                        conn_read(conn); /* conn_read() stopped with records held by GnuTLS */
        }
        client_dispatch_end(c);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpClient *c = userdata;
        uint64_t now = client_now(c), next = UINT64_MAX;

        c->timer_at = UINT64_MAX;
        c->dispatching++;
        for (;;) {
                HttpClientConn *conn = c->active;

                while (conn && (conn->deadline == 0 || conn->deadline > now))
                        conn = conn->next;
                if (!conn)
                        break;

                HttpClientRequest *q = conn->req;
                log_debug("http-client: %s to %s timed out",
                          conn->state == CONN_CONNECTING ? "connect" : conn->state == CONN_HANDSHAKE ? "TLS handshake" : "read",
                          conn->up->authority);
                conn_close(conn);
                req_finish(q, -ETIMEDOUT);
        }
        for (HttpClientConn *conn = c->active; conn; conn = conn->next)
                if (conn->deadline > 0)
                        next = MIN(next, conn->deadline);
        client_arm(c, next == UINT64_MAX ? 0 : next);
        client_dispatch_end(c);
        return 0;
}

/* --- upstreams -------------------------------------------------------------------------------- */

static int upstream_resolve(HttpUpstream *up) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
        UpstreamAddr *t;
        char port[8];
        size_t n = 0;
        int k;

        if (up->n_addrs > 0 && (up->numeric || client_now(up->client) < up->resolved_usec + CLIENT_DNS_CACHE_USEC))
                return 0;

        /* a name (rare for members: they advertise addresses) resolves synchronously, cached 60 s */
        snprintf(port, sizeof port, "%u", up->port);
        k = getaddrinfo(up->host, port, &hints, &res);
        if (k != 0) {
                log_debug("http-client: failed to resolve '%s': %s", up->host, gai_strerror(k));
                return up->n_addrs > 0 ? 0 : -EHOSTUNREACH;
        }
        for (struct addrinfo *a = res; a; a = a->ai_next)
                n++;
        t = calloc(MAX(n, (size_t) 1), sizeof(UpstreamAddr));
        if (!t) {
                freeaddrinfo(res);
                return -ENOMEM;
        }
        n = 0;
        for (struct addrinfo *a = res; a; a = a->ai_next) {
                if (a->ai_addrlen > sizeof(struct sockaddr_storage))
                        continue;
                memcpy(&t[n].sa, a->ai_addr, a->ai_addrlen);
                t[n].len = a->ai_addrlen;
                n++;
        }
        freeaddrinfo(res);
        if (n == 0) {
                free(t);
                return -EHOSTUNREACH;
        }
        free(up->addrs);
        up->addrs = t;
        up->n_addrs = n;
        up->resolved_usec = client_now(up->client);
        return 0;
}

static HttpUpstream *upstream_free(HttpUpstream *up) {
        if (!up)
                return NULL;
        free(up->url);
        free(up->host);
        free(up->authority);
        free(up->path);
        free(up->addrs);
        free(up);
        return NULL;
}

static int upstream_parse(HttpUpstream *up, const char *url) {
        const char *a, *end, *colon, *hs, *he;
        unsigned long port = 80;
        size_t l;

        if (strncasecmp(url, "https://", 8) == 0) {
                up->tls = true;
                port = 443;
                a = url + 8;
        } else if (strncasecmp(url, "http://", 7) == 0)
                a = url + 7;
        else
                return strstr(url, "://") ? -EPROTONOSUPPORT : -EINVAL;
        end = a + strcspn(a, "/?#");
        if (end == a)
                return -EINVAL;
        if (*a == '[') {
                hs = a + 1;
                he = memchr(hs, ']', (size_t) (end - hs));
                if (!he)
                        return -EINVAL;
                colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
                if (!colon && he + 1 != end)
                        return -EINVAL;
        } else {
                hs = a;
                colon = memchr(a, ':', (size_t) (end - a));
                he = colon ?: end;
        }
        if (colon) {
                char *e;

                errno = 0;
                port = strtoul(colon + 1, &e, 10);
                if (e != end || colon + 1 == end || errno != 0 || port == 0 || port > 65535)
                        return -EINVAL;
        }
        if (he == hs)
                return -EINVAL;
        up->host = strndup(hs, (size_t) (he - hs));
        up->authority = strndup(a, (size_t) (end - a));
        l = strcspn(end, "?#");
        while (l > 0 && end[l - 1] == '/')
                l--;
        up->path = strndup(end, l);
        if (!up->host || !up->authority || !up->path)
                return -ENOMEM;
        up->port = (uint16_t) port;

        /* literal addresses need no resolver, ever */
        {
                UpstreamAddr ad = {};
                struct sockaddr_in *s4 = (struct sockaddr_in *) &ad.sa;
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &ad.sa;

                if (inet_pton(AF_INET, up->host, &s4->sin_addr) == 1) {
                        s4->sin_family = AF_INET;
                        s4->sin_port = htons(up->port);
                        ad.len = sizeof(*s4);
                } else if (inet_pton(AF_INET6, up->host, &s6->sin6_addr) == 1) {
                        s6->sin6_family = AF_INET6;
                        s6->sin6_port = htons(up->port);
                        ad.len = sizeof(*s6);
                }
                if (ad.len > 0) {
                        up->addrs = malloc(sizeof(UpstreamAddr));
                        if (!up->addrs)
                                return -ENOMEM;
                        up->addrs[0] = ad;
                        up->n_addrs = 1;
                        up->numeric = true;
                }
        }
        return 0;
}

int http_client_upstream(HttpClient *c, const char *url, HttpUpstream **ret) {
        HttpUpstream *up, **t;
        int r;

        assert(c);
        assert(url);
        assert(ret);

        for (size_t i = 0; i < c->n_ups; i++)
                if (streq(c->ups[i]->url, url)) {
                        *ret = c->ups[i];
                        return 0;
                }

        up = calloc(1, sizeof(HttpUpstream));
        if (!up)
                return -ENOMEM;
        up->client = c;
        up->url = strdup(url);
        if (!up->url) {
                upstream_free(up);
                return -ENOMEM;
        }
        r = upstream_parse(up, url);
        if (r >= 0 && up->tls && !c->tls_cred)
                /* nobody configured TLS: the system's roots and no certificate of ours, as Go's default */
                r = tls_client_credentials_new(&(const TlsInfo) {}, &c->tls_cred);
        if (r < 0) {
                upstream_free(up);
                return r;
        }
        t = reallocarray(c->ups, c->n_ups + 1, sizeof(HttpUpstream *));
        if (!t) {
                upstream_free(up);
                return -ENOMEM;
        }
        c->ups = t;
        c->ups[c->n_ups++] = up;
        *ret = up;
        return 0;
}

const char *http_upstream_authority(const HttpUpstream *u) {
        return u->authority;
}

const char *http_upstream_path(const HttpUpstream *u) {
        return u->path;
}

unsigned http_upstream_n_idle(const HttpUpstream *u) {
        return u->n_idle;
}

unsigned http_upstream_n_connections(const HttpUpstream *u) {
        return u->n_conns;
}

/* --- the request API -------------------------------------------------------------------------- */

static int buf_put_u64(HttpBuf *b, uint64_t v) {
        char tmp[24];
        size_t i = sizeof tmp;

        do {
                tmp[--i] = (char) ('0' + v % 10);
                v /= 10;
        } while (v > 0);
        return http_buf_append(b, tmp + i, sizeof tmp - i);
}

static int req_build_head(HttpClientRequest *q, const HttpClientSpec *s) {
        HttpBuf *b = &q->head;

        b->len = 0;
        if (http_buf_reserve(b, strlen(s->method) + s->target_prefix_len + s->target_len + s->headers_len + 128) < 0 ||
            http_buf_puts(b, s->method) < 0 || http_buf_append(b, " ", 1) < 0 ||
            (s->target_prefix_len > 0 && http_buf_append(b, s->target_prefix, s->target_prefix_len) < 0) ||
            http_buf_append(b, s->target, s->target_len) < 0 ||
            http_buf_append(b, " HTTP/1.1\r\n", 11) < 0)
                return -ENOMEM;
        if (!s->has_host && (http_buf_append(b, "Host: ", 6) < 0 || http_buf_puts(b, q->up->authority) < 0 ||
                             http_buf_append(b, "\r\n", 2) < 0))
                return -ENOMEM;
        if (s->headers_len > 0 && http_buf_append(b, s->headers, s->headers_len) < 0)
                return -ENOMEM;
        if (s->send_length && (http_buf_append(b, "Content-Length: ", 16) < 0 || buf_put_u64(b, s->body_len) < 0 ||
                               http_buf_append(b, "\r\n", 2) < 0))
                return -ENOMEM;
        if (http_buf_append(b, "\r\n", 2) < 0)
                return -ENOMEM;
        return 0;
}

int http_client_request_start(HttpUpstream *u, const HttpClientSpec *spec, const HttpClientOps *ops,
                              void *userdata, HttpClientRequest **ret) {
        HttpClient *c;
        HttpClientRequest *q;
        HttpClientConn *conn;
        int r;

        assert(u);
        assert(spec);
        assert(ops && ops->head && ops->body && ops->done);

        c = u->client;
        if (c->free_reqs) {
                q = c->free_reqs;
                c->free_reqs = q->next;
                c->n_free_reqs--;
                *q = (HttpClientRequest) { .head = q->head };
        } else {
                q = calloc(1, sizeof(HttpClientRequest));
                if (!q)
                        return -ENOMEM;
        }
        q->client = c;
        q->up = u;
        q->ops = ops;
        q->userdata = userdata;
        q->body = spec->send_length || spec->body_len > 0 ? spec->body : NULL;
        q->body_len = q->body ? spec->body_len : 0;
        q->head_method = spec->head;
        r = req_build_head(q, spec);
        if (r < 0) {
                req_free(q);
                return r;
        }

        if (ret)
                *ret = q;

        /* failures found from here on are queued and reported from the defer source */
        c->starting++;
        conn = u->idle;
        if (conn) {
                conn_unlink(conn);
                active_link(conn);
                conn->state = CONN_BUSY;
                conn_begin_request(conn, q);
                conn_set_deadline(conn, c->opt.read_timeout_usec);
                conn_send(conn);
        } else {
                r = req_connect_new(q);
                if (r < 0)
                        req_finish(q, r);
        }
        c->starting--;
        return 0;
}

void http_client_request_pause(HttpClientRequest *q) {
        if (q)
                q->paused = true;
}

void http_client_request_resume(HttpClientRequest *q) {
        HttpClientConn *conn;

        if (!q || !q->paused)
                return;
        q->paused = false;
        conn = q->conn;
        if (!conn || !conn->stopped || conn->on_resume_list)
                return;
        conn->on_resume_list = true;
        conn->resume_next = q->client->resumed;
        q->client->resumed = conn;
        client_schedule(q->client);
}

bool http_client_request_is_paused(const HttpClientRequest *q) {
        return q && q->paused;
}

void http_client_request_cancel(HttpClientRequest *q) {
        if (!q || q->cancelled)
                return;
        q->cancelled = true;
        if (q->in_cb > 0 || q->queued)
                return; /* the code around the callback, or the completion queue, frees it */
        if (q->conn)
                conn_close(q->conn);
        req_free(q);
        client_reap(q->client);
}

/* --- the client ------------------------------------------------------------------------------- */

int http_client_new(sd_event *event, const HttpClientOptions *options, HttpClient **ret) {
        HttpClient *c;
        int r;

        assert(event);
        assert(ret);

        c = calloc(1, sizeof(HttpClient));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->epoll_fd = -1;
        c->timer_at = UINT64_MAX;
        if (options)
                c->opt = *options;
        if (c->opt.max_idle == 0)
                c->opt.max_idle = CLIENT_DEFAULT_MAX_IDLE;
        llhttp_settings_init(&c->settings);
        c->settings.on_message_begin = on_message_begin;
        c->settings.on_header_field = on_header_field;
        c->settings.on_header_value = on_header_value;
        c->settings.on_header_field_complete = on_header_field_complete;
        c->settings.on_header_value_complete = on_header_value_complete;
        c->settings.on_headers_complete = on_headers_complete;
        c->settings.on_body = on_body;
        c->settings.on_message_complete = on_message_complete;

        c->rbuf = malloc(CLIENT_READ_BUFFER);
        if (!c->rbuf) {
                r = -ENOMEM;
                goto fail;
        }
        c->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (c->epoll_fd < 0) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(event, &c->io, c->epoll_fd, EPOLLIN, on_io, c);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(c->io, "http-client-io");
        r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_MSEC, on_timer, c);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->timer, "http-client-timer");
        r = sd_event_add_defer(event, &c->defer, on_defer, c);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(c->defer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->defer, "http-client-defer");

        *ret = c;
        return 0;

fail:
        http_client_free(c);
        return r;
}

void http_client_set_flush(HttpClient *c, void (*flush)(void *userdata), void *userdata) {
        c->flush = flush;
        c->flush_userdata = userdata;
}

void http_client_set_tls(HttpClient *c, gnutls_certificate_credentials_t cred) {
        assert(c);
        for (size_t i = 0; i < c->n_ups; i++)
                assert(!c->ups[i]->tls); /* sessions of theirs would keep the old credentials */

        if (c->tls_cred && c->tls_cred != cred)
                gnutls_certificate_free_credentials(c->tls_cred);
        c->tls_cred = cred;
}

HttpClient *http_client_free(HttpClient *c) {
        if (!c)
                return NULL;

        assert(c->dispatching == 0);

        /* requests in flight end silently: mark them cancelled so that nothing reports */
        while (c->active) {
                HttpClientConn *conn = c->active;
                HttpClientRequest *q = conn->req;

                conn_close(conn);
                if (q) {
                        q->cancelled = true;
                        if (!q->queued)
                                req_free(q);
                }
        }
        for (size_t i = 0; i < c->n_ups; i++)
                while (c->ups[i]->idle)
                        conn_close(c->ups[i]->idle);
        while (c->completions) {
                HttpClientRequest *q = c->completions;

                c->completions = q->next;
                q->queued = false;
                req_free(q);
        }
        c->completions_tail = NULL;
        while (c->resumed) {
                HttpClientConn *conn = c->resumed;

                c->resumed = conn->resume_next;
                conn->on_resume_list = false;
        }
        client_reap(c);
        while (c->free_reqs) {
                HttpClientRequest *q = c->free_reqs;

                c->free_reqs = q->next;
                http_buf_done(&q->head);
                free(q);
        }
        for (size_t i = 0; i < c->n_ups; i++)
                upstream_free(c->ups[i]);
        free(c->ups);
        c->io = sd_event_source_disable_unref(c->io);
        c->timer = sd_event_source_disable_unref(c->timer);
        c->defer = sd_event_source_disable_unref(c->defer);
        if (c->epoll_fd >= 0)
                (void) close(c->epoll_fd);
        if (c->tls_cred)
                gnutls_certificate_free_credentials(c->tls_cred); /* after the sessions (conn_close()) */
        free(c->rbuf);
        sd_event_unref(c->event);
        free(c);
        return NULL;
}
