/* SPDX-License-Identifier: Apache-2.0 */
/* persist.c - RocksDB under <data-dir>/member: Raft log, hard state, snapshot marker, applied store. */

/*
 * One RocksDB database, one WAL, seven column families:
 *
 *   default    unused (RocksDB insists on it)
 *   log        Raft entries: key = index (8 bytes BE), value = term (8 bytes BE) + type (1) + data
 *   hardstate  "term", "vote" (8 bytes BE each)
 *   snapshot   "meta": index, term, conf_index (8 bytes BE each) + conf; "data": the FSM marker
 *   nodes      the applied v2 tree: key = internal path, value = store_node_encode() record
 *   history    the event window: key = etcd index (8 bytes BE), value = store_event_encode() record
 *   meta       "format" (PERSIST_FORMAT), "member_id", "cluster_id", "applied": the Raft index and the
 *              etcd index as of that Raft index (8 + 8 bytes BE, one record so they change together)
 *
 * Durability rests on the Raft log: appends are written with sync=1 (group commit, see raft-io.c).
 * The applied store state rides in the batch of the following log group (it is recomputable from the
 * log, so it may lag), always together with the applied index it corresponds to; all families share
 * the one WAL, so a batch is atomic across them. Entries leave the log only through a snapshot
 * record, which is written in that same ordered stream after the store records it covers.
 *
 * <data-dir>/member/wal-dir records the --wal-dir the database was created with: RocksDB replays
 * its WAL only from the configured directory, so a mismatch would silently lose the newest writes.
 */

#include <assert.h>
#include <dirent.h>
#include <inttypes.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rocksdb/c.h>

#include "codec.h"
#include "log.h"
#include "persist.h"

enum {
        CF_DEFAULT,
        CF_LOG,
        CF_HARDSTATE,
        CF_SNAPSHOT,
        CF_NODES,
        CF_HISTORY,
        CF_META,
        _CF_MAX,
};

static const char *const cf_names[_CF_MAX] = {
        [CF_DEFAULT] = "default",
        [CF_LOG] = "log",
        [CF_HARDSTATE] = "hardstate",
        [CF_SNAPSHOT] = "snapshot",
        [CF_NODES] = "nodes",
        [CF_HISTORY] = "history",
        [CF_META] = "meta",
};

/* Memory: the daemon's RSS target is ~25 MB idle, so RocksDB gets small memtables and a small block
 * cache; the store keeps the whole tree in memory anyway, RocksDB is read at start-up only. */
#define PERSIST_WRITE_BUFFER_SIZE (2U * 1024U * 1024U)
#define PERSIST_DB_WRITE_BUFFER_SIZE (8U * 1024U * 1024U)
#define PERSIST_BLOCK_CACHE_SIZE (1U * 1024U * 1024U)
#define PERSIST_MAX_TOTAL_WAL_SIZE (32U * 1024U * 1024U)

struct Persist {
        char *path;
        rocksdb_t *db;
        rocksdb_options_t *options;
        rocksdb_block_based_table_options_t *table_options;
        rocksdb_cache_t *cache;
        rocksdb_column_family_handle_t *cf[_CF_MAX];
        rocksdb_writeoptions_t *write_sync, *write_nosync;
        rocksdb_readoptions_t *read;
        bool is_new;
        bool missing_families;
        /* Set by the first failed write, from the loop or the raft writer thread; every later write is
         * refused without reaching RocksDB (see write_batch()). */
        atomic_bool write_failed;
};

struct PersistBatch {
        Persist *persist;
        rocksdb_writebatch_t *wb;
};

static int rocks_error(char **err, const char *what) {
        log_error("RocksDB: failed to %s: %s", what, *err);
        rocksdb_free(*err);
        *err = NULL;
        return -EIO;
}

void persist_snapshot_done(PersistSnapshot *s) {
        if (!s)
                return;
        free(s->conf);
        free(s->data);
        *s = (PersistSnapshot) {};
}

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_(freep) char *copy = strdup(path);

        if (!copy)
                return -ENOMEM;
        for (char *s = copy + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = 0;
                if (mkdir(copy, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = '/';
        }
        if (mkdir(copy, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* Files RocksDB (or we) create in a database directory. */
static bool is_db_file(const char *name) {
        size_t n = strlen(name);

        return streq(name, "wal-dir") || streq(name, "LOCK") || streq(name, "IDENTITY") ||
               streq(name, "CURRENT") || strneq(name, "LOG", 3) || strneq(name, "MANIFEST-", 9) ||
               strneq(name, "OPTIONS-", 8) ||
               (n > 4 && (streq(name + n - 4, ".log") || streq(name + n - 4, ".sst"))) ||
               (n > 6 && streq(name + n - 6, ".dbtmp"));
}

/* Classifies <data-dir>/member: 0 = absent, empty or an interrupted creation (create), 1 = looks like
 * our RocksDB, < 0 = refuse. */
static int member_dir_classify(const char *path) {
        struct dirent *de;
        bool wal = false, snap = false, current = false, foreign = false;
        DIR *d;

        d = opendir(path);
        if (!d) {
                if (errno == ENOENT)
                        return 0;
                return log_error_errno(-errno, "Failed to open data directory '%s': %m", path);
        }
        while ((de = readdir(d))) {
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                if (streq(de->d_name, "wal"))
                        wal = true;
                else if (streq(de->d_name, "snap"))
                        snap = true;
                else if (streq(de->d_name, "CURRENT"))
                        current = true;
                else if (!is_db_file(de->d_name))
                        foreign = true;
        }
        closedir(d);

        if (wal || snap) {
                log_error("Data directory '%s' holds an etcd WAL/snapshot layout (member/wal, member/snap) "
                          "written by another etcd implementation; this daemon keeps its state in RocksDB "
                          "and cannot read it. Use a fresh --data-dir.", path);
                return -EUCLEAN;
        }
        if (current)
                return 1;
        if (foreign) {
                log_error("Data directory '%s' is not empty and holds no database of this daemon; refusing "
                          "to use it.", path);
                return -EUCLEAN;
        }
        /* Nothing, or what a creation killed before RocksDB wrote CURRENT leaves: start afresh. */
        return 0;
}

/* RocksDB replays its WAL only from the configured directory: reopening with another --wal-dir would
 * silently lose the newest writes. So the directory is recorded next to the database. */
#define WAL_DIR_FILE "wal-dir"

static int write_wal_dir(Persist *p, const char *wal_dir) {
        _cleanup_(freep) char *path = NULL;
        FILE *f;

        if (asprintf(&path, "%s/" WAL_DIR_FILE, p->path) < 0)
                return -ENOMEM;
        f = fopen(path, "we");
        if (!f)
                return -errno;
        fputs(strempty(wal_dir), f);
        if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
                int r = -errno;
                fclose(f);
                return r;
        }
        fclose(f);
        return 0;
}

static int check_wal_dir(Persist *p, const char *wal_dir) {
        _cleanup_(freep) char *path = NULL;
        char buf[4096] = {};
        size_t n;
        FILE *f;

        if (asprintf(&path, "%s/" WAL_DIR_FILE, p->path) < 0)
                return -ENOMEM;
        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT)
                        return 0;  /* created by a version without the record: nothing to compare */
                return log_error_errno(-errno, "Failed to read '%s': %m", path);
        }
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        if (!streq(buf, strempty(wal_dir))) {
                log_error("Data directory '%s' was created with --wal-dir='%s', but --wal-dir='%s' is given now; "
                          "refusing to start without the WAL.", p->path, buf, strempty(wal_dir));
                return -EUCLEAN;
        }
        return 0;
}

static void persist_options_setup(Persist *p, const char *wal_dir) {
        p->options = rocksdb_options_create();
        p->table_options = rocksdb_block_based_options_create();
        p->cache = rocksdb_cache_create_lru(PERSIST_BLOCK_CACHE_SIZE);

        rocksdb_block_based_options_set_block_cache(p->table_options, p->cache);
        rocksdb_block_based_options_set_cache_index_and_filter_blocks(p->table_options, 1);
        rocksdb_options_set_block_based_table_factory(p->options, p->table_options);
        rocksdb_options_set_write_buffer_size(p->options, PERSIST_WRITE_BUFFER_SIZE);
        rocksdb_options_set_max_write_buffer_number(p->options, 2);
        rocksdb_options_set_db_write_buffer_size(p->options, PERSIST_DB_WRITE_BUFFER_SIZE);
        rocksdb_options_set_max_total_wal_size(p->options, PERSIST_MAX_TOTAL_WAL_SIZE);
        rocksdb_options_set_max_open_files(p->options, 128);
        rocksdb_options_set_max_background_jobs(p->options, 2);
        rocksdb_options_set_keep_log_file_num(p->options, 2);
        /* FATAL only. RocksDB's LOG file sits on the same disk: once an append to it failed (a full disk),
         * its next message trips an assertion in Debian's RocksDB 7.8 (WritableFileWriter, "seen_error_"),
         * and after an ENOSPC RocksDB's own recovery thread logs an ERROR at once, racing our orderly stop
         * (raft_io_fatal()) with an abort. The errors that matter reach us with the failed write and are
         * logged by us. */
        rocksdb_options_set_info_log_level(p->options, 4 /* FATAL */);
        /* Universal compaction: less write amplification than levels. Everything we write is small
         * and much of it (log entries, old history) is deleted soon; measured ~25 % less CPU. */
        rocksdb_options_set_compaction_style(p->options, rocksdb_universal_compaction);
        if (!isempty(wal_dir))
                rocksdb_options_set_wal_dir(p->options, wal_dir);
}

/* An existing database must have exactly our column families. */
static int persist_check_families(Persist *p) {
        char *err = NULL, **names;
        size_t n = 0;
        int r = 0;

        names = rocksdb_list_column_families(p->options, p->path, &n, &err);
        if (err) {
                log_error("Data directory '%s' is not a readable RocksDB database: %s", p->path, err);
                rocksdb_free(err);
                if (names)
                        rocksdb_list_column_families_destroy(names, n);
                return -EUCLEAN;
        }
        for (size_t i = 0; i < n; i++) {
                bool known = false;

                for (size_t j = 0; j < _CF_MAX; j++)
                        if (streq(names[i], cf_names[j]))
                                known = true;
                if (!known) {
                        log_error("Data directory '%s' holds a RocksDB database with a foreign column family "
                                  "'%s'; refusing to use it.", p->path, names[i]);
                        r = -EUCLEAN;
                }
        }
        /* Fewer families than ours: a creation that was interrupted before it recorded the format
         * marker, or the marker check below refuses it anyway. */
        if (r == 0 && n < _CF_MAX) {
                rocksdb_options_set_create_missing_column_families(p->options, 1);
                p->missing_families = true;
        }
        rocksdb_list_column_families_destroy(names, n);
        return r;
}

static int get_cf(Persist *p, unsigned cf, const char *key, size_t key_len, char **ret, size_t *ret_len) {
        char *err = NULL, *v;
        size_t len = 0;

        v = rocksdb_get_cf(p->db, p->read, p->cf[cf], key, key_len, &len, &err);
        if (err)
                return rocks_error(&err, "read");
        *ret = v;
        *ret_len = len;
        return v ? 1 : 0;
}

static int get_u64(Persist *p, unsigned cf, const char *key, uint64_t *ret) {
        char *v = NULL;
        size_t len;
        int r;

        r = get_cf(p, cf, key, strlen(key), &v, &len);
        if (r <= 0) {
                *ret = 0;
                return r;
        }
        if (len != 8) {
                rocksdb_free(v);
                log_error("Data directory '%s' is corrupt: record '%s' has %zu bytes.", p->path, key, len);
                return -EUCLEAN;
        }
        *ret = codec_get_be64(v);
        rocksdb_free(v);
        return 1;
}

/* `ro` NULL: the current state; else read options of a RocksDB snapshot (an export on a worker
 * thread, which must not touch p->read while the loop uses it). */
static int get_applied_at(Persist *p, rocksdb_readoptions_t *ro, uint64_t *ret_applied, uint64_t *ret_etcd_index) {
        char *v = NULL, *err = NULL;
        size_t len = 0;

        v = rocksdb_get_cf(p->db, ro ?: p->read, p->cf[CF_META], "applied", strlen("applied"), &len, &err);
        if (err)
                return rocks_error(&err, "read");
        if (!v) {
                *ret_applied = *ret_etcd_index = 0;
                return 0;
        }
        if (len != 16) {
                rocksdb_free(v);
                log_error("Data directory '%s' is corrupt: the applied record has %zu bytes.", p->path, len);
                return -EUCLEAN;
        }
        *ret_applied = codec_get_be64(v);
        *ret_etcd_index = codec_get_be64(v + 8);
        rocksdb_free(v);
        return 0;
}

static int get_applied(Persist *p, uint64_t *ret_applied, uint64_t *ret_etcd_index) {
        return get_applied_at(p, NULL, ret_applied, ret_etcd_index);
}

static int persist_check_format(Persist *p) {
        char *v = NULL;
        size_t len;
        int r;

        r = get_cf(p, CF_META, "format", strlen("format"), &v, &len);
        if (r < 0)
                return r;
        if (r == 0) {
                /* Created but never initialized (killed right after creation): treat as new. */
                p->is_new = true;
                return 0;
        }
        if (p->missing_families) {
                rocksdb_free(v);
                log_error("Data directory '%s' is corrupt: column families are missing.", p->path);
                return -EUCLEAN;
        }
        if (len != strlen(PERSIST_FORMAT) || memcmp(v, PERSIST_FORMAT, len) != 0) {
                log_error("Data directory '%s' has format '%.*s', this daemon knows only '%s'; refusing to use it.",
                          p->path, (int) MIN(len, (size_t) 64), v, PERSIST_FORMAT);
                rocksdb_free(v);
                return -EUCLEAN;
        }
        rocksdb_free(v);
        return 0;
}

int persist_open(const char *data_dir, const char *wal_dir, Persist **ret) {
        const rocksdb_options_t *cf_options[_CF_MAX];
        _cleanup_(persist_freep) Persist *p = NULL;
        char *err = NULL;
        int r, kind;

        assert(data_dir);
        assert(ret);

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        if (asprintf(&p->path, "%s/member", data_dir) < 0) {
                p->path = NULL;
                return -ENOMEM;
        }

        kind = member_dir_classify(p->path);
        if (kind < 0)
                return kind;

        persist_options_setup(p, wal_dir);
        if (kind == 1) {
                r = check_wal_dir(p, wal_dir);
                if (r < 0)
                        return r;
        }
        if (kind == 0) {
                r = mkdir_p(p->path, 0700);
                if (r < 0)
                        return log_error_errno(r, "Failed to create '%s': %m", p->path);
                if (!isempty(wal_dir)) {
                        r = mkdir_p(wal_dir, 0700);
                        if (r < 0)
                                return log_error_errno(r, "Failed to create '%s': %m", wal_dir);
                }
                r = write_wal_dir(p, wal_dir);
                if (r < 0)
                        return log_error_errno(r, "Failed to write '%s/" WAL_DIR_FILE "': %m", p->path);
                rocksdb_options_set_create_if_missing(p->options, 1);
                rocksdb_options_set_create_missing_column_families(p->options, 1);
                p->is_new = true;
        } else {
                r = persist_check_families(p);
                if (r < 0)
                        return r;
        }

        for (size_t i = 0; i < _CF_MAX; i++)
                cf_options[i] = p->options;
        p->db = rocksdb_open_column_families(p->options, p->path, _CF_MAX, cf_names, cf_options, p->cf, &err);
        if (err) {
                log_error("Failed to open RocksDB database '%s': %s", p->path, err);
                rocksdb_free(err);
                p->db = NULL;
                return -EUCLEAN;
        }

        p->write_sync = rocksdb_writeoptions_create();
        rocksdb_writeoptions_set_sync(p->write_sync, 1);
        p->write_nosync = rocksdb_writeoptions_create();
        p->read = rocksdb_readoptions_create();

        if (kind == 1) {
                r = persist_check_format(p);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(p);
        return 0;
}

Persist *persist_free(Persist *p) {
        if (!p)
                return NULL;
        for (size_t i = 0; i < _CF_MAX; i++)
                if (p->cf[i])
                        rocksdb_column_family_handle_destroy(p->cf[i]);
        if (p->db)
                rocksdb_close(p->db);
        if (p->write_sync)
                rocksdb_writeoptions_destroy(p->write_sync);
        if (p->write_nosync)
                rocksdb_writeoptions_destroy(p->write_nosync);
        if (p->read)
                rocksdb_readoptions_destroy(p->read);
        if (p->options)
                rocksdb_options_destroy(p->options);
        if (p->table_options)
                rocksdb_block_based_options_destroy(p->table_options);
        if (p->cache)
                rocksdb_cache_destroy(p->cache);
        free(p->path);
        free(p);
        return NULL;
}

bool persist_is_new(Persist *p) {
        return p->is_new;
}

static void batch_put_u64(rocksdb_writebatch_t *wb, rocksdb_column_family_handle_t *cf, const char *key,
                          uint64_t v) {
        char buf[8];

        codec_put_be64(buf, v);
        rocksdb_writebatch_put_cf(wb, cf, key, strlen(key), buf, sizeof(buf));
}

/* RocksDB's C API gives a failed write only as text ("IO error: No space left on device: While
 * appending to file: ..."); the errno it came from is in there as strerror(). */
static int rocks_write_errno(const char *err) {
        if (strstr(err, strerror(ENOSPC)))
                return -ENOSPC;
        if (strstr(err, strerror(EDQUOT)))
                return -EDQUOT;
        if (strstr(err, strerror(EROFS)))
                return -EROFS;
        return -EIO;
}

static int write_batch(Persist *p, rocksdb_writebatch_t *wb, bool sync) {
        char *err = NULL;
        int r;

        /* After one failed write the database's state is unknown to us (a failed fdatasync may have left
         * the batch in the WAL, or not): writing more could make it durable out of order, e.g. entries
         * after a hole. The member is stopping (raft_io_fatal()); nothing may reach the disk meanwhile. */
        if (atomic_load(&p->write_failed))
                return -EIO;
        rocksdb_write(p->db, sync ? p->write_sync : p->write_nosync, wb, &err);
        if (err) {
                atomic_store(&p->write_failed, true);
                r = rocks_write_errno(err);
                log_error("RocksDB: failed to write %u record(s)%s: %s", (unsigned) rocksdb_writebatch_count(wb),
                          sync ? " (synced)" : "", err);
                rocksdb_free(err);
                return r;
        }
        return 0;
}

bool persist_write_failed(Persist *p) {
        return atomic_load(&p->write_failed);
}

int persist_meta_init(Persist *p, uint64_t member_id, uint64_t cluster_id) {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        int r;

        batch_put_u64(wb, p->cf[CF_META], "member_id", member_id);
        batch_put_u64(wb, p->cf[CF_META], "cluster_id", cluster_id);
        rocksdb_writebatch_put_cf(wb, p->cf[CF_META], "applied", strlen("applied"), (const char[16]) {}, 16);
        rocksdb_writebatch_put_cf(wb, p->cf[CF_META], "format", strlen("format"),
                                  PERSIST_FORMAT, strlen(PERSIST_FORMAT));
        r = write_batch(p, wb, true);
        rocksdb_writebatch_destroy(wb);
        if (r >= 0)
                p->is_new = false;
        return r;
}

int persist_meta_load(Persist *p, PersistMeta *ret) {
        PersistMeta m = {};
        int r;

        r = get_applied(p, &m.applied_index, &m.etcd_index);
        if (r < 0)
                return r;
        r = get_u64(p, CF_META, "member_id", &m.member_id);
        if (r < 0)
                return r;
        r = get_u64(p, CF_META, "cluster_id", &m.cluster_id);
        if (r < 0)
                return r;
        if (m.member_id == 0) {
                log_error("Data directory '%s' is corrupt: no member ID recorded.", p->path);
                return -EUCLEAN;
        }
        *ret = m;
        return 0;
}

int persist_hard_state_load(Persist *p, uint64_t *ret_term, uint64_t *ret_vote) {
        int r;

        r = get_u64(p, CF_HARDSTATE, "term", ret_term);
        if (r < 0)
                return r;
        r = get_u64(p, CF_HARDSTATE, "vote", ret_vote);
        if (r < 0)
                return r;
        return 0;
}

int persist_set_term(Persist *p, uint64_t term) {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        int r;

        batch_put_u64(wb, p->cf[CF_HARDSTATE], "term", term);
        batch_put_u64(wb, p->cf[CF_HARDSTATE], "vote", 0);
        r = write_batch(p, wb, true);
        rocksdb_writebatch_destroy(wb);
        return r;
}

int persist_set_vote(Persist *p, uint64_t vote) {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        int r;

        batch_put_u64(wb, p->cf[CF_HARDSTATE], "vote", vote);
        r = write_batch(p, wb, true);
        rocksdb_writebatch_destroy(wb);
        return r;
}

int persist_log_foreach(Persist *p, uint64_t from_index, PersistLogCallback cb, void *userdata) {
        rocksdb_iterator_t *it;
        char key[8], *err = NULL;
        uint64_t expect = 0;
        int r = 0;

        it = rocksdb_create_iterator_cf(p->db, p->read, p->cf[CF_LOG]);
        codec_put_be64(key, from_index);
        for (rocksdb_iter_seek(it, key, sizeof(key)); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                const char *k, *v;
                size_t klen, vlen;
                uint64_t index;

                k = rocksdb_iter_key(it, &klen);
                v = rocksdb_iter_value(it, &vlen);
                if (klen != 8 || vlen < 9) {
                        log_error("Data directory '%s' is corrupt: malformed log record.", p->path);
                        r = -EUCLEAN;
                        break;
                }
                index = codec_get_be64(k);
                if (expect != 0 && index != expect) {
                        log_error("Data directory '%s' is corrupt: log gap at index %" PRIu64 ".", p->path, expect);
                        r = -EUCLEAN;
                        break;
                }
                expect = index + 1;
                r = cb(index, codec_get_be64(v), (uint8_t) v[8], v + 9, vlen - 9, userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0) {
                rocksdb_iter_get_error(it, &err);
                if (err)
                        r = rocks_error(&err, "iterate the log");
        }
        rocksdb_iter_destroy(it);
        return r;
}

int persist_log_bounds(Persist *p, uint64_t *ret_first, uint64_t *ret_last) {
        rocksdb_iterator_t *it;
        uint64_t first = 0, last = 0;
        const char *k;
        size_t klen;

        it = rocksdb_create_iterator_cf(p->db, p->read, p->cf[CF_LOG]);
        rocksdb_iter_seek_to_first(it);
        if (rocksdb_iter_valid(it)) {
                k = rocksdb_iter_key(it, &klen);
                if (klen == 8)
                        first = codec_get_be64(k);
                rocksdb_iter_seek_to_last(it);
                k = rocksdb_iter_key(it, &klen);
                if (klen == 8)
                        last = codec_get_be64(k);
        }
        rocksdb_iter_destroy(it);
        *ret_first = first;
        *ret_last = last;
        return 0;
}

static void batch_snapshot_put(Persist *p, rocksdb_writebatch_t *wb, const PersistSnapshot *s, uint64_t keep_from) {
        size_t lens[2] = { 24, s->conf_len };
        const char *parts[2];
        char hdr[24], from[8], to[8];

        codec_put_be64(hdr, s->index);
        codec_put_be64(hdr + 8, s->term);
        codec_put_be64(hdr + 16, s->conf_index);
        parts[0] = hdr;
        parts[1] = s->conf;
        rocksdb_writebatch_putv_cf(wb, p->cf[CF_SNAPSHOT], 1, (const char *[]) { "meta" }, (size_t[]) { 4 },
                                   2, parts, lens);
        rocksdb_writebatch_put_cf(wb, p->cf[CF_SNAPSHOT], "data", 4, s->data, s->data_len);
        if (keep_from > 1) {
                codec_put_be64(from, 0);
                codec_put_be64(to, keep_from);
                rocksdb_writebatch_delete_range_cf(wb, p->cf[CF_LOG], from, 8, to, 8);
        }
}

void persist_batch_snapshot_put(PersistBatch *b, const PersistSnapshot *s, uint64_t keep_from) {
        batch_snapshot_put(b->persist, b->wb, s, keep_from);
}

int persist_snapshot_put(Persist *p, const PersistSnapshot *s, uint64_t keep_from) {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        int r;

        batch_snapshot_put(p, wb, s, keep_from);
        r = write_batch(p, wb, true);
        rocksdb_writebatch_destroy(wb);
        return r;
}

int persist_snapshot_load(Persist *p, PersistSnapshot *ret) {
        PersistSnapshot s = {};
        char *meta = NULL, *data = NULL;
        size_t mlen, dlen;
        int r;

        r = get_cf(p, CF_SNAPSHOT, "meta", 4, &meta, &mlen);
        if (r < 0)
                return r;
        if (r == 0) {
                *ret = s;
                return 0;
        }
        r = get_cf(p, CF_SNAPSHOT, "data", 4, &data, &dlen);
        if (r <= 0 || mlen < 24) {
                rocksdb_free(meta);
                rocksdb_free(data);
                if (r < 0)
                        return r;
                log_error("Data directory '%s' is corrupt: incomplete snapshot record.", p->path);
                return -EUCLEAN;
        }
        s.index = codec_get_be64(meta);
        s.term = codec_get_be64(meta + 8);
        s.conf_index = codec_get_be64(meta + 16);
        s.conf_len = mlen - 24;
        s.conf = malloc(MAX(s.conf_len, (size_t) 1));
        s.data_len = dlen;
        s.data = malloc(MAX(dlen, (size_t) 1));
        if (!s.conf || !s.data) {
                rocksdb_free(meta);
                rocksdb_free(data);
                persist_snapshot_done(&s);
                return -ENOMEM;
        }
        memcpy(s.conf, meta + 24, s.conf_len);
        memcpy(s.data, data, dlen);
        rocksdb_free(meta);
        rocksdb_free(data);
        *ret = s;
        return 0;
}

int persist_load_store(Persist *p, Store *s) {
        _cleanup_(freep) char *key = NULL;
        size_t key_alloc = 0;
        rocksdb_iterator_t *it;
        uint64_t etcd_index, applied;
        char *err = NULL;
        size_t n = 0;
        int r = 0;

        r = get_applied(p, &applied, &etcd_index);
        if (r < 0)
                return r;

        /* Nodes: bytewise key order puts every directory before what it contains ("/a" < "/a/b"). */
        it = rocksdb_create_iterator_cf(p->db, p->read, p->cf[CF_NODES]);
        for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                const char *k, *v;
                size_t klen, vlen;

                k = rocksdb_iter_key(it, &klen);
                v = rocksdb_iter_value(it, &vlen);
                if (klen + 1 > key_alloc) {
                        char *nk = realloc(key, klen + 64);
                        if (!nk) {
                                r = -ENOMEM;
                                break;
                        }
                        key = nk;
                        key_alloc = klen + 64;
                }
                memcpy(key, k, klen);
                key[klen] = 0;
                r = store_load_node(s, key, v, vlen);
                if (r < 0) {
                        log_error_errno(r, "Data directory '%s' is corrupt: cannot load node '%s': %m", p->path, key);
                        r = -EUCLEAN;
                        break;
                }
                n++;
        }
        if (r >= 0) {
                rocksdb_iter_get_error(it, &err);
                if (err)
                        r = rocks_error(&err, "iterate nodes");
        }
        rocksdb_iter_destroy(it);
        if (r < 0)
                return r;

        /* Only the window: older events may linger, as they are dropped in ranges now and then. */
        it = rocksdb_create_iterator_cf(p->db, p->read, p->cf[CF_HISTORY]);
        {
                char from[8];

                codec_put_be64(from, etcd_index >= STORE_HISTORY_MAX ? etcd_index - STORE_HISTORY_MAX + 1 : 0);
                rocksdb_iter_seek(it, from, sizeof(from));
        }
        for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                const char *k, *v;
                size_t klen, vlen;

                k = rocksdb_iter_key(it, &klen);
                v = rocksdb_iter_value(it, &vlen);
                if (klen != 8) {
                        r = -EUCLEAN;
                        break;
                }
                r = store_load_event(s, codec_get_be64(k), v, vlen);
                if (r < 0) {
                        log_error_errno(r, "Data directory '%s' is corrupt: cannot load event %" PRIu64 ": %m",
                                        p->path, codec_get_be64(k));
                        r = -EUCLEAN;
                        break;
                }
        }
        if (r >= 0) {
                rocksdb_iter_get_error(it, &err);
                if (err)
                        r = rocks_error(&err, "iterate history");
        }
        rocksdb_iter_destroy(it);
        if (r < 0)
                return r;

        r = store_load_finish(s, etcd_index);
        if (r < 0)
                return log_error_errno(r, "Failed to finish loading the store: %m");
        log_debug("Loaded %zu nodes, etcd index %" PRIu64 ".", n, etcd_index);
        return 0;
}

int persist_batch_new(Persist *p, PersistBatch **ret) {
        PersistBatch *b;

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->persist = p;
        b->wb = rocksdb_writebatch_create();
        *ret = b;
        return 0;
}

PersistBatch *persist_batch_free(PersistBatch *b) {
        if (!b)
                return NULL;
        rocksdb_writebatch_destroy(b->wb);
        free(b);
        return NULL;
}

unsigned persist_batch_count(PersistBatch *b) {
        return (unsigned) rocksdb_writebatch_count(b->wb);
}

void persist_batch_log_append(PersistBatch *b, uint64_t index, uint64_t term, unsigned type,
                              const void *data, size_t len) {
        char key[8], hdr[9];
        const char *parts[2] = { hdr, data };
        size_t lens[2] = { sizeof(hdr), len };
        const char *kp = key;
        size_t klen = sizeof(key);

        codec_put_be64(key, index);
        codec_put_be64(hdr, term);
        hdr[8] = (char) type;
        rocksdb_writebatch_putv_cf(b->wb, b->persist->cf[CF_LOG], 1, &kp, &klen, len > 0 ? 2 : 1, parts, lens);
}

void persist_batch_log_truncate(PersistBatch *b, uint64_t from_index) {
        char from[8], to[8];

        codec_put_be64(from, from_index);
        codec_put_be64(to, UINT64_MAX);
        rocksdb_writebatch_delete_range_cf(b->wb, b->persist->cf[CF_LOG], from, 8, to, 8);
}

void persist_batch_node_put(PersistBatch *b, const char *key, const void *record, size_t len) {
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_NODES], key, strlen(key), record, len);
}

void persist_batch_node_put_raw(PersistBatch *b, const void *key, size_t key_len, const void *record, size_t len) {
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_NODES], key, key_len, record, len);
}

void persist_batch_node_delete(PersistBatch *b, const char *key) {
        size_t len = strlen(key);
        /* Two bounds "<key>/" and "<key>0" on the heap (no array sized from a key on the stack). The
         * batch cannot carry an error: a delete that cannot be written must not be lost silently. */
        _cleanup_(freep) char *from = malloc(2 * (len + 1));
        char *to;

        if (!from) {
                log_full(LOG_CRIT, "Out of memory while deleting '%s' from the store; stopping.", key);
                abort();
        }
        to = from + len + 1;
        rocksdb_writebatch_delete_cf(b->wb, b->persist->cf[CF_NODES], key, len);
        /* Everything below: the keys "<key>/..." lie in ["<key>/", "<key>0"), '0' following '/'. */
        if (streq(key, "/"))
                len = 0;
        memcpy(from, key, len);
        memcpy(to, key, len);
        from[len] = '/';
        to[len] = '0';
        rocksdb_writebatch_delete_range_cf(b->wb, b->persist->cf[CF_NODES], from, len + 1, to, len + 1);
}

void persist_batch_history_add(PersistBatch *b, uint64_t index, const void *record, size_t len) {
        char key[8];

        codec_put_be64(key, index);
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_HISTORY], key, sizeof(key), record, len);
}

void persist_batch_history_drop(PersistBatch *b, uint64_t index) {
        char key[8];

        codec_put_be64(key, index);
        rocksdb_writebatch_delete_cf(b->wb, b->persist->cf[CF_HISTORY], key, sizeof(key));
}

void persist_batch_term(PersistBatch *b, uint64_t term) {
        batch_put_u64(b->wb, b->persist->cf[CF_HARDSTATE], "term", term);
        batch_put_u64(b->wb, b->persist->cf[CF_HARDSTATE], "vote", 0);
}

void persist_batch_history_drop_upto(PersistBatch *b, uint64_t index) {
        char from[8], to[8];

        codec_put_be64(from, 0);
        codec_put_be64(to, index + 1);
        rocksdb_writebatch_delete_range_cf(b->wb, b->persist->cf[CF_HISTORY], from, 8, to, 8);
}

void persist_batch_applied(PersistBatch *b, uint64_t applied_index, uint64_t etcd_index) {
        char v[16];

        codec_put_be64(v, applied_index);
        codec_put_be64(v + 8, etcd_index);
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_META], "applied", strlen("applied"), v, sizeof(v));
}

int persist_write(PersistBatch *b, bool sync) {
        int r;

        if (rocksdb_writebatch_count(b->wb) == 0 && !sync)
                return 0;
        r = write_batch(b->persist, b->wb, sync);
        rocksdb_writebatch_clear(b->wb);
        return r;
}

static int export_family(Persist *p, rocksdb_readoptions_t *ro, unsigned cf, char kind, const char *from,
                         size_t from_len, PersistExportCallback cb, void *userdata) {
        rocksdb_iterator_t *it;
        char *err = NULL;
        int r = 0;

        it = rocksdb_create_iterator_cf(p->db, ro, p->cf[cf]);
        if (from)
                rocksdb_iter_seek(it, from, from_len);
        else
                rocksdb_iter_seek_to_first(it);
        for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                const char *k, *v;
                size_t klen, vlen;

                k = rocksdb_iter_key(it, &klen);
                v = rocksdb_iter_value(it, &vlen);
                r = cb(kind, k, klen, v, vlen, userdata);
                if (r < 0)
                        break;
        }
        if (r >= 0) {
                rocksdb_iter_get_error(it, &err);
                if (err)
                        r = rocks_error(&err, "iterate for export");
        }
        rocksdb_iter_destroy(it);
        return r;
}

int persist_export(Persist *p, uint64_t *ret_applied, uint64_t *ret_etcd_index, PersistExportCallback cb,
                   void *userdata) {
        const rocksdb_snapshot_t *snap;
        rocksdb_readoptions_t *ro;
        uint64_t applied, etcd_index;
        char from[8];
        int r;

        snap = rocksdb_create_snapshot(p->db);
        ro = rocksdb_readoptions_create();
        if (!snap || !ro) {
                if (ro)
                        rocksdb_readoptions_destroy(ro);
                if (snap)
                        rocksdb_release_snapshot(p->db, snap);
                return -ENOMEM;
        }
        rocksdb_readoptions_set_snapshot(ro, snap);

        r = get_applied_at(p, ro, &applied, &etcd_index);
        if (r < 0)
                goto finish;
        *ret_applied = applied;
        *ret_etcd_index = etcd_index;
        r = cb(0, NULL, 0, NULL, 0, userdata);   /* the header is known */
        if (r < 0)
                goto finish;
        r = export_family(p, ro, CF_NODES, 'n', NULL, 0, cb, userdata);
        if (r < 0)
                goto finish;
        codec_put_be64(from, etcd_index >= STORE_HISTORY_MAX ? etcd_index - STORE_HISTORY_MAX + 1 : 0);
        r = export_family(p, ro, CF_HISTORY, 'h', from, sizeof(from), cb, userdata);

finish:
        rocksdb_readoptions_destroy(ro);
        rocksdb_release_snapshot(p->db, snap);
        return r;
}

void persist_batch_state_clear(PersistBatch *b) {
        persist_batch_node_delete(b, "/");
        persist_batch_history_drop_upto(b, UINT64_MAX - 1);
}

void persist_batch_history_put_raw(PersistBatch *b, const void *key, size_t key_len, const void *record, size_t len) {
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_HISTORY], key, key_len, record, len);
}

/* A consistent copy of the live database (RocksDB checkpoint: hard links of the SST files after a
 * flush, so the log, hard state and applied state are all of one moment) into <dir>/member. The copy
 * restores with `etcd2 --data-dir <dir> --force-new-cluster`. */
int persist_checkpoint(Persist *p, const char *dir) {
        _cleanup_(freep) char *member = NULL;
        rocksdb_checkpoint_t *cp;
        char *err = NULL;

        assert(p);
        assert(dir);

        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return log_error_errno(-errno, "Failed to create backup dir '%s': %m", dir);
        if (asprintf(&member, "%s/member", dir) < 0)
                return -ENOMEM;
        if (access(member, F_OK) >= 0)
                return log_error_errno(-EEXIST, "Backup dir '%s' already holds a member's data", dir);

        cp = rocksdb_checkpoint_object_create(p->db, &err);
        if (err) {
                log_error("Failed to prepare a checkpoint of '%s': %s", p->path, err);
                rocksdb_free(err);
                return -EIO;
        }
        rocksdb_checkpoint_create(cp, member, 0 /* always flush first */, &err);
        rocksdb_checkpoint_object_destroy(cp);
        if (err) {
                log_error("Failed to write a checkpoint of '%s' to '%s': %s", p->path, member, err);
                rocksdb_free(err);
                return -EIO;
        }
        log_info("Backed up '%s' to '%s'.", p->path, member);
        return 0;
}

/* ---- snapshot streams: export cursor, staging, staged install ---- */

struct PersistCursor {
        Persist *persist;
        const rocksdb_snapshot_t *snap;
        rocksdb_readoptions_t *ro;
        rocksdb_iterator_t *it;
        unsigned cf;             /* CF_NODES, then CF_HISTORY */
        uint64_t etcd_index;
};

PersistCursor *persist_cursor_free(PersistCursor *c) {
        if (!c)
                return NULL;
        if (c->it)
                rocksdb_iter_destroy(c->it);
        if (c->ro)
                rocksdb_readoptions_destroy(c->ro);
        if (c->snap)
                rocksdb_release_snapshot(c->persist->db, c->snap);
        free(c);
        return NULL;
}

int persist_cursor_open(Persist *p, PersistCursor **ret, uint64_t *ret_applied, uint64_t *ret_etcd_index) {
        _cleanup_(persist_cursor_freep) PersistCursor *c = NULL;
        uint64_t applied;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->persist = p;
        c->snap = rocksdb_create_snapshot(p->db);
        c->ro = rocksdb_readoptions_create();
        if (!c->snap || !c->ro)
                return -ENOMEM;
        rocksdb_readoptions_set_snapshot(c->ro, c->snap);
        /* A long scan must not push the hot blocks out of the cache. */
        rocksdb_readoptions_set_fill_cache(c->ro, 0);
        r = get_applied_at(p, c->ro, &applied, &c->etcd_index);
        if (r < 0)
                return r;
        c->cf = CF_NODES;
        c->it = rocksdb_create_iterator_cf(p->db, c->ro, p->cf[CF_NODES]);
        rocksdb_iter_seek_to_first(c->it);
        *ret_applied = applied;
        *ret_etcd_index = c->etcd_index;
        *ret = TAKE_PTR(c);
        return 0;
}

int persist_cursor_next(PersistCursor *c, size_t budget, PersistExportCallback cb, void *userdata) {
        Persist *p = c->persist;
        size_t done = 0;
        char *err = NULL;

        for (;;) {
                while (rocksdb_iter_valid(c->it)) {
                        const char *k, *v;
                        size_t klen, vlen;
                        int r;

                        if (done >= budget)
                                return 1;
                        k = rocksdb_iter_key(c->it, &klen);
                        v = rocksdb_iter_value(c->it, &vlen);
                        r = cb(c->cf == CF_NODES ? 'n' : 'h', k, klen, v, vlen, userdata);
                        if (r < 0)
                                return r;
                        done += klen + vlen + 1;
                        rocksdb_iter_next(c->it);
                }
                rocksdb_iter_get_error(c->it, &err);
                if (err)
                        return rocks_error(&err, "iterate for a snapshot stream");
                if (c->cf == CF_HISTORY)
                        return 0;
                /* Nodes done: the history window follows (older events may linger, see above). */
                rocksdb_iter_destroy(c->it);
                c->cf = CF_HISTORY;
                c->it = rocksdb_create_iterator_cf(p->db, c->ro, p->cf[CF_HISTORY]);
                {
                        char from[8];

                        codec_put_be64(from, c->etcd_index >= STORE_HISTORY_MAX ?
                                       c->etcd_index - STORE_HISTORY_MAX + 1 : 0);
                        rocksdb_iter_seek(c->it, from, sizeof(from));
                }
        }
}

/* Staging lives in the "default" family, unused otherwise (so existing data dirs need no new
 * family): 'n' + node key, 'h' + be64 index. Nothing reads it but the install below. */
void persist_batch_staging_clear(PersistBatch *b) {
        rocksdb_writebatch_delete_range_cf(b->wb, b->persist->cf[CF_DEFAULT], "\0", 1, "\xff", 1);
}

int persist_batch_staging_put(PersistBatch *b, char kind, const void *key, size_t key_len, const void *value,
                              size_t value_len) {
        _cleanup_(freep) char *k = NULL;

        if (kind != 'n' && kind != 'h')
                return -EINVAL;
        k = malloc(key_len + 1);
        if (!k)
                return -ENOMEM;
        k[0] = kind;
        memcpy(k + 1, key, key_len);
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_DEFAULT], k, key_len + 1, value, value_len);
        return 0;
}

/* The install marker (meta "installing"): applied, etcd index, keep_from, the snapshot record's
 * index, term, conf_index and the conf length (be64 each), conf, data. While it exists the live state
 * may be half replaced; persist_install_finish() completes it, at once or after a restart. */
int persist_batch_install_begin(PersistBatch *b, const PersistSnapshot *s, uint64_t keep_from, uint64_t applied,
                                uint64_t etcd_index) {
        _cleanup_(freep) uint8_t *v = NULL;
        size_t n = 56 + s->conf_len + s->data_len;

        v = malloc(n);
        if (!v)
                return -ENOMEM;
        codec_put_be64(v, applied);
        codec_put_be64(v + 8, etcd_index);
        codec_put_be64(v + 16, keep_from);
        codec_put_be64(v + 24, s->index);
        codec_put_be64(v + 32, s->term);
        codec_put_be64(v + 40, s->conf_index);
        codec_put_be64(v + 48, s->conf_len);
        memcpy(v + 56, s->conf, s->conf_len);
        memcpy(v + 56 + s->conf_len, s->data, s->data_len);
        rocksdb_writebatch_put_cf(b->wb, b->persist->cf[CF_META], "installing", strlen("installing"),
                                  (const char *) v, n);
        return 0;
}

static int copy_staging(Persist *p) {
        rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
        rocksdb_iterator_t *it;
        size_t pending = 0;
        char *err = NULL;
        int r = 0;

        it = rocksdb_create_iterator_cf(p->db, p->read, p->cf[CF_DEFAULT]);
        for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
                const char *k, *v;
                size_t klen, vlen;

                k = rocksdb_iter_key(it, &klen);
                v = rocksdb_iter_value(it, &vlen);
                if (klen < 1 || (k[0] != 'n' && k[0] != 'h')) {
                        log_error("Data directory '%s' is corrupt: unknown staging record.", p->path);
                        r = -EUCLEAN;
                        break;
                }
                rocksdb_writebatch_put_cf(wb, p->cf[k[0] == 'n' ? CF_NODES : CF_HISTORY], k + 1, klen - 1, v, vlen);
                pending += klen + vlen;
                /* Bounded batches: the whole state is never in memory at once. Unsynced: the final
                 * synced write makes them durable, and until then the marker says "redo". */
                if (pending >= PERSIST_INSTALL_BATCH_BYTES) {
                        r = write_batch(p, wb, false);
                        rocksdb_writebatch_clear(wb);
                        pending = 0;
                        if (r < 0)
                                break;
                }
        }
        if (r >= 0) {
                rocksdb_iter_get_error(it, &err);
                if (err)
                        r = rocks_error(&err, "iterate the staged snapshot");
        }
        rocksdb_iter_destroy(it);
        if (r >= 0 && pending > 0)
                r = write_batch(p, wb, false);
        rocksdb_writebatch_destroy(wb);
        return r;
}

int persist_install_finish(Persist *p, uint64_t *ret_applied, uint64_t *ret_etcd_index) {
        PersistSnapshot s = {};
        uint64_t applied, etcd_index, keep_from;
        rocksdb_writebatch_t *wb;
        char *v = NULL;
        size_t len = 0;
        uint64_t conf_len;
        int r;

        r = get_cf(p, CF_META, "installing", strlen("installing"), &v, &len);
        if (r <= 0)
                return r;
        if (len < 56 || (conf_len = codec_get_be64(v + 48)) > len - 56) {
                rocksdb_free(v);
                log_error("Data directory '%s' is corrupt: bad snapshot install record.", p->path);
                return -EUCLEAN;
        }
        applied = codec_get_be64(v);
        etcd_index = codec_get_be64(v + 8);
        keep_from = codec_get_be64(v + 16);
        s.index = codec_get_be64(v + 24);
        s.term = codec_get_be64(v + 32);
        s.conf_index = codec_get_be64(v + 40);
        s.conf_len = conf_len;
        s.conf = v + 56;
        s.data_len = len - 56 - conf_len;
        s.data = v + 56 + conf_len;

        /* 1. The old state goes (idempotent: a restart in the middle does it again). */
        wb = rocksdb_writebatch_create();
        {
                PersistBatch b = { .persist = p, .wb = wb };

                persist_batch_state_clear(&b);
        }
        r = write_batch(p, wb, false);
        rocksdb_writebatch_clear(wb);
        /* 2. The staged state becomes the live one, in bounded batches. */
        if (r >= 0)
                r = copy_staging(p);
        /* 3. One synced write: applied index, snapshot record (log dropped up to it), no marker, no
         * staging. Before it a restart redoes 1-3; after it the new state is complete. */
        if (r >= 0) {
                PersistBatch b = { .persist = p, .wb = wb };

                persist_batch_applied(&b, applied, etcd_index);
                batch_snapshot_put(p, wb, &s, keep_from);
                rocksdb_writebatch_delete_cf(wb, p->cf[CF_META], "installing", strlen("installing"));
                persist_batch_staging_clear(&b);
                r = write_batch(p, wb, true);
        }
        rocksdb_writebatch_destroy(wb);
        rocksdb_free(v);
        if (r < 0)
                return r;
        if (ret_applied)
                *ret_applied = applied;
        if (ret_etcd_index)
                *ret_etcd_index = etcd_index;
        return 1;
}
