/* SPDX-License-Identifier: Apache-2.0 */
/* http-server.c - our HTTP/1.1 server on sd-event over llhttp: listeners, connections, requests and
 * responses (see http-server.h). */

/*
 * Connections. Every connection of every service sits in one inner epoll set (edge-triggered: EPOLLIN,
 * EPOLLOUT and EPOLLRDHUP, registered once for its whole life), which is a single io source in sd-event:
 * sd-event dispatches one source per loop iteration, so thousands of sockets ready at once must not be
 * thousands of sources (platform notes). A connection remembers what the kernel said (readable,
 * writable) and acts on it when it can.
 *
 * Requests. llhttp parses what arrives, straight from one shared read buffer; the request line and
 * headers are copied into the connection's head buffer (reused, never zeroed), the body into r->body.
 * The parser pauses at the end of each request: pipelined bytes wait in the connection's input buffer
 * until the answer is queued. A request waiting for a proposal or a watch is just a connection whose
 * handler has not answered yet; meanwhile we keep reading (bounded) so that a hang-up is seen at once.
 *
 * Answers. The status line and headers are assembled in one buffer, the body copied behind them or
 * referenced (http_reply_ref()), and everything queued for a connection leaves in one sendmsg() of
 * iovecs. Answers given outside the connection's own io callback (a proposal's result, a watch event)
 * are flushed from one defer source for all such connections; handlers' calls into the layer never
 * call back into handlers, and connections are freed only from that defer source.
 *
 * Limits and timeouts are per service (HttpLimits); one sweep timer closes connections past their
 * deadline (idle keep-alive, slow head, slow body, lingering close).
 *
 * TLS. A connection accepted on a TLS listener has a GnuTLS session on its socket and starts in
 * CONN_HANDSHAKE: the handshake runs non-blocking, a step whenever epoll says the socket moved, and a
 * handshake not done by the head deadline is closed like a slow head, so that a stalled client costs a
 * connection slot, never the loop. A failed handshake (no or a bad client certificate, plain HTTP) just
 * closes the connection, as etcd2 and etcd 3.4 do (no "400 ... HTTP request to an HTTPS server"). Afterwards only the three places that touch the socket
 * differ: conn_read() (gnutls_record_recv(), read until GnuTLS says EAGAIN: a record holds at most 16 KiB
 * and GnuTLS may keep decrypted bytes, so a short read says nothing about the socket), and conn_write()
 * for both flushes (small segments gathered into one record, large ones sent from where they are; a
 * send that would block is finished by calling gnutls_record_send() again with no data).
 */

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <llhttp.h>

#include "http-server.h"
#include "tls.h"
#include "log.h"
#include "macro.h"

#define HTTP_READ_BUFFER ((size_t) 64 * 1024)
#define HTTP_EPOLL_BATCH 256
#define HTTP_ACCEPT_BATCH 64
#define HTTP_ACCEPT_RETRY_USEC (100 * USEC_PER_MSEC)
#define HTTP_IOV_MAX 64
/* Stop reading requests (pipelined or new) while this much of our answers is not yet written: a client
 * that does not read its answers cannot make us buffer without bound. */
#define HTTP_OUT_HIGH ((size_t) 256 * 1024)
/* Pipelined bytes kept while a request is being answered; beyond, we stop reading the socket. */
#define HTTP_IN_MAX ((size_t) 256 * 1024)
/* Bodies at least this large are referenced by http_reply_ref(), smaller ones copied. */
#define HTTP_COPY_MAX ((size_t) 16 * 1024)
/* Buffers larger than this are freed when the connection goes idle (idle connections stay small). */
#define HTTP_KEEP_BUFFER ((size_t) 16 * 1024)
/* Lingering close: a connection closed with unread input is drained this long / this much at most. */
#define HTTP_LINGER_USEC (5 * USEC_PER_SEC)
#define HTTP_LINGER_BYTES_MAX ((uint64_t) 64 * 1024 * 1024)
/* Refused connections (over a cap) get their 503 with a lingering close while at most this many. */
#define HTTP_REFUSED_MAX 64u
/* A flush of at least this many connections at once (a watch event to many watchers, the answers to a
 * commit of many writes) is written by two threads, half of the sockets each (see HttpSender). */
#define HTTP_PARALLEL_MIN 64
/* Plaintext per TLS record (TLS's maximum): small segments are gathered up to this into one record. */
#define HTTP_TLS_RECORD ((size_t) 16 * 1024)

typedef enum ConnState {
        CONN_HANDSHAKE,          /* TLS: the handshake is under way (no request yet) */
        CONN_IDLE,               /* between requests (or before the first) */
        CONN_HEAD,               /* reading a request head */
        CONN_BODY,               /* reading a request body */
        CONN_HANDLING,           /* the request is with its handler; its answer may be going out */
        CONN_UPGRADING,          /* the 101 is going out, then the socket is handed over */
        CONN_CLOSING,            /* the last answer is going out, then close */
        CONN_LINGER,             /* our side is shut down; draining the client's input until EOF */
        CONN_DEAD,               /* closed, waiting to be freed */
} ConnState;

typedef struct HttpSeg {
        const char *ext;         /* NULL: bytes at `off` of the connection's out buffer */
        size_t off, len;
        void (*release)(void *userdata);
        void *userdata;
} HttpSeg;

typedef struct HttpHeaderRef {
        uint32_t name, value;    /* offsets into the head buffer */
} HttpHeaderRef;

typedef struct HttpListener {
        HttpService *service;
        int fd;
        bool tls;
        sd_event_source *source;
} HttpListener;

struct HttpConn {
        HttpService *service;
        HttpConn *prev, *next;           /* the service's connections */
        HttpConn *work_next;             /* the server's work list (flush, next request) */
        HttpConn *dead_next;
        int fd;
        gnutls_session_t tls;            /* NULL: plain TCP */
        bool tls_again;                  /* a record send would have blocked: finish it before more */
        ConnState state;
        bool readable, writable;         /* as last told by epoll, until EAGAIN */
        bool on_work_list;
        bool busy;                       /* conn_process() is running for it */
        bool again;
        bool refused;                    /* over a cap: a 503 only */
        bool close_after;                /* close once the current answer is out */
        bool keep_alive;                 /* the client's choice, from the head */
        bool req_active;                 /* begin() called, done() not yet */
        bool handled;                    /* handle() called */
        bool answer_complete;            /* the answer is fully queued */
        bool streaming;                  /* a streamed answer is open */
        bool stream_chunked;
        bool stream_raw_close;           /* streamed without length to an HTTP/1.0 client: ends by close */
        bool discard_body;
        bool parse_stopped;              /* the parser must not see more input (refusal, upgrade) */
        bool drained_wanted;
        bool continue_sent;
        bool read_eof;                   /* the client closed its sending side */
        bool rdhup;                      /* epoll said so (EPOLLRDHUP): read on to the end */
        uint64_t deadline_usec;
        uint64_t lingered;
        size_t sent;                     /* conn_send_raw()'s outcome, for the main thread */
        int send_errno;

        llhttp_t parser;
        struct sockaddr_storage peer;
        socklen_t peer_len;

        HttpBuf in;                      /* unparsed input: pipelined requests, extra after an upgrade */
        HttpBuf head;                    /* method, target, header names and values, NUL-terminated */
        HttpHeaderRef *hdrs;
        size_t n_hdrs, hdrs_alloc;
        const char **hdr_ptrs;           /* name, value pairs resolved at headers-complete */
        size_t hdr_ptrs_alloc;
        bool in_field, value_open;
        unsigned refuse_status;          /* 414 or 431 from a callback, for conn_feed() */
        char method[24];                 /* an extension method llhttp does not know (see conn_feed()) */
        size_t uri_off, uri_len;
        size_t head_bytes;

        HttpBuf rhdrs;                   /* response headers of the answer being prepared */
        HttpBuf out;                     /* bytes of queued answers */
        HttpSeg *segs;
        size_t n_segs, segs_alloc, seg_first, seg_first_done;
        size_t out_pending;

        HttpTakenFunc taken;
        void *taken_userdata;

        HttpRequest req;
        max_align_t data[];              /* the handler's per-request state */
};

struct HttpService {
        HttpServer *server;
        char *name;
        const HttpHandler *handler;
        void *userdata;
        HttpLimits limits;
        HttpConn *conns;
        unsigned n_conns;
        unsigned n_refused;
        HttpListener **listeners;
        size_t n_listeners;
        gnutls_certificate_credentials_t tls_cred;
        bool tls_verify_client;
        uint64_t tls_log_window_usec;    /* refused handshakes: logged at most TLS_LOG_BURST a minute */
        unsigned n_tls_logged, n_tls_suppressed;
};

/*
 * The second thread of large flushes. Writing to loopback or a LAN, sendmsg() is the cost of an answer
 * (the kernel's TCP work, the receiver's wake-up): 1000 watchers notified of one event are 1000 of them
 * in a row, about 10 us each here. Go's server spreads them over its cores; we give half of a large
 * batch to this thread. It runs only conn_send_raw() (system calls on sockets and buffers the main thread
 * does not touch meanwhile); the main thread waits for it, then applies the outcomes itself.
 */
typedef struct HttpSender {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        HttpConn **items;
        size_t n;
        bool started, work, stop;
} HttpSender;

struct HttpServer {
        sd_event *event;
        int epoll_fd;
        sd_event_source *epoll_source, *work_source, *sweep_source, *accept_retry;
        uint64_t sweep_usec;
        HttpService **services;
        size_t n_services;
        HttpConn *work;                  /* connections to flush or to go on with */
        HttpConn **batch, **cand;        /* on_work()'s arrays */
        size_t batch_alloc;
        HttpSender sender;
        HttpConn *dead;
        char *rbuf;
        llhttp_settings_t settings;
        char date[64];
        size_t date_len;
        time_t date_sec;
};

static void conn_process(HttpConn *c);
static void conn_close(HttpConn *c);
static void conn_send_raw(HttpConn *c);
static void conn_advance(HttpConn *c, size_t k);

/* --- small helpers ---------------------------------------------------------------------------- */

const char *http_status_text(unsigned status) {
        switch (status) {
        case 100: return "Continue";
        case 101: return "Switching Protocols";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 304: return "Not Modified";
        case 307: return "Temporary Redirect";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 410: return "Gone";
        case 411: return "Length Required";
        case 412: return "Precondition Failed";
        case 413: return "Request Entity Too Large";
        case 414: return "Request URI Too Long";
        case 415: return "Unsupported Media Type";
        case 417: return "Expectation Failed";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        default: return "";
        }
}

static uint64_t server_now(HttpServer *h) {
        uint64_t now = 0;

        (void) sd_event_now(h->event, CLOCK_MONOTONIC, &now);
        return now;
}

/* Go's http.TimeFormat, cached per second. */
static const char *date_header(HttpServer *h, size_t *ret_len) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME_COARSE, &ts);
        if (ts.tv_sec != h->date_sec || h->date_len == 0) {
                struct tm tm;

                h->date_sec = ts.tv_sec;
                if (!gmtime_r(&ts.tv_sec, &tm))
                        h->date_len = 0;
                else
                        h->date_len = strftime(h->date, sizeof h->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        }
        *ret_len = h->date_len;
        return h->date;
}

static char *format_u64(char *end, uint64_t v, unsigned base) {
        /* writes backwards from end (exclusive); returns the start */
        do {
                *--end = "0123456789abcdef"[v % base];
                v /= base;
        } while (v > 0);
        return end;
}

/* --- the work list (flush and go on, from one defer source) ------------------------------------ */

static void conn_schedule(HttpConn *c) {
        HttpServer *h = c->service->server;

        if (c->on_work_list || c->state == CONN_DEAD)
                return;
        c->on_work_list = true;
        c->work_next = h->work;
        h->work = c;
        (void) sd_event_source_set_enabled(h->work_source, SD_EVENT_ONESHOT);
}

static void conn_free(HttpConn *c) {
        if (c->tls)
                gnutls_deinit(c->tls);
        http_buf_done(&c->in);
        http_buf_done(&c->head);
        http_buf_done(&c->rhdrs);
        http_buf_done(&c->out);
        http_buf_done(&c->req.body);
        free(c->hdrs);
        free(c->hdr_ptrs);
        free(c->segs);
        free(c);
}

static void *sender_main(void *userdata) {
        HttpSender *t = userdata;

        (void) pthread_mutex_lock(&t->lock);
        for (;;) {
                while (!t->work && !t->stop)
                        (void) pthread_cond_wait(&t->cond, &t->lock);
                if (t->stop)
                        break;
                (void) pthread_mutex_unlock(&t->lock);
                for (size_t i = 0; i < t->n; i++)
                        conn_send_raw(t->items[i]);
                (void) pthread_mutex_lock(&t->lock);
                t->work = false;
                (void) pthread_cond_broadcast(&t->cond);
        }
        (void) pthread_mutex_unlock(&t->lock);
        return NULL;
}

static bool sender_start(HttpSender *t) {
        sigset_t all, old;
        int r;

        if (t->started)
                return true;
        (void) pthread_mutex_init(&t->lock, NULL);
        (void) pthread_cond_init(&t->cond, NULL);
        /* the thread takes no signals: they belong to the event loop */
        sigfillset(&all);
        (void) pthread_sigmask(SIG_SETMASK, &all, &old);
        r = pthread_create(&t->thread, NULL, sender_main, t);
        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r != 0) {
                log_debug_errno(-r, "Failed to start the HTTP sender thread, writing on one thread: %m");
                (void) pthread_cond_destroy(&t->cond);
                (void) pthread_mutex_destroy(&t->lock);
                return false;
        }
        (void) pthread_setname_np(t->thread, "http-sender");
        t->started = true;
        return true;
}

static void sender_stop(HttpSender *t) {
        if (!t->started)
                return;
        (void) pthread_mutex_lock(&t->lock);
        t->stop = true;
        (void) pthread_cond_broadcast(&t->cond);
        (void) pthread_mutex_unlock(&t->lock);
        (void) pthread_join(t->thread, NULL);
        (void) pthread_cond_destroy(&t->cond);
        (void) pthread_mutex_destroy(&t->lock);
        t->started = false;
}

/* Writes the queued output of v[0..n) on two threads, then applies the outcomes here. */
static void flush_parallel(HttpServer *h, HttpConn **v, size_t n) {
        HttpSender *t = &h->sender;
        size_t half = n / 2;

        if (!sender_start(t))
                return;
        (void) pthread_mutex_lock(&t->lock);
        t->items = v;
        t->n = half;
        t->work = true;
        (void) pthread_cond_broadcast(&t->cond);
        (void) pthread_mutex_unlock(&t->lock);

        for (size_t i = half; i < n; i++)
                conn_send_raw(v[i]);

        (void) pthread_mutex_lock(&t->lock);
        while (t->work)
                (void) pthread_cond_wait(&t->cond, &t->lock);
        (void) pthread_mutex_unlock(&t->lock);

        for (size_t i = 0; i < n; i++) {
                HttpConn *c = v[i];

                conn_advance(c, c->sent);
                if (c->send_errno == EAGAIN)
                        c->writable = false;
                /* other errors: conn_process()'s own flush meets them again and ends the connection */
        }
}

static int on_work(sd_event_source *s, void *userdata) {
        HttpServer *h = userdata;

        /* Connections scheduled while this runs are taken in the next round of the same pass. */
        while (h->work) {
                size_t n = 0, m = 0;

                for (HttpConn *c = h->work; c; c = c->work_next)
                        n++;
                if (n > h->batch_alloc) {
                        size_t a = MAX(n, h->batch_alloc * 2);
                        HttpConn **b = reallocarray(h->batch, a, sizeof(HttpConn *)),
                                 **d = b ? reallocarray(h->cand, a, sizeof(HttpConn *)) : NULL;

                        if (b)
                                h->batch = b;
                        if (d)
                                h->cand = d;
                        if (!b || !d) {
                                /* one at a time, as they come */
                                HttpConn *c = h->work;

                                h->work = c->work_next;
                                c->on_work_list = false;
                                if (c->state != CONN_DEAD)
                                        conn_process(c);
                                continue;
                        }
                        h->batch_alloc = a;
                }
                n = 0;
                for (HttpConn *c = h->work; c; c = c->work_next) {
                        h->batch[n++] = c;
                        if (c->state != CONN_DEAD && c->writable && c->seg_first < c->n_segs)
                                h->cand[m++] = c;
                }
                h->work = NULL;
                for (size_t i = 0; i < n; i++)
                        h->batch[i]->on_work_list = false;

                if (m >= HTTP_PARALLEL_MIN)
                        flush_parallel(h, h->cand, m);

                for (size_t i = 0; i < n; i++)
                        if (h->batch[i]->state != CONN_DEAD)
                                conn_process(h->batch[i]);
        }
        while (h->dead) {
                HttpConn *c = h->dead;

                h->dead = c->dead_next;
                conn_free(c);
        }
        return 0;
}

/* --- output ------------------------------------------------------------------------------------ */

static int segs_reserve(HttpConn *c) {
        if (c->n_segs < c->segs_alloc)
                return 0;
        if (c->seg_first > 0 && c->seg_first == c->n_segs) {
                c->n_segs = c->seg_first = 0;
                return 0;
        }
        size_t n = MAX(c->segs_alloc * 2, (size_t) 8);
        HttpSeg *t = reallocarray(c->segs, n, sizeof(HttpSeg));
        if (!t)
                return -ENOMEM;
        c->segs = t;
        c->segs_alloc = n;
        return 0;
}

/* Queues bytes (copied). */
static int out_append(HttpConn *c, const void *p, size_t n) {
        HttpSeg *last;
        size_t off = c->out.len;

        if (n == 0)
                return 0;
        if (http_buf_append(&c->out, p, n) < 0)
                return -ENOMEM;
        c->out_pending += n;
        last = c->n_segs > c->seg_first ? &c->segs[c->n_segs - 1] : NULL;
        if (last && !last->ext && last->off + last->len == off) {
                last->len += n;
                return 0;
        }
        if (segs_reserve(c) < 0) {
                c->out.len = off;
                c->out_pending -= n;
                return -ENOMEM;
        }
        c->segs[c->n_segs++] = (HttpSeg) { .off = off, .len = n };
        return 0;
}

static int out_append_str(HttpConn *c, const char *s) {
        return out_append(c, s, strlen(s));
}

/* Queues bytes by reference; release(userdata) once written or dropped. */
static int out_append_ref(HttpConn *c, const void *p, size_t n, void (*release)(void *), void *userdata) {
        if (n < HTTP_COPY_MAX || segs_reserve(c) < 0) {
                int r = out_append(c, p, n);
                if (release)
                        release(userdata);
                return r;
        }
        c->segs[c->n_segs++] = (HttpSeg) { .ext = p, .len = n, .release = release, .userdata = userdata };
        c->out_pending += n;
        return 0;
}

static void out_reset(HttpConn *c) {
        for (size_t i = c->seg_first; i < c->n_segs; i++)
                if (c->segs[i].release)
                        c->segs[i].release(c->segs[i].userdata);
        c->n_segs = c->seg_first = c->seg_first_done = 0;
        c->out_pending = 0;
        c->out.len = 0;
        if (c->out.alloc > HTTP_KEEP_BUFFER)
                http_buf_done(&c->out);
}

/* Writes what is queued, as far as the socket takes it. Returns -EPIPE (and the caller closes) on a
 * write error. */
/* Builds the iovecs of what is queued from segment `first` (of which `done` bytes are written). */
static size_t conn_iov(const HttpConn *c, size_t first, size_t done, struct iovec *iov) {
        size_t n = 0;

        for (size_t i = first; i < c->n_segs && n < HTTP_IOV_MAX; i++) {
                const HttpSeg *g = &c->segs[i];
                const char *base = g->ext ?: c->out.data + g->off;
                size_t skip = i == first ? done : 0;

                iov[n++] = (struct iovec) { .iov_base = (void *) (base + skip), .iov_len = g->len - skip };
        }
        return n;
}

/* Marks k more bytes as written: segments done are released. */
static void conn_advance(HttpConn *c, size_t k) {
        c->out_pending -= k;
        while (k > 0) {
                HttpSeg *g = &c->segs[c->seg_first];
                size_t left = g->len - c->seg_first_done;

                if (k < left) {
                        c->seg_first_done += k;
                        break;
                }
                k -= left;
                if (g->release)
                        g->release(g->userdata);
                g->release = NULL;
                c->seg_first++;
                c->seg_first_done = 0;
        }
}

/* Writes from segment `first` (`done` bytes of it written) like sendmsg(): bytes written, or -1 with
 * errno. Over TLS one record per call: small segments gathered, a large one sent from its place. Safe on
 * the sender thread (touches only the session and c->tls_again, which the main thread leaves alone while
 * it waits). */
static ssize_t conn_write(HttpConn *c, size_t first, size_t done) {
        struct iovec iov[HTTP_IOV_MAX];
        size_t n = conn_iov(c, first, done, iov);
        ssize_t k;

        if (!c->tls) {
                struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n };

                return sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n == 0)
                return 0; /* (not reached: called with something queued) */
        if (c->tls_again)
                /* GnuTLS holds the record it could not send: NULL, 0 sends that one (and returns its length) */
                k = gnutls_record_send(c->tls, NULL, 0);
        else if (n == 1 || iov[0].iov_len >= HTTP_TLS_RECORD)
                k = gnutls_record_send(c->tls, iov[0].iov_base, MIN(iov[0].iov_len, HTTP_TLS_RECORD));
        else {
                char buf[HTTP_TLS_RECORD];
                size_t m = 0;

                for (size_t i = 0; i < n && m < sizeof buf; i++) {
                        size_t take = MIN(iov[i].iov_len, sizeof buf - m);

                        memcpy(buf + m, iov[i].iov_base, take);
                        m += take;
                }
                k = gnutls_record_send(c->tls, buf, m);
        }
        if (k >= 0) {
                c->tls_again = false;
                return k;
        }
        if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED) {
                c->tls_again = true;
                errno = k == GNUTLS_E_AGAIN ? EAGAIN : EINTR;
                return -1;
        }
        errno = EPIPE;
        return -1;
}

/* The system-call half of a flush, safe on another thread: writes what is queued without touching
 * anything but c->sent and c->send_errno (the main thread applies them with conn_advance()). */
static void conn_send_raw(HttpConn *c) {
        size_t first = c->seg_first, done = c->seg_first_done;

        c->sent = 0;
        c->send_errno = 0;
        while (first < c->n_segs) {
                ssize_t k;

                k = conn_write(c, first, done);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        c->send_errno = errno;
                        return;
                }
                c->sent += (size_t) k;
                while (k > 0) {
                        size_t left = c->segs[first].len - done;

                        if ((size_t) k < left) {
                                done += (size_t) k;
                                break;
                        }
                        k -= (ssize_t) left;
                        first++;
                        done = 0;
                }
        }
}

static int conn_flush(HttpConn *c) {
        while (c->seg_first < c->n_segs) {
                ssize_t k;

                if (!c->writable)
                        return 0;
                k = conn_write(c, c->seg_first, c->seg_first_done);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                c->writable = false;
                                return 0;
                        }
                        return -EPIPE;
                }
                conn_advance(c, (size_t) k);
        }
        c->n_segs = c->seg_first = c->seg_first_done = 0;
        c->out.len = 0;
        if (c->out.alloc > HTTP_KEEP_BUFFER)
                http_buf_done(&c->out);
        return 0;
}

/* A refusal of the layer's own (malformed request, limits), as Go's server answers them: the text
 * ("400 Bad Request", maybe with a detail) as status line and as body, no length, the connection closes. */
static void conn_refuse(HttpConn *c, const char *text) {
        char buf[256];
        int n;

        n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%s",
                     text, text);
        if (n > 0)
                (void) out_append(c, buf, MIN((size_t) n, sizeof buf - 1));
        c->parse_stopped = true;
        c->close_after = true;
        if (c->state != CONN_HANDLING)
                c->state = CONN_CLOSING;
}

/* --- requests: the parser's callbacks ----------------------------------------------------------- */

static HttpConn *parser_conn(llhttp_t *p) {
        return p->data;
}

static int head_grow(HttpConn *c, size_t n) {
        const HttpLimits *l = &c->service->limits;

        c->head_bytes += n;
        if (c->head_bytes > l->head_max) {
                c->refuse_status = 431;
                return -1;
        }
        return 0;
}

static int on_message_begin(llhttp_t *p) {
        HttpConn *c = parser_conn(p);

        c->state = CONN_HEAD;
        c->deadline_usec = server_now(c->service->server) + c->service->limits.head_timeout_usec;
        c->head.len = 0;
        c->n_hdrs = 0;
        c->in_field = c->value_open = false;
        c->refuse_status = 0;
        c->uri_off = c->uri_len = 0;
        c->head_bytes = 0;
        c->req.content_length = -1;
        return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
        HttpConn *c = parser_conn(p);
        size_t max = c->service->limits.uri_max;

        if (max > 0 && c->uri_len + n > max) {
                c->refuse_status = 414;
                return -1;
        }
        if (head_grow(c, n) < 0 || http_buf_append(&c->head, at, n) < 0)
                return -1;
        c->uri_len += n;
        return 0;
}

static int on_url_complete(llhttp_t *p) {
        HttpConn *c = parser_conn(p);

        /* NUL between the target and the first header name */
        return http_buf_append(&c->head, "", 1) < 0 ? -1 : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
        HttpConn *c = parser_conn(p);

        /* Fields after a chunked body (its trailer) come through these callbacks too, once the request's
         * header pointers are made and handed out: Go keeps them apart (Request.Trailer, which etcd2 never
         * reads); we drop them. Counting them in would let http_request_header_at() read past hdr_ptrs,
         * and growing c->head could move the buffer the pointers point into (found by fuzz-http-server). */
        if (c->state != CONN_HEAD)
                return 0;

        if (head_grow(c, n + 4) < 0)
                return -1;
        if (!c->in_field) {
                /* a new header; an empty value before it gets its NUL now */
                if (c->value_open) {
                        if (http_buf_append(&c->head, "", 1) < 0)
                                return -1;
                        c->value_open = false;
                }
                if (c->n_hdrs == c->hdrs_alloc) {
                        size_t m = MAX(c->hdrs_alloc * 2, (size_t) 16);
                        HttpHeaderRef *t = reallocarray(c->hdrs, m, sizeof(HttpHeaderRef));
                        if (!t)
                                return -1;
                        c->hdrs = t;
                        c->hdrs_alloc = m;
                }
                c->hdrs[c->n_hdrs++] = (HttpHeaderRef) { .name = (uint32_t) c->head.len };
                c->in_field = true;
        }
        return http_buf_append(&c->head, at, n) < 0 ? -1 : 0;
}

static int on_header_field_complete(llhttp_t *p) {
        HttpConn *c = parser_conn(p);

        if (c->state != CONN_HEAD)
                return 0;       /* a chunked body's trailer: ignored (see on_header_field()) */

        if (!c->in_field || http_buf_append(&c->head, "", 1) < 0)
                return -1;
        c->hdrs[c->n_hdrs - 1].value = (uint32_t) c->head.len;
        c->in_field = false;
        c->value_open = true;
        return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
        HttpConn *c = parser_conn(p);

        if (c->state != CONN_HEAD)
                return 0;       /* a chunked body's trailer: ignored (see on_header_field()) */

        if (!c->value_open || head_grow(c, n) < 0)
                return -1;
        return http_buf_append(&c->head, at, n) < 0 ? -1 : 0;
}

static int on_header_value_complete(llhttp_t *p) {
        HttpConn *c = parser_conn(p);

        if (c->state != CONN_HEAD)
                return 0;       /* a chunked body's trailer: ignored (see on_header_field()) */

        if (!c->value_open)
                return -1;
        /* Go's textproto trims the value's trailing blanks too. */
        while (c->head.len > c->hdrs[c->n_hdrs - 1].value &&
               (c->head.data[c->head.len - 1] == ' ' || c->head.data[c->head.len - 1] == '\t'))
                c->head.len--;
        if (http_buf_append(&c->head, "", 1) < 0)
                return -1;
        c->value_open = false;
        return 0;
}

static int on_headers_complete(llhttp_t *p) {
        HttpConn *c = parser_conn(p);
        HttpService *s = c->service;
        HttpRequest *r = &c->req;
        const char *expect;
        HttpBodyMode mode;
        bool has_body;

        if (c->in_field)
                return -1;
        if (c->value_open) {
                /* the last header's value was empty */
                if (http_buf_append(&c->head, "", 1) < 0)
                        return -1;
                c->value_open = false;
        }
        if (c->uri_len == 0 || c->head.len == 0)
                return -1;

        if (c->hdr_ptrs_alloc < c->n_hdrs * 2) {
                const char **t = reallocarray(c->hdr_ptrs, c->n_hdrs * 2, sizeof(char *));
                if (!t)
                        return -1;
                c->hdr_ptrs = t;
                c->hdr_ptrs_alloc = c->n_hdrs * 2;
        }
        for (size_t i = 0; i < c->n_hdrs; i++) {
                c->hdr_ptrs[2 * i] = c->head.data + c->hdrs[i].name;
                c->hdr_ptrs[2 * i + 1] = c->head.data + c->hdrs[i].value;
        }

        *r = (HttpRequest) {
                .conn = c,
                .service = s,
                .data = c->data,
                .userdata = s->userdata,
                .method = c->method[0] ? c->method : llhttp_method_name(p->method),
                .uri = c->head.data + c->uri_off,
                .uri_len = c->uri_len,
                .http_major = p->http_major,
                .http_minor = p->http_minor,
                .content_length = (p->flags & F_CONTENT_LENGTH) ? (int64_t) p->content_length : -1,
                .chunked = (p->flags & F_CHUNKED) != 0,
                .body = r->body,
                .head = !c->method[0] && p->method == HTTP_HEAD,
        };
        r->body.len = 0;
        if (r->body.data)
                r->body.data[0] = 0;
        /* Go's server (since 1.6) refuses HTTP/1.1 requests without a Host header. */
        if (r->http_major == 1 && r->http_minor >= 1 && !http_request_header(r, "Host")) {
                conn_refuse(c, "400 Bad Request: missing required Host header");
                return HPE_PAUSED;
        }
        /* Go reads exactly one coding, "chunked"; lists and other codings are refused (501), where llhttp
         * takes any list that ends in chunked. */
        if (p->flags & F_TRANSFER_ENCODING) {
                const char *te = http_request_header(r, "Transfer-Encoding");

                if (!te || strcasecmp(te, "chunked") != 0) {
                        conn_refuse(c, "501 Not Implemented: unsupported transfer encoding");
                        return HPE_PAUSED;
                }
        }
        c->keep_alive = llhttp_should_keep_alive(p);
        c->close_after = false;
        c->handled = c->answer_complete = c->streaming = c->stream_chunked = c->stream_raw_close = false;
        c->continue_sent = c->drained_wanted = false;
        has_body = r->chunked || r->content_length > 0;

        if (s->handler->data_size > 0)
                memset(c->data, 0, s->handler->data_size);
        c->req_active = true;
        mode = s->handler->begin ? s->handler->begin(r) : HTTP_BODY_READ;
        c->discard_body = mode == HTTP_BODY_DISCARD;

        if (c->taken) {
                /* http_upgrade(): what follows the head belongs to the new protocol. */
                c->parse_stopped = true;
                return HPE_PAUSED;
        }
        /* Only http_upgrade() upgrades; otherwise Upgrade headers mean nothing (as in Go's server). */
        p->upgrade = 0;

        if (r->answered) {
                if (has_body) {
                        /* Answered without reading the announced body: close after the answer. */
                        c->close_after = true;
                        c->parse_stopped = true;
                        return HPE_PAUSED;
                }
                return 0;
        }

        if (has_body) {
                c->state = CONN_BODY;
                if (s->limits.body_timeout_usec > 0)
                        c->deadline_usec = server_now(s->server) + s->limits.body_timeout_usec;
                else
                        c->deadline_usec = UINT64_MAX;
                expect = http_request_header(r, "Expect");
                if (expect && r->http_major == 1 && r->http_minor >= 1) {
                        if (strcasecmp(expect, "100-continue") != 0) {
                                conn_refuse(c, "417 Expectation Failed");
                                return HPE_PAUSED;
                        }
                        (void) out_append_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
                        c->continue_sent = true;
                }
        }
        return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
        HttpConn *c = parser_conn(p);
        HttpRequest *r = &c->req;

        if (c->discard_body || r->body_too_large || r->answered)
                return 0;
        if (r->body.len + n > c->service->limits.body_max) {
                r->body_too_large = true;
                http_buf_done(&r->body);
                return 0;
        }
        return http_buf_append(&r->body, at, n) < 0 ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
        HttpConn *c = parser_conn(p);

        c->state = CONN_HANDLING;
        c->deadline_usec = UINT64_MAX;
        return HPE_PAUSED;
}

/* --- requests: lifecycle ------------------------------------------------------------------------ */

/* done() for the request, if it is still with its handler. */
static void request_finish(HttpConn *c) {
        const HttpHandler *hd = c->service->handler;

        if (!c->req_active)
                return;
        c->req_active = false;
        if (hd->done)
                hd->done(&c->req);
        c->req.body.len = 0;
        if (c->req.body.alloc > HTTP_KEEP_BUFFER)
                http_buf_done(&c->req.body);
        c->req.answered = false;
}

/* The answer is queued: release the request; go on with the next one, or close. */
static void conn_answer_done(HttpConn *c) {
        HttpService *s = c->service;

        c->answer_complete = false;
        request_finish(c);

        if (c->taken) {
                c->state = CONN_UPGRADING;
                return;
        }
        if (c->close_after || !c->keep_alive) {
                c->close_after = true;
                c->state = CONN_CLOSING;
                return;
        }
        c->state = CONN_IDLE;
        c->deadline_usec = server_now(s->server) + s->limits.idle_timeout_usec;
        if (c->head.alloc > HTTP_KEEP_BUFFER) {
                http_buf_done(&c->head);
                free(c->hdrs);
                c->hdrs = NULL;
                c->hdrs_alloc = 0;
                free(c->hdr_ptrs);
                c->hdr_ptrs = NULL;
                c->hdr_ptrs_alloc = 0;
        }
        if (llhttp_get_errno(&c->parser) == HPE_PAUSED)
                llhttp_resume(&c->parser);
}

static bool is_tchar(char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Does llhttp know this method? */
static bool method_known(const char *m, size_t n) {
        static const char *const names[] = {
#define XX(num, name, string) #string,
                HTTP_METHOD_MAP(XX)
#undef XX
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strlen(names[i]) == n && memcmp(names[i], m, n) == 0)
                        return true;
        return false;
}

/* Go's server takes any token as a method (and the handlers answer 405); llhttp knows a fixed list.
 * A request that starts with another token gets parsed as a GET, with its own method kept for the
 * handler. Only the method token is looked at here; llhttp parses the rest of the request line. */
static size_t extension_method(HttpConn *c, const char *data, size_t n) {
        const char *sp = memchr(data, ' ', MIN(n, sizeof c->method));
        size_t l;

        c->method[0] = 0;
        if (!sp || sp == data)
                return 0;
        l = (size_t) (sp - data);
        if (l + 1 < n && data[l + 1] == ' ')
                return 0; /* two spaces after the method: llhttp would take it, Go refuses it (below) */
        for (size_t i = 0; i < l; i++)
                if (!is_tchar(data[i]))
                        return 0;
        if (method_known(data, l))
                return 0;
        if (llhttp_execute(&c->parser, "GET", 3) != HPE_OK)
                return 0;
        memcpy(c->method, data, l);
        c->method[l] = 0;
        return l;
}

/* Feeds input to the parser; whatever it leaves (after a complete request) goes to c->in. */
static void conn_feed(HttpConn *c, const char *data, size_t n) {
        HttpService *s = c->service;
        llhttp_errno_t e;
        const char *pos;

        if (c->state == CONN_IDLE && n > 0) {
                size_t skip;

                c->state = CONN_HEAD; /* on_message_begin() sets the deadline */
                skip = extension_method(c, data, n);
                data += skip;
                n -= skip;
                /* Go splits the request line at single spaces: "GET  /" is malformed there, not in llhttp */
                if (skip > 0 && n >= 2 && data[0] == ' ' && data[1] == ' ') {
                        conn_refuse(c, "400 Bad Request");
                        return;
                }
                if (!skip) {
                        const char *sp = memchr(data, ' ', MIN(n, sizeof c->method));
                        if (sp && (size_t) (sp - data) + 1 < n && sp[1] == ' ') {
                                conn_refuse(c, "400 Bad Request");
                                return;
                        }
                }
        }

        e = llhttp_execute(&c->parser, data, n);
        if (e == HPE_OK)
                return;

        if (e == HPE_PAUSED) {
                pos = llhttp_get_error_pos(&c->parser);
                if (!pos || pos > data + n)
                        pos = data + n;
                if (c->taken) {
                        /* http_upgrade() from begin(): the rest is the new protocol's */
                        (void) http_buf_append(&c->in, pos, (size_t) (data + n - pos));
                        c->state = CONN_UPGRADING;
                        return;
                }
                if (c->parse_stopped) {
                        /* answered by begin() with a body unread, or refused by the layer: no more
                         * parsing, close after the answer */
                        if (c->req_active && !c->req.answered)
                                request_finish(c);
                        c->state = c->req_active ? CONN_HANDLING : CONN_CLOSING;
                        return;
                }
                (void) http_buf_append(&c->in, pos, (size_t) (data + n - pos));
                /* A complete request. */
                c->state = CONN_HANDLING;
                if (!c->req.answered && !c->handled) {
                        c->handled = true;
                        if (s->handler->handle)
                                s->handler->handle(&c->req);
                        else
                                http_reply(&c->req, 404, "text/plain; charset=utf-8", "404 page not found\n", 19);
                }
                return;
        }

        /* A malformed request (or one past our limits): Go's answers, then close. */
        if (c->req_active && !c->handled) {
                /* begin() was called: the handler releases it, nothing was started. */
                c->req.answered = true;
                request_finish(c);
        }
        c->state = CONN_IDLE;
        if (e == HPE_USER || e == HPE_CB_URL_COMPLETE || e == HPE_CB_HEADER_FIELD_COMPLETE ||
            e == HPE_CB_HEADER_VALUE_COMPLETE || e == HPE_CB_HEADERS_COMPLETE || e == HPE_CB_MESSAGE_BEGIN) {
                if (c->refuse_status == 431)
                        conn_refuse(c, "431 Request Header Fields Too Large");
                else if (c->refuse_status == 414)
                        conn_refuse(c, "414 Request URI Too Long");
                else
                        conn_refuse(c, "400 Bad Request");
        } else if (e == HPE_INVALID_TRANSFER_ENCODING)
                conn_refuse(c, "501 Not Implemented: unsupported transfer encoding");
        else if (e == HPE_INVALID_VERSION)
                conn_refuse(c, "505 HTTP Version Not Supported");
        else
                conn_refuse(c, "400 Bad Request");
        log_debug("Refusing a malformed HTTP request (%s: %s).", llhttp_errno_name(e),
                  strempty(llhttp_get_error_reason(&c->parser)));
}

/* --- connections -------------------------------------------------------------------------------- */

static void conn_hangup(HttpConn *c) {
        const HttpHandler *hd = c->service->handler;

        if (c->req_active) {
                c->req.hung_up = true;
                if (c->handled && hd->hangup)
                        (void) hd->hangup(&c->req);
                request_finish(c);
        }
        conn_close(c);
}

static void conn_unlink(HttpConn *c) {
        HttpService *s = c->service;

        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->prev = c->next = NULL;
        if (c->refused)
                s->n_refused--;
        else
                s->n_conns--;
}

/* Closes at once (the request, if any, must be finished). */
static void conn_close(HttpConn *c) {
        HttpServer *h = c->service->server;

        if (c->state == CONN_DEAD)
                return;
        request_finish(c);
        if (c->taken) {
                /* an upgrade that will not happen: its owner still hears of it */
                HttpTakenFunc taken = TAKE_PTR(c->taken);
                taken(-1, NULL, NULL, 0, c->taken_userdata);
        }
        out_reset(c);
        if (c->fd >= 0) {
                (void) epoll_ctl(h->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
                (void) close(c->fd);
                c->fd = -1;
        }
        if (c->tls) {
                gnutls_deinit(c->tls);
                c->tls = NULL;
        }
        conn_unlink(c);
        c->state = CONN_DEAD;
        c->dead_next = h->dead;
        h->dead = c;
        (void) sd_event_source_set_enabled(h->work_source, SD_EVENT_ONESHOT);
}

/* The last answer is out: close, lingering if the client is still sending (so it reads our answer
 * instead of a reset). */
static void conn_close_gracefully(HttpConn *c) {
        int pending = 0;

        if (c->in.len == 0 && c->lingered == 0 && !c->readable &&
            (ioctl(c->fd, FIONREAD, &pending) < 0 || pending == 0)) {
                conn_close(c);
                return;
        }
        if (c->tls)
                (void) gnutls_bye(c->tls, GNUTLS_SHUT_WR); /* close_notify, if the socket takes it now */
        (void) shutdown(c->fd, SHUT_WR);
        c->state = CONN_LINGER;
        c->lingered = 0;
        c->in.len = 0;
        c->deadline_usec = server_now(c->service->server) + HTTP_LINGER_USEC;
}

static void conn_upgrade_now(HttpConn *c) {
        HttpServer *h = c->service->server;
        HttpTakenFunc taken = c->taken;
        void *userdata = c->taken_userdata;
        HttpBuf extra = c->in;
        gnutls_session_t tls = c->tls;
        int fd = c->fd;

        /* Over TLS the session goes with the socket (the 101 is out: GnuTLS holds nothing to send; what
         * it decrypted after the head is in `extra`, what it still buffers is the new owner's to read). */
        c->in = (HttpBuf) {};
        c->taken = NULL;
        c->tls = NULL;
        request_finish(c);
        (void) epoll_ctl(h->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        c->fd = -1;
        conn_close(c);
        taken(fd, tls, extra.data, extra.len, userdata);
        http_buf_done(&extra);
}

/* Reads like recv(): bytes, 0 at the end, or -1 with errno. Over TLS, the end of the stream without a
 * close_notify is an end too (clients that just close); a lingering connection is drained raw. */
static ssize_t conn_read(HttpConn *c, void *buf, size_t size) {
        if (!c->tls || c->state == CONN_LINGER)
                return recv(c->fd, buf, size, MSG_DONTWAIT);
        return tls_recv(c->tls, buf, size, "a client", NULL);
}

#define TLS_LOG_BURST 10

static void conn_log_tls_refusal(HttpService *s, const char *ip, const char *why) {
        uint64_t now = server_now(s->server);

        if (s->tls_log_window_usec == 0 || s->tls_log_window_usec + 60 * USEC_PER_SEC <= now) {
                if (s->n_tls_suppressed > 0)
                        log_info("%u more rejected TLS connections on the %s port in the last minute.",
                                 s->n_tls_suppressed, s->name);
                s->tls_log_window_usec = now;
                s->n_tls_logged = s->n_tls_suppressed = 0;
        }
        if (s->n_tls_logged >= TLS_LOG_BURST) {
                s->n_tls_suppressed++;
                return;
        }
        s->n_tls_logged++;
        log_info("Rejected a TLS connection to the %s port from %s: %s", s->name, ip, why);
}

/* One step of a TLS handshake (CONN_HANDSHAKE): on success the connection waits for its first request;
 * a failure (no or a bad client certificate, not TLS at all) closes it, and only it. */
static void conn_handshake(HttpConn *c) {
        int r;

        for (;;) {
                r = gnutls_handshake(c->tls);
                if (r == GNUTLS_E_INTERRUPTED)
                        continue;
                break;
        }
        if (r == GNUTLS_E_AGAIN) {
                /* wait for the direction it blocked on; epoll (edge-triggered) tells when it moves */
                if (gnutls_record_get_direction(c->tls) == 0)
                        c->readable = false;
                else
                        c->writable = false;
                return;
        }
        if (r < 0) {
                char ip[INET6_ADDRSTRLEN] = "?";

                if (c->peer.ss_family == AF_INET)
                        (void) inet_ntop(AF_INET, &((struct sockaddr_in *) &c->peer)->sin_addr, ip, sizeof ip);
                else if (c->peer.ss_family == AF_INET6)
                        (void) inet_ntop(AF_INET6, &((struct sockaddr_in6 *) &c->peer)->sin6_addr, ip, sizeof ip);
                /* Go's server logs these ("http: TLS handshake error from ...", etcd 3.4 "rejected
                 * connection from ..."): a peer with a wrong certificate is worth telling, a flood not */
                conn_log_tls_refusal(c->service, ip, gnutls_strerror(r));
                (void) gnutls_alert_send_appropriate(c->tls, r); /* if the socket takes it now */
                conn_close(c);
                return;
        }
        c->state = CONN_IDLE;
        c->readable = true; /* GnuTLS may hold the first request already (read with the client's Finished) */
}

/* Reads and parses what the state allows. */
static void conn_input(HttpConn *c) {
        HttpServer *h = c->service->server;

        for (;;) {
                ssize_t n;

                if (c->answer_complete && c->state == CONN_HANDLING)
                        conn_answer_done(c); /* answered at once: go on with what is pipelined */

                switch (c->state) {
                case CONN_DEAD:
                        return;
                case CONN_HANDLING:
                case CONN_UPGRADING:
                case CONN_CLOSING:
                        /* Keep what is pipelined (bounded) and notice a hang-up. */
                        if (!c->readable || c->read_eof || c->in.len >= HTTP_IN_MAX)
                                return;
                        break;
                case CONN_LINGER:
                        if (!c->readable)
                                return;
                        break;
                default:
                        if (c->parse_stopped)
                                return;
                        if (c->out_pending > HTTP_OUT_HIGH)
                                return; /* the client does not read its answers: wait */
                        if (c->in.len > 0) {
                                /* pipelined input first; the parser may leave a rest in c->in again */
                                HttpBuf b = c->in;

                                c->in = (HttpBuf) {};
                                conn_feed(c, b.data, b.len);
                                if (!c->in.data) {
                                        b.len = 0;
                                        c->in = b;
                                } else
                                        http_buf_done(&b);
                                continue;
                        }
                        if (!c->readable)
                                return;
                        break;
                }

                n = conn_read(c, h->rbuf, HTTP_READ_BUFFER);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                c->readable = false;
                                return;
                        }
                        conn_hangup(c);
                        return;
                }
                if (n == 0) {
                        const HttpHandler *hd = c->service->handler;

                        /* EOF. A request in the middle of its head or body is dropped (as Go does). */
                        if (c->state == CONN_CLOSING && c->out_pending > 0) {
                                /* the client half-closed: still give it the answer */
                                c->readable = false;
                                c->read_eof = true;
                                return;
                        }
                        if (c->state == CONN_HANDLING && c->req_active && c->handled && hd->hangup) {
                                c->req.hung_up = true;
                                if (hd->hangup(&c->req)) {
                                        /* answered all the same, then closed */
                                        c->readable = false;
                                        c->read_eof = true;
                                        c->close_after = true;
                                        c->keep_alive = false;
                                        return;
                                }
                                request_finish(c);
                        }
                        conn_hangup(c);
                        return;
                }
                /* A short read emptied the socket: with edge-triggered epoll, more data is a new event (but
                 * an end that came with the data is not: then read on until recv() says so). */
                if ((size_t) n < HTTP_READ_BUFFER && !c->rdhup && (!c->tls || c->state == CONN_LINGER))
                        c->readable = false;

                switch (c->state) {
                case CONN_LINGER:
                        c->lingered += (uint64_t) n;
                        if (c->lingered > HTTP_LINGER_BYTES_MAX) {
                                conn_close(c);
                                return;
                        }
                        break;
                case CONN_CLOSING:
                        c->lingered += (uint64_t) n; /* never parsed: only remembered for the close */
                        break;
                case CONN_HANDLING:
                case CONN_UPGRADING:
                        if (c->parse_stopped && !c->taken)
                                break; /* the unread body of a request answered early: dropped */
                        if (http_buf_append(&c->in, h->rbuf, (size_t) n) < 0) {
                                conn_hangup(c);
                                return;
                        }
                        break;
                default:
                        conn_feed(c, h->rbuf, (size_t) n);
                        break;
                }
        }
}

static void conn_process(HttpConn *c) {
        const HttpHandler *hd = c->service->handler;

        if (c->busy) {
                c->again = true;
                return;
        }
        c->busy = true;
        do {
                c->again = false;

                if (c->state == CONN_HANDSHAKE) {
                        conn_handshake(c);
                        if (c->state == CONN_HANDSHAKE || c->state == CONN_DEAD)
                                break;
                }
                if (c->answer_complete)
                        conn_answer_done(c);

                if (c->seg_first < c->n_segs) {
                        if (conn_flush(c) < 0) {
                                conn_hangup(c);
                                break;
                        }
                        if (c->seg_first == c->n_segs && c->drained_wanted && c->req_active && hd->drained) {
                                c->drained_wanted = false;
                                hd->drained(&c->req);
                        }
                }
                if (c->state == CONN_DEAD)
                        break;

                if (c->seg_first == c->n_segs) {
                        if (c->state == CONN_UPGRADING && c->taken && !c->req_active) {
                                conn_upgrade_now(c);
                                break;
                        }
                        if (c->state == CONN_CLOSING && !c->req_active) {
                                conn_close_gracefully(c);
                                if (c->state == CONN_DEAD)
                                        break;
                        }
                }

                conn_input(c);
                if (c->state == CONN_DEAD)
                        break;
                if (c->answer_complete || (c->seg_first < c->n_segs && c->writable))
                        c->again = true;
        } while (c->again);
        c->busy = false;
}

static int on_epoll(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        HttpServer *h = userdata;
        struct epoll_event evs[HTTP_EPOLL_BATCH];
        int n;

        n = epoll_wait(h->epoll_fd, evs, ELEMENTSOF(evs), 0);
        if (n < 0) {
                if (errno != EINTR && errno != EAGAIN)
                        log_warning_errno(-errno, "Failed to read connection events, ignoring: %m");
                return 0;
        }
        for (int i = 0; i < n; i++) {
                HttpConn *c = evs[i].data.ptr;

                if (c->state == CONN_DEAD)
                        continue;
                if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        c->readable = true;
                if (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        c->rdhup = true;
                if (evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                        c->writable = true;
                conn_process(c);
        }
        return 0;
}

/* --- timeouts ----------------------------------------------------------------------------------- */

static int on_sweep(sd_event_source *s, uint64_t usec, void *userdata) {
        HttpServer *h = userdata;
        uint64_t now = server_now(h);
        bool any = false;

        for (size_t i = 0; i < h->n_services; i++)
                for (HttpConn *c = h->services[i]->conns, *next; c; c = next) {
                        next = c->next;
                        any = true;
                        if (c->deadline_usec > now || c->busy)
                                continue;
                        switch (c->state) {
                        case CONN_HANDSHAKE:
                                log_debug("Closing a connection whose TLS handshake did not finish in time.");
                                conn_close(c);
                                break;
                        case CONN_IDLE:
                        case CONN_HEAD:
                        case CONN_BODY:
                                if (c->state != CONN_IDLE)
                                        log_debug("Closing a connection whose request did not arrive in time.");
                                conn_hangup(c);
                                break;
                        case CONN_LINGER:
                                conn_close(c);
                                break;
                        default:
                                break;
                        }
                }
        if (any) {
                (void) sd_event_source_set_time(s, now + h->sweep_usec);
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        }
        return 0;
}

static void sweep_arm(HttpServer *h) {
        int enabled = SD_EVENT_OFF;

        (void) sd_event_source_get_enabled(h->sweep_source, &enabled);
        if (enabled != SD_EVENT_OFF)
                return;
        (void) sd_event_source_set_time(h->sweep_source, server_now(h) + h->sweep_usec);
        (void) sd_event_source_set_enabled(h->sweep_source, SD_EVENT_ONESHOT);
}

/* --- accepting ---------------------------------------------------------------------------------- */

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
        if (a->ss_family != b->ss_family)
                return false;
        if (a->ss_family == AF_INET)
                return ((const struct sockaddr_in *) a)->sin_addr.s_addr == ((const struct sockaddr_in *) b)->sin_addr.s_addr;
        if (a->ss_family == AF_INET6)
                return memcmp(&((const struct sockaddr_in6 *) a)->sin6_addr, &((const struct sockaddr_in6 *) b)->sin6_addr,
                              sizeof(struct in6_addr)) == 0;
        return false;
}

static int conn_tls_start(HttpConn *c) {
        HttpService *s = c->service;
        int r;

        r = gnutls_init(&c->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
        if (r < 0) {
                c->tls = NULL;
                return -ENOMEM;
        }
        r = gnutls_set_default_priority(c->tls);
        if (r >= 0)
                r = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, s->tls_cred);
        if (r < 0)
                return -EIO;
        if (s->tls_verify_client)
                /* Go's RequireAndVerifyClientCert */
                tls_session_require_client_cert(c->tls);
        gnutls_transport_set_int(c->tls, c->fd);
        c->state = CONN_HANDSHAKE;
        return 0;
}

static int conn_new(HttpService *s, int fd, const struct sockaddr_storage *sa, socklen_t salen, bool refused,
                    bool tls) {
        HttpServer *h = s->server;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET };
        HttpConn *c;
        int one = 1;

        c = calloc(1, sizeof(HttpConn) + s->handler->data_size);
        if (!c) {
                (void) close(fd);
                return -ENOMEM;
        }
        c->service = s;
        c->fd = fd;
        c->state = CONN_IDLE;
        c->refused = refused;
        if (sa && salen <= sizeof c->peer) {
                memcpy(&c->peer, sa, salen);
                c->peer_len = salen;
        }
        llhttp_init(&c->parser, HTTP_REQUEST, &h->settings);
        c->parser.data = c;
        c->deadline_usec = server_now(h) + s->limits.head_timeout_usec;
        if (tls && conn_tls_start(c) < 0) {
                (void) close(fd);
                conn_free(c);
                return log_warning_errno(-ENOMEM, "Failed to start a TLS session, closing the connection: %m");
        }

        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ev.data.ptr = c;
        if (epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int r = -errno;
                (void) close(fd);
                conn_free(c);
                return log_warning_errno(r, "Failed to watch a connection, closing it: %m");
        }

        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        if (refused)
                s->n_refused++;
        else
                s->n_conns++;
        sweep_arm(h);

        if (refused) {
                static const char text[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                           "Connection: close\r\nContent-Length: 26\r\n\r\ntoo many open connections\n";
                (void) out_append(c, text, sizeof text - 1);
                c->parse_stopped = true;
                c->close_after = true;
                c->state = CONN_CLOSING;
                c->writable = true;
                conn_schedule(c);
        }
        return 0;
}

static void accept_refuse(HttpService *s, int fd, const struct sockaddr_storage *sa, socklen_t salen, bool tls) {
        /* a TLS client could not read a plain 503: it is just closed (so is it by Go's server) */
        if (tls || s->n_refused >= HTTP_REFUSED_MAX) {
                (void) close(fd);
                return;
        }
        (void) conn_new(s, fd, sa, salen, true, false);
}

static int on_accept_retry(sd_event_source *src, uint64_t usec, void *userdata) {
        HttpServer *h = userdata;

        for (size_t i = 0; i < h->n_services; i++)
                for (size_t j = 0; j < h->services[i]->n_listeners; j++)
                        if (h->services[i]->listeners[j]->source)
                                (void) sd_event_source_set_enabled(h->services[i]->listeners[j]->source, SD_EVENT_ON);
        return 0;
}

static void accept_pause(HttpServer *h) {
        for (size_t i = 0; i < h->n_services; i++)
                for (size_t j = 0; j < h->services[i]->n_listeners; j++)
                        if (h->services[i]->listeners[j]->source)
                                (void) sd_event_source_set_enabled(h->services[i]->listeners[j]->source, SD_EVENT_OFF);
        if (!h->accept_retry) {
                if (sd_event_add_time_relative(h->event, &h->accept_retry, CLOCK_MONOTONIC, HTTP_ACCEPT_RETRY_USEC,
                                               1000, on_accept_retry, h) < 0)
                        return;
        } else {
                (void) sd_event_source_set_time_relative(h->accept_retry, HTTP_ACCEPT_RETRY_USEC);
                (void) sd_event_source_set_enabled(h->accept_retry, SD_EVENT_ONESHOT);
        }
}

static int on_listener(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        HttpListener *l = userdata;
        HttpService *s = l->service;

        for (unsigned i = 0; i < HTTP_ACCEPT_BATCH; i++) {
                struct sockaddr_storage sa;
                socklen_t salen = sizeof(sa);
                int cfd;

                cfd = accept4(fd, (struct sockaddr *) &sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                break;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                                log_warning_errno(-errno, "Failed to accept a connection, pausing: %m");
                                accept_pause(s->server);
                                break;
                        }
                        log_warning_errno(-errno, "Failed to accept a connection, ignoring: %m");
                        break;
                }

                if (s->limits.max_connections > 0 && s->n_conns >= s->limits.max_connections) {
                        log_debug("Refusing a connection on %s: %u open, the cap.", s->name, s->n_conns);
                        accept_refuse(s, cfd, &sa, salen, l->tls);
                        continue;
                }
                if (s->limits.max_per_ip > 0) {
                        unsigned same = 0;

                        for (HttpConn *c = s->conns; c; c = c->next)
                                if (!c->refused && same_ip(&c->peer, &sa))
                                        same++;
                        if (same >= s->limits.max_per_ip) {
                                log_debug("Refusing a connection on %s: %u open from that address, the cap.", s->name, same);
                                accept_refuse(s, cfd, &sa, salen, l->tls);
                                continue;
                        }
                }
                (void) conn_new(s, cfd, &sa, salen, false, l->tls);
        }
        return 0;
}

static int service_add_listener(HttpService *s, int fd, bool tls) {
        HttpListener **t, *l;
        int flags, r;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return log_error_errno(-errno, "Failed to make listening socket %d non-blocking: %m", fd);
        (void) fcntl(fd, F_SETFD, FD_CLOEXEC);

        t = reallocarray(s->listeners, s->n_listeners + 1, sizeof(HttpListener *));
        if (!t)
                return log_oom();
        s->listeners = t;
        l = malloc(sizeof(HttpListener));
        if (!l)
                return log_oom();
        *l = (HttpListener) { .service = s, .fd = fd, .tls = tls };
        s->listeners[s->n_listeners++] = l;

        r = sd_event_add_io(s->server->event, &l->source, fd, EPOLLIN, on_listener, l);
        if (r < 0)
                return log_error_errno(r, "Failed to add a listener to the event loop: %m");
        (void) sd_event_source_set_description(l->source, s->name);
        return 0;
}

int http_service_add_listener(HttpService *s, int fd) {
        return service_add_listener(s, fd, false);
}

int http_service_add_tls_listener(HttpService *s, int fd) {
        assert(s->tls_cred);
        return service_add_listener(s, fd, true);
}

int http_service_set_tls(HttpService *s, const HttpTlsConfig *t) {
        TlsInfo info = {
                .cert_file = t->cert_file,
                .key_file = t->key_file,
                .trusted_ca_file = t->trusted_ca_file,
                .client_cert_auth = t->client_cert_auth,
        };

        assert(!s->tls_cred);
        assert(t->cert_file && t->key_file);

        return tls_server_credentials_new(&info, t->ca_file, &s->tls_cred, &s->tls_verify_client);
}

int http_service_add_connection(HttpService *s, int fd) {
        struct sockaddr_storage sa = {};
        socklen_t salen = sizeof(sa);
        int flags;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
                int r = -errno;
                (void) close(fd);
                return r;
        }
        if (getpeername(fd, (struct sockaddr *) &sa, &salen) < 0)
                salen = 0;
        return conn_new(s, fd, salen > 0 ? &sa : NULL, salen, false, false);
}

unsigned http_service_n_connections(HttpService *s) {
        return s->n_conns;
}

/* --- the public request and answer calls -------------------------------------------------------- */

const char *http_request_header(const HttpRequest *r, const char *name) {
        const HttpConn *c = r->conn;

        for (size_t i = 0; i < c->n_hdrs; i++)
                if (strcasecmp(c->hdr_ptrs[2 * i], name) == 0)
                        return c->hdr_ptrs[2 * i + 1];
        return NULL;
}

size_t http_request_n_headers(const HttpRequest *r) {
        return r->conn->n_hdrs;
}

void http_request_header_at(const HttpRequest *r, size_t i, const char **ret_name, const char **ret_value) {
        assert(i < r->conn->n_hdrs);
        *ret_name = r->conn->hdr_ptrs[2 * i];
        *ret_value = r->conn->hdr_ptrs[2 * i + 1];
}

int http_request_peer_ip(const HttpRequest *r, char *buf, size_t size) {
        const struct sockaddr_storage *sa = &r->conn->peer;

        if (sa->ss_family == AF_INET)
                return inet_ntop(AF_INET, &((const struct sockaddr_in *) sa)->sin_addr, buf, size) ? 0 : -EINVAL;
        if (sa->ss_family == AF_INET6)
                return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr, buf, size) ? 0 : -EINVAL;
        return -EINVAL;
}

void http_response_header(HttpRequest *r, const char *name, const char *value) {
        HttpBuf *b = &r->conn->rhdrs;

        /* A value never carries a line break into the answer. */
        if (strpbrk(value, "\r\n") || strpbrk(name, "\r\n: "))
                return;
        if (http_buf_puts(b, name) < 0 || http_buf_append(b, ": ", 2) < 0 || http_buf_puts(b, value) < 0 ||
            http_buf_append(b, "\r\n", 2) < 0)
                log_oom();
}

void http_response_header_u64(HttpRequest *r, const char *name, uint64_t value, unsigned base) {
        char buf[24];

        buf[sizeof buf - 1] = 0;
        http_response_header(r, name, format_u64(buf + sizeof buf - 1, value, base));
}

void http_response_close(HttpRequest *r) {
        r->conn->close_after = true;
}

/* Queues the status line and headers of an answer. */
static int answer_head(HttpConn *c, unsigned status, const char *content_type, int64_t length, bool chunked) {
        HttpServer *h = c->service->server;
        HttpRequest *r = &c->req;
        char line[96], num[24];
        const char *date;
        size_t date_len;
        int n;

        assert(!r->answered);
        r->answered = true;

        if (r->http_major == 1 && r->http_minor == 0 && !c->keep_alive)
                c->close_after = true;

        n = snprintf(line, sizeof line, "HTTP/1.1 %u %s\r\n", status, http_status_text(status));
        if (out_append(c, line, (size_t) n) < 0)
                return -ENOMEM;
        if (content_type && (out_append_str(c, "Content-Type: ") < 0 || out_append_str(c, content_type) < 0 ||
                             out_append(c, "\r\n", 2) < 0))
                return -ENOMEM;
        if (c->rhdrs.len > 0 && out_append(c, c->rhdrs.data, c->rhdrs.len) < 0)
                return -ENOMEM;
        c->rhdrs.len = 0;
        if (c->rhdrs.alloc > HTTP_KEEP_BUFFER)
                http_buf_done(&c->rhdrs);

        if (status == 101) {
                if (out_append_str(c, "Connection: Upgrade\r\n") < 0)
                        return -ENOMEM;
        } else if (c->close_after || !c->keep_alive) {
                /* as Go: said to HTTP/1.1 clients; HTTP/1.0 ones expect the close anyway */
                if (r->http_minor >= 1 && out_append_str(c, "Connection: close\r\n") < 0)
                        return -ENOMEM;
        } else if (r->http_major == 1 && r->http_minor == 0) {
                if (out_append_str(c, "Connection: keep-alive\r\n") < 0)
                        return -ENOMEM;
        }
        if (chunked && out_append_str(c, "Transfer-Encoding: chunked\r\n") < 0)
                return -ENOMEM;
        date = date_header(h, &date_len);
        if (out_append(c, date, date_len) < 0)
                return -ENOMEM;
        if (length >= 0 && status != 204 && status != 304 && status >= 200) {
                num[sizeof num - 1] = 0;
                if (out_append_str(c, "Content-Length: ") < 0 ||
                    out_append_str(c, format_u64(num + sizeof num - 1, (uint64_t) length, 10)) < 0 ||
                    out_append(c, "\r\n", 2) < 0)
                        return -ENOMEM;
        }
        return out_append(c, "\r\n", 2);
}

/* An answer is fully queued: the layer goes on once control is back with it. An answer given outside
 * its connection's processing (a proposal's result) is written at once if it is the first of this loop
 * iteration, so that a lone write's answer does not wait for the next iteration; a batch (many answers or
 * watch events at once) goes out from on_work(), with two threads when it is large. A failed write is
 * left for conn_process() to meet again (no handler is called from here). */
static void answer_queued(HttpConn *c) {
        c->answer_complete = true;
        if (c->busy)
                return;
        if (!c->service->server->work && c->writable)
                (void) conn_flush(c);
        conn_schedule(c);
}

static void answer_failed(HttpConn *c) {
        log_oom();
        out_reset(c);
        c->close_after = true;
        c->keep_alive = false;
        answer_queued(c);
}

void http_reply_ref(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len,
                    void (*release)(void *userdata), void *userdata) {
        HttpConn *c = r->conn;

        if (r->answered || c->state == CONN_DEAD) {
                if (release)
                        release(userdata);
                return;
        }
        if (answer_head(c, status, content_type, (int64_t) len, false) < 0) {
                if (release)
                        release(userdata);
                answer_failed(c);
                return;
        }
        if (r->head || status == 204 || status == 304) {
                if (release)
                        release(userdata);
        } else if (out_append_ref(c, body, len, release, userdata) < 0) {
                answer_failed(c);
                return;
        }
        answer_queued(c);
}

void http_reply(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len) {
        HttpConn *c = r->conn;

        if (r->answered || c->state == CONN_DEAD)
                return;
        if (answer_head(c, status, content_type, (int64_t) len, false) < 0 ||
            (!r->head && status != 204 && status != 304 && out_append(c, body, len) < 0)) {
                answer_failed(c);
                return;
        }
        answer_queued(c);
}

void http_stream_begin(HttpRequest *r, unsigned status, const char *content_type, int64_t content_length) {
        HttpConn *c = r->conn;
        bool chunked = content_length < 0 && !r->head;

        if (r->answered || c->state == CONN_DEAD)
                return;
        if (chunked && r->http_major == 1 && r->http_minor == 0) {
                /* HTTP/1.0 has no chunks: the body ends with the connection. */
                chunked = false;
                c->stream_raw_close = true;
                c->close_after = true;
        }
        if (answer_head(c, status, content_type, r->head ? -1 : content_length, chunked) < 0) {
                answer_failed(c);
                return;
        }
        c->streaming = true;
        c->stream_chunked = chunked;
        if (!c->busy)
                conn_schedule(c);
}

void http_stream_write(HttpRequest *r, const void *data, size_t len, bool last) {
        HttpConn *c = r->conn;
        char num[24];
        int k = 0;

        if (!c->streaming || c->state == CONN_DEAD)
                return;
        if (!r->head && len > 0) {
                if (c->stream_chunked) {
                        char *p = format_u64(num + sizeof num - 2, len, 16);
                        num[sizeof num - 2] = '\r';
                        num[sizeof num - 1] = '\n';
                        k = out_append(c, p, (size_t) (num + sizeof num - p));
                        if (k >= 0)
                                k = out_append(c, data, len);
                        if (k >= 0)
                                k = out_append(c, "\r\n", 2);
                } else
                        k = out_append(c, data, len);
        }
        if (k < 0) {
                answer_failed(c);
                return;
        }
        if (last) {
                http_stream_end(r);
                return;
        }
        c->drained_wanted = true;
        if (!c->busy)
                conn_schedule(c);
}

void http_stream_end(HttpRequest *r) {
        HttpConn *c = r->conn;

        if (!c->streaming || c->state == CONN_DEAD)
                return;
        c->streaming = false;
        if (c->stream_chunked && !r->head && out_append(c, "0\r\n\r\n", 5) < 0) {
                answer_failed(c);
                return;
        }
        answer_queued(c);
}

void http_stream_abort(HttpRequest *r) {
        HttpConn *c = r->conn;

        if (!c->streaming || c->state == CONN_DEAD)
                return;
        c->streaming = false;
        c->close_after = true;
        c->keep_alive = false;
        answer_queued(c);
}

size_t http_stream_pending(const HttpRequest *r) {
        return r->conn->out_pending;
}

void http_upgrade(HttpRequest *r, unsigned status, HttpTakenFunc taken, void *userdata) {
        HttpConn *c = r->conn;

        assert(taken);
        if (r->answered || c->state == CONN_DEAD)
                return;
        if (answer_head(c, status, NULL, -1, false) < 0) {
                answer_failed(c);
                return;
        }
        c->taken = taken;
        c->taken_userdata = userdata;
        c->keep_alive = true;
        c->close_after = false;
        answer_queued(c);
}

/* --- server and services ------------------------------------------------------------------------ */

static void raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                log_debug_errno(-errno, "Failed to raise RLIMIT_NOFILE, ignoring: %m");
}

int http_server_new(sd_event *event, HttpServer **ret) {
        HttpServer *h;
        int r;

        assert(event);
        assert(ret);

        raise_nofile();

        h = calloc(1, sizeof(HttpServer));
        if (!h)
                return log_oom();
        h->event = sd_event_ref(event);
        h->epoll_fd = -1;
        h->sweep_usec = USEC_PER_SEC;

        llhttp_settings_init(&h->settings);
        h->settings.on_message_begin = on_message_begin;
        h->settings.on_url = on_url;
        h->settings.on_url_complete = on_url_complete;
        h->settings.on_header_field = on_header_field;
        h->settings.on_header_field_complete = on_header_field_complete;
        h->settings.on_header_value = on_header_value;
        h->settings.on_header_value_complete = on_header_value_complete;
        h->settings.on_headers_complete = on_headers_complete;
        h->settings.on_body = on_body;
        h->settings.on_message_complete = on_message_complete;

        h->rbuf = malloc(HTTP_READ_BUFFER);
        if (!h->rbuf) {
                r = log_oom();
                goto fail;
        }
        h->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (h->epoll_fd < 0) {
                r = log_error_errno(-errno, "Failed to create an epoll fd: %m");
                goto fail;
        }
        r = sd_event_add_io(event, &h->epoll_source, h->epoll_fd, EPOLLIN, on_epoll, h);
        if (r < 0) {
                log_error_errno(r, "Failed to add the connections' io source: %m");
                goto fail;
        }
        (void) sd_event_source_set_description(h->epoll_source, "http-connections");
        r = sd_event_add_defer(event, &h->work_source, on_work, h);
        if (r < 0) {
                log_error_errno(r, "Failed to add the HTTP work source: %m");
                goto fail;
        }
        (void) sd_event_source_set_enabled(h->work_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->work_source, "http-work");
        r = sd_event_add_time(event, &h->sweep_source, CLOCK_MONOTONIC, UINT64_MAX, 10 * USEC_PER_MSEC, on_sweep, h);
        if (r < 0) {
                log_error_errno(r, "Failed to add the HTTP timeout timer: %m");
                goto fail;
        }
        (void) sd_event_source_set_enabled(h->sweep_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(h->sweep_source, "http-timeouts");

        *ret = h;
        return 0;

fail:
        http_server_free(h);
        return r;
}

int http_server_add_service(HttpServer *h, const char *name, const HttpHandler *handler, void *userdata,
                            const HttpLimits *limits, HttpService **ret) {
        HttpService **t, *s;
        uint64_t shortest;

        assert(h);
        assert(handler);
        assert(limits);

        t = reallocarray(h->services, h->n_services + 1, sizeof(HttpService *));
        if (!t)
                return log_oom();
        h->services = t;
        s = calloc(1, sizeof(HttpService));
        if (!s)
                return log_oom();
        s->name = strdup(name);
        if (!s->name) {
                free(s);
                return log_oom();
        }
        s->server = h;
        s->handler = handler;
        s->userdata = userdata;
        s->limits = *limits;
        if (s->limits.head_max == 0)
                s->limits.head_max = (size_t) 1024 * 1024 + 4096;
        if (s->limits.idle_timeout_usec == 0)
                s->limits.idle_timeout_usec = 300 * USEC_PER_SEC;
        if (s->limits.head_timeout_usec == 0)
                s->limits.head_timeout_usec = 300 * USEC_PER_SEC;
        h->services[h->n_services++] = s;

        /* The sweep runs often enough for the shortest timeout (a quarter of it, 10 ms to 1 s). */
        shortest = MIN(s->limits.idle_timeout_usec, s->limits.head_timeout_usec);
        if (s->limits.body_timeout_usec > 0)
                shortest = MIN(shortest, s->limits.body_timeout_usec);
        shortest = MAX(shortest / 4, 10 * USEC_PER_MSEC);
        h->sweep_usec = MIN(h->sweep_usec, shortest);

        if (ret)
                *ret = s;
        return 0;
}

void http_server_stop_listening(HttpServer *h) {
        if (!h)
                return;
        h->accept_retry = sd_event_source_disable_unref(h->accept_retry);
        for (size_t i = 0; i < h->n_services; i++)
                for (size_t j = 0; j < h->services[i]->n_listeners; j++) {
                        HttpListener *l = h->services[i]->listeners[j];

                        l->source = sd_event_source_disable_unref(l->source);
                        if (l->fd >= 0)
                                (void) close(l->fd);
                        l->fd = -1;
                }
}

HttpServer *http_server_free(HttpServer *h) {
        if (!h)
                return NULL;

        http_server_stop_listening(h);
        for (size_t i = 0; i < h->n_services; i++) {
                HttpService *s = h->services[i];

                while (s->conns)
                        conn_hangup(s->conns);
                for (size_t j = 0; j < s->n_listeners; j++)
                        free(s->listeners[j]);
                free(s->listeners);
        }
        sender_stop(&h->sender);
        free(h->batch);
        free(h->cand);
        while (h->dead) {
                HttpConn *c = h->dead;

                h->dead = c->dead_next;
                conn_free(c);
        }
        /* TLS credentials last: sessions refer to them */
        for (size_t i = 0; i < h->n_services; i++) {
                HttpService *s = h->services[i];

                if (s->tls_cred)
                        gnutls_certificate_free_credentials(s->tls_cred);
                free(s->name);
                free(s);
        }
        free(h->services);
        h->work = NULL;

        h->sweep_source = sd_event_source_disable_unref(h->sweep_source);
        h->work_source = sd_event_source_disable_unref(h->work_source);
        h->epoll_source = sd_event_source_disable_unref(h->epoll_source);
        if (h->epoll_fd >= 0)
                (void) close(h->epoll_fd);
        free(h->rbuf);
        sd_event_unref(h->event);
        free(h);
        return NULL;
}
