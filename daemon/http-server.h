/* SPDX-License-Identifier: Apache-2.0 */
/* http-server.h - libmicrohttpd in external-epoll mode on sd-event: client and peer listeners. */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "proxy.h"
#include "server.h"

typedef struct HttpServer HttpServer;

/* Takes socket-activated fds (sd_listen_fds_with_names(): "client" and "peer"), else binds
 * config->listen_client_urls and config->listen_peer_urls. Serves the v2 client API on every client
 * listener and the peer endpoints on every peer listener. Fails (logged) if a listener cannot be set up. */
/* Member mode: `server` set, `proxy` NULL. Proxy mode: `server` NULL, `proxy` set, client listeners only. */
int http_server_new(sd_event *event, const Config *config, Server *server, Proxy *proxy, HttpServer **ret);
/* Stops accepting new connections (graceful shutdown starts); in-flight requests go on. */
void http_server_stop_listening(HttpServer *h);
HttpServer *http_server_free(HttpServer *h);
