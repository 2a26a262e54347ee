/* SPDX-License-Identifier: Apache-2.0 */
/* peer.h - the transport between members: persistent upgraded HTTP/1.1 streams of peer-codec frames. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gnutls/gnutls.h>
#include <raft.h>
#include <systemd/sd-event.h>

#include "macro.h"
#include "peer-codec.h"
#include "tls.h"

/*
 * One outbound connection per destination member, opened by the sender:
 *
 *   POST /raft/stream HTTP/1.1
 *   Host: <host:port>
 *   X-Etcd-Cluster-ID: <hex>
 *   X-Server-From: <hex>
 *   Connection: Upgrade
 *   Upgrade: etcd2-raft/1
 *
 * answered "HTTP/1.1 101 Switching Protocols" (412 cluster ID mismatch, 410 removed sender, 404
 * unknown sender); then frames flow from the sender only. Each direction of a member pair has its
 * own connection. All sockets sit behind one inner epoll fd, which is the only fd sd-event sees.
 */

typedef struct PeerTransport PeerTransport;

/* A frame arrived (its cluster and sender checked). The callback may take the raft payload with
 * peer_frame_hand_over(); the transport calls peer_frame_done() afterwards. */
typedef void (*PeerRecvFunc)(PeerTransport *t, PeerFrame *frame, void *userdata);
/* May `from` open a stream to us? 0 = yes, else the HTTP status to refuse it with (404, 410). */
typedef int (*PeerCheckFunc)(PeerTransport *t, uint64_t from, void *userdata);
/* A peer refused us with `status` (410: we were removed from the cluster). */
typedef void (*PeerRefusedFunc)(PeerTransport *t, uint64_t peer_id, int status, void *userdata);

/* Default cap of the bytes queued for one peer; beyond it messages are dropped (and counted). */
#define PEER_QUEUE_MAX_DEFAULT ((size_t) 64 * 1024 * 1024)
/* An AppendEntries body we send is at most this big (a single bigger entry goes alone): see
 * peer_transport_send_raft(). */
#define PEER_APPEND_FRAME_MAX ((size_t) 4 * 1024 * 1024)
#define PEER_BACKOFF_MIN_USEC (50 * USEC_PER_MSEC)
#define PEER_BACKOFF_MAX_USEC (1 * USEC_PER_SEC)

int peer_transport_new(sd_event *event, uint64_t member_id, uint64_t cluster_id, const char *self_address,
                       PeerTransport **ret);
PeerTransport *peer_transport_free(PeerTransport *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(PeerTransport *, peer_transport_free);

void peer_transport_set_handlers(PeerTransport *t, PeerRecvFunc recv, PeerCheckFunc check,
                                 PeerRefusedFunc refused, void *userdata);
void peer_transport_set_queue_max(PeerTransport *t, size_t max);
/* An inbound stream that delivers no frame for `usec` is closed (0, the default: never). Its sender
 * opens it again when it has something to send. */
void peer_transport_set_stream_idle_timeout(PeerTransport *t, uint64_t usec);
/* Peer TLS for our streams to https peer URLs (etcd2's peer TLSInfo; copied, the files loaded now:
 * errors are logged). Without it an https member is verified against the system's roots and we
 * present no certificate. Connections already open keep their session. */
int peer_transport_set_tls(PeerTransport *t, const TlsInfo *info);
/* For a member joining an existing cluster, the IDs are known only after server_new() started. */
void peer_transport_set_ids(PeerTransport *t, uint64_t member_id, uint64_t cluster_id);

/* Queues a raft message for message->server_id at message->server_address (serialized now; the
 * message's buffers may be released on return). -ENOBUFS if dropped for backpressure. */
int peer_transport_send_raft(PeerTransport *t, const struct raft_message *m);
/* Queues an opaque member-layer frame for `to` at `address` (NULL: the last address used). `tag`
 * (nonzero) identifies it for peer_transport_cancel_unsent(). */
int peer_transport_send_opaque(PeerTransport *t, uint64_t to, const char *address, const void *body, size_t size,
                               uint64_t tag);
/* Drops the frames queued for `to` that have not been written to a socket at all (so they certainly
 * never arrived), calling `cb` with the tag of each tagged one. */
void peer_transport_cancel_unsent(PeerTransport *t, uint64_t to, void (*cb)(uint64_t tag, void *userdata),
                                  void *userdata);
/* Forgets `id`: closes the stream to it and streams from it (safe from inside the recv callback:
 * the stream being delivered from is closed after the callback). */
void peer_transport_drop(PeerTransport *t, uint64_t id);
/* Where `id` lives from now on (its peer URLs were updated), whatever raft's configuration says. */
int peer_transport_set_address(PeerTransport *t, uint64_t id, const char *address);

/* Own accept path: the transport accepts on `fd` (a listening socket, taken over) and parses the
 * upgrade request itself. The daemon's peer listeners belong to the HTTP server instead, which
 * hands over upgraded sockets with peer_transport_accept(). */
int peer_transport_listen(PeerTransport *t, int fd);

/* For the HTTP server: the status to answer `POST /raft/stream` with, from its X-Server-From,
 * X-Etcd-Cluster-ID, X-Server-Version and X-Min-Cluster-Version headers (the last two may be NULL):
 * 101 to upgrade, else 400 (bad headers), 404 (unknown sender, or ourselves), 410 (removed), 412
 * (another cluster, incompatible version). Call it before reading anything after the request head.
 * Refusals are logged here (rate-limited). */
int peer_transport_check(PeerTransport *t, const char *from_hex, const char *cluster_hex,
                         const char *server_version, const char *min_cluster_version);
/* For the HTTP server, after it answered 101: takes the upgraded socket `fd` and, over TLS, its GnuTLS
 * session `tls` (else NULL; taken in any case). `extra` holds bytes that arrived after the request head.
 * `release` (may be NULL: then the transport close()s fd) is called exactly once when the stream ends,
 * instead of closing fd. */
int peer_transport_accept(PeerTransport *t, int fd, gnutls_session_t tls, const char *from_hex, const char *cluster_hex,
                          const char *server_version, const char *min_cluster_version, const void *extra, size_t extra_size, void (*release)(void *userdata),
                          void *release_userdata);

/* Ends every stream handed over with peer_transport_accept() (their release callbacks run): the HTTP
 * server calls it before it stops its daemon. */
void peer_transport_close_accepted(PeerTransport *t);

/* Called when everything queued for `id` has been written to its socket (flow control for
 * multi-frame senders: produce the next frame then, never the whole stream at once). */
typedef void (*PeerDrainedFunc)(PeerTransport *t, uint64_t id, void *userdata);
void peer_transport_set_drained(PeerTransport *t, PeerDrainedFunc drained, void *userdata);
/* Bytes queued for `id` and not yet written to its socket (0 for an unknown peer). */
size_t peer_transport_queued_bytes(PeerTransport *t, uint64_t id);
/* Cap of an inbound frame's body (0: PEER_FRAME_BODY_MAX_DEFAULT); for streams accepted later. */
void peer_transport_set_frame_max(PeerTransport *t, size_t max);

typedef struct PeerStats {
        bool connected;
        uint64_t n_sent, n_failed, n_dropped;   /* frames */
        uint64_t bytes_sent;
        uint64_t n_received, bytes_received;    /* frames/bytes from this peer */
        uint64_t n_lost;                        /* outbound connections lost or failed */
} PeerStats;
/* -ENOENT if the peer is unknown. */
int peer_transport_stats(PeerTransport *t, uint64_t id, PeerStats *ret);
/* Whether `id` has a stream open to us. */
bool peer_transport_has_inbound(PeerTransport *t, uint64_t id);
/* Number of inbound streams currently established (for tests). */
unsigned peer_transport_n_inbound(PeerTransport *t);
