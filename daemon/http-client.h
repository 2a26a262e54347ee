/* SPDX-License-Identifier: Apache-2.0 */
/* http-client.h - an HTTP/1.1 client on sd-event over llhttp: keep-alive connection pools per upstream,
 * streamed responses with flow control, http:// and https:// (GnuTLS). It knows nothing of etcd. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gnutls/gnutls.h>
#include <systemd/sd-event.h>

typedef struct HttpClient HttpClient;
typedef struct HttpUpstream HttpUpstream;
typedef struct HttpClientRequest HttpClientRequest;

typedef struct HttpClientOptions {
        uint64_t connect_timeout_usec;   /* non-blocking connect; 0: none */
        uint64_t read_timeout_usec;      /* no response byte for this long (not while paused): -ETIMEDOUT;
                                          * 0: none (watches) */
        unsigned max_idle;               /* idle keep-alive connections kept, all upstreams (0: 256) */
} HttpClientOptions;

/* A response header, valid only during the head() callback. */
typedef struct HttpClientHeader {
        const char *name;
        size_t name_len;
        const char *value;
        size_t value_len;
} HttpClientHeader;

/* What a request reports. Callbacks run from the client's event sources, never from inside
 * http_client_request_start(), _pause(), _resume() or _cancel(). From a callback the caller may start
 * other requests, pause/resume this one and cancel any (this one too: nothing more is reported then). */
typedef struct HttpClientOps {
        /* The final response's status and headers (1xx are skipped). content_length: announced, or -1. */
        void (*head)(HttpClientRequest *q, unsigned status, const HttpClientHeader *headers, size_t n_headers,
                     int64_t content_length, void *userdata);
        /* A piece of the (de-chunked) body. */
        void (*body)(HttpClientRequest *q, const void *data, size_t len, void *userdata);
        /* The end, exactly once unless cancelled: 0 if the response is complete, else a negative errno
         * (-ECONNREFUSED, -ECONNRESET, -ETIMEDOUT, -EPROTO for a malformed response, ...). Whether it came
         * before any response (a transport error) or cut a response short, the caller knows from head().
         * The request is freed right after. */
        void (*done)(HttpClientRequest *q, int error, void *userdata);
} HttpClientOps;

/* One request: head and body are referenced, not copied, and must stay valid until done() or cancel. */
typedef struct HttpClientSpec {
        const char *method;
        const char *target;              /* request target as sent ("/v2/keys/a?wait=true") */
        size_t target_len;
        const char *target_prefix;       /* sent before target (an upstream URL's path), may be NULL */
        size_t target_prefix_len;
        const char *headers;             /* "Name: value\r\n" lines, may be NULL */
        size_t headers_len;
        bool has_host;                   /* headers carry Host: else "Host: <upstream host:port>" is added */
        bool send_length;                /* "Content-Length: body_len" is sent (also for 0) */
        const void *body;
        size_t body_len;
        bool head;                       /* HEAD: the response has no body whatever it announces */
} HttpClientSpec;

int http_client_new(sd_event *event, const HttpClientOptions *options, HttpClient **ret);
/* Closes every connection; requests in flight end without a callback. */
HttpClient *http_client_free(HttpClient *c);
/* After each batch of callbacks (one dispatch of the client's sources), flush(userdata) runs once the
 * client is out of its own processing: the place to hand what the callbacks collected on. */
void http_client_set_flush(HttpClient *c, void (*flush)(void *userdata), void *userdata);

/* The credentials of https:// upstreams (our certificate, the CAs we trust), taken over by the client;
 * set them before the first https:// upstream. Without, https:// upstreams get the system's roots and no
 * client certificate (Go's default transport). */
void http_client_set_tls(HttpClient *c, gnutls_certificate_credentials_t cred);

/* The pool for an upstream URL ("http[s]://host[:port][/path]"), created on first use, alive as long as
 * the client. -EPROTONOSUPPORT for another scheme, -EINVAL if unparseable. A TLS failure of a request
 * (the handshake: -EKEYREJECTED for a certificate we do not trust, -ECONNABORTED otherwise; the server's
 * refusal of ours after a TLS 1.3 handshake: -ECONNRESET) comes through done() like any transport error. */
int http_client_upstream(HttpClient *c, const char *url, HttpUpstream **ret);
const char *http_upstream_authority(const HttpUpstream *u);
/* The URL's path, without a trailing slash ("" mostly). */
const char *http_upstream_path(const HttpUpstream *u);
/* Connections of the upstream: idle ones in the pool, and all. */
unsigned http_upstream_n_idle(const HttpUpstream *u);
unsigned http_upstream_n_connections(const HttpUpstream *u);

/* Sends the request on an idle keep-alive connection of the upstream, or a new one. A reused connection
 * that turns out dead before any response byte is retried once on a new one (as libcurl does). Failures
 * after the call come through done(); a negative return means nothing was started (-ENOMEM). */
int http_client_request_start(HttpUpstream *u, const HttpClientSpec *spec, const HttpClientOps *ops,
                              void *userdata, HttpClientRequest **ret);
/* Stops delivering body pieces and reading the connection; resume() goes on where it stopped. */
void http_client_request_pause(HttpClientRequest *q);
void http_client_request_resume(HttpClientRequest *q);
bool http_client_request_is_paused(const HttpClientRequest *q);
/* The request is gone: no more callbacks; an unfinished response's connection is closed. */
void http_client_request_cancel(HttpClientRequest *q);
