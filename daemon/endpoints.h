/* SPDX-License-Identifier: Apache-2.0 */
/* endpoints.h - which handler serves which listener: the v2 client API (or the proxy) on the client
 * ports, the peer endpoints on the peer ports, with the limits etcd2 has there. */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "proxy.h"
#include "server.h"

typedef struct Endpoints Endpoints;

/* Takes socket-activated fds (sd_listen_fds_with_names(): "client" and "peer"), else binds
 * config->listen_client_urls and config->listen_peer_urls. Member mode: `server` set, `proxy` NULL.
 * Proxy mode: `server` NULL, `proxy` set, client listeners only. Fails (logged) if a listener cannot be
 * set up. */
int endpoints_new(sd_event *event, const Config *config, Server *server, Proxy *proxy, Endpoints **ret);
/* Stops accepting new connections (graceful shutdown starts); requests in flight go on. */
void endpoints_stop_listening(Endpoints *e);
/* Free before the Server or Proxy. */
Endpoints *endpoints_free(Endpoints *e);
