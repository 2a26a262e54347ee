/* SPDX-License-Identifier: Apache-2.0 */
/* bus.h - etcd2 on D-Bus: the name io.etcd.etcd2, the Cluster object, one Member object per member. */
#pragma once

/*
 * The bus module reads everything it exposes through a BusProvider (callbacks + userdata), never from
 * server.c directly, and performs the three methods through BusOps. The manager wires both to the
 * server; the unit test wires them to fakes.
 *
 * Objects:
 *   /io/etcd/etcd2                    io.etcd.etcd2.Cluster
 *   /io/etcd/etcd2/member/<escaped>   io.etcd.etcd2.Member, <escaped> = sd_bus_path_encode() of the
 *                                     member ID in lowercase hex as etcd prints it ("8e9e05c52164694d"
 *                                     becomes "_38e9e05c52164694d": a leading digit is escaped)
 * Cluster.Members is "as": the member IDs in hex, in the provider's order. LeaderID is "" without a
 * leader. /io/etcd/etcd2 is also an org.freedesktop.DBus.ObjectManager (GetManagedObjects,
 * InterfacesAdded/Removed as members come and go).
 *
 * Without a bus (no system bus socket, as in CI) bus_new() warns once and returns a disabled Bus:
 * every other call is then a no-op. The daemon never fails because of D-Bus.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "macro.h"

#define BUS_NAME "io.etcd.etcd2"
#define BUS_PATH "/io/etcd/etcd2"
#define BUS_MEMBER_PREFIX "/io/etcd/etcd2/member"
#define BUS_CLUSTER_INTERFACE "io.etcd.etcd2.Cluster"
#define BUS_MEMBER_INTERFACE "io.etcd.etcd2.Member"

#define BUS_ERROR_NOT_SUPPORTED "io.etcd.etcd2.Error.NotSupported"
#define BUS_ERROR_MEMBER_NOT_FOUND "io.etcd.etcd2.Error.MemberNotFound"
#define BUS_ERROR_MEMBER_EXISTS "io.etcd.etcd2.Error.MemberExists"
#define BUS_ERROR_INVALID_ARGUMENT "io.etcd.etcd2.Error.InvalidArgument"
#define BUS_ERROR_FAILED "io.etcd.etcd2.Error.Failed"

/* PropertiesChanged is sent at most this often; changes in between are coalesced. */
#define BUS_NOTIFY_INTERVAL_USEC (100 * USEC_PER_MSEC)

typedef struct Bus Bus;

/* Same values as server.h's ServerRole (FOLLOWER 0, CANDIDATE 1, LEADER 2), so the manager can cast. */
typedef enum BusRole {
        BUS_ROLE_FOLLOWER,
        BUS_ROLE_CANDIDATE,
        BUS_ROLE_LEADER,
        BUS_ROLE_PROXY,          /* --proxy on|readonly, or a discovery fallback: no Raft state */
        _BUS_ROLE_MAX,
        _BUS_ROLE_INVALID = -22,
} BusRole;

/* One member as the provider reports it. All strings malloc'd; freed by bus_member_list_free(). */
typedef struct BusMember {
        uint64_t id;
        char *name;              /* "" (or NULL) if not yet started/published */
        char **peer_urls;        /* strv, may be NULL */
        char **client_urls;      /* strv, may be NULL */
        bool reachable;          /* the local member counts as reachable */
} BusMember;

void bus_member_list_free(BusMember *members, size_t n);

/* Read-only view of the member's state. Every callback must be set; all take `userdata`. */
typedef struct BusProvider {
        uint64_t (*cluster_id)(void *userdata);
        uint64_t (*member_id)(void *userdata);  /* the local member */
        uint64_t (*leader_id)(void *userdata);  /* 0 while there is no leader */
        /* Fills a malloc'd array (ownership passes to the caller, see bus_member_list_free()). */
        int (*members)(void *userdata, BusMember **ret, size_t *ret_n);
        uint64_t (*raft_term)(void *userdata);
        uint64_t (*raft_index)(void *userdata);
        uint64_t (*etcd_index)(void *userdata);
        BusRole (*role)(void *userdata);
        bool (*healthy)(void *userdata);
        void *userdata;
} BusProvider;

/*
 * The methods. NULL struct or NULL function: the method fails with Error.NotSupported.
 * Arguments have been validated already (peer URLs parse as etcd URLs and are not in use; the ID to
 * remove is a known member; the backup path is absolute).
 * Return < 0 to fail: the error name follows from the errno (see bus_error_setf()), the message from
 *   `error` if the op set it. -EOPNOTSUPP NotSupported, -ENOENT MemberNotFound, -EEXIST MemberExists,
 *   -EINVAL InvalidArgument, anything else Failed.
 * Return 0 for done: the bus replies now (AddMember with *ret_id).
 * Return > 0 if the op replies later: it took a ref on `m` (sd_bus_message_ref()) and calls
 *   bus_reply_method(m, r, id, message) exactly once, then unrefs it (e.g. once a Raft configuration
 *   change committed).
 */
typedef struct BusOps {
        int (*add_member)(void *userdata, sd_bus_message *m, char **peer_urls, uint64_t *ret_id,
                          sd_bus_error *error);
        int (*remove_member)(void *userdata, sd_bus_message *m, uint64_t id, sd_bus_error *error);
        int (*backup)(void *userdata, sd_bus_message *m, const char *path, sd_bus_error *error);
        void *userdata;
} BusOps;

/* Connects to config->bus_address if set, else to the system bus; exports the objects, requests the
 * name asynchronously and attaches to `event`. Fails only on OOM or programming errors; an unreachable
 * bus gives a disabled Bus (with one warning). `provider` and `ops` are copied; `ops` may be NULL. */
int bus_new(sd_event *event, const Config *config, const BusProvider *provider, const BusOps *ops,
            Bus **ret);
/* Same on an already started connection (takes a ref); requests the name only if `bus` is a bus
 * client. For tests (peer-to-peer socketpair) and embedding. */
int bus_new_with_bus(sd_event *event, sd_bus *bus, const char *name, const BusProvider *provider,
                     const BusOps *ops, Bus **ret);
/* Flushes pending signals (best effort), releases the name, closes the connection. */
Bus *bus_free(Bus *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(Bus *, bus_free);

bool bus_is_enabled(Bus *b);
/* True once the bus driver confirmed that we own BUS_NAME. */
bool bus_has_name(Bus *b);

/* Something may have changed (apply, role change, membership): compares with what was last sent and
 * emits PropertiesChanged for the properties that differ (Cluster and Member objects),
 * InterfacesAdded/Removed for members that came or went, and LeaderChanged(old, new) at once when the
 * leader changed. Property changes are rate-limited to one batch per BUS_NOTIFY_INTERVAL_USEC. */
void bus_notify_changed(Bus *b);

/* Sets a named io.etcd.etcd2.Error.* from errno `r` (see BusOps) and returns r (< 0). */
int bus_error_setf(sd_bus_error *error, int r, const char *format, ...) _printf_(3, 4);
/* Replies to a method call that an op answered later (see BusOps): r < 0 an error (`message` or a
 * default text), else success with `id` for AddMember. */
int bus_reply_method(sd_bus_message *m, int r, uint64_t id, const char *message);

const char *bus_role_to_string(BusRole r); /* "StateFollower", "StateCandidate", "StateLeader", "StateProxy" */
