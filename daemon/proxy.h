/* SPDX-License-Identifier: Apache-2.0 */
/* proxy.h - etcd2's proxy mode (--proxy on|readonly): forwards client requests to the cluster's members.
 *
 * The peer list comes from <data-dir>/proxy/cluster if it exists, else from `peer_urls`; the members'
 * client URLs are learnt from GET <peerURL>/members and refreshed every --proxy-refresh-interval. */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "http-server.h"
#include "macro.h"

typedef struct Proxy Proxy;

/* `peer_urls` (strv, may be NULL when <data-dir>/proxy/cluster exists) are the cluster's peer URLs. */
int proxy_new(sd_event *event, const Config *config, char **peer_urls, Proxy **ret);
Proxy *proxy_free(Proxy *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Proxy *, proxy_free);

/* Has the first refresh (GET <peerURL>/members) finished, successfully or not? etcd2 serves clients
 * only after it. */
bool proxy_refreshed(Proxy *p);
/* The forwarding endpoints now (client URLs; borrowed, valid until the next refresh), for
 * /v2/config/local/proxy and the bus. */
char **proxy_endpoints(Proxy *p);

/* The handler of the client listeners in proxy mode; the service's userdata is the Proxy. The body limit
 * (limits.body_max) is the service's. Free the HttpServer before the Proxy. */
extern const HttpHandler proxy_http_handler;
