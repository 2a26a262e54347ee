/* SPDX-License-Identifier: Apache-2.0 */
/* http-server.h - our HTTP/1.1 server on sd-event over llhttp: listeners, connections, requests and
 * responses. It knows nothing of etcd: the client API, the peer endpoints and the proxy register a
 * handler per service (a set of listeners sharing limits). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <gnutls/gnutls.h>
#include <systemd/sd-event.h>

#include "http-util.h"

typedef struct HttpServer HttpServer;
typedef struct HttpService HttpService;
typedef struct HttpConn HttpConn;
typedef struct HttpRequest HttpRequest;

typedef enum HttpBodyMode {
        HTTP_BODY_READ,          /* collect the body into r->body (up to limits.body_max) */
        HTTP_BODY_DISCARD,       /* read and drop it */
} HttpBodyMode;

/* A handler's callbacks. Each request gets begin() once, then (unless begin() answered) handle()
 * once its body is in; hangup() if the client goes away before the answer is complete; done() always,
 * exactly once, last. After done() the handler must not touch the request. */
typedef struct HttpHandler {
        size_t data_size;        /* bytes of per-request state at r->data, zeroed before begin() */
        /* The head is complete (method, target, headers). May answer right away (http_reply*(), also
         * http_upgrade()): then no body is read, and if one was announced the connection is closed after
         * the answer (with a lingering close). */
        HttpBodyMode (*begin)(HttpRequest *r);
        /* The body is complete: answer now, or later from any callback of the event loop. */
        void (*handle)(HttpRequest *r);
        /* The client went away before the answer was complete (r->hung_up is set): it closed its side
         * (EOF) or the connection broke. On an EOF, returning true asks to answer all the same: a client
         * may close only its sending side and still read, and etcd2 answers a PUT whatever the client
         * does after sending it; the connection closes after that answer. Otherwise (false, a broken
         * connection, or no hangup) the request ends now: cancel what was started, done() follows at
         * once. Optional. */
        bool (*hangup)(HttpRequest *r);
        /* A streamed answer's queued output was all written (see http_stream_pending()). Optional. */
        void (*drained)(HttpRequest *r);
        /* The request is over: release the state at r->data. Optional. */
        void (*done)(HttpRequest *r);
} HttpHandler;

typedef struct HttpLimits {
        size_t head_max;                 /* request line and headers; beyond: 431, close */
        size_t uri_max;                  /* request target; beyond: 414, close (0: only head_max) */
        size_t body_max;                 /* HTTP_BODY_READ beyond this: r->body_too_large, rest dropped */
        uint64_t idle_timeout_usec;      /* keep-alive connection without a request: closed */
        uint64_t head_timeout_usec;      /* first byte of a request to its complete head: closed */
        uint64_t body_timeout_usec;      /* complete head to complete body (0: none): closed */
        unsigned max_connections;        /* beyond: "503 Service Unavailable", close (0: no cap) */
        unsigned max_per_ip;             /* per client address, likewise (0: no cap) */
} HttpLimits;

/* TLS of a service's https listeners (etcd2's TLSInfo): the server's certificate chain and key (PEM),
 * and client certificates: with client_cert_auth (or a ca_file, deprecated) every client must present a
 * certificate that verifies against the trusted CAs (ca_file and trusted_ca_file; the system's if
 * neither is given) for TLS client authentication, as Go's tls.RequireAndVerifyClientCert. */
typedef struct HttpTlsConfig {
        const char *cert_file;
        const char *key_file;
        const char *trusted_ca_file;
        const char *ca_file;             /* deprecated: trusted CA, and client_cert_auth */
        bool client_cert_auth;
} HttpTlsConfig;

/* The request being served on a connection (one at a time; pipelined ones wait their turn). Fields are
 * read-only for handlers, except body (which a handler may take over, e.g. by swapping it out). */
struct HttpRequest {
        HttpConn *conn;
        HttpService *service;
        void *data;              /* the handler's state, HttpHandler.data_size bytes */
        void *userdata;          /* the service's userdata (http_server_add_service()) */
        const char *method;      /* "GET", "PUT", ... */
        const char *uri;         /* the raw request target (path and query, still escaped) */
        size_t uri_len;
        unsigned http_major, http_minor;
        int64_t content_length;  /* announced, or -1 (none, or chunked) */
        bool chunked;            /* Transfer-Encoding: chunked */
        HttpBuf body;            /* the body, with HTTP_BODY_READ */
        bool body_too_large;
        bool head;               /* HEAD: answers go out without their body */
        bool hung_up;
        bool answered;           /* an answer was started */
};

int http_server_new(sd_event *event, HttpServer **ret);
/* Stops accepting (graceful shutdown); connections and their requests go on. */
void http_server_stop_listening(HttpServer *h);
/* Ends every connection (hangup() and done() for requests in flight). */
HttpServer *http_server_free(HttpServer *h);

/* A service: `handler` serves every connection of its listeners, with `limits` (copied). */
int http_server_add_service(HttpServer *h, const char *name, const HttpHandler *handler, void *userdata,
                            const HttpLimits *limits, HttpService **ret);
/* Loads the service's TLS credentials (once, before its TLS listeners). Errors are logged. */
int http_service_set_tls(HttpService *s, const HttpTlsConfig *tls);
/* Serves connections accepted on `fd` (a listening socket; taken over, made non-blocking). */
int http_service_add_listener(HttpService *s, int fd);
/* The same over TLS (http_service_set_tls() first): every connection starts with a non-blocking
 * handshake, bounded by limits.head_timeout_usec. Upgrades (http_upgrade()) hand over the session. */
int http_service_add_tls_listener(HttpService *s, int fd);
/* Serves an already connected socket (taken over). */
int http_service_add_connection(HttpService *s, int fd);
/* Open connections of the service (upgraded ones no longer count). */
unsigned http_service_n_connections(HttpService *s);

/* --- requests -------------------------------------------------------------------------------- */

/* The first value of a request header (name compared case-insensitively), NULL if absent. */
const char *http_request_header(const HttpRequest *r, const char *name);
/* All request headers in order of arrival: 0 <= i < http_request_n_headers(). */
size_t http_request_n_headers(const HttpRequest *r);
void http_request_header_at(const HttpRequest *r, size_t i, const char **ret_name, const char **ret_value);
/* The client's address ("127.0.0.1", "::1") into buf; -EINVAL if not an IP socket. */
int http_request_peer_ip(const HttpRequest *r, char *buf, size_t size);

/* --- answers ---------------------------------------------------------------------------------- */

/* Adds a response header (copied) to the answer that the next http_reply*() or http_stream_begin()
 * starts. Content-Length, Transfer-Encoding, Date and Connection are the layer's. */
void http_response_header(HttpRequest *r, const char *name, const char *value);
void http_response_header_u64(HttpRequest *r, const char *name, uint64_t value, unsigned base);
/* The connection closes after this answer ("Connection: close"). */
void http_response_close(HttpRequest *r);

/* A complete answer with a Content-Length; the body is copied. content_type may be NULL. */
void http_reply(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len);
/* The same without copying: release(userdata) once it is written or dropped (release may be NULL). */
void http_reply_ref(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len,
                    void (*release)(void *userdata), void *userdata);

/* A streamed answer: the status and headers go out now; content_length < 0 means chunked. */
void http_stream_begin(HttpRequest *r, unsigned status, const char *content_type, int64_t content_length);
/* A piece of the body (one chunk when chunked; copied). With `last`, the answer ends with it: the
 * piece and the final chunk leave in one write. */
void http_stream_write(HttpRequest *r, const void *data, size_t len, bool last);
/* Ends a streamed answer (the final chunk). */
void http_stream_end(HttpRequest *r);
/* Ends a streamed answer as broken: what is queued goes out, then the connection closes without the
 * final chunk, so that the client sees a truncated body (an upstream that broke off). */
void http_stream_abort(HttpRequest *r);
/* Bytes of the answer queued and not yet written to the socket (flow control). */
size_t http_stream_pending(const HttpRequest *r);

/* Answers `status` (101) with the headers given so far, and once that is written hands the socket over:
 * taken(fd, tls, extra, extra_len, userdata) gets the fd (ours no more), on a TLS connection its GnuTLS
 * session (else NULL; the new owner's to gnutls_deinit(), it may still buffer decrypted bytes: read
 * until GNUTLS_E_AGAIN before waiting for the socket), and the bytes that arrived after the request
 * head; done() of the request runs before. taken runs exactly once: with fd = -1 (and no session nor
 * extra) if the connection ended before the hand-over. */
typedef void (*HttpTakenFunc)(int fd, gnutls_session_t tls, const void *extra, size_t extra_len, void *userdata);
void http_upgrade(HttpRequest *r, unsigned status, HttpTakenFunc taken, void *userdata);

/* Go's http.StatusText(): "OK", "Not Found", ... ("" if unknown). */
const char *http_status_text(unsigned status);
