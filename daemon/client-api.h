/* SPDX-License-Identifier: Apache-2.0 */
/* client-api.h - the v2 client API (/v2/keys, /v2/members, /v2/stats, /version, ...) and the peer
 * endpoints (/members, /version, the /raft/stream upgrade), as a handler of the HTTP layer. */
#pragma once

#include <stdbool.h>

#include "config.h"
#include "http-server.h"
#include "server.h"

/* Go's form parser reads at most 10 MiB of a form body ("http: POST too large", errorCode 210); other
 * bodies we read (JSON for /v2/members, /config/local/log) are capped the same. */
#define HTTP_BODY_MAX ((size_t) 10 * 1024 * 1024)

typedef struct ClientApi ClientApi;

/* peer=false: the v2 client API (client listeners); peer=true: the peer endpoints (peer listeners:
 * /members, /version, `POST /raft/stream` upgraded to the peer transport). `server` and `config` must
 * outlive the ClientApi and every request it serves. */
int client_api_new(Server *server, const Config *config, bool peer, ClientApi **ret);
ClientApi *client_api_free(ClientApi *a);

/* The handler of a service whose userdata is a ClientApi. */
extern const HttpHandler client_api_handler;
