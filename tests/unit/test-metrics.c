/* SPDX-License-Identifier: Apache-2.0 */
/* test-metrics.c - buckets, label sets and the Prometheus text of metrics.c. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static void assert_contains(const char *text, const char *line) {
        if (!text || !strstr(text, line))
                fail_msg("missing \"%s\" in:\n%s", line, text ?: "(null)");
}

static void assert_lacks(const char *text, const char *what) {
        if (!text || strstr(text, what))
                fail_msg("unexpected \"%s\" in:\n%s", what, text ?: "(null)");
}

static char *format(const Metrics *m) {
        char *text = NULL;
        size_t len = 0;

        assert_int_equal(metrics_format(m, false, &text, &len), 0);
        assert_non_null(text);
        assert_int_equal(strlen(text), len);
        return text;
}

static void test_observe_buckets(void **state) {
        MetricsHistogram h = {};

        /* upper bounds are inclusive: 500 us falls into le="0.0005" */
        metrics_observe(&h, &metrics_http_buckets, 0);
        metrics_observe(&h, &metrics_http_buckets, 500);
        metrics_observe(&h, &metrics_http_buckets, 501);
        metrics_observe(&h, &metrics_http_buckets, 2048000);
        metrics_observe(&h, &metrics_http_buckets, 2048001);
        assert_int_equal(h.counts[0], 2);
        assert_int_equal(h.counts[1], 1);
        assert_int_equal(h.counts[12], 1);
        assert_int_equal(h.counts[13], 1);   /* above the last bound: only in +Inf */
        assert_int_equal(h.count, 5);
        assert_int_equal(h.sum_usec, 500 + 501 + 2048000 + 2048001);

        assert_int_equal(metrics_http_buckets.bound_usec[12], 2048000);
        assert_int_equal(metrics_disk_buckets.bound_usec[13], 8192000);
        assert_int_equal(metrics_rtt_buckets.bound_usec[13], 819200);
}

static void test_methods(void **state) {
        assert_int_equal(metrics_method_from_string("GET"), METRICS_METHOD_GET);
        assert_int_equal(metrics_method_from_string("DELETE"), METRICS_METHOD_DELETE);
        assert_int_equal(metrics_method_from_string("HEAD"), METRICS_METHOD_HEAD);
        /* QGET is ours to decide (quorum=true), never a request's method */
        assert_int_equal(metrics_method_from_string("QGET"), METRICS_METHOD_OTHER);
        assert_int_equal(metrics_method_from_string("PATCH"), METRICS_METHOD_OTHER);
        assert_int_equal(metrics_method_from_string(NULL), _METRICS_METHOD_INVALID);
        assert_string_equal(metrics_method_to_string(METRICS_METHOD_QGET), "QGET");
        assert_null(metrics_method_to_string(_METRICS_METHOD_MAX));
}

static void test_format_http(void **state) {
        Metrics *m = calloc(1, sizeof(Metrics));
        char *text;

        /* nothing counted yet: client_golang writes no *Vec family without a series */
        text = format(m);
        assert_lacks(text, "etcd_http_");
        free(text);

        m->http_received[METRICS_METHOD_PUT] = 3;
        m->http_received[METRICS_METHOD_QGET] = 1;
        m->http_failed[METRICS_METHOD_PUT][412 - METRICS_STATUS_MIN] = 1;
        metrics_observe(&m->http_duration[METRICS_METHOD_PUT], &metrics_http_buckets, 700);
        metrics_observe(&m->http_duration[METRICS_METHOD_PUT], &metrics_http_buckets, 1500);
        text = format(m);
        assert_contains(text, "# HELP etcd_http_received_total Counter of requests received into the system "
                              "(successfully parsed and authd).\n# TYPE etcd_http_received_total counter\n");
        assert_contains(text, "\netcd_http_received_total{method=\"PUT\"} 3\n");
        assert_contains(text, "\netcd_http_received_total{method=\"QGET\"} 1\n");
        assert_lacks(text, "etcd_http_received_total{method=\"GET\"}");
        assert_contains(text, "# TYPE etcd_http_failed_total counter\n");
        assert_contains(text, "\netcd_http_failed_total{code=\"412\",method=\"PUT\"} 1\n");
        assert_contains(text, "# TYPE etcd_http_successful_duration_seconds histogram\n");
        assert_contains(text, "\netcd_http_successful_duration_seconds_bucket{method=\"PUT\",le=\"0.0005\"} 0\n"
                              "etcd_http_successful_duration_seconds_bucket{method=\"PUT\",le=\"0.001\"} 1\n"
                              "etcd_http_successful_duration_seconds_bucket{method=\"PUT\",le=\"0.002\"} 2\n");
        assert_contains(text, "\netcd_http_successful_duration_seconds_bucket{method=\"PUT\",le=\"2.048\"} 2\n"
                              "etcd_http_successful_duration_seconds_bucket{method=\"PUT\",le=\"+Inf\"} 2\n"
                              "etcd_http_successful_duration_seconds_sum{method=\"PUT\"} 0.0022\n"
                              "etcd_http_successful_duration_seconds_count{method=\"PUT\"} 2\n");
        /* neither a member nor a proxy: no server, disk, store or proxy families */
        assert_lacks(text, "etcd_server_");
        assert_lacks(text, "etcd_disk_");
        assert_lacks(text, "etcd_store_");
        assert_lacks(text, "etcd_proxy_");
        free(text);
        free(m);
}

static void test_format_server(void **state) {
        Metrics *m = calloc(1, sizeof(Metrics));
        char *text;

        m->server = true;
        m->has_leader = true;
        m->leader_changes = 1;
        m->proposals_committed = 12;
        m->proposals_applied = 11;
        m->proposals_pending = 2;
        m->store_reads[METRICS_STORE_GET_RECURSIVE] = 4;
        m->store_writes[METRICS_STORE_COMPARE_AND_SWAP] = 5;
        m->store_expires = 6;
        m->store_watch_requests = 7;
        m->store_watchers = 8;
        metrics_observe(&m->wal_fsync, &metrics_disk_buckets, 3000);
        m->peers[0] = (MetricsPeer) { .id = 0x8e9e05c52164694dULL, .sent_bytes = 10, .received_bytes = 20 };
        m->n_peers = 1;
        text = format(m);
        assert_contains(text, "# HELP etcd_server_has_leader Whether or not a leader exists. 1 is existence, 0 is not.\n"
                              "# TYPE etcd_server_has_leader gauge\netcd_server_has_leader 1\n");
        assert_contains(text, "# TYPE etcd_server_leader_changes_seen_total counter\n"
                              "etcd_server_leader_changes_seen_total 1\n");
        assert_contains(text, "# TYPE etcd_server_proposals_committed_total gauge\n"
                              "etcd_server_proposals_committed_total 12\n");
        assert_contains(text, "# TYPE etcd_server_proposals_applied_total gauge\netcd_server_proposals_applied_total 11\n");
        assert_contains(text, "# TYPE etcd_server_proposals_pending gauge\netcd_server_proposals_pending 2\n");
        assert_contains(text, "# TYPE etcd_server_proposals_failed_total counter\netcd_server_proposals_failed_total 0\n");
        assert_contains(text, "\netcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.002\"} 0\n"
                              "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1\n");
        assert_contains(text, "\netcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n"
                              "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 1\n"
                              "etcd_disk_wal_fsync_duration_seconds_sum 0.003\n"
                              "etcd_disk_wal_fsync_duration_seconds_count 1\n");
        assert_contains(text, "\netcd_disk_backend_commit_duration_seconds_count 0\n");
        assert_contains(text, "\netcd_network_peer_sent_bytes_total{To=\"8e9e05c52164694d\"} 10\n");
        assert_contains(text, "\netcd_network_peer_received_bytes_total{From=\"8e9e05c52164694d\"} 20\n");
        assert_lacks(text, "etcd_network_peer_round_trip_time_seconds");   /* nothing observed */
        free(text);

        /* peers are interned once; a round trip of 150 us falls into le="0.0002" */
        assert_ptr_equal(metrics_peer_rtt(m, 0x2a), metrics_peer_rtt(m, 0x2a));
        metrics_observe(&metrics_peer_rtt(m, 0x2a)->rtt, &metrics_rtt_buckets, 150);
        text = format(m);
        assert_contains(text, "# TYPE etcd_network_peer_round_trip_time_seconds histogram\n");
        assert_contains(text, "\netcd_network_peer_round_trip_time_seconds_bucket{To=\"2a\",le=\"0.0001\"} 0\n"
                              "etcd_network_peer_round_trip_time_seconds_bucket{To=\"2a\",le=\"0.0002\"} 1\n");
        assert_contains(text, "\netcd_network_peer_round_trip_time_seconds_count{To=\"2a\"} 1\n");
        assert_contains(text, "\netcd_store_reads_total{action=\"getRecursive\"} 4\n");
        assert_lacks(text, "etcd_store_reads_total{action=\"get\"}");
        assert_contains(text, "\netcd_store_writes_total{action=\"compareAndSwap\"} 5\n");
        assert_contains(text, "\netcd_store_expires_total 6\n");
        assert_contains(text, "# TYPE etcd_store_watch_requests_total counter\netcd_store_watch_requests_total 7\n");
        assert_contains(text, "# TYPE etcd_store_watchers gauge\netcd_store_watchers 8\n");
        free(text);
        free(m);
}

static void test_format_proxy(void **state) {
        Metrics *m = calloc(1, sizeof(Metrics));
        char *text;

        m->proxy = true;
        m->proxy_requests[METRICS_METHOD_GET] = 2;
        m->proxy_requests[METRICS_METHOD_OTHER] = 1;
        m->proxy_handled[METRICS_METHOD_GET][200 - METRICS_STATUS_MIN] = 1;
        m->proxy_dropped[METRICS_METHOD_GET][METRICS_PROXY_ZERO_ENDPOINTS] = 1;
        metrics_observe(&m->proxy_duration[METRICS_METHOD_GET], &metrics_http_buckets, 100);
        text = format(m);
        assert_contains(text, "\netcd_proxy_requests_total{method=\"GET\"} 2\n");
        assert_contains(text, "\netcd_proxy_requests_total{method=\"other\"} 1\n");
        assert_contains(text, "\netcd_proxy_handled_total{code=\"200\",method=\"GET\"} 1\n");
        assert_contains(text, "\netcd_proxy_dropped_total{method=\"GET\",proxying_error=\"zero_endpoints\"} 1\n");
        assert_contains(text, "\netcd_proxy_handling_duration_seconds_sum{method=\"GET\"} 0.0001\n");
        assert_lacks(text, "etcd_server_");
        free(text);
        free(m);
}

static void test_process(void **state) {
        char *text = NULL;
        size_t len;

        assert_int_equal(metrics_format(&(Metrics) {}, true, &text, &len), 0);
        assert_contains(text, "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ");
        assert_contains(text, "# TYPE process_open_fds gauge\nprocess_open_fds ");
        assert_contains(text, "# TYPE process_max_fds gauge\nprocess_max_fds ");
        assert_contains(text, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ");
        assert_contains(text, "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ");
        assert_lacks(text, "process_resident_memory_bytes 0\n");
        free(text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_observe_buckets),
                cmocka_unit_test(test_methods),
                cmocka_unit_test(test_format_http),
                cmocka_unit_test(test_format_server),
                cmocka_unit_test(test_format_proxy),
                cmocka_unit_test(test_process),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
