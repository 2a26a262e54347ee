/* SPDX-License-Identifier: Apache-2.0 */
/* test-raft-io.c - a failed write of Raft state is fatal: libraft never hears of it, nothing more is
 * written, the process exit is called. The failures are real RocksDB write errors: tests/faults/
 * fault-sync.c is compiled into this test and fails fdatasync()/fsync() while the trigger file exists. */

#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "persist.h"
#include "raft-io.h"

typedef struct Fixture {
        char dir[64], trigger[64];
        Persist *p;
        sd_event *event;
        RaftIo *rio;
} Fixture;

static int exit_status;
static unsigned fatal_calls, append_calls;
static int append_status;

static void fake_exit(int status) {
        exit_status = status;
}

static void on_fatal(RaftIo *rio, void *userdata) {
        fatal_calls++;
}

static void append_cb(struct raft_io_append *req, int status) {
        append_calls++;
        append_status = status;
}

static void arm(Fixture *f, const char *err) {
        FILE *t;

        assert_int_equal(setenv("FAULT_SYNC_ERRNO", err, 1), 0);
        t = fopen(f->trigger, "w");
        assert_non_null(t);
        fclose(t);
}

static void disarm(Fixture *f) {
        (void) unlink(f->trigger);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        struct raft_snapshot *snap = NULL;
        struct raft_entry *entries = NULL;
        raft_index start = 0;
        size_t n = 0;
        raft_term term = 0;
        raft_id vote = 0;
        struct raft_io *io;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/test-raft-io-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->trigger, sizeof f->trigger, "%s.trigger", f->dir);
        assert_int_equal(setenv("FAULT_SYNC_TRIGGER", f->trigger, 1), 0);
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_int_equal(persist_meta_init(f->p, 0xabc, 0xdef), 0);
        assert_int_equal(sd_event_new(&f->event), 0);
        assert_int_equal(raft_io_new(f->event, f->p, &f->rio), 0);
        raft_io_set_fatal_callback(f->rio, on_fatal, f);
        raft_io_exit = fake_exit;
        exit_status = -1;
        fatal_calls = append_calls = 0;
        append_status = 0;

        io = raft_io_get(f->rio);
        assert_int_equal(io->init(io, 0xabc, "http://127.0.0.1:1"), 0);
        assert_int_equal(io->load(io, &term, &vote, &snap, &start, &entries, &n), 0);
        assert_null(snap);
        assert_int_equal(n, 0);
        raft_free(entries);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        disarm(f);
        raft_io_free(f->rio);
        persist_free(f->p);
        sd_event_unref(f->event);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

/* Runs the loop until the process exit was called (or 10 s pass). */
static void run_until_exit(Fixture *f) {
        for (unsigned i = 0; i < 1000 && exit_status < 0; i++)
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
}

static void append_one(struct raft_io *io, struct raft_io_append *req, const char *data) {
        struct raft_entry e = { .term = 1, .type = RAFT_COMMAND,
                                .buf = { .base = (void *) data, .len = strlen(data) } };

        assert_int_equal(io->append(io, req, &e, 1, append_cb), 0);
}

static void log_bounds_after_reopen(Fixture *f, uint64_t *first, uint64_t *last) {
        f->rio = raft_io_free(f->rio);
        f->p = persist_free(f->p);
        disarm(f);
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_int_equal(persist_log_bounds(f->p, first, last), 0);
        /* raft_io_free() after a failure: a new io for the teardown */
        assert_int_equal(raft_io_new(f->event, f->p, &f->rio), 0);
}

/* The group commit (the writer thread's synced write) fails: no append callback, the owner's fatal
 * callback from the loop, then the exit; later appends are accepted but never written. */
static void test_group_commit_failure_is_fatal(void **state) {
        Fixture *f = *state;
        struct raft_io *io = raft_io_get(f->rio);
        struct raft_io_append a1, a2, a3;
        uint64_t first, last;

        append_one(io, &a1, "one");
        while (append_calls == 0)
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
        assert_int_equal(append_status, 0);

        arm(f, "EIO");
        append_one(io, &a2, "two");
        run_until_exit(f);
        assert_int_equal(exit_status, EXIT_FAILURE);
        assert_int_equal(fatal_calls, 1);
        assert_int_equal(append_calls, 1);     /* libraft never hears of the failed append */
        assert_true(raft_io_failed(f->rio));
        assert_true(persist_write_failed(f->p));

        /* Frozen: accepted, never written, never completed; no term either. */
        disarm(f);
        append_one(io, &a3, "three");
        for (unsigned i = 0; i < 20; i++)
                assert_true(sd_event_run(f->event, 10 * USEC_PER_MSEC) >= 0);
        assert_int_equal(append_calls, 1);
        assert_int_equal(io->set_term(io, 7), RAFT_IOERR);
        assert_int_equal(fatal_calls, 1);

        /* The shutdown path does not drain (write) either: it exits again. */
        exit_status = -1;
        (void) raft_io_drain(f->rio);
        assert_int_equal(exit_status, EXIT_FAILURE);

        /* The failed sync may or may not have left entry 2 on disk; entry 3 never got there. */
        log_bounds_after_reopen(f, &first, &last);
        assert_int_equal(first, 1);
        assert_true(last == 1 || last == 2);
}

/* set_term outside the loop (libraft calls it synchronously, e.g. at start-up): exit at once. */
static void test_set_term_failure_exits_at_once(void **state) {
        Fixture *f = *state;
        struct raft_io *io = raft_io_get(f->rio);

        arm(f, "EIO");
        assert_int_equal(io->set_term(io, 2), RAFT_IOERR);
        assert_int_equal(exit_status, EXIT_FAILURE);
        assert_int_equal(fatal_calls, 0);      /* the loop is not running: no grace for answers */
        assert_true(raft_io_failed(f->rio));
        assert_int_equal(io->set_vote(io, 0xabc), RAFT_IOERR);
}

/* persist.c: the errno comes from RocksDB's message; after one failure nothing reaches RocksDB. */
static void test_persist_enospc_then_refuses(void **state) {
        Fixture *f = *state;
        uint64_t term = 0, vote = 0;

        assert_int_equal(persist_set_term(f->p, 3), 0);
        arm(f, "ENOSPC");
        assert_int_equal(persist_set_term(f->p, 4), -ENOSPC);
        assert_true(persist_write_failed(f->p));
        disarm(f);
        assert_int_equal(persist_set_term(f->p, 5), -EIO);   /* refused, the disk is fine again */
        f->rio = raft_io_free(f->rio);
        f->p = persist_free(f->p);
        assert_int_equal(persist_open(f->dir, NULL, &f->p), 0);
        assert_int_equal(persist_hard_state_load(f->p, &term, &vote), 0);
        assert_true(term == 3 || term == 4);
        assert_int_equal(raft_io_new(f->event, f->p, &f->rio), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_group_commit_failure_is_fatal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_set_term_failure_exits_at_once, setup, teardown),
                cmocka_unit_test_setup_teardown(test_persist_enospc_then_refuses, setup, teardown),
        };

        log_set_max_level(LOG_WARNING);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
