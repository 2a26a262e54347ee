/* SPDX-License-Identifier: Apache-2.0 */
/* store.h - the etcd v2 tree: dirs, files, TTL, CAS/CAD, indexes, watchers, event history [no I/O]. */
#pragma once

/*
 * The store is deterministic: every operation takes the wall-clock time it should use as `now_usec`
 * (microseconds since the Unix epoch); it never reads a clock, never does I/O and never logs above
 * debug. The same sequence of store_apply() calls on two members yields the same tree and indexes.
 *
 * Paths are *internal* paths, as etcd2 keeps them: user keys live under "/1" (so the HTTP path
 * /v2/keys/foo is the store path "/1/foo"), cluster membership under "/0", auth under "/2". Paths
 * given to the store are already cleaned (no "//", no "." or "..", no trailing "/"; the root is "/").
 * Rendered JSON shows user keys with the "/1" prefix stripped, exactly as etcd2 does (the root of the
 * user key space, "/1", renders with no "key" field at all); error causes are stripped the same way.
 *
 * Every mutation (including failed ones? no: only successful ones) increments the etcd index by one,
 * produces one StoreEvent, appends it to the history (a ring of the last STORE_HISTORY_MAX events)
 * and notifies matching watchers synchronously from inside the call.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_HISTORY_MAX 1000
#define STORE_KEYS_PREFIX "/1"
#define STORE_MEMBERS_PREFIX "/0/members"

typedef struct Store Store;
typedef struct StoreNode StoreNode;
typedef struct StoreWatcher StoreWatcher;
typedef struct StoreEvent StoreEvent;

/* The v2 errorCode values (etcd error/error.go). Positive, never errno. */
typedef enum EtcdError {
        ETCD_OK = 0,
        ETCD_ERROR_KEY_NOT_FOUND = 100,
        ETCD_ERROR_TEST_FAILED = 101,
        ETCD_ERROR_NOT_FILE = 102,
        ETCD_ERROR_NOT_DIR = 104,
        ETCD_ERROR_NODE_EXIST = 105,
        ETCD_ERROR_ROOT_RONLY = 107,
        ETCD_ERROR_DIR_NOT_EMPTY = 108,
        ETCD_ERROR_UNAUTHORIZED = 110,
        ETCD_ERROR_VALUE_REQUIRED = 201,
        ETCD_ERROR_TTL_NAN = 202,
        ETCD_ERROR_INDEX_NAN = 203,
        ETCD_ERROR_INVALID_FIELD = 209,
        ETCD_ERROR_INVALID_FORM = 210,
        ETCD_ERROR_REFRESH_VALUE = 211,
        ETCD_ERROR_REFRESH_TTL_REQUIRED = 212,
        ETCD_ERROR_RAFT_INTERNAL = 300,
        ETCD_ERROR_LEADER_ELECT = 301,
        ETCD_ERROR_WATCHER_CLEARED = 400,
        ETCD_ERROR_EVENT_INDEX_CLEARED = 401,
} EtcdError;

/* "Key not found", ... (NULL for an unknown code). */
const char *etcd_error_message(EtcdError e);
/* The HTTP status etcd2 answers with (404, 412, 403, 400, 401, 500; 401 -> 400). */
int etcd_error_http_status(EtcdError e);
/* Renders {"errorCode":N,"message":"...","cause":"...","index":N} followed by "\n", as etcd2 does
 * (cause omitted when NULL or empty). Returns a malloc'd NUL-terminated string, NULL on OOM. */
char *etcd_error_to_json(EtcdError e, const char *cause, uint64_t index, size_t *ret_len);

typedef enum StoreAction {
        STORE_ACTION_GET,
        STORE_ACTION_SET,
        STORE_ACTION_CREATE,
        STORE_ACTION_UPDATE,
        STORE_ACTION_DELETE,
        STORE_ACTION_EXPIRE,
        STORE_ACTION_COMPARE_AND_SWAP,
        STORE_ACTION_COMPARE_AND_DELETE,
        _STORE_ACTION_MAX,
        _STORE_ACTION_INVALID = -22,
} StoreAction;

const char *store_action_to_string(StoreAction a); /* "get", "set", "compareAndSwap", ... */

/* What a replicated write asks of the store: etcd2's pb.Request as applyRequest() sees it. */
typedef enum StoreMethod {
        STORE_METHOD_PUT,
        STORE_METHOD_POST,   /* in-order key: create <path>/<index zero-padded to 20 digits> */
        STORE_METHOD_DELETE,
        STORE_METHOD_QGET,   /* quorum GET: a read that went through the log */
        STORE_METHOD_SYNC,   /* expire every node with expiration <= time_usec (at most prev_index of
                              * them if > 0: a leader slices a mass expiry into many entries) */
        _STORE_METHOD_MAX,
        _STORE_METHOD_INVALID = -22,
} StoreMethod;

typedef struct StoreRequest {
        StoreMethod method;
        const char *path;        /* internal path, e.g. "/1/foo" */
        const char *value;       /* may be NULL (= "") */
        size_t value_len;        /* values are byte strings and may contain NUL */
        bool dir;
        int prev_exist;          /* -1 absent, 0 false, 1 true */
        const char *prev_value;  /* NULL or "" = absent (etcd2: empty prevValue means "no check") */
        uint64_t prev_index;     /* 0 = absent; SYNC: expire at most this many nodes (0 = all) */
        bool recursive;
        bool sorted;             /* QGET */
        bool refresh;            /* PUT refresh=true: keep the value, silent for watchers */
        uint64_t expiration_usec;/* absolute Unix time of expiry; 0 = permanent (also removes a TTL) */
        uint64_t time_usec;      /* SYNC: the leader's wall clock */
} StoreRequest;

/* The outcome of an operation. On success `event` holds a reference; on failure error != 0 and
 * cause is the (stripped) key or the comparison text, e.g. "[old != cur] [3 != 7]". */
typedef struct StoreResult {
        EtcdError error;
        char *cause;
        uint64_t index;          /* X-Etcd-Index: the store's current index after the operation */
        StoreEvent *event;
} StoreResult;

void store_result_done(StoreResult *r); /* drops cause and event; r may be reused afterwards */

/* The node (or prevNode) of an event, as raw fields: the JSON is rendered at answer time
 * (store_event_json()), so an event costs its key and values, not their escaped form (a control byte
 * escapes to six). Values are shared by refcount with the tree while it holds the same value. */
typedef struct StoreEventNode {
        char *value;             /* refcounted value buffer (see store.c), NULL for dirs and deletes */
        size_t value_len;
        bool has_value;          /* the JSON has a "value" field */
        bool dir;
        uint64_t expiration_usec;
        uint64_t modified_index;
        uint64_t created_index;
} StoreEventNode;

/* An event, immutable once made and shared by refcount between the history, watchers and replies. */
struct StoreEvent {
        unsigned n_ref;
        StoreAction action;
        char *key;               /* internal key of the node, e.g. "/1/foo" */
        uint64_t index;          /* modifiedIndex of the event's node (the event's etcd index) */
        bool refresh;            /* refresh events are kept in history but never delivered */
        bool prev_dir;           /* delete/expire of a directory (matches watchers below it) */
        bool has_prev;           /* the event has a prevNode (a "set" without one answers 201) */

        /* private to store.c: what the JSON is made of */
        uint64_t now_usec;       /* the clock the "ttl" fields were computed with */
        StoreEventNode node, prev;
        /* {"action":...,"node":{...},"prevNode":{...}}\n: fixed for get results (rendered once, at the
         * read) and for events loaded from version 1 records; otherwise rendered while pinned */
        char *json;
        size_t json_len;
        unsigned json_pins;
        bool json_fixed;
};

/* The event's JSON (with the trailing newline), rendered on first use and kept until the last pin is
 * dropped with store_event_json_unpin(): pin while an answer is being sent, so that one write seen by
 * many watchers is rendered once. NULL on OOM (nothing pinned then). */
const char *store_event_json(StoreEvent *e, size_t *ret_len);
void store_event_json_unpin(StoreEvent *e);

StoreEvent *store_event_ref(StoreEvent *e);
StoreEvent *store_event_unref(StoreEvent *e);

/* Persistence hooks: the store reports every change of its durable state so that the caller can
 * mirror it (the daemon writes them to RocksDB, in one batch per applied entry). All optional. */
typedef struct StoreSink {
        void *userdata;
        /* A node was created or changed; `record` is store_node_encode() output for it. */
        void (*node_put)(void *userdata, const char *key, const void *record, size_t record_len);
        /* The node `key` and, if it is a directory, everything below it is gone. */
        void (*node_delete)(void *userdata, const char *key);
        /* An event entered the history; `record` is store_event_encode() output. Events older than
         * the history window are reported through history_drop (index of the dropped event). */
        void (*history_add)(void *userdata, uint64_t index, const void *record, size_t record_len);
        void (*history_drop)(void *userdata, uint64_t index);
} StoreSink;

int store_new(Store **ret);
Store *store_free(Store *s);
void store_set_sink(Store *s, const StoreSink *sink);

uint64_t store_index(Store *s);   /* current etcd index */
/* A Get done by etcd2's auth layer (AuthEnabled()'s read of /2/enabled): counted as any Get. */
void store_count_get(Store *s, bool found);

/* Applies a replicated request (PUT/POST/DELETE/QGET/SYNC). `now_usec` is this member's wall clock
 * for rendering "ttl". Returns 0 and fills *ret (success or an EtcdError in ret->error), or -ENOMEM. */
int store_apply(Store *s, const StoreRequest *req, uint64_t now_usec, StoreResult *ret);

/* A plain (local) GET: action "get", one level of children unless recursive; sorted by key if
 * sorted. Hidden children (name starting with '_') are omitted from listings. */
int store_get(Store *s, const char *path, bool recursive, bool sorted, uint64_t now_usec, StoreResult *ret);

/* Big removed directories are freed a slice at a time by the next store_apply()/store_get() calls;
 * this frees up to `budget` more nodes (e.g. from an idle event source) and says whether any remain. */
bool store_reap(Store *s, size_t budget);

/* Expiry: the earliest expiration (usec) of any node, or 0 if no node has a TTL. The leader proposes
 * a SYNC with its wall clock once that time has passed. */
uint64_t store_next_expiration(Store *s);

/* Watchers.
 * The callback runs synchronously inside store_apply()/store_watcher_free() callers' context with a
 * borrowed event (take a ref to keep it). A non-stream watcher is removed and freed by the store right
 * after its callback returns (the callback must forget the pointer); a stream watcher stays until
 * store_watcher_free(). A watcher whose callback returns < 0 is removed and freed as well.
 *
 * store_watch(): since_index 0 means "from the next index". If since_index is within the history and
 * a matching event exists, that event is returned in *ret_event (a new ref) and no watcher is created
 * (*ret_watcher = NULL), as etcd2 does. If since_index is older than the history window the function
 * returns ETCD_ERROR_EVENT_INDEX_CLEARED (positive) with *ret_cause set to
 * "the requested history has been cleared [oldest/requested]". Returns 0 on success, < 0 on OOM. */
typedef int (*StoreWatchCallback)(StoreWatcher *w, StoreEvent *e, void *userdata);

int store_watch(Store *s, const char *path, bool recursive, bool stream, uint64_t since_index,
                StoreWatchCallback cb, void *userdata,
                StoreWatcher **ret_watcher, StoreEvent **ret_event, char **ret_cause);
StoreWatcher *store_watcher_free(StoreWatcher *w);
unsigned store_n_watchers(Store *s);
/* Moves every watcher of `from` to `to` (which has none), as a snapshot install that replaces the
 * store must: they fire on the next matching change of `to`. -EBUSY inside a notification. */
int store_move_watchers(Store *from, Store *to);

/* Stats for /v2/stats/store: renders etcd2's JSON object (getsSuccess ... watchers), malloc'd.
 * store_get() counts gets; failed/succeeded writes are counted by store_apply(). */
char *store_stats_json(Store *s);

/* Lookup for internal users (members API): NULL if absent. Borrowed pointers, valid until the next
 * mutation. */
const StoreNode *store_lookup(Store *s, const char *path);
bool store_node_is_dir(const StoreNode *n);
const char *store_node_value(const StoreNode *n, size_t *ret_len);
/* Iterates over the direct children of a directory in key order; stops when cb returns != 0. */
int store_node_foreach_child(const StoreNode *n, int (*cb)(const StoreNode *child, void *userdata), void *userdata);
const char *store_node_key(const StoreNode *n);
uint64_t store_node_modified_index(const StoreNode *n);

/* A node record (the sink's node_put format) made from its fields, for an importer (import.c); malloc'd,
 * NULL on OOM. */
void *store_node_record_new(bool dir, uint64_t created_index, uint64_t modified_index, uint64_t expiration_usec,
                            const char *value, size_t value_len, size_t *ret_len);
/* An event record (the sink's history_add format) of an event filled in by an importer: its node and prev
 * values may be plain buffers (they are copied). malloc'd, NULL on OOM. */
void *store_event_record(const StoreEvent *e, size_t *ret_len);

/* Durable state: records for the sink above, and the loader used at start-up.
 * store_load_node() must be called with parents before children (key order does that);
 * store_load_event() in index order; store_load_finish() sets the index and rebuilds the TTL heap. */
int store_load_node(Store *s, const char *key, const void *record, size_t record_len);
int store_load_event(Store *s, uint64_t index, const void *record, size_t record_len);
int store_load_finish(Store *s, uint64_t etcd_index);
