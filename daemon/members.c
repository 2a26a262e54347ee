/* SPDX-License-Identifier: Apache-2.0 */
/* members.c - reads the members of the cluster from the store's /0/members tree, as etcd2 keeps them
 * (raftAttributes written when a member is added, attributes when it publishes itself). Shared by the
 * members API and the D-Bus objects. */

#include <errno.h>
#include <stdio.h>

#include <json-c/json.h>

#include "macro.h"
#include "members.h"


void members_free(Member *m, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(m[i].name);
                strv_free(m[i].peer_urls);
                strv_free(m[i].client_urls);
        }
        free(m);
}

static char **json_strv(json_object *o, const char *field) {
        json_object *a;
        char **l;
        size_t n;

        if (!o || !json_object_object_get_ex(o, field, &a) || !json_object_is_type(a, json_type_array))
                return calloc(1, sizeof(char *));
        n = json_object_array_length(a);
        l = calloc(n + 1, sizeof(char *));
        if (!l)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                const char *s = json_object_get_string(json_object_array_get_idx(a, i));
                l[i] = strdup(strempty(s));
                if (!l[i])
                        return strv_free(l);
        }
        return l;
}

static json_object *node_json(Store *st, const char *dir, const char *leaf) {
        _cleanup_(freep) char *path = NULL;
        const StoreNode *n;
        const char *v;
        size_t len;

        if (asprintf(&path, "%s/%s", dir, leaf) < 0)
                return NULL;
        n = store_lookup(st, path);
        if (!n || store_node_is_dir(n))
                return NULL;
        v = store_node_value(n, &len);
        if (!v)
                return NULL;

        /* values are byte strings, not necessarily NUL-terminated */
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return NULL;
        json_object *o = json_tokener_parse_ex(tok, v, (int) MIN(len, (size_t) INT32_MAX));
        json_tokener_free(tok);
        return o;
}

typedef struct MemberCollect {
        Store *store;
        Member *members;
        size_t n;
        int error;
} MemberCollect;

static int collect_member(const StoreNode *child, void *userdata) {
        MemberCollect *mc = userdata;
        const char *key = store_node_key(child), *base = strrchr(key, '/');
        json_object *ra, *at, *name;
        Member *t, *m;
        uint64_t id;
        char *end;

        if (!base || !store_node_is_dir(child))
                return 0;
        errno = 0;
        id = strtoull(base + 1, &end, 16);
        if (errno != 0 || *end || end == base + 1)
                return 0;

        t = reallocarray(mc->members, mc->n + 1, sizeof(Member));
        if (!t) {
                mc->error = -ENOMEM;
                return 1;
        }
        mc->members = t;
        m = &mc->members[mc->n++];
        *m = (Member) { .id = id };

        ra = node_json(mc->store, key, "raftAttributes");
        at = node_json(mc->store, key, "attributes");
        m->peer_urls = json_strv(ra, "peerURLs");
        m->client_urls = json_strv(at, "clientURLs");
        m->name = strdup(at && json_object_object_get_ex(at, "name", &name) ? strempty(json_object_get_string(name)) : "");
        json_object_put(ra);
        json_object_put(at);
        if (!m->peer_urls || !m->client_urls || !m->name) {
                mc->error = -ENOMEM;
                return 1;
        }
        return 0;
}

static int member_cmp(const void *a, const void *b) {
        const Member *x = a, *y = b;
        return x->id < y->id ? -1 : x->id > y->id;
}

int members_load(Store *st, Member **ret, size_t *ret_n) {
        MemberCollect mc = { .store = st };
        const StoreNode *dir = store_lookup(st, STORE_MEMBERS_PREFIX);

        if (dir && store_node_is_dir(dir))
                (void) store_node_foreach_child(dir, collect_member, &mc);
        if (mc.error < 0) {
                members_free(mc.members, mc.n);
                return mc.error;
        }
        if (mc.n > 1)
                qsort(mc.members, mc.n, sizeof(Member), member_cmp);
        *ret = mc.members;
        *ret_n = mc.n;
        return 0;
}

