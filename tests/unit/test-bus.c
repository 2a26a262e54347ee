/* SPDX-License-Identifier: Apache-2.0 */
/* test-bus.c - cmocka tests for bus.c: io.etcd.etcd2 over a socketpair, plus one private dbus-daemon run. */

/*
 * The Bus is served on one end of a socketpair (sd_bus_set_server + anonymous auth, no bus daemon); the
 * test is the client on the other end. Both connections are attached to one sd-event loop and calls are
 * made asynchronously while the loop runs, so the test stays single-threaded. The provider and the ops
 * are fakes whose values the tests change between notifications.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "bus.h"
#include "log.h"
#include "macro.h"

#define MAX_FAKE_MEMBERS 8
#define MAX_SIGNALS 256

typedef struct FakeMember {
        uint64_t id;
        const char *name;
        const char *peer[3];
        const char *client[3];
        bool reachable;
} FakeMember;

typedef struct Signal {
        char *path;
        char *interface;      /* PropertiesChanged: the changed interface; else the signal's interface */
        char *member;         /* "PropertiesChanged", "LeaderChanged", "InterfacesAdded", ... */
        char *props;          /* PropertiesChanged: changed names, space separated;
                               * LeaderChanged: "old new"; InterfacesAdded/Removed: the path */
        uint64_t raft_index;  /* RaftIndex value if it was in the PropertiesChanged dict */
        uint64_t at_usec;
} Signal;

typedef struct Fixture {
        sd_event *event;
        sd_bus *server, *client;
        sd_bus_slot *match;
        Bus *bus;

        /* provider */
        uint64_t cluster_id, member_id, leader_id, term, index, etcd_index;
        BusRole role;
        bool healthy;
        FakeMember members[MAX_FAKE_MEMBERS];
        size_t n_members;

        /* ops */
        char **added;
        uint64_t removed;
        char *backup_path;
        int op_result;
        bool op_async;
        sd_bus_message *pending;

        Signal signals[MAX_SIGNALS];
        size_t n_signals;
} Fixture;

/* ---- fake provider and ops ---- */

static uint64_t fake_cluster_id(void *u) { return ((Fixture *) u)->cluster_id; }
static uint64_t fake_member_id(void *u) { return ((Fixture *) u)->member_id; }
static uint64_t fake_leader_id(void *u) { return ((Fixture *) u)->leader_id; }
static uint64_t fake_term(void *u) { return ((Fixture *) u)->term; }
static uint64_t fake_index(void *u) { return ((Fixture *) u)->index; }
static uint64_t fake_etcd_index(void *u) { return ((Fixture *) u)->etcd_index; }
static BusRole fake_role(void *u) { return ((Fixture *) u)->role; }
static bool fake_healthy(void *u) { return ((Fixture *) u)->healthy; }

static char **strv_copy(const char *const *l, size_t max) {
        char **r = calloc(max + 1, sizeof(char *));
        size_t n = 0;

        assert_non_null(r);
        for (size_t i = 0; i < max && l[i]; i++) {
                r[n] = strdup(l[i]);
                assert_non_null(r[n++]);
        }
        return r;
}

static int fake_members(void *u, BusMember **ret, size_t *ret_n) {
        Fixture *f = u;
        BusMember *m = calloc(f->n_members + 1, sizeof(BusMember));

        assert_non_null(m);
        for (size_t i = 0; i < f->n_members; i++) {
                m[i].id = f->members[i].id;
                m[i].name = strdup(f->members[i].name);
                m[i].peer_urls = strv_copy(f->members[i].peer, 3);
                m[i].client_urls = strv_copy(f->members[i].client, 3);
                m[i].reachable = f->members[i].reachable;
        }
        *ret = m;
        *ret_n = f->n_members;
        return 0;
}

static int fake_add_member(void *u, sd_bus_message *m, char **peer_urls, uint64_t *ret_id,
                           sd_bus_error *error) {
        Fixture *f = u;
        size_t n = strv_length(peer_urls);

        if (f->op_result < 0)
                return f->op_result;
        strv_free(f->added);
        f->added = strv_copy((const char *const *) peer_urls, n);
        if (f->op_async) {
                f->pending = sd_bus_message_ref(m);
                return 1;
        }
        *ret_id = 0xabcdef12345ULL;
        return 0;
}

static int fake_remove_member(void *u, sd_bus_message *m, uint64_t id, sd_bus_error *error) {
        Fixture *f = u;

        if (f->op_result < 0)
                return f->op_result;
        f->removed = id;
        return 0;
}

static int fake_backup(void *u, sd_bus_message *m, const char *path, sd_bus_error *error) {
        Fixture *f = u;

        if (f->op_result == -EIO)
                return bus_error_setf(error, -EIO, "Disk on fire while writing %s.", path);
        if (f->op_result < 0)
                return f->op_result;
        free(f->backup_path);
        f->backup_path = strdup(path);
        return 0;
}

static BusProvider fake_provider(Fixture *f) {
        return (BusProvider) {
                .cluster_id = fake_cluster_id,
                .member_id = fake_member_id,
                .leader_id = fake_leader_id,
                .members = fake_members,
                .raft_term = fake_term,
                .raft_index = fake_index,
                .etcd_index = fake_etcd_index,
                .role = fake_role,
                .healthy = fake_healthy,
                .userdata = f,
        };
}

static const BusOps fake_ops_template = {
        .add_member = fake_add_member,
        .remove_member = fake_remove_member,
        .backup = fake_backup,
};

/* ---- loop helpers ---- */

static uint64_t now_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static void run_for(Fixture *f, uint64_t usec) {
        uint64_t end = now_usec() + usec;

        for (uint64_t n; (n = now_usec()) < end;)
                assert_true(sd_event_run(f->event, end - n) >= 0);
}

typedef struct CallState {
        sd_bus_message *reply;
        bool done;
} CallState;

static void wait_done(Fixture *f, CallState *st) {
        uint64_t end = now_usec() + 5 * USEC_PER_SEC;

        while (!st->done && now_usec() < end)
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        CallState *st = userdata;

        st->reply = sd_bus_message_ref(m);
        st->done = true;
        return 0;
}

/* Sends `m` (consumed), runs the loop until the reply. Returns 0 or the mapped -errno of an error reply,
 * whose name and message are copied into *ret_error. */
static int call(Fixture *f, sd_bus_message *m, sd_bus_message **ret_reply, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        CallState st = {};
        const sd_bus_error *e;
        uint64_t end = now_usec() + 5 * USEC_PER_SEC;

        assert_true(sd_bus_call_async(f->client, &slot, m, on_reply, &st, 5 * USEC_PER_SEC) >= 0);
        sd_bus_message_unref(m);
        while (!st.done && now_usec() < end)
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
        assert_true(st.done);
        e = sd_bus_message_get_error(st.reply);
        if (e) {
                int r = -sd_bus_error_get_errno(e);

                if (ret_error)
                        assert_true(sd_bus_error_copy(ret_error, e) < 0);
                sd_bus_message_unref(st.reply);
                return r < 0 ? r : -EIO;
        }
        if (ret_reply)
                *ret_reply = st.reply;
        else
                sd_bus_message_unref(st.reply);
        return 0;
}

static sd_bus_message *new_call(Fixture *f, const char *path, const char *iface, const char *member) {
        sd_bus_message *m = NULL;

        assert_true(sd_bus_message_new_method_call(f->client, &m, NULL, path, iface, member) >= 0);
        return m;
}

/* Returns the reply positioned inside the variant of `prop`. */
static sd_bus_message *get_property(Fixture *f, const char *path, const char *iface, const char *prop,
                                    const char *sig) {
        sd_bus_message *m = new_call(f, path, "org.freedesktop.DBus.Properties", "Get"), *reply = NULL;

        assert_true(sd_bus_message_append(m, "ss", iface, prop) >= 0);
        assert_int_equal(call(f, m, &reply, NULL), 0);
        assert_true(sd_bus_message_enter_container(reply, 'v', sig) > 0);
        return reply;
}

static char *get_string(Fixture *f, const char *path, const char *iface, const char *prop) {
        sd_bus_message *reply = get_property(f, path, iface, prop, "s");
        const char *s;
        char *r;

        assert_true(sd_bus_message_read(reply, "s", &s) > 0);
        r = strdup(s);
        sd_bus_message_unref(reply);
        return r;
}

static uint64_t get_u64(Fixture *f, const char *prop) {
        sd_bus_message *reply = get_property(f, BUS_PATH, BUS_CLUSTER_INTERFACE, prop, "t");
        uint64_t v;

        assert_true(sd_bus_message_read(reply, "t", &v) > 0);
        sd_bus_message_unref(reply);
        return v;
}

static bool get_bool(Fixture *f, const char *path, const char *iface, const char *prop) {
        sd_bus_message *reply = get_property(f, path, iface, prop, "b");
        int v;

        assert_true(sd_bus_message_read(reply, "b", &v) > 0);
        sd_bus_message_unref(reply);
        return v;
}

/* "as" property joined with spaces. */
static char *get_strv_joined(Fixture *f, const char *path, const char *iface, const char *prop) {
        sd_bus_message *reply = get_property(f, path, iface, prop, "as");
        char **l = NULL, *out;
        size_t len = 1;

        assert_true(sd_bus_message_read_strv(reply, &l) > 0);
        STRV_FOREACH(s, l)
                len += strlen(*s) + 1;
        out = calloc(len, 1);
        assert_non_null(out);
        STRV_FOREACH(s, l) {
                if (*out)
                        strcat(out, " ");
                strcat(out, *s);
        }
        strv_free(l);
        sd_bus_message_unref(reply);
        return out;
}

static void append_word(char **s, const char *w) {
        size_t n = *s ? strlen(*s) : 0;
        char *r = realloc(*s, n + strlen(w) + 2);

        assert_non_null(r);
        if (n > 0)
                r[n++] = ' ';
        strcpy(r + n, w);
        *s = r;
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        Fixture *f = userdata;
        Signal *s;
        const char *member = sd_bus_message_get_member(m);
        int r;

        assert_true(f->n_signals < MAX_SIGNALS);
        s = &f->signals[f->n_signals++];
        *s = (Signal) { .path = strdup(sd_bus_message_get_path(m)), .member = strdup(member),
                        .at_usec = now_usec() };

        if (streq(member, "PropertiesChanged")) {
                const char *iface, *name;

                assert_true(sd_bus_message_read(m, "s", &iface) > 0);
                s->interface = strdup(iface);
                assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") > 0);
                while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                        const char *contents;
                        char type;

                        assert_true(sd_bus_message_read(m, "s", &name) > 0);
                        append_word(&s->props, name);
                        assert_true(sd_bus_message_peek_type(m, &type, &contents) > 0);
                        if (streq(name, "RaftIndex")) {
                                assert_true(sd_bus_message_enter_container(m, 'v', "t") > 0);
                                assert_true(sd_bus_message_read(m, "t", &s->raft_index) > 0);
                                assert_true(sd_bus_message_exit_container(m) > 0);
                        } else
                                assert_true(sd_bus_message_skip(m, "v") >= 0);
                        assert_true(sd_bus_message_exit_container(m) > 0);
                }
                assert_true(r >= 0);
                assert_true(sd_bus_message_exit_container(m) > 0);
                /* invalidated ones count too */
                assert_true(sd_bus_message_enter_container(m, 'a', "s") > 0);
                while ((r = sd_bus_message_read(m, "s", &name)) > 0)
                        append_word(&s->props, name);
        } else if (streq(member, "LeaderChanged")) {
                const char *a, *b;

                s->interface = strdup(sd_bus_message_get_interface(m));
                assert_true(sd_bus_message_read(m, "ss", &a, &b) > 0);
                append_word(&s->props, *a ? a : "-");
                append_word(&s->props, *b ? b : "-");
        } else if (streq(member, "InterfacesAdded") || streq(member, "InterfacesRemoved")) {
                const char *path;

                s->interface = strdup(sd_bus_message_get_interface(m));
                assert_true(sd_bus_message_read(m, "o", &path) > 0);
                append_word(&s->props, path);
        } else
                s->interface = strdup(strempty(sd_bus_message_get_interface(m)));
        return 0;
}

/* Runs the loop until n signals arrived (or 5 s), then 20 ms more so that extra ones would be seen too. */
static void wait_signals(Fixture *f, size_t n) {
        uint64_t end = now_usec() + 5 * USEC_PER_SEC;

        while (f->n_signals < n && now_usec() < end)
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
        run_for(f, 20 * USEC_PER_MSEC);
}

static void clear_signals(Fixture *f) {
        for (size_t i = 0; i < f->n_signals; i++) {
                free(f->signals[i].path);
                free(f->signals[i].interface);
                free(f->signals[i].member);
                free(f->signals[i].props);
        }
        f->n_signals = 0;
}

/* The n-th signal with that member name on that path, or NULL. */
static const Signal *find_signal(Fixture *f, const char *path, const char *member, size_t nth) {
        for (size_t i = 0; i < f->n_signals; i++)
                if (streq(f->signals[i].path, path) && streq(f->signals[i].member, member) && nth-- == 0)
                        return &f->signals[i];
        return NULL;
}

static size_t count_signals(Fixture *f, const char *path, const char *member) {
        size_t n = 0;

        while (find_signal(f, path, member, n))
                n++;
        return n;
}

static char *member_path(uint64_t id) {
        char buf[17], *p = NULL;

        (void) snprintf(buf, sizeof(buf), "%" PRIx64, id);
        assert_true(sd_bus_path_encode(BUS_MEMBER_PREFIX, buf, &p) >= 0);
        return p;
}

/* ---- fixture ---- */

static void fixture_init_values(Fixture *f) {
        f->cluster_id = 0xcdf818194e3a8c32ULL;
        f->member_id = 0x8e9e05c52164694dULL;
        f->leader_id = 0x8e9e05c52164694dULL;
        f->term = 2;
        f->index = 10;
        f->etcd_index = 7;
        f->role = BUS_ROLE_LEADER;
        f->healthy = true;
        f->members[0] = (FakeMember) { 0x8e9e05c52164694dULL, "node1", { "http://127.0.0.1:2380" },
                                       { "http://127.0.0.1:2379" }, true };
        f->members[1] = (FakeMember) { 0x91bc3c398fb3c146ULL, "node2",
                                       { "http://127.0.0.1:12380", "http://127.0.0.2:12380" },
                                       { "http://127.0.0.1:12379" }, false };
        f->n_members = 2;
}

static int setup_common(void **state, bool with_ops) {
        Fixture *f = calloc(1, sizeof(Fixture));
        int fds[2];
        sd_id128_t id;
        BusOps ops = fake_ops_template;
        BusProvider p;

        assert_non_null(f);
        fixture_init_values(f);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds), 0);

        assert_int_equal(sd_bus_new(&f->server), 0);
        assert_int_equal(sd_bus_set_fd(f->server, fds[0], fds[0]), 0);
        assert_int_equal(sd_id128_randomize(&id), 0);
        assert_int_equal(sd_bus_set_server(f->server, 1, id), 0);
        assert_int_equal(sd_bus_set_anonymous(f->server, 1), 0);
        assert_int_equal(sd_bus_start(f->server), 0);

        assert_int_equal(sd_bus_new(&f->client), 0);
        assert_int_equal(sd_bus_set_fd(f->client, fds[1], fds[1]), 0);
        assert_int_equal(sd_bus_set_anonymous(f->client, 1), 0);
        assert_int_equal(sd_bus_start(f->client), 0);
        assert_int_equal(sd_bus_attach_event(f->client, f->event, 0), 0);

        assert_true(sd_bus_add_match(f->client, &f->match, "type='signal'", on_signal, f) >= 0);

        p = fake_provider(f);
        ops.userdata = f;
        assert_int_equal(bus_new_with_bus(f->event, f->server, "node1", &p, with_ops ? &ops : NULL,
                                          &f->bus), 0);
        assert_true(bus_is_enabled(f->bus));
        assert_false(bus_has_name(f->bus)); /* no bus driver on a socketpair */
        /* Finish the authentication handshake before the tests look at timings. */
        assert_int_equal(call(f, new_call(f, BUS_PATH, "org.freedesktop.DBus.Peer", "Ping"), NULL, NULL), 0);
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_common(state, true);
}

static int setup_no_ops(void **state) {
        return setup_common(state, false);
}

static int teardown(void **state) {
        Fixture *f = *state;

        if (f->pending)
                sd_bus_message_unref(f->pending);
        f->bus = bus_free(f->bus);
        sd_bus_slot_unref(f->match);
        sd_bus_flush_close_unref(f->client);
        sd_bus_flush_close_unref(f->server);
        sd_event_unref(f->event);
        clear_signals(f);
        strv_free(f->added);
        free(f->backup_path);
        free(f);
        return 0;
}

/* ---- tests ---- */

static void assert_string_prop(Fixture *f, const char *path, const char *iface, const char *prop,
                               const char *want) {
        char *s = get_string(f, path, iface, prop);

        assert_string_equal(s, want);
        free(s);
}

static void assert_strv_prop(Fixture *f, const char *path, const char *iface, const char *prop,
                             const char *want) {
        char *s = get_strv_joined(f, path, iface, prop);

        assert_string_equal(s, want);
        free(s);
}

static void test_cluster_properties(void **state) {
        Fixture *f = *state;

        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "ClusterID", "cdf818194e3a8c32");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "LeaderID", "8e9e05c52164694d");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "MemberID", "8e9e05c52164694d");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Name", "node1");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "State", "StateLeader");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Version", "2.3.8");
        assert_strv_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Members", "8e9e05c52164694d 91bc3c398fb3c146");
        assert_int_equal(get_u64(f, "RaftTerm"), 2);
        assert_int_equal(get_u64(f, "RaftIndex"), 10);
        assert_int_equal(get_u64(f, "EtcdIndex"), 7);
        assert_true(get_bool(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Healthy"));

        /* Getters read the provider live. */
        f->role = BUS_ROLE_CANDIDATE;
        f->leader_id = 0;
        f->healthy = false;
        f->index = 1ULL << 40;
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "State", "StateCandidate");
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "LeaderID", "");
        assert_false(get_bool(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Healthy"));
        assert_int_equal(get_u64(f, "RaftIndex"), 1ULL << 40);
        f->role = BUS_ROLE_FOLLOWER;
        assert_string_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "State", "StateFollower");
}

static void test_member_objects(void **state) {
        Fixture *f = *state;
        _cleanup_(freep) char *p1 = member_path(0x8e9e05c52164694dULL);
        _cleanup_(freep) char *p2 = member_path(0x91bc3c398fb3c146ULL);
        _cleanup_(freep) char *p3 = member_path(0x1234);
        sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        const char *xml;

        /* A leading digit is escaped by sd_bus_path_encode(). */
        assert_string_equal(p1, "/io/etcd/etcd2/member/_38e9e05c52164694d");

        assert_string_prop(f, p1, BUS_MEMBER_INTERFACE, "ID", "8e9e05c52164694d");
        assert_string_prop(f, p1, BUS_MEMBER_INTERFACE, "Name", "node1");
        assert_strv_prop(f, p1, BUS_MEMBER_INTERFACE, "PeerURLs", "http://127.0.0.1:2380");
        assert_strv_prop(f, p1, BUS_MEMBER_INTERFACE, "ClientURLs", "http://127.0.0.1:2379");
        assert_true(get_bool(f, p1, BUS_MEMBER_INTERFACE, "IsLeader"));
        assert_true(get_bool(f, p1, BUS_MEMBER_INTERFACE, "Reachable"));
        assert_string_prop(f, p2, BUS_MEMBER_INTERFACE, "Name", "node2");
        assert_strv_prop(f, p2, BUS_MEMBER_INTERFACE, "PeerURLs",
                         "http://127.0.0.1:12380 http://127.0.0.2:12380");
        assert_false(get_bool(f, p2, BUS_MEMBER_INTERFACE, "IsLeader"));
        assert_false(get_bool(f, p2, BUS_MEMBER_INTERFACE, "Reachable"));

        /* Not a member: no object. */
        sd_bus_message *m = new_call(f, p3, "org.freedesktop.DBus.Properties", "Get");
        assert_true(sd_bus_message_append(m, "ss", BUS_MEMBER_INTERFACE, "ID") >= 0);
        assert_true(call(f, m, NULL, &e) < 0);
        assert_string_equal(e.name, SD_BUS_ERROR_UNKNOWN_OBJECT);

        /* Enumeration: the parent lists "member", which lists both members. */
        assert_int_equal(call(f, new_call(f, BUS_PATH, "org.freedesktop.DBus.Introspectable", "Introspect"),
                              &reply, NULL), 0);
        assert_true(sd_bus_message_read(reply, "s", &xml) > 0);
        assert_non_null(strstr(xml, "<node name=\"member\"/>"));
        assert_non_null(strstr(xml, "<interface name=\"io.etcd.etcd2.Cluster\">"));
        reply = sd_bus_message_unref(reply);

        assert_int_equal(call(f, new_call(f, BUS_MEMBER_PREFIX, "org.freedesktop.DBus.Introspectable",
                                          "Introspect"), &reply, NULL), 0);
        assert_true(sd_bus_message_read(reply, "s", &xml) > 0);
        assert_non_null(strstr(xml, "<node name=\"_38e9e05c52164694d\"/>"));
        assert_non_null(strstr(xml, "<node name=\"_391bc3c398fb3c146\"/>"));
        assert_null(strstr(xml, "1234"));
        reply = sd_bus_message_unref(reply);

        /* After a member leaves, its object is gone from the tree. */
        f->n_members = 1;
        assert_int_equal(call(f, new_call(f, BUS_MEMBER_PREFIX, "org.freedesktop.DBus.Introspectable",
                                          "Introspect"), &reply, NULL), 0);
        assert_true(sd_bus_message_read(reply, "s", &xml) > 0);
        assert_non_null(strstr(xml, "<node name=\"_38e9e05c52164694d\"/>"));
        assert_null(strstr(xml, "_391bc3c398fb3c146"));
        reply = sd_bus_message_unref(reply);
}

static void test_properties_changed(void **state) {
        Fixture *f = *state;
        const Signal *s;
        uint64_t t0;

        /* Nothing changed: nothing sent. */
        run_for(f, 150 * USEC_PER_MSEC);
        bus_notify_changed(f->bus);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_int_equal(f->n_signals, 0);

        /* More than an interval after the last batch: sent at once, only what changed. */
        f->index = 11;
        f->etcd_index = 8;
        bus_notify_changed(f->bus);
        wait_signals(f, 1);
        assert_int_equal(count_signals(f, BUS_PATH, "PropertiesChanged"), 1);
        s = find_signal(f, BUS_PATH, "PropertiesChanged", 0);
        assert_string_equal(s->interface, BUS_CLUSTER_INTERFACE);
        assert_string_equal(s->props, "RaftIndex EtcdIndex");
        assert_int_equal(s->raft_index, 11);
        clear_signals(f);

        /* A storm right after it: one coalesced batch, an interval later, with the final values. */
        t0 = now_usec();
        for (int i = 0; i < 500; i++) {
                f->index++;
                f->etcd_index++;
                bus_notify_changed(f->bus);
        }
        f->term = 3;
        f->healthy = false;
        bus_notify_changed(f->bus);
        for (int i = 0; i < 5; i++)
                assert_true(sd_event_run(f->event, 0) >= 0);
        assert_int_equal(f->n_signals, 0);
        wait_signals(f, 1);
        assert_int_equal(count_signals(f, BUS_PATH, "PropertiesChanged"), 1);
        s = find_signal(f, BUS_PATH, "PropertiesChanged", 0);
        assert_string_equal(s->props, "RaftTerm RaftIndex EtcdIndex Healthy");
        assert_int_equal(s->raft_index, 511);
        assert_true(s->at_usec - t0 >= 60 * USEC_PER_MSEC);
        assert_int_equal(get_u64(f, "RaftIndex"), 511);
        clear_signals(f);

        /* Members' own properties. */
        run_for(f, 150 * USEC_PER_MSEC);
        f->members[1].reachable = true;
        f->members[1].client[1] = "http://127.0.0.1:22379";
        bus_notify_changed(f->bus);
        wait_signals(f, 1);
        {
                _cleanup_(freep) char *p2 = member_path(0x91bc3c398fb3c146ULL);

                assert_int_equal(f->n_signals, 1);
                s = find_signal(f, p2, "PropertiesChanged", 0);
                assert_non_null(s);
                assert_string_equal(s->interface, BUS_MEMBER_INTERFACE);
                assert_string_equal(s->props, "ClientURLs Reachable");
        }
}

static void test_leader_changed(void **state) {
        Fixture *f = *state;
        _cleanup_(freep) char *p1 = member_path(0x8e9e05c52164694dULL);
        _cleanup_(freep) char *p2 = member_path(0x91bc3c398fb3c146ULL);
        const Signal *s;
        uint64_t t0;

        /* An index change just now, so the next batch would be delayed... */
        f->index++;
        bus_notify_changed(f->bus);
        wait_signals(f, 1);
        clear_signals(f);

        /* ...but a leader change goes out at once. */
        f->leader_id = 0x91bc3c398fb3c146ULL;
        f->role = BUS_ROLE_FOLLOWER;
        f->term = 3;
        t0 = now_usec();
        bus_notify_changed(f->bus);
        wait_signals(f, 4);
        assert_int_equal(f->n_signals, 4);

        s = find_signal(f, BUS_PATH, "LeaderChanged", 0);
        assert_non_null(s);
        assert_true(s->at_usec - t0 < 60 * USEC_PER_MSEC); /* the rate limit would hold it ~80 ms */
        assert_string_equal(s->interface, BUS_CLUSTER_INTERFACE);
        assert_string_equal(s->props, "8e9e05c52164694d 91bc3c398fb3c146");
        s = find_signal(f, BUS_PATH, "PropertiesChanged", 0);
        assert_non_null(s);
        assert_string_equal(s->props, "LeaderID RaftTerm State");
        s = find_signal(f, p1, "PropertiesChanged", 0);
        assert_non_null(s);
        assert_string_equal(s->props, "IsLeader");
        s = find_signal(f, p2, "PropertiesChanged", 0);
        assert_non_null(s);
        assert_string_equal(s->props, "IsLeader");
        assert_true(get_bool(f, p2, BUS_MEMBER_INTERFACE, "IsLeader"));
        assert_false(get_bool(f, p1, BUS_MEMBER_INTERFACE, "IsLeader"));
        clear_signals(f);

        /* Leader lost: "" for none. */
        f->leader_id = 0;
        bus_notify_changed(f->bus);
        wait_signals(f, 3);
        s = find_signal(f, BUS_PATH, "LeaderChanged", 0);
        assert_non_null(s);
        assert_string_equal(s->props, "91bc3c398fb3c146 -");
        assert_int_equal(count_signals(f, BUS_PATH, "LeaderChanged"), 1);
}

static void test_membership_signals(void **state) {
        Fixture *f = *state;
        _cleanup_(freep) char *p2 = member_path(0x91bc3c398fb3c146ULL), *p3 = member_path(0xfeedULL);
        const Signal *s;

        run_for(f, 150 * USEC_PER_MSEC);
        f->members[1] = (FakeMember) { 0xfeedULL, "", { "http://127.0.0.1:32380" }, {}, false };
        bus_notify_changed(f->bus);
        wait_signals(f, 3);

        s = find_signal(f, BUS_PATH, "PropertiesChanged", 0);
        assert_non_null(s);
        assert_string_equal(s->props, "Members");
        s = find_signal(f, BUS_PATH, "InterfacesAdded", 0);
        assert_non_null(s);
        assert_string_equal(s->props, p3);
        s = find_signal(f, BUS_PATH, "InterfacesRemoved", 0);
        assert_non_null(s);
        assert_string_equal(s->props, p2);
        assert_strv_prop(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "Members", "8e9e05c52164694d feed");
}

/* Calls a method; returns the error name ("" on success) and leaves the message in *ret_message. */
static char *call_method(Fixture *f, const char *method, const char *sig, const void *arg,
                         char **ret_message, sd_bus_message **ret_reply) {
        sd_bus_message *m = new_call(f, BUS_PATH, BUS_CLUSTER_INTERFACE, method);
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        if (streq(sig, "as"))
                assert_true(sd_bus_message_append_strv(m, (char **) arg) >= 0);
        else
                assert_true(sd_bus_message_append(m, sig, arg) >= 0);
        r = call(f, m, ret_reply, &e);
        if (ret_message)
                *ret_message = r < 0 ? strdup(e.message) : NULL;
        if (r < 0) {
                /* SD_BUS_ERROR_MAP: names map back to errno in clients of this process. */
                if (streq(e.name, BUS_ERROR_MEMBER_EXISTS))
                        assert_int_equal(r, -EEXIST);
                else if (streq(e.name, BUS_ERROR_MEMBER_NOT_FOUND))
                        assert_int_equal(r, -ENOENT);
                else if (streq(e.name, BUS_ERROR_INVALID_ARGUMENT))
                        assert_int_equal(r, -EINVAL);
                else if (streq(e.name, BUS_ERROR_NOT_SUPPORTED))
                        assert_int_equal(r, -EOPNOTSUPP);
        }
        return strdup(r < 0 ? e.name : "");
}

static void assert_method(Fixture *f, const char *method, const char *sig, const void *arg,
                          const char *want_error, const char *want_message_part) {
        char *msg = NULL, *name = call_method(f, method, sig, arg, &msg, NULL);

        assert_string_equal(name, want_error);
        if (want_message_part) {
                assert_non_null(msg);
                if (!strstr(msg, want_message_part))
                        fail_msg("message '%s' lacks '%s'", msg, want_message_part);
        }
        free(name);
        free(msg);
}

static void test_methods(void **state) {
        Fixture *f = *state;
        char *ok_urls[] = { "http://127.0.0.1:42380", "http://127.0.0.1:42381", NULL };
        char *bad_urls[] = { "http://127.0.0.1:42380", "ftp://x:1", NULL };
        char *used_urls[] = { "http://127.0.0.2:12380", NULL };
        char *no_urls[] = { NULL };
        sd_bus_message *reply = NULL;
        const char *id;
        char *name;

        name = call_method(f, "AddMember", "as", ok_urls, NULL, &reply);
        assert_string_equal(name, "");
        free(name);
        assert_true(sd_bus_message_read(reply, "s", &id) > 0);
        assert_string_equal(id, "abcdef12345");
        sd_bus_message_unref(reply);
        assert_int_equal(strv_length(f->added), 2);
        assert_string_equal(f->added[1], "http://127.0.0.1:42381");

        assert_method(f, "AddMember", "as", bad_urls, BUS_ERROR_INVALID_ARGUMENT, "ftp://x:1");
        assert_method(f, "AddMember", "as", no_urls, BUS_ERROR_INVALID_ARGUMENT, "No peer URLs");
        assert_method(f, "AddMember", "as", used_urls, BUS_ERROR_MEMBER_EXISTS, "91bc3c398fb3c146");

        assert_method(f, "RemoveMember", "s", "91bc3c398fb3c146", "", NULL);
        assert_int_equal(f->removed, 0x91bc3c398fb3c146ULL);
        assert_method(f, "RemoveMember", "s", "1234", BUS_ERROR_MEMBER_NOT_FOUND, "1234");
        assert_method(f, "RemoveMember", "s", "xyz", BUS_ERROR_INVALID_ARGUMENT, "xyz");
        assert_method(f, "RemoveMember", "s", "", BUS_ERROR_INVALID_ARGUMENT, NULL);
        assert_method(f, "RemoveMember", "s", "11112222333344445", BUS_ERROR_INVALID_ARGUMENT, NULL);

        assert_method(f, "Backup", "s", "/var/backups/etcd2", "", NULL);
        assert_string_equal(f->backup_path, "/var/backups/etcd2");
        assert_method(f, "Backup", "s", "relative/dir", BUS_ERROR_INVALID_ARGUMENT, "not absolute");

        /* Errors from the ops: errno -> name, the op's message kept, else a default one. */
        f->op_result = -EIO;
        assert_method(f, "Backup", "s", "/x", BUS_ERROR_FAILED, "Disk on fire while writing /x.");
        f->op_result = -EOPNOTSUPP;
        assert_method(f, "Backup", "s", "/x", BUS_ERROR_NOT_SUPPORTED, "not supported");
        f->op_result = -EEXIST;
        assert_method(f, "AddMember", "as", ok_urls, BUS_ERROR_MEMBER_EXISTS, "AddMember");
        f->op_result = -ETIMEDOUT;
        assert_method(f, "RemoveMember", "s", "8e9e05c52164694d", BUS_ERROR_FAILED, "timed out");
}

static void test_method_async(void **state) {
        Fixture *f = *state;
        char *urls[] = { "http://127.0.0.1:42380", NULL };
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        sd_bus_message *m = new_call(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "AddMember");
        CallState st = {};
        const char *id;

        /* The op keeps the message and answers once "the configuration change committed". */
        f->op_async = true;
        assert_true(sd_bus_message_append_strv(m, urls) >= 0);
        assert_true(sd_bus_call_async(f->client, &slot, m, on_reply, &st, 5 * USEC_PER_SEC) >= 0);
        sd_bus_message_unref(m);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_false(st.done);
        assert_non_null(f->pending);

        assert_true(bus_reply_method(f->pending, 0, 0x42, NULL) >= 0);
        f->pending = sd_bus_message_unref(f->pending);
        wait_done(f, &st);
        assert_true(st.done);
        assert_null(sd_bus_message_get_error(st.reply));
        assert_true(sd_bus_message_read(st.reply, "s", &id) > 0);
        assert_string_equal(id, "42");
        st.reply = sd_bus_message_unref(st.reply);

        /* And a late failure. */
        slot = sd_bus_slot_unref(slot);
        st = (CallState) {};
        m = new_call(f, BUS_PATH, BUS_CLUSTER_INTERFACE, "AddMember");
        assert_true(sd_bus_message_append_strv(m, urls) >= 0);
        assert_true(sd_bus_call_async(f->client, &slot, m, on_reply, &st, 5 * USEC_PER_SEC) >= 0);
        sd_bus_message_unref(m);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_non_null(f->pending);
        assert_true(bus_reply_method(f->pending, -ETIMEDOUT, 0, "etcdserver: request timed out") >= 0);
        f->pending = sd_bus_message_unref(f->pending);
        wait_done(f, &st);
        assert_true(st.done);
        assert_non_null(sd_bus_message_get_error(st.reply));
        assert_string_equal(sd_bus_message_get_error(st.reply)->name, BUS_ERROR_FAILED);
        assert_string_equal(sd_bus_message_get_error(st.reply)->message, "etcdserver: request timed out");
        st.reply = sd_bus_message_unref(st.reply);
}

static void test_methods_without_ops(void **state) {
        Fixture *f = *state;
        char *urls[] = { "http://127.0.0.1:42380", NULL };

        assert_method(f, "AddMember", "as", urls, BUS_ERROR_NOT_SUPPORTED, "not supported");
        assert_method(f, "RemoveMember", "s", "91bc3c398fb3c146", BUS_ERROR_NOT_SUPPORTED, "not supported");
        assert_method(f, "Backup", "s", "/x", BUS_ERROR_NOT_SUPPORTED, "not supported");
        /* Validation still comes first. */
        assert_method(f, "RemoveMember", "s", "1234", BUS_ERROR_MEMBER_NOT_FOUND, NULL);
}

/* Extracts <interface name="NAME">...</interface> from an introspection text. GCC 12 at -O3 takes `a` and `b`
 * (pointers into xml) for pointers into on_capture()'s stack buffer: a false -Wdangling-pointer. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
static char *extract_interface(const char *xml, const char *name) {
        char start[256];
        const char *a, *b;

        (void) snprintf(start, sizeof(start), " <interface name=\"%s\">", name);
        a = strstr(xml, start);
        if (!a)
                return NULL;
        b = strstr(a, "</interface>");
        assert_non_null(b);
        return strndup(a + 1, b + strlen("</interface>") - (a + 1));
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

static char *read_file(const char *path) {
        FILE *fp = fopen(path, "re");
        char *buf = NULL;
        size_t n = 0;

        assert_non_null(fp);
        assert_true(getdelim(&buf, &n, '\0', fp) > 0);
        fclose(fp);
        return buf;
}

/* dbus/io.etcd.etcd2.xml must be what sd-bus serves (the interface blocks, byte for byte). */
static void test_introspection_xml(void **state) {
        Fixture *f = *state;
        _cleanup_(freep) char *file = read_file(BUS_XML_PATH), *p1 = member_path(0x8e9e05c52164694dULL);
        const char *ifaces[] = { BUS_CLUSTER_INTERFACE, BUS_MEMBER_INTERFACE };
        const char *paths[] = { BUS_PATH, p1 };

        for (size_t i = 0; i < ELEMENTSOF(ifaces); i++) {
                sd_bus_message *reply = NULL;
                const char *xml;
                char *served, *shipped;

                assert_int_equal(call(f, new_call(f, paths[i], "org.freedesktop.DBus.Introspectable",
                                                  "Introspect"), &reply, NULL), 0);
                assert_true(sd_bus_message_read(reply, "s", &xml) > 0);
                served = extract_interface(xml, ifaces[i]);
                if (getenv("BUS_XML_DUMP")) {
                        /* Regenerating the shipped file:
                         * BUS_XML_DUMP=/tmp/x TEST_FILTER=test_introspection_xml test-bus */
                        FILE *out = fopen(getenv("BUS_XML_DUMP"), i == 0 ? "we" : "ae");

                        assert_non_null(out);
                        fprintf(out, "%s\n", xml);
                        fclose(out);
                }
                shipped = extract_interface(file, ifaces[i]);
                assert_non_null(served);
                assert_non_null(shipped);
                assert_string_equal(shipped, served);
                free(served);
                free(shipped);
                sd_bus_message_unref(reply);
        }
}

/* No bus at all (CI): bus_new() succeeds with a disabled object that ignores notifications. */
static void test_no_bus(void **state) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Fixture fake = {};
        BusProvider p;
        Config c = { .name = (char *) "node1" };
        Bus *b = NULL;

        fixture_init_values(&fake);
        p = fake_provider(&fake);
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/etcd2-test/bus", 1), 0);
        assert_int_equal(bus_new(e, &c, &p, NULL, &b), 0);
        assert_non_null(b);
        assert_false(bus_is_enabled(b));
        bus_notify_changed(b);
        assert_false(bus_has_name(b));
        b = bus_free(b);

        c.bus_address = (char *) "unix:path=/nonexistent/etcd2-test/other";
        assert_int_equal(bus_new(e, &c, &p, NULL, &b), 0);
        assert_false(bus_is_enabled(b));
        b = bus_free(b);
        assert_int_equal(unsetenv("DBUS_SYSTEM_BUS_ADDRESS"), 0);
        bus_notify_changed(NULL);
        assert_null(bus_free(NULL));
}

/* Runs argv with stdout captured while the loop keeps serving the bus. */
typedef struct Capture {
        char *out;
        size_t n;
        bool eof;
} Capture;

static int on_capture(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Capture *c = userdata;
        char buf[4096];
        ssize_t k = read(fd, buf, sizeof(buf));

        if (k <= 0) {
                c->eof = k == 0 || errno != EAGAIN;
                if (c->eof)
                        (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
                return 0;
        }
        c->out = realloc(c->out, c->n + k + 1);
        assert_non_null(c->out);
        memcpy(c->out + c->n, buf, k);
        c->n += k;
        c->out[c->n] = 0;
        return 0;
}

static char *run_capture(sd_event *e, char *const argv[]) {
        _cleanup_(sd_event_source_unrefp) sd_event_source *src = NULL;
        Capture c = {};
        int pipefd[2], status;
        uint64_t end = now_usec() + 10 * USEC_PER_SEC;
        pid_t pid;

        assert_int_equal(pipe2(pipefd, O_CLOEXEC | O_NONBLOCK), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                (void) dup2(pipefd[1], STDOUT_FILENO);
                (void) fcntl(STDOUT_FILENO, F_SETFL, 0);
                execvp(argv[0], argv);
                _exit(127);
        }
        close(pipefd[1]);
        assert_true(sd_event_add_io(e, &src, pipefd[0], EPOLLIN, on_capture, &c) >= 0);
        while (!c.eof && now_usec() < end)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_true(c.eof);
        close(pipefd[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        return c.out ?: strdup("");
}

typedef struct DaemonFixture {
        char *address;
        long pid;
} DaemonFixture;

static int daemon_setup(void **state) {
        DaemonFixture *d = calloc(1, sizeof(DaemonFixture));
        char line[512];
        FILE *fp;

        assert_non_null(d);
        *state = d;
        if (access("/usr/bin/dbus-daemon", X_OK) < 0 || access("/usr/bin/busctl", X_OK) < 0)
                return 0; /* the test skips */
        fp = popen("dbus-daemon --session --fork --print-address=1 --print-pid=1", "re");
        if (!fp)
                return -1;
        if (fgets(line, sizeof(line), fp)) {
                line[strcspn(line, "\n")] = 0;
                d->address = strdup(line);
        }
        if (fgets(line, sizeof(line), fp))
                d->pid = strtol(line, NULL, 10);
        (void) pclose(fp);
        return d->address && d->pid > 1 ? 0 : -1;
}

static int daemon_teardown(void **state) {
        DaemonFixture *d = *state;

        if (d->pid > 1)
                (void) kill((pid_t) d->pid, SIGTERM);
        free(d->address);
        free(d);
        return 0;
}

/* Against a private dbus-daemon: the name is taken and busctl sees the member objects. */
static void test_dbus_daemon(void **state) {
        DaemonFixture *d = *state;
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(freep) char *tree = NULL, *xml = NULL, *file = NULL, *address = NULL, *arg = NULL;
        Fixture fake = {};
        BusProvider p;
        Config c = { .name = (char *) "node1" };
        Bus *b = NULL;
        uint64_t end;

        if (!d->address)
                skip();
        address = strdup(d->address);
        assert_non_null(address);

        fixture_init_values(&fake);
        p = fake_provider(&fake);
        c.bus_address = address;
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(bus_new(e, &c, &p, NULL, &b), 0);
        assert_true(bus_is_enabled(b));
        end = now_usec() + 5 * USEC_PER_SEC;
        while (!bus_has_name(b) && now_usec() < end)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_true(bus_has_name(b));

        assert_true(asprintf(&arg, "--address=%s", address) > 0);
        tree = run_capture(e, (char *const[]) { "busctl", arg, "--list", "tree", BUS_NAME, NULL });
        assert_non_null(strstr(tree, "/io/etcd/etcd2\n"));
        assert_non_null(strstr(tree, "/io/etcd/etcd2/member/_38e9e05c52164694d\n"));
        assert_non_null(strstr(tree, "/io/etcd/etcd2/member/_391bc3c398fb3c146\n"));

        xml = run_capture(e, (char *const[]) { "busctl", arg, "introspect", "--xml-interface", BUS_NAME,
                                               BUS_PATH, NULL });
        file = read_file(BUS_XML_PATH);
        {
                _cleanup_(freep) char *served = extract_interface(xml, BUS_CLUSTER_INTERFACE);
                _cleanup_(freep) char *shipped = extract_interface(file, BUS_CLUSTER_INTERFACE);

                assert_non_null(served);
                assert_non_null(shipped);
                assert_string_equal(served, shipped);
        }

        b = bus_free(b);
}

/* ---- journald structured logging (log.c), in a child with a private /run and a fake journal socket ---- */

static char journal_buf[65536];

/* Reads one datagram from the fake journal socket into journal_buf; 0 if none. */
static ssize_t journal_recv(int sock) {
        ssize_t n = recv(sock, journal_buf, sizeof(journal_buf) - 1, MSG_DONTWAIT);

        if (n < 0)
                return errno == EAGAIN ? 0 : -1;
        journal_buf[n] = 0;
        return n;
}

/* The captured stderr so far (NUL-terminated, static), then cleared. */
static const char *stderr_take(int fd) {
        static char buf[8192];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

        buf[n < 0 ? 0 : n] = 0;
        (void) ftruncate(fd, 0);
        (void) lseek(fd, 0, SEEK_SET);
        return buf;
}

/* Returns 0 if everything held, 77 if namespaces are not available, else the number of the failed check. */
static int log_child(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = "/run/systemd/journal/socket" };
        char env[64];
        struct stat st;
        int sock, err, r;

        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
            mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") < 0)
                return 77;
        if (mkdir("/run/systemd", 0755) < 0 || mkdir("/run/systemd/journal", 0755) < 0)
                return 2;
        sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (sock < 0 || bind(sock, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return 3;
        err = memfd_create("stderr", MFD_CLOEXEC);
        if (err < 0 || dup2(err, STDERR_FILENO) < 0)
                return 4;
        setvbuf(stderr, NULL, _IONBF, 0);
        log_set_prefix(true);
        log_set_max_level(LOG_INFO);

        /* No JOURNAL_STREAM: the plain line on stderr only. */
        (void) unsetenv("JOURNAL_STREAM");
        log_set_journal(-1);
        log_struct(LOG_WARNING, LOG_FIELDS("ETCD_MEMBER_ID=abc"), "hello %d", 1);
        if (!streq(stderr_take(err), "<4>etcd2: hello 1\n"))
                return 10;
        if (journal_recv(sock) != 0)
                return 11;

        /* JOURNAL_STREAM names another stream: still stderr. */
        (void) setenv("JOURNAL_STREAM", "1:2", 1);
        log_set_journal(-1);
        log_struct(LOG_WARNING, LOG_FIELDS("ETCD_MEMBER_ID=abc"), "hello %d", 2);
        if (!streq(stderr_take(err), "<4>etcd2: hello 2\n") || journal_recv(sock) != 0)
                return 12;

        /* JOURNAL_STREAM is our stderr: the journal only, with every field. */
        if (fstat(STDERR_FILENO, &st) < 0)
                return 5;
        (void) snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long) st.st_dev,
                        (unsigned long long) st.st_ino);
        (void) setenv("JOURNAL_STREAM", env, 1);
        log_set_journal(-1);
        r = log_struct_errno(LOG_ERR, -ENOENT, LOG_FIELDS("ETCD_MEMBER_ID=8e9e05c52164694d", "ETCD_TERM=3"),
                             "Failed to open '%s': %m", "x");
        if (r != -ENOENT)
                return 20;
        if (*stderr_take(err) != 0)
                return 21;
        if (journal_recv(sock) <= 0)
                return 22;
        if (!strstr(journal_buf, "PRIORITY=3\n") ||
            !strstr(journal_buf, "MESSAGE=Failed to open 'x': No such file or directory\n") ||
            !strstr(journal_buf, "SYSLOG_IDENTIFIER=etcd2\n") ||
            !strstr(journal_buf, "CODE_FUNC=log_child\n") ||
            !strstr(journal_buf, "test-bus.c\n") || !strstr(journal_buf, "CODE_LINE=") ||
            !strstr(journal_buf, "ERRNO=2\n") ||
            !strstr(journal_buf, "ETCD_MEMBER_ID=8e9e05c52164694d\n") ||
            !strstr(journal_buf, "ETCD_TERM=3\n"))
                return 23;
        /* Below the threshold: nowhere. */
        log_struct(LOG_DEBUG, LOG_FIELDS("ETCD_X=1"), "quiet");
        if (*stderr_take(err) != 0 || journal_recv(sock) != 0)
                return 24;
        /* log_internal(): stderr, even with journald, without repeating the identifier journald has. */
        log_warning("plain %s", "line");
        if (!streq(stderr_take(err), "<4>plain line\n") || journal_recv(sock) != 0)
                return 25;

        /* No journal socket: stderr rather than a silent loss. */
        (void) unlink(sa.sun_path);
        log_set_journal(-1);
        log_struct(LOG_NOTICE, LOG_FIELDS("ETCD_X=1"), "fallback");
        if (!streq(stderr_take(err), "<5>etcd2: fallback\n"))
                return 30;
        return 0;
}

static void test_log_struct_journal(void **state) {
        int status;
        pid_t pid;

        if (geteuid() != 0)
                skip();
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(log_child());
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) == 77)
                skip();
        assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_cluster_properties, setup, teardown),
                cmocka_unit_test_setup_teardown(test_member_objects, setup, teardown),
                cmocka_unit_test_setup_teardown(test_properties_changed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_leader_changed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_membership_signals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_methods, setup, teardown),
                cmocka_unit_test_setup_teardown(test_method_async, setup, teardown),
                cmocka_unit_test_setup_teardown(test_methods_without_ops, setup_no_ops, teardown),
                cmocka_unit_test_setup_teardown(test_introspection_xml, setup, teardown),
                cmocka_unit_test(test_no_bus),
                cmocka_unit_test_setup_teardown(test_dbus_daemon, daemon_setup, daemon_teardown),
                cmocka_unit_test(test_log_struct_journal),
        };

        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        if (getenv("TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        return cmocka_run_group_tests_name("bus", tests, NULL, NULL);
}
