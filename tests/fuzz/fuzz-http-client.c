/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-http-client.c - libFuzzer target for the HTTP upstream client (http-client.c: the proxy's and the
 * members' client): the input is what an upstream answers. A listener on 127.0.0.1 inside the process
 * accepts the client's connection, reads its request and sends the input back as the response, then
 * closes; the event loop runs until the client reports the end. The first byte's low bits choose a GET
 * or a HEAD, and whether the client pauses the body once; if its bit 7 is set, the rest is instead an
 * upstream URL for http_client_upstream(). */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "http-client.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static sd_event *event;
static int listen_fd = -1;
static char url[64];

typedef struct State {
        bool done, paused_once, pause;
        int error;
        unsigned status;
        size_t body;
} State;

static void on_head(HttpClientRequest *q, unsigned status, const HttpClientHeader *headers, size_t n_headers,
                    int64_t content_length, void *userdata) {
        State *s = userdata;

        s->status = status;
        for (size_t i = 0; i < n_headers; i++)
                if (headers[i].name_len > 0 && headers[i].name[0] == '\0')
                        abort();
}

static void on_body(HttpClientRequest *q, const void *data, size_t len, void *userdata) {
        State *s = userdata;

        s->body += len;
        if (s->pause && !s->paused_once) {
                s->paused_once = true;
                http_client_request_pause(q);
                http_client_request_resume(q);
        }
}

static void on_done(HttpClientRequest *q, int error, void *userdata) {
        State *s = userdata;

        s->done = true;
        s->error = error;
}

static const HttpClientOps ops = { .head = on_head, .body = on_body, .done = on_done };

static void parse_url(const uint8_t *data, size_t size) {
        HttpClient *c = NULL;
        HttpUpstream *u = NULL;
        char *s = strndup((const char *) data, size);

        if (!s || http_client_new(event, &(HttpClientOptions) {}, &c) < 0)
                abort();
        if (http_client_upstream(c, s, &u) >= 0) {
                (void) http_upstream_authority(u);
                (void) http_upstream_path(u);
        }
        http_client_free(c);
        free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        HttpClientOptions options = { .connect_timeout_usec = 5000000, .read_timeout_usec = 5000000 };
        HttpClient *c = NULL;
        HttpUpstream *u = NULL;
        HttpClientRequest *q = NULL;
        State s = {};
        HttpClientSpec spec = { .method = "GET", .target = "/v2/keys/a?wait=true", .target_len = 20 };
        char buf[4096];
        size_t off = 0;
        int fd = -1;

        if (size < 1 || size > 256 * 1024)
                return 0;
        if (data[0] & 0x80) {
                parse_url(data + 1, size - 1);
                return 0;
        }
        if (data[0] & 1)
                spec.method = "HEAD", spec.head = true;
        s.pause = data[0] & 2;
        data++, size--;

        if (http_client_new(event, &options, &c) < 0 || http_client_upstream(c, url, &u) < 0 ||
            http_client_request_start(u, &spec, &ops, &s, &q) < 0)
                abort();

        for (unsigned rounds = 0; rounds < 100000 && !s.done; rounds++) {
                bool progress = false;
                ssize_t k;
                int r;

                if (fd < 0) {
                        fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                        progress = fd >= 0;
                }
                if (fd >= 0) {
                        while ((k = read(fd, buf, sizeof(buf))) > 0)
                                progress = true;
                        if (off < size) {
                                k = write(fd, data + off, size - off);
                                if (k > 0)
                                        off += (size_t) k, progress = true;
                                else if (k < 0 && errno != EAGAIN)
                                        off = size;
                                if (off == size)
                                        (void) shutdown(fd, SHUT_WR);
                        }
                }
                r = sd_event_run(event, progress ? 0 : 10000);
                if (r < 0)
                        abort();
        }
        if (!s.done)
                http_client_request_cancel(q);
        if (fd >= 0)
                close(fd);
        http_client_free(c);
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(a);

        log_set_max_level(LOG_CRIT);
        listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(listen_fd, 16) < 0 ||
            getsockname(listen_fd, (struct sockaddr *) &a, &l) < 0 || sd_event_new(&event) < 0)
                abort();
        snprintf(url, sizeof(url), "http://127.0.0.1:%u", ntohs(a.sin_port));
        return 0;
}
