/* SPDX-License-Identifier: Apache-2.0 */
/* raft-guard.h - what we add around libraft 0.15 on the leader: no old-term commit by counting, commit
 * index told at once. Pure: works on the public struct raft only (no sd-event, no I/O). */
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

typedef struct RaftGuard {
        raft_term term;            /* term of the leadership the fields below belong to, 0 if none */
        bool lowered_unstored;     /* a result was lowered while our newest stored entry was older */
        RaftGuardPeer *peers;
        size_t n_peers, n_peers_alloc;

        /* Statistics (tests, logs). */
        unsigned long long n_lowered;
        unsigned long long n_kicks;
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
