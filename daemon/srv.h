/* SPDX-License-Identifier: Apache-2.0 */
/* srv.h - --discovery-srv: the initial cluster from DNS SRV records (etcd2's discovery/srv.go). */
#pragma once

#include "config.h"

/* Looks up _etcd-server-ssl._tcp.<domain> (https) and _etcd-server._tcp.<domain> (http); fails only if
 * both fail. An entry whose target:port resolves to one of `advertise_peer_urls` (resolved) is named
 * `name`, the others "0", "1", ...; URLs keep the target's host name. Blocking: runs once at
 * start-up. On success *ret_cluster is the initial-cluster string (malloc'd). Logs its errors. */
int srv_get_cluster(const char *name, const char *domain, const EtcdUrlList *advertise_peer_urls,
                    char **ret_cluster);
