/* SPDX-License-Identifier: Apache-2.0 */
/* peer.c - the transport between members: persistent upgraded HTTP/1.1 streams of peer-codec frames. */

/*
 * Outbound: one Peer per destination ID, with one connection and a queue of encoded frames. A send
 * only appends to the queue and marks the peer dirty; a defer source flushes every dirty peer once
 * per loop iteration with one sendmsg() (many frames per system call). Above the queue cap, frames are
 * dropped and counted: raft retransmits. A connection that fails (connect error, refusal, reset)
 * is retried after a backoff that doubles from 50 ms to 1 s and is reset by a successful upgrade.
 *
 * Inbound: streams are receive-only. Either our own listener accepted the socket and we parse the
 * upgrade request here, or the HTTP server did and hands the socket over. Frames are decoded
 * incrementally; a frame from another cluster or sender, or a corrupt stream, resets the connection.
 *
 * Who may open a stream (peer_transport_check(), before any byte after the request head is read):
 * a sender of our cluster (412), of a compatible version (412), other than ourselves (404), and that
 * the member layer knows as a member (404 unknown, 410 removed). The IDs are public (the client port
 * hands them out), so without peer TLS this stops mistakes and blind attacks, not an impersonator;
 * what bounds an impersonator is: one stream per claimed sender (a newer one replaces the older, as
 * in etcd2), a cap on inbound connections, a deadline for the request head, an idle timeout for
 * streams, and per-type caps on each frame's declared length (peer-codec.h). Each refusal is logged
 * once per sender per minute, and at most PEER_REFUSAL_LOG_BURST refusals a minute in all. Streams
 * are deliberately not tied to the source address of the sender's peer URLs (etcd2 does not either):
 * that breaks members behind NAT, 0.0.0.0 listeners and host names, and stops nobody on the same
 * network; peer TLS with client certificates is the answer.
 *
 * Every socket is registered with one inner epoll fd; sd-event watches only that one.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include <unistd.h>

#include "log.h"
#include "peer.h"
#include "tls.h"

#define HEAD_MAX 4096
#define HANDSHAKE_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define READ_CHUNK ((size_t) 64 * 1024)
#define READ_BUDGET ((size_t) 4 * 1024 * 1024)  /* per connection per wake-up, for fairness */
#define WRITEV_MAX 64
#define UPGRADE_TOKEN "etcd2-raft/1"
/* Our own listener: connections at once (streams and heads being read); further ones are closed. */
#define INBOUND_MAX 64
/* Refusal logging: a sender is logged again after this long; at most this many lines a minute. */
#define REFUSAL_LOG_INTERVAL_USEC (60 * USEC_PER_SEC)
#define REFUSAL_LOG_SENDERS 32
#define PEER_REFUSAL_LOG_BURST 20
/* A failed TLS handshake with a member is logged again after this long. */
#define TLS_ERROR_LOG_INTERVAL_USEC (60 * USEC_PER_SEC)
/* A lost stream to a member is logged again after this long (the ones between at debug, counted). */
#define STREAM_LOSS_LOG_INTERVAL_USEC (60 * USEC_PER_SEC)

typedef enum ConnState {
        CONN_CONNECTING,        /* outbound: non-blocking connect() in progress */
        CONN_TLS_HANDSHAKE,     /* outbound to an https URL: the TLS handshake */
        CONN_RESPONSE,          /* outbound: request sent, reading the response head */
        CONN_REQUEST,           /* inbound (own listener): reading the request head */
        CONN_STREAM,            /* frames flow */
} ConnState;

typedef struct Peer Peer;
typedef struct Conn Conn;

typedef struct Chunk {
        uint8_t *data;
        size_t size, offset;
        uint64_t tag;
} Chunk;

struct Conn {
        PeerTransport *t;
        Conn *prev, *next;       /* inbound list */
        Peer *peer;              /* outbound: the peer this connection serves */
        int fd;
        gnutls_session_t tls;    /* NULL: plain TCP */
        char *tls_host;          /* outbound: the name verified (GnuTLS keeps the pointer) */
        uint8_t *gather;         /* outbound over TLS: small frames gathered into one record */
        bool tls_again;          /* outbound over TLS: GnuTLS holds a record it could not send yet */
        int tls_error;           /* the GnuTLS error that ended a read, or 0 */
        ConnState state;
        bool inbound;
        uint64_t from;           /* inbound: the sender */
        uint64_t started_usec;
        uint64_t last_frame_usec;   /* inbound stream: the last bytes received (or the upgrade) */
        char head[HEAD_MAX];
        size_t head_len;
        PeerDecoder *decoder;
        void (*release)(void *userdata);
        void *release_userdata;
        bool doomed;             /* dropped while its frames were being delivered */
};

struct Peer {
        PeerTransport *t;
        uint64_t id;
        char *address;
        Conn *conn;
        Chunk *queue;
        size_t n_queue, alloc_queue, queue_head;
        size_t queued_bytes;
        bool dirty;
        Peer *next_dirty;
        sd_event_source *retry_source;
        uint64_t backoff_usec;
        int last_refusal;
        uint64_t last_tls_error_usec;   /* the last failed TLS handshake logged */
        uint64_t last_loss_log_usec;    /* the last lost stream logged at info */
        unsigned n_losses_unlogged;     /* lost streams logged at debug since */
        bool pinned;             /* address set by peer_transport_set_address(): raft's is ignored */
        uint64_t last_write_usec;  /* the last bytes written to the stream */
        PeerStats stats;
};

struct PeerTransport {
        sd_event *event;
        uint64_t member_id, cluster_id;
        char *self_address;
        int epoll_fd;
        sd_event_source *epoll_source;
        sd_event_source *flush_source;
        sd_event_source *housekeeping_source;
        Peer **peers;
        size_t n_peers;
        Peer *dirty;
        Conn *inbound;
        unsigned n_inbound, n_inbound_streams;
        uint64_t stream_idle_usec;   /* 0: streams never time out */
        struct {
                uint64_t id;
                uint64_t last_usec;
        } refusals[REFUSAL_LOG_SENDERS];
        uint64_t refusal_window_usec;
        unsigned n_refusals_logged, n_refusals_suppressed;
        int listen_fd;
        gnutls_certificate_credentials_t tls_cred;   /* for https peer URLs (NULL until needed) */
        TlsInfo tls_info;
        char *tls_strings[3];
        size_t queue_max;
        PeerRecvFunc recv;
        PeerCheckFunc check;
        PeerRefusedFunc refused;
        void *userdata;
        PeerDrainedFunc drained;
        void *drained_userdata;
        size_t frame_max;        /* inbound frame body cap, 0 = PEER_FRAME_BODY_MAX_DEFAULT */
        bool freeing;
        Conn *dispatching;       /* the connection whose frame is being delivered */
};

/* The listening socket is registered with this marker as its epoll data. */
static char listen_marker;

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

static void peer_schedule_retry(Peer *p);
static void peer_mark_dirty(Peer *p);

/* ---- connections ---- */

static int conn_epoll(Conn *c, int op, uint32_t events) {
        struct epoll_event ev = { .events = events, .data.ptr = c };

        if (epoll_ctl(c->t->epoll_fd, op, c->fd, &ev) < 0)
                return -errno;
        return 0;
}

static void conn_free(Conn *c) {
        PeerTransport *t;

        if (!c)
                return;
        t = c->t;
        if (c->tls) {
                if (c->state == CONN_STREAM)
                        (void) gnutls_bye(c->tls, GNUTLS_SHUT_WR);   /* close_notify, if the socket takes it */
                gnutls_deinit(c->tls);
        }
        free(c->tls_host);
        free(c->gather);
        if (c->fd >= 0) {
                (void) epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
                if (c->release)
                        c->release(c->release_userdata);
                else
                        (void) close(c->fd);
        }
        if (c->inbound) {
                if (c->prev)
                        c->prev->next = c->next;
                else if (t->inbound == c)
                        t->inbound = c->next;
                if (c->next)
                        c->next->prev = c->prev;
                t->n_inbound--;
                if (c->state == CONN_STREAM)
                        t->n_inbound_streams--;
        }
        if (c->peer && c->peer->conn == c)
                c->peer->conn = NULL;
        peer_decoder_free(c->decoder);
        free(c);
}

/* A lost stream, at info at most once a minute per member: a link that breaks every connection (a
 * middlebox cutting records, a corrupting NIC: each broken record ends one) would log a line per
 * reconnection, and a successful upgrade resets the backoff. */
static void peer_log_loss(Peer *p, const char *what) {
        uint64_t now = now_usec();

        if (p->last_loss_log_usec != 0 && p->last_loss_log_usec + STREAM_LOSS_LOG_INTERVAL_USEC > now) {
                p->n_losses_unlogged++;
                log_debug("Lost the stream to member %" PRIx64 " (%s): %s", p->id, p->address, what);
                return;
        }
        if (p->n_losses_unlogged > 0)
                log_info("Lost the stream to member %" PRIx64 " (%s): %s (%u more times since the last such line)",
                         p->id, p->address, what, p->n_losses_unlogged);
        else
                log_info("Lost the stream to member %" PRIx64 " (%s): %s", p->id, p->address, what);
        p->last_loss_log_usec = now;
        p->n_losses_unlogged = 0;
}

/* An outbound connection failed or ended: forget it and try again later. */
static void peer_conn_lost(Peer *p, int error, const char *what) {
        if (p->conn) {
                /* The receiver closes streams that stay silent (between two followers nothing flows):
                 * that is no news, the stream is opened again when there is something to send. */
                if (p->conn->state == CONN_STREAM && p->t->stream_idle_usec > 0 &&
                    p->last_write_usec + p->t->stream_idle_usec / 2 < now_usec())
                        log_debug("The idle stream to member %" PRIx64 " (%s) ended: %s", p->id, p->address, what);
                else if (p->conn->state == CONN_STREAM)
                        peer_log_loss(p, what);
                else if (p->backoff_usec == 0)
                        log_debug("Failed to connect to member %" PRIx64 " (%s): %s", p->id, p->address, what);
                conn_free(p->conn);
                p->conn = NULL;
        }
        /* Senders of multi-frame streams (snapshots) learn from this that frames may be lost. */
        p->stats.n_lost++;
        /* The partly written frame at the head cannot be resumed on a new connection. */
        if (p->queue_head < p->n_queue && p->queue[p->queue_head].offset > 0) {
                Chunk *ch = &p->queue[p->queue_head];

                p->queued_bytes -= ch->size;
                free(ch->data);
                p->queue_head++;
                p->stats.n_failed++;
        }
        (void) error;
        peer_schedule_retry(p);
}

static void conn_add_inbound(PeerTransport *t, Conn *c) {
        t->n_inbound++;
        c->inbound = true;
        c->next = t->inbound;
        if (t->inbound)
                t->inbound->prev = c;
        t->inbound = c;
}

static Conn *conn_new(PeerTransport *t, int fd) {
        Conn *c = calloc(1, sizeof(Conn));

        if (!c)
                return NULL;
        c->t = t;
        c->fd = fd;
        c->started_usec = now_usec();
        return c;
}

/* Reads like read(): bytes, 0 at the end, or -1 with errno. Over TLS, a TCP end without close_notify
 * is an end too. */
static ssize_t conn_recv(Conn *c, void *buf, size_t size) {
        if (!c->tls)
                return read(c->fd, buf, size);
        return tls_recv(c->tls, buf, size, "a peer stream", &c->tls_error);
}

/* ---- peers ---- */

static Peer *peer_find(PeerTransport *t, uint64_t id) {
        for (size_t i = 0; i < t->n_peers; i++)
                if (t->peers[i]->id == id)
                        return t->peers[i];
        return NULL;
}

static void queue_clear(Peer *p) {
        for (size_t i = p->queue_head; i < p->n_queue; i++)
                free(p->queue[i].data);
        p->n_queue = p->queue_head = 0;
        p->queued_bytes = 0;
}

static void peer_free(Peer *p) {
        if (!p)
                return;
        conn_free(p->conn);
        queue_clear(p);
        free(p->queue);
        sd_event_source_disable_unref(p->retry_source);
        free(p->address);
        free(p);
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata);

static Peer *peer_get(PeerTransport *t, uint64_t id, const char *address) {
        Peer *p = peer_find(t, id), **a;

        if (p) {
                if (address && !p->pinned && !streq(address, strempty(p->address))) {
                        char *n = strdup(address);

                        if (!n)
                                return NULL;
                        log_info("Member %" PRIx64 " moved from %s to %s.", id, strempty(p->address), address);
                        free(p->address);
                        p->address = n;
                        if (p->conn) {
                                conn_free(p->conn);
                                p->conn = NULL;
                        }
                        p->backoff_usec = 0;
                }
                return p;
        }
        if (!address)
                return NULL;
        a = reallocarray(t->peers, t->n_peers + 1, sizeof(Peer *));
        if (!a)
                return NULL;
        t->peers = a;
        p = calloc(1, sizeof(Peer));
        if (!p)
                return NULL;
        p->t = t;
        p->id = id;
        p->address = strdup(address);
        if (!p->address || sd_event_add_time(t->event, &p->retry_source, CLOCK_MONOTONIC, UINT64_MAX,
                                             USEC_PER_MSEC, on_retry, p) < 0) {
                free(p->address);
                free(p);
                return NULL;
        }
        (void) sd_event_source_set_enabled(p->retry_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(p->retry_source, "peer-retry");
        t->peers[t->n_peers++] = p;
        return p;
}

static void peer_schedule_retry(Peer *p) {
        if (p->t->freeing)
                return;
        p->backoff_usec = p->backoff_usec == 0 ? PEER_BACKOFF_MIN_USEC
                                               : MIN(p->backoff_usec * 2, (uint64_t) PEER_BACKOFF_MAX_USEC);
        (void) sd_event_source_set_time_relative(p->retry_source, p->backoff_usec);
        (void) sd_event_source_set_enabled(p->retry_source, SD_EVENT_ONESHOT);
}

/* "http://host:port" -> host, port. */
static int parse_address(const char *address, char **ret_host, char **ret_port) {
        const char *s = address, *colon, *end;
        char *host, *port;

        if (strncasecmp(s, "http://", 7) == 0)
                s += 7;
        else if (strncasecmp(s, "https://", 8) == 0)
                s += 8;
        end = s + strcspn(s, "/");
        if (*s == '[') {
                const char *close = memchr(s, ']', end - s);

                if (!close || close[1] != ':')
                        return -EINVAL;
                host = strndup(s + 1, close - s - 1);
                colon = close + 1;
        } else {
                colon = NULL;
                for (const char *c = s; c < end; c++)
                        if (*c == ':')
                                colon = c;
                if (!colon)
                        return -EINVAL;
                host = strndup(s, colon - s);
        }
        port = strndup(colon + 1, end - colon - 1);
        if (!host || !port) {
                free(host);
                free(port);
                return -ENOMEM;
        }
        *ret_host = host;
        *ret_port = port;
        return 0;
}

static int peer_connect(Peer *p) {
        PeerTransport *t = p->t;
        _cleanup_(freep) char *host = NULL, *port = NULL;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG }, *ai = NULL;
        Conn *c;
        int fd, r, one = 1;

        r = parse_address(p->address, &host, &port);
        if (r < 0)
                return log_warning_errno(r, "Cannot connect to member %" PRIx64 " at '%s': %m", p->id, p->address);
        r = getaddrinfo(host, port, &hints, &ai);
        if (r != 0 || !ai) {
                if (ai)
                        freeaddrinfo(ai);
                return -EHOSTUNREACH;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                freeaddrinfo(ai);
                return r;
        }
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(ai);
        if (r < 0 && errno != EINPROGRESS) {
                r = -errno;
                (void) close(fd);
                return r;
        }
        c = conn_new(t, fd);
        if (!c) {
                (void) close(fd);
                return -ENOMEM;
        }
        c->peer = p;
        c->state = CONN_CONNECTING;
        r = conn_epoll(c, EPOLL_CTL_ADD, EPOLLOUT);
        if (r < 0) {
                conn_free(c);
                return r;
        }
        p->conn = c;
        return 0;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Peer *p = userdata;
        int r;

        if (p->conn)
                return 0;
        r = peer_connect(p);
        if (r < 0)
                peer_schedule_retry(p);
        return 0;
}

/* Starts a connection if there is none and no retry is pending. */
static void peer_ensure_conn(Peer *p) {
        int enabled = SD_EVENT_OFF;

        if (p->conn || p->t->freeing)
                return;
        (void) sd_event_source_get_enabled(p->retry_source, &enabled);
        if (enabled != SD_EVENT_OFF)
                return;
        if (peer_connect(p) < 0)
                peer_schedule_retry(p);
}

/* ---- sending ---- */

static void peer_mark_dirty(Peer *p) {
        if (p->dirty)
                return;
        p->dirty = true;
        p->next_dirty = p->t->dirty;
        p->t->dirty = p;
        (void) sd_event_source_set_enabled(p->t->flush_source, SD_EVENT_ONESHOT);
}

static int peer_enqueue(Peer *p, uint8_t *data, size_t size, uint64_t tag) {
        /* A message larger than the cap (a snapshot) still goes if nothing else is queued. */
        if (p->queued_bytes > 0 && p->queued_bytes + size > p->t->queue_max) {
                free(data);
                p->stats.n_dropped++;
                if (p->stats.n_dropped == 1 || p->stats.n_dropped % 1000 == 0)
                        log_warning("Dropped %" PRIu64 " messages to member %" PRIx64 ": %zu bytes queued.",
                                    p->stats.n_dropped, p->id, p->queued_bytes);
                return -ENOBUFS;
        }
        if (p->queue_head > 0 && p->queue_head == p->n_queue)
                p->queue_head = p->n_queue = 0;
        if (p->n_queue == p->alloc_queue) {
                size_t n;
                Chunk *q;

                /* Compact before growing. */
                if (p->queue_head > 0) {
                        memmove(p->queue, p->queue + p->queue_head, (p->n_queue - p->queue_head) * sizeof(Chunk));
                        p->n_queue -= p->queue_head;
                        p->queue_head = 0;
                }
                if (p->n_queue == p->alloc_queue) {
                        n = MAX(p->alloc_queue * 2, (size_t) 16);
                        q = reallocarray(p->queue, n, sizeof(Chunk));
                        if (!q) {
                                free(data);
                                return -ENOMEM;
                        }
                        p->queue = q;
                        p->alloc_queue = n;
                }
        }
        p->queue[p->n_queue++] = (Chunk) { .data = data, .size = size, .tag = tag };
        p->queued_bytes += size;
        peer_mark_dirty(p);
        return 0;
}

/* The queue's first `k` bytes are written (to the socket, or to GnuTLS which holds them encrypted). */
static void peer_advance(Peer *p, size_t k) {
        p->stats.bytes_sent += (uint64_t) k;
        p->last_write_usec = now_usec();
        while (k > 0) {
                Chunk *ch = &p->queue[p->queue_head];
                size_t left = ch->size - ch->offset;

                if (k < left) {
                        ch->offset += k;
                        break;
                }
                k -= left;
                p->queued_bytes -= ch->size;
                free(ch->data);
                p->queue_head++;
                p->stats.n_sent++;
        }
}

/* Over TLS: one record per call, small frames gathered into one (a large one sent from its place). A
 * record GnuTLS could not send (GNUTLS_E_AGAIN) is encrypted and held by it: its bytes count as written
 * (peer_advance()), and gnutls_record_send(NULL, 0) sends it before anything else. Returns 0 when all is
 * out, -EAGAIN when the socket is full, or another error. */
static int peer_flush_tls(Peer *p, Conn *c) {
        size_t max = gnutls_record_get_max_size(c->tls);

        if (max == 0 || max > 16384)
                max = 16384;
        for (;;) {
                const uint8_t *data;
                size_t len;
                ssize_t k;

                if (c->tls_again) {
                        k = gnutls_record_send(c->tls, NULL, 0);
                        if (k == GNUTLS_E_AGAIN)
                                return -EAGAIN;
                        if (k == GNUTLS_E_INTERRUPTED)
                                continue;
                        if (k < 0)
                                return -EPIPE;
                        c->tls_again = false;
                }
                if (p->queue_head == p->n_queue)
                        return 0;

                data = p->queue[p->queue_head].data + p->queue[p->queue_head].offset;
                len = p->queue[p->queue_head].size - p->queue[p->queue_head].offset;
                if (len < max && p->queue_head + 1 < p->n_queue) {
                        size_t m = 0;

                        if (!c->gather) {
                                c->gather = malloc(16384);
                                if (!c->gather)
                                        return -ENOMEM;
                        }
                        for (size_t i = p->queue_head; i < p->n_queue && m < max; i++) {
                                const Chunk *ch = &p->queue[i];
                                size_t take = MIN(ch->size - ch->offset, max - m);

                                memcpy(c->gather + m, ch->data + ch->offset, take);
                                m += take;
                        }
                        data = c->gather;
                        len = m;
                } else
                        len = MIN(len, max);

                k = gnutls_record_send(c->tls, data, len);
                if (k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED) {
                        c->tls_again = true;
                        k = (ssize_t) len;
                } else if (k < 0) {
                        log_debug("Failed to write to member %" PRIx64 " over TLS: %s", p->id, gnutls_strerror((int) k));
                        return -EPIPE;
                }
                peer_advance(p, (size_t) k);
        }
}

static void peer_flush(Peer *p) {
        Conn *c = p->conn;

        if (p->queue_head == p->n_queue && !(c && c->tls_again))
                return;
        if (!c) {
                peer_ensure_conn(p);
                return;
        }
        if (c->state != CONN_STREAM)
                return;

        if (c->tls) {
                int r = peer_flush_tls(p, c);

                if (r == -EAGAIN) {
                        (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                        return;
                }
                if (r < 0) {
                        peer_conn_lost(p, r, "failed to write");
                        return;
                }
        }
        while (p->queue_head < p->n_queue) {
                struct iovec iov[WRITEV_MAX];
                size_t n = 0;
                ssize_t k;

                for (size_t i = p->queue_head; i < p->n_queue && n < WRITEV_MAX; i++, n++)
                        iov[n] = (struct iovec) {
                                .iov_base = p->queue[i].data + p->queue[i].offset,
                                .iov_len = p->queue[i].size - p->queue[i].offset,
                        };
                /* sendmsg() rather than writev(): MSG_NOSIGNAL, a closed stream must not SIGPIPE an
                 * embedder that did not ignore the signal (the receiver closes idle streams). */
                k = sendmsg(c->fd, &(struct msghdr) { .msg_iov = iov, .msg_iovlen = n }, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                                return;
                        }
                        peer_conn_lost(p, -errno, strerror(errno));
                        return;
                }
                peer_advance(p, (size_t) k);
        }
        (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN);
        /* Everything is in the socket: a stream sender may produce its next frame now. */
        if (p->t->drained)
                p->t->drained(p->t, p->id, p->t->drained_userdata);
}

static int on_flush(sd_event_source *s, void *userdata) {
        PeerTransport *t = userdata;
        Peer *p;

        while ((p = t->dirty)) {
                t->dirty = p->next_dirty;
                p->next_dirty = NULL;
                p->dirty = false;
                peer_flush(p);
        }
        return 0;
}

static int send_one(PeerTransport *t, Peer *p, const struct raft_message *m) {
        uint8_t *buf;
        size_t size;
        int r;

        r = peer_frame_size(m, t->self_address, &size);
        if (r < 0)
                return log_warning_errno(r, "Cannot encode raft message of type %d: %m", m->type);
        buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        (void) peer_frame_write(m, t->cluster_id, t->member_id, t->self_address, buf);
        return peer_enqueue(p, buf, size, 0);
}

/* The body bound of the AppendEntries frames we send: a quarter of what a receiver accepts (its cap is
 * ours: the same build and configuration), at most PEER_APPEND_FRAME_MAX. */
static size_t append_frame_max(PeerTransport *t) {
        size_t cap = t->frame_max > 0 ? t->frame_max : PEER_FRAME_BODY_MAX_DEFAULT;

        return MIN(cap / 4, (size_t) PEER_APPEND_FRAME_MAX);
}

/* libraft 0.15 puts everything a follower misses into one AppendEntries (up to the whole log kept after
 * a snapshot). A frame over the receiver's cap would be refused, the stream reset, and the same message
 * sent again: the follower would never catch up. So a big one goes as several AppendEntries of
 * consecutive entries, each a valid message on its own (same term and commit index, prev_log_index and
 * prev_log_term of the entry before its first): the follower appends them in order and answers each;
 * one lost in between is a rejection that libraft recovers from as from any lost message (Raft thesis
 * §3.5). An entry bigger than the bound goes alone. */
int peer_transport_send_raft(PeerTransport *t, const struct raft_message *m) {
        const struct raft_append_entries *ae = &m->append_entries;
        size_t max, size = 0;
        unsigned first = 0;
        Peer *p;
        int r;

        p = peer_get(t, m->server_id, m->server_address);
        if (!p)
                return -ENOMEM;
        if (m->type != RAFT_IO_APPEND_ENTRIES || ae->n_entries <= 1)
                return send_one(t, p, m);
        max = append_frame_max(t);
        for (unsigned i = 0; i < ae->n_entries; i++)
                size += ae->entries[i].buf.len + 64;
        if (size <= max)
                return send_one(t, p, m);

        while (first < ae->n_entries) {
                struct raft_message piece = *m;
                unsigned n = 0;

                size = 0;
                while (first + n < ae->n_entries &&
                       (n == 0 || size + ae->entries[first + n].buf.len + 64 <= max)) {
                        size += ae->entries[first + n].buf.len + 64;
                        n++;
                }
                piece.append_entries.prev_log_index = ae->prev_log_index + first;
                piece.append_entries.prev_log_term = first == 0 ? ae->prev_log_term : ae->entries[first - 1].term;
                piece.append_entries.entries = ae->entries + first;
                piece.append_entries.n_entries = n;
                r = send_one(t, p, &piece);
                if (r < 0)
                        return r;   /* the rest is not sent either: as a lost message */
                first += n;
        }
        return 0;
}

int peer_transport_send_opaque(PeerTransport *t, uint64_t to, const char *address, const void *body, size_t size,
                               uint64_t tag) {
        Peer *p;
        uint8_t *buf;

        if (size > UINT32_MAX)
                return -E2BIG;
        p = peer_get(t, to, address);
        if (!p)
                return address ? -ENOMEM : -ENOENT;
        buf = malloc(PEER_FRAME_HEADER_SIZE + size);
        if (!buf)
                return -ENOMEM;
        peer_frame_write_opaque_header(t->cluster_id, t->member_id, (uint32_t) size, buf);
        if (size > 0)
                memcpy(buf + PEER_FRAME_HEADER_SIZE, body, size);
        return peer_enqueue(p, buf, PEER_FRAME_HEADER_SIZE + size, tag);
}

void peer_transport_cancel_unsent(PeerTransport *t, uint64_t to, void (*cb)(uint64_t tag, void *userdata),
                                  void *userdata) {
        Peer *p = peer_find(t, to);
        size_t keep;

        if (!p)
                return;
        /* The head may be partly written: it stays. */
        keep = p->queue_head;
        if (keep < p->n_queue && p->queue[keep].offset > 0)
                keep++;
        for (size_t i = keep; i < p->n_queue; i++) {
                if (p->queue[i].tag != 0 && cb)
                        cb(p->queue[i].tag, userdata);
                p->queued_bytes -= p->queue[i].size;
                free(p->queue[i].data);
        }
        p->n_queue = keep;
}

void peer_transport_drop(PeerTransport *t, uint64_t id) {
        for (size_t i = 0; i < t->n_peers; i++)
                if (t->peers[i]->id == id) {
                        Peer *p = t->peers[i];

                        /* Unlink from the dirty list. */
                        for (Peer **d = &t->dirty; *d; d = &(*d)->next_dirty)
                                if (*d == p) {
                                        *d = p->next_dirty;
                                        break;
                                }
                        t->peers[i] = t->peers[--t->n_peers];
                        peer_free(p);
                        break;
                }
        for (Conn *c = t->inbound, *n; c; c = n) {
                n = c->next;
                if (c->from != id)
                        continue;
                if (c == t->dispatching)
                        c->doomed = true;   /* freed once its frame is delivered */
                else
                        conn_free(c);
        }
}

int peer_transport_set_address(PeerTransport *t, uint64_t id, const char *address) {
        Peer *p = peer_get(t, id, address);

        if (!p)
                return -ENOMEM;
        p->pinned = true;
        return 0;
}

/* ---- handshake ---- */

/* Finds the value of header `name` in a request/response head (NUL-terminated); copies it. */
static bool head_header(const char *head, const char *name, char *ret, size_t size) {
        size_t nl = strlen(name);

        for (const char *l = strstr(head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
                const char *h = l + 2, *v, *e;

                if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
                        continue;
                v = h + nl + 1;
                while (*v == ' ' || *v == '\t')
                        v++;
                e = strstr(v, "\r\n");
                if (!e)
                        e = v + strlen(v);
                while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                        e--;
                if ((size_t) (e - v) >= size)
                        return false;
                memcpy(ret, v, e - v);
                ret[e - v] = 0;
                return true;
        }
        return false;
}

static int parse_hex_id(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (!s || !*s || strlen(s) > 16)
                return -EINVAL;
        for (const char *c = s; *c; c++)
                if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f') || (*c >= 'A' && *c <= 'F')))
                        return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 16);
        if (errno != 0 || *end)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Logs a refused stream: once per sender per minute, and at most PEER_REFUSAL_LOG_BURST lines a
 * minute in all (the sender IDs are the peer's to choose), with a count of what was left out. */
static void refusal_log(PeerTransport *t, uint64_t from, int status, const char *why) {
        uint64_t now = now_usec();
        size_t slot = 0;

        for (size_t i = 0; i < ELEMENTSOF(t->refusals); i++) {
                if (t->refusals[i].id == from) {
                        if (t->refusals[i].last_usec + REFUSAL_LOG_INTERVAL_USEC > now)
                                return;
                        slot = i;
                        break;
                }
                if (t->refusals[i].last_usec < t->refusals[slot].last_usec)
                        slot = i;   /* else the least recently logged one makes room */
        }
        if (t->refusal_window_usec + REFUSAL_LOG_INTERVAL_USEC <= now) {
                if (t->n_refusals_suppressed > 0)
                        log_warning("%u more refused peer streams were not logged in the last minute.",
                                    t->n_refusals_suppressed);
                t->refusal_window_usec = now;
                t->n_refusals_logged = t->n_refusals_suppressed = 0;
        }
        if (t->n_refusals_logged >= PEER_REFUSAL_LOG_BURST) {
                t->n_refusals_suppressed++;
                return;
        }
        t->n_refusals_logged++;
        t->refusals[slot].id = from;
        t->refusals[slot].last_usec = now;
        log_warning("Refused a peer stream from member %" PRIx64 " with %d: %s.", from, status, why);
}

/* "2.3.8" -> 2, 3, 8. */
static bool parse_version(const char *s, unsigned v[3]) {
        return s && sscanf(s, "%u.%u.%u", &v[0], &v[1], &v[2]) == 3;
}

static int version_cmp(const unsigned a[3], const unsigned b[3]) {
        for (size_t i = 0; i < 3; i++)
                if (a[i] != b[i])
                        return a[i] < b[i] ? -1 : 1;
        return 0;
}

/* etcd2 (rafthttp checkVersionCompability): the sender's version must be at least our minimum cluster
 * version (2.2.0 for 2.3; no header means 2.0.0) and its minimum cluster version at most our version.
 * Our frames are not etcd's: only a 2.x speaks them. */
static bool version_compatible(const char *server_version, const char *min_cluster_version) {
        static const unsigned ours[3] = { 2, 3, 8 }, min_cluster[3] = { 2, 2, 0 };
        unsigned v[3] = { 2, 0, 0 }, m[3];

        if (server_version && !parse_version(server_version, v))
                return false;
        if (v[0] != 2 || version_cmp(v, min_cluster) < 0)
                return false;
        if (min_cluster_version && (!parse_version(min_cluster_version, m) || version_cmp(m, ours) > 0))
                return false;
        return true;
}

int peer_transport_check(PeerTransport *t, const char *from_hex, const char *cluster_hex,
                         const char *server_version, const char *min_cluster_version) {
        uint64_t from, cluster;
        int r;

        if (parse_hex_id(from_hex, &from) < 0 || from == 0 || parse_hex_id(cluster_hex, &cluster) < 0) {
                refusal_log(t, 0, 400, "no valid X-Server-From or X-Etcd-Cluster-ID");
                return 400;
        }
        if (cluster != t->cluster_id) {
                refusal_log(t, from, 412, "cluster ID mismatch");
                return 412;
        }
        if (!version_compatible(server_version, min_cluster_version)) {
                refusal_log(t, from, 412, "incompatible version");
                return 412;
        }
        /* Nobody else can be us: a stream "from" our own ID is a forgery (or a copied data dir). */
        if (from == t->member_id) {
                refusal_log(t, from, 404, "the sender claims to be this member");
                return 404;
        }
        if (t->check) {
                r = t->check(t, from, t->userdata);
                if (r != 0) {
                        refusal_log(t, from, r, r == 410 ? "the member was removed" : "not a member");
                        return r;
                }
        }
        return 101;
}

static int conn_start_stream(Conn *c, uint64_t from, const void *extra, size_t extra_size);
static void conn_on_readable(Conn *c);
static int conn_dispatch_frames(Conn *c);

static const char *status_text(int status) {
        switch (status) {
        case 101: return "Switching Protocols";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 410: return "Gone";
        case 412: return "Precondition Failed";
        default:  return "Error";
        }
}

/* Inbound on our own listener: the request head is complete in c->head (head_len bytes include what
 * followed it). */
static void conn_handle_request(Conn *c, size_t head_end) {
        char from[64] = "", cluster[64] = "", upgrade[64] = "", version[64], min_version[64], line[128];
        uint64_t id = 0;
        int status, n;

        c->head[head_end - 1] = 0;   /* cut at the final "\n" of "\r\n\r\n": keeps one "\r\n" after the last header */
        if (strncmp(c->head, "POST /raft/stream ", 18) != 0)
                status = 404;
        else if (!head_header(c->head, "X-Server-From", from, sizeof(from)) ||
                 !head_header(c->head, "X-Etcd-Cluster-ID", cluster, sizeof(cluster)) ||
                 !head_header(c->head, "Upgrade", upgrade, sizeof(upgrade)) ||
                 !streq(upgrade, UPGRADE_TOKEN))
                status = 400;
        else
                status = peer_transport_check(c->t, from, cluster,
                                              head_header(c->head, "X-Server-Version", version, sizeof(version)) ?
                                              version : NULL,
                                              head_header(c->head, "X-Min-Cluster-Version", min_version,
                                                          sizeof(min_version)) ? min_version : NULL);

        if (status == 101)
                n = snprintf(line, sizeof(line), "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             "Upgrade: " UPGRADE_TOKEN "\r\n\r\n");
        else
                n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                             status, status_text(status));
        /* A fresh socket's buffer takes these few bytes at once. */
        if (send(c->fd, line, (size_t) n, MSG_NOSIGNAL) != n || status != 101) {
                conn_free(c);
                return;
        }
        (void) parse_hex_id(from, &id);
        (void) conn_start_stream(c, id, c->head + head_end + 1, c->head_len - head_end - 1);
}

static void conn_handle_response(Conn *c, size_t head_end) {
        Peer *p = c->peer;
        int status = 0;

        c->head[head_end] = 0;
        if (sscanf(c->head, "HTTP/1.%*d %d", &status) != 1)
                status = 0;
        if (status == 101) {
                if (p->last_refusal != 0 || p->backoff_usec > PEER_BACKOFF_MIN_USEC)
                        log_info("Stream to member %" PRIx64 " (%s) established.", p->id, p->address);
                else
                        log_debug("Stream to member %" PRIx64 " (%s) established.", p->id, p->address);
                c->state = CONN_STREAM;
                p->last_write_usec = now_usec();
                p->stats.connected = true;
                p->backoff_usec = 0;
                p->last_refusal = 0;
                p->last_tls_error_usec = 0;
                (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN);
                peer_mark_dirty(p);
                return;
        }
        if (status != p->last_refusal)
                log_warning("Member %" PRIx64 " (%s) refused our stream with status %d%s.", p->id, p->address, status,
                            status == 412 ? " (cluster ID mismatch)" : status == 410 ? " (we were removed)" :
                            status == 404 ? " (unknown member)" : "");
        p->last_refusal = status;
        peer_conn_lost(p, -ECONNREFUSED, "refused");
        if (p->t->refused)
                p->t->refused(p->t, p->id, status, p->t->userdata);
}

/* Reads into c->head; returns the index of the "\n" ending "\r\n\r\n", 0 if not complete, < 0 on error. */
static ssize_t conn_read_head(Conn *c) {
        for (;;) {
                ssize_t k;
                char *e;

                if (c->head_len >= sizeof(c->head) - 1)
                        return -E2BIG;
                k = conn_recv(c, c->head + c->head_len, sizeof(c->head) - 1 - c->head_len);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return -errno;
                }
                if (k == 0)
                        return -ECONNRESET;
                c->head_len += (size_t) k;
                c->head[c->head_len] = 0;
                e = strstr(c->head, "\r\n\r\n");
                if (e)
                        return (e - c->head) + 3;
        }
}

/* ---- receiving ---- */

static int conn_start_stream(Conn *c, uint64_t from, const void *extra, size_t extra_size) {
        PeerTransport *t = c->t;
        int r;

        /* One stream per sender: a newer one replaces the older (etcd2 does the same), so that a
         * member that reconnects after a network change is heard at once, and so that nobody can
         * pile up streams under one ID. */
        for (Conn *o = t->inbound, *n; o; o = n) {
                n = o->next;
                if (o == c || o->from != from || o->state != CONN_STREAM || o->doomed)
                        continue;
                log_debug("A new stream from member %" PRIx64 " replaces the older one.", from);
                if (o == t->dispatching)
                        o->doomed = true;
                else
                        conn_free(o);
        }

        r = peer_decoder_new(t->frame_max, &c->decoder);
        if (r < 0) {
                conn_free(c);
                return r;
        }
        c->from = from;
        c->state = CONN_STREAM;
        c->last_frame_usec = now_usec();
        t->n_inbound_streams++;
        log_debug("Stream from member %" PRIx64 " accepted.", from);
        (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN);
        if (extra_size > 0) {
                r = peer_decoder_feed(c->decoder, extra, extra_size);
                if (r < 0) {
                        conn_free(c);
                        return r;
                }
                /* Frames that came with the head (frees the connection if they are bad). */
                r = conn_dispatch_frames(c);
                if (r < 0)
                        return r;
        }
        /* GnuTLS may buffer more than it gave the HTTP server: epoll would not say so */
        if (c->tls && gnutls_record_check_pending(c->tls) > 0)
                conn_on_readable(c);
        return 0;
}

/* Returns < 0 if the connection was freed. */
static int conn_dispatch_frames(Conn *c) {
        PeerTransport *t = c->t;
        Peer *p;

        for (;;) {
                PeerFrame f = {};
                int r;

                r = peer_decoder_next(c->decoder, &f);
                if (r == 0)
                        return 0;
                if (r < 0) {
                        log_warning_errno(r, "Malformed frame from member %" PRIx64 ", resetting the stream: %m", c->from);
                        conn_free(c);
                        return r;
                }
                if (f.cluster_id != t->cluster_id || f.sender_id != c->from) {
                        log_warning("Frame of member %" PRIx64 "/cluster %" PRIx64 " on the stream of member %" PRIx64
                                    ", resetting it.", f.sender_id, f.cluster_id, c->from);
                        peer_frame_done(&f);
                        conn_free(c);
                        return -EBADMSG;
                }
                p = peer_find(t, c->from);
                if (p)
                        p->stats.n_received++;
                c->last_frame_usec = now_usec();
                t->dispatching = c;
                if (t->recv)
                        t->recv(t, &f, t->userdata);
                t->dispatching = NULL;
                peer_frame_done(&f);
                if (c->doomed) {
                        conn_free(c);
                        return -ECONNRESET;
                }
        }
}

static void conn_on_readable(Conn *c) {
        size_t budget = READ_BUDGET;
        Peer *p;

        /* Over TLS, what GnuTLS already buffers is read whatever the budget: epoll would not tell. */
        while (budget > 0 || (c->tls && gnutls_record_check_pending(c->tls) > 0)) {
                void *space;
                size_t size;
                ssize_t k;
                int r;

                r = peer_decoder_get_space(c->decoder, READ_CHUNK, &space, &size);
                if (r < 0) {
                        conn_free(c);
                        return;
                }
                k = conn_recv(c, space, budget > 0 ? MIN(size, budget) : size);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        log_debug("Stream from member %" PRIx64 " failed: %m", c->from);
                        conn_free(c);
                        return;
                }
                if (k == 0) {
                        log_debug("Stream from member %" PRIx64 " closed.", c->from);
                        if (conn_dispatch_frames(c) >= 0)
                                conn_free(c);
                        return;
                }
                peer_decoder_commit(c->decoder, (size_t) k);
                /* Progress counts as life: a large snapshot frame may take longer than the timeout. */
                c->last_frame_usec = now_usec();
                p = peer_find(c->t, c->from);
                if (p)
                        p->stats.bytes_received += (uint64_t) k;
                budget -= MIN(budget, (size_t) k);
                if (conn_dispatch_frames(c) < 0)
                        return;
        }
}

static void conn_on_event(Conn *c, uint32_t events);

static gnutls_certificate_credentials_t transport_tls_cred(PeerTransport *t) {
        if (!t->tls_cred) {
                /* https peer URLs without --peer-* files: the system's roots, no certificate (as Go) */
                if (tls_client_credentials_new(&t->tls_info, &t->tls_cred) < 0)
                        t->tls_cred = NULL;
        }
        return t->tls_cred;
}

static int conn_tls_start(Conn *c) {
        PeerTransport *t = c->t;
        gnutls_certificate_credentials_t cred = transport_tls_cred(t);
        _cleanup_(freep) char *port = NULL;
        int r;

        if (!cred)
                return -EINVAL;
        r = parse_address(c->peer->address, &c->tls_host, &port);
        if (r < 0)
                return r;
        r = tls_client_session_new(cred, c->tls_host, c->fd, &c->tls);
        if (r < 0) {
                c->tls = NULL;
                return r;
        }
        c->state = CONN_TLS_HANDSHAKE;
        c->started_usec = now_usec();
        return 0;
}

/* A failed TLS handshake with a member, logged at most once a minute per member. */
static void peer_log_tls_error(Peer *p, const char *why) {
        uint64_t now = now_usec();

        if (p->last_tls_error_usec != 0 && p->last_tls_error_usec + TLS_ERROR_LOG_INTERVAL_USEC > now)
                return;
        p->last_tls_error_usec = now;
        log_warning("TLS handshake with member %" PRIx64 " (%s) failed: %s", p->id, p->address, why);
}

/* Sends the upgrade request (a fresh socket's buffer takes it at once). */
static void conn_send_request(Conn *c) {
        PeerTransport *t = c->t;
        Peer *p = c->peer;
        _cleanup_(freep) char *host = NULL, *port = NULL;
        char req[1024];
        ssize_t k;
        int n;

        if (parse_address(p->address, &host, &port) < 0) {
                peer_conn_lost(p, -EINVAL, "bad address");
                return;
        }
        n = snprintf(req, sizeof(req),
                     "POST /raft/stream HTTP/1.1\r\nHost: %s%s%s:%s\r\nX-Etcd-Cluster-ID: %" PRIx64 "\r\n"
                     "X-Server-From: %" PRIx64 "\r\nX-Server-Version: 2.3.8\r\nContent-Length: 0\r\n"
                     "Connection: Upgrade\r\nUpgrade: " UPGRADE_TOKEN "\r\n\r\n",
                     strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port, t->cluster_id,
                     t->member_id);
        if (n <= 0 || (size_t) n >= sizeof(req)) {
                peer_conn_lost(p, -EIO, "failed to send the request");
                return;
        }
        if (c->tls) {
                do
                        k = gnutls_record_send(c->tls, req, (size_t) n);
                while (k == GNUTLS_E_INTERRUPTED);
        } else
                k = send(c->fd, req, (size_t) n, MSG_NOSIGNAL);
        if (k != n) {
                if (c->tls && k < 0) {
                        /* TLS 1.3: a member that refuses our certificate may have sent its alert and closed
                         * before our request went out; say so as when the alert is read after it */
                        char why[256], b[1];
                        ssize_t e = gnutls_record_recv(c->tls, b, sizeof(b));

                        if (e == GNUTLS_E_FATAL_ALERT_RECEIVED)
                                (void) snprintf(why, sizeof(why), "the member sent the alert '%s' (does it trust "
                                                "our peer certificate?)",
                                                strempty(gnutls_alert_get_name(gnutls_alert_get(c->tls))));
                        else
                                (void) snprintf(why, sizeof(why), "the member closed the connection after the "
                                                "handshake: %s (does it trust our peer certificate?)",
                                                gnutls_strerror((int) k));
                        peer_log_tls_error(p, why);
                        peer_conn_lost(p, -ECONNREFUSED, why);
                        return;
                }
                peer_conn_lost(p, -EIO, "failed to send the request");
                return;
        }
        c->state = CONN_RESPONSE;
        c->started_usec = now_usec();
        (void) conn_epoll(c, EPOLL_CTL_MOD, EPOLLIN);
        /* GnuTLS may hold the answer already (read with the handshake's last flight) */
        if (c->tls && gnutls_record_check_pending(c->tls) > 0)
                conn_on_event(c, EPOLLIN);
}

/* One step of the outbound TLS handshake. A failure (the member's certificate does not verify, or it
 * refuses ours) is retried with backoff like a failed connect, and logged at most once a minute. */
static void conn_tls_handshake(Conn *c) {
        Peer *p = c->peer;
        int r;

        do
                r = gnutls_handshake(c->tls);
        while (r == GNUTLS_E_INTERRUPTED);
        if (r == GNUTLS_E_AGAIN) {
                (void) conn_epoll(c, EPOLL_CTL_MOD, gnutls_record_get_direction(c->tls) == 0 ? EPOLLIN : EPOLLOUT);
                return;
        }
        if (r < 0) {
                char why[256];

                if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
                        gnutls_datum_t out = {};
                        unsigned status = gnutls_session_get_verify_cert_status(c->tls);

                        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) >= 0) {
                                size_t l;

                                (void) snprintf(why, sizeof(why), "%s", (const char *) out.data);
                                gnutls_free(out.data);
                                l = strlen(why);
                                while (l > 0 && why[l - 1] == ' ')
                                        why[--l] = 0;
                        } else
                                (void) snprintf(why, sizeof(why), "%s", gnutls_strerror(r));
                } else
                        (void) snprintf(why, sizeof(why), "%s", gnutls_strerror(r));
                peer_log_tls_error(p, why);
                peer_conn_lost(p, -ECONNREFUSED, why);
                return;
        }
        if (tls_check_server_purpose(c->tls) < 0) {
                const char *why = "its certificate is not meant for TLS servers (no serverAuth extended key usage)";

                peer_log_tls_error(p, why);
                peer_conn_lost(p, -ECONNREFUSED, why);
                return;
        }
        conn_send_request(c);
}

static void conn_on_event(Conn *c, uint32_t events) {
        ssize_t e;

        switch (c->state) {

        case CONN_CONNECTING: {
                Peer *p = c->peer;
                int err = 0;
                socklen_t len = sizeof(err);

                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                if (err != 0) {
                        peer_conn_lost(p, -err, strerror(err));
                        return;
                }
                if (tls_url_is_https(p->address)) {
                        int r = conn_tls_start(c);

                        if (r < 0) {
                                peer_conn_lost(p, r, "failed to start a TLS session");
                                return;
                        }
                        conn_tls_handshake(c);
                        return;
                }
                conn_send_request(c);
                return;
        }

        case CONN_TLS_HANDSHAKE:
                conn_tls_handshake(c);
                return;

        case CONN_RESPONSE:
                e = conn_read_head(c);
                if (e < 0 && c->tls_error != 0) {
                        /* TLS 1.3: the member checks our certificate after our side of the handshake
                         * ended; a refusal is an alert where its answer should be */
                        char why[256];

                        if (c->tls_error == GNUTLS_E_FATAL_ALERT_RECEIVED)
                                (void) snprintf(why, sizeof(why), "the member sent the alert '%s' (does it trust our "
                                                "peer certificate?)",
                                                strempty(gnutls_alert_get_name(gnutls_alert_get(c->tls))));
                        else
                                (void) snprintf(why, sizeof(why), "%s", gnutls_strerror(c->tls_error));
                        peer_log_tls_error(c->peer, why);
                        peer_conn_lost(c->peer, -ECONNREFUSED, why);
                } else if (e < 0)
                        peer_conn_lost(c->peer, (int) e, "connection closed during the upgrade");
                else if (e > 0)
                        conn_handle_response(c, (size_t) e);
                return;

        case CONN_REQUEST:
                e = conn_read_head(c);
                if (e < 0)
                        conn_free(c);
                else if (e > 0)
                        conn_handle_request(c, (size_t) e);
                return;

        case CONN_STREAM:
                if (!c->inbound) {
                        Peer *p = c->peer;

                        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                                char buf[512];
                                ssize_t k;

                                /* The receiver never talks on our stream (over TLS, GnuTLS handles what its
                                 * peer sends and returns EAGAIN): anything but EAGAIN ends it. */
                                do
                                        k = conn_recv(c, buf, sizeof(buf));
                                while (c->tls && k > 0);
                                if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR)) {
                                        p->stats.connected = false;
                                        peer_conn_lost(p, -ECONNRESET, k == 0 ? "closed by the peer" : strerror(errno));
                                        return;
                                }
                        }
                        if (events & EPOLLOUT)
                                peer_flush(p);
                        return;
                }
                conn_on_readable(c);
                return;
        }
}

static void on_accept(PeerTransport *t) {
        for (;;) {
                int fd = accept4(t->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                Conn *c;

                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        return;
                }
                if (t->n_inbound >= INBOUND_MAX) {
                        /* Full: the oldest keep their place; a member retries with backoff. */
                        (void) close(fd);
                        continue;
                }
                c = conn_new(t, fd);
                if (!c) {
                        (void) close(fd);
                        return;
                }
                c->state = CONN_REQUEST;
                conn_add_inbound(t, c);
                if (conn_epoll(c, EPOLL_CTL_ADD, EPOLLIN) < 0)
                        conn_free(c);
        }
}

static int on_epoll(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        PeerTransport *t = userdata;
        /* One event per wait: handling one may free other connections (a member removed while
         * its frames are delivered), so never hold on to a batch of pointers. */
        for (unsigned i = 0; i < 256; i++) {
                struct epoll_event ev;
                int n = epoll_wait(t->epoll_fd, &ev, 1, 0);

                if (n <= 0)
                        break;
                if (ev.data.ptr == &listen_marker)
                        on_accept(t);
                else
                        conn_on_event(ev.data.ptr, ev.events);
        }
        return 0;
}

static int on_housekeeping(sd_event_source *s, uint64_t usec, void *userdata) {
        PeerTransport *t = userdata;
        uint64_t now = now_usec();

        for (Conn *c = t->inbound, *n; c; c = n) {
                n = c->next;
                if (c->state != CONN_STREAM && c->started_usec + HANDSHAKE_TIMEOUT_USEC < now)
                        conn_free(c);
                else if (c->state == CONN_STREAM && t->stream_idle_usec > 0 &&
                         c->last_frame_usec + t->stream_idle_usec < now) {
                        log_debug("Closing the stream from member %" PRIx64 ": no frame for %" PRIu64 " ms.",
                                  c->from, t->stream_idle_usec / USEC_PER_MSEC);
                        conn_free(c);
                }
        }
        for (size_t i = 0; i < t->n_peers; i++) {
                Peer *p = t->peers[i];

                if (p->conn && p->conn->state != CONN_STREAM && p->conn->started_usec + HANDSHAKE_TIMEOUT_USEC < now)
                        peer_conn_lost(p, -ETIMEDOUT, "timed out");
        }
        (void) sd_event_source_set_time_relative(s, USEC_PER_SEC);
        return 0;
}

/* ---- public ---- */

int peer_transport_new(sd_event *event, uint64_t member_id, uint64_t cluster_id, const char *self_address,
                       PeerTransport **ret) {
        _cleanup_(peer_transport_freep) PeerTransport *t = NULL;
        int r;

        t = calloc(1, sizeof(PeerTransport));
        if (!t)
                return -ENOMEM;
        t->event = sd_event_ref(event);
        t->member_id = member_id;
        t->cluster_id = cluster_id;
        t->listen_fd = -1;
        t->queue_max = PEER_QUEUE_MAX_DEFAULT;
        t->self_address = strdup(strempty(self_address));
        if (!t->self_address)
                return -ENOMEM;
        t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (t->epoll_fd < 0)
                return -errno;
        r = sd_event_add_io(event, &t->epoll_source, t->epoll_fd, EPOLLIN, on_epoll, t);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(t->epoll_source, "peer-epoll");
        r = sd_event_add_defer(event, &t->flush_source, on_flush, t);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(t->flush_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(t->flush_source, "peer-flush");
        r = sd_event_add_time_relative(event, &t->housekeeping_source, CLOCK_MONOTONIC, USEC_PER_SEC,
                                       10 * USEC_PER_MSEC, on_housekeeping, t);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(t->housekeeping_source, SD_EVENT_ON);
        (void) sd_event_source_set_description(t->housekeeping_source, "peer-housekeeping");

        *ret = TAKE_PTR(t);
        return 0;
}

PeerTransport *peer_transport_free(PeerTransport *t) {
        if (!t)
                return NULL;
        t->freeing = true;
        for (size_t i = 0; i < t->n_peers; i++)
                peer_free(t->peers[i]);
        free(t->peers);
        while (t->inbound)
                conn_free(t->inbound);
        sd_event_source_disable_unref(t->epoll_source);
        sd_event_source_disable_unref(t->flush_source);
        sd_event_source_disable_unref(t->housekeeping_source);
        if (t->listen_fd >= 0)
                (void) close(t->listen_fd);
        if (t->epoll_fd >= 0)
                (void) close(t->epoll_fd);
        if (t->tls_cred)
                gnutls_certificate_free_credentials(t->tls_cred);
        for (size_t i = 0; i < ELEMENTSOF(t->tls_strings); i++)
                free(t->tls_strings[i]);
        sd_event_unref(t->event);
        free(t->self_address);
        free(t);
        return NULL;
}

void peer_transport_set_handlers(PeerTransport *t, PeerRecvFunc recv, PeerCheckFunc check,
                                 PeerRefusedFunc refused, void *userdata) {
        t->recv = recv;
        t->check = check;
        t->refused = refused;
        t->userdata = userdata;
}

void peer_transport_set_stream_idle_timeout(PeerTransport *t, uint64_t usec) {
        t->stream_idle_usec = usec;
}

void peer_transport_set_drained(PeerTransport *t, PeerDrainedFunc drained, void *userdata) {
        t->drained = drained;
        t->drained_userdata = userdata;
}

size_t peer_transport_queued_bytes(PeerTransport *t, uint64_t id) {
        Peer *p = peer_find(t, id);

        return p ? p->queued_bytes : 0;
}

void peer_transport_set_frame_max(PeerTransport *t, size_t max) {
        t->frame_max = max;
}

void peer_transport_set_queue_max(PeerTransport *t, size_t max) {
        t->queue_max = max;
}

int peer_transport_set_tls(PeerTransport *t, const TlsInfo *info) {
        const char *in[3] = { info->cert_file, info->key_file, info->trusted_ca_file };
        char *copy[3] = {};
        gnutls_certificate_credentials_t cred = NULL;
        int r;

        r = tls_client_credentials_new(info, &cred);
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(in); i++)
                if (!isempty(in[i]) && !(copy[i] = strdup(in[i]))) {
                        for (size_t j = 0; j < i; j++)
                                free(copy[j]);
                        gnutls_certificate_free_credentials(cred);
                        return -ENOMEM;
                }
        if (t->tls_cred)
                gnutls_certificate_free_credentials(t->tls_cred);
        for (size_t i = 0; i < ELEMENTSOF(t->tls_strings); i++) {
                free(t->tls_strings[i]);
                t->tls_strings[i] = copy[i];
        }
        t->tls_cred = cred;
        t->tls_info = (TlsInfo) {
                .cert_file = copy[0],
                .key_file = copy[1],
                .trusted_ca_file = copy[2],
                .client_cert_auth = info->client_cert_auth,
        };
        return 0;
}

void peer_transport_set_ids(PeerTransport *t, uint64_t member_id, uint64_t cluster_id) {
        t->member_id = member_id;
        t->cluster_id = cluster_id;
}

int peer_transport_listen(PeerTransport *t, int fd) {
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listen_marker };

        if (t->listen_fd >= 0)
                return -EBUSY;
        if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
                return -errno;
        t->listen_fd = fd;
        return 0;
}

int peer_transport_accept(PeerTransport *t, int fd, gnutls_session_t tls, const char *from_hex, const char *cluster_hex,
                          const char *server_version, const char *min_cluster_version, const void *extra, size_t extra_size, void (*release)(void *userdata),
                          void *release_userdata) {
        uint64_t from = 0;
        Conn *c;
        int r;

        if (peer_transport_check(t, from_hex, cluster_hex, server_version, min_cluster_version) != 101 ||
            parse_hex_id(from_hex, &from) < 0) {
                if (tls)
                        gnutls_deinit(tls);
                if (release)
                        release(release_userdata);
                else
                        (void) close(fd);
                return -EPERM;
        }
        /* The HTTP server's socket may be blocking: the stream must not be. */
        {
                int fl = fcntl(fd, F_GETFL);

                if (fl >= 0 && !(fl & O_NONBLOCK))
                        (void) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        }
        c = conn_new(t, fd);
        if (!c) {
                if (tls)
                        gnutls_deinit(tls);
                if (release)
                        release(release_userdata);
                else
                        (void) close(fd);
                return -ENOMEM;
        }
        c->tls = tls;
        c->release = release;
        c->release_userdata = release_userdata;
        c->state = CONN_REQUEST;
        conn_add_inbound(t, c);
        r = conn_epoll(c, EPOLL_CTL_ADD, EPOLLIN);
        if (r < 0) {
                conn_free(c);
                return r;
        }
        return conn_start_stream(c, from, extra, extra_size);
}

int peer_transport_stats(PeerTransport *t, uint64_t id, PeerStats *ret) {
        Peer *p = peer_find(t, id);

        if (!p)
                return -ENOENT;
        *ret = p->stats;
        ret->connected = p->conn && p->conn->state == CONN_STREAM;
        return 0;
}

unsigned peer_transport_n_inbound(PeerTransport *t) {
        return t->n_inbound_streams;
}

bool peer_transport_has_inbound(PeerTransport *t, uint64_t id) {
        for (Conn *c = t->inbound; c; c = c->next)
                if (c->from == id && c->state == CONN_STREAM && !c->doomed)
                        return true;
        return false;
}

void peer_transport_close_accepted(PeerTransport *t) {
        for (Conn *c = t->inbound, *n; c; c = n) {
                n = c->next;
                if (!c->release)
                        continue;
                if (c == t->dispatching)
                        c->doomed = true;
                else
                        conn_free(c);
        }
}
