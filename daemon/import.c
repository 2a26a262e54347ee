/* SPDX-License-Identifier: Apache-2.0 */
/* import.c - --import-v2-data-dir: reads an etcd v2 data dir and writes ours from it. */

/*
 * etcd 2.3.8 (and etcd 3.x for its v2 store, and `etcdctl backup` in v2 mode) keeps a member's state as
 * member/snap/<term>-<index>.snap (snappb.Snapshot{crc, data}; data a raftpb.Snapshot whose data is the
 * v2 store as store.Save() writes it: JSON with the node tree and CurrentIndex) and
 * member/wal/<seq>-<index>.wal (length-prefixed walpb.Records with CRC-32C chained across records and
 * files). The import does what etcd does at restart: snapshotter.Load() (the newest .snap that
 * decodes), wal.OpenForRead() at that snapshot, ReadAll() (entries after the snapshot, a later entry
 * replacing the ones from its index on, the last HardState), then the entries up to HardState.commit
 * applied as applyRequest() and applyConfChange() do. Applying them to our store (store_apply(), the
 * same path the member's FSM takes) gives the same keys and the same indexes: etcd's CurrentIndex
 * counts membership writes (/0/members) too, so conf changes are applied to /0 as etcd does, and /0 is
 * left out of what we write: membership is ours (we start as a one-member cluster). /1 (keys, hidden
 * ones included) and /2 (v2 auth, which we keep in etcd2's layout) come along.
 *
 * Everything is decoded before anything is written; the new data dir is built in a temporary
 * directory inside --data-dir and renamed into place when it is complete, so a refused or interrupted
 * import leaves no member behind.
 *
 * The event history comes along: the snapshot's (etcd's watcherHub, the last 1000 events) and the events
 * of the replayed entries, so a waitIndex in that window answers as it did with etcd.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-daemon.h>

#include "codec.h"
#include "etcd2-v2.pb-c.h"
#include "import.h"
#include "log.h"
#include "macro.h"
#include "persist.h"
#include "raft-io.h"

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

#define IMPORT_TMP_NAME ".import-v2"
#define IMPORT_BATCH_RECORDS 20000U
#define IMPORT_RAFT_INDEX 1     /* the Raft snapshot that stands for the imported state */
#define WAL_SECTOR_SIZE 512

/* ---------------------------------------------------------------------------------------------- */
/* CRC-32C */

static uint32_t crc32c_table[256];

static void crc32c_init(void) {
        if (crc32c_table[1])
                return;
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;

                for (unsigned k = 0; k < 8; k++)
                        c = c & 1 ? 0x82f63b78U ^ (c >> 1) : c >> 1;
                crc32c_table[i] = c;
        }
}

uint32_t import_crc32c(uint32_t crc, const void *buf, size_t len) {
        const uint8_t *p = buf;

        crc32c_init();
        crc = ~crc;
        for (size_t i = 0; i < len; i++)
                crc = crc32c_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
        return ~crc;
}

/* ---------------------------------------------------------------------------------------------- */
/* WAL records */

static char *errorf(const char *fmt, ...) _printf_(1, 2);
static char *errorf(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        return s;
}

/* decoder.isTornEntry(): a frame with a 512-byte sector (counted from the file's start) all zeros was
 * never completely written. */
static bool wal_torn(const uint8_t *data, size_t len, size_t file_off) {
        size_t cur = 0;

        while (cur < len) {
                size_t chunk = WAL_SECTOR_SIZE - file_off % WAL_SECTOR_SIZE;
                bool zero = true;

                chunk = MIN(chunk, len - cur);
                for (size_t i = 0; i < chunk && zero; i++)
                        zero = data[cur + i] == 0;
                if (zero)
                        return true;
                cur += chunk;
                file_off += chunk;
        }
        return false;
}

int import_wal_file_decode(const uint8_t *buf, size_t size, bool last_file, uint32_t *crc,
                           ImportRecordCallback cb, void *userdata, char **ret_error) {
        size_t off = 0;
        int r;

        assert(buf || size == 0);
        assert(crc);
        assert(ret_error);

        *ret_error = NULL;
        while (off < size) {
                Etcd2v2__WalRecord *rec;
                uint64_t l = 0, rec_bytes, pad;
                const uint8_t *data;
                bool bad_crc;

                if (size - off < 8) {
                        bool zero = true;

                        for (size_t i = off; i < size && zero; i++)
                                zero = buf[i] == 0;
                        if (zero)
                                return 0;
                        if (last_file)
                                return 1;
                        *ret_error = errorf("partial record length at offset %zu", off);
                        return -EBADMSG;
                }
                for (unsigned i = 0; i < 8; i++)
                        l |= (uint64_t) buf[off + i] << (8 * i);
                if (l == 0)
                        return 0;       /* preallocated, never written */
                rec_bytes = l & ~((uint64_t) 0xff << 56);
                pad = (int64_t) l < 0 ? (l >> 56) & 0x7 : 0;
                if ((int64_t) l > 0 && (l >> 56) != 0) {
                        *ret_error = errorf("record length %" PRIu64 " at offset %zu out of range", l, off);
                        return -EBADMSG;
                }
                if (rec_bytes > size - off - 8 || pad > size - off - 8 - rec_bytes) {
                        if (last_file)
                                return 1;
                        *ret_error = errorf("record at offset %zu is cut short (%" PRIu64 " bytes announced, %zu left)",
                                            off, rec_bytes + pad, size - off - 8);
                        return -EBADMSG;
                }
                data = buf + off + 8;
                rec = etcd2v2__wal_record__unpack(NULL, rec_bytes, data);
                bad_crc = false;
                if (rec && rec->type != IMPORT_WAL_CRC) {
                        uint32_t c = import_crc32c(*crc, rec->data.data, rec->data.len);

                        if (!rec->has_crc || rec->crc != c)
                                bad_crc = true;
                        else
                                *crc = c;
                }
                if (!rec || bad_crc) {
                        if (rec)
                                etcd2v2__wal_record__free_unpacked(rec, NULL);
                        if (last_file && wal_torn(data, rec_bytes + pad, off + 8))
                                return 1;
                        *ret_error = errorf(bad_crc ? "CRC-32C mismatch in the record at offset %zu" :
                                                      "undecodable record at offset %zu", off);
                        return -EBADMSG;
                }
                r = cb(rec->type, rec->crc, rec->data.data, rec->data.len, userdata);
                etcd2v2__wal_record__free_unpacked(rec, NULL);
                if (r < 0)
                        return r;
                off += 8 + rec_bytes + pad;
        }
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Times */

int import_parse_time(const char *s, uint64_t *ret_usec) {
        struct tm tm = {};
        uint64_t frac = 0;
        unsigned digits = 0;
        int64_t secs, off = 0;
        const char *p;
        int n = 0;

        assert(s);
        assert(ret_usec);

        if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                   &tm.tm_min, &tm.tm_sec, &n) != 6 || n != 19)
                return -EINVAL;
        p = s + n;
        if (*p == '.') {
                for (p++; *p >= '0' && *p <= '9'; p++, digits++)
                        if (digits < 6)
                                frac = frac * 10 + (uint64_t) (*p - '0');
                if (digits == 0)
                        return -EINVAL;
                for (unsigned d = digits; d < 6; d++)
                        frac *= 10;
        }
        if (*p == 'Z')
                p++;
        else if (*p == '+' || *p == '-') {
                int hh, mm;

                if (sscanf(p + 1, "%2d:%2d%n", &hh, &mm, &n) != 2 || n != 5)
                        return -EINVAL;
                off = (int64_t) (hh * 3600 + mm * 60) * (*p == '-' ? -1 : 1);
                p += 6;
        } else
                return -EINVAL;
        if (*p)
                return -EINVAL;
        if (tm.tm_year <= 1) {
                /* Go's zero time: no expiry */
                *ret_usec = 0;
                return 0;
        }
        tm.tm_year -= 1900;
        tm.tm_mon -= 1;
        secs = (int64_t) timegm(&tm) - off;
        if (secs <= 0)
                return -EINVAL;
        *ret_usec = (uint64_t) secs * USEC_PER_SEC + frac;
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Reading the data dir */

typedef struct FileData {
        uint8_t *buf;
        size_t size;
} FileData;

static int read_file(const char *path, FileData *ret) {
        _cleanup_(closep) int fd = -1;
        _cleanup_free_ uint8_t *buf = NULL;
        struct stat st;
        size_t done = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        buf = malloc(MAX((size_t) st.st_size, (size_t) 1));
        if (!buf)
                return -ENOMEM;
        while (done < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + done, (size_t) st.st_size - done);

                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                done += (size_t) k;
        }
        *ret = (FileData) { .buf = TAKE_PTR(buf), .size = done };
        return 0;
}

static int name_cmp(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

/* Names in `dir` of the form %016x-%016x<suffix>, sorted. */
static int list_names(const char *dir, const char *suffix, char ***ret, size_t *ret_n) {
        _cleanup_strv_free_ char **l = NULL;
        DIR *d;
        struct dirent *de;
        size_t n = 0;

        d = opendir(dir);
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                uint64_t a, b;
                int k = 0;
                char **nl;

                if (sscanf(de->d_name, "%16" SCNx64 "-%16" SCNx64 "%n", &a, &b, &k) != 2 || k != 33 ||
                    !streq(de->d_name + k, suffix))
                        continue;
                nl = realloc(l, (n + 2) * sizeof(char *));
                if (!nl) {
                        closedir(d);
                        return -ENOMEM;
                }
                l = nl;
                l[n] = strdup(de->d_name);
                l[n + 1] = NULL;
                if (!l[n]) {
                        closedir(d);
                        return -ENOMEM;
                }
                n++;
        }
        closedir(d);
        if (n > 0)
                qsort(l, n, sizeof(char *), name_cmp);
        *ret = TAKE_PTR(l);
        *ret_n = n;
        return 0;
}

/* snapshotter.Load(): the newest .snap that decodes and matches its CRC; a broken one is skipped with a
 * warning (etcd renames it .broken; we only read). Returns 0 and NULL if there is none. */
static int load_snapshot(const char *snap_dir, int warn_level, Etcd2v2__Snapshot **ret) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;
        int r;

        r = list_names(snap_dir, ".snap", &names, &n);
        if (r == -ENOENT) {
                *ret = NULL;
                return 0;
        }
        if (r < 0)
                return log_error_errno(r, "Failed to list '%s': %m", snap_dir);
        for (size_t i = n; i > 0; i--) {
                _cleanup_free_ char *path = NULL;
                Etcd2v2__SnapFile *sf;
                Etcd2v2__Snapshot *snap;
                FileData f = {};

                if (asprintf(&path, "%s/%s", snap_dir, names[i - 1]) < 0)
                        return log_oom();
                r = read_file(path, &f);
                if (r < 0)
                        return log_error_errno(r, "Failed to read '%s': %m", path);
                sf = f.size > 0 ? etcd2v2__snap_file__unpack(NULL, f.size, f.buf) : NULL;
                free(f.buf);
                if (!sf || !sf->has_crc || sf->data.len == 0 ||
                    import_crc32c(0, sf->data.data, sf->data.len) != sf->crc) {
                        log_full(warn_level, "Snapshot file '%s' is %s, trying an older one.", path,
                                    !sf ? "empty or undecodable" : "corrupt (CRC-32C mismatch)");
                        if (sf)
                                etcd2v2__snap_file__free_unpacked(sf, NULL);
                        continue;
                }
                snap = etcd2v2__snapshot__unpack(NULL, sf->data.len, sf->data.data);
                etcd2v2__snap_file__free_unpacked(sf, NULL);
                if (!snap || !snap->metadata) {
                        log_full(warn_level, "Snapshot file '%s' holds no raft snapshot, trying an older one.", path);
                        if (snap)
                                etcd2v2__snapshot__free_unpacked(snap, NULL);
                        continue;
                }
                log_debug("Importing from snapshot '%s' (index %" PRIu64 ", term %" PRIu64 ").", path,
                         snap->metadata->index, snap->metadata->term);
                *ret = snap;
                return 0;
        }
        if (n > 0) {
                log_error("None of the %zu snapshot files in '%s' is readable.", n, snap_dir);
                return -EBADMSG;
        }
        *ret = NULL;
        return 0;
}

typedef struct WalState {
        uint64_t start_index, start_term;
        bool match;
        Etcd2v2__Entry **ents;   /* ents[i] has index start_index + 1 + i */
        size_t n_ents, cap_ents;
        Etcd2v2__HardState *state;
        uint8_t *metadata;
        size_t metadata_len;
        bool have_metadata;
        char *error;
} WalState;

static void wal_state_done(WalState *w) {
        for (size_t i = 0; i < w->n_ents; i++)
                etcd2v2__entry__free_unpacked(w->ents[i], NULL);
        free(w->ents);
        if (w->state)
                etcd2v2__hard_state__free_unpacked(w->state, NULL);
        free(w->metadata);
        free(w->error);
}

static int wal_on_record(int64_t type, uint32_t crc, const uint8_t *data, size_t len, void *userdata) {
        WalState *w = userdata;

        switch (type) {
        case IMPORT_WAL_ENTRY: {
                Etcd2v2__Entry *e = etcd2v2__entry__unpack(NULL, len, data);
                size_t at;

                if (!e) {
                        w->error = errorf("undecodable raft entry");
                        return -EBADMSG;
                }
                if (e->index <= w->start_index) {
                        etcd2v2__entry__free_unpacked(e, NULL);
                        return 0;
                }
                /* ents = append(ents[:e.Index-w.start.Index-1], e): a later entry replaces the tail */
                at = (size_t) (e->index - w->start_index - 1);
                if (at > w->n_ents) {
                        w->error = errorf("raft entry %" PRIu64 " follows entry %" PRIu64, e->index,
                                          w->start_index + w->n_ents);
                        etcd2v2__entry__free_unpacked(e, NULL);
                        return -EBADMSG;
                }
                while (w->n_ents > at)
                        etcd2v2__entry__free_unpacked(w->ents[--w->n_ents], NULL);
                if (w->n_ents == w->cap_ents) {
                        size_t cap = MAX(w->cap_ents * 2, (size_t) 1024);
                        Etcd2v2__Entry **n = realloc(w->ents, cap * sizeof(*n));

                        if (!n) {
                                etcd2v2__entry__free_unpacked(e, NULL);
                                return -ENOMEM;
                        }
                        w->ents = n;
                        w->cap_ents = cap;
                }
                w->ents[w->n_ents++] = e;
                return 0;
        }
        case IMPORT_WAL_STATE: {
                Etcd2v2__HardState *h = etcd2v2__hard_state__unpack(NULL, len, data);

                if (!h) {
                        w->error = errorf("undecodable hard state");
                        return -EBADMSG;
                }
                if (w->state)
                        etcd2v2__hard_state__free_unpacked(w->state, NULL);
                w->state = h;
                return 0;
        }
        case IMPORT_WAL_METADATA:
                if (w->have_metadata) {
                        if (len != w->metadata_len || (len > 0 && memcmp(data, w->metadata, len) != 0)) {
                                w->error = errorf("conflicting metadata records");
                                return -EBADMSG;
                        }
                        return 0;
                }
                w->metadata = malloc(MAX(len, (size_t) 1));
                if (!w->metadata)
                        return -ENOMEM;
                if (len > 0)
                        memcpy(w->metadata, data, len);
                w->metadata_len = len;
                w->have_metadata = true;
                return 0;
        case IMPORT_WAL_CRC:
                /* handled by the caller, which keeps the running CRC */
                return 0;
        case IMPORT_WAL_SNAPSHOT: {
                Etcd2v2__WalSnapshot *s = etcd2v2__wal_snapshot__unpack(NULL, len, data);
                bool mismatch;

                if (!s) {
                        w->error = errorf("undecodable snapshot record");
                        return -EBADMSG;
                }
                mismatch = s->index == w->start_index && s->term != w->start_term;
                if (s->index == w->start_index && !mismatch)
                        w->match = true;
                etcd2v2__wal_snapshot__free_unpacked(s, NULL);
                if (mismatch) {
                        w->error = errorf("the snapshot record at index %" PRIu64 " has another term", w->start_index);
                        return -EBADMSG;
                }
                return 0;
        }
        default:
                w->error = errorf("unexpected record type %" PRIi64, type);
                return -EBADMSG;
        }
}

typedef struct CrcCheck {
        uint32_t *crc;
        WalState *w;
} CrcCheck;

/* The CRC record heads each file with the running CRC of the files before it (ReadAll()). */
static int wal_on_record_crc(int64_t type, uint32_t crc, const uint8_t *data, size_t len, void *userdata) {
        CrcCheck *cc = userdata;

        if (type == IMPORT_WAL_CRC) {
                if (*cc->crc != 0 && *cc->crc != crc) {
                        cc->w->error = errorf("CRC record %08x does not match the previous file's %08x", crc, *cc->crc);
                        return -EBADMSG;
                }
                *cc->crc = crc;
                return 0;
        }
        return wal_on_record(type, crc, data, len, cc->w);
}

static int read_wal(const char *wal_dir, int warn_level, WalState *w, bool *ret_torn) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0, first = 0;
        uint64_t prev_seq = 0;
        uint32_t crc = 0;
        bool found = false;
        int r;

        r = list_names(wal_dir, ".wal", &names, &n);
        if (r < 0)
                return log_error_errno(r, "Failed to list '%s': %m", wal_dir);
        if (n == 0) {
                log_error("No WAL files in '%s': not an etcd v2 data dir.", wal_dir);
                return -ENOENT;
        }
        /* searchIndex(): the last file whose first index is <= the snapshot's */
        for (size_t i = n; i > 0; i--) {
                uint64_t seq, index;

                (void) sscanf(names[i - 1], "%16" SCNx64 "-%16" SCNx64, &seq, &index);
                if (index <= w->start_index) {
                        first = i - 1;
                        found = true;
                        break;
                }
        }
        if (!found) {
                log_error("No WAL file in '%s' reaches back to the snapshot at index %" PRIu64 ".", wal_dir,
                          w->start_index);
                return -EBADMSG;
        }
        *ret_torn = false;
        for (size_t i = first; i < n; i++) {
                _cleanup_free_ char *path = NULL, *error = NULL;
                CrcCheck cc = { .crc = &crc, .w = w };
                uint64_t seq, index;
                FileData f = {};

                (void) sscanf(names[i], "%16" SCNx64 "-%16" SCNx64, &seq, &index);
                if (i > first && seq != prev_seq + 1) {
                        log_error("WAL files in '%s' are not in sequence: %s follows %016" PRIx64 ".", wal_dir,
                                  names[i], prev_seq);
                        return -EBADMSG;
                }
                prev_seq = seq;
                if (asprintf(&path, "%s/%s", wal_dir, names[i]) < 0)
                        return log_oom();
                r = read_file(path, &f);
                if (r < 0)
                        return log_error_errno(r, "Failed to read '%s': %m", path);
                r = import_wal_file_decode(f.buf, f.size, i == n - 1, &crc, wal_on_record_crc, &cc, &error);
                free(f.buf);
                if (r == -ENOMEM)
                        return log_oom();
                if (r < 0) {
                        log_error("WAL file '%s' is corrupt: %s; refusing to import it.", path,
                                  w->error ?: error ?: "invalid record");
                        return -EBADMSG;
                }
                if (r > 0) {
                        log_full(warn_level, "WAL file '%s' ends in a torn record (a write cut short): dropping it, "
                                 "as etcd does.", path);
                        *ret_torn = true;
                }
        }
        if (!w->match) {
                log_error("The WAL in '%s' has no record of the snapshot at index %" PRIu64 ".", wal_dir,
                          w->start_index);
                return -EBADMSG;
        }
        return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Building the store */

typedef struct Builder {
        Store *store;
        const StoreSink *sink;
        ImportFlushCallback flush;
        void *userdata;
        uint64_t n_nodes;
        int warn_level;
} Builder;

static bool key_is_membership(const char *key) {
        return streq(key, "/0") || strneq(key, "/0/", 3);
}

static uint64_t json_u64(json_object *o, const char *name) {
        json_object *v;

        if (!json_object_object_get_ex(o, name, &v) || !v)
                return 0;
        return (uint64_t) json_object_get_uint64(v);
}

static int load_json_node(Builder *b, const char *key, json_object *o) {
        json_object *children = NULL, *v;
        uint64_t expiration = 0;
        _cleanup_free_ void *record = NULL;
        const char *value = "";
        size_t value_len = 0, record_len;
        bool dir;
        int r;

        if (!json_object_is_type(o, json_type_object)) {
                log_error("Snapshot node '%s' is not a JSON object.", key);
                return -EBADMSG;
        }
        if (json_object_object_get_ex(o, "Path", &v) && v && !streq(json_object_get_string(v), key)) {
                log_error("Snapshot node '%s' says its path is '%s'.", key, json_object_get_string(v));
                return -EBADMSG;
        }
        /* node.IsDir(): Children != nil */
        dir = json_object_object_get_ex(o, "Children", &children) && children;
        if (dir && !json_object_is_type(children, json_type_object)) {
                log_error("Snapshot node '%s' has malformed children.", key);
                return -EBADMSG;
        }
        if (json_object_object_get_ex(o, "ExpireTime", &v) && v &&
            import_parse_time(json_object_get_string(v), &expiration) < 0) {
                log_error("Snapshot node '%s' has an invalid ExpireTime '%s'.", key, json_object_get_string(v));
                return -EBADMSG;
        }
        if (!dir && json_object_object_get_ex(o, "Value", &v) && v) {
                value = json_object_get_string(v);
                value_len = (size_t) json_object_get_string_len(v);
        }

        if (!streq(key, "/")) {
                record = store_node_record_new(dir, json_u64(o, "CreatedIndex"), json_u64(o, "ModifiedIndex"),
                                               expiration, value, value_len, &record_len);
                if (!record)
                        return -ENOMEM;
                r = store_load_node(b->store, key, record, record_len);
                if (r < 0) {
                        log_error("Failed to load snapshot node '%s': %s", key, strerror(-r));
                        return r == -ENOMEM ? r : -EBADMSG;
                }
                b->n_nodes++;
                if (b->sink && b->sink->node_put && !key_is_membership(key))
                        b->sink->node_put(b->sink->userdata, key, record, record_len);
                if (b->flush && b->n_nodes % 1024 == 0) {
                        r = b->flush(b->userdata);
                        if (r < 0)
                                return r;
                }
        }
        if (!dir)
                return 0;

        json_object_object_foreach(children, name, child) {
                _cleanup_free_ char *ckey = NULL;

                if (!*name || strchr(name, '/') || streq(name, ".") || streq(name, "..")) {
                        log_error("Snapshot node '%s' has a child with an invalid name.", key);
                        return -EBADMSG;
                }
                if (asprintf(&ckey, "%s/%s", streq(key, "/") ? "" : key, name) < 0)
                        return -ENOMEM;
                r = load_json_node(b, ckey, child);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int event_node_from_json(json_object *o, StoreEventNode *ret) {
        json_object *v;
        uint64_t expiration = 0;

        if (!json_object_is_type(o, json_type_object))
                return -EBADMSG;
        if (json_object_object_get_ex(o, "expiration", &v) && v &&
            import_parse_time(json_object_get_string(v), &expiration) < 0)
                return -EBADMSG;
        *ret = (StoreEventNode) {
                .dir = json_object_object_get_ex(o, "dir", &v) && v && json_object_get_boolean(v),
                .expiration_usec = expiration,
                .modified_index = json_u64(o, "modifiedIndex"),
                .created_index = json_u64(o, "createdIndex"),
        };
        if (json_object_object_get_ex(o, "value", &v) && v) {
                ret->has_value = true;
                ret->value = (char *) json_object_get_string(v);
                ret->value_len = (size_t) json_object_get_string_len(v);
        }
        return 0;
}

/* One event of the snapshot's history (store.Event as JSON, internal key): into the store's history and
 * the sink, as if it had just happened. */
static int load_json_event(Builder *b, json_object *o, uint64_t now_usec) {
        _cleanup_free_ void *record = NULL;
        json_object *action, *node, *prev = NULL, *key;
        StoreAction a = _STORE_ACTION_INVALID;
        StoreEvent e = {};
        size_t len;
        int r;

        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "action", &action) ||
            !action || !json_object_object_get_ex(o, "node", &node) || !node ||
            !json_object_object_get_ex(node, "key", &key) || !key)
                return -EBADMSG;
        for (StoreAction i = 0; i < _STORE_ACTION_MAX; i++)
                if (streq(json_object_get_string(action), store_action_to_string(i)))
                        a = i;
        if (a < 0 || a == STORE_ACTION_GET)
                return -EBADMSG;
        e.action = a;
        e.key = (char *) json_object_get_string(key);
        e.now_usec = now_usec;
        r = event_node_from_json(node, &e.node);
        if (r < 0)
                return r;
        e.index = e.node.modified_index;
        if (json_object_object_get_ex(o, "prevNode", &prev) && prev) {
                r = event_node_from_json(prev, &e.prev);
                if (r < 0)
                        return r;
                e.has_prev = true;
        }
        e.prev_dir = (a == STORE_ACTION_DELETE || a == STORE_ACTION_EXPIRE || a == STORE_ACTION_COMPARE_AND_DELETE) &&
                     (e.node.dir || (e.has_prev && e.prev.dir));
        if (e.key[0] != '/' || e.index == 0)
                return -EBADMSG;
        record = store_event_record(&e, &len);
        if (!record)
                return -ENOMEM;
        r = store_load_event(b->store, e.index, record, len);
        if (r < 0)
                return r;
        if (b->sink && b->sink->history_add)
                b->sink->history_add(b->sink->userdata, e.index, record, len);
        return 0;
}

/* watcherHub.EventHistory.Queue: a ring of Capacity slots, Size events from Front, oldest first. Only
 * the ones after the tree's index are not there (none). A history that does not load is not the data:
 * skipped with a warning, waits on those indexes then answer 401 as after a history overflow. */
static int load_json_history(Builder *b, json_object *root) {
        json_object *hub, *hist, *queue, *events;
        uint64_t size, front, capacity, now_usec, n = 0;
        struct timespec ts;

        if (!json_object_object_get_ex(root, "WatcherHub", &hub) || !hub ||
            !json_object_object_get_ex(hub, "EventHistory", &hist) || !hist ||
            !json_object_object_get_ex(hist, "Queue", &queue) || !queue ||
            !json_object_object_get_ex(queue, "Events", &events) || !events ||
            !json_object_is_type(events, json_type_array))
                return 0;
        size = json_u64(queue, "Size");
        front = json_u64(queue, "Front");
        capacity = json_u64(queue, "Capacity");
        if (capacity == 0 || capacity != json_object_array_length(events) || size > capacity || front >= capacity) {
                log_full(b->warn_level, "The snapshot's event history is malformed, not importing it.");
                return 0;
        }
        (void) clock_gettime(CLOCK_REALTIME, &ts);
        now_usec = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
        for (uint64_t i = 0; i < size; i++) {
                json_object *e = json_object_array_get_idx(events, (size_t) ((front + i) % capacity));
                int r;

                r = load_json_event(b, e, now_usec);
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        log_full(b->warn_level, "Event %" PRIu64 " of the snapshot's history does not load, not importing the "
                                    "rest of it.", i);
                        break;
                }
                n++;
        }
        log_debug("Imported %" PRIu64 " events of the snapshot's history.", n);
        return 0;
}

static int load_snapshot_store(Builder *b, const Etcd2v2__Snapshot *snap) {
        _cleanup_(json_putp) json_object *root = NULL;
        json_tokener *tok;
        json_object *r_node, *v;
        int r;

        if (snap->data.len > INT_MAX) {
                log_error("The snapshot's v2 store is too big to import (%zu bytes).", snap->data.len);
                return -EFBIG;
        }
        tok = json_tokener_new_ex(JSON_TOKENER_DEFAULT_DEPTH * 64);
        if (!tok)
                return -ENOMEM;
        root = json_tokener_parse_ex(tok, (const char *) snap->data.data, (int) snap->data.len);
        if (!root || json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(root, json_type_object)) {
                log_error("The snapshot's v2 store is not valid JSON: %s",
                          json_tokener_error_desc(json_tokener_get_error(tok)));
                json_tokener_free(tok);
                return -EBADMSG;
        }
        json_tokener_free(tok);
        if (!json_object_object_get_ex(root, "Root", &r_node) || !r_node ||
            !json_object_object_get_ex(root, "CurrentIndex", &v) || !v) {
                log_error("The snapshot's v2 store has no Root or CurrentIndex.");
                return -EBADMSG;
        }
        r = load_json_node(b, "/", r_node);
        if (r < 0)
                return r;
        r = load_json_history(b, root);
        if (r < 0)
                return r;
        return store_load_finish(b->store, json_u64(root, "CurrentIndex"));
}

static int apply_one(Builder *b, const StoreRequest *req, uint64_t now_usec) {
        StoreResult res = {};
        int r;

        r = store_apply(b->store, req, now_usec, &res);
        if (r >= 0 && res.error != ETCD_OK)
                log_debug("Replayed %s '%s': error %d, as it failed in etcd.",
                          req->method == STORE_METHOD_DELETE ? "DELETE" : "PUT", req->path, (int) res.error);
        store_result_done(&res);
        return r;
}

static bool store_has(Store *s, const char *path) {
        return store_lookup(s, path) != NULL;
}

/* applyConfChange() -> cluster.AddMember/RemoveMember/UpdateRaftAttributes, on the v2 store: the index
 * moves as it did in etcd. A change etcd refused (ValidateConfigurationChange) writes nothing. */
static int apply_conf_change(Builder *b, const Etcd2v2__Entry *e, uint64_t now_usec) {
        _cleanup_free_ char *member = NULL, *attrs = NULL, *removed = NULL;
        Etcd2v2__ConfChange *cc;
        uint64_t id;
        int type, r = 0;

        cc = etcd2v2__conf_change__unpack(NULL, e->data.len, e->data.data);
        if (!cc) {
                log_error("Raft entry %" PRIu64 " holds an undecodable configuration change.", e->index);
                return -EBADMSG;
        }
        id = cc->node_id;
        type = cc->type;
        etcd2v2__conf_change__free_unpacked(cc, NULL);

        if (asprintf(&member, STORE_MEMBERS_PREFIX "/%" PRIx64, id) < 0 ||
            asprintf(&attrs, "%s/raftAttributes", member) < 0 ||
            asprintf(&removed, "/0/removed_members/%" PRIx64, id) < 0)
                return -ENOMEM;

        switch (type) {
        case 0: /* add node */
        case 3: /* add learner node (3.4) */
                if (store_has(b->store, removed) || store_has(b->store, member))
                        return 0;
                r = apply_one(b, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = attrs, .value = "{}",
                                                   .value_len = 2, .prev_exist = 0 }, now_usec);
                break;
        case 1: /* remove node */
                if (!store_has(b->store, member))
                        return 0;
                r = apply_one(b, &(StoreRequest) { .method = STORE_METHOD_DELETE, .path = member, .dir = true,
                                                   .recursive = true, .prev_exist = -1 }, now_usec);
                if (r >= 0)
                        r = apply_one(b, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = removed,
                                                           .prev_exist = 0 }, now_usec);
                break;
        case 2: /* update node */
                if (!store_has(b->store, member))
                        return 0;
                r = apply_one(b, &(StoreRequest) { .method = STORE_METHOD_PUT, .path = attrs, .value = "{}",
                                                   .value_len = 2, .prev_exist = 1 }, now_usec);
                break;
        default:
                log_error("Raft entry %" PRIu64 " holds an unknown configuration change type %d.", e->index, type);
                return -EBADMSG;
        }
        return r;
}

/* path.Clean(path.Join("/", p)), as etcd's store does to every path it is given (the log holds them as
 * clients sent them, e.g. etcd 3.4's v2 auth writes "/2/users/"): the store wants them clean. Into a new
 * malloc'd string. */
static char *path_clean(const char *p) {
        size_t n = strlen(p), len = 0;
        char *out;

        out = malloc(n + 2);
        if (!out)
                return NULL;
        for (const char *c = p; *c; ) {
                const char *e;
                size_t l;

                while (*c == '/')
                        c++;
                if (!*c)
                        break;
                e = strchrnul(c, '/');
                l = (size_t) (e - c);
                if (l == 1 && c[0] == '.')
                        ;
                else if (l == 2 && c[0] == '.' && c[1] == '.') {
                        /* back to the parent ("/name" components); at the root, stays there */
                        while (len > 0 && out[len - 1] != '/')
                                len--;
                        if (len > 0)
                                len--;
                } else {
                        out[len++] = '/';
                        memcpy(out + len, c, l);
                        len += l;
                }
                out[len] = 0;
                c = e;
        }
        if (len == 0)
                out[len++] = '/';
        out[len] = 0;
        return out;
}

static int request_to_store(const Etcd2v2__Request *q, StoreRequest *ret) {
        static const struct {
                const char *name;
                StoreMethod method;
        } methods[] = {
                { "PUT", STORE_METHOD_PUT },
                { "POST", STORE_METHOD_POST },
                { "DELETE", STORE_METHOD_DELETE },
                { "QGET", STORE_METHOD_QGET },
                { "SYNC", STORE_METHOD_SYNC },
        };
        StoreMethod m = _STORE_METHOD_INVALID;

        for (size_t i = 0; i < ELEMENTSOF(methods); i++)
                if (q->method && streq(q->method, methods[i].name))
                        m = methods[i].method;
        if (m == _STORE_METHOD_INVALID)
                return -EBADMSG;
        if (m != STORE_METHOD_SYNC && m != STORE_METHOD_QGET && q->path.len == 0)
                return -EBADMSG;

        *ret = (StoreRequest) {
                .method = m,
                .path = (const char *) q->path.data,
                .value = (const char *) q->val.data,
                .value_len = q->val.len,
                .dir = q->dir,
                .prev_exist = q->has_prev_exist ? q->prev_exist : -1,
                .prev_value = (const char *) q->prev_value.data,
                .prev_index = q->prev_index,
                .recursive = q->recursive,
                .sorted = q->sorted,
                .refresh = q->has_refresh && q->refresh,
                .expiration_usec = q->expiration > 0 ? (uint64_t) q->expiration / NSEC_PER_USEC : 0,
                .time_usec = q->time > 0 ? (uint64_t) q->time / NSEC_PER_USEC : 0,
        };
        /* a refresh with an expiration that rounds to 0 µs would make the key permanent */
        if (q->expiration > 0 && ret->expiration_usec == 0)
                ret->expiration_usec = 1;
        return 0;
}

/* protobuf-c's bytes are not NUL-terminated; the store wants C strings for paths and prevValue. */
static int nul_terminate(ProtobufCBinaryData *d) {
        uint8_t *p = malloc(d->len + 1);

        if (!p)
                return -ENOMEM;
        if (d->len > 0)
                memcpy(p, d->data, d->len);
        p[d->len] = 0;
        free(d->data);
        d->data = p;
        return 0;
}

/* etcd 3.x: an entry is an InternalRaftRequest (v3, or v2 in its field 2) if it parses as one
 * (pbutil.MaybeUnmarshal()), else a bare v2 Request as etcd2 writes them. */
static int apply_normal(Builder *b, const Etcd2v2__Entry *e, uint64_t now_usec, ImportSummary *sum) {
        Etcd2v2__InternalRaftRequest *irr;
        Etcd2v2__Request *q;
        StoreRequest req;
        int r;

        if (e->data.len == 0)
                return 0;       /* the empty entry a new leader appends */

        irr = etcd2v2__internal_raft_request__unpack(NULL, e->data.len, e->data.data);
        if (irr && !irr->v2 && irr->has_header) {
                etcd2v2__internal_raft_request__free_unpacked(irr, NULL);
                sum->n_skipped++;
                return 0;
        }
        if (irr && irr->v2) {
                q = TAKE_PTR(irr->v2);
                etcd2v2__internal_raft_request__free_unpacked(irr, NULL);
        } else {
                if (irr)
                        etcd2v2__internal_raft_request__free_unpacked(irr, NULL);
                q = etcd2v2__request__unpack(NULL, e->data.len, e->data.data);
        }
        if (!q) {
                log_error("Raft entry %" PRIu64 " holds an undecodable request.", e->index);
                return -EBADMSG;
        }
        if (q->path.len > 0 && memchr(q->path.data, 0, q->path.len)) {
                log_error("Raft entry %" PRIu64 " holds a path with a NUL byte.", e->index);
                etcd2v2__request__free_unpacked(q, NULL);
                return -EBADMSG;
        }
        r = nul_terminate(&q->path);
        if (r >= 0)
                r = nul_terminate(&q->val);
        if (r >= 0)
                r = nul_terminate(&q->prev_value);
        if (r >= 0 && q->path.len > 0) {
                char *clean = path_clean((const char *) q->path.data);

                if (!clean)
                        r = -ENOMEM;
                else {
                        free(q->path.data);
                        q->path.data = (uint8_t *) clean;
                        q->path.len = strlen(clean);
                }
        }
        if (r < 0) {
                etcd2v2__request__free_unpacked(q, NULL);
                return r;
        }
        r = request_to_store(q, &req);
        if (r < 0) {
                log_error("Raft entry %" PRIu64 " holds an invalid v2 request (method '%s', path '%s').", e->index,
                          strempty(q->method), (const char *) q->path.data);
                etcd2v2__request__free_unpacked(q, NULL);
                return r;
        }
        /* A quorum read changes nothing (etcd 3.x's /health sends one with an empty path). */
        r = req.method == STORE_METHOD_QGET ? 0 : apply_one(b, &req, now_usec);
        etcd2v2__request__free_unpacked(q, NULL);
        if (r < 0)
                return r;
        sum->n_entries++;
        return 0;
}

/* A sink that forwards to the caller's, leaving out /0. */
static void filter_node_put(void *userdata, const char *key, const void *record, size_t len) {
        const StoreSink *s = userdata;

        if (!key_is_membership(key) && s->node_put)
                s->node_put(s->userdata, key, record, len);
}

static void filter_node_delete(void *userdata, const char *key) {
        const StoreSink *s = userdata;

        if (!key_is_membership(key) && s->node_delete)
                s->node_delete(s->userdata, key);
}

static void filter_history_add(void *userdata, uint64_t index, const void *record, size_t len) {
        const StoreSink *s = userdata;

        if (s->history_add)
                s->history_add(s->userdata, index, record, len);
}

static void filter_history_drop(void *userdata, uint64_t index) {
        const StoreSink *s = userdata;

        if (s->history_drop)
                s->history_drop(s->userdata, index);
}

static void store_freep_(Store **s) {
        if (*s)
                store_free(*s);
}

int import_v2_read(const char *dir, const StoreSink *sink, ImportFlushCallback flush, void *userdata,
                   Store **ret_store, ImportSummary *ret_summary) {
        _cleanup_free_ char *snap_dir = NULL, *wal_dir = NULL;
        _cleanup_(store_freep_) Store *store = NULL;
        Etcd2v2__Snapshot *snap = NULL;
        WalState w = {};
        ImportSummary sum = {};
        StoreSink filter;
        Builder b = {};
        uint64_t commit, now_usec;
        struct timespec ts;
        int warn_level, r;

        assert(dir);
        assert(ret_store);

        if (asprintf(&snap_dir, "%s/member/snap", dir) < 0 || asprintf(&wal_dir, "%s/member/wal", dir) < 0)
                return log_oom();
        if (access(wal_dir, F_OK) < 0)
                return log_error_errno(-errno, "'%s' is not an etcd v2 data dir (no member/wal): %m", dir);

        /* 1. Decode everything: a refusal comes before anything else happens. */
        /* The caller's second run (with a sink) repeats what the first one warned about: at debug level. */
        warn_level = sink ? LOG_DEBUG : LOG_WARNING;
        r = load_snapshot(snap_dir, warn_level, &snap);
        if (r < 0)
                return r;
        if (snap) {
                w.start_index = sum.snapshot_index = snap->metadata->index;
                w.start_term = sum.snapshot_term = snap->metadata->term;
        }
        r = read_wal(wal_dir, warn_level, &w, &sum.torn);
        if (r < 0)
                goto finish;
        commit = w.state ? w.state->commit : 0;
        if (commit < w.start_index)
                commit = w.start_index;
        if (commit > w.start_index + w.n_ents) {
                log_error("The WAL in '%s' commits index %" PRIu64 " but holds entries up to %" PRIu64 " only.",
                          wal_dir, commit, w.start_index + w.n_ents);
                r = -EBADMSG;
                goto finish;
        }

        /* 2. The store: the snapshot's tree, then the committed entries through store_apply(). */
        r = store_new(&store);
        if (r < 0)
                goto finish;
        b = (Builder) { .store = store, .sink = sink, .flush = flush, .userdata = userdata, .warn_level = warn_level };
        if (snap) {
                r = load_snapshot_store(&b, snap);
                if (r < 0)
                        goto finish;
        }
        sum.n_snapshot_nodes = b.n_nodes;
        if (sink) {
                filter = (StoreSink) {
                        .userdata = (void *) sink,
                        .node_put = filter_node_put,
                        .node_delete = filter_node_delete,
                        .history_add = filter_history_add,
                        .history_drop = filter_history_drop,
                };
                store_set_sink(store, &filter);
        }
        (void) clock_gettime(CLOCK_REALTIME, &ts);
        now_usec = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
        for (uint64_t i = 0; i < commit - w.start_index; i++) {
                const Etcd2v2__Entry *e = w.ents[i];

                if (e->type == 1)
                        r = apply_conf_change(&b, e, now_usec);
                else if (e->type == 0)
                        r = apply_normal(&b, e, now_usec, &sum);
                else {
                        log_error("Raft entry %" PRIu64 " has an unknown type %d.", e->index, e->type);
                        r = -EBADMSG;
                }
                if (r >= 0 && flush)
                        r = flush(userdata);
                if (r < 0)
                        goto finish;
        }
        store_set_sink(store, NULL);
        sum.commit_index = commit;

        *ret_store = TAKE_PTR(store);
        if (ret_summary)
                *ret_summary = sum;
        r = 0;
finish:
        if (store)
                store_set_sink(store, NULL);
        if (snap)
                etcd2v2__snapshot__free_unpacked(snap, NULL);
        wal_state_done(&w);
        return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* Writing our data dir */

typedef struct Writer {
        PersistBatch *batch;
        int error;
} Writer;

static void w_node_put(void *userdata, const char *key, const void *record, size_t len) {
        Writer *w = userdata;

        persist_batch_node_put(w->batch, key, record, len);
}

static void w_node_delete(void *userdata, const char *key) {
        Writer *w = userdata;

        persist_batch_node_delete(w->batch, key);
}

static void w_history_add(void *userdata, uint64_t index, const void *record, size_t len) {
        Writer *w = userdata;

        persist_batch_history_add(w->batch, index, record, len);
}

static void w_history_drop(void *userdata, uint64_t index) {
        Writer *w = userdata;

        persist_batch_history_drop(w->batch, index);
}

static int w_flush(void *userdata) {
        Writer *w = userdata;

        if (persist_batch_count(w->batch) < IMPORT_BATCH_RECORDS)
                return 0;
        return persist_write(w->batch, false);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The data dir must be empty or absent (persist_open() creates it); a leftover of an interrupted import is
 * removed. */
static int check_target(const char *data_dir, const char *tmp) {
        DIR *d;
        struct dirent *de;
        bool other = false;

        d = opendir(data_dir);
        if (!d && errno == ENOENT)
                return 0;
        if (!d)
                return log_error_errno(-errno, "Failed to open data dir '%s': %m", data_dir);
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, "..") && !streq(de->d_name, IMPORT_TMP_NAME))
                        other = true;
        closedir(d);
        if (other) {
                log_error("The data dir '%s' is not empty: --import-v2-data-dir imports into an empty or new data "
                          "dir only; nothing was changed.", data_dir);
                return -ENOTEMPTY;
        }
        if (access(tmp, F_OK) >= 0) {
                log_notice("Removing '%s', left by an import that did not finish.", tmp);
                rm_rf(tmp);
        }
        return 0;
}

/* The member's own Raft address, as server.c picks it (self_peer_urls()). */
static const char *self_address(const Config *c) {
        const ClusterMember *m = NULL;

        for (size_t i = 0; i < c->n_initial_members && !m; i++)
                if (c->initial_members[i].id == c->member_id)
                        m = &c->initial_members[i];
        for (size_t i = 0; i < c->n_initial_members && !m; i++)
                if (streq(strempty(c->initial_members[i].name), strempty(c->name)))
                        m = &c->initial_members[i];
        if (m && m->peer_urls.n > 0)
                return m->peer_urls.urls[0].str;
        if (c->initial_advertise_peer_urls.n > 0)
                return c->initial_advertise_peer_urls.urls[0].str;
        return "http://localhost:2380";
}

/* The imported state is not in any log entry: it stands as a Raft snapshot at index 1, term 1 (our marker:
 * the state is in RocksDB), whose configuration is this member alone. The member restarts from it (no
 * bootstrap entry to replay over an empty store), and a member added later gets the state as a snapshot
 * install, since the log it needs begins after it. */
static int write_raft_snapshot(const Config *c, PersistBatch *batch) {
        _cleanup_(persist_snapshot_done) PersistSnapshot ps = {};
        struct raft_configuration conf;
        uint8_t *marker;
        int r;

        raft_configuration_init(&conf);
        if (raft_configuration_add(&conf, c->member_id, self_address(c), RAFT_VOTER) != 0) {
                raft_configuration_close(&conf);
                return -ENOMEM;
        }
        r = raft_io_configuration_encode(&conf, &ps.conf, &ps.conf_len);
        raft_configuration_close(&conf);
        if (r < 0)
                return r;
        marker = malloc(16);
        if (!marker)
                return -ENOMEM;
        memcpy(marker, RAFT_IO_SNAPSHOT_MARKER_MAGIC, 8);
        codec_put_be64(marker + 8, IMPORT_RAFT_INDEX);
        ps.index = ps.conf_index = IMPORT_RAFT_INDEX;
        ps.term = 1;
        ps.data = marker;
        ps.data_len = 16;
        persist_batch_term(batch, 1);
        persist_batch_snapshot_put(batch, &ps, IMPORT_RAFT_INDEX + 1);
        return 0;
}

int import_v2_data_dir(const Config *c) {
        _cleanup_free_ char *tmp = NULL, *tmp_member = NULL, *member = NULL;
        _cleanup_(persist_freep) Persist *p = NULL;
        _cleanup_(persist_batch_freep) PersistBatch *batch = NULL;
        Store *store = NULL;
        ImportSummary sum = {};
        Writer w = {};
        StoreSink sink;
        struct timespec t0, t1;
        uint64_t etcd_index;
        bool created;
        int r;

        assert(c);
        assert(c->import_v2_data_dir);

        if (isempty(c->data_dir))
                return log_error_errno(-EINVAL, "--import-v2-data-dir needs a --data-dir.");
        if (c->proxy != PROXY_OFF || !isempty(c->discovery) || !isempty(c->discovery_srv) ||
            c->initial_cluster_state == CLUSTER_STATE_EXISTING || c->n_initial_members > 1) {
                log_error("--import-v2-data-dir starts a new one-member cluster: it does not go with --proxy, "
                          "--discovery, --discovery-srv, --initial-cluster-state=existing or an --initial-cluster "
                          "of more than one member (add members afterwards with 'member add').");
                return -EINVAL;
        }
        if (c->member_id == 0)
                return log_error_errno(-EINVAL, "No member ID configured.");
        if (asprintf(&tmp, "%s/" IMPORT_TMP_NAME, c->data_dir) < 0 ||
            asprintf(&tmp_member, "%s/member", tmp) < 0 || asprintf(&member, "%s/member", c->data_dir) < 0)
                return log_oom();
        created = access(c->data_dir, F_OK) < 0;
        r = check_target(c->data_dir, tmp);
        if (r < 0)
                return r;

        (void) clock_gettime(CLOCK_MONOTONIC, &t0);
        log_info("Importing the etcd v2 data dir '%s' into '%s'.", c->import_v2_data_dir, c->data_dir);
        (void) sd_notifyf(false, "STATUS=Importing the etcd v2 data dir '%s'", c->import_v2_data_dir);

        /* A dry run first: corrupt input is refused before the data dir is touched. */
        r = import_v2_read(c->import_v2_data_dir, NULL, NULL, NULL, &store, &sum);
        if (r < 0) {
                log_error("Refusing to import '%s'; nothing was written.", c->import_v2_data_dir);
                return r;
        }
        store_free(store);
        store = NULL;

        r = persist_open(tmp, c->wal_dir, &p);
        if (r < 0)
                goto fail;
        if (!persist_is_new(p)) {
                r = log_error_errno(-EEXIST, "'%s' is not a new database.", tmp_member);
                goto fail;
        }
        r = persist_meta_init(p, c->member_id, c->cluster_id);
        if (r < 0)
                goto fail;
        r = persist_batch_new(p, &batch);
        if (r < 0)
                goto fail;
        w.batch = batch;
        sink = (StoreSink) {
                .userdata = &w,
                .node_put = w_node_put,
                .node_delete = w_node_delete,
                .history_add = w_history_add,
                .history_drop = w_history_drop,
        };
        r = import_v2_read(c->import_v2_data_dir, &sink, w_flush, &w, &store, &sum);
        if (r < 0)
                goto fail;
        etcd_index = store_index(store);
        store_free(store);
        store = NULL;
        r = write_raft_snapshot(c, batch);
        if (r < 0)
                goto fail;
        persist_batch_applied(batch, IMPORT_RAFT_INDEX, etcd_index);
        r = persist_write(batch, true);
        if (r < 0)
                goto fail;
        batch = persist_batch_free(batch);
        p = persist_free(p);

        if (rename(tmp_member, member) < 0) {
                r = log_error_errno(-errno, "Failed to move '%s' to '%s': %m", tmp_member, member);
                goto fail;
        }
        (void) rmdir(tmp);
        {
                _cleanup_(closep) int fd = open(c->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

                if (fd >= 0)
                        (void) fsync(fd);
        }

        (void) clock_gettime(CLOCK_MONOTONIC, &t1);
        log_notice("Imported '%s': %" PRIu64 " nodes from the snapshot at index %" PRIu64 ", %" PRIu64
                   " v2 requests replayed up to raft index %" PRIu64 "%s%s, etcd index %" PRIu64 ", in %.3f s.",
                   c->import_v2_data_dir, sum.n_snapshot_nodes, sum.snapshot_index, sum.n_entries, sum.commit_index,
                   sum.n_skipped > 0 ? " (v3 requests skipped)" : "", sum.torn ? " (a torn last record dropped)" : "",
                   etcd_index,
                   (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9);
        return 0;

fail:
        store_free(store);
        batch = persist_batch_free(batch);
        p = persist_free(p);
        rm_rf(tmp);
        if (created)
                (void) rmdir(c->data_dir);
        if (r == -ENOMEM)
                (void) log_oom();
        log_error("The import of '%s' failed; nothing was left in '%s'.", c->import_v2_data_dir, c->data_dir);
        return r;
}
