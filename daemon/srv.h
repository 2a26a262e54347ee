/* SPDX-License-Identifier: Apache-2.0 */
/* srv.h - --discovery-srv: the initial cluster from DNS SRV records (etcd2's discovery/srv.go). */
#pragma once

#include <arpa/nameser.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct SrvRecord {
        uint16_t priority;
        uint16_t port;
        char target[NS_MAXDNAME];
} SrvRecord;

/* The SRV records of a DNS answer (as res_nquery() returned it for qname), sorted by priority; the other
 * records of the answer section (CNAMEs) are skipped. On failure *ret_error is Go's message, naming qname
 * (NULL if out of memory). Exported for the fuzzer. */
int srv_parse_answer(const unsigned char *answer, size_t len, const char *qname, SrvRecord **ret, size_t *ret_n,
                     char **ret_error);

/* Looks up _etcd-server-ssl._tcp.<domain> (https) and _etcd-server._tcp.<domain> (http); fails only if
 * both fail. An entry whose target:port resolves to one of `advertise_peer_urls` (resolved) is named
 * `name`, the others "0", "1", ...; URLs keep the target's host name. Blocking: runs once at
 * start-up. On success *ret_cluster is the initial-cluster string (malloc'd). Logs its errors. */
int srv_get_cluster(const char *name, const char *domain, const EtcdUrlList *advertise_peer_urls,
                    char **ret_cluster);
