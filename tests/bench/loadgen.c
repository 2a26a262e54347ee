/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loadgen: HTTP/1.1 keep-alive load generator for the etcd v2 keys API.
 *
 * One thread, epoll, non-blocking sockets, one request in flight per connection.
 * Standalone on purpose (no project headers), so it builds with a plain
 *
 *         cc -O2 -Wall -Wextra -o loadgen tests/bench/loadgen.c -lgnutls
 *
 * With --tls-ca (and optionally --tls-cert/--tls-key) the throughput modes speak HTTPS: each connection does a
 * blocking TLS handshake when it connects (before the clock starts), then runs non-blocking like the others.
 *
 * Modes:
 *   put     PUT unique keys /v2/keys/<prefix>/<n>, form body "value=<size bytes>"
 *   get     GET random keys of a preloaded set <prefix>/<key-start .. key-start+keys-1>
 *   mixed   90 % GET / 10 % PUT (overwrite) over the preloaded set (--put-percent)
 *   watch   W long-poll watchers GET /v2/keys/<watch-key>?wait=true, then one PUT;
 *           per watcher: time from the PUT's send until its whole response arrived
 *   serve   trivial keep-alive responder (for checking that loadgen is not the bottleneck)
 *   idle    -c N keep-alive connections, one GET each, then held open without traffic until
 *           -d passes or SIGTERM; prints a "ready" line once all have their answer, and an
 *           "end" line with how many the server closed meanwhile
 *
 * Output: one JSON line on stdout. Exit status 0 unless the run could not be done at all.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define USEC_PER_SEC UINT64_C(1000000)
#define IN_BUF_MIN 16384
#define IN_BUF_MAX (64u * 1024u * 1024u)

typedef enum Mode {
        MODE_PUT,
        MODE_GET,
        MODE_MIXED,
        MODE_WATCH,
        MODE_SERVE,
        MODE_IDLE,
        _MODE_MAX,
        _MODE_INVALID = -EINVAL,
} Mode;

static const char *const mode_table[_MODE_MAX] = {
        [MODE_PUT] = "put",
        [MODE_GET] = "get",
        [MODE_MIXED] = "mixed",
        [MODE_WATCH] = "watch",
        [MODE_SERVE] = "serve",
        [MODE_IDLE] = "idle",
};

typedef enum ParseState {
        PARSE_HEAD,
        PARSE_BODY,
        PARSE_CHUNK_SIZE,
        PARSE_CHUNK_DATA,
        PARSE_CHUNK_CRLF,
        PARSE_TRAILER,
        PARSE_EOF,
} ParseState;

typedef enum ConnState {
        CONN_CLOSED,
        CONN_CONNECTING,
        CONN_IDLE,      /* connected, nothing in flight */
        CONN_BUSY,      /* request (partly) sent, waiting for the response */
} ConnState;

typedef enum ConnKind {
        KIND_CLIENT,
        KIND_WATCHER,
        KIND_CONTROL,   /* watch mode: the connection that sends the PUT */
        KIND_LISTENER,
        KIND_SERVED,    /* serve mode: an accepted connection */
} ConnKind;

typedef struct Conn {
        int fd;
        ConnKind kind;
        ConnState state;
        bool want_out;

        char *out;
        size_t out_size, out_len, out_off;

        char *in;
        size_t in_size, in_len;

        /* response parser */
        ParseState pstate;
        size_t pos;             /* parsed up to here */
        uint64_t body_left;
        int status;
        int last_status;        /* status of the last complete response */
        bool close_after;
        bool headers_seen;

        uint64_t send_usec;
        bool done;              /* watch mode: this watcher got its event */
        bool registered;        /* watch mode: response headers seen before the PUT */
        bool rx_stamp;          /* watch mode: SO_TIMESTAMPNS is on, record kernel rx times */
        uint64_t rx_usec;       /* CLOCK_REALTIME of the newest received data, from the kernel */
        unsigned target_idx;    /* index into targets[]: which --port this connection uses */
        gnutls_session_t tls;   /* --tls-ca: the session, else NULL */
} Conn;

/* arguments */
static const char *arg_host = "127.0.0.1";
static unsigned arg_port = 0;
static Mode arg_mode = _MODE_INVALID;
static unsigned arg_concurrency = 1;
static double arg_duration = 5.0;
static bool arg_duration_set = false;
static uint64_t arg_requests = 0;
static unsigned arg_size = 256;
static uint64_t arg_keys = 10000;
static uint64_t arg_key_start = 0;
static const char *arg_prefix = "bench";
static unsigned arg_put_percent = 10;
static unsigned arg_watchers = 1000;
static const char *arg_watch_key = "w";
static unsigned arg_watch_wait_ms = 2000;
static uint64_t arg_seed = 0x9e3779b97f4a7c15ULL;
static const char *arg_tls_ca = NULL, *arg_tls_cert = NULL, *arg_tls_key = NULL;
static gnutls_certificate_credentials_t tls_cred;

/* run state */
static int epfd = -1;
static struct sockaddr_in target;
#define MAX_TARGETS 16
static unsigned arg_ports[MAX_TARGETS];   /* --port P1,P2,...: client connections round-robin */
static unsigned n_targets = 0;
static struct sockaddr_in targets[MAX_TARGETS];
static char *form_body;
static size_t form_body_len;
static uint64_t rng_state;

static uint64_t next_key;       /* put mode: next unique key */
static uint64_t issued, completed;
static uint64_t n_2xx, n_non2xx, n_conn_errors, n_reconnects;
static bool stop_issuing;
static uint64_t start_usec, last_done_usec;

static Conn *conn_array;       /* all client connections, freed by conn_array_free() */
static unsigned conn_array_n;

static uint32_t *lat;           /* microseconds, one per completed request */
static size_t lat_n, lat_size;

static volatile sig_atomic_t got_signal;

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t rng_next(void) {
        /* xorshift64* */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * UINT64_C(2685821657736338717);
}

static void *xrealloc(void *p, size_t n) {
        p = realloc(p, n);
        if (!p) {
                fprintf(stderr, "loadgen: out of memory\n");
                abort();
        }
        return p;
}

static void lat_add(uint64_t usec) {
        if (lat_n >= lat_size) {
                lat_size = lat_size ? lat_size * 2 : 65536;
                lat = xrealloc(lat, lat_size * sizeof(*lat));
        }
        lat[lat_n++] = usec > UINT32_MAX ? UINT32_MAX : (uint32_t) usec;
}

static int cmp_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

        return x < y ? -1 : x > y;
}

/* nearest-rank percentile over the sorted latency array, in milliseconds */
static double lat_pct_ms(double pct) {
        size_t rank;

        if (lat_n == 0)
                return -1;
        rank = (size_t) ((pct / 100.0) * (double) lat_n + 0.999999);
        if (rank < 1)
                rank = 1;
        if (rank > lat_n)
                rank = lat_n;
        return lat[rank - 1] / 1000.0;
}

static void raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        if (rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
        /* as root, try for more than the hard limit too */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536) {
                struct rlimit more = { .rlim_cur = 65536, .rlim_max = 65536 };
                (void) setrlimit(RLIMIT_NOFILE, &more);
        }
}

static int ep_set(Conn *c, uint32_t events, int op) {
        struct epoll_event ev = { .events = events, .data.ptr = c };

        if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
                return -errno;
        return 0;
}

static void conn_reset_parser(Conn *c) {
        c->pstate = PARSE_HEAD;
        c->pos = 0;
        c->body_left = 0;
        c->status = 0;
        c->close_after = false;
        c->headers_seen = false;
}

static void conn_close(Conn *c) {
        if (c->tls) {
                gnutls_deinit(c->tls);
                c->tls = NULL;
        }
        if (c->fd >= 0) {
                (void) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                (void) close(c->fd);
        }
        c->fd = -1;
        c->state = CONN_CLOSED;
        c->want_out = false;
        c->in_len = 0;
        c->out_len = c->out_off = 0;
        conn_reset_parser(c);
}

/* --tls-ca: a blocking connect and handshake, then the socket goes back to non-blocking. */
#define IN_SET_TLS_MODE(m) ((m) == MODE_PUT || (m) == MODE_GET || (m) == MODE_MIXED)

static int conn_connect_tls(Conn *c) {
        int flags = fcntl(c->fd, F_GETFL), r;

        if (flags < 0 || fcntl(c->fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
                return -errno;
        if (connect(c->fd, (struct sockaddr *) &targets[c->target_idx % n_targets], sizeof(struct sockaddr_in)) < 0)
                return -errno;
        r = gnutls_init(&c->tls, GNUTLS_CLIENT);
        if (r >= 0)
                r = gnutls_set_default_priority(c->tls);
        if (r >= 0)
                r = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, tls_cred);
        if (r < 0)
                goto fail;
        gnutls_session_set_verify_cert(c->tls, NULL, 0); /* chain only: the test certificates name 127.0.0.1 */
        gnutls_transport_set_int(c->tls, c->fd);
        do
                r = gnutls_handshake(c->tls);
        while (r < 0 && !gnutls_error_is_fatal(r));
        if (r < 0)
                goto fail;
        if (fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        return 0;
fail:
        fprintf(stderr, "loadgen: TLS: %s\n", gnutls_strerror(r));
        if (c->tls)
                gnutls_deinit(c->tls);
        c->tls = NULL;
        return -EPROTO;
}

static int conn_connect(Conn *c) {
        int fd, one = 1, r;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        c->fd = fd;
        conn_reset_parser(c);
        c->in_len = 0;
        c->out_len = c->out_off = 0;

        if (arg_tls_ca) {
                r = conn_connect_tls(c);
                if (r < 0) {
                        (void) close(fd);
                        c->fd = -1;
                        return r;
                }
        } else if (connect(fd, (struct sockaddr *) &targets[c->target_idx % n_targets], sizeof(struct sockaddr_in)) < 0 &&
            errno != EINPROGRESS) {
                r = -errno;
                (void) close(fd);
                c->fd = -1;
                return r;
        }
        c->state = CONN_CONNECTING;
        c->want_out = true;
        r = ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_ADD);
        if (r < 0) {
                (void) close(fd);
                c->fd = -1;
                c->state = CONN_CLOSED;
                return r;
        }
        return 0;
}

static void out_reserve(Conn *c, size_t n) {
        if (c->out_size < n) {
                c->out_size = n;
                c->out = xrealloc(c->out, n);
        }
}

static void build_put(Conn *c, const char *prefix, uint64_t key) {
        int n;

        out_reserve(c, 512 + form_body_len);
        n = snprintf(c->out, c->out_size,
                     "PUT /v2/keys/%s/%" PRIu64 " HTTP/1.1\r\n"
                     "Host: %s:%u\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: %zu\r\n"
                     "\r\n",
                     prefix, key, arg_host, arg_port, form_body_len);
        memcpy(c->out + n, form_body, form_body_len);
        c->out_len = (size_t) n + form_body_len;
        c->out_off = 0;
}

static void build_put_path(Conn *c, const char *key) {
        int n;

        out_reserve(c, 512 + strlen(key) + form_body_len);
        n = snprintf(c->out, c->out_size,
                     "PUT /v2/keys/%s HTTP/1.1\r\n"
                     "Host: %s:%u\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     "Content-Length: %zu\r\n"
                     "\r\n",
                     key, arg_host, arg_port, form_body_len);
        memcpy(c->out + n, form_body, form_body_len);
        c->out_len = (size_t) n + form_body_len;
        c->out_off = 0;
}

static void build_get(Conn *c, const char *prefix, uint64_t key) {
        out_reserve(c, 512);
        c->out_len = (size_t) snprintf(c->out, c->out_size,
                                       "GET /v2/keys/%s/%" PRIu64 " HTTP/1.1\r\n"
                                       "Host: %s:%u\r\n"
                                       "\r\n",
                                       prefix, key, arg_host, arg_port);
        c->out_off = 0;
}

static void build_watch(Conn *c) {
        out_reserve(c, 512 + strlen(arg_watch_key));
        c->out_len = (size_t) snprintf(c->out, c->out_size,
                                       "GET /v2/keys/%s?wait=true HTTP/1.1\r\n"
                                       "Host: %s:%u\r\n"
                                       "\r\n",
                                       arg_watch_key, arg_host, arg_port);
        c->out_off = 0;
}

/* Write what is queued. Returns 0 when all is written (or EPOLLOUT armed), < 0 on error. */
static int conn_flush(Conn *c) {
        while (c->out_off < c->out_len) {
                ssize_t k;

                if (c->tls) {
                        k = gnutls_record_send(c->tls, c->out + c->out_off, c->out_len - c->out_off);
                        if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED)
                                errno = k == GNUTLS_E_AGAIN ? EAGAIN : EINTR, k = -1;
                        else if (k < 0)
                                errno = EIO, k = -1;
                } else
                        k = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                if (!c->want_out) {
                                        c->want_out = true;
                                        return ep_set(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
                                }
                                return 0;
                        }
                        return -errno;
                }
                c->out_off += (size_t) k;
        }
        if (c->want_out) {
                c->want_out = false;
                return ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
        }
        return 0;
}

/* Throughput modes: queue and send the next request on an idle connection, if any is due. */
static int conn_issue(Conn *c) {
        if (stop_issuing)
                return 0;
        if (arg_requests > 0 && issued >= arg_requests)
                return 0;

        switch (arg_mode) {
        case MODE_PUT:
                build_put(c, arg_prefix, arg_key_start + next_key++);
                break;
        case MODE_GET:
                build_get(c, arg_prefix, arg_key_start + rng_next() % arg_keys);
                break;
        case MODE_MIXED:
                if (rng_next() % 100 < arg_put_percent)
                        build_put(c, arg_prefix, arg_key_start + rng_next() % arg_keys);
                else
                        build_get(c, arg_prefix, arg_key_start + rng_next() % arg_keys);
                break;
        default:
                abort();
        }
        issued++;
        c->state = CONN_BUSY;
        c->send_usec = now_usec();
        return conn_flush(c);
}

static bool line_has_token(const char *v, const char *end, const char *token) {
        size_t tl = strlen(token);

        for (const char *p = v; p + tl <= end; p++)
                if (strncasecmp(p, token, tl) == 0)
                        return true;
        return false;
}

/* Parse the response head in c->in[0..hend). Returns 0 or -EBADMSG. */
static int parse_head(Conn *c, size_t hend) {
        const char *p = c->in, *end = c->in + hend;
        const char *eol;
        bool chunked = false, have_cl = false;
        uint64_t cl = 0;

        if (hend < 12 || strncmp(p, "HTTP/1.", 7) != 0)
                return -EBADMSG;
        if (!isdigit((unsigned char) p[9]) || !isdigit((unsigned char) p[10]) || !isdigit((unsigned char) p[11]))
                return -EBADMSG;
        c->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        if (p[7] == '0')
                c->close_after = true;   /* HTTP/1.0 response: assume close unless told otherwise */

        eol = memmem(p, (size_t) (end - p), "\r\n", 2);
        while (eol && eol + 2 < end) {
                const char *line = eol + 2, *colon, *v;

                eol = memmem(line, (size_t) (end - line), "\r\n", 2);
                if (!eol)
                        break;
                if (eol == line)
                        break;
                colon = memchr(line, ':', (size_t) (eol - line));
                if (!colon)
                        continue;
                v = colon + 1;
                while (v < eol && (*v == ' ' || *v == '\t'))
                        v++;
                if ((size_t) (colon - line) == 14 && strncasecmp(line, "content-length", 14) == 0) {
                        have_cl = true;
                        cl = strtoull(v, NULL, 10);
                } else if ((size_t) (colon - line) == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                        if (line_has_token(v, eol, "chunked"))
                                chunked = true;
                } else if ((size_t) (colon - line) == 10 && strncasecmp(line, "connection", 10) == 0) {
                        if (line_has_token(v, eol, "close"))
                                c->close_after = true;
                        else if (line_has_token(v, eol, "keep-alive"))
                                c->close_after = false;
                }
        }

        c->headers_seen = true;
        if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200)) {
                c->pstate = PARSE_BODY;
                c->body_left = 0;
        } else if (chunked)
                c->pstate = PARSE_CHUNK_SIZE;
        else if (have_cl) {
                c->pstate = PARSE_BODY;
                c->body_left = cl;
        } else {
                c->pstate = PARSE_EOF;
                c->close_after = true;
        }
        return 0;
}

/* Advance the response parser over c->in. Returns 1 when a whole response was consumed (c->pos
 * points behind it), 0 when more input is needed, < 0 on a malformed response. */
static int parse_response(Conn *c) {
        for (;;) {
                size_t avail = c->in_len - c->pos;
                const char *p = c->in + c->pos;
                const char *e;

                switch (c->pstate) {
                case PARSE_HEAD: {
                        const char *h = memmem(c->in, c->in_len, "\r\n\r\n", 4);
                        int r;

                        if (!h)
                                return c->in_len > 65536 ? -EBADMSG : 0;
                        r = parse_head(c, (size_t) (h - c->in) + 2);
                        if (r < 0)
                                return r;
                        c->pos = (size_t) (h - c->in) + 4;
                        break;
                }
                case PARSE_BODY:
                        if (avail >= c->body_left) {
                                c->pos += c->body_left;
                                c->body_left = 0;
                                return 1;
                        }
                        c->pos += avail;
                        c->body_left -= avail;
                        return 0;
                case PARSE_CHUNK_SIZE: {
                        char *endp;
                        unsigned long long sz;

                        e = memmem(p, avail, "\r\n", 2);
                        if (!e)
                                return avail > 1024 ? -EBADMSG : 0;
                        errno = 0;
                        sz = strtoull(p, &endp, 16);
                        if (endp == p || errno != 0)
                                return -EBADMSG;
                        c->pos += (size_t) (e - p) + 2;
                        if (sz == 0)
                                c->pstate = PARSE_TRAILER;
                        else {
                                c->body_left = sz;
                                c->pstate = PARSE_CHUNK_DATA;
                        }
                        break;
                }
                case PARSE_CHUNK_DATA:
                        if (avail < c->body_left) {
                                c->pos += avail;
                                c->body_left -= avail;
                                return 0;
                        }
                        c->pos += c->body_left;
                        c->body_left = 0;
                        c->pstate = PARSE_CHUNK_CRLF;
                        break;
                case PARSE_CHUNK_CRLF:
                        if (avail < 2)
                                return 0;
                        if (p[0] != '\r' || p[1] != '\n')
                                return -EBADMSG;
                        c->pos += 2;
                        c->pstate = PARSE_CHUNK_SIZE;
                        break;
                case PARSE_TRAILER:
                        e = memmem(p, avail, "\r\n", 2);
                        if (!e)
                                return 0;
                        c->pos += (size_t) (e - p) + 2;
                        if (e == p)
                                return 1;
                        break;
                case PARSE_EOF:
                        c->pos = c->in_len;
                        return 0;       /* completed by EOF in conn_read() */
                }
        }
}

/* Drop the consumed response from the input buffer. Data in c->in that is already parsed but
 * belongs to a body (PARSE_BODY etc.) is dropped as we go, to keep memory flat for long bodies. */
static void conn_consume(Conn *c) {
        if (c->pos >= c->in_len)
                c->in_len = 0;
        else {
                memmove(c->in, c->in + c->pos, c->in_len - c->pos);
                c->in_len -= c->pos;
        }
        c->pos = 0;
}

static ssize_t conn_recv(Conn *c, void *buf, size_t len) {
        char control[CMSG_SPACE(sizeof(struct timespec))];
        struct iovec iov = { .iov_base = buf, .iov_len = len };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = control,
                .msg_controllen = sizeof(control),
        };
        ssize_t k;

        if (c->tls) {
                k = gnutls_record_recv(c->tls, buf, len);
                if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED) {
                        errno = k == GNUTLS_E_AGAIN ? EAGAIN : EINTR;
                        return -1;
                }
                if (k == GNUTLS_E_PREMATURE_TERMINATION)
                        return 0;
                if (k < 0) {
                        errno = EIO;
                        return -1;
                }
                return k;
        }
        if (!c->rx_stamp)
                return read(c->fd, buf, len);
        k = recvmsg(c->fd, &mh, 0);
        if (k <= 0)
                return k;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;

                        memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
                        c->rx_usec = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
                }
        return k;
}

typedef enum ReadResult {
        READ_AGAIN,     /* nothing complete yet */
        READ_DONE,      /* one response complete */
        READ_ERROR,     /* connection error / unexpected close / garbage */
} ReadResult;

static ReadResult conn_read(Conn *c) {
        bool eof = false;
        int r;

        for (;;) {
                ssize_t k;

                if (c->in_size - c->in_len < 4096) {
                        size_t ns = c->in_size ? c->in_size * 2 : IN_BUF_MIN;
                        if (ns > IN_BUF_MAX)
                                return READ_ERROR;
                        c->in = xrealloc(c->in, ns);
                        c->in_size = ns;
                }
                k = conn_recv(c, c->in + c->in_len, c->in_size - c->in_len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return READ_ERROR;
                }
                if (k == 0) {
                        eof = true;
                        break;
                }
                c->in_len += (size_t) k;
                if (c->in_len < c->in_size && !(c->tls && gnutls_record_check_pending(c->tls) > 0))
                        break;  /* short read: the socket is most likely drained (GnuTLS holds nothing) */
        }

        r = parse_response(c);
        if (r < 0)
                return READ_ERROR;
        if (r > 0) {
                bool close_after = c->close_after;

                conn_consume(c);
                c->last_status = c->status;
                conn_reset_parser(c);
                c->close_after = close_after;
                if (eof)
                        c->close_after = true;
                return READ_DONE;
        }
        /* a body being parsed: drop what the parser has passed */
        if (c->pstate != PARSE_HEAD && c->pos > 0)
                conn_consume(c);
        if (eof) {
                if (c->pstate == PARSE_EOF) {
                        c->last_status = c->status;
                        return READ_DONE;
                }
                return READ_ERROR;
        }
        return READ_AGAIN;
}

static void count_status(int status) {
        if (status >= 200 && status < 300)
                n_2xx++;
        else
                n_non2xx++;
}

static void print_json_throughput(uint64_t end_usec) {
        double secs = (double) (end_usec - start_usec) / USEC_PER_SEC;

        if (lat_n > 0)
                qsort(lat, lat_n, sizeof(*lat), cmp_u32);
        printf("{\"mode\":\"%s\",\"concurrency\":%u,\"size\":%u,\"requests\":%" PRIu64
               ",\"ok\":%" PRIu64 ",\"non2xx\":%" PRIu64 ",\"conn_errors\":%" PRIu64
               ",\"reconnects\":%" PRIu64 ",\"seconds\":%.3f,\"rps\":%.1f"
               ",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"complete\":%s}\n",
               mode_table[arg_mode], arg_concurrency, arg_size, completed,
               n_2xx, n_non2xx, n_conn_errors, n_reconnects, secs,
               secs > 0 ? (double) completed / secs : 0.0,
               lat_pct_ms(50), lat_pct_ms(99), lat_pct_ms(100),
               (arg_requests == 0 || completed >= arg_requests) ? "true" : "false");
        fflush(stdout);
}

static int wait_timeout_ms(uint64_t deadline) {
        uint64_t n = now_usec();

        if (n >= deadline)
                return 0;
        return (int) ((deadline - n + 999) / 1000);
}

static int run_throughput(void) {
        Conn *conns;
        struct epoll_event evs[512];
        unsigned connected = 0, busy = 0;
        uint64_t deadline, drain_deadline = 0, t0;
        int r;

        conns = conn_array = calloc(arg_concurrency, sizeof(Conn));
        if (!conns)
                return -ENOMEM;
        conn_array_n = arg_concurrency;

        for (unsigned i = 0; i < arg_concurrency; i++) {
                conns[i].fd = -1;
                conns[i].kind = KIND_CLIENT;
                conns[i].target_idx = i % n_targets;
                r = conn_connect(&conns[i]);
                if (r < 0) {
                        fprintf(stderr, "loadgen: connect: %s\n", strerror(-r));
                        return r;
                }
        }

        /* connect phase: wait (up to 5 s) until every connection is established */
        t0 = now_usec();
        while (connected < arg_concurrency && now_usec() - t0 < 5 * USEC_PER_SEC) {
                int n = epoll_wait(epfd, evs, ELEMENTSOF(evs), 100);
                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;
                        int err = 0;
                        socklen_t len = sizeof(err);

                        if (c->state != CONN_CONNECTING)
                                continue;
                        (void) getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                        if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                                fprintf(stderr, "loadgen: connect to %s:%u: %s\n", arg_host, arg_port, strerror(err ? err : ECONNREFUSED));
                                return -(err ? err : ECONNREFUSED);
                        }
                        c->state = CONN_IDLE;
                        c->want_out = false;
                        (void) ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
                        connected++;
                }
        }
        if (connected < arg_concurrency) {
                fprintf(stderr, "loadgen: only %u of %u connections established\n", connected, arg_concurrency);
                return -ETIMEDOUT;
        }

        start_usec = now_usec();
        last_done_usec = start_usec;
        deadline = start_usec + (uint64_t) (arg_duration * USEC_PER_SEC);

        for (unsigned i = 0; i < arg_concurrency; i++) {
                r = conn_issue(&conns[i]);
                if (r < 0) {
                        n_conn_errors++;
                        conn_close(&conns[i]);
                } else if (conns[i].state == CONN_BUSY)
                        busy++;
        }

        for (;;) {
                int n, timeout;
                uint64_t now = now_usec();

                if (got_signal)
                        break;
                if (!stop_issuing && now >= deadline) {
                        stop_issuing = true;
                        drain_deadline = now + 2 * USEC_PER_SEC;
                }
                if (arg_requests > 0 && completed >= arg_requests)
                        break;
                if (stop_issuing && (busy == 0 || now >= drain_deadline))
                        break;

                timeout = wait_timeout_ms(stop_issuing ? drain_deadline : deadline);
                n = epoll_wait(epfd, evs, ELEMENTSOF(evs), timeout);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }

                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;
                        uint32_t e = evs[i].events;
                        ReadResult rr;

                        if (c->state == CONN_CONNECTING) {
                                int err = 0;
                                socklen_t len = sizeof(err);

                                (void) getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                                if (err != 0 || (e & (EPOLLERR | EPOLLHUP))) {
                                        n_conn_errors++;
                                        conn_close(c);
                                        continue;
                                }
                                c->state = CONN_IDLE;
                                c->want_out = false;
                                (void) ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
                                if (conn_issue(c) < 0) {
                                        n_conn_errors++;
                                        conn_close(c);
                                } else if (c->state == CONN_BUSY)
                                        busy++;
                                continue;
                        }

                        if ((e & EPOLLOUT) && c->state == CONN_BUSY && conn_flush(c) < 0) {
                                n_conn_errors++;
                                busy--;
                                conn_close(c);
                                continue;
                        }
                        if (!(e & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                                continue;

                        rr = conn_read(c);
                        if (rr == READ_AGAIN)
                                continue;
                        if (rr == READ_ERROR || c->state != CONN_BUSY) {
                                /* reset, early close or unsolicited data: count, reconnect */
                                if (c->state == CONN_BUSY)
                                        busy--;
                                n_conn_errors++;
                                conn_close(c);
                                if (!stop_issuing && n_conn_errors < 100000 && conn_connect(c) == 0)
                                        n_reconnects++;
                                continue;
                        }

                        now = now_usec();
                        completed++;
                        busy--;
                        count_status(c->last_status);
                        lat_add(now - c->send_usec);
                        last_done_usec = now;
                        c->state = CONN_IDLE;

                        if (c->close_after) {
                                conn_close(c);
                                if (!stop_issuing && conn_connect(c) == 0)
                                        n_reconnects++;
                                continue;
                        }
                        if (now >= deadline)
                                continue;
                        if (conn_issue(c) < 0) {
                                n_conn_errors++;
                                conn_close(c);
                                if (!stop_issuing && conn_connect(c) == 0)
                                        n_reconnects++;
                        } else if (c->state == CONN_BUSY)
                                busy++;
                }
        }

        print_json_throughput(last_done_usec);
        return 0;
}

static int run_watch(void) {
        Conn *w, *ctl;
        struct epoll_event evs[512];
        unsigned sent = 0, headers = 0, notified = 0, early = 0, errors = 0, connected = 0;
        uint64_t t0, all_sent_usec = 0, put_usec = 0, put_real_usec, put_done_usec = 0, deadline;
        uint64_t read_usec, last_read_usec = 0;
        int put_status = 0, r;
        bool ctl_connected = false, stamps_ok = true;
        const uint64_t register_wait = (uint64_t) arg_watch_wait_ms * 1000;

        w = conn_array = calloc(arg_watchers + 1, sizeof(Conn));
        if (!w)
                return -ENOMEM;
        conn_array_n = arg_watchers + 1;
        ctl = &w[arg_watchers];
        ctl->fd = -1;
        ctl->kind = KIND_CONTROL;

        r = conn_connect(ctl);
        if (r < 0) {
                fprintf(stderr, "loadgen: connect: %s\n", strerror(-r));
                return r;
        }
        for (unsigned i = 0; i < arg_watchers; i++) {
                w[i].fd = -1;
                w[i].kind = KIND_WATCHER;
                r = conn_connect(&w[i]);
                if (r < 0) {
                        fprintf(stderr, "loadgen: connect watcher %u: %s\n", i, strerror(-r));
                        return r;
                }
        }

        /* Phase 1: connect all, send the watch requests, wait until every watcher got its
         * response headers (etcd flushes them once the watch is registered) or, for servers that
         * hold the headers back, until --watch-wait-ms passed since the last request was sent. */
        t0 = now_usec();
        for (;;) {
                uint64_t now = now_usec();
                int n;

                if (got_signal)
                        return -EINTR;
                if (sent == arg_watchers && ctl_connected &&
                    (headers + errors + early >= arg_watchers || now - all_sent_usec >= register_wait))
                        break;
                if (now - t0 > 30 * USEC_PER_SEC) {
                        fprintf(stderr, "loadgen: watch setup timed out (%u/%u sent, ctl %d)\n", sent, arg_watchers, ctl_connected);
                        return -ETIMEDOUT;
                }
                n = epoll_wait(epfd, evs, ELEMENTSOF(evs), 10);
                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;
                        ReadResult rr;

                        if (c->state == CONN_CONNECTING) {
                                int err = 0;
                                socklen_t len = sizeof(err);

                                (void) getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                                if (err != 0 || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                                        fprintf(stderr, "loadgen: connect: %s\n", strerror(err ? err : ECONNREFUSED));
                                        return -(err ? err : ECONNREFUSED);
                                }
                                c->state = CONN_IDLE;
                                c->want_out = false;
                                (void) ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
                                connected++;
                                if (c->kind == KIND_CONTROL) {
                                        ctl_connected = true;
                                        continue;
                                }
                                build_watch(c);
                                c->state = CONN_BUSY;
                                c->send_usec = now_usec();
                                if (conn_flush(c) < 0) {
                                        errors++;
                                        conn_close(c);
                                }
                                if (++sent == arg_watchers)
                                        all_sent_usec = now_usec();
                                continue;
                        }
                        if ((evs[i].events & EPOLLOUT) && c->state == CONN_BUSY && conn_flush(c) < 0) {
                                errors++;
                                conn_close(c);
                                continue;
                        }
                        if (c->kind != KIND_WATCHER) {
                                /* the control connection must stay quiet */
                                continue;
                        }
                        rr = conn_read(c);
                        if (rr == READ_ERROR) {
                                errors++;
                                conn_close(c);
                                continue;
                        }
                        if (rr == READ_DONE) {
                                /* a watcher answered before the PUT: not a watch */
                                early++;
                                count_status(c->last_status);
                                c->done = true;
                                conn_close(c);
                                continue;
                        }
                        if (c->headers_seen && !c->registered) {
                                c->registered = true;
                                headers++;
                        }
                }
        }

        /* Phase 2: one PUT on the control connection; time every watcher's response from here.
         * The time a response arrived is the kernel's receive timestamp (SO_TIMESTAMPNS) of its
         * last piece, so the time this loop takes to read 1000 sockets does not count; the time
         * of the read is kept too (last_read_ms). Watchers go EPOLLONESHOT so that a finished
         * one costs no further syscall inside the timed loop. */
        for (unsigned i = 0; i < arg_watchers; i++) {
                Conn *c = &w[i];
                int one = 1;

                if (c->fd < 0 || c->done)
                        continue;
                if (setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) == 0)
                        c->rx_stamp = true;
                else
                        stamps_ok = false;
                (void) ep_set(c, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_MOD);
        }
        build_put_path(ctl, arg_watch_key);
        ctl->state = CONN_BUSY;
        put_real_usec = realtime_usec();
        put_usec = now_usec();
        ctl->send_usec = put_usec;
        r = conn_flush(ctl);
        if (r < 0) {
                fprintf(stderr, "loadgen: sending the PUT: %s\n", strerror(-r));
                return r;
        }

        deadline = put_usec + (uint64_t) (arg_duration * USEC_PER_SEC);
        while (notified + errors + early < arg_watchers || put_done_usec == 0) {
                int n;

                if (got_signal)
                        break;
                n = epoll_wait(epfd, evs, ELEMENTSOF(evs), wait_timeout_ms(deadline));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0 && now_usec() >= deadline)
                        break;

                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;
                        ReadResult rr;

                        if ((evs[i].events & EPOLLOUT) && c->state == CONN_BUSY && conn_flush(c) < 0) {
                                if (c->kind == KIND_WATCHER)
                                        errors++;
                                conn_close(c);
                                continue;
                        }
                        if (c->fd < 0)
                                continue;
                        rr = conn_read(c);
                        if (rr == READ_AGAIN) {
                                if (c->kind == KIND_WATCHER)
                                        (void) ep_set(c, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_MOD);
                                continue;
                        }
                        if (c->kind == KIND_CONTROL) {
                                if (rr == READ_DONE) {
                                        put_done_usec = now_usec();
                                        put_status = c->last_status;
                                } else
                                        put_done_usec = UINT64_MAX;
                                conn_close(c);
                                continue;
                        }
                        c->done = true;         /* disarmed by EPOLLONESHOT; closed below */
                        if (rr == READ_ERROR) {
                                errors++;
                                continue;
                        }
                        read_usec = now_usec() - put_usec;
                        if (read_usec > last_read_usec)
                                last_read_usec = read_usec;
                        if (c->rx_stamp && c->rx_usec >= put_real_usec && c->rx_usec - put_real_usec <= read_usec)
                                lat_add(c->rx_usec - put_real_usec);
                        else {
                                stamps_ok = false;
                                lat_add(read_usec);
                        }
                        count_status(c->last_status);
                        notified++;
                }
        }
        for (unsigned i = 0; i < conn_array_n; i++)
                conn_close(&w[i]);

        if (lat_n > 0)
                qsort(lat, lat_n, sizeof(*lat), cmp_u32);
        printf("{\"mode\":\"watch\",\"watchers\":%u,\"connected\":%u,\"headers_before_put\":%u"
               ",\"notified\":%u,\"early\":%u,\"errors\":%u,\"non2xx\":%" PRIu64
               ",\"put_status\":%d,\"put_ms\":%.3f"
               ",\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"last_ms\":%.3f"
               ",\"last_read_ms\":%.3f,\"times\":\"%s\",\"complete\":%s}\n",
               arg_watchers, connected > 0 ? connected - 1 : 0, headers,
               notified, early, errors, n_non2xx, put_status,
               (put_done_usec && put_done_usec != UINT64_MAX) ? (double) (put_done_usec - put_usec) / 1000.0 : -1.0,
               lat_pct_ms(50), lat_pct_ms(99), lat_pct_ms(100), lat_pct_ms(100),
               last_read_usec / 1000.0, stamps_ok ? "kernel-rx" : "read",
               notified == arg_watchers ? "true" : "false");
        fflush(stdout);

        return 0;
}

/* serve mode: answer every request with a tiny 200, keep-alive */
static int run_serve(void) {
        static const char reply[] =
                "HTTP/1.1 200 OK\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 15\r\n"
                "\r\n"
                "{\"ok\":\"bench\"}\n";
        struct epoll_event evs[512];
        Conn *l;
        int fd, one = 1;
        uint64_t served = 0, deadline = 0;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &target, sizeof(target)) < 0 || listen(fd, 4096) < 0) {
                int r = -errno;
                fprintf(stderr, "loadgen: bind/listen %s:%u: %s\n", arg_host, arg_port, strerror(errno));
                (void) close(fd);
                return r;
        }
        l = calloc(1, sizeof(Conn));
        if (!l)
                return -ENOMEM;
        l->fd = fd;
        l->kind = KIND_LISTENER;
        if (ep_set(l, EPOLLIN, EPOLL_CTL_ADD) < 0)
                return -errno;
        if (arg_duration_set)
                deadline = now_usec() + (uint64_t) (arg_duration * USEC_PER_SEC);

        while (!got_signal) {
                int n = epoll_wait(epfd, evs, ELEMENTSOF(evs), deadline ? wait_timeout_ms(deadline) : 1000);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (deadline && now_usec() >= deadline)
                        break;
                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;

                        if (c->kind == KIND_LISTENER) {
                                for (;;) {
                                        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                                        Conn *nc;

                                        if (cfd < 0)
                                                break;
                                        (void) setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                                        nc = calloc(1, sizeof(Conn));
                                        if (!nc) {
                                                (void) close(cfd);
                                                continue;
                                        }
                                        nc->fd = cfd;
                                        nc->kind = KIND_SERVED;
                                        if (ep_set(nc, EPOLLIN, EPOLL_CTL_ADD) < 0) {
                                                (void) close(cfd);
                                                free(nc);
                                        }
                                }
                                continue;
                        }

                        /* read, then answer each complete request (head + Content-Length body) */
                        for (;;) {
                                ssize_t k;

                                if (c->in_size - c->in_len < 4096) {
                                        c->in_size = c->in_size ? c->in_size * 2 : IN_BUF_MIN;
                                        c->in = xrealloc(c->in, c->in_size);
                                }
                                k = read(c->fd, c->in + c->in_len, c->in_size - c->in_len);
                                if (k <= 0) {
                                        if (k < 0 && errno == EAGAIN)
                                                break;
                                        conn_close(c);
                                        free(c->in);
                                        free(c);
                                        c = NULL;
                                        break;
                                }
                                c->in_len += (size_t) k;
                                if (c->in_len < c->in_size)
                                        break;
                        }
                        if (!c)
                                continue;
                        for (;;) {
                                const char *h = memmem(c->in, c->in_len, "\r\n\r\n", 4), *cl;
                                size_t need;

                                if (!h)
                                        break;
                                need = (size_t) (h - c->in) + 4;
                                cl = memmem(c->in, (size_t) (h - c->in), "\r\nContent-Length:", 17);
                                if (cl)
                                        need += strtoul(cl + 17, NULL, 10);
                                if (c->in_len < need)
                                        break;
                                memmove(c->in, c->in + need, c->in_len - need);
                                c->in_len -= need;
                                /* one small write; loopback sockets have room for it */
                                if (write(c->fd, reply, sizeof(reply) - 1) < 0)
                                        break;
                                served++;
                        }
                }
        }
        fprintf(stderr, "loadgen serve: %" PRIu64 " requests served\n", served);
        return 0;
}

/* idle mode: set up at most this many connections at a time, so that the server's accept
 * backlog never overflows (a dropped SYN costs a 1 s retransmit) */
#define IDLE_SETUP_BATCH 256u

/* idle mode: open -c N keep-alive connections, one GET of a preloaded key each, then hold them
 * open without traffic (etcd 3.4 keeps idle client connections indefinitely, etcd2 for its
 * 5-minute read timeout) until -d passes or a signal. One JSON line when all are set up ("phase":"ready",
 * flushed at once so that a driver can measure meanwhile), one at the end ("phase":"end"). */
static int run_idle(void) {
        Conn *conns;
        struct epoll_event evs[512];
        unsigned next = 0, pending = 0, ready = 0, errors = 0, refused_keepalive = 0, closed = 0;
        uint64_t t0, t_ready, deadline;
        int r, first_err = 0;

        conns = conn_array = calloc(arg_concurrency, sizeof(Conn));
        if (!conns)
                return -ENOMEM;
        conn_array_n = arg_concurrency;
        for (unsigned i = 0; i < arg_concurrency; i++) {
                conns[i].fd = -1;
                conns[i].kind = KIND_CLIENT;
                conns[i].target_idx = i % n_targets;
        }

        t0 = now_usec();
        while (ready + errors + refused_keepalive < arg_concurrency) {
                int n;

                while (next < arg_concurrency && pending < IDLE_SETUP_BATCH) {
                        Conn *c = &conns[next++];

                        r = conn_connect(c);
                        if (r < 0) {
                                if (!first_err)
                                        first_err = r;
                                errors++;
                                continue;
                        }
                        pending++;
                }
                if (got_signal)
                        return -EINTR;
                if (now_usec() - t0 > 120 * USEC_PER_SEC) {
                        fprintf(stderr, "loadgen: idle setup timed out (%u ready, %u errors)\n", ready, errors);
                        break;
                }
                n = epoll_wait(epfd, evs, ELEMENTSOF(evs), 100);
                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;
                        uint32_t e = evs[i].events;
                        ReadResult rr;

                        if (c->state == CONN_CONNECTING) {
                                int err = 0;
                                socklen_t len = sizeof(err);

                                (void) getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                                if (err != 0 || (e & (EPOLLERR | EPOLLHUP))) {
                                        if (!first_err)
                                                first_err = -(err ? err : ECONNREFUSED);
                                        errors++;
                                        pending--;
                                        conn_close(c);
                                        continue;
                                }
                                c->state = CONN_IDLE;
                                c->want_out = false;
                                (void) ep_set(c, EPOLLIN, EPOLL_CTL_MOD);
                                build_get(c, arg_prefix, arg_key_start + (uint64_t) (c - conns) % arg_keys);
                                c->state = CONN_BUSY;
                                c->send_usec = now_usec();
                                if (conn_flush(c) < 0) {
                                        errors++;
                                        pending--;
                                        conn_close(c);
                                }
                                continue;
                        }
                        if ((e & EPOLLOUT) && c->state == CONN_BUSY && conn_flush(c) < 0) {
                                errors++;
                                pending--;
                                conn_close(c);
                                continue;
                        }
                        if (!(e & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                                continue;
                        rr = conn_read(c);
                        if (rr == READ_AGAIN)
                                continue;
                        pending--;
                        if (rr == READ_ERROR) {
                                errors++;
                                conn_close(c);
                                continue;
                        }
                        completed++;
                        count_status(c->last_status);
                        lat_add(now_usec() - c->send_usec);
                        if (c->close_after) {
                                refused_keepalive++;
                                conn_close(c);
                                continue;
                        }
                        /* from now on any event means the server closed it (or sent garbage) */
                        c->state = CONN_IDLE;
                        (void) ep_set(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
                        free(c->in);
                        free(c->out);
                        c->in = c->out = NULL;
                        c->in_size = c->out_size = c->in_len = 0;
                        ready++;
                }
        }
        t_ready = now_usec();
        if (lat_n > 0)
                qsort(lat, lat_n, sizeof(*lat), cmp_u32);
        printf("{\"mode\":\"idle\",\"phase\":\"ready\",\"connections\":%u,\"open\":%u,\"errors\":%u"
               ",\"first_error\":\"%s\",\"refused_keepalive\":%u,\"non2xx\":%" PRIu64
               ",\"setup_seconds\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}\n",
               arg_concurrency, ready, errors, first_err ? strerror(-first_err) : "",
               refused_keepalive, n_non2xx, (double) (t_ready - t0) / USEC_PER_SEC,
               lat_pct_ms(50), lat_pct_ms(99), lat_pct_ms(100));
        fflush(stdout);

        /* hold them; count those the server closes */
        deadline = t_ready + (uint64_t) (arg_duration * USEC_PER_SEC);
        while (!got_signal) {
                int n = epoll_wait(epfd, evs, ELEMENTSOF(evs), wait_timeout_ms(deadline));

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0 && now_usec() >= deadline)
                        break;
                for (int i = 0; i < n; i++) {
                        Conn *c = evs[i].data.ptr;

                        if (c->fd < 0)
                                continue;
                        closed++;
                        conn_close(c);
                }
        }
        printf("{\"mode\":\"idle\",\"phase\":\"end\",\"connections\":%u,\"open_at_ready\":%u"
               ",\"closed_by_server\":%u,\"open\":%u,\"idle_seconds\":%.3f}\n",
               arg_concurrency, ready, closed, ready - closed, (double) (now_usec() - t_ready) / USEC_PER_SEC);
        fflush(stdout);
        return 0;
}

static void conn_array_free(void) {
        for (unsigned i = 0; i < conn_array_n; i++) {
                conn_close(&conn_array[i]);
                free(conn_array[i].in);
                free(conn_array[i].out);
        }
        free(conn_array);
        conn_array = NULL;
        conn_array_n = 0;
}

static void on_signal(int sig) {
        got_signal = sig;
}

static void help(void) {
        printf("loadgen --port P --mode put|get|mixed|watch|serve|idle [options]\n"
               "  --port P[,P2,...]     server port(s); with several, client connections go\n"
               "                        round-robin over them (watch/serve use the first)\n"
               "  --host ADDR           server address (default 127.0.0.1; numeric IPv4 only)\n"
               "  -c --concurrency N    connections, one request in flight each (default 1)\n"
               "  -d --duration SEC     run time (default 5; with --requests: a time limit;\n"
               "                        watch: how long to wait for notifications;\n"
               "                        idle: how long to hold the connections, default 600)\n"
               "  -n --requests N       stop after N responses instead of after --duration\n"
               "  -s --size BYTES       value size for PUTs (default 256)\n"
               "  -k --keys N           preloaded key count for get/mixed (default 10000)\n"
               "     --key-start N      first key number (default 0)\n"
               "     --prefix DIR       key directory (default bench)\n"
               "     --put-percent P    mixed: share of PUTs (default 10)\n"
               "  -w --watchers N       watch: long-poll watchers (default 1000)\n"
               "     --watch-key KEY    watch: key to watch (default w)\n"
               "     --watch-wait-ms MS watch: max wait for watch registration (default 2000)\n"
               "     --seed N           random seed\n"
               "     --tls-ca FILE      put/get/mixed: HTTPS, trusting FILE\n"
               "     --tls-cert FILE    with --tls-key: present this client certificate\n"
               "     --tls-key FILE\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_HOST = 0x100,
                ARG_PORT,
                ARG_MODE,
                ARG_KEY_START,
                ARG_PREFIX,
                ARG_PUT_PERCENT,
                ARG_WATCH_KEY,
                ARG_WATCH_WAIT,
                ARG_SEED,
                ARG_TLS_CA,
                ARG_TLS_CERT,
                ARG_TLS_KEY,
        };
        static const struct option options[] = {
                { "help",          no_argument,       NULL, 'h'             },
                { "host",          required_argument, NULL, ARG_HOST        },
                { "port",          required_argument, NULL, ARG_PORT        },
                { "mode",          required_argument, NULL, ARG_MODE        },
                { "concurrency",   required_argument, NULL, 'c'             },
                { "duration",      required_argument, NULL, 'd'             },
                { "requests",      required_argument, NULL, 'n'             },
                { "size",          required_argument, NULL, 's'             },
                { "keys",          required_argument, NULL, 'k'             },
                { "key-start",     required_argument, NULL, ARG_KEY_START   },
                { "prefix",        required_argument, NULL, ARG_PREFIX      },
                { "put-percent",   required_argument, NULL, ARG_PUT_PERCENT },
                { "watchers",      required_argument, NULL, 'w'             },
                { "watch-key",     required_argument, NULL, ARG_WATCH_KEY   },
                { "watch-wait-ms", required_argument, NULL, ARG_WATCH_WAIT  },
                { "seed",          required_argument, NULL, ARG_SEED        },
                { "tls-ca",        required_argument, NULL, ARG_TLS_CA      },
                { "tls-cert",      required_argument, NULL, ARG_TLS_CERT    },
                { "tls-key",       required_argument, NULL, ARG_TLS_KEY     },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "hc:d:n:s:k:w:", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        exit(EXIT_SUCCESS);
                case ARG_HOST:
                        arg_host = optarg;
                        break;
                case ARG_PORT: {
                        /* one port, or a comma-separated list (connections go round-robin) */
                        const char *p = optarg;

                        n_targets = 0;
                        for (;;) {
                                char *end;
                                unsigned long v = strtoul(p, &end, 10);

                                if (end == p || v == 0 || v > 65535 || n_targets >= MAX_TARGETS) {
                                        fprintf(stderr, "loadgen: bad --port list: %s\n", optarg);
                                        return -EINVAL;
                                }
                                arg_ports[n_targets++] = (unsigned) v;
                                if (*end == 0)
                                        break;
                                if (*end != ',') {
                                        fprintf(stderr, "loadgen: bad --port list: %s\n", optarg);
                                        return -EINVAL;
                                }
                                p = end + 1;
                        }
                        arg_port = arg_ports[0];
                        break;
                }
                case ARG_MODE:
                        arg_mode = _MODE_INVALID;
                        for (size_t i = 0; i < ELEMENTSOF(mode_table); i++)
                                if (strcmp(optarg, mode_table[i]) == 0)
                                        arg_mode = (Mode) i;
                        if (arg_mode < 0) {
                                fprintf(stderr, "loadgen: unknown mode '%s'\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'c':
                        arg_concurrency = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'd':
                        arg_duration = strtod(optarg, NULL);
                        arg_duration_set = true;
                        break;
                case 'n':
                        arg_requests = strtoull(optarg, NULL, 10);
                        break;
                case 's':
                        arg_size = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'k':
                        arg_keys = strtoull(optarg, NULL, 10);
                        break;
                case ARG_KEY_START:
                        arg_key_start = strtoull(optarg, NULL, 10);
                        break;
                case ARG_PREFIX:
                        arg_prefix = optarg;
                        break;
                case ARG_PUT_PERCENT:
                        arg_put_percent = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'w':
                        arg_watchers = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_WATCH_KEY:
                        arg_watch_key = optarg;
                        break;
                case ARG_WATCH_WAIT:
                        arg_watch_wait_ms = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_SEED:
                        arg_seed = strtoull(optarg, NULL, 0);
                        break;
                case ARG_TLS_CA:
                        arg_tls_ca = optarg;
                        break;
                case ARG_TLS_CERT:
                        arg_tls_cert = optarg;
                        break;
                case ARG_TLS_KEY:
                        arg_tls_key = optarg;
                        break;
                default:
                        return -EINVAL;
                }

        if (arg_port == 0 || arg_port > 65535 || arg_mode < 0) {
                fprintf(stderr, "loadgen: --port and --mode are required (see --help)\n");
                return -EINVAL;
        }
        if (arg_concurrency == 0 || arg_keys == 0 || arg_watchers == 0 || arg_duration <= 0) {
                fprintf(stderr, "loadgen: concurrency, keys, watchers and duration must be positive\n");
                return -EINVAL;
        }
        /* a request count needs a generous time limit unless one was given */
        if (arg_requests > 0 && !arg_duration_set)
                arg_duration = 600;
        if (arg_mode == MODE_WATCH && !arg_duration_set)
                arg_duration = 10;
        if (arg_mode == MODE_IDLE && !arg_duration_set)
                arg_duration = 600;
        return 0;
}

int main(int argc, char *argv[]) {
        struct sigaction sa = { .sa_handler = on_signal };
        int r;

        if (parse_argv(argc, argv) < 0)
                return 2;

        memset(&target, 0, sizeof(target));
        target.sin_family = AF_INET;
        target.sin_port = htons((uint16_t) arg_port);
        if (inet_pton(AF_INET, arg_host, &target.sin_addr) != 1) {
                fprintf(stderr, "loadgen: --host must be a numeric IPv4 address\n");
                return 2;
        }
        for (unsigned i = 0; i < n_targets; i++) {
                targets[i] = target;
                targets[i].sin_port = htons((uint16_t) arg_ports[i]);
        }

        raise_nofile();
        (void) signal(SIGPIPE, SIG_IGN);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);

        rng_state = arg_seed ? arg_seed : 1;

        if (arg_tls_ca) {
                int r;

                if (!IN_SET_TLS_MODE(arg_mode)) {
                        fprintf(stderr, "loadgen: --tls-ca works with --mode put, get and mixed only\n");
                        return 2;
                }
                r = gnutls_certificate_allocate_credentials(&tls_cred);
                if (r >= 0)
                        r = gnutls_certificate_set_x509_trust_file(tls_cred, arg_tls_ca, GNUTLS_X509_FMT_PEM);
                if (r >= 0 && arg_tls_cert && arg_tls_key)
                        r = gnutls_certificate_set_x509_key_file(tls_cred, arg_tls_cert, arg_tls_key,
                                                                 GNUTLS_X509_FMT_PEM);
                if (r < 0) {
                        fprintf(stderr, "loadgen: TLS credentials: %s\n", gnutls_strerror(r));
                        return 2;
                }
        }

        form_body_len = 6 + (size_t) arg_size;
        form_body = xrealloc(NULL, form_body_len + 1);
        memcpy(form_body, "value=", 6);
        for (size_t i = 0; i < arg_size; i++)
                form_body[6 + i] = (char) ('a' + i % 26);
        form_body[form_body_len] = 0;

        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0) {
                perror("loadgen: epoll_create1");
                return 1;
        }

        switch (arg_mode) {
        case MODE_SERVE:
                r = run_serve();
                break;
        case MODE_WATCH:
                r = run_watch();
                break;
        case MODE_IDLE:
                r = run_idle();
                break;
        default:
                r = run_throughput();
        }
        conn_array_free();
        free(form_body);
        free(lat);
        if (r < 0) {
                printf("{\"mode\":\"%s\",\"error\":\"%s\"}\n", mode_table[arg_mode], strerror(-r));
                return 1;
        }
        return 0;
}
