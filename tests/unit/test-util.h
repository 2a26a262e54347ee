/* SPDX-License-Identifier: Apache-2.0 */
/* test-util.h - what the unit tests that talk over 127.0.0.1 share: listening and connecting sockets,
 * running the loop until a condition or for a while, a client thread next to the serving loop. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-event.h>

uint64_t test_now_usec(void);

/* A listening socket on 127.0.0.1:*port (0: a free port, written back), non-blocking, SO_REUSEADDR. */
int test_listen(uint16_t *port);
/* A blocking socket connected to 127.0.0.1:port. */
int test_connect(uint16_t port);

/* Runs the loop until cond(userdata) (failing the test after timeout_usec), or for usec. */
void test_run_until(sd_event *e, bool (*cond)(void *), void *userdata, uint64_t timeout_usec);
void test_run_for(sd_event *e, uint64_t usec);

/* Runs f in a thread while the loop serves until f returns, then lets the loop finish what the client's
 * end started (closes, frees). */
void test_run_client(sd_event *e, void (*f)(void));
