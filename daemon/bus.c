/* SPDX-License-Identifier: Apache-2.0 */
/* bus.c - io.etcd.etcd2 on D-Bus: Cluster properties/methods/signals and per-member objects. */

/*
 * Role: a read-mostly window on the member for busctl, monitoring and systemd (BusName=). All data is
 * pulled from the BusProvider when a client asks, so getters are never stale; signals are pushed only
 * when the manager calls bus_notify_changed(). That function compares the provider's current values with
 * `sent`, the values last announced, so a client that follows PropertiesChanged always ends up with what
 * a Get would return, even though a write storm coalesces into at most one batch per
 * BUS_NOTIFY_INTERVAL_USEC. Leader changes are not delayed: LeaderChanged goes out at once (with the
 * batch of everything else that changed), since that is what operators watch for.
 *
 * Invariants: the Bus owns every slot it registers, so bus_free() leaves a borrowed sd_bus (tests) with
 * no callback into freed memory. With `bus == NULL` the object is disabled and every entry point is a
 * no-op; bus_new() never fails because D-Bus is missing.
 */

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "bus.h"
#include "config-build.h"
#include "log.h"

/* The values last announced with signals. */
typedef struct BusState {
        uint64_t cluster_id;
        uint64_t leader_id;
        uint64_t raft_term;
        uint64_t raft_index;
        uint64_t etcd_index;
        BusRole role;
        bool healthy;
        BusMember *members;
        size_t n_members;
} BusState;

struct Bus {
        sd_event *event;
        sd_bus *bus;                    /* NULL: disabled */
        char *name;                     /* the local member name */
        BusProvider provider;
        BusOps ops;
        bool has_ops;
        bool owns_bus;                  /* bus_new() connected it: close it on free */

        sd_bus_slot *cluster_slot;
        sd_bus_slot *member_slot;
        sd_bus_slot *enumerator_slot;
        sd_bus_slot *object_manager_slot;
        sd_bus_slot *name_slot;
        bool has_name;

        sd_event_source *notify_timer;  /* pending coalesced batch */
        uint64_t last_emit_usec;
        BusState sent;
};

static const sd_bus_error_map bus_error_map[] = {
        SD_BUS_ERROR_MAP(BUS_ERROR_NOT_SUPPORTED, EOPNOTSUPP),
        SD_BUS_ERROR_MAP(BUS_ERROR_MEMBER_NOT_FOUND, ENOENT),
        SD_BUS_ERROR_MAP(BUS_ERROR_MEMBER_EXISTS, EEXIST),
        SD_BUS_ERROR_MAP(BUS_ERROR_INVALID_ARGUMENT, EINVAL),
        SD_BUS_ERROR_MAP(BUS_ERROR_FAILED, EIO),
        SD_BUS_ERROR_MAP_END
};

static const char *const bus_role_table[_BUS_ROLE_MAX] = {
        [BUS_ROLE_FOLLOWER] = "StateFollower",
        [BUS_ROLE_CANDIDATE] = "StateCandidate",
        [BUS_ROLE_LEADER] = "StateLeader",
        [BUS_ROLE_PROXY] = "StateProxy",
};

const char *bus_role_to_string(BusRole r) {
        if (r < 0 || r >= _BUS_ROLE_MAX)
                return NULL;
        return bus_role_table[r];
}

void bus_member_list_free(BusMember *members, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(members[i].name);
                strv_free(members[i].peer_urls);
                strv_free(members[i].client_urls);
        }
        free(members);
}

/* IDs are printed as etcd prints types.ID: lowercase hex without padding. */
#define ID_STRING_MAX 17
static const char *id_to_string(uint64_t id, char buf[static ID_STRING_MAX]) {
        (void) snprintf(buf, ID_STRING_MAX, "%" PRIx64, id);
        return buf;
}

/* LeaderID and LeaderChanged use "" for "no leader" rather than "0". */
static const char *leader_to_string(uint64_t id, char buf[static ID_STRING_MAX]) {
        if (id == 0)
                return "";
        return id_to_string(id, buf);
}

static int id_from_string(const char *s, uint64_t *ret) {
        uint64_t v = 0;
        size_t n = 0;

        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++, n++) {
                int d;

                if (*p >= '0' && *p <= '9')
                        d = *p - '0';
                else if (*p >= 'a' && *p <= 'f')
                        d = *p - 'a' + 10;
                else if (*p >= 'A' && *p <= 'F')
                        d = *p - 'A' + 10;
                else
                        return -EINVAL;
                if (n >= 16)
                        return -ERANGE;
                v = (v << 4) | (uint64_t) d;
        }
        if (v == 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

static const char *error_name_from_errno(int r) {
        switch (abs(r)) {
        case EOPNOTSUPP:
                return BUS_ERROR_NOT_SUPPORTED;
        case ENOENT:
        case ENXIO:
                return BUS_ERROR_MEMBER_NOT_FOUND;
        case EEXIST:
                return BUS_ERROR_MEMBER_EXISTS;
        case EINVAL:
        case ERANGE:
                return BUS_ERROR_INVALID_ARGUMENT;
        default:
                return BUS_ERROR_FAILED;
        }
}

int bus_error_setf(sd_bus_error *error, int r, const char *format, ...) {
        va_list ap;

        assert(r < 0);
        va_start(ap, format);
        (void) sd_bus_error_setfv(error, error_name_from_errno(r), format, ap);
        va_end(ap);
        return r;
}

static int bus_error_set_default(sd_bus_error *error, int r, const char *what) {
        if (sd_bus_error_is_set(error))
                return r;
        switch (abs(r)) {
        case EOPNOTSUPP:
                return bus_error_setf(error, r, "%s is not supported by this etcd2.", what);
        default:
                return bus_error_setf(error, r, "%s failed: %s", what, strerror(abs(r)));
        }
}

int bus_reply_method(sd_bus_message *m, int r, uint64_t id, const char *message) {
        const char *member = sd_bus_message_get_member(m);

        if (r < 0) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                if (message)
                        (void) bus_error_setf(&error, r, "%s", message);
                else
                        (void) bus_error_set_default(&error, r, strempty(member));
                return sd_bus_reply_method_error(m, &error);
        }
        if (member && streq(member, "AddMember")) {
                char buf[ID_STRING_MAX];

                return sd_bus_reply_method_return(m, "s", id_to_string(id, buf));
        }
        return sd_bus_reply_method_return(m, NULL);
}

static int bus_members(Bus *b, BusMember **ret, size_t *ret_n) {
        int r;

        r = b->provider.members(b->provider.userdata, ret, ret_n);
        if (r < 0)
                return r;
        if (*ret_n > 0 && !*ret)
                return -EINVAL;
        return 0;
}

static const BusMember *member_find(const BusMember *members, size_t n, uint64_t id) {
        for (size_t i = 0; i < n; i++)
                if (members[i].id == id)
                        return &members[i];
        return NULL;
}

static void bus_state_done(BusState *s) {
        bus_member_list_free(s->members, s->n_members);
        s->members = NULL;
        s->n_members = 0;
}

static int bus_state_read(Bus *b, BusState *ret) {
        const BusProvider *p = &b->provider;
        BusState s = {
                .cluster_id = p->cluster_id(p->userdata),
                .leader_id = p->leader_id(p->userdata),
                .raft_term = p->raft_term(p->userdata),
                .raft_index = p->raft_index(p->userdata),
                .etcd_index = p->etcd_index(p->userdata),
                .role = p->role(p->userdata),
                .healthy = p->healthy(p->userdata),
        };
        int r;

        r = bus_members(b, &s.members, &s.n_members);
        if (r < 0)
                return r;
        *ret = s;
        return 0;
}

/* ---- io.etcd.etcd2.Cluster ---- */

static int append_member_ids(sd_bus_message *reply, const BusMember *members, size_t n) {
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                char buf[ID_STRING_MAX];

                r = sd_bus_message_append(reply, "s", id_to_string(members[i].id, buf));
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int cluster_property_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const BusProvider *p = &b->provider;
        void *u = p->userdata;
        char buf[ID_STRING_MAX];

        if (streq(property, "ClusterID"))
                return sd_bus_message_append(reply, "s", id_to_string(p->cluster_id(u), buf));
        if (streq(property, "LeaderID"))
                return sd_bus_message_append(reply, "s", leader_to_string(p->leader_id(u), buf));
        if (streq(property, "MemberID"))
                return sd_bus_message_append(reply, "s", id_to_string(p->member_id(u), buf));
        if (streq(property, "Name"))
                return sd_bus_message_append(reply, "s", strempty(b->name));
        if (streq(property, "RaftTerm"))
                return sd_bus_message_append(reply, "t", p->raft_term(u));
        if (streq(property, "RaftIndex"))
                return sd_bus_message_append(reply, "t", p->raft_index(u));
        if (streq(property, "EtcdIndex"))
                return sd_bus_message_append(reply, "t", p->etcd_index(u));
        if (streq(property, "State"))
                return sd_bus_message_append(reply, "s", strempty(bus_role_to_string(p->role(u))));
        if (streq(property, "Healthy"))
                return sd_bus_message_append(reply, "b", (int) p->healthy(u));
        if (streq(property, "Version"))
                return sd_bus_message_append(reply, "s", ETCD2_VERSION);
        if (streq(property, "Members")) {
                BusMember *members = NULL;
                size_t n = 0;
                int r;

                r = bus_members(b, &members, &n);
                if (r < 0)
                        return sd_bus_error_set_errnof(error, r, "Failed to list members: %m");
                r = append_member_ids(reply, members, n);
                bus_member_list_free(members, n);
                return r;
        }
        return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "Unknown property %s.", property);
}

static int method_add_member(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        _cleanup_(strv_freep) char **urls = NULL;
        BusMember *members = NULL;
        size_t n = 0;
        uint64_t id = 0;
        int r;

        r = sd_bus_message_read_strv(m, &urls);
        if (r < 0)
                return r;
        if (strv_length(urls) == 0)
                return bus_error_setf(error, -EINVAL, "No peer URLs given.");
        STRV_FOREACH(u, urls) {
                _cleanup_(freep) char *msg = NULL;
                EtcdUrl url = {};

                r = etcd_url_parse(*u, &url, &msg);
                if (r < 0)
                        return bus_error_setf(error, -EINVAL, "Invalid peer URL '%s': %s", *u,
                                              msg ?: strerror(-r));
                etcd_url_done(&url);
        }

        /* etcd refuses a member whose peer URL another member already has (ErrPeerURLexists). */
        r = bus_members(b, &members, &n);
        if (r < 0)
                return bus_error_setf(error, r, "Failed to list members: %s", strerror(-r));
        for (size_t i = 0; i < n; i++)
                STRV_FOREACH(u, urls)
                        STRV_FOREACH(have, members[i].peer_urls)
                                if (streq(*u, *have)) {
                                        char buf[ID_STRING_MAX];

                                        r = bus_error_setf(error, -EEXIST,
                                                           "Peer URL %s is already used by member %s.", *u,
                                                           id_to_string(members[i].id, buf));
                                        bus_member_list_free(members, n);
                                        return r;
                                }
        bus_member_list_free(members, n);

        if (!b->has_ops || !b->ops.add_member)
                return bus_error_setf(error, -EOPNOTSUPP, "Adding members is not supported by this etcd2.");
        r = b->ops.add_member(b->ops.userdata, m, urls, &id, error);
        if (r < 0)
                return bus_error_set_default(error, r, "AddMember");
        if (r > 0)
                return 1; /* the op replies later */
        return bus_reply_method(m, 0, id, NULL);
}

static int method_remove_member(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        BusMember *members = NULL;
        const char *s;
        size_t n = 0;
        uint64_t id;
        bool found;
        int r;

        r = sd_bus_message_read(m, "s", &s);
        if (r < 0)
                return r;
        if (id_from_string(s, &id) < 0)
                return bus_error_setf(error, -EINVAL,
                                      "Invalid member ID '%s': expected up to 16 hex digits.", s);

        r = bus_members(b, &members, &n);
        if (r < 0)
                return bus_error_setf(error, r, "Failed to list members: %s", strerror(-r));
        found = member_find(members, n, id);
        bus_member_list_free(members, n);
        if (!found)
                return bus_error_setf(error, -ENOENT, "Member %s not found in the cluster.", s);

        if (!b->has_ops || !b->ops.remove_member)
                return bus_error_setf(error, -EOPNOTSUPP,
                                      "Removing members is not supported by this etcd2.");
        r = b->ops.remove_member(b->ops.userdata, m, id, error);
        if (r < 0)
                return bus_error_set_default(error, r, "RemoveMember");
        if (r > 0)
                return 1;
        return bus_reply_method(m, 0, 0, NULL);
}

static int method_backup(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        const char *path;
        int r;

        r = sd_bus_message_read(m, "s", &path);
        if (r < 0)
                return r;
        if (isempty(path) || path[0] != '/')
                return bus_error_setf(error, -EINVAL, "Backup path '%s' is not absolute.", path);

        if (!b->has_ops || !b->ops.backup)
                return bus_error_setf(error, -EOPNOTSUPP, "Backup is not supported by this etcd2.");
        r = b->ops.backup(b->ops.userdata, m, path, error);
        if (r < 0)
                return bus_error_set_default(error, r, "Backup");
        if (r > 0)
                return 1;
        return bus_reply_method(m, 0, 0, NULL);
}

#define CLUSTER_PROPERTY(name, sig, flags) \
        SD_BUS_PROPERTY(name, sig, cluster_property_get, 0, flags)

static const sd_bus_vtable cluster_vtable[] = {
        SD_BUS_VTABLE_START(0),
        CLUSTER_PROPERTY("ClusterID", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("LeaderID", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("MemberID", "s", SD_BUS_VTABLE_PROPERTY_CONST),
        CLUSTER_PROPERTY("Name", "s", SD_BUS_VTABLE_PROPERTY_CONST),
        CLUSTER_PROPERTY("Members", "as", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("RaftTerm", "t", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("RaftIndex", "t", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("EtcdIndex", "t", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("State", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("Healthy", "b", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        CLUSTER_PROPERTY("Version", "s", SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("AddMember", SD_BUS_ARGS("as", peer_urls), SD_BUS_RESULT("s", id),
                                method_add_member, 0),
        SD_BUS_METHOD_WITH_ARGS("RemoveMember", SD_BUS_ARGS("s", id), SD_BUS_NO_RESULT,
                                method_remove_member, 0),
        SD_BUS_METHOD_WITH_ARGS("Backup", SD_BUS_ARGS("s", path), SD_BUS_NO_RESULT, method_backup, 0),
        SD_BUS_SIGNAL_WITH_ARGS("LeaderChanged", SD_BUS_ARGS("s", old_leader, "s", new_leader), 0),
        SD_BUS_VTABLE_END
};

/* ---- io.etcd.etcd2.Member, one object per member ---- */

static int member_id_from_path(const char *path, uint64_t *ret) {
        _cleanup_(freep) char *e = NULL;
        int r;

        r = sd_bus_path_decode(path, BUS_MEMBER_PREFIX, &e);
        if (r <= 0)
                return -ENOENT;
        if (id_from_string(e, ret) < 0)
                return -ENOENT;
        return 0;
}

static int member_path(uint64_t id, char **ret) {
        char buf[ID_STRING_MAX];

        return sd_bus_path_encode(BUS_MEMBER_PREFIX, id_to_string(id, buf), ret);
}

static int member_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                              void **found, sd_bus_error *error) {
        Bus *b = userdata;
        BusMember *members = NULL;
        size_t n = 0;
        uint64_t id;
        bool exists;
        int r;

        if (member_id_from_path(path, &id) < 0)
                return 0;
        r = bus_members(b, &members, &n);
        if (r < 0)
                return r;
        exists = member_find(members, n, id);
        bus_member_list_free(members, n);
        if (!exists)
                return 0;
        *found = b;
        return 1;
}

static int append_strv(sd_bus_message *reply, char **l) {
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        STRV_FOREACH(s, l) {
                r = sd_bus_message_append(reply, "s", *s);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int member_property_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Bus *b = userdata;
        BusMember *members = NULL;
        const BusMember *mb;
        size_t n = 0;
        uint64_t id;
        int r;

        if (member_id_from_path(path, &id) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_OBJECT, "No member at %s.", path);
        r = bus_members(b, &members, &n);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to list members: %m");
        mb = member_find(members, n, id);
        if (!mb)
                r = sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_OBJECT, "Member %" PRIx64 " is gone.", id);
        else if (streq(property, "ID")) {
                char buf[ID_STRING_MAX];

                r = sd_bus_message_append(reply, "s", id_to_string(mb->id, buf));
        } else if (streq(property, "Name"))
                r = sd_bus_message_append(reply, "s", strempty(mb->name));
        else if (streq(property, "PeerURLs"))
                r = append_strv(reply, mb->peer_urls);
        else if (streq(property, "ClientURLs"))
                r = append_strv(reply, mb->client_urls);
        else if (streq(property, "IsLeader"))
                r = sd_bus_message_append(reply, "b",
                                          (int) (mb->id == b->provider.leader_id(b->provider.userdata)));
        else if (streq(property, "Reachable"))
                r = sd_bus_message_append(reply, "b", (int) mb->reachable);
        else
                r = sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "Unknown property %s.",
                                      property);
        bus_member_list_free(members, n);
        return r;
}

static int member_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                                  sd_bus_error *error) {
        Bus *b = userdata;
        _cleanup_(strv_freep) char **l = NULL;
        BusMember *members = NULL;
        size_t n = 0;
        int r;

        r = bus_members(b, &members, &n);
        if (r < 0)
                return r;
        l = calloc(n + 1, sizeof(char *));
        if (!l) {
                bus_member_list_free(members, n);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                r = member_path(members[i].id, &l[i]);
                if (r < 0) {
                        bus_member_list_free(members, n);
                        return r;
                }
        }
        bus_member_list_free(members, n);
        *nodes = TAKE_PTR(l);
        return 1;
}

#define MEMBER_PROPERTY(name, sig, flags) \
        SD_BUS_PROPERTY(name, sig, member_property_get, 0, flags)

static const sd_bus_vtable member_vtable[] = {
        SD_BUS_VTABLE_START(0),
        MEMBER_PROPERTY("ID", "s", SD_BUS_VTABLE_PROPERTY_CONST),
        MEMBER_PROPERTY("Name", "s", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        MEMBER_PROPERTY("PeerURLs", "as", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        MEMBER_PROPERTY("ClientURLs", "as", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        MEMBER_PROPERTY("IsLeader", "b", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        MEMBER_PROPERTY("Reachable", "b", SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END
};

/* ---- change notification ---- */

static bool strv_equal(char **a, char **b) {
        size_t i = 0;

        for (; a && a[i] && b && b[i]; i++)
                if (!streq(a[i], b[i]))
                        return false;
        return !(a && a[i]) && !(b && b[i]);
}

static bool member_ids_equal(const BusState *x, const BusState *y) {
        if (x->n_members != y->n_members)
                return false;
        for (size_t i = 0; i < x->n_members; i++)
                if (x->members[i].id != y->members[i].id)
                        return false;
        return true;
}

/* Returns whether anything was sent. */
static bool emit_member_changes(Bus *b, const BusState *old, const BusState *cur) {
        bool sent = false;
        int r;

        for (size_t i = 0; i < cur->n_members; i++) {
                const BusMember *now = &cur->members[i];
                const BusMember *was = member_find(old->members, old->n_members, now->id);
                _cleanup_(freep) char *path = NULL;
                const char *changed[6];
                size_t k = 0;

                r = member_path(now->id, &path);
                if (r < 0)
                        continue;
                if (!was) {
                        sent = true;
                        r = sd_bus_emit_interfaces_added(b->bus, path, BUS_MEMBER_INTERFACE, NULL);
                        if (r < 0)
                                log_debug_errno(r, "Failed to emit InterfacesAdded for %s, ignoring: %m",
                                                path);
                        continue;
                }
                if (!streq(strempty(was->name), strempty(now->name)))
                        changed[k++] = "Name";
                if (!strv_equal(was->peer_urls, now->peer_urls))
                        changed[k++] = "PeerURLs";
                if (!strv_equal(was->client_urls, now->client_urls))
                        changed[k++] = "ClientURLs";
                if ((now->id == old->leader_id) != (now->id == cur->leader_id))
                        changed[k++] = "IsLeader";
                if (was->reachable != now->reachable)
                        changed[k++] = "Reachable";
                changed[k] = NULL;
                if (k == 0)
                        continue;
                sent = true;
                r = sd_bus_emit_properties_changed_strv(b->bus, path, BUS_MEMBER_INTERFACE,
                                                        (char **) changed);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
        }

        for (size_t i = 0; i < old->n_members; i++) {
                _cleanup_(freep) char *path = NULL;

                if (member_find(cur->members, cur->n_members, old->members[i].id))
                        continue;
                r = member_path(old->members[i].id, &path);
                if (r < 0)
                        continue;
                sent = true;
                r = sd_bus_emit_interfaces_removed(b->bus, path, BUS_MEMBER_INTERFACE, NULL);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit InterfacesRemoved for %s, ignoring: %m", path);
        }
        return sent;
}

static void bus_flush_changes(Bus *b) {
        BusState cur = {}, *old = &b->sent;
        const char *changed[16];
        size_t k = 0;
        bool sent;
        uint64_t now;
        int r;

        r = bus_state_read(b, &cur);
        if (r < 0) {
                log_debug_errno(r, "Failed to read state for D-Bus signals, ignoring: %m");
                return;
        }

        if (cur.cluster_id != old->cluster_id)
                changed[k++] = "ClusterID";
        if (cur.leader_id != old->leader_id)
                changed[k++] = "LeaderID";
        if (!member_ids_equal(&cur, old))
                changed[k++] = "Members";
        if (cur.raft_term != old->raft_term)
                changed[k++] = "RaftTerm";
        if (cur.raft_index != old->raft_index)
                changed[k++] = "RaftIndex";
        if (cur.etcd_index != old->etcd_index)
                changed[k++] = "EtcdIndex";
        if (cur.role != old->role)
                changed[k++] = "State";
        if (cur.healthy != old->healthy)
                changed[k++] = "Healthy";
        changed[k] = NULL;

        if (k > 0) {
                r = sd_bus_emit_properties_changed_strv(b->bus, BUS_PATH, BUS_CLUSTER_INTERFACE,
                                                        (char **) changed);
                if (r < 0)
                        log_debug_errno(r, "Failed to emit PropertiesChanged, ignoring: %m");
        }
        sent = emit_member_changes(b, old, &cur);

        if (cur.leader_id != old->leader_id) {
                char a[ID_STRING_MAX], c[ID_STRING_MAX];

                r = sd_bus_emit_signal(b->bus, BUS_PATH, BUS_CLUSTER_INTERFACE, "LeaderChanged", "ss",
                                       leader_to_string(old->leader_id, a),
                                       leader_to_string(cur.leader_id, c));
                if (r < 0)
                        log_debug_errno(r, "Failed to emit LeaderChanged, ignoring: %m");
        }

        /* The rate limit counts batches actually sent, not calls that found nothing new. */
        if ((k > 0 || sent) && sd_event_now(b->event, CLOCK_MONOTONIC, &now) >= 0)
                b->last_emit_usec = now;

        bus_state_done(old);
        *old = cur;
}

static int on_notify_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        bus_flush_changes(userdata);
        return 0;
}

void bus_notify_changed(Bus *b) {
        uint64_t now;
        int r;

        if (!b || !b->bus)
                return;

        /* A new leader is news: no delay. */
        if (b->provider.leader_id(b->provider.userdata) != b->sent.leader_id)
                goto flush;

        r = sd_event_now(b->event, CLOCK_MONOTONIC, &now);
        if (r < 0 || now >= b->last_emit_usec + BUS_NOTIFY_INTERVAL_USEC)
                goto flush;

        if (!b->notify_timer) {
                r = sd_event_add_time(b->event, &b->notify_timer, CLOCK_MONOTONIC,
                                      b->last_emit_usec + BUS_NOTIFY_INTERVAL_USEC, 1000,
                                      on_notify_timer, b);
                if (r < 0)
                        goto flush;
                (void) sd_event_source_set_description(b->notify_timer, "bus-notify");
                return;
        }
        r = sd_event_source_get_enabled(b->notify_timer, NULL);
        if (r > 0)
                return; /* a batch is already scheduled */
        r = sd_event_source_set_time(b->notify_timer, b->last_emit_usec + BUS_NOTIFY_INTERVAL_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(b->notify_timer, SD_EVENT_ONESHOT);
        if (r >= 0)
                return;

flush:
        if (b->notify_timer)
                (void) sd_event_source_set_enabled(b->notify_timer, SD_EVENT_OFF);
        bus_flush_changes(b);
}

/* ---- connection ---- */

static int on_name_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Bus *b = userdata;
        const sd_bus_error *e;
        uint32_t ret;
        int r;

        b->name_slot = sd_bus_slot_unref(b->name_slot);

        e = sd_bus_message_get_error(m);
        if (e) {
                log_warning("Failed to acquire D-Bus name %s, ignoring: %s", BUS_NAME,
                            e->message ?: e->name);
                return 0;
        }
        r = sd_bus_message_read(m, "u", &ret);
        if (r < 0) {
                log_warning_errno(r, "Failed to parse RequestName reply, ignoring: %m");
                return 0;
        }
        if (ret == 1 /* DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER */ || ret == 4 /* ALREADY_OWNER */) {
                b->has_name = true;
                log_debug("Acquired D-Bus name %s.", BUS_NAME);
        } else
                log_warning("D-Bus name %s is owned by another process (reply %" PRIu32 "), ignoring.",
                            BUS_NAME, ret);
        return 0;
}

static Bus *bus_alloc(sd_event *event, const char *name, const BusProvider *provider, const BusOps *ops) {
        Bus *b;

        assert(event);
        assert(provider);
        assert(provider->cluster_id && provider->member_id && provider->leader_id && provider->members &&
               provider->raft_term && provider->raft_index && provider->etcd_index && provider->role &&
               provider->healthy);

        b = calloc(1, sizeof(Bus));
        if (!b)
                return NULL;
        b->name = strdup(strempty(name));
        if (!b->name) {
                free(b);
                return NULL;
        }
        b->event = sd_event_ref(event);
        b->provider = *provider;
        if (ops) {
                b->ops = *ops;
                b->has_ops = true;
        }
        return b;
}

static int bus_setup(Bus *b, sd_bus *bus) {
        int r;

        (void) sd_bus_error_add_map(bus_error_map);

        b->bus = sd_bus_ref(bus);
        r = sd_bus_add_object_vtable(bus, &b->cluster_slot, BUS_PATH, BUS_CLUSTER_INTERFACE,
                                     cluster_vtable, b);
        if (r < 0)
                return log_error_errno(r, "Failed to add D-Bus object %s: %m", BUS_PATH);
        r = sd_bus_add_fallback_vtable(bus, &b->member_slot, BUS_MEMBER_PREFIX, BUS_MEMBER_INTERFACE,
                                       member_vtable, member_object_find, b);
        if (r < 0)
                return log_error_errno(r, "Failed to add D-Bus member objects: %m");
        r = sd_bus_add_node_enumerator(bus, &b->enumerator_slot, BUS_MEMBER_PREFIX,
                                       member_node_enumerator, b);
        if (r < 0)
                return log_error_errno(r, "Failed to add D-Bus member enumerator: %m");
        /* GetManagedObjects and InterfacesAdded/Removed for the member objects. */
        r = sd_bus_add_object_manager(bus, &b->object_manager_slot, BUS_PATH);
        if (r < 0)
                return log_error_errno(r, "Failed to add D-Bus object manager: %m");

        r = bus_state_read(b, &b->sent);
        if (r < 0)
                return log_error_errno(r, "Failed to read initial state for D-Bus: %m");

        if (sd_bus_is_bus_client(bus)) {
                r = sd_bus_request_name_async(bus, &b->name_slot, BUS_NAME, 0, on_name_reply, b);
                if (r < 0)
                        return log_error_errno(r, "Failed to request D-Bus name %s: %m", BUS_NAME);
        }

        if (!sd_bus_get_event(bus)) {
                r = sd_bus_attach_event(bus, b->event, SD_EVENT_PRIORITY_NORMAL);
                if (r < 0)
                        return log_error_errno(r, "Failed to attach D-Bus connection to the event loop: %m");
        }
        return 0;
}

int bus_new_with_bus(sd_event *event, sd_bus *bus, const char *name, const BusProvider *provider,
                     const BusOps *ops, Bus **ret) {
        _cleanup_(bus_freep) Bus *b = NULL;
        int r;

        assert(bus);
        assert(ret);

        b = bus_alloc(event, name, provider, ops);
        if (!b)
                return -ENOMEM;
        r = bus_setup(b, bus);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(b);
        return 0;
}

int bus_new(sd_event *event, const Config *config, const BusProvider *provider, const BusOps *ops,
            Bus **ret) {
        _cleanup_(bus_freep) Bus *b = NULL;
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        const char *address = config ? config->bus_address : NULL;
        int r;

        assert(ret);

        b = bus_alloc(event, config ? config->name : NULL, provider, ops);
        if (!b)
                return -ENOMEM;

        if (!isempty(address)) {
                r = sd_bus_new(&bus);
                if (r < 0)
                        return log_error_errno(r, "Failed to allocate D-Bus connection: %m");
                (void) sd_bus_set_description(bus, "etcd2");
                r = sd_bus_set_address(bus, address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
        } else
                r = sd_bus_open_system_with_description(&bus, "etcd2");
        if (r < 0) {
                if (r == -ENOMEM)
                        return log_oom();
                log_warning_errno(r, "Failed to connect to the %s bus%s%s, running without D-Bus: %m",
                                  isempty(address) ? "system" : "configured", isempty(address) ? "" : " ",
                                  strempty(address));
                *ret = TAKE_PTR(b); /* disabled */
                return 0;
        }

        b->owns_bus = true;
        r = bus_setup(b, bus);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                /* Already logged; D-Bus is optional, so go on without it. */
                b->cluster_slot = sd_bus_slot_unref(b->cluster_slot);
                b->member_slot = sd_bus_slot_unref(b->member_slot);
                b->enumerator_slot = sd_bus_slot_unref(b->enumerator_slot);
                b->object_manager_slot = sd_bus_slot_unref(b->object_manager_slot);
                b->name_slot = sd_bus_slot_unref(b->name_slot);
                b->bus = sd_bus_unref(b->bus);
                bus_state_done(&b->sent);
        }
        *ret = TAKE_PTR(b);
        return 0;
}

Bus *bus_free(Bus *b) {
        if (!b)
                return NULL;

        b->notify_timer = sd_event_source_disable_unref(b->notify_timer);
        b->name_slot = sd_bus_slot_unref(b->name_slot);
        b->cluster_slot = sd_bus_slot_unref(b->cluster_slot);
        b->member_slot = sd_bus_slot_unref(b->member_slot);
        b->enumerator_slot = sd_bus_slot_unref(b->enumerator_slot);
        b->object_manager_slot = sd_bus_slot_unref(b->object_manager_slot);
        if (b->bus) {
                if (b->has_name)
                        (void) sd_bus_release_name(b->bus, BUS_NAME);
                if (b->owns_bus)
                        b->bus = sd_bus_flush_close_unref(b->bus);
                else {
                        (void) sd_bus_flush(b->bus);
                        b->bus = sd_bus_unref(b->bus);
                }
        }
        bus_state_done(&b->sent);
        b->event = sd_event_unref(b->event);
        free(b->name);
        free(b);
        return NULL;
}

bool bus_is_enabled(Bus *b) {
        return b && b->bus;
}

bool bus_has_name(Bus *b) {
        return b && b->has_name;
}
