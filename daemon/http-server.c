/* SPDX-License-Identifier: Apache-2.0 */
/* http-server.c - libmicrohttpd in external-epoll mode on sd-event: client and peer listeners. */

/*
 * Two libmicrohttpd daemons, one for the client API (ports 2379/4001) and one for the peer endpoints
 * (2380/7001), both without listen sockets of their own: we accept on every listener (socket-activated
 * or bound from the configured URLs) and hand the connections over with MHD_add_connection(). Each
 * daemon's epoll fd is one io source in sd-event; a timer armed from MHD_get_timeout() in the source's
 * prepare callback drives connection timeouts; a one-shot defer source runs the daemon after a
 * connection was resumed, because MHD_resume_connection() does not wake an external loop, and whenever
 * MHD_get_timeout() says 0 (work is ready now: the next request of a keep-alive connection, the next
 * step of a resumed one), since the 1 ms timer would add one to two milliseconds to every such step.
 *
 * Long polls and pending proposals suspend their connection. libmicrohttpd does not look at suspended
 * sockets at all, so a client that goes away would go unnoticed: while suspended, each socket is in one
 * inner epoll set (EPOLLRDHUP) that is a single io source in sd-event, so that thousands of waiting
 * connections cost one source (sd-event dispatches one source per iteration). Proposals are usually
 * answered within a millisecond: their sockets join that set only if they are still waiting 100 ms later.
 *
 * Connections that libmicrohttpd closes with unread input (a refused oversized request) get a lingering
 * close, so that the client reads our error answer instead of a connection reset.
 *
 * Requests are pooled: the struct of a finished request is reused by the next one.
 */

#include <arpa/inet.h>
#include <assert.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <systemd/sd-daemon.h>

#include "client-api.h"
#include "http-server.h"
#include "peer.h"
#include "log.h"
#include "macro.h"

/* Per-connection pool for the request line, headers and response headers. Bodies do not count: they
 * come through the upload callback. 16 KiB lets a 10 KB value travel in the query string (Go allowed
 * 1 MB of headers); measured here: 10k idle connections ~45 MB RSS, each long poll ~13 KB more. Larger
 * pools cost more per request too (libmicrohttpd zeroes the used part of the pool between requests). */
#define HTTP_CONNECTION_MEMORY_LIMIT ((size_t) 16 * 1024)
/* Longer request targets are refused with 414: the pool must keep room for the other request headers
 * and for the response headers, or libmicrohttpd would drop the connection without an answer. */
#define HTTP_URI_MAX ((size_t) 12 * 1024)
#define HTTP_CONNECTION_TIMEOUT_SEC 300u        /* etcd2: ReadTimeout of 5 minutes on client listeners */
/* Peer listeners take members only: a few streams and member-list fetches each. Beyond these caps new
 * connections are closed at once; a head (request line and headers, at most the connection pool) must
 * be complete within the deadline (etcd2's peer transport reads with 5 s timeouts), however slowly
 * it trickles in; upgraded streams then belong to the peer transport (its own idle timeout). */
#define HTTP_PEER_CONNECTION_LIMIT 256u
#define HTTP_PEER_PER_IP_LIMIT 32u
#define HTTP_PEER_CONNECTION_TIMEOUT_SEC 30u
#define HTTP_PEER_HEAD_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define HTTP_ACCEPT_BATCH 64
#define HTTP_POOL_MAX 1024
#define HTTP_ACCEPT_RETRY_USEC (100 * USEC_PER_MSEC)
#define HTTP_LATE_WATCH_USEC (100 * USEC_PER_MSEC) /* a brief suspension watched for hang-up after this */
/* Lingering close: a connection closed with unread input is drained this long / this much at most. */
#define HTTP_LINGER_USEC (5 * USEC_PER_SEC)
#define HTTP_LINGER_BYTES_MAX ((uint64_t) 64 * 1024 * 1024)
#define HTTP_LINGER_MAX 64

typedef struct HttpLinger HttpLinger;
struct HttpLinger {
        HttpServer *server;
        HttpLinger *prev, *next;
        int fd;
        uint64_t drained;
        sd_event_source *io, *timer;
};

typedef struct HttpListener {
        HttpServer *server;
        HttpListenerKind kind;
        int fd;
        sd_event_source *source;
} HttpListener;

/* A peer connection whose request head is not complete yet (its deadline is the head timeout). */
typedef struct PeerHead {
        HttpDaemon *daemon;
        int fd;
        uint64_t deadline_usec;
        struct PeerHead *prev, *next;
        bool listed;
} PeerHead;

struct HttpDaemon {
        HttpServer *server;
        HttpListenerKind kind;
        struct MHD_Daemon *mhd;
        sd_event_source *io, *timer, *defer;
        uint64_t timer_usec;     /* what the timer is armed for, UINT64_MAX when off */
        bool woken;              /* daemon_wake() since the last MHD_run() began */
        PeerHead *heads;         /* peer listeners: heads being read, oldest last */
        sd_event_source *head_timer;
};

struct HttpServer {
        sd_event *event;
        const Config *config;
        Server *server;          /* NULL in proxy mode */
        Proxy *proxy;            /* NULL in member mode */

        HttpDaemon daemons[_HTTP_LISTENER_KIND_MAX];
        HttpListener **listeners; /* individually allocated: sources point at them */
        size_t n_listeners;
        sd_event_source *accept_retry;

        int hangup_fd;
        sd_event_source *hangup_source;
        HttpRequest *suspended;  /* list of suspended requests (for shutdown) */
        unsigned n_unwatched;    /* of which briefly suspended ones not yet watched for hang-up */
        sd_event_source *late_watch;

        HttpRequest *pool;
        unsigned n_pool;

        HttpLinger *lingering;
        unsigned n_lingering;
};

Server *http_daemon_server(HttpDaemon *d) {
        return d->server->server;
}

Proxy *http_daemon_proxy(HttpDaemon *d) {
        return d->server->proxy;
}

const Config *http_daemon_config(HttpDaemon *d) {
        return d->server->config;
}

HttpListenerKind http_daemon_kind(HttpDaemon *d) {
        return d->kind;
}

/* Proxy mode: a connection resumed while libmicrohttpd runs (an answer ready at once) is only picked up by
 * its next run, and a connection that just sent its answer takes another run or two to get back to reading: run
 * it again right away (a few times at most) rather than one loop iteration later each. A wake that this
 * served needs no defer run after it (prepare re-enables the defer if libmicrohttpd still has work). */
static void daemon_run(HttpDaemon *d) {
        MHD_UNSIGNED_LONG_LONG ms;

        if (!d->mhd)
                return;
        if (!d->server->proxy) {
                /* member mode: measured and tuned with one run per wake-up; left as it was */
                d->woken = false;
                (void) MHD_run(d->mhd);
                return;
        }
        for (unsigned i = 0; i < 3; i++) {
                d->woken = false;
                (void) MHD_run(d->mhd);
                if (!d->woken && (MHD_get_timeout(d->mhd, &ms) != MHD_YES || ms > 0))
                        break;
        }
        if (!d->woken && d->defer)
                (void) sd_event_source_set_enabled(d->defer, SD_EVENT_OFF);
}

static void daemon_wake(HttpDaemon *d) {
        d->woken = true;
        if (d->defer)
                (void) sd_event_source_set_enabled(d->defer, SD_EVENT_ONESHOT);
}

void http_daemon_wake(HttpDaemon *d) {
        daemon_wake(d);
}

void http_daemon_run_if_woken(HttpDaemon *d) {
        if (d->woken)
                daemon_run(d);
}

static int connection_fd(HttpRequest *r) {
        const union MHD_ConnectionInfo *ci;

        ci = MHD_get_connection_info(r->connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        return ci ? ci->connect_fd : -1;
}

static void request_watch_hangup(HttpServer *h, HttpRequest *r) {
        struct epoll_event ev = { .events = EPOLLRDHUP, .data.ptr = r };
        int fd;

        fd = connection_fd(r);
        if (fd < 0 || epoll_ctl(h->hangup_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                log_debug_errno(fd < 0 ? -EBADF : -errno, "Failed to watch suspended connection for hang-up, ignoring: %m");
                return;
        }
        r->hangup_watched = true;
}

static int on_late_watch(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpServer *h = userdata;

        /* Brief suspensions that lasted: from now on notice their client going away. */
        for (HttpRequest *r = h->suspended; r && h->n_unwatched > 0; r = r->suspended_next)
                if (r->hangup_pending) {
                        r->hangup_pending = false;
                        h->n_unwatched--;
                        request_watch_hangup(h, r);
                }
        h->n_unwatched = 0;
        return 0;
}

static void request_suspend(HttpRequest *r, bool brief) {
        HttpServer *h = r->daemon->server;

        assert(!r->suspended);

        MHD_suspend_connection(r->connection);
        r->suspended = true;
        r->hangup_watched = r->hangup_pending = false;

        r->suspended_prev = NULL;
        r->suspended_next = h->suspended;
        if (h->suspended)
                h->suspended->suspended_prev = r;
        h->suspended = r;

        if (!brief) {
                request_watch_hangup(h, r);
                return;
        }

        /* Two epoll_ctl() per request (add, then remove on resume) cost ~7 % of a PUT's CPU; a proposal is
         * usually answered within a millisecond, so only those still waiting after a while get watched. */
        r->hangup_pending = true;
        h->n_unwatched++;
        if (h->n_unwatched == 1) {
                uint64_t now;

                if (sd_event_now(h->event, CLOCK_MONOTONIC, &now) < 0)
                        now = 0;
                if (!h->late_watch) {
                        if (sd_event_add_time(h->event, &h->late_watch, CLOCK_MONOTONIC, now + HTTP_LATE_WATCH_USEC,
                                              10 * USEC_PER_MSEC, on_late_watch, h) < 0)
                                request_watch_hangup(h, r); /* no timer: watch right away */
                } else if (sd_event_source_get_enabled(h->late_watch, NULL) == 0) {
                        (void) sd_event_source_set_time(h->late_watch, now + HTTP_LATE_WATCH_USEC);
                        (void) sd_event_source_set_enabled(h->late_watch, SD_EVENT_ONESHOT);
                }
        }
}

void http_request_suspend(HttpRequest *r) {
        request_suspend(r, false);
}

void http_request_suspend_brief(HttpRequest *r) {
        request_suspend(r, true);
}

/* Forgets the hang-up watch of a suspended request, without touching libmicrohttpd. */
static void request_unwatch(HttpRequest *r) {
        HttpServer *h = r->daemon->server;
        int fd;

        if (r->hangup_watched) {
                fd = connection_fd(r);
                if (fd >= 0)
                        (void) epoll_ctl(h->hangup_fd, EPOLL_CTL_DEL, fd, NULL);
                r->hangup_watched = false;
        }
        if (r->hangup_pending) {
                r->hangup_pending = false;
                h->n_unwatched--;
        }

        if (r->suspended_prev)
                r->suspended_prev->suspended_next = r->suspended_next;
        else
                h->suspended = r->suspended_next;
        if (r->suspended_next)
                r->suspended_next->suspended_prev = r->suspended_prev;
        r->suspended_prev = r->suspended_next = NULL;
        r->suspended = false;
}

void http_request_resume(HttpRequest *r) {
        if (!r->suspended)
                return;

        request_unwatch(r);
        MHD_resume_connection(r->connection);
        daemon_wake(r->daemon);
}

/* Client requests go to the proxy in proxy mode, to the client API otherwise. */
static void request_hangup(HttpRequest *r) {
        if (r->daemon->server->proxy)
                proxy_request_hangup(r);
        else
                client_api_hangup(r);
}

static int on_hangup(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpServer *h = userdata;
        struct epoll_event evs[256];
        int n;

        n = epoll_wait(h->hangup_fd, evs, ELEMENTSOF(evs), 0);
        if (n < 0) {
                if (errno != EINTR && errno != EAGAIN)
                        log_warning_errno(-errno, "Failed to read hang-up events, ignoring: %m");
                return 0;
        }

        for (int i = 0; i < n; i++) {
                HttpRequest *r = evs[i].data.ptr;

                if (!r->suspended)
                        continue;
                r->hung_up = true;
                request_hangup(r);
                http_request_resume(r);
        }
        return 0;
}

/* --- lingering close ----------------------------------------------------------------------- */

/*
 * libmicrohttpd closes a connection it refuses (e.g. a request line larger than the pool) right after
 * queueing the error answer, while the client may still be sending: close() with unread input makes the
 * kernel send a RST, and the client loses the answer it had not read yet. So when a connection is closed
 * with input pending, we keep a duplicate of its socket, so that libmicrohttpd's close() does not release
 * it, and drain the input until the client closes (or for a while), as Go's server and Apache do.
 */

static HttpLinger *linger_free(HttpLinger *l) {
        HttpServer *h = l->server;

        l->io = sd_event_source_disable_unref(l->io);
        l->timer = sd_event_source_disable_unref(l->timer);
        if (l->fd >= 0)
                (void) close(l->fd);
        if (l->prev)
                l->prev->next = l->next;
        else
                h->lingering = l->next;
        if (l->next)
                l->next->prev = l->prev;
        h->n_lingering--;
        free(l);
        return NULL;
}

static int on_linger_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpLinger *l = userdata;
        char buf[16384];

        for (;;) {
                ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return 0;
                if (n <= 0) /* EOF or error: the client is done */
                        break;
                l->drained += (uint64_t) n;
                if (l->drained > HTTP_LINGER_BYTES_MAX)
                        break;
        }
        linger_free(l);
        return 0;
}

static int on_linger_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        linger_free(userdata);
        return 0;
}

static void linger_start(HttpServer *h, int fd) {
        HttpLinger *l;
        uint64_t now;

        if (h->n_lingering >= HTTP_LINGER_MAX || sd_event_now(h->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        l = calloc(1, sizeof(HttpLinger));
        if (!l)
                return;
        l->server = h;
        l->next = h->lingering;
        if (h->lingering)
                h->lingering->prev = l;
        h->lingering = l;
        h->n_lingering++;

        l->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (l->fd < 0 ||
            sd_event_add_io(h->event, &l->io, l->fd, EPOLLIN | EPOLLRDHUP, on_linger_io, l) < 0 ||
            sd_event_add_time(h->event, &l->timer, CLOCK_MONOTONIC, now + HTTP_LINGER_USEC, 10 * USEC_PER_MSEC,
                              on_linger_timer, l) < 0) {
                linger_free(l);
                return;
        }
        (void) sd_event_source_set_description(l->io, "http-linger");
        /* Our answer is complete: send the FIN now, whatever happens to libmicrohttpd's descriptor. */
        (void) shutdown(l->fd, SHUT_WR);
}

static void peer_head_unlink(PeerHead *ph) {
        if (!ph->listed)
                return;
        if (ph->prev)
                ph->prev->next = ph->next;
        else
                ph->daemon->heads = ph->next;
        if (ph->next)
                ph->next->prev = ph->prev;
        ph->prev = ph->next = NULL;
        ph->listed = false;
}

/* The head deadline of peer connections: shutdown() makes libmicrohttpd see the end and close it. */
static int on_peer_head_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpDaemon *d = userdata;
        uint64_t now = 0;
        bool closed = false;

        (void) sd_event_now(d->server->event, CLOCK_MONOTONIC, &now);
        for (PeerHead *ph = d->heads, *n; ph; ph = n) {
                n = ph->next;
                if (ph->deadline_usec > now)
                        continue;
                log_debug("Closing a peer connection that sent no complete request head in time.");
                (void) shutdown(ph->fd, SHUT_RDWR);
                peer_head_unlink(ph);
                closed = true;
        }
        if (closed)
                daemon_wake(d);
        if (d->heads)
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        (void) sd_event_source_set_time_relative(s, USEC_PER_SEC);
        return 0;
}

static void peer_head_start(HttpDaemon *d, struct MHD_Connection *connection, void **socket_context) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        PeerHead *ph;
        uint64_t now = 0;
        int enabled = SD_EVENT_OFF;

        if (!ci || !d->head_timer)
                return;
        ph = calloc(1, sizeof(PeerHead));
        if (!ph)
                return;   /* then only libmicrohttpd's inactivity timeout applies */
        (void) sd_event_now(d->server->event, CLOCK_MONOTONIC, &now);
        *ph = (PeerHead) { .daemon = d, .fd = ci->connect_fd, .deadline_usec = now + HTTP_PEER_HEAD_TIMEOUT_USEC,
                           .next = d->heads, .listed = true };
        if (d->heads)
                d->heads->prev = ph;
        d->heads = ph;
        *socket_context = ph;
        (void) sd_event_source_get_enabled(d->head_timer, &enabled);
        if (enabled == SD_EVENT_OFF) {
                (void) sd_event_source_set_time_relative(d->head_timer, USEC_PER_SEC);
                (void) sd_event_source_set_enabled(d->head_timer, SD_EVENT_ONESHOT);
        }
}

/* A head arrived complete: the connection is past the deadline's reach (for its life: further requests
 * on it are bounded by the inactivity timeout). */
static void peer_head_done(struct MHD_Connection *connection) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

        if (ci && ci->socket_context)
                peer_head_unlink(ci->socket_context);
}

static void on_connection_notify(void *cls, struct MHD_Connection *connection, void **socket_context,
                                 enum MHD_ConnectionNotificationCode toe) {
        HttpDaemon *d = cls;
        const union MHD_ConnectionInfo *ci;
        int pending = 0;

        if (d->kind == HTTP_LISTENER_PEER) {
                if (toe == MHD_CONNECTION_NOTIFY_STARTED)
                        peer_head_start(d, connection, socket_context);
                else if (*socket_context) {
                        peer_head_unlink(*socket_context);
                        free(*socket_context);
                        *socket_context = NULL;
                }
        }
        if (toe != MHD_CONNECTION_NOTIFY_CLOSED)
                return;
        /* Called before libmicrohttpd closes the socket. One ioctl() per closed connection. */
        ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci && ioctl(ci->connect_fd, FIONREAD, &pending) >= 0 && pending > 0)
                linger_start(d->server, ci->connect_fd);
}

/* --- request lifecycle ---------------------------------------------------------------------- */

static void *on_uri_log(void *cls, const char *uri, struct MHD_Connection *connection) {
        HttpDaemon *d = cls;
        HttpServer *h = d->server;
        HttpRequest *r;
        size_t l = strlen(uri);

        if (h->pool) {
                r = h->pool;
                h->pool = r->free_next;
                h->n_pool--;
                memset(r, 0, offsetof(HttpRequest, uri_buf));
                memset(&r->started, 0, sizeof(HttpRequest) - offsetof(HttpRequest, started));
        } else {
                r = calloc(1, sizeof(HttpRequest));
                if (!r)
                        return NULL;
        }

        r->daemon = d;
        r->connection = connection;
        if (l < sizeof(r->uri_buf)) {
                memcpy(r->uri_buf, uri, l + 1);
                r->uri = r->uri_buf;
        } else {
                r->uri = strdup(uri);
                if (!r->uri) {
                        free(r);
                        return NULL;
                }
        }
        return r;
}

static void request_release(HttpServer *h, HttpRequest *r) {
        if (h->proxy)
                proxy_request_done(r);
        else
                client_api_request_done(r);
        http_buf_done(&r->body);
        if (r->uri != r->uri_buf)
                free(r->uri);
        r->uri = NULL;

        if (h->n_pool >= HTTP_POOL_MAX) {
                free(r);
                return;
        }
        r->free_next = h->pool;
        h->pool = r;
        h->n_pool++;
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
        HttpDaemon *d = cls;
        HttpRequest *r = *con_cls;

        if (!r)
                return;
        *con_cls = NULL;

        if (r->suspended) {
                /* Should not happen (MHD does not finish suspended connections), but never leave a
                 * dangling pointer in the hang-up set. */
                r->hung_up = true;
                request_unwatch(r);
        }
        request_release(d->server, r);
}

static enum MHD_Result refuse(HttpRequest *r, unsigned status, const char *text) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        r->started = true;
        r->state = HTTP_REQUEST_QUEUED;

        resp = MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_PERSISTENT);
        if (!resp)
                return MHD_NO;
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
        ret = MHD_queue_response(r->connection, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

typedef struct LengthCheck {
        const char *first;
        bool conflict;
} LengthCheck;

static enum MHD_Result check_content_length(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
        LengthCheck *c = cls;

        if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0)
                return MHD_YES;
        if (!c->first)
                c->first = strempty(value);
        else if (!streq(c->first, strempty(value))) {
                c->conflict = true;
                return MHD_NO;
        }
        return MHD_YES;
}

/* Two different Content-Length headers: Go refuses the request (request smuggling); libmicrohttpd
 * 0.9.75 would silently pick one. */
static bool content_length_conflict(struct MHD_Connection *connection) {
        LengthCheck c = {};

        (void) MHD_get_connection_values(connection, MHD_HEADER_KIND, check_content_length, &c);
        return c.conflict;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *connection, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
        HttpRequest *r = *con_cls;

        if (!r)
                return MHD_NO; /* OOM in on_uri_log */

        if (!r->started) {
                /* Refusals of malformed requests are queued on the first call, so the connection closes
                 * afterwards, as Go's server closes it. */
                if (strlen(r->uri) > HTTP_URI_MAX)
                        return refuse(r, MHD_HTTP_URI_TOO_LONG, "414 URI Too Long\n");
                if (content_length_conflict(connection))
                        return refuse(r, MHD_HTTP_BAD_REQUEST, "400 Bad Request\n");

                /* The head is complete: out of the head deadline's reach. */
                if (r->daemon->kind == HTTP_LISTENER_PEER)
                        peer_head_done(connection);
                /* A refused peer stream is the exception to the rule below: closing is what we want
                 * there, before any of a body is read. */
                if (r->daemon->kind == HTTP_LISTENER_PEER && !r->daemon->server->proxy) {
                        enum MHD_Result ret;

                        if (client_api_peer_refuse_early(r, method, &ret)) {
                                r->started = true;
                                return ret;
                        }
                }

                /* Never queue on the first call: libmicrohttpd would close the connection. */
                r->started = true;
                if (r->daemon->server->proxy)
                        proxy_request_begin(r, method);
                else
                        client_api_begin(r, method);
                return MHD_YES;
        }

        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;

                *upload_data_size = 0;
                if (!r->want_body || r->body_too_large)
                        return MHD_YES;
                if (r->body.len + n > HTTP_BODY_MAX) {
                        r->body_too_large = true;
                        http_buf_done(&r->body);
                        return MHD_YES;
                }
                if (http_buf_append(&r->body, upload_data, n) < 0) {
                        log_oom();
                        return MHD_NO;
                }
                return MHD_YES;
        }

        if (r->daemon->server->proxy)
                return proxy_request_handle(r, method);
        return client_api_handle(r, method);
}

/* --- sd-event glue -------------------------------------------------------------------------- */

static int on_daemon_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        daemon_run(userdata);
        return 0;
}

static int on_daemon_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpDaemon *d = userdata;

        d->timer_usec = UINT64_MAX;
        daemon_run(d);
        return 0;
}

static int on_daemon_defer(sd_event_source *s, void *userdata) {
        daemon_run(userdata);
        return 0;
}

static int on_daemon_prepare(sd_event_source *s, void *userdata) {
        HttpDaemon *d = userdata;
        MHD_UNSIGNED_LONG_LONG ms;
        uint64_t now, when;

        if (MHD_get_timeout(d->mhd, &ms) != MHD_YES) {
                if (d->timer_usec != UINT64_MAX) {
                        (void) sd_event_source_set_enabled(d->timer, SD_EVENT_OFF);
                        d->timer_usec = UINT64_MAX;
                }
                return 0;
        }

        if (ms == 0) {
                /* Work is ready right now (a connection with unread data, a resumed one): run in this
                 * iteration instead of on the timer, which would fire a loop round and up to 1 ms late. */
                daemon_wake(d);
                return 0;
        }

        if (sd_event_now(d->server->event, CLOCK_MONOTONIC, &now) < 0)
                return 0;
        when = now + (uint64_t) ms * USEC_PER_MSEC;
        /* Re-arm only when it moves noticeably: this runs on every loop iteration. */
        if (d->timer_usec != UINT64_MAX && when >= d->timer_usec && when - d->timer_usec < 10 * USEC_PER_MSEC)
                return 0;

        if (sd_event_source_set_time(d->timer, when) >= 0 &&
            sd_event_source_set_enabled(d->timer, SD_EVENT_ONESHOT) >= 0)
                d->timer_usec = when;
        return 0;
}

static int daemon_start(HttpServer *h, HttpListenerKind kind) {
        HttpDaemon *d = &h->daemons[kind];
        const union MHD_DaemonInfo *info;
        int r;

        d->server = h;
        d->kind = kind;
        d->timer_usec = UINT64_MAX;

        if (kind == HTTP_LISTENER_PEER) {
                r = sd_event_add_time(h->event, &d->head_timer, CLOCK_MONOTONIC, UINT64_MAX, 10 * USEC_PER_MSEC,
                                      on_peer_head_timer, d);
                if (r < 0)
                        return log_error_errno(r, "Failed to add the peer head timer: %m");
                (void) sd_event_source_set_enabled(d->head_timer, SD_EVENT_OFF);
                (void) sd_event_source_set_description(d->head_timer, "http-peer-heads");
        }

        /* Peer listeners: `POST /raft/stream` upgrades to the peer transport (client-api.c). */
        d->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET |
                                  MHD_USE_TURBO | (kind == HTTP_LISTENER_PEER ? MHD_ALLOW_UPGRADE : 0),
                                  0, NULL, NULL, on_access, d,
                                  MHD_OPTION_URI_LOG_CALLBACK, on_uri_log, d,
                                  MHD_OPTION_NOTIFY_COMPLETED, on_completed, d,
                                  MHD_OPTION_NOTIFY_CONNECTION, on_connection_notify, d,
                                  MHD_OPTION_CONNECTION_MEMORY_LIMIT, HTTP_CONNECTION_MEMORY_LIMIT,
                                  MHD_OPTION_CONNECTION_LIMIT,
                                  kind == HTTP_LISTENER_PEER ? HTTP_PEER_CONNECTION_LIMIT : (unsigned) 1000000,
                                  MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                  kind == HTTP_LISTENER_PEER ? HTTP_PEER_PER_IP_LIMIT : 0u,
                                  MHD_OPTION_CONNECTION_TIMEOUT,
                                  kind == HTTP_LISTENER_PEER ? HTTP_PEER_CONNECTION_TIMEOUT_SEC : HTTP_CONNECTION_TIMEOUT_SEC,
                                  MHD_OPTION_END);
        if (!d->mhd)
                return log_error_errno(-EIO, "Failed to start libmicrohttpd daemon.");

        info = MHD_get_daemon_info(d->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info)
                return log_error_errno(-EIO, "Failed to get libmicrohttpd's epoll fd.");

        r = sd_event_add_io(h->event, &d->io, info->epoll_fd, EPOLLIN, on_daemon_io, d);
        if (r < 0)
                return log_error_errno(r, "Failed to add libmicrohttpd io source: %m");
        r = sd_event_source_set_prepare(d->io, on_daemon_prepare);
        if (r < 0)
                return log_error_errno(r, "Failed to set prepare callback: %m");
        (void) sd_event_source_set_description(d->io, kind == HTTP_LISTENER_CLIENT ? "http-client" : "http-peer");

        r = sd_event_add_time(h->event, &d->timer, CLOCK_MONOTONIC, UINT64_MAX, 1000, on_daemon_timer, d);
        if (r < 0)
                return log_error_errno(r, "Failed to add libmicrohttpd timer: %m");
        (void) sd_event_source_set_enabled(d->timer, SD_EVENT_OFF);

        r = sd_event_add_defer(h->event, &d->defer, on_daemon_defer, d);
        if (r < 0)
                return log_error_errno(r, "Failed to add libmicrohttpd defer source: %m");
        (void) sd_event_source_set_enabled(d->defer, SD_EVENT_OFF);
        return 0;
}

static void daemon_stop(HttpDaemon *d) {
        d->head_timer = sd_event_source_disable_unref(d->head_timer);
        d->io = sd_event_source_disable_unref(d->io);
        d->timer = sd_event_source_disable_unref(d->timer);
        d->defer = sd_event_source_disable_unref(d->defer);
        if (d->mhd) {
                MHD_stop_daemon(d->mhd);
                d->mhd = NULL;
        }
}

/* --- listeners ------------------------------------------------------------------------------ */

static int on_accept_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpServer *h = userdata;

        for (size_t i = 0; i < h->n_listeners; i++)
                if (h->listeners[i]->source)
                        (void) sd_event_source_set_enabled(h->listeners[i]->source, SD_EVENT_ON);
        return 0;
}

static void accept_pause(HttpServer *h) {
        uint64_t now;

        /* Out of fds: stop accepting for a moment instead of spinning on a readable listener. */
        for (size_t i = 0; i < h->n_listeners; i++)
                if (h->listeners[i]->source)
                        (void) sd_event_source_set_enabled(h->listeners[i]->source, SD_EVENT_OFF);

        if (sd_event_now(h->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        if (!h->accept_retry) {
                if (sd_event_add_time(h->event, &h->accept_retry, CLOCK_MONOTONIC, now + HTTP_ACCEPT_RETRY_USEC,
                                      1000, on_accept_retry, h) < 0)
                        return;
        } else {
                (void) sd_event_source_set_time(h->accept_retry, now + HTTP_ACCEPT_RETRY_USEC);
                (void) sd_event_source_set_enabled(h->accept_retry, SD_EVENT_ONESHOT);
        }
}

static int on_listener(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpListener *l = userdata;
        HttpDaemon *d = &l->server->daemons[l->kind];
        bool added = false;

        for (unsigned i = 0; i < HTTP_ACCEPT_BATCH; i++) {
                struct sockaddr_storage sa;
                socklen_t salen = sizeof(sa);
                int cfd;

                cfd = accept4(fd, (struct sockaddr *) &sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                break;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                                log_warning_errno(-errno, "Failed to accept connection, pausing: %m");
                                accept_pause(l->server);
                                break;
                        }
                        log_warning_errno(-errno, "Failed to accept connection, ignoring: %m");
                        break;
                }

                /* MHD closes the socket itself if it refuses it. */
                if (MHD_add_connection(d->mhd, cfd, (struct sockaddr *) &sa, salen) != MHD_YES)
                        log_debug("libmicrohttpd refused a connection.");
                else
                        added = true;
        }

        if (added)
                daemon_run(d);
        return 0;
}

static int listener_add(HttpServer *h, HttpListenerKind kind, int fd) {
        HttpListener **t, *l;
        int r;

        t = reallocarray(h->listeners, h->n_listeners + 1, sizeof(HttpListener *));
        if (!t)
                return log_oom();
        h->listeners = t;
        l = malloc(sizeof(HttpListener));
        if (!l)
                return log_oom();
        *l = (HttpListener) { .server = h, .kind = kind, .fd = fd };
        h->listeners[h->n_listeners++] = l;

        r = sd_event_add_io(h->event, &l->source, fd, EPOLLIN, on_listener, l);
        if (r < 0)
                return log_error_errno(r, "Failed to add listener to the event loop: %m");
        (void) sd_event_source_set_description(l->source, kind == HTTP_LISTENER_CLIENT ? "listen-client" : "listen-peer");
        return 0;
}

static int listen_url(HttpServer *h, HttpListenerKind kind, const EtcdUrl *u) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
        struct addrinfo *res = NULL;
        char port[8];
        unsigned n_ok = 0;
        int r, last = 0;

        if (!streq(u->scheme, "http"))
                return log_error_errno(-EOPNOTSUPP, "Failed to listen on '%s': TLS listeners are not supported yet.", u->str);

        snprintf(port, sizeof port, "%u", (unsigned) u->port);
        r = getaddrinfo(u->host, port, &hints, &res);
        if (r != 0)
                return log_error_errno(-EADDRNOTAVAIL, "Failed to resolve '%s': %s", u->host, gai_strerror(r));

        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                _cleanup_(closep) int fd = -1;
                int one = 1;

                fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0) {
                        last = -errno;
                        continue;
                }
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
                if (ai->ai_family == AF_INET6)
                        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
                        last = -errno;
                        /* "localhost" may resolve to the same address twice. */
                        if (errno == EADDRINUSE && n_ok > 0)
                                continue;
                        log_warning_errno(last, "Failed to listen on an address of '%s': %m", u->str);
                        continue;
                }

                r = listener_add(h, kind, fd);
                if (r < 0) {
                        freeaddrinfo(res);
                        return r;
                }
                TAKE_FD(fd);
                n_ok++;
        }
        freeaddrinfo(res);

        if (n_ok == 0)
                return log_error_errno(last ?: -EADDRNOTAVAIL, "Failed to listen on '%s': %m", u->str);
        log_info("Listening for %s requests on %s", kind == HTTP_LISTENER_CLIENT ? "client" : "peer", u->str);
        return 0;
}

static int setup_listeners(HttpServer *h) {
        _cleanup_(strv_freep) char **names = NULL;
        bool have[_HTTP_LISTENER_KIND_MAX] = {};
        int n, r;

        n = sd_listen_fds_with_names(false, &names);
        if (n < 0)
                log_warning_errno(n, "Failed to get socket-activated fds, ignoring: %m");

        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i, flags;
                const char *name = names && names[i] ? names[i] : "unknown";
                HttpListenerKind kind;

                if (streq(name, "peer")) {
                        if (h->proxy) {
                                log_warning("Socket-activated fd %d is a peer socket; a proxy has no peer listeners, ignoring it.", fd);
                                continue;
                        }
                        kind = HTTP_LISTENER_PEER;
                } else {
                        if (!streq(name, "client"))
                                log_warning("Socket-activated fd %d has name '%s', serving the client API on it.", fd, name);
                        kind = HTTP_LISTENER_CLIENT;
                }

                /* Inherited sockets are blocking. */
                flags = fcntl(fd, F_GETFL);
                if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                        return log_error_errno(-errno, "Failed to make socket-activated fd %d non-blocking: %m", fd);
                (void) fcntl(fd, F_SETFD, FD_CLOEXEC);

                r = listener_add(h, kind, fd);
                if (r < 0)
                        return r;
                have[kind] = true;
        }

        if (!have[HTTP_LISTENER_CLIENT])
                for (size_t i = 0; i < h->config->listen_client_urls.n; i++) {
                        r = listen_url(h, HTTP_LISTENER_CLIENT, &h->config->listen_client_urls.urls[i]);
                        if (r < 0)
                                return r;
                }
        if (!have[HTTP_LISTENER_PEER] && !h->proxy)
                for (size_t i = 0; i < h->config->listen_peer_urls.n; i++) {
                        r = listen_url(h, HTTP_LISTENER_PEER, &h->config->listen_peer_urls.urls[i]);
                        if (r < 0)
                                return r;
                }
        return 0;
}

static void raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                log_debug_errno(-errno, "Failed to raise RLIMIT_NOFILE, ignoring: %m");
}

int http_server_new(sd_event *event, const Config *config, Server *server, Proxy *proxy, HttpServer **ret) {
        HttpServer *h;
        int r;

        assert(event);
        assert(config);
        assert(ret);

        raise_nofile();

        h = calloc(1, sizeof(HttpServer));
        if (!h)
                return log_oom();
        h->event = sd_event_ref(event);
        h->config = config;
        h->server = server;
        h->proxy = proxy;
        h->hangup_fd = -1;

        h->hangup_fd = epoll_create1(EPOLL_CLOEXEC);
        if (h->hangup_fd < 0) {
                r = log_error_errno(-errno, "Failed to create epoll fd: %m");
                goto fail;
        }
        r = sd_event_add_io(event, &h->hangup_source, h->hangup_fd, EPOLLIN, on_hangup, h);
        if (r < 0) {
                log_error_errno(r, "Failed to add hang-up source: %m");
                goto fail;
        }
        (void) sd_event_source_set_description(h->hangup_source, "http-hangup");

        for (HttpListenerKind k = 0; k < _HTTP_LISTENER_KIND_MAX; k++) {
                if (proxy && k == HTTP_LISTENER_PEER)
                        continue; /* etcd2's proxy serves --listen-client-urls only */
                r = daemon_start(h, k);
                if (r < 0)
                        goto fail;
        }

        r = setup_listeners(h);
        if (r < 0)
                goto fail;

        *ret = h;
        return 0;

fail:
        http_server_free(h);
        return r;
}

void http_server_stop_listening(HttpServer *h) {
        if (!h)
                return;

        h->accept_retry = sd_event_source_disable_unref(h->accept_retry);
        for (size_t i = 0; i < h->n_listeners; i++) {
                h->listeners[i]->source = sd_event_source_disable_unref(h->listeners[i]->source);
                if (h->listeners[i]->fd >= 0)
                        (void) close(h->listeners[i]->fd);
                h->listeners[i]->fd = -1;
        }
}

HttpServer *http_server_free(HttpServer *h) {
        if (!h)
                return NULL;

        http_server_stop_listening(h);
        for (size_t i = 0; i < h->n_listeners; i++)
                free(h->listeners[i]);
        free(h->listeners);

        /* Upgraded peer streams belong to libmicrohttpd: end them before it stops. */
        if (h->server && server_peer_transport(h->server))
                peer_transport_close_accepted(server_peer_transport(h->server));

        /* libmicrohttpd refuses to stop with suspended connections: wake them all, let them fail. */
        while (h->suspended) {
                HttpRequest *r = h->suspended;

                r->hung_up = true;
                request_hangup(r);
                http_request_resume(r);
        }
        for (HttpListenerKind k = 0; k < _HTTP_LISTENER_KIND_MAX; k++) {
                daemon_run(&h->daemons[k]);
                daemon_stop(&h->daemons[k]);
        }

        while (h->lingering)
                linger_free(h->lingering);

        while (h->pool) {
                HttpRequest *r = h->pool;
                h->pool = r->free_next;
                free(r);
        }

        h->late_watch = sd_event_source_disable_unref(h->late_watch);
        h->hangup_source = sd_event_source_disable_unref(h->hangup_source);
        if (h->hangup_fd >= 0)
                (void) close(h->hangup_fd);
        sd_event_unref(h->event);
        free(h);
        return NULL;
}
