/* SPDX-License-Identifier: Apache-2.0 */
/* client-api-fakes.h - the fake member (server_*(), peer_transport_*()) and the fake HTTP layer (http_*())
 * that client-api.c runs against in test-client-api.c and fuzz-client-api.c. Definitions, not
 * declarations: included once per program, after its includes and its assert_*() (cmocka's, or the fuzz
 * target's abort()). A proposal waits in Server.proposal until proposal_commit() applies it to the real
 * store; an answer lands in the FakeRequest. */
#pragma once

/* --- the fake member ----------------------------------------------------------------------------- */

struct ServerProposal {
        ServerProposalCallback cb;
        void *userdata;
        StoreRequest req;
        char *path, *value;
        bool cancelled;
};

struct Server {
        Store *store;
        ServerProposal *proposal;        /* the last one */
        ServerMemberCallback member_cb;
        void *member_userdata;
        bool member_cancelled;
};

static struct {
        int check_status;
        bool accepted;
        char from[64], cluster[64], version[64], min_version[64];
        char extra[64];
        size_t extra_len;
} peer;

Store *server_store(Server *s) { return s->store; }
uint64_t server_member_id(Server *s) { return 0x1234; }
uint64_t server_cluster_id(Server *s) { return 0xabcd; }
uint64_t server_leader_id(Server *s) { return 0x1234; }
ServerRole server_role(Server *s) { return SERVER_ROLE_LEADER; }
const char *server_role_to_string(ServerRole r) { return "StateLeader"; }
uint64_t server_raft_index(Server *s) { return 7; }
uint64_t server_raft_term(Server *s) { return 2; }
uint64_t server_start_time_usec(Server *s) { return 1; }
uint64_t server_leader_start_time_usec(Server *s) { return 1; }
void server_self_stats(Server *s, ServerSelfStats *ret) { *ret = (ServerSelfStats) {}; }
int server_follower_stats(Server *s, ServerFollowerStats **ret, size_t *ret_n) {
        *ret = NULL;
        *ret_n = 0;
        return 0;
}
PeerTransport *server_peer_transport(Server *s) { return (PeerTransport *) s; }

int server_propose(Server *s, const StoreRequest *req, ServerProposalCallback cb, void *userdata,
                   ServerProposal **ret) {
        ServerProposal *p = calloc(1, sizeof(ServerProposal));

        assert_non_null(p);
        assert_null(s->proposal);
        p->cb = cb;
        p->userdata = userdata;
        p->req = *req;
        p->path = strdup(req->path);
        /* values may hold NULs: copied by length */
        if (req->value) {
                p->value = malloc(req->value_len + 1);
                assert_non_null(p->value);
                memcpy(p->value, req->value, req->value_len);
                p->value[req->value_len] = 0;
        }
        p->req.path = p->path;
        p->req.value = p->value;
        p->req.prev_value = NULL;
        s->proposal = p;
        *ret = p;
        return 0;
}

void server_proposal_cancel(ServerProposal *p) {
        p->cancelled = true;
}

/* Commits the pending proposal (unless cancelled): applies it and calls back, as the server does. */
static void proposal_commit(Server *s) {
        ServerProposal *p = s->proposal;
        StoreResult res = {};

        assert_non_null(p);
        s->proposal = NULL;
        assert_int_equal(store_apply(s->store, &p->req, 1000, &res), 0);
        if (!p->cancelled)
                p->cb(&res, p->userdata);
        store_result_done(&res);
        free(p->path);
        free(p->value);
        free(p);
}

static int member_op(Server *s, ServerMemberCallback cb, void *userdata) {
        s->member_cb = cb;
        s->member_userdata = userdata;
        s->member_cancelled = false;
        return 0;
}
int server_member_add(Server *s, char *const *peer_urls, size_t n, ServerMemberCallback cb, void *userdata) {
        return member_op(s, cb, userdata);
}
int server_member_remove(Server *s, uint64_t id, ServerMemberCallback cb, void *userdata) {
        return member_op(s, cb, userdata);
}
int server_member_update(Server *s, uint64_t id, char *const *peer_urls, size_t n, ServerMemberCallback cb,
                         void *userdata) {
        return member_op(s, cb, userdata);
}
void server_member_cancel(Server *s, void *userdata) {
        assert_ptr_equal(userdata, s->member_userdata);
        s->member_cancelled = true;
        s->member_cb = NULL;
}

int peer_transport_check(PeerTransport *t, const char *from_hex, const char *cluster_hex,
                         const char *server_version, const char *min_cluster_version) {
        return peer.check_status;
}

int peer_transport_accept(PeerTransport *t, int fd, gnutls_session_t tls, const char *from_hex, const char *cluster_hex,
                          const char *server_version, const char *min_cluster_version, const void *extra,
                          size_t extra_size, void (*release)(void *userdata), void *release_userdata) {
        peer.accepted = true;
        snprintf(peer.from, sizeof peer.from, "%s", from_hex ?: "(null)");
        snprintf(peer.cluster, sizeof peer.cluster, "%s", cluster_hex ?: "(null)");
        snprintf(peer.version, sizeof peer.version, "%s", server_version ?: "(null)");
        snprintf(peer.min_version, sizeof peer.min_version, "%s", min_cluster_version ?: "(null)");
        assert_true(extra_size < sizeof peer.extra);
        memcpy(peer.extra, extra, extra_size);
        peer.extra_len = extra_size;
        assert_null(release);
        (void) close(fd);
        return 0;
}

/* --- the fake HTTP layer ------------------------------------------------------------------------- */

typedef struct FakeRequest {
        HttpRequest h;                   /* first: the layer's HttpRequest * is ours */
        char *head_names[8], *head_values[8];
        size_t n_head;

        HttpBuf resp_headers;            /* "Name: value\n" each */
        unsigned status;
        char content_type[64];
        HttpBuf body;
        bool close;
        bool answered, streaming, ended, done, hung_up;
        unsigned n_writes;
        size_t pending;                  /* what http_stream_pending() says */

        HttpTakenFunc taken;
        void *taken_userdata;
} FakeRequest;

static FakeRequest *fake(HttpRequest *r) {
        return (FakeRequest *) r;
}

/* Frees a fake request and what it holds (the unit test checks first that it was finished). */
static void fake_release(FakeRequest *f) {
        for (size_t i = 0; i < f->n_head; i++) {
                free(f->head_names[i]);
                free(f->head_values[i]);
        }
        http_buf_done(&f->resp_headers);
        http_buf_done(&f->body);
        http_buf_done(&f->h.body);
        free(f);
}

/* done(), then the handler's state is gone, as the layer frees it. */
static void fake_finish(FakeRequest *f) {
        assert_false(f->done);
        f->done = true;
        client_api_handler.done(&f->h);
        free(f->h.data);
        f->h.data = NULL;
}

const char *http_request_header(const HttpRequest *r, const char *name) {
        const FakeRequest *f = (const FakeRequest *) r;

        for (size_t i = 0; i < f->n_head; i++)
                if (strcasecmp(f->head_names[i], name) == 0)
                        return f->head_values[i];
        return NULL;
}

void http_response_header(HttpRequest *r, const char *name, const char *value) {
        assert_false(fake(r)->answered);
        assert_int_equal(http_buf_printf(&fake(r)->resp_headers, "%s: %s\n", name, value), 0);
}

void http_response_header_u64(HttpRequest *r, const char *name, uint64_t value, unsigned base) {
        char buf[32];

        snprintf(buf, sizeof buf, base == 16 ? "%" PRIx64 : "%" PRIu64, value);
        http_response_header(r, name, buf);
}

void http_response_close(HttpRequest *r) {
        fake(r)->close = true;
}

void http_reply_ref(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len,
                    void (*release)(void *userdata), void *userdata) {
        FakeRequest *f = fake(r);

        assert_false(f->answered);
        f->answered = r->answered = true;
        f->status = status;
        snprintf(f->content_type, sizeof f->content_type, "%s", content_type ?: "");
        assert_int_equal(http_buf_append(&f->body, body, len), 0);
        if (release)
                release(userdata);
        fake_finish(f);
}

void http_reply(HttpRequest *r, unsigned status, const char *content_type, const void *body, size_t len) {
        http_reply_ref(r, status, content_type, body, len, NULL, NULL);
}

void http_stream_begin(HttpRequest *r, unsigned status, const char *content_type, int64_t content_length) {
        FakeRequest *f = fake(r);

        assert_false(f->answered);
        assert_int_equal(content_length, -1);
        f->answered = r->answered = f->streaming = true;
        f->status = status;
        snprintf(f->content_type, sizeof f->content_type, "%s", content_type ?: "");
}

void http_stream_write(HttpRequest *r, const void *data, size_t len, bool last) {
        FakeRequest *f = fake(r);

        assert_true(f->streaming);
        assert_false(f->ended);
        assert_int_equal(http_buf_append(&f->body, data, len), 0);
        f->n_writes++;
        if (last) {
                f->ended = true;
                fake_finish(f);
        }
}

void http_stream_end(HttpRequest *r) {
        FakeRequest *f = fake(r);

        assert_true(f->streaming);
        assert_false(f->ended);
        f->ended = true;
        fake_finish(f);
}

size_t http_stream_pending(const HttpRequest *r) {
        return ((const FakeRequest *) r)->pending;
}

void http_upgrade(HttpRequest *r, unsigned status, HttpTakenFunc taken, void *userdata) {
        FakeRequest *f = fake(r);

        assert_false(f->answered);
        f->answered = r->answered = true;
        f->status = status;
        f->taken = taken;
        f->taken_userdata = userdata;
}
