/* SPDX-License-Identifier: Apache-2.0 */
/* raft-guard.h - what we add around libraft 0.15: on the leader, no old-term commit by counting and the
 * commit index told at once; on a follower, no claim of entries a leader has not checked. Pure: works on
 * the public struct raft and on messages only (no sd-event, no I/O). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <raft.h>

/* Per-follower record of the highest commit index an AppendEntries told it while we knew it had stored
 * that far. */
typedef struct RaftGuardPeer {
        raft_id id;
        raft_index told;
} RaftGuardPeer;

/* The follower half (raft_guard_follower_*()): how far this member's log is known to be the current
 * leader's, and which AppendEntries the result being sent answers. */
typedef struct RaftGuardFollower {
        raft_term term;            /* term of `matched`, 0 if none */
        raft_index matched;        /* highest prev_log_index + n_entries of an AppendEntries of `term` accepted */
        bool in_context;           /* inside the handling of one AppendEntries (its recv, or its append's completion) */
        raft_term context_term;
        raft_index context_end;    /* its prev_log_index + n_entries */
} RaftGuardFollower;

typedef struct RaftGuard {
        RaftGuardFollower follower;
        raft_term term;            /* term of the leadership the fields below belong to, 0 if none */
        bool lowered_unstored;     /* a result was lowered while our newest stored entry was older */
        RaftGuardPeer *peers;
        size_t n_peers, n_peers_alloc;

        /* Statistics (tests, logs). */
        unsigned long long n_lowered;
        unsigned long long n_kicks;
        unsigned long long n_capped;    /* results this follower sent with a lowered last_log_index */
} RaftGuard;

void raft_guard_done(RaftGuard *g);

/* Term of the entry at `index` in r's in-memory log (or of its snapshot's last entry), 0 if unknown. */
raft_term raft_guard_term_of(const struct raft *r, raft_index index);
raft_index raft_guard_last_index(const struct raft *r);

/* Call with every message right before libraft's recv callback gets it. On a leader it may lower the
 * last_log_index of a successful AppendEntries result (see raft-guard.c). Returns true if it did. */
bool raft_guard_filter_recv(RaftGuard *g, struct raft *r, struct raft_message *m);

/* Call with every message libraft sends (io->send): remembers the commit index each follower was told. */
void raft_guard_note_send(RaftGuard *g, const struct raft *r, const struct raft_message *m);

/* Call after libraft ran (tick, recv, completed I/O), never from inside a libraft callback. Marks the
 * followers that must hear from us now as due (progress[i].last_send = 0) and returns true if it did:
 * the caller then runs libraft's tick callback soon, from the event loop, which sends to them. */
bool raft_guard_after(RaftGuard *g, struct raft *r);
/* The same test without marking anyone: lets the caller wait until the loop is idle (the next
 * AppendEntries with new entries may tell the commit index anyway) and call raft_guard_after() then. */
bool raft_guard_due(RaftGuard *g, struct raft *r);

/* The follower half. libraft 0.15 answers an accepted AppendEntries with last_log_index = its whole stored
 * log, and its leader credits that up to its own last index: a follower that still holds an older term's
 * uncommitted entries beyond what the message checked is counted for the leader's different entries at
 * those indexes (tests/raft/test-raft-overcredit.c loses a committed entry that way). A successful result
 * must claim only what AppendEntries of its term have checked (Raft: prevLogIndex + len(entries)).
 *
 * The io tells the guard which AppendEntries is being handled: raft_guard_follower_enter() with the term and
 * prev_log_index + n_entries of the AppendEntries around libraft's recv callback of it (a result without new
 * entries to store is sent from inside), and around the completion callback of an append that recv made
 * (raft_guard_follower_context() gives what to keep with the append); raft_guard_follower_leave() after. */
void raft_guard_follower_enter(RaftGuard *g, raft_term term, raft_index end);
void raft_guard_follower_leave(RaftGuard *g);
/* The context to keep with an append made now: false if none (not inside an AppendEntries). */
bool raft_guard_follower_context(const RaftGuard *g, raft_term *ret_term, raft_index *ret_end);

/* Call with every message libraft sends (io->send), on a copy the io may change. A successful
 * AppendEntries result sent inside a context counts that AppendEntries as checked and says at most the
 * highest end checked in its term: last_log_index is lowered to it. Other results (an InstallSnapshot's,
 * or outside any context) go unchanged. Returns true if it lowered. */
bool raft_guard_follower_cap(RaftGuard *g, struct raft_message *m);
