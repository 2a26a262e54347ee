/* SPDX-License-Identifier: Apache-2.0 */
/* store.c - the etcd v2 tree: dirs, files, TTL, CAS/CAD, indexes, watchers, event history [no I/O]. */

/*
 * This is a re-implementation of the semantics of etcd v2.3's store package (store.go, node.go,
 * watcher_hub.go, event_history.go) and of etcdserver's applyRequest(), which maps a replicated
 * PUT/POST/DELETE/QGET/SYNC request onto store operations.
 *
 * Layout:
 * - Every node carries its full internal key in the same allocation ("/1/foo/bar"); directories keep
 *   their children in an open-addressing hash table (linear probing, backward-shift deletion), so a
 *   directory with 100k in-order keys costs O(1) per lookup. Sorted output sorts on demand.
 * - Nodes with a TTL sit in a binary min-heap ordered by (expiration, key); each node remembers its
 *   heap slot so that updates and removals are O(log n).
 * - Events are immutable and refcounted; their JSON is rendered exactly once, at creation, and is
 *   shared by the history ring, every watcher and the reply.
 * - Watchers hang off a hash table keyed by the watched path. Notifying an event looks up each
 *   ancestor of the event key (and, for deletes, every removed node), so the cost is O(depth +
 *   matching watchers), independent of the total number of watchers.
 *
 * Invariants: every successful mutation increments the index by exactly one and yields exactly one
 * event, so the history ring always holds a contiguous index range. Intermediate directories created
 * on the way to a new key carry the new index but have no event of their own, as in etcd.
 *
 * Where etcd 2.3.8 and the 3.4 v2 emulation (our reference oracle) differ, we follow 3.4: an "expire"
 * event of a directory carries "dir":true in its node.
 *
 * Deliberate difference from etcd: etcd notifies a stream watcher on a deleted key twice (once from
 * the removal callback, once from the ancestor walk); we deliver each event to a watcher at most once.
 */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "store.h"

/* etcd treats expiry times before 2000-01-01 as "no TTL" (they come from zero time.Time values). */
#define STORE_MIN_EXPIRE_USEC ((uint64_t) 946684800ULL * USEC_PER_SEC)
#define HEAP_NONE UINT32_MAX

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

#define NODE_RECORD_VERSION 1
/* 1: key and the rendered JSON; 2: key and the raw fields of the node and prevNode (both loadable) */
#define EVENT_RECORD_VERSION_JSON 1
#define EVENT_RECORD_VERSION 2

/* A file's value: immutable once made and shared by refcount between the node that holds it and the
 * events that mention it (as node or prevNode), so that a write of a 1 MiB value costs 1 MiB however
 * many events of the history refer to it. Code passes the data pointer around. */
typedef struct StoreValue {
        unsigned n_ref;
        char data[];
} StoreValue;

static StoreValue *value_of(char *data) {
        return (StoreValue *) (data - offsetof(StoreValue, data));
}

static char *value_new(const char *p, size_t len) {
        StoreValue *v;

        v = malloc(offsetof(StoreValue, data) + len + 1);
        if (!v)
                return NULL;
        v->n_ref = 1;
        if (len > 0)
                memcpy(v->data, p, len);
        v->data[len] = 0;
        return v->data;
}

static char *value_ref(char *data) {
        if (data)
                value_of(data)->n_ref++;
        return data;
}

static void value_unref(char *data) {
        if (data && --value_of(data)->n_ref == 0)
                free(value_of(data));
}

struct StoreNode {
        StoreNode *parent;
        StoreNode **children;    /* dirs only: hash table with children_cap slots (power of two) */
        char *value;             /* files only, a StoreValue's data: NUL-terminated, may contain NULs (value_len counts) */
        uint64_t created_index;
        uint64_t modified_index;
        uint64_t expiration_usec;/* 0 = permanent */
        uint32_t value_len;
        uint32_t n_children;
        uint32_t children_cap;
        uint32_t hash;           /* hash of the name, for the parent's table */
        uint32_t heap_idx;
        uint32_t n_ttl;          /* nodes of this subtree (itself included) in the TTL heap */
        uint32_t key_len;
        uint32_t name_off;       /* name = key + name_off */
        bool dir;
        char key[];
};

typedef struct WatchList WatchList;

struct StoreWatcher {
        Store *store;
        WatchList *list;
        StoreWatcher *prev, *next;
        StoreWatcher *zombie_next;
        bool recursive;
        bool stream;
        bool dead;
        uint64_t since_index;
        uint64_t last_index;     /* last event delivered, to deliver each event once */
        StoreWatchCallback callback;
        void *userdata;
};

struct WatchList {
        WatchList *bucket_next;
        StoreWatcher *head, *tail;
        uint32_t hash;
        size_t path_len;
        char path[];
};

typedef struct Buf {
        char *p;
        size_t n, cap;
        bool oom;
} Buf;

typedef struct StoreStats {
        uint64_t gets_success, gets_fail;
        uint64_t sets_success, sets_fail;
        uint64_t delete_success, delete_fail;
        uint64_t update_success, update_fail;
        uint64_t create_success, create_fail;
        uint64_t cas_success, cas_fail;
        uint64_t cad_success, cad_fail;
        uint64_t expire_count;
} StoreStats;

struct Store {
        StoreNode *root;
        uint64_t index;

        StoreSink sink;

        /* history ring */
        StoreEvent *history[STORE_HISTORY_MAX];
        unsigned hist_front, hist_n;
        uint64_t hist_start, hist_last;

        /* TTL heap */
        StoreNode **heap;
        size_t heap_n, heap_cap;

        /* Removed subtrees waiting to be freed, a few thousand nodes per store_apply()/store_get():
         * a recursive delete of 100k keys detaches them at once and frees them over the next calls
         * (linked through StoreNode.parent). */
        StoreNode *reap;

        /* watchers */
        WatchList **wl_buckets;
        size_t wl_cap, wl_n;
        unsigned n_watchers;
        unsigned dispatching;
        StoreWatcher *zombies;

        StoreStats stats;

        Buf buf;                 /* scratch buffer for rendering get results */
};

/* ---------------------------------------------------------------------------------------------- */
/* Errors, actions */

static const char *const error_messages[] = {
        [ETCD_ERROR_KEY_NOT_FOUND] = "Key not found",
        [ETCD_ERROR_TEST_FAILED] = "Compare failed",
        [ETCD_ERROR_NOT_FILE] = "Not a file",
        [ETCD_ERROR_NOT_DIR] = "Not a directory",
        [ETCD_ERROR_NODE_EXIST] = "Key already exists",
        [ETCD_ERROR_ROOT_RONLY] = "Root is read only",
        [ETCD_ERROR_DIR_NOT_EMPTY] = "Directory not empty",
        [ETCD_ERROR_UNAUTHORIZED] = "The request requires user authentication",
        [ETCD_ERROR_VALUE_REQUIRED] = "PrevValue is Required in POST form",
        [ETCD_ERROR_TTL_NAN] = "The given TTL in POST form is not a number",
        [ETCD_ERROR_INDEX_NAN] = "The given index in POST form is not a number",
        [ETCD_ERROR_INVALID_FIELD] = "Invalid field",
        [ETCD_ERROR_INVALID_FORM] = "Invalid POST form",
        [ETCD_ERROR_REFRESH_VALUE] = "Value provided on refresh",
        [ETCD_ERROR_REFRESH_TTL_REQUIRED] = "A TTL must be provided on refresh",
        [ETCD_ERROR_RAFT_INTERNAL] = "Raft Internal Error",
        [ETCD_ERROR_LEADER_ELECT] = "During Leader Election",
        [ETCD_ERROR_WATCHER_CLEARED] = "watcher is cleared due to etcd recovery",
        [ETCD_ERROR_EVENT_INDEX_CLEARED] = "The event in requested index is outdated and cleared",
};

const char *etcd_error_message(EtcdError e) {
        if ((int) e <= 0 || (size_t) e >= ELEMENTSOF(error_messages))
                return NULL;
        return error_messages[e];
}

int etcd_error_http_status(EtcdError e) {
        /* error/error.go errorStatus; everything else is 400 Bad Request (including 401!). */
        switch (e) {
        case ETCD_ERROR_KEY_NOT_FOUND:
                return 404;
        case ETCD_ERROR_NOT_FILE:
        case ETCD_ERROR_DIR_NOT_EMPTY:
                return 403;
        case ETCD_ERROR_UNAUTHORIZED:
                return 401;
        case ETCD_ERROR_TEST_FAILED:
        case ETCD_ERROR_NODE_EXIST:
                return 412;
        case ETCD_ERROR_RAFT_INTERNAL:
        case ETCD_ERROR_LEADER_ELECT:
                return 500;
        default:
                return 400;
        }
}

static const char *const action_table[_STORE_ACTION_MAX] = {
        [STORE_ACTION_GET] = "get",
        [STORE_ACTION_SET] = "set",
        [STORE_ACTION_CREATE] = "create",
        [STORE_ACTION_UPDATE] = "update",
        [STORE_ACTION_DELETE] = "delete",
        [STORE_ACTION_EXPIRE] = "expire",
        [STORE_ACTION_COMPARE_AND_SWAP] = "compareAndSwap",
        [STORE_ACTION_COMPARE_AND_DELETE] = "compareAndDelete",
};

const char *store_action_to_string(StoreAction a) {
        if ((int) a < 0 || a >= _STORE_ACTION_MAX)
                return NULL;
        return action_table[a];
}

/* ---------------------------------------------------------------------------------------------- */
/* Output buffer and JSON rendering as Go's encoding/json does it */

static bool buf_reserve(Buf *b, size_t extra) {
        size_t need, cap;
        char *p;

        if (b->oom)
                return false;
        need = b->n + extra + 1;
        if (need <= b->cap)
                return true;
        cap = MAX(b->cap * 2, (size_t) 256);
        while (cap < need)
                cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
                b->oom = true;
                return false;
        }
        b->p = p;
        b->cap = cap;
        return true;
}

static void buf_put(Buf *b, const void *p, size_t n) {
        if (!buf_reserve(b, n))
                return;
        memcpy(b->p + b->n, p, n);
        b->n += n;
        b->p[b->n] = 0;
}

static void buf_puts(Buf *b, const char *s) {
        buf_put(b, s, strlen(s));
}

static void buf_putc(Buf *b, char c) {
        if (!buf_reserve(b, 1))
                return;
        b->p[b->n++] = c;
        b->p[b->n] = 0;
}

static void buf_u64(Buf *b, uint64_t v) {
        char tmp[24];
        int l = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
        buf_put(b, tmp, l);
}

static void buf_i64(Buf *b, int64_t v) {
        char tmp[24];
        int l = snprintf(tmp, sizeof tmp, "%" PRIi64, v);
        buf_put(b, tmp, l);
}

static void buf_reset(Buf *b) {
        b->n = 0;
        b->oom = false;
        if (b->p)
                b->p[0] = 0;
}

/* Decodes one UTF-8 sequence as Go's utf8.DecodeRune: returns its length, or 0 if invalid (overlong
 * forms, surrogates, > U+10FFFF and truncated sequences are invalid). */
static size_t utf8_valid_len(const unsigned char *s, size_t n) {
        unsigned char c = s[0];
        uint32_t cp;
        size_t len;

        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
                len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
                len = 4, cp = c & 0x07;
        else
                return 0;
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                return 0;
        if (cp >= 0xd800 && cp <= 0xdfff)
                return 0;
        return len;
}

/* A JSON string, escaped as Go's encoder does with HTML escaping on: \" \\ \n \r \t, other control
 * characters and < > & as \u00XX, U+2028/U+2029 escaped, invalid UTF-8 bytes as \ufffd. */
static void buf_json_string(Buf *b, const char *str, size_t n) {
        static const char hex[] = "0123456789abcdef";
        const unsigned char *s = (const unsigned char *) str;
        size_t start = 0, i = 0;

        buf_putc(b, '"');
        while (i < n) {
                unsigned char c = s[i];

                if (c >= 0x80) {
                        size_t l = utf8_valid_len(s + i, n - i);

                        if (l == 0) {
                                buf_put(b, s + start, i - start);
                                buf_puts(b, "\\ufffd");
                                i++;
                                start = i;
                                continue;
                        }
                        if (l == 3 && c == 0xe2 && s[i + 1] == 0x80 &&
                            (s[i + 2] == 0xa8 || s[i + 2] == 0xa9)) {
                                buf_put(b, s + start, i - start);
                                buf_puts(b, s[i + 2] == 0xa8 ? "\\u2028" : "\\u2029");
                                i += 3;
                                start = i;
                                continue;
                        }
                        i += l;
                        continue;
                }
                if (c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&') {
                        i++;
                        continue;
                }
                buf_put(b, s + start, i - start);
                switch (c) {
                case '"':
                        buf_puts(b, "\\\"");
                        break;
                case '\\':
                        buf_puts(b, "\\\\");
                        break;
                case '\n':
                        buf_puts(b, "\\n");
                        break;
                case '\r':
                        buf_puts(b, "\\r");
                        break;
                case '\t':
                        buf_puts(b, "\\t");
                        break;
                default: {
                        char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf] };
                        buf_put(b, esc, 6);
                }
                }
                i++;
                start = i;
        }
        buf_put(b, s + start, n - start);
        buf_putc(b, '"');
}

/* Go's time.Time MarshalJSON for a UTC time: RFC3339Nano, trailing zeros of the fraction trimmed. */
static void buf_time(Buf *b, uint64_t usec) {
        time_t sec = (time_t) (usec / USEC_PER_SEC);
        unsigned frac = (unsigned) (usec % USEC_PER_SEC);
        struct tm tm;
        char tmp[64];
        int l;

        if (!gmtime_r(&sec, &tm))
                memset(&tm, 0, sizeof tm);
        l = snprintf(tmp, sizeof tmp, "\"%04d-%02d-%02dT%02d:%02d:%02d",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (frac > 0) {
                int digits = 6;

                while (frac % 10 == 0) {
                        frac /= 10;
                        digits--;
                }
                l += snprintf(tmp + l, sizeof tmp - l, ".%0*u", digits, frac);
        }
        l += snprintf(tmp + l, sizeof tmp - l, "Z\"");
        buf_put(b, tmp, l);
}

/* The key as the client sees it: user keys lose their "/1" prefix (strings.TrimPrefix in etcdhttp). */
static const char *strip_prefix(const char *key) {
        size_t l = strlen(STORE_KEYS_PREFIX);

        if (strneq(key, STORE_KEYS_PREFIX, l))
                return key + l;
        return key;
}

/* Seconds left, rounded up (node.go expirationAndTTL); may be 0 or negative once past due. */
static int64_t ttl_of(uint64_t expiration_usec, uint64_t now_usec) {
        int64_t d = (int64_t) (expiration_usec - now_usec);
        int64_t ttl = d / (int64_t) USEC_PER_SEC;

        if (d % (int64_t) USEC_PER_SEC > 0)
                ttl++;
        return ttl;
}

static bool node_hidden(const StoreNode *n) {
        return n->key[n->name_off] == '_';
}

/* Iterates the occupied slots of a directory's child table. */
#define NODE_FOREACH_CHILD(c, n, i)                                                             \
        for (uint32_t i = 0; i < (n)->children_cap; i++)                                        \
                if (((c) = (n)->children[i]))

static int node_cmp(const void *a, const void *b) {
        return strcmp((*(StoreNode * const *) a)->key, (*(StoreNode * const *) b)->key);
}

/* Returns the children of a dir (optionally without hidden ones), sorted if asked; malloc'd. */
static StoreNode **node_children(const StoreNode *n, bool skip_hidden, bool sorted, size_t *ret_n) {
        StoreNode **l, *c;
        size_t k = 0;

        l = malloc(sizeof(StoreNode *) * MAX(n->n_children, 1u));
        if (!l)
                return NULL;
        NODE_FOREACH_CHILD(c, n, i) {
                if (skip_hidden && node_hidden(c))
                        continue;
                l[k++] = c;
        }
        if (sorted && k > 1)
                qsort(l, k, sizeof(StoreNode *), node_cmp);
        *ret_n = k;
        return l;
}

static void render_node(Buf *b, const StoreNode *n, bool list, bool recursive, bool sorted, uint64_t now);

static void render_key(Buf *b, const char *key) {
        const char *k = strip_prefix(key);

        if (*k) {
                buf_puts(b, "\"key\":");
                buf_json_string(b, k, strlen(k));
                buf_putc(b, ',');
        }
}

static void render_ttl(Buf *b, uint64_t expiration_usec, uint64_t now) {
        int64_t ttl;

        if (expiration_usec == 0)
                return;
        buf_puts(b, "\"expiration\":");
        buf_time(b, expiration_usec);
        buf_putc(b, ',');
        ttl = ttl_of(expiration_usec, now);
        if (ttl != 0) {
                buf_puts(b, "\"ttl\":");
                buf_i64(b, ttl);
                buf_putc(b, ',');
        }
}

static void render_indexes(Buf *b, uint64_t modified, uint64_t created) {
        if (modified > 0) {
                buf_puts(b, "\"modifiedIndex\":");
                buf_u64(b, modified);
                buf_putc(b, ',');
        }
        if (created > 0) {
                buf_puts(b, "\"createdIndex\":");
                buf_u64(b, created);
                buf_putc(b, ',');
        }
}

/* Closes an object whose fields all end in ','. */
static void render_close(Buf *b) {
        if (b->oom)
                return;
        if (b->n > 0 && b->p[b->n - 1] == ',')
                b->p[b->n - 1] = '}';
        else
                buf_putc(b, '}');
}

/* A node as etcd's NodeExtern: field order key, value, dir, expiration, ttl, nodes, modifiedIndex,
 * createdIndex. With `list`, a directory shows its (non-hidden) children, each of them listing
 * their own children only if `recursive` (node.Repr / loadInternalNode). */
static void render_node(Buf *b, const StoreNode *n, bool list, bool recursive, bool sorted, uint64_t now) {
        buf_putc(b, '{');
        render_key(b, n->key);
        if (!n->dir) {
                buf_puts(b, "\"value\":");
                buf_json_string(b, n->value ?: "", n->value_len);
                buf_putc(b, ',');
        } else
                buf_puts(b, "\"dir\":true,");
        render_ttl(b, n->expiration_usec, now);
        if (n->dir && list && n->n_children > 0) {
                _cleanup_(freep) StoreNode **l = NULL;
                size_t k = 0;

                l = node_children(n, true, sorted, &k);
                if (!l)
                        b->oom = true;
                else if (k > 0) {
                        buf_puts(b, "\"nodes\":[");
                        for (size_t i = 0; i < k; i++) {
                                if (i > 0)
                                        buf_putc(b, ',');
                                render_node(b, l[i], recursive, recursive, sorted, now);
                        }
                        buf_puts(b, "],");
                }
        }
        render_indexes(b, n->modified_index, n->created_index);
        render_close(b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Nodes and the per-directory child table */

static uint32_t hash_bytes(const char *s, size_t n) {
        /* FNV-1a */
        uint32_t h = 2166136261u;

        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char) s[i];
                h *= 16777619u;
        }
        return h;
}

static StoreNode *node_new(const StoreNode *parent, const char *name, size_t name_len, bool dir,
                           uint64_t index, uint64_t expiration_usec) {
        size_t plen = parent ? (parent->key_len == 1 ? 0 : parent->key_len) : 0;
        StoreNode *n;

        n = calloc(1, sizeof(StoreNode) + plen + 1 + name_len + 1);
        if (!n)
                return NULL;
        if (parent)
                memcpy(n->key, parent->key, plen);
        n->key[plen] = '/';
        memcpy(n->key + plen + 1, name, name_len);
        n->key[plen + 1 + name_len] = 0;
        n->key_len = plen + 1 + name_len;
        n->name_off = plen + 1;
        n->hash = hash_bytes(name, name_len);
        n->dir = dir;
        n->created_index = n->modified_index = index;
        n->expiration_usec = expiration_usec;
        n->heap_idx = HEAP_NONE;
        return n;
}

static int node_set_value(StoreNode *n, const char *value, size_t len) {
        char *v;

        if (len > UINT32_MAX)
                return -E2BIG;
        v = value_new(value, len);
        if (!v)
                return -ENOMEM;
        value_unref(n->value);
        n->value = v;
        n->value_len = len;
        return 0;
}

static StoreNode *node_child(const StoreNode *d, const char *name, size_t len) {
        uint32_t h, mask, i;

        if (!d->dir || d->n_children == 0)
                return NULL;
        h = hash_bytes(name, len);
        mask = d->children_cap - 1;
        for (i = h & mask;; i = (i + 1) & mask) {
                StoreNode *c = d->children[i];

                if (!c)
                        return NULL;
                if (c->hash == h && c->key_len - c->name_off == len &&
                    memcmp(c->key + c->name_off, name, len) == 0)
                        return c;
        }
}

static void table_insert(StoreNode **t, uint32_t cap, StoreNode *c) {
        uint32_t mask = cap - 1;

        for (uint32_t i = c->hash & mask;; i = (i + 1) & mask)
                if (!t[i]) {
                        t[i] = c;
                        return;
                }
}

/* Adds c (not yet present) to directory d; keeps the load factor <= 1/2. */
static int node_add_child(StoreNode *d, StoreNode *c) {
        assert(d->dir);

        if ((d->n_children + 1) * 2 > d->children_cap) {
                uint32_t cap = d->children_cap ? d->children_cap * 2 : 4;
                StoreNode **t = calloc(cap, sizeof(StoreNode *));

                if (!t)
                        return -ENOMEM;
                for (uint32_t i = 0; i < d->children_cap; i++)
                        if (d->children[i])
                                table_insert(t, cap, d->children[i]);
                free(d->children);
                d->children = t;
                d->children_cap = cap;
        }
        table_insert(d->children, d->children_cap, c);
        d->n_children++;
        c->parent = d;
        return 0;
}

static void node_unlink_child(StoreNode *d, StoreNode *c) {
        uint32_t mask = d->children_cap - 1, i, j;

        for (i = c->hash & mask; d->children[i] != c; i = (i + 1) & mask)
                assert(d->children[i]);
        d->children[i] = NULL;
        /* backward-shift deletion: move later entries of the probe run into the hole if allowed */
        for (j = (i + 1) & mask; d->children[j]; j = (j + 1) & mask) {
                uint32_t k = d->children[j]->hash & mask;

                /* entry at j may move to i if its home k is not cyclically in (i, j] */
                if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
                        d->children[i] = d->children[j];
                        d->children[j] = NULL;
                        i = j;
                }
        }
        d->n_children--;
        c->parent = NULL;

        /* Halve the table once it is 1/8 full (amortised O(1), no thrashing with the growth at 1/2).
         * Afterwards the load is <= 1/4, so re-adding one child never allocates: internal_create()
         * relies on that when it replaces a node. On allocation failure the table simply stays. */
        if (d->children_cap > 16 && d->n_children * 8 < d->children_cap) {
                uint32_t cap = d->children_cap / 2;
                StoreNode **t = calloc(cap, sizeof(StoreNode *));

                if (!t)
                        return;
                for (uint32_t k = 0; k < d->children_cap; k++)
                        if (d->children[k])
                                table_insert(t, cap, d->children[k]);
                free(d->children);
                d->children = t;
                d->children_cap = cap;
        }
}

static void node_free_tree(StoreNode *n) {
        StoreNode *c;

        if (!n)
                return;
        if (n->dir)
                NODE_FOREACH_CHILD(c, n, i)
                        node_free_tree(c);
        free(n->children);
        value_unref(n->value);
        free(n);
}

/* ---------------------------------------------------------------------------------------------- */
/* TTL heap, ordered by (expiration, key) so that the order is the same on every member. */

static bool heap_less(const StoreNode *a, const StoreNode *b) {
        if (a->expiration_usec != b->expiration_usec)
                return a->expiration_usec < b->expiration_usec;
        return strcmp(a->key, b->key) < 0;
}

static void heap_set(Store *s, size_t i, StoreNode *n) {
        s->heap[i] = n;
        n->heap_idx = i;
}

static void heap_up(Store *s, size_t i) {
        StoreNode *n = s->heap[i];

        while (i > 0) {
                size_t p = (i - 1) / 2;

                if (!heap_less(n, s->heap[p]))
                        break;
                heap_set(s, i, s->heap[p]);
                i = p;
        }
        heap_set(s, i, n);
}

static void heap_down(Store *s, size_t i) {
        StoreNode *n = s->heap[i];

        for (;;) {
                size_t l = 2 * i + 1, m;

                if (l >= s->heap_n)
                        break;
                m = l;
                if (l + 1 < s->heap_n && heap_less(s->heap[l + 1], s->heap[l]))
                        m = l + 1;
                if (!heap_less(s->heap[m], n))
                        break;
                heap_set(s, i, s->heap[m]);
                i = m;
        }
        heap_set(s, i, n);
}

static int heap_push(Store *s, StoreNode *n) {
        assert(n->heap_idx == HEAP_NONE);

        if (s->heap_n >= s->heap_cap) {
                size_t cap = MAX(s->heap_cap * 2, (size_t) 64);
                StoreNode **h = realloc(s->heap, cap * sizeof(StoreNode *));

                if (!h)
                        return -ENOMEM;
                s->heap = h;
                s->heap_cap = cap;
        }
        heap_set(s, s->heap_n++, n);
        heap_up(s, s->heap_n - 1);
        for (StoreNode *a = n; a; a = a->parent)
                a->n_ttl++;
        return 0;
}

static void heap_remove(Store *s, StoreNode *n) {
        size_t i = n->heap_idx;

        if (i == HEAP_NONE)
                return;
        n->heap_idx = HEAP_NONE;
        for (StoreNode *a = n; a; a = a->parent)
                a->n_ttl--;
        s->heap_n--;
        if (i == s->heap_n)
                return;
        heap_set(s, i, s->heap[s->heap_n]);
        heap_up(s, i);
        heap_down(s, s->heap[i]->heap_idx);
}

/* node.UpdateTTL: 0 makes the node permanent. */
static int node_update_ttl(Store *s, StoreNode *n, uint64_t expiration_usec) {
        if (n->heap_idx != HEAP_NONE) {
                n->expiration_usec = expiration_usec;
                if (expiration_usec == 0)
                        heap_remove(s, n);
                else {
                        heap_up(s, n->heap_idx);
                        heap_down(s, n->heap_idx);
                }
                return 0;
        }
        n->expiration_usec = expiration_usec;
        if (expiration_usec == 0)
                return 0;
        return heap_push(s, n);
}

uint64_t store_next_expiration(Store *s) {
        assert(s);
        return s->heap_n > 0 ? s->heap[0]->expiration_usec : 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Events */

StoreEvent *store_event_ref(StoreEvent *e) {
        if (e)
                e->n_ref++;
        return e;
}

static void event_node_clear(StoreEventNode *en) {
        value_unref(en->value);
        en->value = NULL;
}

StoreEvent *store_event_unref(StoreEvent *e) {
        if (!e)
                return NULL;
        assert(e->n_ref > 0);
        if (--e->n_ref == 0) {
                if (!e->json_fixed)
                        free(e->json);
                event_node_clear(&e->node);
                event_node_clear(&e->prev);
                free(e);
        }
        return NULL;
}

/* One allocation: the struct, then the key, then (fixed JSON only) the JSON. */
static StoreEvent *event_alloc(StoreAction action, const char *key, size_t key_len, uint64_t index,
                               const char *json, size_t json_len) {
        StoreEvent *e;

        e = malloc(sizeof(StoreEvent) + key_len + 1 + (json ? json_len + 1 : 0));
        if (!e)
                return NULL;
        *e = (StoreEvent) {
                .n_ref = 1,
                .action = action,
                .index = index,
        };
        e->key = (char *) (e + 1);
        memcpy(e->key, key, key_len);
        e->key[key_len] = 0;
        if (json) {
                e->json = e->key + key_len + 1;
                memcpy(e->json, json, json_len);
                e->json[json_len] = 0;
                e->json_len = json_len;
                e->json_fixed = true;
        }
        return e;
}

/* A node as an event's node or prevNode (node.Repr without children); takes a reference on the value. */
static void event_node_capture(StoreEventNode *en, const StoreNode *n) {
        *en = (StoreEventNode) {
                .value = n->dir ? NULL : value_ref(n->value),
                .value_len = n->dir ? 0 : n->value_len,
                .has_value = !n->dir,
                .dir = n->dir,
                .expiration_usec = n->expiration_usec,
                .modified_index = n->modified_index,
                .created_index = n->created_index,
        };
}

/* Makes an event; takes over the value references of *node and *prev (prev may be NULL), also on
 * failure. */
static StoreEvent *event_make(StoreAction action, const char *key, uint64_t index, uint64_t now,
                              bool prev_dir, StoreEventNode *node, StoreEventNode *prev) {
        StoreEvent *e;

        e = event_alloc(action, key, strlen(key), index, NULL, 0);
        if (!e) {
                event_node_clear(node);
                if (prev)
                        event_node_clear(prev);
                return NULL;
        }
        e->prev_dir = prev_dir;
        e->now_usec = now;
        e->node = *node;
        *node = (StoreEventNode) {};
        if (prev) {
                e->has_prev = true;
                e->prev = *prev;
                *prev = (StoreEventNode) {};
        }
        return e;
}

/* Node fields of an event, NodeExtern field order. */
static void render_event_node(Buf *b, const char *key, const StoreEventNode *en, uint64_t now) {
        buf_putc(b, '{');
        render_key(b, key);
        if (en->has_value) {
                buf_puts(b, "\"value\":");
                buf_json_string(b, en->value ?: "", en->value_len);
                buf_putc(b, ',');
        }
        if (en->dir)
                buf_puts(b, "\"dir\":true,");
        render_ttl(b, en->expiration_usec, now);
        render_indexes(b, en->modified_index, en->created_index);
        render_close(b);
}

const char *store_event_json(StoreEvent *e, size_t *ret_len) {
        Buf b = {};

        assert(e);

        if (e->json_fixed || e->json) {
                if (!e->json_fixed)
                        e->json_pins++;
                *ret_len = e->json_len;
                return e->json;
        }
        buf_puts(&b, "{\"action\":\"");
        buf_puts(&b, store_action_to_string(e->action));
        buf_puts(&b, "\",\"node\":");
        render_event_node(&b, e->key, &e->node, e->now_usec);
        if (e->has_prev) {
                buf_puts(&b, ",\"prevNode\":");
                render_event_node(&b, e->key, &e->prev, e->now_usec);
        }
        buf_puts(&b, "}\n");
        if (b.oom) {
                free(b.p);
                return NULL;
        }
        e->json = b.p;
        e->json_len = b.n;
        e->json_pins = 1;
        *ret_len = e->json_len;
        return e->json;
}

void store_event_json_unpin(StoreEvent *e) {
        if (!e || e->json_fixed)
                return;
        assert(e->json_pins > 0);
        if (--e->json_pins == 0) {
                free(e->json);
                e->json = NULL;
                e->json_len = 0;
        }
}

void store_result_done(StoreResult *r) {
        if (!r)
                return;
        r->cause = mfree(r->cause);
        r->event = store_event_unref(r->event);
        r->error = ETCD_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Record encoding: little-endian fixed-width fields. */

static void put_u64(uint8_t *p, uint64_t v) {
        for (unsigned i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
        uint64_t v = 0;

        for (unsigned i = 0; i < 8; i++)
                v |= (uint64_t) p[i] << (8 * i);
        return v;
}

/* Node record: version(1) flags(1: bit0 dir) created(8) modified(8) expiration(8) value(rest). */
#define NODE_RECORD_HEADER (2 + 8 + 8 + 8)

static void *node_encode(const StoreNode *n, size_t *ret_len) {
        size_t len = NODE_RECORD_HEADER + (n->dir ? 0 : n->value_len);
        uint8_t *r;

        r = malloc(len);
        if (!r)
                return NULL;
        r[0] = NODE_RECORD_VERSION;
        r[1] = n->dir ? 1 : 0;
        put_u64(r + 2, n->created_index);
        put_u64(r + 10, n->modified_index);
        put_u64(r + 18, n->expiration_usec);
        if (!n->dir && n->value_len > 0)
                memcpy(r + NODE_RECORD_HEADER, n->value, n->value_len);
        *ret_len = len;
        return r;
}

void *store_node_record_new(bool dir, uint64_t created_index, uint64_t modified_index, uint64_t expiration_usec,
                           const char *value, size_t value_len, size_t *ret_len) {
        StoreNode n = {
                .dir = dir,
                .created_index = created_index,
                .modified_index = modified_index,
                .expiration_usec = expiration_usec,
                .value = (char *) value,
                .value_len = dir ? 0 : value_len,
        };

        assert(ret_len);
        return node_encode(&n, ret_len);
}

/* Event record, version 2: version(1) action(1) flags(1) index(8) key_len(8) now(8)
 * node: expiration(8) created(8) value_len(8)  prev: expiration(8) modified(8) created(8) value_len(8)
 * then the key, the node's value, the prevNode's value. The node's modifiedIndex is the index.
 * Version 1 (read only): version(1) action(1) flags(1: bit0 refresh, bit1 prev_dir) index(8)
 * key_len(8) key json. */
#define EVENT_RECORD_HEADER_V1 (3 + 8 + 8)
#define EVENT_RECORD_HEADER (3 + 8 * 10)

enum {
        EVENT_FLAG_REFRESH = 1 << 0,
        EVENT_FLAG_PREV_DIR = 1 << 1,
        EVENT_FLAG_HAS_PREV = 1 << 2,
        EVENT_FLAG_NODE_VALUE = 1 << 3,
        EVENT_FLAG_NODE_DIR = 1 << 4,
        EVENT_FLAG_PREV_VALUE = 1 << 5,
        EVENT_FLAG_PREV_NODE_DIR = 1 << 6,
};

static void *event_encode(const StoreEvent *e, size_t *ret_len) {
        size_t kl = strlen(e->key), len = EVENT_RECORD_HEADER + kl + e->node.value_len + e->prev.value_len;
        uint8_t *r, *p;

        r = malloc(len);
        if (!r)
                return NULL;
        r[0] = EVENT_RECORD_VERSION;
        r[1] = (uint8_t) e->action;
        r[2] = (e->refresh ? EVENT_FLAG_REFRESH : 0) | (e->prev_dir ? EVENT_FLAG_PREV_DIR : 0) |
               (e->has_prev ? EVENT_FLAG_HAS_PREV : 0) |
               (e->node.has_value ? EVENT_FLAG_NODE_VALUE : 0) | (e->node.dir ? EVENT_FLAG_NODE_DIR : 0) |
               (e->prev.has_value ? EVENT_FLAG_PREV_VALUE : 0) | (e->prev.dir ? EVENT_FLAG_PREV_NODE_DIR : 0);
        put_u64(r + 3, e->index);
        put_u64(r + 11, kl);
        put_u64(r + 19, e->now_usec);
        put_u64(r + 27, e->node.expiration_usec);
        put_u64(r + 35, e->node.created_index);
        put_u64(r + 43, e->node.value_len);
        put_u64(r + 51, e->prev.expiration_usec);
        put_u64(r + 59, e->prev.modified_index);
        put_u64(r + 67, e->prev.created_index);
        put_u64(r + 75, e->prev.value_len);
        p = r + EVENT_RECORD_HEADER;
        memcpy(p, e->key, kl);
        p += kl;
        if (e->node.value_len > 0)
                memcpy(p, e->node.value, e->node.value_len);
        p += e->node.value_len;
        if (e->prev.value_len > 0)
                memcpy(p, e->prev.value, e->prev.value_len);
        *ret_len = len;
        return r;
}

static void sink_node_put(Store *s, const StoreNode *n) {
        _cleanup_(freep) void *r = NULL;
        size_t len;

        if (!s->sink.node_put)
                return;
        r = node_encode(n, &len);
        if (!r) {
                log_debug("store: out of memory encoding node '%s', not persisted", n->key);
                return;
        }
        s->sink.node_put(s->sink.userdata, n->key, r, len);
}

static void sink_node_delete(Store *s, const char *key) {
        if (s->sink.node_delete)
                s->sink.node_delete(s->sink.userdata, key);
}

/* ---------------------------------------------------------------------------------------------- */
/* Event history (event_history.go): a ring of the last STORE_HISTORY_MAX events. */

static StoreEvent *history_at(Store *s, unsigned i) {
        return s->history[(s->hist_front + i) % STORE_HISTORY_MAX];
}

static void history_push(Store *s, StoreEvent *e, bool report) {
        if (s->hist_n == STORE_HISTORY_MAX) {
                StoreEvent *old = s->history[s->hist_front];

                s->hist_front = (s->hist_front + 1) % STORE_HISTORY_MAX;
                s->hist_n--;
                if (report && s->sink.history_drop)
                        s->sink.history_drop(s->sink.userdata, old->index);
                store_event_unref(old);
        }
        s->history[(s->hist_front + s->hist_n) % STORE_HISTORY_MAX] = store_event_ref(e);
        s->hist_n++;
        s->hist_last = e->index;
        s->hist_start = history_at(s, 0)->index;

        if (report && s->sink.history_add) {
                _cleanup_(freep) void *r = NULL;
                size_t len;

                r = event_encode(e, &len);
                if (r)
                        s->sink.history_add(s->sink.userdata, e->index, r, len);
        }
}

static bool path_has_prefix(const char *key, const char *prefix) {
        return strneq(key, prefix, strlen(prefix));
}

/* EventHistory.scan: the first non-refresh event at index >= since that concerns `key`. */
static int history_scan(Store *s, const char *key, bool recursive, uint64_t since, StoreEvent **ret,
                        char **ret_cause) {
        size_t kl = strlen(key);

        *ret = NULL;
        if (since < s->hist_start) {
                if (asprintf(ret_cause, "the requested history has been cleared [%" PRIu64 "/%" PRIu64 "]",
                             s->hist_start, since) < 0)
                        return -ENOMEM;
                return ETCD_ERROR_EVENT_INDEX_CLEARED;
        }
        if (since > s->hist_last || s->hist_n == 0)
                return 0;

        for (unsigned i = (unsigned) MIN(since - s->hist_start, (uint64_t) s->hist_n); i < s->hist_n; i++) {
                StoreEvent *e = history_at(s, i);
                bool ok;

                if (e->index < since || e->refresh)
                        continue;
                ok = streq(e->key, key);
                if (!ok && recursive) {
                        /* "/foo" matches "/foo/..."; the root "/" matches everything */
                        if (kl == 1 && key[0] == '/')
                                ok = true;
                        else
                                ok = strneq(e->key, key, kl) && e->key[kl] == '/';
                }
                if (!ok && e->prev_dir &&
                    (e->action == STORE_ACTION_DELETE || e->action == STORE_ACTION_EXPIRE))
                        ok = path_has_prefix(key, e->key);
                if (ok) {
                        *ret = store_event_ref(e);
                        return 0;
                }
        }
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Watchers (watcher_hub.go) */

static WatchList *wl_find(Store *s, const char *path, size_t len, uint32_t h) {
        if (s->wl_cap == 0)
                return NULL;
        for (WatchList *l = s->wl_buckets[h & (s->wl_cap - 1)]; l; l = l->bucket_next)
                if (l->hash == h && l->path_len == len && memcmp(l->path, path, len) == 0)
                        return l;
        return NULL;
}

static WatchList *wl_get(Store *s, const char *path) {
        size_t len = strlen(path);
        uint32_t h = hash_bytes(path, len);
        WatchList *l;

        l = wl_find(s, path, len, h);
        if (l)
                return l;

        if (s->wl_n + 1 > s->wl_cap) {
                size_t cap = MAX(s->wl_cap * 2, (size_t) 16);
                WatchList **b = calloc(cap, sizeof(WatchList *));

                if (!b)
                        return NULL;
                for (size_t i = 0; i < s->wl_cap; i++)
                        while (s->wl_buckets[i]) {
                                WatchList *x = s->wl_buckets[i];

                                s->wl_buckets[i] = x->bucket_next;
                                x->bucket_next = b[x->hash & (cap - 1)];
                                b[x->hash & (cap - 1)] = x;
                        }
                free(s->wl_buckets);
                s->wl_buckets = b;
                s->wl_cap = cap;
        }

        l = calloc(1, sizeof(WatchList) + len + 1);
        if (!l)
                return NULL;
        memcpy(l->path, path, len + 1);
        l->path_len = len;
        l->hash = h;
        l->bucket_next = s->wl_buckets[h & (s->wl_cap - 1)];
        s->wl_buckets[h & (s->wl_cap - 1)] = l;
        s->wl_n++;
        return l;
}

static void wl_free(Store *s, WatchList *l) {
        WatchList **p = &s->wl_buckets[l->hash & (s->wl_cap - 1)];

        while (*p != l)
                p = &(*p)->bucket_next;
        *p = l->bucket_next;
        s->wl_n--;
        free(l);
}

/* Unlinks w from its list. While a notification is running the memory is kept (on the zombie list)
 * so that the dispatch loop can step over it; it is freed when the outermost dispatch ends. */
static void watcher_detach(StoreWatcher *w) {
        Store *s = w->store;
        WatchList *l = w->list;

        if (w->dead)
                return;
        w->dead = true;
        if (w->prev)
                w->prev->next = w->next;
        else
                l->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                l->tail = w->prev;
        assert(s->n_watchers > 0);
        s->n_watchers--;

        if (s->dispatching > 0) {
                /* keep w->next: a dispatch loop standing on w continues from there */
                w->zombie_next = s->zombies;
                s->zombies = w;
                return;
        }
        if (!l->head)
                wl_free(s, l);
        free(w);
}

StoreWatcher *store_watcher_free(StoreWatcher *w) {
        if (w)
                watcher_detach(w);
        return NULL;
}

unsigned store_n_watchers(Store *s) {
        assert(s);
        return s->n_watchers;
}

static void dispatch_end(Store *s) {
        assert(s->dispatching > 0);
        if (--s->dispatching > 0)
                return;
        while (s->zombies) {
                StoreWatcher *w = s->zombies;
                WatchList *l = w->list;

                s->zombies = w->zombie_next;
                free(w);
                /* an emptied list is freed once no zombie refers to it any more */
                if (!l->head) {
                        bool used = false;

                        for (StoreWatcher *z = s->zombies; z; z = z->zombie_next)
                                if (z->list == l) {
                                        used = true;
                                        break;
                                }
                        if (!used)
                                wl_free(s, l);
                }
        }
}

/* isHidden(watchPath, keyPath): the part of the key below the watched path has a '_' component. */
static bool is_hidden(size_t watch_len, const char *key, size_t key_len) {
        const char *rest;

        if (watch_len > key_len)
                return false;
        rest = key + watch_len;
        if (rest[0] == '_')
                return true; /* watch path "/" and key "/_x" */
        return strstr(rest, "/_") != NULL;
}

/* notifyWatchers(e, path, deleted) */
static void notify_path(Store *s, StoreEvent *e, const char *path, size_t len, bool deleted) {
        size_t key_len = strlen(e->key);
        bool original = key_len == len && memcmp(e->key, path, len) == 0;
        WatchList *l;

        l = wl_find(s, path, len, hash_bytes(path, len));
        if (!l)
                return;
        if (!original && is_hidden(len, e->key, key_len))
                return;

        s->dispatching++;
        for (StoreWatcher *w = l->head, *next; w; w = next) {
                int r;

                if (w->dead) {
                        next = w->next;
                        continue;
                }
                if (!(w->recursive || original || deleted) || e->index < w->since_index ||
                    w->last_index == e->index) {
                        next = w->next;
                        continue;
                }
                w->last_index = e->index;
                r = w->callback(w, e, w->userdata);
                if (!w->dead && (!w->stream || r < 0))
                        watcher_detach(w);
                next = w->next;
        }
        dispatch_end(s);
}

/* watcherHub.notify: history, then the watchers of every ancestor and of the key itself. Refresh
 * events only go to the history. */
static void notify(Store *s, StoreEvent *e) {
        size_t len;

        history_push(s, e, true);
        if (e->refresh || s->n_watchers == 0)
                return;

        len = strlen(e->key);
        notify_path(s, e, "/", 1, false);
        for (size_t i = 1; i < len; i++)
                if (e->key[i] == '/')
                        notify_path(s, e, e->key, i, false);
        if (len > 1)
                notify_path(s, e, e->key, len, false);
}

int store_watch(Store *s, const char *path, bool recursive, bool stream, uint64_t since_index,
                StoreWatchCallback cb, void *userdata,
                StoreWatcher **ret_watcher, StoreEvent **ret_event, char **ret_cause) {
        _cleanup_(freep) char *cause = NULL;
        StoreEvent *e = NULL;
        StoreWatcher *w;
        WatchList *l;
        int r;

        assert(s);
        assert(path);
        assert(cb);

        /* watcher_hub.go watch(): every watch request counts, answered from the history or not */
        metrics.store_watch_requests++;
        if (since_index == 0)
                since_index = s->index + 1;

        r = history_scan(s, path, recursive, since_index, &e, &cause);
        if (r < 0)
                return r;
        if (r > 0) {
                if (ret_cause)
                        *ret_cause = TAKE_PTR(cause);
                return r;
        }
        if (e) {
                if (ret_watcher)
                        *ret_watcher = NULL;
                if (ret_event)
                        *ret_event = e;
                else
                        store_event_unref(e);
                return 0;
        }

        w = calloc(1, sizeof(StoreWatcher));
        if (!w)
                return -ENOMEM;
        l = wl_get(s, path);
        if (!l) {
                free(w);
                return -ENOMEM;
        }
        w->store = s;
        w->list = l;
        w->recursive = recursive;
        w->stream = stream;
        w->since_index = since_index;
        w->callback = cb;
        w->userdata = userdata;
        w->prev = l->tail;
        if (l->tail)
                l->tail->next = w;
        else
                l->head = w;
        l->tail = w;
        s->n_watchers++;

        if (ret_watcher)
                *ret_watcher = w;
        if (ret_event)
                *ret_event = NULL;
        return 0;
}

/* etcd2's store Recovery keeps its watcherHub: a snapshot install replaces the tree and the history
 * but the clients waiting on the member must keep waiting. The hash table moves as a whole (lists
 * and watchers keep their addresses, which clients hold); only the back pointers change. Not allowed
 * during a dispatch: the zombie list belongs to the store being dispatched. */
int store_move_watchers(Store *from, Store *to) {
        assert(from);
        assert(to);

        if (from->dispatching > 0 || to->dispatching > 0 || to->n_watchers > 0 || to->wl_n > 0)
                return -EBUSY;
        free(to->wl_buckets);
        to->wl_buckets = TAKE_PTR(from->wl_buckets);
        to->wl_cap = from->wl_cap;
        to->wl_n = from->wl_n;
        to->n_watchers = from->n_watchers;
        from->wl_cap = from->wl_n = 0;
        from->n_watchers = 0;
        for (size_t i = 0; i < to->wl_cap; i++)
                for (WatchList *l = to->wl_buckets[i]; l; l = l->bucket_next)
                        for (StoreWatcher *w = l->head; w; w = w->next)
                                w->store = to;
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Operations (store.go) */

static int set_error(StoreResult *ret, EtcdError e, const char *cause_key, size_t len) {
        const char *c = cause_key;
        size_t l = len;

        /* causes are keys and lose their "/1" prefix like keys do */
        if (l >= strlen(STORE_KEYS_PREFIX) && strneq(c, STORE_KEYS_PREFIX, strlen(STORE_KEYS_PREFIX))) {
                c += strlen(STORE_KEYS_PREFIX);
                l -= strlen(STORE_KEYS_PREFIX);
        }
        free(ret->cause);
        ret->cause = strndup(c, l);
        if (!ret->cause)
                return -ENOMEM;
        ret->error = e;
        return e;
}

static int set_error_key(StoreResult *ret, EtcdError e, const char *key) {
        return set_error(ret, e, key, strlen(key));
}

static bool is_readonly(const char *path) {
        return streq(path, "/") || streq(path, "/0") || streq(path, "/1");
}

/* internalGet: walks to path; 104 with the file's key when a file is in the way, 100 with the path
 * up to the first missing component. */
static int walk_get(Store *s, const char *path, StoreNode **ret_node, StoreResult *ret) {
        StoreNode *cur = s->root;
        const char *p = path;

        for (;;) {
                const char *e;
                StoreNode *c;

                while (*p == '/')
                        p++;
                if (!*p)
                        break;
                e = strchrnul(p, '/');
                if (!cur->dir)
                        return set_error_key(ret, ETCD_ERROR_NOT_DIR, cur->key);
                c = node_child(cur, p, e - p);
                if (!c)
                        return set_error(ret, ETCD_ERROR_KEY_NOT_FOUND, path, e - path);
                cur = c;
                p = e;
        }
        *ret_node = cur;
        return 0;
}

/* The checkDir walk of internalCreate over path[0..len): missing directories are created with the
 * index of the coming event. */
static int walk_mkdir(Store *s, const char *path, size_t len, StoreNode **ret_node, StoreResult *ret) {
        StoreNode *cur = s->root;
        const char *p = path, *end = path + len;
        int r;

        for (;;) {
                const char *e;
                StoreNode *c;

                while (p < end && *p == '/')
                        p++;
                if (p >= end)
                        break;
                e = memchr(p, '/', end - p) ?: end;
                c = node_child(cur, p, e - p);
                if (c) {
                        if (!c->dir)
                                return set_error_key(ret, ETCD_ERROR_NOT_DIR, c->key);
                } else {
                        c = node_new(cur, p, e - p, true, s->index + 1, 0);
                        if (!c)
                                return -ENOMEM;
                        r = node_add_child(cur, c);
                        if (r < 0) {
                                free(c);
                                return r;
                        }
                        sink_node_put(s, c);
                }
                cur = c;
                p = e;
        }
        *ret_node = cur;
        return 0;
}

/* Removes n and everything below it: watchers on every removed node hear `e` (as etcd's Remove
 * callbacks do, children first), TTL entries go, memory is freed. n must already be unlinked. */
static void remove_tree(Store *s, StoreNode *n, StoreEvent *e) {
        StoreNode *c;

        if (n->dir)
                NODE_FOREACH_CHILD(c, n, i)
                        remove_tree(s, c, e);
        if (e && s->n_watchers > 0)
                notify_path(s, e, n->key, n->key_len, true);
        heap_remove(s, n);
        n->n_children = 0;
        n->children_cap = 0;
        free(n->children);
        value_unref(n->value);
        free(n);
}

/* Below this many children, with watchers around, a directory is removed node by node. */
#define REAP_MIN_CHILDREN 256
/* Nodes freed per store_apply()/store_get(): well under a millisecond. */
#define REAP_BUDGET 4096

static void reap(Store *s, size_t budget) {
        while (s->reap && budget-- > 0) {
                StoreNode *n = s->reap, *c;

                s->reap = n->parent;
                if (n->dir)
                        NODE_FOREACH_CHILD(c, n, i) {
                                c->parent = s->reap;
                                s->reap = c;
                        }
                free(n->children);
                value_unref(n->value);
                free(n);
        }
}

bool store_reap(Store *s, size_t budget) {
        assert(s);
        reap(s, budget);
        return s->reap;
}

/* The node at `path` inside the detached subtree rooted at n, or NULL. */
static StoreNode *subtree_lookup(StoreNode *n, const char *path, size_t len) {
        const char *p = path + n->key_len, *end = path + len;

        while (n && p < end) {
                const char *q;

                assert(*p == '/');
                p++;
                q = memchr(p, '/', end - p) ?: end;
                n = node_child(n, p, q - p);
                p = q;
        }
        return n;
}

/* What remove_tree() does for watchers, without visiting every node: the watched paths below n that
 * name a node of the subtree hear the event, then n itself. Paths are copied first: a callback may
 * free watch lists. */
static void notify_subtree(Store *s, StoreNode *n, StoreEvent *e) {
        _cleanup_(freep) char **paths = NULL;
        size_t k = 0, cap = 0;

        for (size_t b = 0; b < s->wl_cap; b++)
                for (WatchList *l = s->wl_buckets[b]; l; l = l->bucket_next) {
                        if (l->path_len <= n->key_len || memcmp(l->path, n->key, n->key_len) != 0 ||
                            l->path[n->key_len] != '/' || !subtree_lookup(n, l->path, l->path_len))
                                continue;
                        if (k == cap) {
                                char **t = reallocarray(paths, MAX(cap * 2, (size_t) 8), sizeof(char *));
                                if (!t)
                                        goto done; /* OOM: those watchers miss this event */
                                paths = t;
                                cap = MAX(cap * 2, (size_t) 8);
                        }
                        paths[k] = strndup(l->path, l->path_len);
                        if (!paths[k])
                                goto done;
                        k++;
                }
done:
        for (size_t i = 0; i < k; i++) {
                notify_path(s, e, paths[i], strlen(paths[i]), true);
                free(paths[i]);
        }
        notify_path(s, e, n->key, n->key_len, true);
}

static void node_remove(Store *s, StoreNode *n, StoreEvent *e) {
        for (StoreNode *a = n->parent; a; a = a->parent)
                a->n_ttl -= n->n_ttl;
        if (n->parent)
                node_unlink_child(n->parent, n);
        /* A directory without TTLs below: nothing in it is in the heap, so it can leave the tree at
         * once and be freed in slices. Watchers below it are found through the watch table, which is
         * worth it for big directories only. */
        if (n->dir && n->n_ttl == 0 && (s->n_watchers == 0 || n->n_children >= REAP_MIN_CHILDREN)) {
                if (e && s->n_watchers > 0)
                        notify_subtree(s, n, e);
                n->parent = s->reap;
                s->reap = n;
                return;
        }
        remove_tree(s, n, e);
}

/* internalCreate. On success *ret_event holds the (not yet announced) event. */
static int internal_create(Store *s, const char *path, bool dir, const char *value, size_t value_len,
                           bool unique, bool replace, uint64_t expiration_usec, StoreAction action,
                           uint64_t now, StoreResult *ret, StoreEvent **ret_event) {
        _cleanup_(freep) char *upath = NULL;
        uint64_t next = s->index + 1;
        StoreEventNode en, prev = {};
        StoreNode *d, *n, *old;
        const char *name;
        int r;

        if (unique) {
                if (asprintf(&upath, "%s/%020" PRIu64, streq(path, "/") ? "" : path, next) < 0)
                        return -ENOMEM;
                path = upath;
        }
        if (is_readonly(path))
                return set_error_key(ret, ETCD_ERROR_ROOT_RONLY, "/");
        if (expiration_usec > 0 && expiration_usec < STORE_MIN_EXPIRE_USEC)
                expiration_usec = 0;

        name = strrchr(path, '/');
        assert(name);
        r = walk_mkdir(s, path, name - path, &d, ret);
        if (r != 0)
                return r;
        name++;

        old = node_child(d, name, strlen(name));
        if (old) {
                if (!replace)
                        return set_error_key(ret, ETCD_ERROR_NODE_EXIST, path);
                if (old->dir)
                        return set_error_key(ret, ETCD_ERROR_NOT_FILE, path);
        }

        n = node_new(d, name, strlen(name), dir, next, expiration_usec);
        if (!n)
                return -ENOMEM;
        if (!dir) {
                r = node_set_value(n, value ?: "", value ? value_len : 0);
                if (r < 0) {
                        free(n);
                        return r;
                }
        }
        /* make sure nothing can fail after the old node is gone */
        if (expiration_usec > 0 && s->heap_n >= s->heap_cap) {
                n->expiration_usec = 0;
                r = heap_push(s, n);
                if (r < 0) {
                        node_free_tree(n);
                        return r;
                }
                heap_remove(s, n);
                n->expiration_usec = expiration_usec;
        }

        en = (StoreEventNode) {
                .value = dir ? NULL : value_ref(n->value),
                .value_len = dir ? 0 : n->value_len,
                .has_value = !dir,
                .dir = dir,
                .expiration_usec = expiration_usec,
                .modified_index = next,
                .created_index = next,
        };
        if (old)
                event_node_capture(&prev, old);
        *ret_event = event_make(action, path, next, now, false, &en, old ? &prev : NULL);
        if (!*ret_event) {
                node_free_tree(n);
                return -ENOMEM;
        }

        if (old)
                node_remove(s, old, NULL);
        r = node_add_child(d, n);
        if (r < 0) {
                /* only possible without a replaced node: nothing changed yet */
                *ret_event = store_event_unref(*ret_event);
                node_free_tree(n);
                return r;
        }
        if (expiration_usec > 0)
                (void) heap_push(s, n); /* capacity reserved above */

        s->index = next;
        sink_node_put(s, n);
        return 0;
}

static void finish(Store *s, StoreResult *ret, StoreEvent *e, bool refresh) {
        if (refresh)
                e->refresh = true;
        notify(s, e);
        ret->event = e;
        ret->index = s->index;
}

static int op_set(Store *s, const StoreRequest *req, uint64_t now, StoreResult *ret) {
        _cleanup_(freep) char *kept = NULL;
        const char *value = req->value;
        size_t value_len = req->value_len;
        StoreEvent *e = NULL;
        StoreNode *n = NULL;
        int r;

        r = walk_get(s, req->path, &n, ret);
        if (r < 0)
                return r;
        if (r > 0 && r != ETCD_ERROR_KEY_NOT_FOUND)
                goto fail;
        if (req->refresh) {
                if (r > 0)
                        goto fail;
                /* the value is kept (a refreshed dir stays a dir: the value of a dir is "") */
                kept = malloc(n->value_len + 1);
                if (!kept)
                        return -ENOMEM;
                memcpy(kept, n->value ?: "", n->value_len);
                value = kept;
                value_len = n->value_len;
        }
        store_result_done(ret);

        r = internal_create(s, req->path, req->dir, value, value_len, false, true, req->expiration_usec,
                            STORE_ACTION_SET, now, ret, &e);
        if (r < 0)
                return r;
        if (r > 0)
                goto fail;
        s->stats.sets_success++;
        finish(s, ret, e, req->refresh);
        return 0;
fail:
        s->stats.sets_fail++;
        return 0;
}

static int op_create(Store *s, const StoreRequest *req, bool unique, uint64_t now, StoreResult *ret) {
        StoreEvent *e = NULL;
        int r;

        r = internal_create(s, req->path, req->dir, req->value, req->value_len, unique, false,
                            req->expiration_usec, STORE_ACTION_CREATE, now, ret, &e);
        if (r < 0)
                return r;
        if (r > 0) {
                /* etcd's internalCreate also counts a failed walk as a failed set */
                if (r == ETCD_ERROR_NOT_DIR)
                        s->stats.sets_fail++;
                s->stats.create_fail++;
                return 0;
        }
        s->stats.create_success++;
        finish(s, ret, e, false);
        return 0;
}

static int op_update(Store *s, const StoreRequest *req, uint64_t now, StoreResult *ret) {
        uint64_t next = s->index + 1;
        size_t value_len = req->value ? req->value_len : 0;
        StoreEventNode en, prev;
        StoreEvent *e;
        StoreNode *n;
        int r;

        /* etcd2's Update() returns these two errors without setting the err its deferred stats read:
         * they count as updateSuccess (etcd 2.3.8 and 3.4 alike) */
        if (is_readonly(req->path)) {
                r = set_error_key(ret, ETCD_ERROR_ROOT_RONLY, "/");
                goto fail_as_success;
        }
        r = walk_get(s, req->path, &n, ret);
        if (r != 0)
                goto fail;
        if (n->dir && value_len > 0) {
                r = set_error_key(ret, ETCD_ERROR_NOT_FILE, req->path);
                goto fail_as_success;
        }

        event_node_capture(&prev, n);
        if (!n->dir && !req->refresh) {
                r = node_set_value(n, req->value, value_len);
                if (r < 0) {
                        event_node_clear(&prev);
                        return r;
                }
        }
        r = node_update_ttl(s, n, req->expiration_usec);
        if (r < 0) {
                event_node_clear(&prev);
                return r;
        }
        /* node.Write() refuses directories, so a dir keeps its modifiedIndex even though the
         * event reports the new index (etcd answers exactly so) */
        if (!n->dir)
                n->modified_index = next;

        event_node_capture(&en, n);
        en.modified_index = next;
        e = event_make(STORE_ACTION_UPDATE, n->key, next, now, false, &en, &prev);
        if (!e)
                return -ENOMEM;
        s->index = next;
        sink_node_put(s, n);
        s->stats.update_success++;
        finish(s, ret, e, req->refresh);
        return 0;
fail:
        if (r < 0)
                return r;
        s->stats.update_fail++;
        return 0;
fail_as_success:
        if (r < 0)
                return r;
        s->stats.update_success++;
        return 0;
}

/* node.Compare + getCompareFailCause */
static int compare(StoreResult *ret, const StoreNode *n, const char *prev_value, uint64_t prev_index) {
        bool value_ok = isempty(prev_value) ||
                (strlen(prev_value) == n->value_len && memcmp(prev_value, n->value ?: "", n->value_len) == 0);
        bool index_ok = prev_index == 0 || n->modified_index == prev_index;
        char *cause;
        int r;

        if (value_ok && index_ok)
                return 0;
        if (!index_ok && value_ok)
                r = asprintf(&cause, "[%" PRIu64 " != %" PRIu64 "]", prev_index, n->modified_index);
        else if (!value_ok && index_ok)
                r = asprintf(&cause, "[%s != %s]", prev_value, n->value ?: "");
        else
                r = asprintf(&cause, "[%s != %s] [%" PRIu64 " != %" PRIu64 "]",
                             prev_value, n->value ?: "", prev_index, n->modified_index);
        if (r < 0)
                return -ENOMEM;
        free(ret->cause);
        ret->cause = cause;
        ret->error = ETCD_ERROR_TEST_FAILED;
        return ETCD_ERROR_TEST_FAILED;
}

static int op_cas(Store *s, const StoreRequest *req, uint64_t now, StoreResult *ret) {
        uint64_t next = s->index + 1;
        StoreEventNode en, prev;
        StoreEvent *e;
        StoreNode *n;
        int r;

        /* etcd2's CompareAndSwap() returns RootROnly without setting the err its deferred stats
         * read: compareAndSwapSuccess (etcd 2.3.8 and 3.4 alike) */
        if (is_readonly(req->path)) {
                r = set_error_key(ret, ETCD_ERROR_ROOT_RONLY, "/");
                if (r < 0)
                        return r;
                s->stats.cas_success++;
                return 0;
        }
        r = walk_get(s, req->path, &n, ret);
        if (r != 0)
                goto fail;
        if (n->dir) {
                r = set_error_key(ret, ETCD_ERROR_NOT_FILE, req->path);
                goto fail;
        }
        r = compare(ret, n, req->prev_value, req->prev_index);
        if (r != 0)
                goto fail;

        event_node_capture(&prev, n);
        if (!req->refresh) {
                r = node_set_value(n, req->value, req->value ? req->value_len : 0);
                if (r < 0) {
                        event_node_clear(&prev);
                        return r;
                }
        }
        r = node_update_ttl(s, n, req->expiration_usec);
        if (r < 0) {
                event_node_clear(&prev);
                return r;
        }
        n->modified_index = next;

        event_node_capture(&en, n);
        e = event_make(STORE_ACTION_COMPARE_AND_SWAP, n->key, next, now, false, &en, &prev);
        if (!e)
                return -ENOMEM;
        s->index = next;
        sink_node_put(s, n);
        s->stats.cas_success++;
        finish(s, ret, e, req->refresh);
        return 0;
fail:
        if (r < 0)
                return r;
        s->stats.cas_fail++;
        return 0;
}

/* Shared by delete, compareAndDelete and expire: the event, then the removal (which notifies the
 * watchers inside the subtree), then the announcement to the ancestors. */
static int remove_with_event(Store *s, StoreNode *n, StoreAction action, uint64_t now, StoreResult *ret) {
        uint64_t next = s->index + 1;
        _cleanup_(freep) char *key = NULL;
        StoreEventNode en, prev;
        StoreEvent *e;

        event_node_capture(&prev, n);
        en = (StoreEventNode) {
                .dir = n->dir,
                .modified_index = next,
                .created_index = n->created_index,
        };
        e = event_make(action, n->key, next, now, n->dir, &en, &prev);
        if (!e)
                return -ENOMEM;

        key = strdup(n->key);
        if (!key) {
                store_event_unref(e);
                return -ENOMEM;
        }
        s->index = next;
        node_remove(s, n, e);
        sink_node_delete(s, key);
        notify(s, e);
        if (ret) {
                ret->event = e;
                ret->index = s->index;
        } else
                store_event_unref(e);
        return 0;
}

static int op_delete(Store *s, const StoreRequest *req, uint64_t now, StoreResult *ret) {
        bool dir = req->dir || req->recursive;
        StoreNode *n;
        int r;

        /* etcd2's Delete() returns RootROnly without setting the err its deferred stats read */
        if (is_readonly(req->path)) {
                r = set_error_key(ret, ETCD_ERROR_ROOT_RONLY, "/");
                if (r < 0)
                        return r;
                s->stats.delete_success++;
                return 0;
        }
        r = walk_get(s, req->path, &n, ret);
        if (r != 0)
                goto fail;
        if (n->dir) {
                if (!dir) {
                        r = set_error_key(ret, ETCD_ERROR_NOT_FILE, n->key);
                        goto fail;
                }
                if (n->n_children > 0 && !req->recursive) {
                        r = set_error_key(ret, ETCD_ERROR_DIR_NOT_EMPTY, n->key);
                        goto fail;
                }
        }
        r = remove_with_event(s, n, STORE_ACTION_DELETE, now, ret);
        if (r < 0)
                return r;
        s->stats.delete_success++;
        return 0;
fail:
        if (r < 0)
                return r;
        s->stats.delete_fail++;
        return 0;
}

static int op_cad(Store *s, const StoreRequest *req, uint64_t now, StoreResult *ret) {
        StoreNode *n;
        int r;

        r = walk_get(s, req->path, &n, ret);
        if (r != 0)
                goto fail;
        /* etcd2's CompareAndDelete() returns NotFile and TestFailed without setting the err its
         * deferred stats read: they count as compareAndDeleteSuccess (etcd 2.3.8 and 3.4 alike) */
        if (n->dir) {
                r = set_error_key(ret, ETCD_ERROR_NOT_FILE, req->path);
                goto fail_as_success;
        }
        r = compare(ret, n, req->prev_value, req->prev_index);
        if (r != 0)
                goto fail_as_success;
        r = remove_with_event(s, n, STORE_ACTION_COMPARE_AND_DELETE, now, ret);
        if (r < 0)
                return r;
        s->stats.cad_success++;
        return 0;
fail:
        if (r < 0)
                return r;
        s->stats.cad_fail++;
        return 0;
fail_as_success:
        if (r < 0)
                return r;
        s->stats.cad_success++;
        return 0;
}

/* DeleteExpiredKeys: in expiration order, each node (a dir with its subtree) gives an "expire".
 * etcd expires everything due in one go; a cap (from the entry itself, so that every member applies
 * the same) lets 100k keys of one TTL expire over many entries instead of one that holds the loop. */
static int op_sync(Store *s, uint64_t cutoff_usec, uint64_t max, uint64_t now) {
        int r;

        for (uint64_t n = 0; (max == 0 || n < max) && s->heap_n > 0 && s->heap[0]->expiration_usec <= cutoff_usec; n++) {
                r = remove_with_event(s, s->heap[0], STORE_ACTION_EXPIRE, now, NULL);
                if (r < 0)
                        return r;
                s->stats.expire_count++;
                metrics.store_expires++;
        }
        return 0;
}

void store_count_get(Store *s, bool found) {
        metrics.store_reads[METRICS_STORE_GET]++;
        if (found)
                s->stats.gets_success++;
        else
                s->stats.gets_fail++;
}

static int do_get(Store *s, const char *path, bool recursive, bool sorted, uint64_t now, StoreResult *ret) {
        StoreNode *n;
        StoreEvent *e;
        int r;

        /* store/metrics.go: every Get is a read, found or not (quorum GETs when applied) */
        metrics.store_reads[recursive ? METRICS_STORE_GET_RECURSIVE : METRICS_STORE_GET]++;
        r = walk_get(s, path, &n, ret);
        if (r < 0)
                return r;
        if (r > 0) {
                s->stats.gets_fail++;
                ret->index = s->index;
                return 0;
        }

        buf_reset(&s->buf);
        buf_puts(&s->buf, "{\"action\":\"get\",\"node\":");
        render_node(&s->buf, n, true, recursive, sorted, now);
        buf_puts(&s->buf, "}\n");
        if (s->buf.oom)
                return -ENOMEM;
        e = event_alloc(STORE_ACTION_GET, n->key, n->key_len, n->modified_index, s->buf.p, s->buf.n);
        if (!e)
                return -ENOMEM;
        /* do not keep megabytes of scratch space around after listing a huge directory */
        if (s->buf.cap > 1024 * 1024) {
                s->buf.p = mfree(s->buf.p);
                s->buf.cap = s->buf.n = 0;
        }
        s->stats.gets_success++;
        ret->event = e;
        ret->index = s->index;
        return 0;
}

int store_get(Store *s, const char *path, bool recursive, bool sorted, uint64_t now_usec, StoreResult *ret) {
        assert(s);
        assert(path);
        assert(ret);

        *ret = (StoreResult) {};
        reap(s, REAP_BUDGET);
        return do_get(s, path, recursive, sorted, now_usec, ret);
}

int store_apply(Store *s, const StoreRequest *req, uint64_t now_usec, StoreResult *ret) {
        int r;

        assert(s);
        assert(req);
        assert(ret);
        assert(s->dispatching == 0); /* no store_apply() from inside a watcher callback */

        *ret = (StoreResult) {};
        reap(s, REAP_BUDGET);

        switch (req->method) {
        /* store/metrics.go: each write counts under its store operation, failed or not */
        case STORE_METHOD_POST:
                metrics.store_writes[METRICS_STORE_CREATE]++;
                r = op_create(s, req, true, now_usec, ret);
                break;

        case STORE_METHOD_PUT:
                if (req->prev_exist == 1) {
                        if (req->prev_index == 0 && isempty(req->prev_value)) {
                                metrics.store_writes[METRICS_STORE_UPDATE]++;
                                r = op_update(s, req, now_usec, ret);
                        } else {
                                metrics.store_writes[METRICS_STORE_COMPARE_AND_SWAP]++;
                                r = op_cas(s, req, now_usec, ret);
                        }
                } else if (req->prev_exist == 0) {
                        metrics.store_writes[METRICS_STORE_CREATE]++;
                        r = op_create(s, req, false, now_usec, ret);
                } else if (req->prev_index > 0 || !isempty(req->prev_value)) {
                        metrics.store_writes[METRICS_STORE_COMPARE_AND_SWAP]++;
                        r = op_cas(s, req, now_usec, ret);
                } else {
                        metrics.store_writes[METRICS_STORE_SET]++;
                        r = op_set(s, req, now_usec, ret);
                }
                break;

        case STORE_METHOD_DELETE:
                if (req->prev_index > 0 || !isempty(req->prev_value)) {
                        metrics.store_writes[METRICS_STORE_COMPARE_AND_DELETE]++;
                        r = op_cad(s, req, now_usec, ret);
                } else {
                        metrics.store_writes[METRICS_STORE_DELETE]++;
                        r = op_delete(s, req, now_usec, ret);
                }
                break;

        case STORE_METHOD_QGET:
                r = do_get(s, req->path, req->recursive, req->sorted, now_usec, ret);
                break;

        case STORE_METHOD_SYNC:
                r = op_sync(s, req->time_usec, req->prev_index, now_usec);
                break;

        default:
                return -EINVAL;
        }
        if (r < 0) {
                store_result_done(ret);
                return r;
        }
        ret->index = s->index;
        return 0;
}

char *etcd_error_to_json(EtcdError e, const char *cause, uint64_t index, size_t *ret_len) {
        const char *msg = etcd_error_message(e);
        Buf b = {};

        buf_puts(&b, "{\"errorCode\":");
        buf_u64(&b, (uint64_t) e);
        buf_puts(&b, ",\"message\":");
        buf_json_string(&b, strempty(msg), strlen(strempty(msg)));
        if (!isempty(cause)) {
                buf_puts(&b, ",\"cause\":");
                buf_json_string(&b, cause, strlen(cause));
        }
        buf_puts(&b, ",\"index\":");
        buf_u64(&b, index);
        buf_puts(&b, "}\n");
        if (b.oom) {
                free(b.p);
                return NULL;
        }
        if (ret_len)
                *ret_len = b.n;
        return b.p;
}

/* ---------------------------------------------------------------------------------------------- */
/* Life cycle, stats, lookups */

int store_new(Store **ret) {
        Store *s;

        assert(ret);

        s = calloc(1, sizeof(Store));
        if (!s)
                return -ENOMEM;
        s->root = node_new(NULL, "", 0, true, 0, 0);
        if (!s->root) {
                free(s);
                return -ENOMEM;
        }
        s->root->key_len = 1;
        s->root->name_off = 1;
        /* etcdserver creates the namespaces "/0" (cluster) and "/1" (keys) up front, read-only */
        for (const char *ns = "01"; *ns; ns++) {
                StoreNode *n = node_new(s->root, ns, 1, true, 0, 0);

                if (!n || node_add_child(s->root, n) < 0) {
                        free(n);
                        store_free(s);
                        return -ENOMEM;
                }
        }
        *ret = s;
        return 0;
}

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        assert(s->dispatching == 0);

        for (size_t i = 0; i < s->wl_cap; i++)
                while (s->wl_buckets[i]) {
                        WatchList *l = s->wl_buckets[i];

                        s->wl_buckets[i] = l->bucket_next;
                        while (l->head) {
                                StoreWatcher *w = l->head;

                                l->head = w->next;
                                free(w);
                        }
                        free(l);
                }
        free(s->wl_buckets);
        for (unsigned i = 0; i < s->hist_n; i++)
                store_event_unref(history_at(s, i));
        node_free_tree(s->root);
        reap(s, SIZE_MAX);
        free(s->heap);
        free(s->buf.p);
        free(s);
        return NULL;
}

void store_set_sink(Store *s, const StoreSink *sink) {
        assert(s);
        if (sink)
                s->sink = *sink;
        else
                s->sink = (StoreSink) {};
}

uint64_t store_index(Store *s) {
        assert(s);
        return s->index;
}

char *store_stats_json(Store *s) {
        const struct {
                const char *name;
                uint64_t value;
        } f[] = {
                { "getsSuccess", s->stats.gets_success },
                { "getsFail", s->stats.gets_fail },
                { "setsSuccess", s->stats.sets_success },
                { "setsFail", s->stats.sets_fail },
                { "deleteSuccess", s->stats.delete_success },
                { "deleteFail", s->stats.delete_fail },
                { "updateSuccess", s->stats.update_success },
                { "updateFail", s->stats.update_fail },
                { "createSuccess", s->stats.create_success },
                { "createFail", s->stats.create_fail },
                { "compareAndSwapSuccess", s->stats.cas_success },
                { "compareAndSwapFail", s->stats.cas_fail },
                { "compareAndDeleteSuccess", s->stats.cad_success },
                { "compareAndDeleteFail", s->stats.cad_fail },
                { "expireCount", s->stats.expire_count },
                { "watchers", s->n_watchers },
        };
        Buf b = {};

        buf_putc(&b, '{');
        for (size_t i = 0; i < ELEMENTSOF(f); i++) {
                if (i > 0)
                        buf_putc(&b, ',');
                buf_putc(&b, '"');
                buf_puts(&b, f[i].name);
                buf_puts(&b, "\":");
                buf_u64(&b, f[i].value);
        }
        buf_putc(&b, '}');
        if (b.oom)
                return mfree(b.p);
        return b.p;
}

const StoreNode *store_lookup(Store *s, const char *path) {
        StoreResult r = {};
        StoreNode *n = NULL;

        assert(s);
        assert(path);

        if (walk_get(s, path, &n, &r) != 0) {
                store_result_done(&r);
                return NULL;
        }
        return n;
}

bool store_node_is_dir(const StoreNode *n) {
        assert(n);
        return n->dir;
}

const char *store_node_value(const StoreNode *n, size_t *ret_len) {
        assert(n);
        if (n->dir)
                return NULL;
        if (ret_len)
                *ret_len = n->value_len;
        return n->value ?: "";
}

const char *store_node_key(const StoreNode *n) {
        assert(n);
        return n->key;
}

uint64_t store_node_modified_index(const StoreNode *n) {
        assert(n);
        return n->modified_index;
}

int store_node_foreach_child(const StoreNode *n, int (*cb)(const StoreNode *child, void *userdata),
                             void *userdata) {
        _cleanup_(freep) StoreNode **l = NULL;
        size_t k = 0;

        assert(n);
        assert(cb);

        if (!n->dir || n->n_children == 0)
                return 0;
        l = node_children(n, false, true, &k);
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < k; i++) {
                int r = cb(l[i], userdata);

                if (r != 0)
                        return r;
        }
        return 0;
}

void *store_event_record(const StoreEvent *e, size_t *ret_len) {
        assert(e);
        assert(e->key);
        assert(ret_len);
        return event_encode(e, ret_len);
}

/* ---------------------------------------------------------------------------------------------- */
/* Loading durable state */

int store_load_node(Store *s, const char *key, const void *record, size_t record_len) {
        const uint8_t *r = record;
        StoreResult res = {};
        StoreNode *d, *n;
        const char *name;
        bool dir;
        int k;

        assert(s);
        assert(key);

        if (record_len < NODE_RECORD_HEADER || r[0] != NODE_RECORD_VERSION || key[0] != '/')
                return -EBADMSG;
        dir = r[1] & 1;
        if (streq(key, "/"))
                return 0;

        name = strrchr(key, '/');
        /* parents come first; tolerate a missing one by creating it (it gets its own record later) */
        k = walk_mkdir(s, key, name - key, &d, &res);
        store_result_done(&res);
        if (k < 0)
                return k;
        if (k > 0)
                return -EBADMSG;
        name++;
        if (!*name)
                return -EBADMSG;

        n = node_child(d, name, strlen(name));
        if (n && n->dir != dir)
                return -EBADMSG;
        if (!n) {
                n = node_new(d, name, strlen(name), dir, 0, 0);
                if (!n)
                        return -ENOMEM;
                k = node_add_child(d, n);
                if (k < 0) {
                        free(n);
                        return k;
                }
        }
        n->created_index = get_u64(r + 2);
        n->modified_index = get_u64(r + 10);
        if (!dir) {
                k = node_set_value(n, (const char *) r + NODE_RECORD_HEADER, record_len - NODE_RECORD_HEADER);
                if (k < 0)
                        return k;
        }
        return node_update_ttl(s, n, get_u64(r + 18));
}

static int load_event_v1(uint64_t index, const uint8_t *r, size_t record_len, StoreEvent **ret) {
        uint64_t kl;
        StoreEvent *e;

        if (record_len < EVENT_RECORD_HEADER_V1)
                return -EBADMSG;
        kl = get_u64(r + 11);
        if (kl > record_len - EVENT_RECORD_HEADER_V1 || get_u64(r + 3) != index)
                return -EBADMSG;
        e = event_alloc((StoreAction) r[1], (const char *) r + EVENT_RECORD_HEADER_V1, kl, index,
                        (const char *) r + EVENT_RECORD_HEADER_V1 + kl, record_len - EVENT_RECORD_HEADER_V1 - kl);
        if (!e)
                return -ENOMEM;
        e->refresh = r[2] & EVENT_FLAG_REFRESH;
        e->prev_dir = r[2] & EVENT_FLAG_PREV_DIR;
        /* inside JSON strings every quote is escaped, so this only matches the member name */
        e->has_prev = memmem(e->json, e->json_len, "\"prevNode\":", 11);
        *ret = e;
        return 0;
}

static int load_event_v2(uint64_t index, const uint8_t *r, size_t record_len, StoreEvent **ret) {
        StoreEventNode en, prev;
        uint64_t kl, vl, pvl;
        const char *p;
        StoreEvent *e;

        if (record_len < EVENT_RECORD_HEADER || get_u64(r + 3) != index)
                return -EBADMSG;
        kl = get_u64(r + 11);
        vl = get_u64(r + 43);
        pvl = get_u64(r + 75);
        if (kl > record_len || vl > record_len || pvl > record_len ||
            EVENT_RECORD_HEADER + kl + vl + pvl != record_len || kl == 0)
                return -EBADMSG;
        p = (const char *) r + EVENT_RECORD_HEADER;
        en = (StoreEventNode) {
                .has_value = r[2] & EVENT_FLAG_NODE_VALUE,
                .dir = r[2] & EVENT_FLAG_NODE_DIR,
                .expiration_usec = get_u64(r + 27),
                .modified_index = index,
                .created_index = get_u64(r + 35),
                .value_len = vl,
        };
        prev = (StoreEventNode) {
                .has_value = r[2] & EVENT_FLAG_PREV_VALUE,
                .dir = r[2] & EVENT_FLAG_PREV_NODE_DIR,
                .expiration_usec = get_u64(r + 51),
                .modified_index = get_u64(r + 59),
                .created_index = get_u64(r + 67),
                .value_len = pvl,
        };
        if (en.has_value) {
                en.value = value_new(p + kl, vl);
                if (!en.value)
                        return -ENOMEM;
        }
        if (prev.has_value) {
                prev.value = value_new(p + kl + vl, pvl);
                if (!prev.value) {
                        event_node_clear(&en);
                        return -ENOMEM;
                }
        }
        e = event_alloc((StoreAction) r[1], p, kl, index, NULL, 0);
        if (!e) {
                event_node_clear(&en);
                event_node_clear(&prev);
                return -ENOMEM;
        }
        e->refresh = r[2] & EVENT_FLAG_REFRESH;
        e->prev_dir = r[2] & EVENT_FLAG_PREV_DIR;
        e->has_prev = r[2] & EVENT_FLAG_HAS_PREV;
        e->now_usec = get_u64(r + 19);
        e->node = en;
        if (e->has_prev)
                e->prev = prev;
        else
                event_node_clear(&prev);
        *ret = e;
        return 0;
}

int store_load_event(Store *s, uint64_t index, const void *record, size_t record_len) {
        const uint8_t *r = record;
        StoreEvent *e = NULL;
        int k;

        assert(s);

        if (record_len < 3 || r[1] >= _STORE_ACTION_MAX)
                return -EBADMSG;
        if (s->hist_n > 0 && index <= s->hist_last)
                return -EBADMSG;
        if (r[0] == EVENT_RECORD_VERSION_JSON)
                k = load_event_v1(index, r, record_len, &e);
        else if (r[0] == EVENT_RECORD_VERSION)
                k = load_event_v2(index, r, record_len, &e);
        else
                k = -EBADMSG;
        if (k < 0)
                return k;
        history_push(s, e, false);
        store_event_unref(e);
        return 0;
}

int store_load_finish(Store *s, uint64_t etcd_index) {
        assert(s);

        s->index = etcd_index;
        return 0;
}
