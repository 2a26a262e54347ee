/* SPDX-License-Identifier: Apache-2.0 */
/* auth.c - v2 auth as etcd 2.3.8's etcdserver/auth: users, roles and the enabled flag in the store. */

/*
 * The model only: what the store holds under /2 and the rules etcd2 applies to it. Writes are the
 * caller's (client-api.c proposes them through Raft, so every member applies the same ones in the same
 * order and a restart replays them); reads come from the local store, as etcd2's non-quorum reads do.
 *
 * Users and roles are kept as the JSON etcd2 stores (its Go structs marshalled), and handled here as
 * json-c objects so that Go's distinctions survive: a nil slice is `null`, an empty one `[]`, and an
 * update that changes nothing (reflect.DeepEqual) is refused, which depends on exactly that.
 *
 * Passwords: bcrypt through libxcrypt's crypt_r() ($2b$, cost 10 like Go's bcrypt.DefaultCost; Go's
 * $2a$ hashes verify too). A bcrypt costs ~50-100 ms, far too much for the event loop on every request,
 * so verified credentials are remembered as an HMAC-SHA256 (random per-process key) of user, stored hash
 * and password: a client that repeats good credentials costs one HMAC. Wrong passwords are not cached.
 * The bcrypt itself runs on auth-worker.c's thread; the cache is touched on the loop thread only.
 */

#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "auth.h"
#include "http-util.h"
#include "macro.h"

#define BCRYPT_COST 10
#define CACHE_SIZE 256
#define DIGEST_SIZE 32

static bool strv_contains_str(char **l, const char *s) {
        STRV_FOREACH(i, l)
                if (streq(*i, s))
                        return true;
        return false;
}

/* A []string field the way encoding/json reads it: null/absent = nil (NULL), else an array of strings.
 * Returns -EINVAL if it is something else. */
static int strings_field(json_object *parent, const char *key, json_object **ret) {
        json_object *v = NULL, *out;

        *ret = NULL;
        v = go_json_field(parent, key, true);
        if (!v)
                return 0;
        if (!json_object_is_type(v, json_type_array))
                return -EINVAL;
        out = json_object_new_array();
        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < json_object_array_length(v); i++) {
                json_object *s = json_object_array_get_idx(v, i);
                if (!s || !json_object_is_type(s, json_type_string)) {
                        json_object_put(out);
                        return -EINVAL;
                }
                json_object_array_add(out, json_object_get(s));
        }
        *ret = out;
        return 0;
}

static const char *str_field(json_object *o, const char *key) {
        json_object *v;

        v = go_json_field(o, key, false);
        if (!v || !json_object_is_type(v, json_type_string))
                return "";
        return json_object_get_string(v);
}

/* count: as a store Get of etcd2's, found or not (auth_count_read()) */
static json_object *parse_stored(Store *st, const char *path, bool count) {
        const StoreNode *n = store_lookup(st, path);
        const char *v;
        size_t l;

        if (count)
                store_count_get(st, n);
        if (!n || store_node_is_dir(n))
                return NULL;
        v = store_node_value(n, &l);
        return v ? json_tokener_parse(v) : NULL;
}

uint64_t auth_modified_index(Store *st, const char *what, const char *name) {
        _cleanup_free_ char *path = NULL;
        const StoreNode *n;

        if (asprintf(&path, AUTH_PREFIX "/%s/%s", what, name) < 0)
                return 0;
        n = store_lookup(st, path);
        return n && !store_node_is_dir(n) ? store_node_modified_index(n) : 0;
}

bool auth_enabled(Store *st) {
        const StoreNode *n = store_lookup(st, AUTH_PREFIX "/enabled");
        const char *v;
        size_t l;

        if (!n || store_node_is_dir(n))
                return false;
        v = store_node_value(n, &l);
        return v && l == 4 && memcmp(v, "true", 4) == 0;
}

bool auth_enabled_counted(Store *st) {
        store_count_get(st, store_lookup(st, AUTH_PREFIX "/enabled"));
        return auth_enabled(st);
}

void auth_count_read(Store *st, const char *what, const char *name) {
        _cleanup_free_ char *path = NULL;

        /* path.Join(StorePermsPrefix, res): "/users/" is read as /2/users */
        if (asprintf(&path, AUTH_PREFIX "/%s%s%s", what, name ? "/" : "", strempty(name)) < 0)
                return;
        store_count_get(st, store_lookup(st, path));
}

static bool strings_contain(json_object *a, const char *s) {
        for (size_t i = 0; a && i < json_object_array_length(a); i++)
                if (streq(json_object_get_string(json_object_array_get_idx(a, i)), s))
                        return true;
        return false;
}

/* A user normalized to etcd2's User struct: user, password, roles (null or array). */
static json_object *user_canon(json_object *in) {
        json_object *u = json_object_new_object(), *roles = NULL;

        if (!u)
                return NULL;
        if (strings_field(in, "roles", &roles) < 0) {
                json_object_put(u);
                return NULL;
        }
        json_object_object_add(u, "user", json_object_new_string(str_field(in, "user")));
        json_object_object_add(u, "password", json_object_new_string(str_field(in, "password")));
        json_object_object_add(u, "roles", roles);
        return u;
}

static json_object *get_user(Store *st, const char *name, bool count) {
        _cleanup_free_ char *path = NULL;
        json_object *raw, *u, *roles;

        if (asprintf(&path, AUTH_PREFIX "/users/%s", name) < 0)
                return NULL;
        raw = parse_stored(st, path, count);
        if (!raw)
                return NULL;
        u = user_canon(raw);
        json_object_put(raw);
        if (!u)
                return NULL;
        /* attachRootRole(): user root always has role root */
        if (streq(str_field(u, "user"), AUTH_ROOT)) {
                roles = json_object_object_get(u, "roles");
                if (!strings_contain(roles, AUTH_ROOT)) {
                        if (!roles) {
                                roles = json_object_new_array();
                                json_object_object_add(u, "roles", roles);
                        }
                        json_object_array_add(roles, json_object_new_string(AUTH_ROOT));
                }
        }
        return u;
}

json_object *auth_get_user(Store *st, const char *name) {
        return get_user(st, name, false);
}

json_object *auth_get_user_counted(Store *st, const char *name) {
        return get_user(st, name, true);
}

static json_object *role_build(const char *name, json_object *read, json_object *write) {
        json_object *r = json_object_new_object(), *p = json_object_new_object(), *kv = json_object_new_object();

        if (!r || !p || !kv) {
                json_object_put(r);
                json_object_put(p);
                json_object_put(kv);
                json_object_put(read);
                json_object_put(write);
                return NULL;
        }
        json_object_object_add(kv, "read", read);
        json_object_object_add(kv, "write", write);
        json_object_object_add(p, "kv", kv);
        json_object_object_add(r, "role", json_object_new_string(name));
        json_object_object_add(r, "permissions", p);
        return r;
}

/* Reads {"kv":{"read":[..],"write":[..]}} at parent[key]; *ret_present says whether it was non-null. */
static int perms_field(json_object *parent, const char *key, json_object **ret_read, json_object **ret_write,
                       bool *ret_present) {
        json_object *p = NULL, *kv = NULL;
        int r;

        *ret_read = *ret_write = NULL;
        *ret_present = false;
        /* Role.Permissions is a struct (a null leaves it), Grant and Revoke are pointers (a null clears) */
        p = go_json_field(parent, key, !streq(key, "permissions"));
        if (!p)
                return 0;
        if (!json_object_is_type(p, json_type_object))
                return -EINVAL;
        *ret_present = true;
        kv = go_json_field(p, "kv", false);
        if (!kv)
                return 0;
        if (!json_object_is_type(kv, json_type_object))
                return -EINVAL;
        r = strings_field(kv, "read", ret_read);
        if (r < 0)
                return r;
        r = strings_field(kv, "write", ret_write);
        if (r < 0) {
                json_object_put(*ret_read);
                *ret_read = NULL;
                return r;
        }
        return 0;
}

static json_object *role_canon(json_object *in) {
        json_object *read, *write;
        bool present;

        if (perms_field(in, "permissions", &read, &write, &present) < 0)
                return NULL;
        return role_build(str_field(in, "role"), read, write);
}

json_object *auth_role_new_full(const char *name) {
        json_object *read = json_object_new_array(), *write = json_object_new_array();

        json_object_array_add(read, json_object_new_string("/*"));
        json_object_array_add(write, json_object_new_string("/*"));
        return role_build(name, read, write);
}

static json_object *get_role(Store *st, const char *name, bool count) {
        _cleanup_free_ char *path = NULL;
        json_object *raw, *r;

        /* getRole() answers the built-in root role without reading the store */
        if (streq(name, AUTH_ROOT))
                return auth_role_new_full(AUTH_ROOT);
        if (asprintf(&path, AUTH_PREFIX "/roles/%s", name) < 0)
                return NULL;
        raw = parse_stored(st, path, count);
        if (!raw)
                return NULL;
        r = role_canon(raw);
        json_object_put(raw);
        return r;
}

json_object *auth_get_role(Store *st, const char *name) {
        return get_role(st, name, false);
}

json_object *auth_get_role_counted(Store *st, const char *name) {
        return get_role(st, name, true);
}

typedef struct NameList {
        char **names;
        size_t n;
} NameList;

static int list_push(NameList *l, const char *name) {
        char **t = reallocarray(l->names, l->n + 2, sizeof(char *));

        if (!t)
                return -ENOMEM;
        l->names = t;
        l->names[l->n] = strdup(name);
        if (!l->names[l->n])
                return -ENOMEM;
        l->names[++l->n] = NULL;
        return 0;
}

static int list_child(const StoreNode *child, void *userdata) {
        const char *k = store_node_key(child), *slash = strrchr(k, '/');

        return list_push(userdata, slash ? slash + 1 : k);
}

static int cmp_str(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

char **auth_list(Store *st, const char *what, bool with_root) {
        _cleanup_free_ char *path = NULL;
        NameList l = {};
        const StoreNode *n;

        l.names = calloc(1, sizeof(char *));
        if (!l.names || asprintf(&path, AUTH_PREFIX "/%s", what) < 0)
                return strv_free(l.names);
        if (with_root && list_push(&l, AUTH_ROOT) < 0)
                return strv_free(l.names);
        n = store_lookup(st, path);
        if (n && store_node_is_dir(n) && store_node_foreach_child(n, list_child, &l) < 0)
                return strv_free(l.names);
        qsort(l.names, l.n, sizeof(char *), cmp_str);
        return l.names;
}

/* --- passwords ----------------------------------------------------------------------------- */

int auth_hash_password(const char *password, char **ret) {
        char setting[CRYPT_GENSALT_OUTPUT_SIZE];
        struct crypt_data *cd;
        const char *h;
        char *s;

        if (!crypt_gensalt_rn("$2b$", BCRYPT_COST, NULL, 0, setting, sizeof setting))
                return -errno ?: -EINVAL;
        cd = calloc(1, sizeof(struct crypt_data));
        if (!cd)
                return -ENOMEM;
        h = crypt_r(password, setting, cd);
        if (!h || h[0] == '*') {
                free(cd);
                return -EINVAL;
        }
        s = strdup(h);
        explicit_bzero(cd, sizeof(struct crypt_data));
        free(cd);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static bool const_time_eq(const void *a, const void *b, size_t n) {
        const volatile unsigned char *x = a, *y = b;
        unsigned char d = 0;

        for (size_t i = 0; i < n; i++)
                d |= x[i] ^ y[i];
        return d == 0;
}

bool auth_check_password(const char *hash, const char *password) {
        struct crypt_data *cd;
        const char *h;
        bool ok;

        if (isempty(hash) || hash[0] != '$')
                return false;
        cd = calloc(1, sizeof(struct crypt_data));
        if (!cd)
                return false;
        h = crypt_r(password, hash, cd);
        ok = h && h[0] != '*' && strlen(h) == strlen(hash) && const_time_eq(h, hash, strlen(hash));
        explicit_bzero(cd, sizeof(struct crypt_data));
        free(cd);
        return ok;
}

static struct {
        bool keyed;
        uint8_t key[32];
        uint8_t digest[CACHE_SIZE][DIGEST_SIZE];
        bool used[CACHE_SIZE];
        unsigned next;
} cache;

static int cache_digest(const char *user, const char *hash, const char *password, uint8_t out[DIGEST_SIZE]) {
        size_t lu = strlen(user), lh = strlen(hash), lp = strlen(password);
        _cleanup_free_ char *buf = malloc(lu + lh + lp + 3);
        int r;

        if (!buf)
                return -ENOMEM;
        if (!cache.keyed) {
                if (getrandom(cache.key, sizeof cache.key, 0) != (ssize_t) sizeof cache.key)
                        return -EIO;
                cache.keyed = true;
        }
        memcpy(buf, user, lu + 1);
        memcpy(buf + lu + 1, hash, lh + 1);
        memcpy(buf + lu + lh + 2, password, lp + 1);
        r = gnutls_hmac_fast(GNUTLS_MAC_SHA256, cache.key, sizeof cache.key, buf, lu + lh + lp + 3, out);
        explicit_bzero(buf, lu + lh + lp + 3);
        return r < 0 ? -EIO : 0;
}

bool auth_cache_lookup(const char *user, const char *hash, const char *password) {
        uint8_t d[DIGEST_SIZE];
        bool hit = false;

        if (cache_digest(user, hash, password, d) < 0)
                return false;
        /* look at every slot: the time taken does not say which one matched */
        for (unsigned i = 0; i < CACHE_SIZE; i++)
                hit |= cache.used[i] && const_time_eq(cache.digest[i], d, DIGEST_SIZE);
        return hit;
}

void auth_cache_add(const char *user, const char *hash, const char *password) {
        uint8_t d[DIGEST_SIZE];

        if (cache_digest(user, hash, password, d) < 0)
                return;
        memcpy(cache.digest[cache.next], d, DIGEST_SIZE);
        cache.used[cache.next] = true;
        cache.next = (cache.next + 1) % CACHE_SIZE;
}

bool auth_check_password_cached(const char *user, const char *hash, const char *password) {
        if (auth_cache_lookup(user, hash, password))
                return true;
        if (!auth_check_password(hash, password))
                return false;
        auth_cache_add(user, hash, password);
        return true;
}

/* --- permissions --------------------------------------------------------------------------- */

static bool pattern_match(const char *pat, const char *key, bool recursive) {
        size_t l = strlen(pat);

        if (l == 0)
                return false;
        if (pat[l - 1] == '*')
                return strncmp(key, pat, l - 1) == 0;
        /* a recursive request needs a prefix pattern (prefixMatch) */
        return !recursive && streq(key, pat);
}

bool auth_role_has_access(json_object *role, const char *key, bool write, bool recursive) {
        json_object *p, *kv, *list;

        if (!role)
                return false;
        if (streq(str_field(role, "role"), AUTH_ROOT))
                return true;
        if (!json_object_object_get_ex(role, "permissions", &p) || !json_object_object_get_ex(p, "kv", &kv) ||
            !json_object_object_get_ex(kv, write ? "write" : "read", &list) || !list)
                return false;
        for (size_t i = 0; i < json_object_array_length(list); i++)
                if (pattern_match(json_object_get_string(json_object_array_get_idx(list, i)), key, recursive))
                        return true;
        return false;
}

bool auth_user_has_role(json_object *user, const char *role) {
        return strings_contain(json_object_object_get(user, "roles"), role);
}

/* --- Basic credentials ---------------------------------------------------------------------- */

static int b64_value(char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

/* Go's base64.StdEncoding.DecodeString: padded, no stray characters. */
static char *b64_decode(const char *s, size_t *ret_len) {
        size_t l = strlen(s), n = 0;
        char *out;

        if (l % 4 != 0)
                return NULL;
        out = malloc(l / 4 * 3 + 1);
        if (!out)
                return NULL;
        for (size_t i = 0; i < l; i += 4) {
                int v[4], pad = 0;

                for (int j = 0; j < 4; j++) {
                        if (s[i + j] == '=' && i + 4 == l && j >= 2) {
                                v[j] = 0;
                                pad++;
                                continue;
                        }
                        v[j] = pad ? -1 : b64_value(s[i + j]);
                        if (v[j] < 0) {
                                free(out);
                                return NULL;
                        }
                }
                out[n++] = (char) (v[0] << 2 | v[1] >> 4);
                if (pad < 2)
                        out[n++] = (char) ((v[1] & 15) << 4 | v[2] >> 2);
                if (pad < 1)
                        out[n++] = (char) ((v[2] & 3) << 6 | v[3]);
        }
        out[n] = 0;
        *ret_len = n;
        return out;
}

bool auth_parse_basic(const char *header, char **ret_user, char **ret_password) {
        _cleanup_free_ char *dec = NULL;
        char *colon;
        size_t l;

        if (!header || strncmp(header, "Basic ", 6) != 0)
                return false;
        dec = b64_decode(header + 6, &l);
        if (!dec || strlen(dec) != l)
                return false;
        colon = strchr(dec, ':');
        if (!colon)
                return false;
        *colon = 0;
        *ret_user = strdup(dec);
        *ret_password = strdup(colon + 1);
        explicit_bzero(dec, l);
        if (!*ret_user || !*ret_password) {
                free(*ret_user);
                free(*ret_password);
                return false;
        }
        return true;
}

/* --- merges --------------------------------------------------------------------------------- */

enum { DUP_ROLE, UNGRANTED_ROLE, DUP_READ, DUP_WRITE };

static int fail(char **ret_message, int what, const char *a, const char *b) {
        int r;

        switch (what) {
        case DUP_ROLE:
                r = asprintf(ret_message, "auth: Granting duplicate role %s for user %s", a, b);
                break;
        case UNGRANTED_ROLE:
                r = asprintf(ret_message, "auth: Revoking ungranted role %s for user %s", a, b);
                break;
        case DUP_READ:
                r = asprintf(ret_message, "auth: Granting duplicate read permission %s", a);
                break;
        default:
                r = asprintf(ret_message, "auth: Granting duplicate write permission %s", a);
        }
        if (r < 0)
                *ret_message = NULL;
        return 409;
}

/* A sorted copy of set `cur` (may be NULL) with `add` added and `del` removed; on a duplicate add
 * (dup_is_error) or a missing del (missing_is_error) returns the offending name in *ret_bad. */
static json_object *set_apply(json_object *cur, json_object *add, json_object *del, bool missing_is_error,
                              const char **ret_bad, bool *ret_dup) {
        _cleanup_strv_free_ char **l = calloc(1, sizeof(char *));
        size_t n = 0;
        json_object *out;

        *ret_bad = NULL;
        if (!l)
                return NULL;
#define PUSH(s) do { char **t = reallocarray(l, n + 2, sizeof(char *)); if (!t) return NULL; l = t; \
                     l[n] = strdup(s); if (!l[n]) return NULL; l[++n] = NULL; } while (0)
        for (size_t i = 0; cur && i < json_object_array_length(cur); i++) {
                const char *s = json_object_get_string(json_object_array_get_idx(cur, i));
                if (!strv_contains_str(l, s))
                        PUSH(s);
        }
        for (size_t i = 0; add && i < json_object_array_length(add); i++) {
                const char *s = json_object_get_string(json_object_array_get_idx(add, i));
                if (strv_contains_str(l, s)) {
                        *ret_bad = json_object_get_string(json_object_array_get_idx(add, i));
                        *ret_dup = true;
                        return NULL;
                }
                PUSH(s);
        }
#undef PUSH
        for (size_t i = 0; del && i < json_object_array_length(del); i++) {
                const char *s = json_object_get_string(json_object_array_get_idx(del, i));
                size_t j;

                for (j = 0; j < n && !streq(l[j], s); j++)
                        ;
                if (j == n) {
                        if (missing_is_error) {
                                *ret_bad = s;
                                *ret_dup = false;
                                return NULL;
                        }
                        continue;
                }
                free(l[j]);
                memmove(l + j, l + j + 1, (n - j) * sizeof(char *));
                n--;
        }
        qsort(l, n, sizeof(char *), cmp_str);
        out = json_object_new_array();
        for (size_t i = 0; out && i < n; i++)
                json_object_array_add(out, json_object_new_string(l[i]));
        return out;
}

unsigned auth_user_merge(json_object *old, json_object *in, const char *prehash, json_object **ret,
                         char **ret_message) {
        _cleanup_(json_object_putp) json_object *grant = NULL, *revoke = NULL;
        const char *user = str_field(old, "user"), *pw = str_field(in, "password"), *bad;
        json_object *u, *roles;
        bool dup;

        if (strings_field(in, "grant", &grant) < 0 || strings_field(in, "revoke", &revoke) < 0)
                return 400;
        roles = set_apply(json_object_object_get(old, "roles"), grant, revoke, true, &bad, &dup);
        if (!roles) {
                if (!bad)
                        return 500;
                return fail(ret_message, dup ? DUP_ROLE : UNGRANTED_ROLE, bad, user);
        }
        u = json_object_new_object();
        if (!u) {
                json_object_put(roles);
                return 500;
        }
        json_object_object_add(u, "user", json_object_new_string(user));
        if (!isempty(pw)) {
                _cleanup_free_ char *hash = prehash ? strdup(prehash) : NULL;
                if ((prehash && !hash) || (!prehash && auth_hash_password(pw, &hash) < 0)) {
                        json_object_put(u);
                        json_object_put(roles);
                        return 500;
                }
                json_object_object_add(u, "password", json_object_new_string(hash));
        } else
                json_object_object_add(u, "password", json_object_new_string(str_field(old, "password")));
        json_object_object_add(u, "roles", roles);
        *ret = u;
        return 0;
}

unsigned auth_role_merge(json_object *old, json_object *in, json_object **ret, char **ret_message) {
        json_object *oread, *owrite, *gread, *gwrite, *rread, *rwrite, *read, *write, *t;
        const char *bad;
        bool gp, rp, op, dup;

        if (perms_field(in, "grant", &gread, &gwrite, &gp) < 0)
                return 400;
        if (perms_field(in, "revoke", &rread, &rwrite, &rp) < 0) {
                json_object_put(gread);
                json_object_put(gwrite);
                return 400;
        }
        (void) perms_field(old, "permissions", &oread, &owrite, &op);
        read = oread;
        write = owrite;
        /* Permissions.Grant() then .Revoke(), each only if given; each makes both lists sorted sets */
        for (int step = 0; step < 2; step++) {
                bool given = step == 0 ? gp : rp;
                json_object *a_r = step == 0 ? gread : NULL, *a_w = step == 0 ? gwrite : NULL;
                json_object *d_r = step == 1 ? rread : NULL, *d_w = step == 1 ? rwrite : NULL;

                if (!given)
                        continue;
                t = set_apply(read, a_r, d_r, false, &bad, &dup);
                if (!t && bad) {
                        fail(ret_message, DUP_READ, bad, NULL);
                        goto conflict;
                }
                json_object_put(read);
                read = t;
                t = set_apply(write, a_w, d_w, false, &bad, &dup);
                if (!t && bad) {
                        fail(ret_message, DUP_WRITE, bad, NULL);
                        goto conflict;
                }
                json_object_put(write);
                write = t;
        }
        json_object_put(gread);
        json_object_put(gwrite);
        json_object_put(rread);
        json_object_put(rwrite);
        *ret = role_build(str_field(old, "role"), read, write);
        return *ret ? 0 : 500;

conflict:
        json_object_put(read);
        json_object_put(write);
        json_object_put(gread);
        json_object_put(gwrite);
        json_object_put(rread);
        json_object_put(rwrite);
        return 409;
}
