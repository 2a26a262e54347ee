/* SPDX-License-Identifier: Apache-2.0 */
/* discovery.h - etcd2's discovery protocol (--discovery URL) as a client, on libcurl's multi interface.
 *
 * JoinCluster registers this member under the cluster key and waits (watching) until `size` members
 * are known; GetCluster (a proxy) only waits. Both answer with an initial-cluster string
 * ("name=peerURL,name=peerURL,..."), the members in registration order. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include "curl-glue.h"

typedef struct Discovery Discovery;

/* error == 0: `cluster` holds the initial-cluster string (valid during the call only); `full` says the
 * cluster was already full without us (JoinCluster: the caller falls back to proxy or exits; `cluster`
 * is then the first `size` registrations, the proxy's peers). error < 0: etcd2's message has been
 * logged already, including "please generate a new discovery token and try to bootstrap again" where
 * etcd2 says it; -EEXIST duplicate ID, -ENOTUNIQ duplicate name, -EBADMSG bad endpoint/JSON,
 * -ERANGE bad size, -ENOENT size key missing, -EINVAL bad URL. */
typedef void (*discovery_done_t)(Discovery *d, int error, bool full, const char *cluster, void *userdata);

/* `url` is --discovery exactly as given; `http_proxy` is --discovery-proxy (NULL or "" = none). */
int discovery_new(sd_event *event, CurlGlue *glue, const char *url, const char *http_proxy, Discovery **ret);
/* Stops whatever is running; no callback afterwards. */
Discovery *discovery_free(Discovery *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(Discovery *, discovery_free);

/* JoinCluster for member `self_id`, registered with `self_value` ("name=peerURL[,name=peerURL2]"). */
int discovery_join(Discovery *d, uint64_t self_id, const char *self_value, discovery_done_t cb, void *userdata);
/* GetCluster: the same checks without registering. */
int discovery_get(Discovery *d, discovery_done_t cb, void *userdata);

/* Pure helpers, exposed for tests. */
/* Sleep before retry number `retries` (counted from 1): 2 s, 4 s, 8 s, ..., capped at 64 s. */
uint64_t discovery_backoff_usec(unsigned retries);
/* Splits a discovery URL into endpoint ("scheme://host[:port]") and cluster key (the path, cleaned:
 * "/" + components, no trailing "/", "" if none). -EINVAL if there is no scheme or host. */
int discovery_split_url(const char *url, char **ret_endpoint, char **ret_cluster);
/* nodesToCluster()'s checks on the joined registrations: 0, -EINVAL unparseable, -ENOTUNIQ number of
 * distinct names != size, -EADDRINUSE a peer URL twice. `ret_bad` (optional) gets the offending part. */
int discovery_validate_cluster(const char *cluster, int size, char **ret_bad);
