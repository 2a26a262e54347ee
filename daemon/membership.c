/* SPDX-License-Identifier: Apache-2.0 */
/* membership.c - membership changes (add, remove, update peer URLs), spare promotion, removal. */

/*
 * Membership changes run on the leader (followers forward them as MSG_MEMBER_REQ and get a
 * MSG_MEMBER_RES back): add = raft_add as a spare, standby, raftAttributes store write, promotion to
 * voter once the new member talks to us (promote_spares()); remove = store writes (delete
 * /0/members/<id>, put /0/removed_members/<id>), then raft_remove; update = a raftAttributes write.
 * Every member follows the member keys when it applies them (member_key_applied(): peer URL updates,
 * removals, its own removal: the process exits 0 a second later). One change at a time
 * (change_in_flight), as etcd2's raft allows one pending conf change.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <raft.h>

#include "codec.h"
#include "log.h"
#include "membership.h"
#include "server-internal.h"

#define SERVER_REMOVED_EXIT_USEC (1 * USEC_PER_SEC)

static const int member_errors[] = { 0, -EEXIST, -EADDRINUSE, -ENOENT, -EIDRM, -EPERM, -ETIMEDOUT, -EBUSY, -EIO };

static uint8_t member_error_encode(int e) {
        for (size_t i = 0; i < ELEMENTSOF(member_errors); i++)
                if (member_errors[i] == e)
                        return (uint8_t) i;
        return 8;
}

static void member_op_free(MemberOp *op) {
        if (!op)
                return;
        for (size_t i = 0; i < op->n_urls; i++)
                free(op->urls[i]);
        free(op->urls);
        free(op);
}

static void member_op_unlink(Server *s, MemberOp *op) {
        for (MemberOp **i = &s->member_ops; *i; i = &(*i)->next)
                if (*i == op) {
                        *i = op->next;
                        break;
                }
        op->next = NULL;
}


/* Answers the caller (or the follower that forwarded it) and frees the op. */
void member_op_finish(MemberOp *op, int error) {
        Server *s = op->server;

        member_op_unlink(s, op);
        if (error == 0 && (op->kind == MEMBER_OP_ADD || op->kind == MEMBER_OP_REMOVE)) {
                const char *f[5];
                LogIds ids;

                log_struct(LOG_NOTICE, log_ids(s, &ids, op->kind == MEMBER_OP_ADD ? "ETCD_EVENT=member-added" :
                                               "ETCD_EVENT=member-removed", f),
                           "Member %" PRIx64 " %s cluster %" PRIx64 ".", op->member_id,
                           op->kind == MEMBER_OP_ADD ? "added to" : "removed from", s->cluster_id);
        }
        if (op->origin != 0) {
                uint8_t buf[1 + 10];
                size_t n;

                buf[0] = member_error_encode(error);
                n = 1 + codec_varint_put(buf + 1, op->member_id);
                (void) send_opaque(s, op->origin, NULL, MSG_MEMBER_RES, op->request_id, buf, n);
        } else if (op->cb)
                op->cb(error, op->member_id, op->userdata);
        member_op_free(op);
}

static int str_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int member_op_new(Server *s, MemberOpKind kind, uint64_t member_id, char *const *urls, size_t n,
                         MemberOp **ret) {
        MemberOp *op = calloc(1, sizeof(MemberOp));

        if (!op)
                return -ENOMEM;
        op->server = s;
        op->kind = kind;
        op->member_id = member_id;
        op->deadline_usec = now_monotonic_usec() + s->proposal_timeout_usec;
        if (n > 0) {
                op->urls = calloc(n, sizeof(char *));
                if (!op->urls) {
                        free(op);
                        return -ENOMEM;
                }
                for (size_t i = 0; i < n; i++) {
                        op->urls[i] = strdup(urls[i]);
                        if (!op->urls[i]) {
                                op->n_urls = i;
                                member_op_free(op);
                                return -ENOMEM;
                        }
                }
                op->n_urls = n;
                qsort(op->urls, n, sizeof(char *), str_cmp);
        }
        *ret = op;
        return 0;
}

static bool member_exists(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, id);
        return conf_has(&s->raft.configuration, id) || store_lookup(s->store, path);
}

static bool member_started(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/attributes", id);
        return store_lookup(s->store, path) != NULL;
}

typedef struct UrlCheck {
        Server *server;
        char *const *urls;
        size_t n;
        uint64_t except;
        bool in_use;
} UrlCheck;

static int url_check_member(const StoreNode *child, void *userdata) {
        UrlCheck *u = userdata;
        const char *key = store_node_key(child), *base = strrchr(key, '/');
        char path[160];
        const StoreNode *ra;
        json_object *j, *arr;

        if (!base || strtoull(base + 1, NULL, 16) == u->except)
                return 0;
        (void) snprintf(path, sizeof(path), "%s/raftAttributes", key);
        ra = store_lookup(u->server->store, path);
        if (!ra)
                return 0;
        j = json_tokener_parse(strempty(store_node_value(ra, NULL)));
        if (j && json_object_object_get_ex(j, "peerURLs", &arr) && json_object_is_type(arr, json_type_array))
                for (size_t a = 0; a < json_object_array_length(arr); a++) {
                        const char *url = json_object_get_string(json_object_array_get_idx(arr, a));

                        for (size_t k = 0; url && k < u->n; k++)
                                if (streq(url, u->urls[k]))
                                        u->in_use = true;
                }
        json_object_put(j);
        return 0;
}

/* Is any of `urls` a peer URL of a member other than `except` (its raftAttributes, or its Raft address)? */
static bool urls_in_use(Server *s, char *const *urls, size_t n, uint64_t except) {
        const StoreNode *members = store_lookup(s->store, STORE_MEMBERS_PREFIX);
        UrlCheck u = { s, urls, n, except, false };

        for (unsigned i = 0; i < s->raft.configuration.n; i++)
                if (s->raft.configuration.servers[i].id != except)
                        for (size_t k = 0; k < n; k++)
                                if (streq(s->raft.configuration.servers[i].address, urls[k]))
                                        return true;
        if (members)
                (void) store_node_foreach_child(members, url_check_member, &u);
        return u.in_use;
}

static void member_store_cb(StoreResult *res, void *userdata);

static int member_propose(MemberOp *op, const StoreRequest *req);
static void member_change_cb(struct raft_change *req, int status);

static int member_put_raft_attributes(MemberOp *op, int prev_exist) {
        _cleanup_(freep) EtcdUrl *eu = NULL;
        _cleanup_(freep) char *json = NULL;
        EtcdUrlList l;
        char path[128];

        eu = calloc(op->n_urls, sizeof(EtcdUrl));
        if (!eu)
                return -ENOMEM;
        for (size_t i = 0; i < op->n_urls; i++)
                eu[i].str = op->urls[i];
        l = (EtcdUrlList) { eu, op->n_urls };
        json = raft_attributes_json_new(&l);
        if (!json)
                return -ENOMEM;
        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", op->member_id);
        return member_propose(op, &(StoreRequest) {
                .method = STORE_METHOD_PUT, .path = path, .value = json, .value_len = strlen(json),
                .prev_exist = prev_exist,
        });
}

/* The next step of a change on the leader:
 *   add:    raft_add (a spare) -> standby (gets the log, no vote; promoted to voter by
 *           promote_spares() once it talks to us) -> raftAttributes -> done
 *   remove: delete /0/members/<id> -> /0/removed_members/<id> -> raft_remove -> done (the store
 *           first, so that a removed leader still writes them and every member learns of it)
 *   update: raftAttributes -> done */
static void member_op_step(MemberOp *op) {
        Server *s = op->server;
        char path[128];
        int r = 0;

        switch (op->kind) {
        case MEMBER_OP_ADD:
                if (op->stage == 0) {
                        if (s->change_in_flight)
                                return member_op_finish(op, -EBUSY);
                        op->change.data = op;
                        r = raft_add(&s->raft, &op->change, op->member_id, op->urls[0], member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else if (op->stage == 1) {
                        /* A standby gets the log but has no vote (a learner) until promoted. */
                        op->change.data = op;
                        r = raft_assign(&s->raft, &op->change, op->member_id, RAFT_STANDBY, member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else if (op->stage == 2)
                        r = member_put_raft_attributes(op, 0);
                else
                        return member_op_finish(op, 0);
                break;
        case MEMBER_OP_REMOVE:
                if (op->stage == 0) {
                        (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64, op->member_id);
                        r = member_propose(op, &(StoreRequest) {
                                .method = STORE_METHOD_DELETE, .path = path, .dir = true, .recursive = true,
                                .prev_exist = -1,
                        });
                } else if (op->stage == 1) {
                        (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, op->member_id);
                        r = member_propose(op, &(StoreRequest) {
                                .method = STORE_METHOD_PUT, .path = path, .value = "", .value_len = 0, .prev_exist = -1,
                        });
                } else if (op->stage == 2 && conf_has(&s->raft.configuration, op->member_id)) {
                        if (s->change_in_flight) {
                                /* A promotion is finishing: member_ops_check() tries again. */
                                op->waiting_change = true;
                                return;
                        }
                        op->change.data = op;
                        r = raft_remove(&s->raft, &op->change, op->member_id, member_change_cb);
                        if (r != 0)
                                goto raft_fail;
                        s->change_in_flight = true;
                } else
                        return member_op_finish(op, 0);
                break;
        case MEMBER_OP_UPDATE:
                if (op->stage == 0)
                        r = member_put_raft_attributes(op, -1);
                else
                        return member_op_finish(op, 0);
                break;
        }
        if (r < 0)
                member_op_finish(op, -EIO);
        return;

raft_fail:
        log_warning("Membership change for %" PRIx64 " refused by raft: %s", op->member_id, raft_strerror(r));
        member_op_finish(op, r == RAFT_CANTCHANGE ? -EBUSY : -ETIMEDOUT);
}

static void member_change_cb(struct raft_change *req, int status) {
        MemberOp *op = req->data;

        op->server->change_in_flight = false;
        if (status != 0 && op->kind == MEMBER_OP_REMOVE && op->member_id == op->server->member_id) {
                /* A leader that removes itself steps down before it sees the change through (alone, it
                 * cannot); the store says removed already, and it is leaving anyway. */
                log_info("Removed ourselves (%s).", raft_strerror(status));
                member_op_finish(op, 0);
                return;
        }
        if (status != 0) {
                log_warning("Membership change for %" PRIx64 " failed: %s", op->member_id, raft_strerror(status));
                member_op_finish(op, -ETIMEDOUT);
                return;
        }
        op->stage++;
        member_op_step(op);
}

static int member_propose(MemberOp *op, const StoreRequest *req) {
        Server *s = op->server;
        ServerProposal *p;
        int r;

        r = propose_internal(s, req, false, member_store_cb);
        if (r < 0)
                return r;
        /* propose_internal() appends to the pending list: the last one is ours. */
        p = s->pending.tail;
        if (p && p->cb == member_store_cb)
                p->userdata = op;
        return 0;
}

static void member_store_cb(StoreResult *res, void *userdata) {
        MemberOp *op = userdata;

        if (res->error == ETCD_ERROR_RAFT_INTERNAL)
                return member_op_finish(op, -ETIMEDOUT);
        /* The delete of a member that has no keys (yet) is fine; other refusals are not. */
        if (res->error != ETCD_OK && !(op->kind == MEMBER_OP_REMOVE && op->stage == 0))
                return member_op_finish(op, res->error == ETCD_ERROR_NODE_EXIST ? -EEXIST : -EIO);
        op->stage++;
        member_op_step(op);
}

static unsigned n_started_members(Server *s, uint64_t except) {
        unsigned n = 0;

        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                uint64_t id = s->raft.configuration.servers[i].id;

                if (id != except && (id == s->member_id || member_started(s, id)))
                        n++;
        }
        return n;
}

/* On the leader: validate and start the change. Finishes (and frees) the op on refusal. */
static void member_op_execute(MemberOp *op) {
        Server *s = op->server;
        unsigned n = s->raft.configuration.n;

        op->executing = true;
        op->next = s->member_ops;
        s->member_ops = op;

        switch (op->kind) {
        case MEMBER_OP_ADD:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (member_exists(s, op->member_id))
                        return member_op_finish(op, -EEXIST);
                if (urls_in_use(s, op->urls, op->n_urls, 0))
                        return member_op_finish(op, -EADDRINUSE);
                if (s->strict_reconfig_check) {
                        unsigned started = n_started_members(s, 0);

                        /* etcd2's isReadyToAddNewMember: one started member of two is fine. */
                        if (!(n == 1 && started == 1) && started < (n + 1) / 2 + 1)
                                return member_op_finish(op, -EPERM);
                }
                return member_op_step(op);
        case MEMBER_OP_REMOVE:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (!member_exists(s, op->member_id))
                        return member_op_finish(op, -ENOENT);
                if (s->strict_reconfig_check) {
                        unsigned started = n_started_members(s, op->member_id);
                        unsigned left = conf_has(&s->raft.configuration, op->member_id) ? n - 1 : n;

                        if (started < left / 2 + 1)
                                return member_op_finish(op, -EPERM);
                }
                return member_op_step(op);
        case MEMBER_OP_UPDATE:
                if (member_is_removed(s, op->member_id))
                        return member_op_finish(op, -EIDRM);
                if (!member_exists(s, op->member_id))
                        return member_op_finish(op, -ENOENT);
                if (urls_in_use(s, op->urls, op->n_urls, op->member_id))
                        return member_op_finish(op, -EADDRINUSE);
                return member_op_step(op);
        default:
                return member_op_finish(op, -EINVAL);
        }
}

static int member_op_forward(Server *s, MemberOp *op) {
        raft_id leader = 0;
        const char *address = NULL;
        _cleanup_(freep) uint8_t *buf = NULL;
        size_t size = 1 + 10 + 10, n;

        raft_leader(&s->raft, &leader, &address);
        if (leader == 0 || leader == s->member_id || !address)
                return -EAGAIN;
        for (size_t i = 0; i < op->n_urls; i++)
                size += 10 + strlen(op->urls[i]);
        buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        buf[0] = (uint8_t) op->kind;
        n = 1 + codec_varint_put(buf + 1, op->member_id);
        n += codec_varint_put(buf + n, op->n_urls);
        for (size_t i = 0; i < op->n_urls; i++) {
                size_t l = strlen(op->urls[i]);

                n += codec_varint_put(buf + n, l);
                memcpy(buf + n, op->urls[i], l);
                n += l;
        }
        return send_opaque(s, leader, address, MSG_MEMBER_REQ, op->request_id, buf, n);
}

/* Runs a change here if we lead, else sends it to the leader (or waits for one). */
static int member_op_submit(Server *s, MemberOp *op) {
        op->request_id = ++s->next_request_id;
        if (s->leader && s->ready) {
                member_op_execute(op);
                return 0;
        }
        op->next = s->member_ops;
        s->member_ops = op;
        if (member_op_forward(s, op) >= 0)
                op->forwarded = true;
        retry_schedule(s, op->deadline_usec - now_monotonic_usec());
        return 0;
}

/* Follower side: forward waiting ops, time out the old ones. */
/* Does our own store already show the change the leader reported done? etcd2 answers a membership
 * change only once the answering member applied it, so that e.g. `etcdctl member add` followed by a
 * member list on the same member sees the new member. */
static bool member_op_locally_visible(Server *s, const MemberOp *op) {
        char path[96];

        switch (op->kind) {
        case MEMBER_OP_ADD:
                (void) snprintf(path, sizeof(path), STORE_MEMBERS_PREFIX "/%" PRIx64 "/raftAttributes", op->member_id);
                return store_lookup(s->store, path) != NULL;
        case MEMBER_OP_REMOVE:
                (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, op->member_id);
                return store_lookup(s->store, path) != NULL;
        default:
                return true;
        }
}

void member_ops_check(Server *s) {
        uint64_t now = now_monotonic_usec();

        for (MemberOp *op = s->member_ops, *next; op; op = next) {
                next = op->next;
                if (op->awaiting_local) {
                        /* the leader committed it; a bounded wait for our own apply */
                        if (member_op_locally_visible(s, op) || op->deadline_usec <= now) {
                                member_op_finish(op, 0);
                                return;   /* the list may have changed */
                        }
                        continue;
                }
                if (op->executing) {
                        if (op->waiting_change && !s->change_in_flight && s->leader) {
                                op->waiting_change = false;
                                member_op_step(op);
                                return;   /* the list may have changed */
                        }
                        continue;
                }
                if (op->deadline_usec <= now) {
                        member_op_finish(op, -ETIMEDOUT);
                        continue;
                }
                if (!op->forwarded && s->leader && s->ready) {
                        /* We lead now: run it here. */
                        member_op_unlink(s, op);
                        member_op_execute(op);
                        return;   /* the list may have changed */
                }
                if (!op->forwarded && member_op_forward(s, op) >= 0)
                        op->forwarded = true;
        }
}

/* A peer URL as the client API passes it on: one that etcd_url_parse() takes and leaves unchanged. */
static bool member_url_valid(const char *url) {
        _cleanup_(freep) char *error = NULL;
        EtcdUrl u = {};
        bool ok;

        if (strlen(url) > PEER_ADDRESS_MAX || etcd_url_parse(url, &u, &error) < 0)
                return false;
        ok = streq(u.str, url);
        etcd_url_done(&u);
        return ok;
}

/* A forwarded change must be one that server_member_add/remove/update() could have sent: a nonzero
 * member ID, peer URLs (add, update: at least one, each valid) or none (remove). */
static bool member_req_valid(MemberOpKind kind, uint64_t member_id, char *const *urls, size_t n) {
        if (member_id == 0)
                return false;
        if (kind == MEMBER_OP_REMOVE)
                return n == 0;
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!member_url_valid(urls[i]))
                        return false;
        return true;
}

void handle_member_req(Server *s, uint64_t from, uint64_t id, const uint8_t *p, size_t size) {
        MemberOp *op;
        uint64_t member_id, n;
        size_t k, off = 1;
        char **urls = NULL;
        int r = -EBADMSG;

        if (size < 1 || p[0] < MEMBER_OP_ADD || p[0] > MEMBER_OP_UPDATE)
                goto bad;
        k = codec_varint_get(p + off, size - off, &member_id);
        if (k == 0)
                goto bad;
        off += k;
        k = codec_varint_get(p + off, size - off, &n);
        if (k == 0 || n > 64)
                goto bad;
        off += k;
        urls = calloc(n + 1, sizeof(char *));
        if (!urls)
                return;
        for (uint64_t i = 0; i < n; i++) {
                uint64_t l;

                k = codec_varint_get(p + off, size - off, &l);
                if (k == 0 || l > size - off - k)
                        goto bad;
                off += k;
                /* No NUL inside: strndup() would cut the URL short. */
                if (memchr(p + off, 0, l))
                        goto bad;
                urls[i] = strndup((const char *) p + off, l);
                if (!urls[i])
                        goto bad;
                off += l;
        }
        if (off != size || !member_req_valid((MemberOpKind) p[0], member_id, urls, n))
                goto bad;
        r = member_op_new(s, (MemberOpKind) p[0], member_id, urls, n, &op);
        if (r < 0)
                goto bad;
        op->origin = from;
        op->request_id = id;
        if (!s->leader || !s->ready) {
                uint8_t buf[1 + 10];

                buf[0] = member_error_encode(-ETIMEDOUT);
                k = 1 + codec_varint_put(buf + 1, member_id);
                (void) send_opaque(s, from, NULL, MSG_MEMBER_RES, id, buf, k);
                member_op_free(op);
        } else
                member_op_execute(op);
        r = 0;
bad:
        /* Sparingly: the sender may repeat it as fast as it likes. */
        if (r == -EBADMSG && s->n_forged_proposals++ % 1000 == 0)
                log_warning("Malformed or invalid membership request from member %" PRIx64 ", ignoring it "
                            "(%" PRIu64 " refused proposals so far).", from, s->n_forged_proposals);
        if (urls)
                for (size_t i = 0; urls[i]; i++)
                        free(urls[i]);
        free(urls);
}

void handle_member_res(Server *s, uint64_t id, const uint8_t *p, size_t size) {
        uint64_t member_id;

        if (size < 2 || p[0] >= ELEMENTSOF(member_errors) || codec_varint_get(p + 1, size - 1, &member_id) == 0)
                return;
        for (MemberOp *op = s->member_ops; op; op = op->next)
                if (op->request_id == id && op->origin == 0 && !op->executing && !op->awaiting_local) {
                        op->member_id = member_id;
                        if (member_errors[p[0]] == 0 && !member_op_locally_visible(s, op)) {
                                op->awaiting_local = true;
                                op->deadline_usec = now_monotonic_usec() + 2 * USEC_PER_SEC;
                                retry_schedule(s, 10 * USEC_PER_MSEC);
                                return;
                        }
                        member_op_finish(op, member_errors[p[0]]);
                        return;
                }
}

int server_member_add(Server *s, char *const *peer_urls, size_t n, ServerMemberCallback cb, void *userdata) {
        MemberOp *op;
        uint64_t id;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        if (n == 0)
                return -EINVAL;
        r = member_op_new(s, MEMBER_OP_ADD, 0, peer_urls, n, &op);
        if (r < 0)
                return r;
        id = etcd_member_id(op->urls, op->n_urls, "", (uint64_t) (now_realtime_usec() / USEC_PER_SEC));
        op->member_id = id;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

int server_member_remove(Server *s, uint64_t id, ServerMemberCallback cb, void *userdata) {
        MemberOp *op;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        r = member_op_new(s, MEMBER_OP_REMOVE, id, NULL, 0, &op);
        if (r < 0)
                return r;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

int server_member_update(Server *s, uint64_t id, char *const *peer_urls, size_t n, ServerMemberCallback cb,
                         void *userdata) {
        MemberOp *op;
        int r;

        if (s->closing)
                return -ESHUTDOWN;
        if (n == 0)
                return -EINVAL;
        r = member_op_new(s, MEMBER_OP_UPDATE, id, peer_urls, n, &op);
        if (r < 0)
                return r;
        op->cb = cb;
        op->userdata = userdata;
        return member_op_submit(s, op);
}

void server_member_cancel(Server *s, void *userdata) {
        for (MemberOp *op = s->member_ops; op; op = op->next)
                if (op->origin == 0 && op->userdata == userdata)
                        op->cb = NULL;
}

/* Leader: promote members added as spares to voters once they talk to us (libraft catches them up
 * first). One change at a time. */
static void promote_cb(struct raft_change *req, int status) {
        Server *s = req->data;

        s->change_in_flight = false;
        if (status != 0) {
                log_info("Promotion to voter failed (%s), retrying.", raft_strerror(status));
                s->promote_retry_usec = now_monotonic_usec() + USEC_PER_SEC;
        }
}

void promote_spares(Server *s) {
        if (!s->leader || !s->ready || s->change_in_flight || s->closing || now_monotonic_usec() < s->promote_retry_usec)
                return;
        for (unsigned i = 0; i < s->raft.configuration.n; i++) {
                const struct raft_server *sv = &s->raft.configuration.servers[i];
                int r;

                if (sv->role == RAFT_VOTER || !peer_transport_has_inbound(s->peers, sv->id))
                        continue;
                s->promote_change.data = s;
                r = raft_assign(&s->raft, &s->promote_change, sv->id, RAFT_VOTER, promote_cb);
                if (r == 0) {
                        s->change_in_flight = true;
                        log_info("Promoting member %" PRIx64 " to voter.", (uint64_t) sv->id);
                } else
                        s->promote_retry_usec = now_monotonic_usec() + USEC_PER_SEC;
                return;
        }
}

/* Every member, when it applies a write to the member keys: follow peer URL updates, forget removed
 * members, and notice our own removal. */
void member_key_applied(Server *s, const StoreRequest *req) {
        const char *p = req->path, *rest;
        uint64_t id;

        if (strncmp(p, "/0/removed_members/", 19) == 0) {
                id = strtoull(p + 19, NULL, 16);
                if (id == s->member_id)
                        server_removed(s);
                else if (id != 0)
                        peer_transport_drop(s->peers, id);
                return;
        }
        if (strncmp(p, STORE_MEMBERS_PREFIX "/", strlen(STORE_MEMBERS_PREFIX "/")) != 0 || req->method != STORE_METHOD_PUT)
                return;
        rest = p + strlen(STORE_MEMBERS_PREFIX "/");
        id = strtoull(rest, NULL, 16);
        if (id == 0 || id == s->member_id || !strstr(rest, "/raftAttributes") || !req->value)
                return;
        {
                json_object *j = json_tokener_parse(req->value), *arr;
                const char *url = NULL;

                if (j && json_object_object_get_ex(j, "peerURLs", &arr) && json_object_is_type(arr, json_type_array) &&
                    json_object_array_length(arr) > 0)
                        url = json_object_get_string(json_object_array_get_idx(arr, 0));
                if (url)
                        (void) peer_transport_set_address(s->peers, id, url);
                json_object_put(j);
        }
}

/* ---- removal ---- */

static int on_removed_exit(sd_event_source *source, uint64_t usec, void *userdata) {
        Server *s = userdata;

        if (s->removed_cb)
                s->removed_cb(s, s->removed_userdata);
        else
                (void) sd_event_exit(s->event, 0);
        return 0;
}

void server_removed(Server *s) {
        if (s->removed)
                return;
        s->removed = true;
        log_error("The member has been permanently removed from the cluster; exiting.");
        if (sd_event_add_time_relative(s->event, &s->exit_source, CLOCK_MONOTONIC, SERVER_REMOVED_EXIT_USEC,
                                       USEC_PER_MSEC, on_removed_exit, s) < 0)
                (void) on_removed_exit(NULL, 0, s);
}

bool server_is_removed(Server *s) {
        return s->removed;
}

void server_set_removed_callback(Server *s, ServerRemovedCallback cb, void *userdata) {
        s->removed_cb = cb;
        s->removed_userdata = userdata;
}


bool member_is_removed(Server *s, uint64_t id) {
        char path[96];

        (void) snprintf(path, sizeof(path), "/0/removed_members/%" PRIx64, id);
        return store_lookup(s->store, path) != NULL;
}
