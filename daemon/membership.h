/* SPDX-License-Identifier: Apache-2.0 */
/* membership.h - membership changes, spare promotion and removal of the member (server.c wires them). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server-internal.h"

/* Answers the op's caller (or the follower that forwarded it) with `error` and frees it. */
void member_op_finish(MemberOp *op, int error);
/* Forwards waiting ops, times out old ones, runs them here once we lead (the retry timer and every
 * io event call it). */
void member_ops_check(Server *s);
/* Leader: promotes a spare that talks to us to voter (one change at a time). */
void promote_spares(Server *s);
/* Every member, when it applies a write under the member keys (fsm_apply()). */
void member_key_applied(Server *s, const StoreRequest *req);
/* Opaque frames from a peer (body after the kind byte and the request ID). */
void handle_member_req(Server *s, uint64_t from, uint64_t id, const uint8_t *p, size_t size);
void handle_member_res(Server *s, uint64_t id, const uint8_t *p, size_t size);
/* Is there a /0/removed_members/<id> key? */
bool member_is_removed(Server *s, uint64_t id);
/* We were removed from the cluster: log, then exit (or call the removed callback) a second later. */
void server_removed(Server *s);
