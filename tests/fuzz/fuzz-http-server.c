/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-http-server.c - libFuzzer target for HTTP requests as our server parses them (http-server.c over
 * llhttp): the input is what a client sends on one connection, handed to the real server through a
 * socketpair (http_service_add_connection()) and the event loop run until the server is done with it.
 * The handler reads every request's body, looks at its headers and answers with them, so pipelined
 * requests, chunked bodies, limits and keep-alive are all exercised. The client's side is shut for
 * writing after the input: half the inputs also stop reading the answers (a client gone away). */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "http-server.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static sd_event *event;
static HttpServer *server;
static HttpService *service;

static HttpBodyMode on_begin(HttpRequest *r) {
        const char *expect = http_request_header(r, "Expect");

        /* Answer some requests before their body, as the client API does for errors. */
        if (expect && strcmp(expect, "fail") == 0) {
                http_reply(r, 417, "text/plain", "no\n", 3);
                return HTTP_BODY_DISCARD;
        }
        return r->uri_len % 2 ? HTTP_BODY_DISCARD : HTTP_BODY_READ;
}

static void on_handle(HttpRequest *r) {
        HttpBuf b = {};
        size_t n = http_request_n_headers(r);

        (void) http_buf_printf(&b, "%s %.*s %u.%u %lld %d\n", r->method, (int) r->uri_len, r->uri,
                               r->http_major, r->http_minor, (long long) r->content_length, r->body_too_large);
        for (size_t i = 0; i < n; i++) {
                const char *k, *v;

                http_request_header_at(r, i, &k, &v);
                (void) http_buf_printf(&b, "%s: %s\n", k, v);
        }
        if (r->body.len > 0)
                (void) http_buf_append(&b, r->body.data, r->body.len);
        if (http_request_header(r, "Connection") && r->uri_len > 3)
                http_response_close(r);
        if (r->uri_len % 3 == 0) {
                /* a streamed answer, in two writes */
                http_stream_begin(r, 200, "text/plain", -1);
                http_stream_write(r, b.data ?: "", b.len / 2, false);
                http_stream_write(r, (b.data ?: "") + b.len / 2, b.len - b.len / 2, true);
        } else
                http_reply(r, 200, "text/plain", b.data ?: "", b.len);
        http_buf_done(&b);
}

static bool on_hangup(HttpRequest *r) {
        return true;
}

static const HttpHandler handler = {
        .begin = on_begin,
        .handle = on_handle,
        .hangup = on_hangup,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char buf[65536];
        size_t off = 0;
        int fds[2];
        bool reading;

        if (size < 1 || size > 256 * 1024)
                return 0;
        reading = data[0] & 1;
        data++, size--;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0)
                abort();
        if (http_service_add_connection(service, fds[0]) < 0)
                abort();

        for (unsigned rounds = 0; rounds < 100000; rounds++) {
                bool progress = false;
                ssize_t k;
                int r;

                if (off < size) {
                        k = write(fds[1], data + off, size - off);
                        if (k > 0)
                                off += (size_t) k, progress = true;
                        else if (k < 0 && errno != EAGAIN)
                                off = size;     /* the server closed the connection */
                        if (off == size)
                                (void) shutdown(fds[1], SHUT_WR);
                }
                if (reading)
                        while ((k = read(fds[1], buf, sizeof(buf))) > 0)
                                progress = true;
                if (http_service_n_connections(service) == 0)
                        break;
                r = sd_event_run(event, 0);
                if (r < 0)
                        abort();
                /* Nothing left to do: the server waits for a client that reads no more. */
                if (r == 0 && !progress && off == size)
                        break;
        }
        if (fds[1] >= 0)
                close(fds[1]);
        /* Let the server see the close and free the connection. */
        for (unsigned rounds = 0; rounds < 1000 && http_service_n_connections(service) > 0; rounds++)
                if (sd_event_run(event, 0) < 0)
                        abort();
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        HttpLimits limits = {
                .head_max = 8192,
                .uri_max = 4096,
                .body_max = 16384,
                .idle_timeout_usec = 60 * 1000000ULL,
                .head_timeout_usec = 60 * 1000000ULL,
        };

        log_set_max_level(LOG_CRIT);
        if (sd_event_new(&event) < 0 || http_server_new(event, &server) < 0 ||
            http_server_add_service(server, "fuzz", &handler, NULL, &limits, &service) < 0)
                abort();
        return 0;
}
