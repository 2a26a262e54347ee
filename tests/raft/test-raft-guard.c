/* SPDX-License-Identifier: Apache-2.0 */
/* test-raft-guard.c - figure 8 of the Raft paper played on libraft 0.15's deterministic fixture, without
 * and with daemon/raft-guard.c between the fixture's network and libraft's recv callback.
 *
 * Five servers S1..S5 (indexes 0..4). The persisted state at start is the one figure 8 (c) begins with
 * (Raft thesis figure 3.7): S1 and S2 hold entry 2 of term 2, S5 holds a different entry 2 of term 3,
 * S3 and S4 have only entry 1; everybody has seen term 3. S1 is cut off from S4 and S5 and elected
 * (term 4); it can replicate its term-2 entry to S3 only. Then S1 is isolated and S5 campaigns.
 *
 * A fourth case checks the other half of the guard: followers are told a new commit index at once.
 *
 * Set RAFT_GUARD_TEST_DISABLE=1 to run the guarded cases without the guard: they then fail, which shows
 * that they test the guard and not the fixture. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <raft.h>
#include <raft/fixture.h>

#include "raft-guard.h"

#define N 5
#define MAX_INDEX 64

typedef struct Harness {
        struct raft_fixture f;
        struct raft_fsm fsms[N];
        bool guarded;
        RaftGuard guards[N];
        raft_io_recv_cb recv[N];
        raft_io_tick_cb tick[N];
        int (*start)(struct raft_io *, unsigned, raft_io_tick_cb, raft_io_recv_cb);
        int (*send)(struct raft_io *, struct raft_io_send *, const struct raft_message *, raft_io_send_cb);

        /* What the checker saw. */
        raft_term committed_term[MAX_INDEX + 1];  /* term of each index when first seen committed */
        raft_index seen_commit[N];
        unsigned n_conflicts;       /* an index seen committed with two different terms */
        unsigned n_unsafe;          /* a leader raised its commit index onto an older term's entry */
        unsigned n_kicks;
        unsigned n_results[N];
} Harness;

static Harness *H;

static void barrier_done(struct raft_barrier *req, int status) {
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result) {
        *result = NULL;
        return 0;
}

static unsigned server_of(struct raft_io *io) {
        for (unsigned i = 0; i < N; i++)
                if (&H->f.servers[i].io == io)
                        return i;
        fail_msg("unknown io");
        return 0;
}

static void guarded_recv(struct raft_io *io, struct raft_message *m) {
        unsigned i = server_of(io);

        if (m->type == RAFT_IO_APPEND_ENTRIES_RESULT)
                H->n_results[i]++;
        if (H->guarded)
                (void) raft_guard_filter_recv(&H->guards[i], &H->f.servers[i].raft, m);
        H->recv[i](io, m);
}

static int guarded_start(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
        unsigned i = server_of(io);

        H->recv[i] = recv;
        H->tick[i] = tick;
        return H->start(io, msecs, tick, guarded_recv);
}

static int guarded_send(struct raft_io *io, struct raft_io_send *req, const struct raft_message *m,
                        raft_io_send_cb cb) {
        unsigned i = server_of(io);

        if (H->guarded)
                raft_guard_note_send(&H->guards[i], &H->f.servers[i].raft, m);
        return H->send(io, req, m, cb);
}

static void add_entry(unsigned i, raft_term term) {
        struct raft_entry e = {
                .term = term,
                .type = RAFT_COMMAND,
                .buf = { .base = raft_malloc(8), .len = 8 },
        };

        assert_non_null(e.buf.base);
        memset(e.buf.base, (int) term, 8);
        raft_fixture_add_entry(&H->f, i, &e);
}

static int setup(void **state) {
        struct raft_configuration conf;
        Harness *h = calloc(1, sizeof(Harness));

        assert_non_null(h);
        H = h;
        assert_int_equal(raft_fixture_initialize(&h->f), 0);
        for (unsigned i = 0; i < N; i++) {
                h->fsms[i] = (struct raft_fsm) { .version = 1, .apply = fsm_apply };
                assert_int_equal(raft_fixture_grow(&h->f, &h->fsms[i]), 0);
        }
        assert_int_equal(raft_fixture_configuration(&h->f, N, &conf), 0);
        assert_int_equal(raft_fixture_bootstrap(&h->f, &conf), 0);
        raft_configuration_close(&conf);

        /* Figure 8 (b): S1 (leader of term 2) got entry 2 to S2 only; S5, leader of term 3 with the
         * votes of S3 and S4, appended its own entry 2 locally; then both failed. */
        add_entry(0, 2);
        add_entry(1, 2);
        add_entry(4, 3);
        for (unsigned i = 0; i < N; i++)
                raft_fixture_set_term(&h->f, i, 3);

        h->start = h->f.servers[0].io.start;
        h->send = h->f.servers[0].io.send;
        for (unsigned i = 0; i < N; i++) {
                h->f.servers[i].io.start = guarded_start;
                h->f.servers[i].io.send = guarded_send;
        }
        assert_int_equal(raft_fixture_start(&h->f), 0);
        /* The bootstrap configuration (index 1) counts as committed from the start. */
        for (unsigned i = 0; i < N; i++) {
                h->seen_commit[i] = h->f.servers[i].raft.commit_index;
                for (raft_index k = 1; k <= h->seen_commit[i]; k++)
                        h->committed_term[k] = raft_guard_term_of(&h->f.servers[i].raft, k);
        }
        *state = h;
        return 0;
}

static int teardown(void **state) {
        Harness *h = *state;

        raft_fixture_close(&h->f);
        for (unsigned i = 0; i < N; i++)
                raft_guard_done(&h->guards[i]);
        free(h);
        H = NULL;
        return 0;
}

static struct raft *srv(unsigned i) {
        return &H->f.servers[i].raft;
}

/* Records the term of every index when a server first reports it committed: a committed index must
 * never be seen with two terms (that is a lost acknowledged write). */
static void check(void) {
        for (unsigned i = 0; i < N; i++) {
                struct raft *r = srv(i);

                if (r->commit_index > H->seen_commit[i] && r->state == RAFT_LEADER &&
                    raft_guard_term_of(r, r->commit_index) != r->current_term) {
                        fprintf(stderr, "# S%u (leader of term %llu) commits index %llu of term %llu (was %llu)\n",
                                i + 1, (unsigned long long) r->current_term, (unsigned long long) r->commit_index,
                                (unsigned long long) raft_guard_term_of(r, r->commit_index),
                                (unsigned long long) H->seen_commit[i]);
                        H->n_unsafe++;
                }
                for (raft_index k = H->seen_commit[i] + 1; k <= r->commit_index && k <= MAX_INDEX; k++) {
                        raft_term t = raft_guard_term_of(r, k);

                        if (t == 0)
                                continue;
                        if (H->committed_term[k] == 0)
                                H->committed_term[k] = t;
                        else if (H->committed_term[k] != t)
                                H->n_conflicts++;
                }
                if (r->commit_index > H->seen_commit[i])
                        H->seen_commit[i] = r->commit_index;
        }
}

/* One fixture step, then what raft-io does after libraft ran: the guard's kick runs the tick at once. */
static void step(void) {
        raft_fixture_step(&H->f);
        check();
        if (!H->guarded)
                return;
        for (unsigned i = 0; i < N; i++)
                if (raft_fixture_alive(&H->f, i) && raft_guard_after(&H->guards[i], srv(i))) {
                        H->n_kicks++;
                        H->tick[i](&H->f.servers[i].io);
                        check();
                }
}

typedef bool (*StopFunc)(void);

static bool run_until(StopFunc stop, unsigned msecs) {
        raft_time end = raft_fixture_time(&H->f) + msecs;

        while (raft_fixture_time(&H->f) < end) {
                if (stop && stop())
                        return true;
                step();
        }
        return stop ? stop() : false;
}

static void disconnect_both(unsigned i, unsigned j) {
        raft_fixture_disconnect(&H->f, i, j);
        raft_fixture_disconnect(&H->f, j, i);
}

static void reconnect_both(unsigned i, unsigned j) {
        raft_fixture_reconnect(&H->f, i, j);
        raft_fixture_reconnect(&H->f, j, i);
}

static void isolate(unsigned i) {
        for (unsigned j = 0; j < N; j++)
                if (j != i)
                        disconnect_both(i, j);
}

static bool s1_committed_2(void) {
        return srv(0)->commit_index >= 2;
}

static bool s1_committed_3(void) {
        return srv(0)->commit_index >= 3;
}

static bool s5_leads(void) {
        return srv(4)->state == RAFT_LEADER;
}

static bool entry2_overwritten_on_s3(void) {
        return raft_guard_term_of(srv(2), 2) == 3;
}

static bool s5_committed_2(void) {
        return srv(4)->state == RAFT_LEADER && srv(4)->commit_index >= 2;
}

static bool s1_leads(void) {
        return srv(0)->state == RAFT_LEADER;
}

/* Figure 8 (c): S1 is cut off from S4 and S5 and elected in term 4. Driven step by step (not with
 * raft_fixture_elect(), which runs on until every follower acknowledged) so that the checker sees every
 * step and the test can cut S1 off right when it commits. */
static void elect_s1(void) {
        disconnect_both(0, 3);
        disconnect_both(0, 4);
        for (unsigned i = 1; i < N; i++)
                raft_fixture_set_randomized_election_timeout(&H->f, i, 30000);
        assert_true(run_until(s1_leads, 5000));
        assert_int_equal(srv(0)->current_term, 4);
}

/* Figure 8 (d): S1 is gone; S5 campaigns (S2..S4 wait much longer). */
static void s5_campaigns(void) {
        isolate(0);
        for (unsigned i = 1; i < 4; i++)
                raft_fixture_set_randomized_election_timeout(&H->f, i, 30000);
        raft_fixture_set_randomized_election_timeout(&H->f, 4, 1000);
        /* The fixture's value applies from the next timer reset on; S5's current timer may still run
         * for the 30 s elect_s1() gave it. */
        if (srv(4)->state == RAFT_FOLLOWER)
                srv(4)->follower_state.randomized_election_timeout = 1000;
        else if (srv(4)->state == RAFT_CANDIDATE)
                srv(4)->candidate_state.randomized_election_timeout = 1000;
}

static unsigned n_append_sent(unsigned i) {
        return raft_fixture_n_send(&H->f, i, RAFT_IO_APPEND_ENTRIES);
}

/* Without the guard libraft 0.15 commits S1's term-2 entry by counting S1, S2, S3; S5 then wins and
 * overwrites it: index 2 is seen committed with term 2 and later with term 3. Proves the scenario real. */
static void test_unguarded_loses_committed_entry(void **state) {
        Harness *h = *state;

        h->guarded = false;
        elect_s1();
        assert_true(run_until(s1_committed_2, 3000));
        /* Right now only S1 knows that entry 2 is committed: it has acknowledged it, S2 and S3 hear of
         * it with the next AppendEntries, which never comes. */
        isolate(0);
        assert_int_equal(raft_guard_term_of(srv(0), 2), 2);
        assert_true(h->n_unsafe > 0);
        assert_int_equal(h->committed_term[2], 2);

        s5_campaigns();
        assert_true(run_until(s5_leads, 20000));
        assert_true(run_until(s5_committed_2, 5000));
        assert_int_equal(raft_guard_term_of(srv(4), 2), 3);
        /* The acknowledged term-2 entry is gone: S5 committed its own term-3 entry at index 2. */
        assert_true(h->n_conflicts > 0);
}

/* With the guard and without any entry of term 4, S1 must not commit entry 2, and must not spin while
 * it waits: at most a few AppendEntries per follower and heartbeat. Then S5 may overwrite it
 * (it was never committed), and commits only after its own barrier. */
static void test_guarded_no_barrier(void **state) {
        Harness *h = *state;
        unsigned sent, heartbeats, results;
        struct raft_barrier b;

        h->guarded = !getenv("RAFT_GUARD_TEST_DISABLE");
        elect_s1();
        sent = n_append_sent(0);
        results = h->n_results[0];
        assert_false(run_until(s1_committed_2, 3000));
        assert_int_equal(srv(0)->state, RAFT_LEADER);
        assert_true(srv(0)->commit_index < 2);
        /* S1 talks to S2 and S3 only: one heartbeat each per 100 ms, plus the retries of a probe. */
        heartbeats = 3000 / srv(0)->heartbeat_timeout;
        fprintf(stderr, "# S1 sent %u AppendEntries in 3000 ms (%u heartbeat periods), got %u results, "
                "%llu lowered in all, %u kicks\n", n_append_sent(0) - sent, heartbeats, h->n_results[0] - results,
                (unsigned long long) h->guards[0].n_lowered, h->n_kicks);
        assert_true(n_append_sent(0) - sent <= 2 * 2 * (heartbeats + 2));
        assert_true(h->guards[0].n_lowered > 0);

        s5_campaigns();
        assert_true(run_until(s5_leads, 20000));
        assert_true(run_until(entry2_overwritten_on_s3, 5000));
        assert_true(srv(4)->commit_index < 2);
        b.data = NULL;
        assert_int_equal(raft_barrier(srv(4), &b, barrier_done), 0);
        assert_true(run_until(s5_committed_2, 5000));
        assert_int_equal(h->n_unsafe, 0);
        assert_int_equal(h->n_conflicts, 0);
        assert_int_equal(h->committed_term[2], 3);
}

static bool all_agree_at_3(void) {
        for (unsigned i = 0; i < N; i++)
                if (srv(i)->commit_index < 3)
                        return false;
        return true;
}

/* What the daemon does: a barrier of the new term at once. S1's disk is slow, so S2 and S3 acknowledge
 * the barrier (index 3) before S1 has stored it: libraft would then count S1 (last stored entry 2, of
 * term 2) with them and commit entry 2 although the term-4 entry is on a minority. The guard holds
 * those results back and makes S2 and S3 due once S1 stored the barrier: S1 commits entry 2 only
 * together with it. S5 can then never win, and after the partition heals all five agree. */
static void test_guarded_with_barrier(void **state) {
        Harness *h = *state;
        struct raft_barrier b;

        h->guarded = !getenv("RAFT_GUARD_TEST_DISABLE");
        raft_fixture_set_disk_latency(&H->f, 0, 500);
        elect_s1();
        b.data = NULL;
        assert_int_equal(raft_barrier(srv(0), &b, barrier_done), 0);
        assert_true(run_until(s1_committed_3, 3000));
        fprintf(stderr, "# S1 committed index 3 at %llu ms: %llu results lowered, %u kicks\n",
                (unsigned long long) raft_fixture_time(&H->f), (unsigned long long) h->guards[0].n_lowered,
                h->n_kicks);
        assert_int_equal(h->n_unsafe, 0);
        assert_true(h->guards[0].n_lowered > 0);
        assert_true(h->n_kicks > 0);
        assert_int_equal(raft_guard_term_of(srv(0), 3), 4);
        assert_int_equal(h->committed_term[2], 2);
        raft_fixture_set_disk_latency(&H->f, 0, 10);

        /* S2 and S3 hold a term-4 entry: S5 (last term 3) gets at most S4's vote. */
        s5_campaigns();
        assert_false(run_until(s5_leads, 8000));
        assert_int_equal(raft_guard_term_of(srv(2), 2), 2);

        for (unsigned i = 0; i < N; i++)
                raft_fixture_set_randomized_election_timeout(&H->f, i, 1000 + i * 100);
        for (unsigned i = 1; i < N; i++)
                reconnect_both(0, i);
        assert_true(run_until(all_agree_at_3, 30000));
        for (unsigned i = 0; i < N; i++)
                for (raft_index k = 1; k <= 3; k++)
                        assert_int_equal(raft_guard_term_of(srv(i), k), raft_guard_term_of(srv(0), k));
        assert_int_equal(h->n_unsafe, 0);
        assert_int_equal(h->n_conflicts, 0);
        assert_int_equal(raft_guard_term_of(srv(4), 2), 2);
}

static void apply_done(struct raft_apply *req, int status, void *result) {
}

static raft_index want_index;

static bool s2_s3_committed_want(void) {
        return srv(1)->commit_index >= want_index && srv(2)->commit_index >= want_index;
}

/* Point 3: once the leader commits, the followers hear the new commit index at once, not with the next
 * heartbeat (here 1 s, so that a heartbeat can't pass for it). One entry takes a round trip to be
 * committed (15 ms each way, 10 ms disk) and one more message to be known committed by S2 and S3. */
static void test_commit_told_at_once(void **state) {
        Harness *h = *state;
        struct raft_barrier b;
        struct raft_apply req;
        struct raft_buffer buf;
        raft_time t0;

        h->guarded = !getenv("RAFT_GUARD_TEST_DISABLE");
        elect_s1();
        assert_int_equal(raft_barrier(srv(0), &b, barrier_done), 0);
        want_index = 3;
        assert_true(run_until(s2_s3_committed_want, 3000));
        srv(0)->heartbeat_timeout = 1000;
        run_until(NULL, 1100);    /* the heartbeats at 100 ms stop */

        buf.len = 8;
        buf.base = raft_malloc(buf.len);
        assert_non_null(buf.base);
        memset(buf.base, 'x', buf.len);
        t0 = raft_fixture_time(&H->f);
        want_index = raft_guard_last_index(srv(0)) + 1;
        assert_int_equal(raft_apply(srv(0), &req, &buf, 1, apply_done), 0);
        assert_true(run_until(s2_s3_committed_want, 3000));
        fprintf(stderr, "# S2 and S3 knew index %llu committed %llu ms after it was proposed\n",
                (unsigned long long) want_index, (unsigned long long) (raft_fixture_time(&H->f) - t0));
        assert_true(raft_fixture_time(&H->f) - t0 < 200);
        assert_int_equal(h->n_unsafe, 0);
        assert_int_equal(h->n_conflicts, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_unguarded_loses_committed_entry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_guarded_no_barrier, setup, teardown),
                cmocka_unit_test_setup_teardown(test_guarded_with_barrier, setup, teardown),
                cmocka_unit_test_setup_teardown(test_commit_told_at_once, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
