/* SPDX-License-Identifier: Apache-2.0 */
/* auth-api.c - the v2 auth endpoints (/v2/auth/...) and the access checks of the client API, as etcd2
 * v2.3.8's etcdhttp client_auth.go answers them. */

/*
 * Part of the client API's handler (client-api.c routes /v2/auth/ here and asks the access checks of
 * keys and members here). The model (users, roles, patterns, merges, bcrypt) is auth.c, which does no
 * I/O; this file turns it into answers and Raft writes under /2. Before a request is routed,
 * auth_api_prepare() does its bcrypt work on the worker thread (auth-worker.c): the check of Basic
 * credentials not in the cache, and the hash of a new user password.
 *
 * etcd2 reads its auth data with store Gets as it answers (AuthEnabled() wherever it is called, the user
 * and its roles in the access checks, the handlers' GetUser()/GetRole()/AllUsers()/AllRoles(), quorum
 * reads before updates) and those Gets move /v2/stats/store and /metrics: each is counted here where
 * etcd2 makes it (auth.h's _counted reads), as etcd 3.4 does (test_stats_store_auth_diff.py compares them).
 * Its quorum reads are Raft requests that every member counts; ours count on the member answering.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "auth.h"
#include "auth-worker.h"
#include "client-api-internal.h"
#include "http-util.h"
#include "log.h"
#include "macro.h"

/* How many times an update that lost a compare-and-swap is made again before it fails (500). */
#define AUTH_UPDATE_RETRIES 16

/* --- v2 auth (etcdhttp client_auth.go of 2.3.8) --------------------------------------------- */

/* etcd2's writeNoAuth(): 401 {"message":"Insufficient credentials"}. */
int auth_api_reply_no_auth(ApiRequest *r) {
        return reply_message(r, 401, "Insufficient credentials", true);
}

/* The user named by valid Basic credentials (NULL otherwise); *ret_had says whether valid Basic
 * credentials came at all. count: count the read of the user as etcd2's GetUser() (wrong password or not). */
static json_object *req_auth_user(ApiRequest *r, bool count, bool *ret_had) {
        _cleanup_free_ char *name = NULL, *password = NULL;
        const char *h = req_header(r, "Authorization");
        json_object *u;
        bool ok;

        /* netutil.BasicAuth()'s ok: a header that is not valid Basic counts as none */
        *ret_had = !isempty(h) && auth_parse_basic(h, &name, &password);
        if (!*ret_had)
                return NULL;
        if (r->auth_bad) {
                if (count)
                        auth_count_read(req_store(r), "users", name);
                explicit_bzero(password, strlen(password));
                return NULL;
        }
        u = count ? auth_get_user_counted(req_store(r), name) : auth_get_user(req_store(r), name);
        /* auth_api_prepare() verified them on the worker: a cache hit (bcrypt here only if the user's hash
         * changed in between, which the loop does not let happen) */
        ok = u && auth_check_password_cached(name, json_object_get_string(json_object_object_get(u, "password")),
                                             password);
        explicit_bzero(password, strlen(password));
        if (!ok) {
                json_object_put(u);
                return NULL;
        }
        return u;
}

/* hasRootAccess(): auth off, or a user with the root role. count: count etcd2's reads (/2/enabled, the
 * user), as for every request it checks; not for our own look ahead in auth_api_prepare(). */
static bool has_root_access(ApiRequest *r, bool count) {
        json_object *u;
        bool had, ok;

        if (!(count ? auth_enabled_counted(req_store(r)) : auth_enabled(req_store(r))))
                return true;
        u = req_auth_user(r, count, &had);
        ok = u && auth_user_has_role(u, AUTH_ROOT);
        json_object_put(u);
        return ok;
}

bool auth_api_has_root_access(ApiRequest *r) {
        return has_root_access(r, true);
}

/* hasKeyPrefixAccess() of 2.3.8: no valid Basic credentials (no header, or one that is not Basic or not
 * decodable) means the guest role; wrong ones mean no access; else any role of the user that grants it
 * (a recursive request needs a prefix pattern). etcd 3.4 refuses a malformed header instead: no client
 * tool sends one, and the guest role is what a request without credentials gets anyway. */
bool auth_api_has_key_access(ApiRequest *r, const char *key, bool recursive, bool write) {
        Store *st = req_store(r);
        json_object *u, *roles;
        bool had, ok = false;

        if (!auth_enabled_counted(st))
                return true;
        u = req_auth_user(r, true, &had);
        if (!had) {
                json_object *g = auth_get_role_counted(st, AUTH_GUEST);
                ok = auth_role_has_access(g, key, write, false);
                json_object_put(g);
                return ok;
        }
        if (!u)
                return false;
        roles = json_object_object_get(u, "roles");
        for (size_t i = 0; !ok && roles && i < json_object_array_length(roles); i++) {
                const char *name = json_object_get_string(json_object_array_get_idx(roles, i));
                json_object *role = auth_get_role_counted(st, name);

                ok = auth_role_has_access(role, key, write, recursive);
                json_object_put(role);
        }
        json_object_put(u);
        return ok;
}

/* json.NewEncoder(w).Encode(): the JSON and a newline. */
static int reply_json_object(ApiRequest *r, unsigned status, json_object *o) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        HttpBuf b = {};

        if (!s || http_buf_puts(&b, s) < 0 || http_buf_puts(&b, "\n") < 0) {
                http_buf_done(&b);
                return -ENOMEM;
        }
        return reply_json_buf(r, status, &b, true);
}

/* The chain of writes of one auth request: each is proposed once the previous one is applied, then
 * the answer (auth_status, auth_body) is given. A failure answers at once: a create that finds the node
 * (105) with auth_exists_msg (409), an update or delete that misses it (100) with auth_missing_msg (404). */
static void auth_proposal_done(StoreResult *res, void *userdata);
static void auth_api_request_reset(ApiRequest *r);

/* ensureAuthDirectories(): before the first auth write of the process, etcd2 creates /2, /2/users/,
 * /2/roles/ and /2/enabled ("false"), one after the other, each allowed to exist already (105). They are
 * real writes (the index moves, every member counts a create), so they are made here too. */
static const char *const auth_ensure_paths[] = { AUTH_PREFIX, AUTH_PREFIX "/users", AUTH_PREFIX "/roles",
                                                 AUTH_PREFIX "/enabled" };

static int auth_propose_next(ApiRequest *r) {
        AuthWrite *w;
        StoreRequest req = {};
        int k;

        r->auth_ensuring = r->n_auth_writes > 0 && !r->api->auth_ensured &&
                           r->auth_ensure_next < ELEMENTSOF(auth_ensure_paths);
        if (r->auth_ensuring) {
                req.method = STORE_METHOD_PUT;
                req.path = auth_ensure_paths[r->auth_ensure_next++];
                req.dir = r->auth_ensure_next < ELEMENTSOF(auth_ensure_paths);
                req.value = req.dir ? NULL : "false";
                req.value_len = req.dir ? 0 : 5;
                req.prev_exist = 0;
                k = server_propose(req_server(r), &req, auth_proposal_done, r, &r->proposal);
                if (k < 0)
                        return reply_message(r, 500, strerror(-k), true);
                return 0;
        }
        if (r->auth_next >= r->n_auth_writes) {
                const char *body = r->auth_body ?: "";
                add_cluster_id(r);
                return reply(r, r->auth_status, CONTENT_TYPE_JSON, body, strlen(body));
        }
        w = &r->auth_writes[r->auth_next++];
        req.method = w->value ? STORE_METHOD_PUT : STORE_METHOD_DELETE;
        req.path = w->path;
        req.value = w->value;
        req.value_len = w->value ? strlen(w->value) : 0;
        req.prev_exist = w->prev_exist;
        req.prev_index = w->prev_index;
        k = server_propose(req_server(r), &req, auth_proposal_done, r, &r->proposal);
        if (k < 0)
                return reply_message(r, 500, strerror(-k), true);
        return 0;
}

static void auth_proposal_done(StoreResult *res, void *userdata) {
        ApiRequest *r = userdata;
        HttpRequest *h = r->http;
        int k;

        r->proposal = NULL;
        if (r->auth_ensuring && (res->error == ETCD_OK || res->error == ETCD_ERROR_NODE_EXIST)) {
                if (r->auth_ensure_next >= ELEMENTSOF(auth_ensure_paths))
                        r->api->auth_ensured = true;
                if (auth_propose_next(r) < 0)
                        reply_oom(h);
                return;
        }
        if (!r->auth_ensuring &&
            (res->error == ETCD_ERROR_TEST_FAILED || res->error == ETCD_ERROR_KEY_NOT_FOUND) &&
            r->auth_writes[r->auth_next - 1].prev_index > 0 &&
            r->auth_retries < AUTH_UPDATE_RETRIES) {
                /* Another update of this user or role was applied between our read and our write: make
                 * ours again from what is stored now (applied here already, as it came first in the
                 * log). etcd2 would have overwritten it (last writer wins). */
                r->auth_retries++;
                auth_api_request_reset(r);
                api_handle(h);
                return;
        }
        if (res->error == ETCD_ERROR_NODE_EXIST && r->auth_exists_msg)
                k = reply_message(r, 409, r->auth_exists_msg, true);
        else if (res->error == ETCD_ERROR_KEY_NOT_FOUND && r->auth_missing_msg)
                k = reply_message(r, 404, r->auth_missing_msg, true);
        else if (res->error != ETCD_OK)
                k = reply_message(r, 500, res->cause ?: "etcdserver: request failed", true);
        else
                k = auth_propose_next(r);
        if (k < 0)
                reply_oom(h);
}

/* prev_exist: 0 create, 1 update, -1 set; value NULL: delete. */
static int auth_add_write(ApiRequest *r, const char *what, const char *name, const char *value, int prev_exist,
                          uint64_t prev_index) {
        AuthWrite *w;

        if (r->n_auth_writes >= ELEMENTSOF(r->auth_writes))
                return -E2BIG;
        w = &r->auth_writes[r->n_auth_writes];
        if (asprintf(&w->path, AUTH_PREFIX "/%s%s%s", what, name ? "/" : "", strempty(name)) < 0) {
                w->path = NULL;
                return -ENOMEM;
        }
        w->value = value ? strdup(value) : NULL;
        if (value && !w->value)
                return -ENOMEM;
        w->prev_exist = prev_exist;
        w->prev_index = prev_index;
        r->n_auth_writes++;
        return 0;
}

/* The update of a stored user or role (what: "users" or "roles"), as auth_user_merge() or
 * auth_role_merge() made it: a failed merge (merge_status, merge_msg) or one that changes nothing
 * (unchanged_msg) is answered at once; otherwise nu is written as a compare-and-swap on the node's
 * modifiedIndex, which auth_proposal_done() makes again from what is stored if another update came
 * first. Returns 1 once the write is added, 0 once answered, < 0 on error. */
static int auth_add_update(ApiRequest *r, const char *what, const char *name, json_object *old,
                           json_object *nu, unsigned merge_status, const char *merge_msg,
                           const char *unchanged_msg) {
        const char *value;
        int k;

        if (merge_status == 400)
                return reply_message(r, 400, "Invalid JSON in request body.", true);
        if (merge_status != 0)
                return reply_message(r, merge_status, merge_msg ?: "Internal Server Error", true);
        if (json_object_equal(old, nu))
                return reply_message(r, 400, unchanged_msg, true);

        value = json_object_to_json_string_ext(nu, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        k = auth_add_write(r, what, name, value, 1, auth_modified_index(req_store(r), what, name));
        return k < 0 ? k : 1;
}

static int auth_start(ApiRequest *r, unsigned status, json_object *body_or_null) {
        if (body_or_null) {
                const char *s = json_object_to_json_string_ext(body_or_null,
                                                               JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
                if (!s || asprintf(&r->auth_body, "%s\n", s) < 0) {
                        r->auth_body = NULL;
                        return -ENOMEM;
                }
        }
        r->auth_status = status;
        return auth_propose_next(r);
}

static int handle_auth_enable(ApiRequest *r, const char *method) {
        Store *st = req_store(r);
        json_object *o;
        int k;

        if (!method_allowed(method, "GET,PUT,DELETE"))
                return reply_method_not_allowed(r, "GET,PUT,DELETE");
        /* hasWriteRootAccess() reads nothing for a GET; then enableDisable() reads /2/enabled (isEnabled),
         * and EnableAuth()/DisableAuth() once more */
        if (streq(method, "GET")) {
                const char *body = auth_enabled_counted(st) ? "{\"enabled\":true}\n" : "{\"enabled\":false}\n";
                add_cluster_id(r);
                return reply(r, 200, CONTENT_TYPE_JSON, body, strlen(body));
        }
        if (!auth_api_has_root_access(r))
                return auth_api_reply_no_auth(r);
        (void) auth_enabled_counted(st);
        /* updateResource(): /2/enabled is an update (ensureAuthDirectories() made it) */
        if (streq(method, "DELETE")) {
                if (!auth_enabled_counted(st))
                        return reply_message(r, 409, "auth: already disabled", true);
                k = auth_add_write(r, "enabled", NULL, "false", 1, 0);
                return k < 0 ? k : auth_start(r, 200, NULL);
        }
        if (auth_enabled_counted(st))
                return reply_message(r, 409, "auth: already enabled", true);
        o = auth_get_user_counted(st, AUTH_ROOT);
        if (!o)
                return reply_message(r, 409, "auth: No root user available, please create one", true);
        json_object_put(o);
        o = auth_get_role_counted(st, AUTH_GUEST);
        if (!o) {
                /* etcd2 creates the guest role with full access first */
                _cleanup_(json_object_putp) json_object *g = auth_role_new_full(AUTH_GUEST);
                const char *s = g ? json_object_to_json_string_ext(g, JSON_C_TO_STRING_PLAIN |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
                if (!s)
                        return -ENOMEM;
                k = auth_add_write(r, "roles", AUTH_GUEST, s, 0, 0);
                if (k < 0)
                        return k;
                r->auth_exists_msg = strdup("auth: Role guest already exists.");
        }
        json_object_put(o);
        k = auth_add_write(r, "enabled", NULL, "true", 1, 0);
        return k < 0 ? k : auth_start(r, 200, NULL);
}

/* The answers mix two etcd versions, so that every v2 client tool reads them (the lead's decision):
 *  - lists as etcd 3.4 (etcdserver/api/v2http): {"users":[userWithRoles]}, {"roles":[role objects]},
 *    null when none. etcd 2.3.8 listed names ({"users":["bob"]}), which `ETCDCTL_API=2 etcdctl user list`
 *    and `role list` of 3.4 cannot read ("cannot unmarshal string into ... userListEntry").
 *  - one user as etcd 2.3.8 (etcdserver/etcdhttp forUser()): the stored user without its password,
 *    {"user":"bob","roles":["rw"]}, roles null when none, a granted role that does not exist listed
 *    as it is. etcd 3.4 answers role objects (and 404 for a missing role), which python-etcd's
 *    EtcdUser.read() cannot read; etcdctl's `user get` reads both. */

/* userWithRoles of 3.4's list: {"user","roles":[role objects]}, roles left out when there are none
 * (omitempty); a granted role that does not exist is left out. */
static json_object *user_with_roles(Store *st, json_object *u) {
        json_object *out = json_object_new_object(), *roles = json_object_object_get(u, "roles"), *list = NULL;

        if (!out)
                return NULL;
        json_object_object_add(out, "user", json_object_get(json_object_object_get(u, "user")));
        for (size_t i = 0; roles && i < json_object_array_length(roles); i++) {
                const char *name = json_object_get_string(json_object_array_get_idx(roles, i));
                json_object *role = auth_get_role_counted(st, name);

                if (!role)
                        continue;
                if (!list)
                        list = json_object_new_array();
                json_object_array_add(list, role);
        }
        if (list)
                json_object_object_add(out, "roles", list);
        return out;
}

/* encoding/json's type checks for a string and a []string field: null fits both (and a null element). */
static bool go_string_fits(json_object *v) {
        return !v || json_object_is_type(v, json_type_string);
}

static bool go_strings_fit(json_object *v) {
        if (!v)
                return true;
        if (!json_object_is_type(v, json_type_array))
                return false;
        for (size_t i = 0; i < json_object_array_length(v); i++)
                if (!go_string_fits(json_object_array_get_idx(v, i)))
                        return false;
        return true;
}

/* Permissions{KV RWPermission{Read, Write []string}}, as a struct or through a pointer */
static bool go_permissions_fit(json_object *v) {
        if (!v)
                return true;
        if (!json_object_is_type(v, json_type_object))
                return false;
        json_object_object_foreach(v, k, kv) {
                if (!kv || !go_json_key_matches(k, "kv"))
                        continue;
                if (!json_object_is_type(kv, json_type_object))
                        return false;
                json_object_object_foreach(kv, k2, l)
                        if ((go_json_key_matches(k2, "read") || go_json_key_matches(k2, "write")) && !go_strings_fit(l))
                                return false;
        }
        return true;
}

/* Whether Decode() into v2auth.User or v2auth.Role takes the object without an UnmarshalTypeError: every
 * member that names a field (in any case, as go_json_field()) must fit its type. */
static bool auth_body_fits(json_object *o, bool role) {
        json_object_object_foreach(o, k, v) {
                bool ok = true;

                if (role) {
                        if (go_json_key_matches(k, "role"))
                                ok = go_string_fits(v);
                        else if (go_json_key_matches(k, "permissions") || go_json_key_matches(k, "grant") ||
                                 go_json_key_matches(k, "revoke"))
                                ok = go_permissions_fit(v);
                } else {
                        if (go_json_key_matches(k, "user") || go_json_key_matches(k, "password"))
                                ok = go_string_fits(v);
                        else if (go_json_key_matches(k, "roles") || go_json_key_matches(k, "grant") ||
                                 go_json_key_matches(k, "revoke"))
                                ok = go_strings_fit(v);
                }
                if (!ok)
                        return false;
        }
        return true;
}

/* The request body as Go's json.Unmarshal into the struct would take it: an object, else NULL. */
static json_object *auth_body_object(ApiRequest *r) {
        json_object *o;

        _cleanup_free_ char *err = NULL;
        enum json_tokener_error jerr;
        bool oom;

        if (r->http->body_too_large)
                return NULL;
        /* json.Decoder.Decode(): Go's syntax rules (json-c takes trailing commas, control characters),
         * for the first value only; a null leaves the struct empty */
        err = go_json_syntax_error(r->http->body.data ?: "", r->http->body.len, &oom);
        if (oom || (err && !strstr(err, "after top-level value")))
                return NULL;
        o = json_tokener_parse_verbose(r->http->body.data ?: "", &jerr);
        if (!o && jerr == json_tokener_success)
                return json_object_new_object();
        if (o && (!json_object_is_type(o, json_type_object) ||
                  !auth_body_fits(o, strneq(r->http->uri, "/v2/auth/roles/", 15)))) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

/* Fields of request bodies are looked up as encoding/json matches them (go_json_field()): any case, the
 * last such key; the objects stored by us hold exact names only, so they read the same. */
static bool json_strings_empty(json_object *o, const char *key) {
        json_object *v = go_json_field(o, key, true);
        return !v || !json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0;
}

/* Permissions.IsEmpty(): nil, or no read and no write patterns. */
static bool json_perms_empty(json_object *o, const char *key) {
        json_object *p = go_json_field(o, key, !streq(key, "permissions")), *kv;

        if (!p || !json_object_is_type(p, json_type_object))
                return true;
        kv = go_json_field(p, "kv", false);
        return !kv || (json_strings_empty(kv, "read") && json_strings_empty(kv, "write"));
}

static const char *json_str(json_object *o, const char *key) {
        json_object *v = go_json_field(o, key, false);
        return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
}

static int user_reply_object(json_object *u, json_object **ret) {
        json_object *o = json_object_new_object();

        if (!o)
                return -ENOMEM;
        json_object_object_add(o, "user", json_object_get(json_object_object_get(u, "user")));
        json_object_object_add(o, "roles", json_object_get(json_object_object_get(u, "roles")));
        *ret = o;
        return 0;
}

/* GET /v2/auth/users and /v2/auth/roles: as etcd 3.4 answers them, {"users": [user with its role
 * objects, ...]} and {"roles": [role, ...]}, null when there are none (etcdctl's `user list` and `role list`
 * read these objects; 2.3.8 answered names). */
static int reply_auth_list(ApiRequest *r, const char *method, const char *kind) {
        _cleanup_(json_object_putp) json_object *out = NULL;
        _cleanup_strv_free_ char **names = NULL;
        bool roles = streq(kind, "roles");
        Store *st = req_store(r);
        json_object *list = NULL;

        if (!streq(method, "GET"))
                return reply_method_not_allowed(r, "GET");
        if (!auth_api_has_root_access(r))
                return auth_api_reply_no_auth(r);
        /* AllUsers()/AllRoles() read /2/users or /2/roles, then each one is read */
        auth_count_read(st, kind, NULL);
        names = auth_list(st, kind, roles);
        out = json_object_new_object();
        if (!names || !out)
                return -ENOMEM;
        STRV_FOREACH(n, names) {
                json_object *item;

                if (roles)
                        item = auth_get_role_counted(st, *n);
                else {
                        _cleanup_(json_object_putp) json_object *u = auth_get_user_counted(st, *n);

                        if (!u)
                                continue;
                        item = user_with_roles(st, u);
                        if (!item) {
                                json_object_put(list);
                                return -ENOMEM;
                        }
                }
                if (!item)
                        continue;
                if (!list)
                        list = json_object_new_array();
                json_object_array_add(list, item);
        }
        json_object_object_add(out, kind, list);
        return reply_json_object(r, 200, out);
}

static int handle_auth_users(ApiRequest *r, const char *method, const char *name) {
        _cleanup_(json_object_putp) json_object *in = NULL, *old = NULL, *nu = NULL, *out = NULL;
        _cleanup_free_ char *msg = NULL;
        Store *st = req_store(r);
        unsigned status;
        int k;

        if (!name)
                return reply_auth_list(r, method, "users");

        if (!method_allowed(method, "GET,PUT,DELETE"))
                return reply_method_not_allowed(r, "GET,PUT,DELETE");
        if (!auth_api_has_root_access(r))
                return auth_api_reply_no_auth(r);

        if (asprintf(&msg, "auth: User %s does not exist.", name) < 0)
                return -ENOMEM;
        old = auth_get_user(st, name);

        if (streq(method, "GET")) {
                json_object *roles = json_object_object_get(old, "roles");

                /* 3.4's forUser() reads the user, then its roles up to the first one missing */
                auth_count_read(st, "users", name);
                if (!old)
                        return reply_message(r, 404, msg, true);
                for (size_t i = 0; roles && i < json_object_array_length(roles); i++) {
                        const char *role = json_object_get_string(json_object_array_get_idx(roles, i));
                        _cleanup_(json_object_putp) json_object *o = auth_get_role_counted(st, role);

                        if (!o)
                                break;
                }
                /* 2.3.8: the stored user, u.Password = "" (omitempty) */
                if (user_reply_object(old, &out) < 0)
                        return -ENOMEM;
                return reply_json_object(r, 200, out);
        }

        if (streq(method, "DELETE")) {
                if (auth_enabled_counted(st) && streq(name, AUTH_ROOT))
                        return reply_message(r, 403, "auth: Cannot delete root user while auth is enabled.", true);
                free(msg);
                if (asprintf(&msg, "auth: User %s does not exist", name) < 0)
                        return -ENOMEM;
                k = auth_add_write(r, "users", name, NULL, 1, 0);
                if (k < 0)
                        return k;
                r->auth_missing_msg = TAKE_PTR(msg);
                return auth_start(r, 200, NULL);
        }

        /* PUT */
        in = auth_body_object(r);
        if (!in)
                return reply_message(r, 400, "Invalid JSON in request body.", true);
        if (!streq(json_str(in, "user"), name))
                return reply_message(r, 400, "User JSON name does not match the name in the URL", true);

        if (json_strings_empty(in, "grant") && json_strings_empty(in, "revoke") &&
            (!json_strings_empty(in, "roles") || !old)) {
                /* CreateUser(): with roles given (answered 200, as etcd2 does), or CreateOrUpdateUser()
                 * for a user that does not exist yet (201) */
                const char *pw = json_str(in, "password");
                _cleanup_free_ char *hash = NULL;
                json_object *roles = go_json_field(in, "roles", true);

                /* CreateOrUpdateUser() first reads the user (quorum) */
                if (json_strings_empty(in, "roles"))
                        auth_count_read(st, "users", name);
                if (isempty(pw)) {
                        free(msg);
                        if (asprintf(&msg, "auth: Cannot create user %s with an empty password", name) < 0)
                                return -ENOMEM;
                        return reply_message(r, 400, msg, true);
                }
                nu = json_object_new_object();
                if (!nu)
                        return -ENOMEM;
                /* auth_api_prepare() made it on the worker thread */
                hash = r->auth_prehash ? strdup(r->auth_prehash) : NULL;
                if (!hash && auth_hash_password(pw, &hash) < 0)
                        return reply_message(r, 500, "Internal Server Error", true);
                json_object_object_add(nu, "user", json_object_new_string(name));
                json_object_object_add(nu, "password", json_object_new_string(hash));
                if (roles && json_object_is_type(roles, json_type_array))
                        json_object_object_add(nu, "roles", json_object_get(roles));
                else
                        json_object_object_add(nu, "roles", NULL);
                if (streq(name, AUTH_ROOT) && !auth_user_has_role(nu, AUTH_ROOT)) {
                        json_object *rl = json_object_object_get(nu, "roles");
                        if (!rl) {
                                rl = json_object_new_array();
                                json_object_object_add(nu, "roles", rl);
                        }
                        json_object_array_add(rl, json_object_new_string(AUTH_ROOT));
                }
                status = !json_strings_empty(in, "roles") ? 200 : 201;
                free(msg);
                if (asprintf(&msg, "auth: User %s already exists.", name) < 0)
                        return -ENOMEM;
                r->auth_exists_msg = TAKE_PTR(msg);
                k = auth_add_write(r, "users", name, json_object_to_json_string_ext(nu, JSON_C_TO_STRING_PLAIN |
                                                                                   JSON_C_TO_STRING_NOSLASHESCAPE), 0, 0);
        } else {
                if (!json_strings_empty(in, "roles") &&
                    (!json_strings_empty(in, "grant") || !json_strings_empty(in, "revoke")))
                        return reply_message(r, 400, "User JSON contains both roles and grant/revoke", true);
                /* UpdateUser() reads the user (quorum), after CreateOrUpdateUser() did without grant/revoke */
                if (json_strings_empty(in, "grant") && json_strings_empty(in, "revoke"))
                        auth_count_read(st, "users", name);
                auth_count_read(st, "users", name);
                if (!old)   /* getUser()'s error: UpdateUser()'s own "doesn't exist" is never reached */
                        return reply_message(r, 404, msg, true);
                free(msg);
                msg = NULL;
                status = auth_user_merge(old, in, r->auth_prehash, &nu, &msg);
                k = auth_add_update(r, "users", name, old, nu, status, msg,
                                    "auth: User not updated. Use grant/revoke/password to update the user.");
                if (k <= 0)
                        return k;
                status = 200;
        }
        if (k < 0)
                return k;
        if (user_reply_object(nu, &out) < 0)
                return -ENOMEM;
        return auth_start(r, status, out);
}

static int handle_auth_roles(ApiRequest *r, const char *method, const char *name) {
        _cleanup_(json_object_putp) json_object *in = NULL, *old = NULL, *nu = NULL;
        _cleanup_free_ char *msg = NULL;
        Store *st = req_store(r);
        unsigned status;
        int k;

        if (!name)
                return reply_auth_list(r, method, "roles");

        if (!method_allowed(method, "GET,PUT,DELETE"))
                return reply_method_not_allowed(r, "GET,PUT,DELETE");
        if (!auth_api_has_root_access(r))
                return auth_api_reply_no_auth(r);

        if (streq(method, "GET")) {
                old = auth_get_role_counted(st, name);
                if (!old) {
                        if (asprintf(&msg, "auth: Role %s does not exist.", name) < 0)
                                return -ENOMEM;
                        return reply_message(r, 404, msg, true);
                }
                return reply_json_object(r, 200, old);
        }

        if (streq(name, AUTH_ROOT) && streq(method, "DELETE"))
                return reply_message(r, 403, "auth: Cannot modify role root: is root role.", true);
        if (asprintf(&msg, "auth: Role %s doesn't exist.", name) < 0)
                return -ENOMEM;
        if (streq(method, "DELETE")) {
                k = auth_add_write(r, "roles", name, NULL, 1, 0);
                if (k < 0)
                        return k;
                r->auth_missing_msg = TAKE_PTR(msg);
                return auth_start(r, 200, NULL);
        }

        /* PUT */
        in = auth_body_object(r);
        if (!in)
                return reply_message(r, 400, "Invalid JSON in request body.", true);
        if (!streq(json_str(in, "role"), name))
                return reply_message(r, 400, "Role JSON name does not match the name in the URL", true);

        if (json_perms_empty(in, "grant") && json_perms_empty(in, "revoke")) {
                /* CreateRole(): the role as given, answered as given */
                json_object *p = go_json_field(in, "permissions", false), *kv = go_json_field(p, "kv", false);
                json_object *read = go_json_field(kv, "read", true);
                json_object *write = go_json_field(kv, "write", true);

                if (streq(name, AUTH_ROOT))
                        return reply_message(r, 403, "auth: Cannot modify role root: is root role.", true);
                nu = json_object_new_object();
                p = json_object_new_object();
                kv = json_object_new_object();
                if (!nu || !p || !kv) {
                        json_object_put(p);
                        json_object_put(kv);
                        return -ENOMEM;
                }
                json_object_object_add(kv, "read", json_object_get(read));
                json_object_object_add(kv, "write", json_object_get(write));
                json_object_object_add(p, "kv", kv);
                json_object_object_add(nu, "role", json_object_new_string(name));
                json_object_object_add(nu, "permissions", p);
                free(msg);
                if (asprintf(&msg, "auth: Role %s already exists.", name) < 0)
                        return -ENOMEM;
                r->auth_exists_msg = TAKE_PTR(msg);
                status = 201;
                k = auth_add_write(r, "roles", name, json_object_to_json_string_ext(nu, JSON_C_TO_STRING_PLAIN |
                                                                                   JSON_C_TO_STRING_NOSLASHESCAPE), 0, 0);
        } else {
                if (!json_perms_empty(in, "permissions"))
                        return reply_message(r, 400, "Role JSON contains both permissions and grant/revoke", true);
                if (streq(name, AUTH_ROOT))
                        return reply_message(r, 403, "auth: Cannot modify role root: is root role.", true);
                old = auth_get_role_counted(st, name);
                if (!old) {
                        /* getRole()'s error: UpdateRole()'s own "doesn't exist" is never reached */
                        free(msg);
                        if (asprintf(&msg, "auth: Role %s does not exist.", name) < 0)
                                return -ENOMEM;
                        return reply_message(r, 404, msg, true);
                }
                free(msg);
                msg = NULL;
                status = auth_role_merge(old, in, &nu, &msg);
                k = auth_add_update(r, "roles", name, old, nu, status, msg,
                                    "auth: Role not updated. Use grant/revoke to update the role.");
                if (k <= 0)
                        return k;
                status = 200;
        }
        if (k < 0)
                return k;
        return auth_start(r, status, nu);
}

/* capabilityHandler(authCapability) of 2.3.8: the auth endpoints answer only once the cluster version is
 * decided and is one that has auth (2.1, 2.2, 2.3); before, during a rolling upgrade from 2.0 or while
 * a member that never saw the version recorded has no quorum, they answer 500. Our cluster version is
 * the one the first leader records at /0/version (what /version answers as etcdcluster). */
static bool auth_capable(Store *st) {
        const StoreNode *n = store_lookup(st, "/0/version");
        const char *v;
        char buf[32];
        unsigned major, minor;
        size_t l;

        if (!n || store_node_is_dir(n))
                return false;
        v = store_node_value(n, &l);
        if (!v || l == 0 || l >= sizeof buf)
                return false;
        memcpy(buf, v, l);
        buf[l] = 0;
        if (sscanf(buf, "%u.%u", &major, &minor) != 2)
                return false;
        return major == 2 && minor >= 1 && minor <= 3;
}

int auth_api_handle(ApiRequest *r, const char *method, const char *what) {
        _cleanup_free_ char *name = NULL;
        size_t l;

        if (!auth_capable(req_store(r)))
                return reply_message(r, 500, "Not capable of accessing auth feature during rolling upgrades.", false);
        if (streq(what, "enable"))
                return handle_auth_enable(r, method);
        if (streq(what, "users"))
                return handle_auth_users(r, method, NULL);
        if (streq(what, "roles"))
                return handle_auth_roles(r, method, NULL);

        /* handleUsers()/handleRoles(): path.Clean() of "/users/<rest>" split on "/": "/users/" (and so
         * "/users" again) is the list, "/users/<name>/" the user, anything deeper 400 "Invalid path"
         * (before the method is checked). The route has sent other unclean paths to the clean one. */
        name = strdup(what + 6);
        if (!name)
                return -ENOMEM;
        l = strlen(name);
        if (l > 0 && name[l - 1] == '/')
                name[--l] = 0;
        if (strchr(name, '/'))
                return reply_message(r, 400, "Invalid path", false);
        if (strneq(what, "users/", 6))
                return handle_auth_users(r, method, l > 0 ? name : NULL);
        return handle_auth_roles(r, method, l > 0 ? name : NULL);
}

static void on_auth_job_done(AuthJob *j, void *userdata) {
        ApiRequest *r = userdata;
        const char *hash = auth_job_hash(j);

        r->auth_job = NULL;
        if (r->auth_hashed && !r->auth_prehash && hash) {
                r->auth_prehash = strdup(hash);
                if (!r->auth_prehash) {
                        reply_oom(r->http);
                        return;
                }
        } else if (!r->auth_hashed) {
                /* the credentials check */
                if (!auth_job_ok(j))
                        r->auth_bad = true;
        }
        api_handle(r->http);
}

static int auth_submit(ApiRequest *r, const char *password, const char *hash) {
        ClientApi *a = r->api;
        int k;

        if (!a->auth_worker) {
                _cleanup_(sd_event_unrefp) sd_event *e = NULL;

                k = sd_event_default(&e);
                if (k < 0)
                        return k;
                k = auth_worker_new(e, &a->auth_worker);
                if (k < 0)
                        return k;
        }
        return auth_worker_submit(a->auth_worker, password, hash, on_auth_job_done, r, &r->auth_job);
}

/* The bcrypt work a request needs, done on the worker thread before it is routed: the check of Basic
 * credentials not in the cache (when auth is on), then the hash of a new password for a PUT of a user by
 * someone allowed to make it. Returns true if the request waits for a job (api_handle() runs again when
 * it is done). */
bool auth_api_prepare(ApiRequest *r) {
        Store *st = req_store(r);
        const char *h;
        int k;

        if (r->api->peer || streq(r->http->method, "OPTIONS"))
                return false;

        if (!r->auth_checked) {
                _cleanup_free_ char *name = NULL, *password = NULL;
                _cleanup_(json_object_putp) json_object *u = NULL;
                const char *hash;

                r->auth_checked = true;
                h = req_header(r, "Authorization");
                if (auth_enabled(st) && !isempty(h) && auth_parse_basic(h, &name, &password) &&
                    (u = auth_get_user(st, name))) {
                        hash = json_object_get_string(json_object_object_get(u, "password"));
                        if (!auth_cache_lookup(name, hash, password)) {
                                k = auth_submit(r, password, hash);
                                explicit_bzero(password, strlen(password));
                                if (k >= 0)
                                        return true;
                                /* too many checks waiting: refused as bad credentials */
                                log_debug("auth: cannot check credentials now: %s", strerror(-k));
                                r->auth_bad = true;
                        }
                }
                if (password)
                        explicit_bzero(password, strlen(password));
        }

        if (!r->auth_hashed) {
                _cleanup_(json_object_putp) json_object *in = NULL;
                json_object *pw;

                r->auth_hashed = true;
                if (streq(r->http->method, "PUT") && strneq(r->http->uri, "/v2/auth/users/", 15) &&
                    has_root_access(r, false) && (in = auth_body_object(r)) &&
                    (pw = go_json_field(in, "password", false)) && json_object_is_type(pw, json_type_string) &&
                    !isempty(json_object_get_string(pw))) {
                        k = auth_submit(r, json_object_get_string(pw), NULL);
                        if (k >= 0)
                                return true;
                        /* hashed on the loop then, as a last resort */
                        log_debug("auth: cannot hash on the worker: %s", strerror(-k));
                }
        }
        return false;
}

/* Forgets the writes planned for the request (and their messages), to make them again. */
static void auth_api_request_reset(ApiRequest *r) {
        for (size_t i = 0; i < r->n_auth_writes; i++) {
                free(r->auth_writes[i].path);
                free(r->auth_writes[i].value);
        }
        r->n_auth_writes = r->auth_next = 0;
        r->auth_body = mfree_ptr(r->auth_body);
        r->auth_exists_msg = mfree_ptr(r->auth_exists_msg);
        r->auth_missing_msg = mfree_ptr(r->auth_missing_msg);
}

void auth_api_request_done(ApiRequest *r) {
        auth_api_request_reset(r);
        auth_job_cancel(r->auth_job);
        r->auth_job = NULL;
        r->auth_prehash = mfree_ptr(r->auth_prehash);
}
