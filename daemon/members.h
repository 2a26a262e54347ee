/* SPDX-License-Identifier: Apache-2.0 */
/* members.h - the cluster's members as the store holds them under /0/members [no I/O]. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* One member: /0/members/<id>/raftAttributes {"peerURLs":[...]} and /attributes {"name","clientURLs"}.
 * A member added but not started yet has name "" and no client URLs. */
typedef struct Member {
        uint64_t id;
        char *name;
        char **peer_urls;        /* strv, never NULL */
        char **client_urls;      /* strv, never NULL */
} Member;

/* All members, sorted by ID. */
int members_load(Store *st, Member **ret, size_t *ret_n);
void members_free(Member *m, size_t n);
