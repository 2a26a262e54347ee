/* SPDX-License-Identifier: Apache-2.0 */
/* test-util.c - plain sockets on 127.0.0.1 and loop running for the unit tests (see test-util.h). Failures
 * are cmocka assertions: the calling test fails. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-util.h"

uint64_t test_now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

int test_listen(uint16_t *port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(*port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd, one = 1;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 128), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &len), 0);
        *port = ntohs(sa.sin_port);
        return fd;
}

int test_connect(uint16_t port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        return fd;
}

void test_run_until(sd_event *e, bool (*cond)(void *), void *userdata, uint64_t timeout_usec) {
        uint64_t end = test_now_usec() + timeout_usec;

        while (!cond(userdata)) {
                assert_true(test_now_usec() < end);
                assert_true(sd_event_run(e, 10000) >= 0);
        }
}

void test_run_for(sd_event *e, uint64_t usec) {
        uint64_t end = test_now_usec() + usec;

        while (test_now_usec() < end)
                assert_true(sd_event_run(e, 10000) >= 0);
}

/* --- a client thread ------------------------------------------------------------------------------ */

typedef struct Client {
        void (*func)(void);
        int done_fd;   /* written once func returned: ends the loop */
} Client;

static void *client_main(void *arg) {
        Client *c = arg;
        uint64_t one = 1;

        c->func();
        (void) write(c->done_fd, &one, sizeof one);
        return NULL;
}

static int on_client_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

void test_run_client(sd_event *e, void (*f)(void)) {
        Client c = { .func = f, .done_fd = eventfd(0, EFD_CLOEXEC) };
        sd_event_source *s = NULL;
        pthread_t t;

        assert_true(c.done_fd >= 0);
        assert_int_equal(sd_event_add_io(e, &s, c.done_fd, EPOLLIN, on_client_done, NULL), 0);
        assert_int_equal(pthread_create(&t, NULL, client_main, &c), 0);
        assert_int_equal(sd_event_loop(e), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        sd_event_source_disable_unref(s);
        (void) close(c.done_fd);
        /* let the layer finish what the client's end started (closes, frees) */
        for (int i = 0; i < 20; i++)
                (void) sd_event_run(e, 1000);
}
