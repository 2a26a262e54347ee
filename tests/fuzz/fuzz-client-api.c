/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz-client-api.c - libFuzzer target for key requests as the client API decodes them (client-api.c:
 * method, path, query and form, every parameter; members, stats, auth, the peer endpoints), over the
 * real store, behind the fake HTTP layer and fake member of tests/unit/test-client-api.c
 * (tests/unit/client-api-fakes.h, its cmocka asserts turned into aborts). The input is requests separated by "\n%%\n", each:
 *     METHOD SP URI LF  (Header: value LF)*  LF  body
 * A first line "@peer" sends the requests to the peer API instead. The cluster version (/0/version) is
 * 2.3.0, so that the auth endpoints answer. Each proposal is committed right away,
 * member changes succeed; whatever is still open after its request (a watch) is hung up. */

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include "client-api.h"
#include "config.h"
#include "http-util.h"
#include "log.h"
#include "macro.h"
#include "peer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define check(x) do { if (!(x)) abort(); } while (0)
#define assert_non_null(x) check((x) != NULL)
#define assert_null(x) check((x) == NULL)
#define assert_true(x) check(x)
#define assert_false(x) check(!(x))
#define assert_int_equal(a, b) check((a) == (b))
#define assert_ptr_equal(a, b) check((a) == (b))

/* the fake member and the fake HTTP layer, shared with tests/unit/test-client-api.c */
#include "../unit/client-api-fakes.h"

#define HEADERS_MAX 8

static Server server;
static Config config;
static ClientApi *api, *peer_api;

static const char *find_sep(const char *p, const char *end) {
        for (; p + 4 <= end; p++)
                if (memcmp(p, "\n%%\n", 4) == 0)
                        return p;
        return end;
}

/* One request through begin() and handle(), then its proposal or member change, then a hangup. */
/* Commits what the request proposed, and what it proposes from each commit's callback (the auth endpoints
 * chain their writes: the /2 directories the first time, then the user or role); a chain that never ends is a bug. */
static void commit_all(void) {
        for (unsigned n = 0; server.proposal; n++) {
                if (n >= 64)
                        abort();
                proposal_commit(&server);
        }
}

static void one_request(ClientApi *a, const char *p, const char *end) {
        FakeRequest *f = calloc(1, sizeof(FakeRequest));
        char *line, *method, *uri;
        const char *nl;
        HttpBodyMode mode;

        assert_non_null(f);
        nl = memchr(p, '\n', (size_t) (end - p)) ?: end;
        line = strndup(p, (size_t) (nl - p));
        assert_non_null(line);
        method = line;
        uri = strchr(line, ' ');
        if (uri)
                *uri++ = 0;
        else
                uri = (char *) "/";
        p = nl < end ? nl + 1 : end;
        /* headers up to an empty line */
        while (p < end && *p != '\n') {
                const char *colon;

                nl = memchr(p, '\n', (size_t) (end - p)) ?: end;
                colon = memchr(p, ':', (size_t) (nl - p));
                if (colon && f->n_head < HEADERS_MAX) {
                        const char *v = colon + 1;

                        while (v < nl && *v == ' ')
                                v++;
                        f->head_names[f->n_head] = strndup(p, (size_t) (colon - p));
                        f->head_values[f->n_head] = strndup(v, (size_t) (nl - v));
                        assert_true(f->head_names[f->n_head] && f->head_values[f->n_head]);
                        f->n_head++;
                }
                p = nl < end ? nl + 1 : end;
        }
        if (p < end)
                p++;

        f->h.method = method;
        f->h.uri = uri;
        f->h.uri_len = strlen(uri);
        f->h.userdata = a;
        f->h.head = strcmp(method, "HEAD") == 0;
        f->h.http_major = f->h.http_minor = 1;
        f->h.content_length = end > p ? (int64_t) (end - p) : -1;
        f->h.data = calloc(1, client_api_handler.data_size ?: 1);
        assert_non_null(f->h.data);

        mode = client_api_handler.begin(&f->h);
        if (!f->answered) {
                if (end > p && mode == HTTP_BODY_READ) {
                        if ((size_t) (end - p) > HTTP_BODY_MAX)
                                f->h.body_too_large = true;
                        else
                                assert_int_equal(http_buf_append(&f->h.body, p, (size_t) (end - p)), 0);
                }
                client_api_handler.handle(&f->h);
        }
        commit_all();
        if (server.member_cb) {
                ServerMemberCallback cb = server.member_cb;

                server.member_cb = NULL;
                cb(0, 0x42, server.member_userdata);
        }
        if (f->taken) {
                int fds[2];

                /* the peer stream upgrade: hand over one end of a socketpair */
                assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
                f->taken(fds[0], NULL, NULL, 0, f->taken_userdata);
                close(fds[1]);
                fake_finish(f);
        } else if (!f->done) {
                f->hung_up = f->h.hung_up = true;
                if (client_api_handler.hangup)
                        (void) client_api_handler.hangup(&f->h);
                commit_all();
                if (!f->done)
                        fake_finish(f);
        }
        fake_release(f);
        free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *p = (const char *) data, *end = p + size;
        ClientApi *a = api;
        StoreRequest version = { .method = STORE_METHOD_PUT, .path = "/0/version", .value = "2.3.0", .value_len = 5,
                                 .prev_exist = -1 };
        StoreResult res = {};

        if (size > 256 * 1024)
                return 0;
        if (size >= 6 && memcmp(p, "@peer\n", 6) == 0) {
                a = peer_api;
                p += 6;
        }
        assert_int_equal(store_new(&server.store), 0);
        assert_int_equal(store_apply(server.store, &version, 0, &res), 0);
        store_result_done(&res);
        for (unsigned n = 0; p < end && n < 32; n++) {
                const char *q = find_sep(p, end);

                one_request(a, p, q);
                p = q + 4;
        }
        store_free(server.store);
        server.store = NULL;
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        log_set_max_level(LOG_CRIT);
        peer.check_status = 101;
        if (client_api_new(&server, &config, false, &api) < 0 || client_api_new(&server, &config, true, &peer_api) < 0)
                abort();
        return 0;
}
