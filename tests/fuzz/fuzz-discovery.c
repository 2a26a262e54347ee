/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-discovery.c - libFuzzer target for discovery answers (discovery.c, --discovery): a fake discovery
 * service in the process (our HTTP server on 127.0.0.1) answers the client's requests (size key, member
 * list, registration, confirmation, watches) one after the other from the input, which is answers
 * separated by "\n%%\n", each "<status> <X-Etcd-Index>\n<JSON body>". The first byte: bit 0 joins as a
 * member (else only gets the cluster). When the answers run out, or the client waits to retry, the run
 * ends. With bit 7 set the rest is instead a discovery URL and an initial-cluster string for the pure
 * helpers (discovery_split_url(), discovery_validate_cluster()), split at the first newline. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "curl-glue.h"
#include "discovery.h"
#include "http-server.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static sd_event *event;
static CurlGlue *glue;
static HttpServer *server;
static HttpService *service;
static char url[96];

static const uint8_t *answers, *answers_end;
static bool finished;

static const uint8_t *find_sep(const uint8_t *p, const uint8_t *end) {
        for (; p + 4 <= end; p++)
                if (memcmp(p, "\n%%\n", 4) == 0)
                        return p;
        return end;
}

static HttpBodyMode on_begin(HttpRequest *r) {
        return HTTP_BODY_READ;
}

static void on_handle(HttpRequest *r) {
        const uint8_t *a = answers, *end, *nl;
        unsigned long status = 200, index = 0;
        char head[32], *e;
        size_t n;

        if (!answers || answers >= answers_end) {
                /* Out of answers: the client gives up or waits to retry; either way the run ends. */
                answers = NULL;
                http_reply(r, 503, "text/plain", "", 0);
                return;
        }
        end = find_sep(a, answers_end);
        answers = end + 4;
        nl = memchr(a, '\n', (size_t) (end - a));
        if (!nl)
                nl = end;
        n = MIN((size_t) (nl - a), sizeof(head) - 1);
        memcpy(head, a, n);
        head[n] = 0;
        status = strtoul(head, &e, 10);
        if (status < 200 || status > 599)
                status = 200;
        index = strtoul(e, NULL, 10);
        http_response_header_u64(r, "X-Etcd-Index", index, 10);
        http_reply(r, (unsigned) status, "application/json", nl < end ? nl + 1 : nl,
                   nl < end ? (size_t) (end - nl - 1) : 0);
}

static const HttpHandler handler = { .begin = on_begin, .handle = on_handle };

static void on_done(Discovery *d, int error, bool full, const char *cluster, void *userdata) {
        finished = true;
        if (error == 0 && !cluster)
                abort();
}

static void helpers(const uint8_t *data, size_t size) {
        char *s = strndup((const char *) data, size), *nl, *endpoint = NULL, *cluster = NULL, *bad = NULL;

        if (!s)
                abort();
        nl = strchr(s, '\n');
        if (nl)
                *nl++ = 0;
        if (discovery_split_url(s, &endpoint, &cluster) >= 0) {
                free(endpoint);
                free(cluster);
        }
        (void) discovery_validate_cluster(nl ?: s, (int) (size % 8), &bad);
        free(bad);
        free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Discovery *d = NULL;
        unsigned idle = 0;
        int r;

        if (size < 1 || size > 64 * 1024)
                return 0;
        if (data[0] & 0x80) {
                helpers(data + 1, size - 1);
                return 0;
        }
        answers = data + 1;
        answers_end = data + size;
        finished = false;
        if (discovery_new(event, glue, url, NULL, &d) < 0)
                abort();
        if (data[0] & 1)
                r = discovery_join(d, UINT64_C(0x5d1fe0a12b), "self=http://127.0.0.1:7003", on_done, NULL);
        else
                r = discovery_get(d, on_done, NULL);
        if (r < 0)
                abort();
        /* Until the end, or nothing happens for a few milliseconds (a retry timer, a watch waiting). */
        for (unsigned rounds = 0; rounds < 100000 && !finished && idle < 3; rounds++) {
                r = sd_event_run(event, 2000);
                if (r < 0)
                        abort();
                idle = r == 0 ? idle + 1 : 0;
        }
        discovery_free(d);
        /* Let the server see the client's connections close; those libcurl keeps alive for the next run stay
         * (waiting for them cost 100 ms a run: 16 runs a second). */
        for (unsigned rounds = 0; rounds < 100 && http_service_n_connections(service) > 0; rounds++) {
                r = sd_event_run(event, 1000);
                if (r < 0)
                        abort();
                if (r == 0)
                        break;
        }
        answers = NULL;
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        HttpLimits limits = {
                .head_max = 8192,
                .body_max = 65536,
                .idle_timeout_usec = 60 * 1000000ULL,
                .head_timeout_usec = 60 * 1000000ULL,
        };
        socklen_t l = sizeof(a);
        int fd;

        log_set_max_level(LOG_CRIT);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof(a)) < 0 || listen(fd, 64) < 0 ||
            getsockname(fd, (struct sockaddr *) &a, &l) < 0 || sd_event_new(&event) < 0 ||
            curl_glue_new(event, &glue) < 0 || http_server_new(event, &server) < 0 ||
            http_server_add_service(server, "discovery", &handler, NULL, &limits, &service) < 0 ||
            http_service_add_listener(service, fd) < 0)
                abort();
        snprintf(url, sizeof(url), "http://127.0.0.1:%u/5b1f2c3d4e5f60718293a4b5c6d7e8f9", ntohs(a.sin_port));
        return 0;
}
