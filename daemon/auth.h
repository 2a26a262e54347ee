/* SPDX-License-Identifier: Apache-2.0 */
/* auth.h - v2 auth as etcd 2.3.8's etcdserver/auth: users, roles and the enabled flag in the store. */
#pragma once

#include <stdbool.h>

#include <json-c/json.h>

#include "store.h"

/* Where etcd2 keeps them (StorePermsPrefix): /2/users/<name>, /2/roles/<name>, /2/enabled. */
#define AUTH_PREFIX "/2"
#define AUTH_ROOT "root"
#define AUTH_GUEST "guest"

static inline void json_object_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

bool auth_enabled(Store *st);
/* etcd2's AuthEnabled() of the access checks: a store Get of /2/enabled, counted in /v2/stats/store
 * (getsFail while auth was never enabled) and etcd_debugging_store_reads_total. */
bool auth_enabled_counted(Store *st);

/* etcd2 reads its auth data with store Gets (requestResource()), each counted in /v2/stats/store
 * (getsSuccess or getsFail) and in /metrics' store reads. We read our copy of the same nodes without
 * going through a Get, and count each read etcd2 makes where it makes it: auth_count_read() counts a Get
 * of /2/<what>/<name> (/2/<what> if name is NULL), the _counted variants below count and read. */
void auth_count_read(Store *st, const char *what, const char *name);
json_object *auth_get_user_counted(Store *st, const char *name);
/* counts no read for the built-in root role, as getRole() makes none */
json_object *auth_get_role_counted(Store *st, const char *name);

/* The stored user as etcd2 unmarshals it ({"user","password","roles"}), the root role attached to
 * user root; NULL if absent or unreadable. */
json_object *auth_get_user(Store *st, const char *name);
/* The role ({"role","permissions":{"kv":{"read","write"}}}); root is built in. NULL if absent. */
json_object *auth_get_role(Store *st, const char *name);
/* The modifiedIndex of /2/<what>/<name> ("users" or "roles"), 0 if absent: updates compare-and-swap on
 * it (prevIndex), so that two concurrent updates through different members cannot lose one. */
uint64_t auth_modified_index(Store *st, const char *what, const char *name);
/* Sorted names under /2/users or /2/roles (with_root adds the built-in root role); NULL on OOM. */
char **auth_list(Store *st, const char *what, bool with_root);

/* The built-in roles as etcd2 defines them (read and write everything). */
json_object *auth_role_new_full(const char *name);

/* bcrypt ($2b$, cost 10 = Go's bcrypt.DefaultCost) via libxcrypt's crypt_r. */
int auth_hash_password(const char *password, char **ret);
/* Constant-time comparison of crypt_r(password, hash) with hash; also accepts Go's $2a$ hashes. */
bool auth_check_password(const char *hash, const char *password);

/* A cache of verified (user, stored hash, password) triples, so a client repeating its credentials
 * costs an HMAC, not a bcrypt, on the event loop. Keyed by an HMAC-SHA256 with a per-process key; a
 * changed stored hash (new password) misses. Loop thread only. */
bool auth_cache_lookup(const char *user, const char *hash, const char *password);
void auth_cache_add(const char *user, const char *hash, const char *password);
/* lookup, else a bcrypt right here (then cached): for callers that cannot wait for auth-worker.c */
bool auth_check_password_cached(const char *user, const char *hash, const char *password);

/* etcd2's Role.HasKeyAccess / HasRecursiveAccess: exact pattern, or prefix with a trailing '*'. */
bool auth_role_has_access(json_object *role, const char *key, bool write, bool recursive);
bool auth_user_has_role(json_object *user, const char *role);

/* Basic credentials from an Authorization header; false if absent or malformed. */
bool auth_parse_basic(const char *header, char **ret_user, char **ret_password);

/* Go-style set merges for PUT /v2/auth/{users,roles}: return an HTTP status (0 = fine) and a message. */
/* prehash: the bcrypt of in's password if already made (auth-worker.c), else it is made here. */
unsigned auth_user_merge(json_object *old, json_object *in, const char *prehash, json_object **ret,
                         char **ret_message);
unsigned auth_role_merge(json_object *old, json_object *in, json_object **ret, char **ret_message);
