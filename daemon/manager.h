/* SPDX-License-Identifier: Apache-2.0 */
/* manager.h - owns the event loop and every subsystem; signals, sd_notify, watchdog, shutdown. */
#pragma once

#include <systemd/sd-event.h>

#include "bus.h"
#include "config.h"
#include "curl-glue.h"
#include "discovery.h"
#include "endpoints.h"
#include "proxy.h"
#include "server.h"

typedef struct Manager {
        sd_event *event;
        Config *config;               /* owned */
        Server *server;               /* member mode */
        Proxy *proxy;                 /* proxy mode */
        Endpoints *http;
        CurlGlue *glue;               /* while discovering */
        Discovery *discovery;
        Bus *bus;

        sd_event_source *sigterm_source;
        sd_event_source *sigint_source;
        sd_event_source *status_timer;
        sd_event_source *drain_timer;
        sd_event_source *ready_timer;   /* until this member has published itself */
        sd_event_source *bus_timer;     /* PropertiesChanged for the bus, coalesced */
        uint64_t start_usec;
        bool ready;

        bool failed;                  /* a start-up step failed after the loop ran; already logged */
        int exit_signal;              /* the signal that stopped us, re-raised on exit as etcd2 does */
        uint64_t stop_deadline_usec;
        bool stopping;
} Manager;

int manager_new(Config *config, Manager **ret);
int manager_start(Manager *m);
int manager_run(Manager *m);
Manager *manager_free(Manager *m);
