/* SPDX-License-Identifier: Apache-2.0 */
/* test-client-api.c - client-api.c as a handler, against a fake HTTP layer and a fake member. */

/*
 * client-api.c is compiled in with members.c, over the real store; the HTTP layer (http-server.h) and the
 * member (server.h, peer.h) are fakes here. The fake layer ends a request (done(), then frees its state)
 * as soon as an answer is complete, inside the call that completed it: a handler that touches its state
 * after answering shows up under ASan. What is checked is the handler's side of the contract: answers
 * from callbacks, the watch stream with flow control, hang-ups, the peer stream upgrade.
 */

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "client-api.h"
#include "http-util.h"
#include "macro.h"
#include "peer.h"

/* the fake member and the fake HTTP layer, shared with tests/fuzz/fuzz-client-api.c */
#include "client-api-fakes.h"

/* A request up to handle() (if begin() does not answer), with NULL-terminated header name/value pairs. */
static FakeRequest *fake_request(ClientApi *api, const char *method, const char *uri, const char *body, ...) {
        FakeRequest *f = calloc(1, sizeof(FakeRequest));
        HttpBodyMode mode;
        va_list ap;

        assert_non_null(f);
        f->h.method = method;
        f->h.uri = uri;
        f->h.uri_len = strlen(uri);
        f->h.userdata = api;
        f->h.content_length = body ? (int64_t) strlen(body) : -1;
        f->h.data = calloc(1, client_api_handler.data_size);
        assert_non_null(f->h.data);
        va_start(ap, body);
        for (const char *n; (n = va_arg(ap, const char *)); ) {
                assert_true(f->n_head < ELEMENTSOF(f->head_names));
                f->head_names[f->n_head] = strdup(n);
                f->head_values[f->n_head++] = strdup(va_arg(ap, const char *));
        }
        va_end(ap);

        mode = client_api_handler.begin(&f->h);
        if (f->answered)
                return f;
        if (body && mode == HTTP_BODY_READ)
                assert_int_equal(http_buf_puts(&f->h.body, body), 0);
        client_api_handler.handle(&f->h);
        return f;
}

static void fake_hangup(FakeRequest *f) {
        assert_false(f->done);
        f->hung_up = f->h.hung_up = true;
        client_api_handler.hangup(&f->h);
        fake_finish(f);
}

static void fake_free(FakeRequest *f) {
        assert_true(f->done);
        /* the request's own memory is gone too: a handler holding on to it is caught by ASan */
        fake_release(f);
}

static bool has_header(FakeRequest *f, const char *line) {
        return f->resp_headers.data && strstr(f->resp_headers.data, line);
}

/* --- fixtures ------------------------------------------------------------------------------------ */

typedef struct Fixture {
        Server server;
        Config config;
        ClientApi *api, *peer_api;
} Fixture;

static int setup(void **state) {
        Fixture *x = calloc(1, sizeof(Fixture));

        assert_non_null(x);
        assert_int_equal(store_new(&x->server.store), 0);
        assert_int_equal(client_api_new(&x->server, &x->config, false, &x->api), 0);
        assert_int_equal(client_api_new(&x->server, &x->config, true, &x->peer_api), 0);
        peer = (typeof(peer)) { .check_status = 101 };
        *state = x;
        return 0;
}

static int teardown(void **state) {
        Fixture *x = *state;

        assert_null(x->server.proposal);
        client_api_free(x->api);
        client_api_free(x->peer_api);
        store_free(x->server.store);
        free(x);
        return 0;
}

static void put(Fixture *x, const char *uri, const char *body) {
        FakeRequest *f = fake_request(x->api, "PUT", uri, body, "Content-Type", "application/x-www-form-urlencoded",
                                      NULL);

        assert_false(f->answered);
        proposal_commit(&x->server);
        assert_true(f->done);
        assert_true(f->status == 200 || f->status == 201);
        fake_free(f);
}

/* --- tests --------------------------------------------------------------------------------------- */

static void test_get_not_found(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "GET", "/v2/keys/nope", NULL, NULL);

        assert_true(f->done);
        assert_int_equal(f->status, 404);
        assert_string_equal(f->content_type, "application/json");
        assert_non_null(strstr(f->body.data, "\"errorCode\":100"));
        assert_true(has_header(f, "X-Etcd-Cluster-Id: abcd\n"));
        assert_true(has_header(f, "X-Etcd-Index: 0\n"));
        fake_free(f);
}

static void test_put_answers_from_the_callback(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "PUT", "/v2/keys/a", "value=1", "Content-Type",
                                      "application/x-www-form-urlencoded", NULL);

        /* nothing until the proposal commits */
        assert_false(f->answered);
        assert_non_null(x->server.proposal);
        assert_string_equal(x->server.proposal->path, "/1/a");
        proposal_commit(&x->server);
        assert_true(f->done);
        assert_int_equal(f->status, 201);
        assert_non_null(strstr(f->body.data, "\"action\":\"set\""));
        assert_true(has_header(f, "X-Raft-Index: 7\n"));
        assert_true(has_header(f, "X-Raft-Term: 2\n"));
        fake_free(f);

        /* and the GET after it, answered at once (the event JSON shared through http_reply_ref()) */
        f = fake_request(x->api, "GET", "/v2/keys/a", NULL, NULL);
        assert_int_equal(f->status, 200);
        assert_non_null(strstr(f->body.data, "\"value\":\"1\""));
        fake_free(f);
}

/* A value with a NUL in it is stored whole (the fake member copies it by length, as the log does). */
static void test_put_value_with_nul(void **state) {
        Fixture *x = *state;
        FakeRequest *f;

        put(x, "/v2/keys/nul", "value=a%00b");
        f = fake_request(x->api, "GET", "/v2/keys/nul", NULL, NULL);
        assert_int_equal(f->status, 200);
        assert_non_null(strstr(f->body.data, "\"value\":\"a\\u0000b\""));
        fake_free(f);
}

static void test_hangup_cancels_the_proposal(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "POST", "/v2/keys/q", "value=1", "Content-Type",
                                      "application/x-www-form-urlencoded", NULL);

        assert_false(f->answered);
        fake_hangup(f);
        assert_true(x->server.proposal->cancelled);
        proposal_commit(&x->server);   /* the write still happens, nobody is called */
        fake_free(f);
}

static void test_member_hangup_cancels(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "POST", "/v2/members", "{\"peerURLs\":[\"http://127.0.0.1:9\"]}",
                                      "Content-Type", "application/json", NULL);

        assert_false(f->answered);
        assert_non_null(x->server.member_cb);
        fake_hangup(f);
        assert_true(x->server.member_cancelled);
        fake_free(f);

        /* answered from the callback otherwise */
        f = fake_request(x->api, "POST", "/v2/members", "{\"peerURLs\":[\"http://127.0.0.1:9\"]}",
                         "Content-Type", "application/json", NULL);
        assert_false(f->answered);
        x->server.member_cb(0, 0x42, x->server.member_userdata);
        assert_true(f->done);
        assert_int_equal(f->status, 201);
        assert_string_equal(f->body.data, "{\"id\":\"42\",\"name\":\"\",\"peerURLs\":[\"http://127.0.0.1:9\"],"
                                          "\"clientURLs\":[]}\n");
        fake_free(f);
}

/* The body's field in any case, the last one winning (encoding/json); a removed member's PUT is a 500
 * (UpdateMember()'s ErrIDRemoved has no case in the handler), its DELETE a 410. */
static void test_member_fields_and_removed(void **state) {
        Fixture *x = *state;
        StoreRequest req = { .method = STORE_METHOD_PUT, .path = "/0/removed_members/99", .value = "removed" };
        StoreResult res = {};
        FakeRequest *f;

        f = fake_request(x->api, "POST", "/v2/members", "{\"peerURLs\":[\"x\"],\"PeerUrls\":[\"http://127.0.0.1:9\"]}",
                         "Content-Type", "application/json", NULL);
        assert_false(f->answered);
        x->server.member_cb(0, 0x42, x->server.member_userdata);
        assert_int_equal(f->status, 201);
        assert_non_null(strstr(f->body.data, "\"peerURLs\":[\"http://127.0.0.1:9\"]"));
        fake_free(f);

        f = fake_request(x->api, "POST", "/v2/members", "{\"PEERURLS\":[\"http://127.0.0.1:9\"],\"peerURLs\":null}",
                         "Content-Type", "application/json", NULL);
        assert_int_equal(f->status, 400);
        assert_string_equal(f->body.data, "{\"message\":\"no valid URLs given\"}");
        fake_free(f);

        f = fake_request(x->api, "POST", "/v2/members", "{\"peerURLs\":[\" 127.0.0.1:9\\\\\"]}",
                         "Content-Type", "application/json", NULL);
        assert_int_equal(f->status, 400);
        assert_string_equal(f->body.data, "{\"message\":\"parse \\\"127.0.0.1:9\\\\\\\\\\\": first path segment in URL "
                                          "cannot contain colon\"}");
        fake_free(f);

        assert_int_equal(store_apply(x->server.store, &req, 1000, &res), 0);
        store_result_done(&res);
        f = fake_request(x->api, "PUT", "/v2/members/99", "{\"peerURLs\":[\"http://127.0.0.1:9\"]}",
                         "Content-Type", "application/json", NULL);
        assert_int_equal(f->status, 500);
        assert_string_equal(f->body.data, "{\"message\":\"Internal Server Error\"}");
        fake_free(f);
        f = fake_request(x->api, "DELETE", "/v2/members/99", NULL, NULL);
        assert_int_equal(f->status, 410);
        assert_string_equal(f->body.data, "{\"message\":\"Member permanently removed: 99\"}");
        fake_free(f);
}

/* PUT /config/local/log (2.x): {"Level"} in any case; a null changes nothing, a number is refused. */
static void test_config_log_fields(void **state) {
        Fixture *x = *state;
        static const struct {
                const char *body;
                unsigned status;
        } cases[] = {
                { "{\"LEVEL\":\"info\",\"level\":null}", 204 },
                { "{\"level\":\"x\",\"Level\":\"notice\"}", 204 },
                { "{\"Level\":\"notice\",\"level\":\"x\"}", 400 },
                { "{\"level\":\"info\",\"LEVEL\":1}", 400 },
                { "{\"lev\":\"info\"}", 400 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                FakeRequest *f = fake_request(x->api, "PUT", "/config/local/log", cases[i].body, NULL);

                assert_true(f->done);
                assert_int_equal(f->status, cases[i].status);
                fake_free(f);
        }
}

static void test_watch_once(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "GET", "/v2/keys/w?wait=true", NULL, NULL);

        /* the headers go out at once, the body waits for the event */
        assert_true(f->streaming);
        assert_false(f->done);
        assert_int_equal(f->status, 200);
        assert_true(has_header(f, "X-Etcd-Index: 0\n"));
        put(x, "/v2/keys/w", "value=v");
        /* one write, the final chunk with it */
        assert_true(f->done);
        assert_int_equal(f->n_writes, 1);
        assert_non_null(strstr(f->body.data, "\"value\":\"v\""));
        fake_free(f);

        /* from the history: answered at once */
        f = fake_request(x->api, "GET", "/v2/keys/w?wait=true&waitIndex=1", NULL, NULL);
        assert_true(f->done);
        assert_int_equal(f->n_writes, 1);
        fake_free(f);

        /* hang-up while waiting: the watcher goes */
        f = fake_request(x->api, "GET", "/v2/keys/w?wait=true", NULL, NULL);
        assert_false(f->done);
        assert_int_equal(store_n_watchers(x->server.store), 1);
        fake_hangup(f);
        assert_int_equal(store_n_watchers(x->server.store), 0);
        fake_free(f);
}

static void test_watch_stream_flow_control(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "GET", "/v2/keys/s?wait=true&stream=true&recursive=true", NULL, NULL);
        char uri[64];

        assert_true(f->streaming);
        put(x, "/v2/keys/s/0", "value=0");
        assert_int_equal(f->n_writes, 1);

        /* a slow reader: events wait in the queue, drained() hands them over */
        f->pending = 1 << 20;
        put(x, "/v2/keys/s/1", "value=1");
        put(x, "/v2/keys/s/2", "value=2");
        assert_int_equal(f->n_writes, 1);
        f->pending = 0;
        client_api_handler.drained(&f->h);
        assert_int_equal(f->n_writes, 3);
        assert_false(f->done);

        /* too slow: after 100 waiting events the watcher is dropped and the answer ends once drained */
        f->pending = 1 << 20;
        for (unsigned i = 0; i < 101; i++) {
                snprintf(uri, sizeof uri, "/v2/keys/s/x%u", i);
                put(x, uri, "value=x");
        }
        assert_int_equal(store_n_watchers(x->server.store), 0);
        assert_false(f->done);
        f->pending = 0;
        client_api_handler.drained(&f->h);
        assert_true(f->done);
        assert_int_equal(f->n_writes, 3 + 100);
        fake_free(f);
}

static void test_watch_stream_hangup(void **state) {
        Fixture *x = *state;
        FakeRequest *f = fake_request(x->api, "GET", "/v2/keys/h?wait=true&stream=true", NULL, NULL);

        f->pending = 1 << 20;
        put(x, "/v2/keys/h", "value=1");
        put(x, "/v2/keys/h", "value=2");
        fake_hangup(f);   /* queued events released (ASan: no leak) */
        assert_int_equal(store_n_watchers(x->server.store), 0);
        fake_free(f);
}

static void test_peer_upgrade(void **state) {
        Fixture *x = *state;
        FakeRequest *f;
        int fds[2];

        f = fake_request(x->peer_api, "POST", "/raft/stream", NULL, "Upgrade", "etcd2-raft/1", "X-Server-From", "1",
                         "X-Etcd-Cluster-ID", "abcd", "X-Server-Version", "2.3.8", NULL);
        assert_int_equal(f->status, 101);
        assert_non_null(f->taken);
        assert_true(has_header(f, "Upgrade: etcd2-raft/1\n"));
        /* done() first, then the request is gone; the socket comes after */
        fake_finish(f);
        for (size_t i = 0; i < f->n_head; i++)
                memset(f->head_values[i], 'Z', strlen(f->head_values[i]));
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        f->taken(fds[0], NULL, "frame", 5, f->taken_userdata);
        (void) close(fds[1]);
        assert_true(peer.accepted);
        assert_string_equal(peer.from, "1");
        assert_string_equal(peer.cluster, "abcd");
        assert_string_equal(peer.version, "2.3.8");
        assert_string_equal(peer.min_version, "(null)");
        assert_int_equal(peer.extra_len, 5);
        fake_free(f);

        /* the connection ends before the handover: the layer calls taken with fd -1 (ASan: the copy is
         * freed there, once), and nothing reaches the peer transport */
        peer.accepted = false;
        f = fake_request(x->peer_api, "POST", "/raft/stream", NULL, "Upgrade", "etcd2-raft/1", "X-Server-From", "1",
                         NULL);
        assert_int_equal(f->status, 101);
        fake_hangup(f);
        f->taken(-1, NULL, NULL, 0, f->taken_userdata);
        assert_false(peer.accepted);
        fake_free(f);
}

static void test_peer_refused_at_the_head(void **state) {
        Fixture *x = *state;
        FakeRequest *f;

        peer.check_status = 412;
        f = fake_request(x->peer_api, "POST", "/raft/stream", "xxxx", "Upgrade", "etcd2-raft/1", NULL);
        assert_true(f->done);
        assert_int_equal(f->status, 412);
        assert_true(f->close);
        assert_true(has_header(f, "X-Etcd-Cluster-Id: abcd\n"));
        assert_false(peer.accepted);
        fake_free(f);

        /* the client API does not serve the peer endpoints, nor the peer listener the client API */
        f = fake_request(x->api, "GET", "/members", NULL, NULL);
        assert_int_equal(f->status, 404);
        fake_free(f);
        f = fake_request(x->peer_api, "GET", "/v2/keys/a", NULL, NULL);
        assert_int_equal(f->status, 404);
        fake_free(f);
}

static void test_redirect_and_options(void **state) {
        Fixture *x = *state;
        char *cors[] = { (char *) "*", NULL };
        FakeRequest *f;

        f = fake_request(x->api, "GET", "/v2//keys?x=1", NULL, NULL);
        assert_int_equal(f->status, 301);
        assert_true(has_header(f, "Location: /v2/keys?x=1\n"));
        assert_string_equal(f->content_type, "text/html; charset=utf-8");
        fake_free(f);

        x->config.cors = cors;
        f = fake_request(x->api, "OPTIONS", "/anything", NULL, NULL);
        assert_int_equal(f->status, 200);
        assert_true(has_header(f, "Access-Control-Allow-Origin: *\n"));
        fake_free(f);
        x->config.cors = NULL;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_get_not_found, setup, teardown),
                cmocka_unit_test_setup_teardown(test_put_answers_from_the_callback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_put_value_with_nul, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hangup_cancels_the_proposal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_member_fields_and_removed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_config_log_fields, setup, teardown),
                cmocka_unit_test_setup_teardown(test_member_hangup_cancels, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_stream_flow_control, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_stream_hangup, setup, teardown),
                cmocka_unit_test_setup_teardown(test_peer_upgrade, setup, teardown),
                cmocka_unit_test_setup_teardown(test_peer_refused_at_the_head, setup, teardown),
                cmocka_unit_test_setup_teardown(test_redirect_and_options, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
