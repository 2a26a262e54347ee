/* SPDX-License-Identifier: Apache-2.0 */
/* raft-guard.c - what we add around libraft 0.15 on the leader: no old-term commit by counting, commit
 * index told at once. */

/*
 * 1. No commit of an older term's entry by counting replicas.
 *
 * Raft commits an entry by counting replicas only if it is of the leader's current term; older entries
 * are committed only indirectly, by a current-term entry after them (Raft thesis §3.6.2, figure 3.7:
 * otherwise an entry stored on a majority can still be overwritten by a later leader). libraft 0.15's
 * replicationQuorum() (src/replication.c) counts `progress[i].match_index >= last_stored` for ANY term
 * (fixed upstream only in 0.17.1), and convertToLeader() appends no entry of the new term. We can't
 * rebuild the library, so we control what it counts: match_index only ever comes from the
 * last_log_index of successful AppendEntries results (replicationUpdate() -> progressMaybeUpdate()),
 * and those pass through raft_guard_filter_recv() before libraft sees them (the leader's own entry is
 * its last_stored). The leader lets a result
 * raise a follower's match_index to L only if
 *     L <= commit_index                                  (counting it commits nothing new), or
 *     term(L) == current_term and term(last_stored) == current_term,
 * and otherwise lowers L to commit_index. Invariant: every voter whose match_index is above
 * commit_index has stored (and acknowledged) an entry of the current term at an index <= its
 * match_index and >= anything it is counted for; the leader counts itself at last_stored, which it
 * lets pass only once last_stored is of the current term. So whenever libraft counts a majority for an
 * index i > commit_index, every member of that majority holds a current-term entry at some index
 * c >= i, and, by Log Matching, the smallest such c is on all of them: an entry of the current term
 * stored on a majority, which commits c and everything before it, i included, by Raft's own rule.
 * The second condition matters: a leader that has not yet stored its own first current-term entry
 * would otherwise count itself for an old-term last_stored together with followers that hold the new
 * entry, although the new entry is then on a minority only.
 *
 * Liveness: a lowered result loses nothing but the information that the follower has those entries.
 * A follower in probe state whose match_index did not rise sends again at the next heartbeat, with
 * every entry up to the end of our log, so once the leader's current-term entry (the barrier that
 * server.c appends as soon as it notices leadership, from the same loop callback that made it leader)
 * is in the log, the next answer passes. For results lowered only because the leader had not stored
 * its own entry yet, raft_guard_after() makes those followers due once it has, so commit does not wait
 * for a heartbeat. That happens at most once per leadership, so it cannot ping-pong; rejections are
 * never lowered (they count nothing). The unit test tests/raft/test-raft-guard.c plays figure 8 on libraft's fixture and
 * counts the messages.
 *
 * 2. The commit index at once. libraft tells followers a new commit index only with the next
 * AppendEntries; for an idle pipeline follower that is the next heartbeat. And a follower takes the
 * commit index of a message only up to the entries it has stored when the message arrives: one that
 * stores a little after the majority did never looks again. raft_guard_note_send() records, per
 * follower, the highest commit index sent to it while we knew it had stored that far;
 * raft_guard_after() marks each pipeline follower that has stored committed entries beyond that as due
 * (last_send = 0, so progressShouldReplicate() says yes), and the caller runs libraft's tick, which
 * sends them an AppendEntries at once. Under load the AppendEntries that carry new entries tell the
 * commit index already and nothing extra is sent. The tick reads io->time() for its timers
 * (election/contact quorum, promotion, transfer), so an extra tick fires none of them early.
 */

#include <stdlib.h>

#include "raft-guard.h"

/* libraft 0.15 src/progress.h: PROGRESS__PROBE 0, PROGRESS__PIPELINE 1, PROGRESS__SNAPSHOT 2. */
#define GUARD_PROGRESS_PROBE 0
#define GUARD_PROGRESS_PIPELINE 1

void raft_guard_done(RaftGuard *g) {
        free(g->peers);
        *g = (RaftGuard) {};
}

static size_t log_n(const struct raft_log *l) {
        if (l->size == 0)
                return 0;
        return l->back >= l->front ? l->back - l->front : l->size - l->front + l->back;
}

raft_index raft_guard_last_index(const struct raft *r) {
        const struct raft_log *l = &r->log;
        size_t n = log_n(l);

        return n > 0 ? l->offset + n : l->snapshot.last_index;
}

raft_term raft_guard_term_of(const struct raft *r, raft_index index) {
        const struct raft_log *l = &r->log;
        size_t n = log_n(l);

        if (index == 0)
                return 0;
        if (index > l->offset && index - l->offset <= n)
                return l->entries[(l->front + (size_t) (index - l->offset - 1)) % l->size].term;
        if (index == l->snapshot.last_index)
                return l->snapshot.last_term;
        return 0;
}

static void guard_reset(RaftGuard *g, const struct raft *r) {
        g->term = r->current_term;
        g->lowered_unstored = false;
        g->n_peers = 0;
}

bool raft_guard_filter_recv(RaftGuard *g, struct raft *r, struct raft_message *m) {
        struct raft_append_entries_result *res;
        raft_index last;
        bool stored_current;

        if (m->type != RAFT_IO_APPEND_ENTRIES_RESULT || r->state != RAFT_LEADER)
                return false;
        res = &m->append_entries_result;
        if (res->term != r->current_term)
                return false;   /* libraft ignores it or steps down */
        if (res->rejected != 0) {
                /* Rejections only steer next_index, and count nothing. libraft retries a follower in
                 * probe state at most once per heartbeat interval: let the retry that handling this
                 * result triggers go at once (a retry is sent only when next_index moved back, so this
                 * ends when the logs match), as etcd's raft does. */
                for (unsigned i = 0; i < r->configuration.n; i++)
                        if (r->configuration.servers[i].id == m->server_id) {
                                r->leader_state.progress[i].last_send = 0;
                                break;
                        }
                return false;
        }
        if (g->term != r->current_term)
                guard_reset(g, r);

        last = raft_guard_last_index(r);
        if (res->last_log_index > last)
                res->last_log_index = last;   /* what replicationUpdate() does too */
        if (res->last_log_index <= r->commit_index)
                return false;

        stored_current = raft_guard_term_of(r, r->last_stored) == r->current_term;
        if (stored_current && raft_guard_term_of(r, res->last_log_index) == r->current_term)
                return false;

        if (!stored_current)
                g->lowered_unstored = true;
        res->last_log_index = r->commit_index;
        g->n_lowered++;
        return true;
}

static RaftGuardPeer *peer_get(RaftGuard *g, raft_id id, bool create) {
        for (size_t i = 0; i < g->n_peers; i++)
                if (g->peers[i].id == id)
                        return &g->peers[i];
        if (!create)
                return NULL;
        if (g->n_peers == g->n_peers_alloc) {
                size_t k = g->n_peers_alloc ? g->n_peers_alloc * 2 : 8;
                RaftGuardPeer *p = realloc(g->peers, k * sizeof(RaftGuardPeer));

                /* Without the record the follower just counts as not told: an extra heartbeat. */
                if (!p)
                        return NULL;
                g->peers = p;
                g->n_peers_alloc = k;
        }
        g->peers[g->n_peers] = (RaftGuardPeer) { .id = id };
        return &g->peers[g->n_peers++];
}

void raft_guard_note_send(RaftGuard *g, const struct raft *r, const struct raft_message *m) {
        RaftGuardPeer *p;
        raft_index told;

        if (m->type != RAFT_IO_APPEND_ENTRIES || r->state != RAFT_LEADER)
                return;
        if (g->term != r->current_term)
                guard_reset(g, r);
        p = peer_get(g, m->server_id, true);
        if (!p)
                return;
        /* A follower applies the leader's commit index only up to what it has stored when the message
         * arrives (and an append it finishes later does not look again): count as told only what we
         * knew it had stored. */
        told = m->append_entries.leader_commit;
        for (unsigned i = 0; i < r->configuration.n; i++)
                if (r->configuration.servers[i].id == m->server_id) {
                        if (r->leader_state.progress[i].match_index < told)
                                told = r->leader_state.progress[i].match_index;
                        break;
                }
        if (told > p->told)
                p->told = told;
}

static bool guard_due(RaftGuard *g, struct raft *r, bool mark) {
        bool kick = false, unstored_done;
        raft_index target;

        if (r->state != RAFT_LEADER) {
                g->term = 0;
                return false;
        }
        if (g->term != r->current_term)
                guard_reset(g, r);

        unstored_done = g->lowered_unstored && raft_guard_term_of(r, r->last_stored) == r->current_term;

        for (unsigned i = 0; i < r->configuration.n; i++) {
                const struct raft_server *s = &r->configuration.servers[i];
                struct raft_progress *p = &r->leader_state.progress[i];
                const RaftGuardPeer *peer;

                if (s->id == r->id || s->role == RAFT_SPARE)
                        continue;
                if (unstored_done && p->state == GUARD_PROGRESS_PROBE) {
                        if (mark)
                                p->last_send = 0;
                        kick = true;
                        continue;
                }
                if (p->state != GUARD_PROGRESS_PIPELINE)
                        continue;
                /* Due if it has stored (as far as we know) committed entries it was not told about. */
                target = p->match_index < r->commit_index ? p->match_index : r->commit_index;
                peer = peer_get(g, s->id, false);
                if (!unstored_done && (target == 0 || (peer && peer->told >= target)))
                        continue;
                if (mark)
                        p->last_send = 0;
                kick = true;
        }
        if (!mark)
                return kick;
        g->lowered_unstored = false;
        if (kick)
                g->n_kicks++;
        return kick;
}

bool raft_guard_due(RaftGuard *g, struct raft *r) {
        return guard_due(g, r, false);
}

bool raft_guard_after(RaftGuard *g, struct raft *r) {
        return guard_due(g, r, true);
}

/* ---- the follower half ---- */

void raft_guard_follower_enter(RaftGuard *g, raft_term term, raft_index end) {
        g->follower.in_context = true;
        g->follower.context_term = term;
        g->follower.context_end = end;
}

void raft_guard_follower_leave(RaftGuard *g) {
        g->follower.in_context = false;
}

bool raft_guard_follower_context(const RaftGuard *g, raft_term *ret_term, raft_index *ret_end) {
        if (!g->follower.in_context)
                return false;
        *ret_term = g->follower.context_term;
        *ret_end = g->follower.context_end;
        return true;
}

/* Why the highest end checked in the term is safe to claim: an accepted AppendEntries proves our log equal
 * to the leader's up to its end (its prev matched, conflicting entries were deleted, the rest appended); the
 * leader of a term never changes its own entries (its io stops the member on a failed append); and we only
 * delete entries that conflict with its. So everything up to the highest such end stays the leader's. A
 * claim is only ever lowered: the leader then sends from there again, and the next answer says the rest
 * (one round trip more after an election; none in steady state, where the two agree). */
bool raft_guard_follower_cap(RaftGuard *g, struct raft_message *m) {
        struct raft_append_entries_result *res = &m->append_entries_result;
        RaftGuardFollower *f = &g->follower;

        if (m->type != RAFT_IO_APPEND_ENTRIES_RESULT || res->rejected != 0 || !f->in_context ||
            f->context_term != res->term)
                return false;
        if (f->term != res->term) {
                f->term = res->term;
                f->matched = 0;
        }
        if (f->context_end > f->matched)
                f->matched = f->context_end;
        if (res->last_log_index <= f->matched)
                return false;
        res->last_log_index = f->matched;
        g->n_capped++;
        return true;
}
