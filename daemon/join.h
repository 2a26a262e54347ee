/* SPDX-License-Identifier: Apache-2.0 */
/* join.h - before Raft starts: what the other members of --initial-cluster say about us. */
#pragma once

#include <stdint.h>

#include "config.h"

/* --initial-cluster-state existing: our member ID and the cluster ID, from the first other member that
 * answers GET <peer>/members with a member whose peer URLs are ours. < 0 (logged) when none does. */
int join_fetch_existing_cluster(const Config *c, uint64_t *ret_member_id, uint64_t *ret_cluster_id);
/* --initial-cluster-state new on an empty data dir: -EEXIST (logged) if another member already knows
 * us with client URLs (we ran before and lost our data); 0 otherwise, also when nobody answers. */
int join_check_not_bootstrapped(const Config *c);
