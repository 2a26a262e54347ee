/* SPDX-License-Identifier: Apache-2.0 */
/* test-config.c - etcd2 flag/env parsing, validation, exit statuses and member/cluster IDs. */

/*
 * Each case runs config_load() in-process with stdout and stderr redirected to temporary files, so the
 * tests can assert the exact text etcd2 prints as well as the return value and exit status. The group
 * runs in a fresh temporary working directory so that default data dirs ("default.etcd") never exist.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

typedef struct Run {
        int r;
        int status;
        Config *config;
        char *out;
        char *err;
} Run;

static char *read_all(FILE *f) {
        long n;
        char *s;

        (void) fflush(f);
        n = ftell(f);
        assert_true(n >= 0);
        rewind(f);
        s = calloc(1, (size_t) n + 1);
        assert_non_null(s);
        if (n > 0)
                assert_int_equal(fread(s, 1, (size_t) n, f), (size_t) n);
        return s;
}

static void run_done(Run *r) {
        config_free(r->config);
        free(r->out);
        free(r->err);
        *r = (Run) {};
}

/* argv and envp are NULL-terminated lists; "etcd" is prepended to argv. */
static void run_config(Run *run, const char *const *args, const char *const *env) {
        char *argv[64], *envp[64];
        int argc = 0, n = 0, saved_out, saved_err;
        FILE *out = tmpfile(), *err = tmpfile();

        assert_non_null(out);
        assert_non_null(err);
        argv[argc++] = (char *) "etcd";
        for (; args && *args; args++)
                argv[argc++] = (char *) *args;
        argv[argc] = NULL;
        for (; env && *env; env++)
                envp[n++] = (char *) *env;
        envp[n] = NULL;

        *run = (Run) { .status = -1 };
        log_set_max_level(LOG_INFO);

        (void) fflush(stdout);
        (void) fflush(stderr);
        saved_out = dup(STDOUT_FILENO);
        saved_err = dup(STDERR_FILENO);
        assert_true(saved_out >= 0 && saved_err >= 0);
        assert_true(dup2(fileno(out), STDOUT_FILENO) >= 0);
        assert_true(dup2(fileno(err), STDERR_FILENO) >= 0);

        run->r = config_load(argc, argv, envp, &run->config, &run->status);

        (void) fflush(stdout);
        (void) fflush(stderr);
        assert_true(dup2(saved_out, STDOUT_FILENO) >= 0);
        assert_true(dup2(saved_err, STDERR_FILENO) >= 0);
        (void) close(saved_out);
        (void) close(saved_err);

        /* The redirected fds shared the FILEs' offsets: read them through the FILEs. */
        (void) fseek(out, 0, SEEK_END);
        (void) fseek(err, 0, SEEK_END);
        run->out = read_all(out);
        run->err = read_all(err);
        (void) fclose(out);
        (void) fclose(err);
}

#define ARGS(...) ((const char *const[]) { __VA_ARGS__, NULL })
#define NOARGS ((const char *const *) NULL)
#define NOENV ((const char *const *) NULL)

#define assert_contains(haystack, needle)                                                       \
        do {                                                                                    \
                if (!strstr((haystack), (needle)))                                              \
                        fail_msg("expected to find '%s' in:\n%s", (needle), (haystack));        \
        } while (0)

#define assert_not_contains(haystack, needle)                                                   \
        do {                                                                                    \
                if (strstr((haystack), (needle)))                                               \
                        fail_msg("did not expect '%s' in:\n%s", (needle), (haystack));          \
        } while (0)

/* Runs and expects config_load() to ask for exit with `status`, printing `needle` on stderr. */
static void expect_exit(const char *const *args, const char *const *env, int status, const char *needle) {
        Run r;

        run_config(&r, args, env);
        if (r.r != 1 || r.status != status)
                fail_msg("expected exit %d, got r=%d status=%d; stderr:\n%s", status, r.r, r.status, r.err);
        assert_null(r.config);
        if (needle)
                assert_contains(r.err, needle);
        run_done(&r);
}

/* Runs and expects success. */
static void expect_ok(Run *r, const char *const *args, const char *const *env) {
        run_config(r, args, env);
        if (r->r != 0)
                fail_msg("expected success, got r=%d status=%d; stderr:\n%s", r->r, r->status, r->err);
        assert_non_null(r->config);
}

static void assert_urls(const EtcdUrlList *l, const char *const *expected) {
        size_t n = 0;

        for (; expected[n]; n++) {
                assert_true(n < l->n);
                assert_string_equal(l->urls[n].str, expected[n]);
        }
        assert_int_equal(l->n, n);
}

/* ---- defaults ---- */

static void test_defaults(void **state) {
        Run r;
        Config *c;

        expect_ok(&r, NOARGS, NOENV);
        c = r.config;
        assert_string_equal(c->name, "default");
        assert_string_equal(c->data_dir, "default.etcd");
        assert_null(c->wal_dir);
        assert_int_equal(c->snapshot_count, 10000);
        assert_int_equal(c->heartbeat_interval_ms, 100);
        assert_int_equal(c->election_timeout_ms, 1000);
        assert_urls(&c->listen_peer_urls, ARGS("http://localhost:2380", "http://localhost:7001"));
        assert_urls(&c->listen_client_urls, ARGS("http://localhost:2379", "http://localhost:4001"));
        assert_int_equal(c->listen_client_urls.urls[0].port, 2379);
        assert_string_equal(c->listen_client_urls.urls[0].host, "localhost");
        assert_string_equal(c->listen_client_urls.urls[0].scheme, "http");
        assert_int_equal(c->max_snapshots, 5);
        assert_int_equal(c->max_wals, 5);
        assert_null(c->cors);
        assert_urls(&c->initial_advertise_peer_urls, ARGS("http://localhost:2380", "http://localhost:7001"));
        assert_string_equal(c->initial_cluster, "default=http://localhost:2380,default=http://localhost:7001");
        assert_int_equal(c->n_initial_members, 1);
        assert_string_equal(c->initial_members[0].name, "default");
        assert_urls(&c->initial_members[0].peer_urls, ARGS("http://localhost:2380", "http://localhost:7001"));
        assert_int_equal(c->initial_cluster_state, CLUSTER_STATE_NEW);
        assert_string_equal(c->initial_cluster_token, "etcd-cluster");
        assert_urls(&c->advertise_client_urls, ARGS("http://localhost:2379", "http://localhost:4001"));
        assert_true(isempty(c->discovery));
        assert_true(isempty(c->discovery_srv));
        assert_string_equal(c->discovery_fallback, "proxy");
        assert_true(isempty(c->discovery_proxy));
        assert_false(c->strict_reconfig_check);
        assert_int_equal(c->proxy, PROXY_OFF);
        assert_int_equal(c->proxy_failure_wait_ms, 5000);
        assert_int_equal(c->proxy_refresh_interval_ms, 30000);
        assert_int_equal(c->proxy_dial_timeout_ms, 1000);
        assert_int_equal(c->proxy_write_timeout_ms, 5000);
        assert_int_equal(c->proxy_read_timeout_ms, 0);
        assert_true(isempty(c->cert_file));
        assert_false(c->client_cert_auth);
        assert_false(c->debug);
        assert_false(c->force_new_cluster);
        assert_false(c->experimental_v3demo);
        assert_string_equal(c->experimental_grpc_addr, "127.0.0.1:2378");
        assert_int_equal(c->experimental_auto_compaction_retention, 0);
        assert_false(c->enable_pprof);
        assert_null(c->bus_address);
        /* The IDs in etcd's own docs for a default member. */
        assert_int_equal(c->member_id, UINT64_C(0xce2a822cea30bfca));
        assert_int_equal(c->cluster_id, UINT64_C(0x7e27652122e8b2ae));
        assert_int_equal(c->initial_members[0].id, c->member_id);
        assert_contains(r.err, "no data-dir provided, using default data-dir ./default.etcd");
        assert_string_equal(r.out, "");
        assert_int_equal(log_max_level, LOG_INFO);
        run_done(&r);
}

/* ---- IDs ---- */

static void test_id_vectors(void **state) {
        char *d[] = { (char *) "http://localhost:7001", (char *) "http://localhost:2380" };
        char *m1[] = { (char *) "http://10.0.1.10:2380" };
        char *m2[] = { (char *) "http://10.0.1.11:2380" };
        char *m3[] = { (char *) "http://10.0.1.12:2380" };
        uint64_t ids[3], ids_shuffled[3];

        /* Unsorted input: etcd sorts the URL strings before hashing. */
        assert_int_equal(etcd_member_id(d, 2, "etcd-cluster", 0), UINT64_C(0xce2a822cea30bfca));
        ids[0] = etcd_member_id(d, 2, "etcd-cluster", 0);
        assert_int_equal(etcd_cluster_id(ids, 1), UINT64_C(0x7e27652122e8b2ae));

        ids[0] = etcd_member_id(m1, 1, "etcd-cluster-1", 0);
        ids[1] = etcd_member_id(m2, 1, "etcd-cluster-1", 0);
        ids[2] = etcd_member_id(m3, 1, "etcd-cluster-1", 0);
        assert_int_equal(ids[0], UINT64_C(0x140fedbeeb74765d));
        assert_int_equal(ids[1], UINT64_C(0xd5dc5f8d75d04e29));
        assert_int_equal(ids[2], UINT64_C(0x8a0a11c6194fc77));
        assert_int_equal(etcd_cluster_id(ids, 3), UINT64_C(0xacccc8912db0cd57));
        /* Order of member IDs does not matter either. */
        ids_shuffled[0] = ids[2];
        ids_shuffled[1] = ids[0];
        ids_shuffled[2] = ids[1];
        assert_int_equal(etcd_cluster_id(ids_shuffled, 3), UINT64_C(0xacccc8912db0cd57));

        /* Token and add-time are hashed; different inputs give different IDs. */
        assert_int_not_equal(etcd_member_id(m1, 1, "etcd-cluster-2", 0), ids[0]);
        assert_int_not_equal(etcd_member_id(m1, 1, "etcd-cluster-1", 1487116800), ids[0]);
        assert_int_equal(etcd_member_id(m1, 1, "etcd-cluster-1", 1487116800),
                         etcd_member_id(m1, 1, "etcd-cluster-11487116800", 0));
}

/* ---- URLs ---- */

static void test_url_parse(void **state) {
        EtcdUrl u;
        char *error = NULL;

        assert_int_equal(etcd_url_parse("http://[::1]:2379", &u, &error), 0);
        assert_string_equal(u.str, "http://[::1]:2379");
        assert_string_equal(u.host, "::1");
        assert_int_equal(u.port, 2379);
        etcd_url_done(&u);

        assert_int_equal(etcd_url_parse("  HTTPS://127.0.0.1:443 ", &u, &error), 0);
        assert_string_equal(u.str, "https://127.0.0.1:443");
        assert_string_equal(u.scheme, "https");
        assert_string_equal(u.host, "127.0.0.1");
        assert_int_equal(u.port, 443);
        etcd_url_done(&u);

        static const struct {
                const char *in, *error;
        } bad[] = {
                { "ftp://a:1", "URL scheme must be http or https: ftp://a:1" },
                { "unix://a:1", "URL scheme must be http or https: unix://a:1" },
                { "", "URL scheme must be http or https: " },
                { "localhost:2379", "URL scheme must be http or https: localhost:2379" },
                { "127.0.0.1:2379", "parse 127.0.0.1:2379: first path segment in URL cannot contain colon" },
                { "http://a", "URL address does not have the form \"host:port\": http://a" },
                { "http:a:1", "URL address does not have the form \"host:port\": http:a:1" },
                { "http://::1:2379", "URL address does not have the form \"host:port\": http://::1:2379" },
                { "http://a:99999", "URL address does not have the form \"host:port\": http://a:99999" },
                { "http://a:1/", "URL must not contain a path: http://a:1/" },
                { "http://a:1/v2", "URL must not contain a path: http://a:1/v2" },
                { ":x", "parse :x: missing protocol scheme" },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                u = (EtcdUrl) {};
                if (etcd_url_parse(bad[i].in, &u, &error) != -EINVAL)
                        fail_msg("'%s' was accepted", bad[i].in);
                assert_null(u.str); /* not written on failure */
                assert_string_equal(error, bad[i].error);
                free(error);
                error = NULL;
        }
}

/* ---- flag syntax ---- */

static void test_flag_forms(void **state) {
        const char *const *const forms[] = {
                ARGS("-name", "x"),
                ARGS("--name", "x"),
                ARGS("-name=x"),
                ARGS("--name=x"),
                ARGS("--name=y", "--name", "x"), /* last one wins */
        };
        Run r;

        for (size_t i = 0; i < ELEMENTSOF(forms); i++) {
                expect_ok(&r, forms[i], NOENV);
                assert_string_equal(r.config->name, "x");
                assert_string_equal(r.config->data_dir, "x.etcd");
                run_done(&r);
        }

        /* A value may itself start with '-' when it is the next argument. */
        expect_ok(&r, ARGS("--name", "-dash"), NOENV);
        assert_string_equal(r.config->name, "-dash");
        run_done(&r);

        /* "=" inside the value is kept. */
        expect_ok(&r, ARGS("--initial-cluster-token=a=b"), NOENV);
        assert_string_equal(r.config->initial_cluster_token, "a=b");
        run_done(&r);
}

static void test_bool_forms(void **state) {
        static const struct {
                const char *arg;
                bool value;
        } cases[] = {
                { "--strict-reconfig-check", true },   { "-strict-reconfig-check", true },
                { "--strict-reconfig-check=true", true }, { "--strict-reconfig-check=1", true },
                { "--strict-reconfig-check=t", true }, { "--strict-reconfig-check=T", true },
                { "--strict-reconfig-check=TRUE", true }, { "--strict-reconfig-check=True", true },
                { "--strict-reconfig-check=false", false }, { "--strict-reconfig-check=0", false },
                { "--strict-reconfig-check=f", false }, { "--strict-reconfig-check=F", false },
                { "--strict-reconfig-check=FALSE", false }, { "--strict-reconfig-check=False", false },
        };
        Run r;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                expect_ok(&r, ARGS(cases[i].arg), NOENV);
                if (r.config->strict_reconfig_check != cases[i].value)
                        fail_msg("%s gave %d", cases[i].arg, r.config->strict_reconfig_check);
                run_done(&r);
        }

        /* A boolean never takes the next argument: "false" becomes a stray argument. */
        expect_exit(ARGS("--strict-reconfig-check", "false"), NOENV, 1,
                    "error verifying flags, 'false' is not a valid flag. See 'etcd --help'.");

        run_config(&r, ARGS("--debug=maybe"), NOENV);
        assert_int_equal(r.r, 1);
        assert_int_equal(r.status, 2);
        assert_string_equal(r.err,
                            "invalid boolean value \"maybe\" for -debug: strconv.ParseBool: parsing \"maybe\": invalid syntax\n");
        assert_contains(r.out, "usage: etcd [flags]");
        assert_not_contains(r.out, "member flags:");
        run_done(&r);

        expect_exit(ARGS("--debug="), NOENV, 2, "invalid boolean value \"\" for -debug");
}

static void test_flag_syntax_errors(void **state) {
        Run r;

        run_config(&r, ARGS("--no-such-flag"), NOENV);
        assert_int_equal(r.r, 1);
        assert_int_equal(r.status, 2);
        assert_string_equal(r.err, "flag provided but not defined: -no-such-flag\n");
        assert_contains(r.out, "usage: etcd [flags]\n       start an etcd server\n");
        assert_contains(r.out, "etcd -h | --help");
        run_done(&r);

        expect_exit(ARGS("-no-such-flag=1"), NOENV, 2, "flag provided but not defined: -no-such-flag\n");
        expect_exit(ARGS("--name"), NOENV, 2, "flag needs an argument: -name\n");
        expect_exit(ARGS("---name"), NOENV, 2, "bad flag syntax: ---name\n");
        expect_exit(ARGS("-=x"), NOENV, 2, "bad flag syntax: -=x\n");
        expect_exit(ARGS("--snapshot-count", "abc"), NOENV, 2,
                    "invalid value \"abc\" for flag -snapshot-count: strconv.ParseUint: parsing \"abc\": invalid syntax\n");
        expect_exit(ARGS("--max-wals=-1"), NOENV, 2,
                    "invalid value \"-1\" for flag -max-wals: strconv.ParseUint: parsing \"-1\": invalid syntax\n");
        expect_exit(ARGS("--heartbeat-interval=99999999999"), NOENV, 2,
                    "strconv.ParseUint: parsing \"99999999999\": value out of range");
        expect_exit(ARGS("--snapshot-count=0x"), NOENV, 2, "parsing \"0x\": invalid syntax");
        expect_exit(ARGS("--snapshot-count=09"), NOENV, 2, "parsing \"09\": invalid syntax");
        expect_exit(ARGS("--experimental-auto-compaction-retention=x"), NOENV, 2,
                    "strconv.ParseInt: parsing \"x\": invalid syntax");
        /* Parsing stops at the first flag error: later flags are not looked at. */
        expect_exit(ARGS("--nope", "--debug=maybe"), NOENV, 2, "flag provided but not defined: -nope");
}

static void test_numbers(void **state) {
        Run r;

        expect_ok(&r, ARGS("--snapshot-count=0x10", "--max-wals=010", "--max-snapshots", "0",
                           "--heartbeat-interval=50", "--election-timeout=250",
                           "--experimental-auto-compaction-retention=-3"),
                  NOENV);
        assert_int_equal(r.config->snapshot_count, 16);
        assert_int_equal(r.config->max_wals, 8);
        assert_int_equal(r.config->max_snapshots, 0);
        assert_int_equal(r.config->heartbeat_interval_ms, 50);
        assert_int_equal(r.config->election_timeout_ms, 250);
        assert_int_equal(r.config->experimental_auto_compaction_retention, 0);
        run_done(&r);

        /* snapshot-count 0 means the default. */
        expect_ok(&r, ARGS("--snapshot-count=0"), NOENV);
        assert_int_equal(r.config->snapshot_count, 10000);
        run_done(&r);

        expect_ok(&r, ARGS("--snapshot-count=18446744073709551615", "--proxy-read-timeout=7",
                           "--proxy-dial-timeout=8", "--proxy-write-timeout=9", "--proxy-failure-wait=10",
                           "--proxy-refresh-interval=11"),
                  NOENV);
        assert_true(r.config->snapshot_count == UINT64_MAX);
        assert_int_equal(r.config->proxy_read_timeout_ms, 7);
        assert_int_equal(r.config->proxy_dial_timeout_ms, 8);
        assert_int_equal(r.config->proxy_write_timeout_ms, 9);
        assert_int_equal(r.config->proxy_failure_wait_ms, 10);
        assert_int_equal(r.config->proxy_refresh_interval_ms, 11);
        run_done(&r);
}

static void test_help(void **state) {
        const char *const *const forms[] = { ARGS("-h"), ARGS("--help"), ARGS("-help"), ARGS("--h=1"),
                                                    ARGS("--name", "x", "-h", "--nope") };
        Run r;

        for (size_t i = 0; i < ELEMENTSOF(forms); i++) {
                run_config(&r, forms[i], NOENV);
                assert_int_equal(r.r, 1);
                assert_int_equal(r.status, 0);
                assert_null(r.config);
                assert_true(strneq(r.out, "usage: etcd [flags]\n", 20));
                /* The groups, in etcd2's order. */
                const char *groups[] = { "member flags:", "clustering flags:", "proxy flags:", "security flags:",
                                         "logging flags", "unsafe flags:", "experimental flags:",
                                         "profiling flags:" };
                const char *pos = r.out;
                for (size_t g = 0; g < ELEMENTSOF(groups); g++) {
                        const char *at = strstr(pos, groups[g]);
                        if (!at)
                                fail_msg("group '%s' missing or out of order", groups[g]);
                        pos = at;
                }
                assert_contains(r.out, "--initial-cluster 'default=http://localhost:2380,default=http://localhost:7001'");
                assert_contains(r.out, "--data-dir '${name}.etcd'");
                assert_contains(r.out, "--enable-pprof 'false'");
                assert_not_contains(r.out, "bus-address");
                assert_not_contains(r.out, "peer-bind-addr");
                assert_string_equal(r.err, "");
                run_done(&r);
        }
}

static void test_version(void **state) {
        Run r;

        run_config(&r, ARGS("--version"), ARGS("ETCD_NAME=x"));
        assert_int_equal(r.r, 1);
        assert_int_equal(r.status, 0);
        assert_true(strneq(r.out, "etcd Version: 2.3.8\nGit SHA: ", 28));
        assert_contains(r.out, "\nGo Version: ");
        assert_contains(r.out, "\nGo OS/Arch: linux/amd64\n");
        /* Evaluated before the environment: nothing about ETCD_NAME is logged. */
        assert_string_equal(r.err, "");
        run_done(&r);

        expect_exit(ARGS("-version=true"), NOENV, 0, NULL);

        /* Stray arguments are checked first. */
        expect_exit(ARGS("--version", "extra"), NOENV, 1, "'extra' is not a valid flag");

        /* ETCD_VERSION is a known variable but has no effect. */
        expect_ok(&r, NOARGS, ARGS("ETCD_VERSION=true"));
        assert_string_equal(r.out, "");
        assert_contains(r.err, "recognized and used environment variable ETCD_VERSION=true");
        run_done(&r);
}

static void test_stray_args(void **state) {
        Run r;

        expect_exit(ARGS("foo"), NOENV, 1, "error verifying flags, 'foo' is not a valid flag. See 'etcd --help'.");
        expect_exit(ARGS("--name", "x", "foo", "--debug"), NOENV, 1, "'foo' is not a valid flag");
        expect_exit(ARGS("-"), NOENV, 1, "'-' is not a valid flag");
        /* "--" ends the flags; whatever follows is a stray argument. */
        expect_exit(ARGS("--", "--name"), NOENV, 1, "'--name' is not a valid flag");
        expect_ok(&r, ARGS("--name", "x", "--"), NOENV);
        assert_string_equal(r.config->name, "x");
        run_done(&r);
}

/* ---- environment ---- */

static void test_env(void **state) {
        Run r;

        expect_ok(&r, NOARGS,
                  ARGS("PATH=/bin", "ETCD_NAME=envname", "ETCD_DEBUG=true", "ETCD_SNAPSHOT_COUNT=42",
                       "ETCD_EXPERIMENTAL_GRPC_ADDR=127.0.0.1:1", "ETCD_STRICT_RECONFIG_CHECK=1",
                       "ETCD_BUS_ADDRESS=unix:path=/run/x", "ETCD_WAL_DIR=/w"));
        assert_string_equal(r.config->name, "envname");
        assert_string_equal(r.config->data_dir, "envname.etcd");
        assert_string_equal(r.config->initial_cluster,
                            "envname=http://localhost:2380,envname=http://localhost:7001");
        assert_true(r.config->debug);
        assert_int_equal(log_max_level, LOG_DEBUG);
        assert_int_equal(r.config->snapshot_count, 42);
        assert_string_equal(r.config->experimental_grpc_addr, "127.0.0.1:1");
        assert_true(r.config->strict_reconfig_check);
        assert_string_equal(r.config->bus_address, "unix:path=/run/x");
        assert_string_equal(r.config->wal_dir, "/w");
        assert_contains(r.err, "recognized and used environment variable ETCD_NAME=envname\n");
        assert_contains(r.err, "recognized and used environment variable ETCD_DEBUG=true\n");
        assert_not_contains(r.err, "PATH");
        assert_not_contains(r.err, "unrecognized");
        run_done(&r);

        /* The command line wins; the shadowed variable is reported as unused. */
        expect_ok(&r, ARGS("--name", "cli"), ARGS("ETCD_NAME=env"));
        assert_string_equal(r.config->name, "cli");
        assert_contains(r.err, "recognized environment variable ETCD_NAME, but unused: shadowed by corresponding flag");
        assert_not_contains(r.err, "recognized and used");
        run_done(&r);

        /* Empty values are ignored (and then count as unrecognized, as in etcd); unknown ETCD_* warn. */
        expect_ok(&r, NOARGS, ARGS("ETCD_NAME=", "ETCD_FOO=bar", "ETCDX=1"));
        assert_string_equal(r.config->name, "default");
        assert_contains(r.err, "unrecognized environment variable ETCD_NAME=\n");
        assert_contains(r.err, "unrecognized environment variable ETCD_FOO=bar\n");
        assert_not_contains(r.err, "ETCDX");
        run_done(&r);

        /* Bad values from the environment are fatal with exit 1, not Go flag errors. */
        run_config(&r, NOARGS, ARGS("ETCD_SNAPSHOT_COUNT=abc"));
        assert_int_equal(r.r, 1);
        assert_int_equal(r.status, 1);
        assert_contains(r.err,
                        "invalid value \"abc\" for ETCD_SNAPSHOT_COUNT: strconv.ParseUint: parsing \"abc\": invalid syntax");
        assert_string_equal(r.out, "");
        run_done(&r);

        expect_exit(NOARGS, ARGS("ETCD_DEBUG=yes"), 1,
                    "invalid value \"yes\" for ETCD_DEBUG: strconv.ParseBool: parsing \"yes\": invalid syntax");
        expect_exit(NOARGS, ARGS("ETCD_LISTEN_PEER_URLS=http://a:1/x"), 1,
                    "invalid value \"http://a:1/x\" for ETCD_LISTEN_PEER_URLS: URL must not contain a path: http://a:1/x");
        expect_exit(NOARGS, ARGS("ETCD_PROXY=maybe"), 1, "invalid value \"maybe\" for ETCD_PROXY: invalid value");
        expect_exit(NOARGS, ARGS("ETCD_PEERS=a"), 1,
                    "invalid value \"a\" for ETCD_PEERS: flag \"-peers\" is no longer supported.");
}

static void test_env_counts_as_set(void **state) {
        /* Listen URLs set only from the environment still require advertise URLs. */
        expect_exit(NOARGS, ARGS("ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379"), 1,
                    "error verifying flags, -advertise-client-urls is required when -listen-client-urls is set "
                    "explicitly. See 'etcd --help'.");
        /* Bootstrap conflicts count the environment too. */
        expect_exit(ARGS("--initial-cluster", "default=http://localhost:2380"),
                    ARGS("ETCD_DISCOVERY=https://discovery.etcd.io/x"), 1,
                    "error verifying flags, multiple discovery or bootstrap flags are set. Choose one of "
                    "\"initial-cluster\", \"discovery\" or \"discovery-srv\". See 'etcd --help'.");
        /* An environment value equal to the default is still "set". */
        expect_exit(NOARGS,
                    ARGS("ETCD_INITIAL_CLUSTER=default=http://localhost:2380,default=http://localhost:7001",
                         "ETCD_DISCOVERY_SRV=example.com"),
                    1, "multiple discovery or bootstrap flags are set");
}

/* ---- validation ---- */

static void test_bootstrap_conflicts(void **state) {
        expect_exit(ARGS("--discovery", "https://d/x", "--discovery-srv", "example.com"), NOENV, 1,
                    "multiple discovery or bootstrap flags are set");
        expect_exit(ARGS("--initial-cluster", "a=http://a:1", "--discovery-srv", "example.com"), NOENV, 1,
                    "multiple discovery or bootstrap flags are set");
        /* Setting a flag to "" still sets it. */
        expect_exit(ARGS("--initial-cluster", "default=http://localhost:2380,default=http://localhost:7001",
                         "--discovery="),
                    NOENV, 1, "multiple discovery or bootstrap flags are set");
}

static void test_advertise_required(void **state) {
        Run r;

        run_config(&r, ARGS("--listen-client-urls", "http://127.0.0.1:2379"), NOENV);
        assert_int_equal(r.r, 1);
        assert_int_equal(r.status, 1);
        assert_contains(r.err, "-advertise-client-urls is required when -listen-client-urls is set explicitly");
        assert_contains(r.err, "must advertise accessible url(s) to each connected client.");
        run_done(&r);

        expect_ok(&r, ARGS("--listen-client-urls", "http://127.0.0.1:2379,http://127.0.0.1:4001",
                           "--advertise-client-urls", "http://127.0.0.1:4001,http://127.0.0.1:2379"),
                  NOENV);
        assert_urls(&r.config->listen_client_urls, ARGS("http://127.0.0.1:2379", "http://127.0.0.1:4001"));
        assert_urls(&r.config->advertise_client_urls, ARGS("http://127.0.0.1:2379", "http://127.0.0.1:4001"));
        run_done(&r);

        /* A proxy, or a member that may fall back to being one, needs no advertise URLs. */
        expect_ok(&r, ARGS("--listen-client-urls", "http://127.0.0.1:2379", "--proxy", "on"), NOENV);
        assert_int_equal(r.config->proxy, PROXY_ON);
        run_done(&r);
        expect_ok(&r, ARGS("--listen-client-urls", "http://127.0.0.1:2379", "--discovery", "https://d/x"), NOENV);
        assert_string_equal(r.config->discovery, "https://d/x");
        run_done(&r);
        expect_exit(ARGS("--listen-client-urls", "http://127.0.0.1:2379", "--discovery", "https://d/x",
                         "--discovery-fallback", "exit"),
                    NOENV, 1, "-advertise-client-urls is required");
        /* SRV discovery never falls back to a proxy. */
        expect_exit(ARGS("--listen-client-urls", "http://127.0.0.1:2379", "--discovery-srv", "example.com"), NOENV,
                    1, "-advertise-client-urls is required");
}

static void test_election_timeout(void **state) {
        Run r;

        expect_exit(ARGS("--heartbeat-interval", "300"), NOENV, 1,
                    "error verifying flags, -election-timeout[1000ms] should be at least as 5 times as "
                    "-heartbeat-interval[300ms]. See 'etcd --help'.");
        expect_exit(ARGS("--election-timeout", "50001"), NOENV, 1,
                    "-election-timeout[50001ms] is too long, and should be set less than 50000ms");
        expect_exit(ARGS("--election-timeout", "0", "--heartbeat-interval", "0"), NOENV, 1,
                    "-heartbeat-interval[0ms] must be greater than 0");
        expect_ok(&r, ARGS("--election-timeout", "50000", "--heartbeat-interval", "10000"), NOENV);
        assert_int_equal(r.config->election_timeout_ms, 50000);
        run_done(&r);
        expect_ok(&r, ARGS("--election-timeout", "500"), NOENV);
        run_done(&r);
}

static void test_url_flags(void **state) {
        Run r;

        expect_exit(ARGS("--listen-peer-urls", "ftp://127.0.0.1:2380"), NOENV, 2,
                    "invalid value \"ftp://127.0.0.1:2380\" for flag -listen-peer-urls: URL scheme must be http or "
                    "https: ftp://127.0.0.1:2380\n");
        expect_exit(ARGS("--advertise-client-urls=http://127.0.0.1"), NOENV, 2,
                    "URL address does not have the form \"host:port\": http://127.0.0.1");
        expect_exit(ARGS("--initial-advertise-peer-urls=http://127.0.0.1:2380/"), NOENV, 2,
                    "URL must not contain a path: http://127.0.0.1:2380/");
        expect_exit(ARGS("--listen-client-urls=http://127.0.0.1:2379,", "--advertise-client-urls=http://a:1"),
                    NOENV, 2, "URL scheme must be http or https: \n");
        expect_exit(ARGS("--listen-client-urls="), NOENV, 2, "URL scheme must be http or https: ");

        /* Entries are trimmed and sorted. */
        expect_ok(&r, ARGS("--listen-peer-urls", " http://127.0.0.1:7001 , http://[::1]:2380",
                           "--advertise-client-urls", "https://b:1,http://a:1"),
                  NOENV);
        assert_urls(&r.config->listen_peer_urls, ARGS("http://127.0.0.1:7001", "http://[::1]:2380"));
        assert_urls(&r.config->advertise_client_urls, ARGS("http://a:1", "https://b:1"));
        run_done(&r);
}

static void test_choices(void **state) {
        Run r;

        expect_exit(ARGS("--initial-cluster-state", "old"), NOENV, 2,
                    "invalid value \"old\" for flag -initial-cluster-state: invalid value\n");
        expect_exit(ARGS("--proxy=maybe"), NOENV, 2, "invalid value \"maybe\" for flag -proxy: invalid value\n");
        expect_exit(ARGS("--discovery-fallback=retry"), NOENV, 2,
                    "invalid value \"retry\" for flag -discovery-fallback: invalid value\n");

        expect_ok(&r, ARGS("--proxy", "off", "--discovery-fallback", "exit", "--initial-cluster-state=new"), NOENV);
        assert_int_equal(r.config->proxy, PROXY_OFF);
        assert_string_equal(r.config->discovery_fallback, "exit");
        assert_int_equal(r.config->initial_cluster_state, CLUSTER_STATE_NEW);
        run_done(&r);
}

static void test_cors(void **state) {
        Run r;

        expect_ok(&r, ARGS("--cors", "http://b.example, http://a.example,,*,http://a.example"), NOENV);
        assert_non_null(r.config->cors);
        assert_int_equal(strv_length(r.config->cors), 3);
        assert_string_equal(r.config->cors[0], "*");
        assert_string_equal(r.config->cors[1], "http://a.example");
        assert_string_equal(r.config->cors[2], "http://b.example");
        run_done(&r);

        expect_ok(&r, ARGS("--cors="), NOENV);
        assert_null(r.config->cors);
        run_done(&r);

        expect_exit(ARGS("--cors", "http://a%zz"), NOENV, 2,
                    "invalid value \"http://a%zz\" for flag -cors: Invalid CORS origin: parse http://a%zz: invalid URL "
                    "escape \"%zz\"");
}

/* ---- initial cluster, bootstrap checks ---- */

static void test_initial_cluster(void **state) {
        Run r;
        char *urls[] = { (char *) "http://10.0.0.2:2380", (char *) "http://10.0.0.1:2380" };

        /* The same name repeated gives one member with several URLs, sorted. */
        expect_ok(&r, ARGS("--name", "a", "--initial-cluster", "a=http://10.0.0.2:2380,a=http://10.0.0.1:2380",
                           "--initial-advertise-peer-urls", "http://10.0.0.2:2380,http://10.0.0.1:2380",
                           "--initial-cluster-token", "tok"),
                  NOENV);
        assert_int_equal(r.config->n_initial_members, 1);
        assert_string_equal(r.config->initial_members[0].name, "a");
        assert_urls(&r.config->initial_members[0].peer_urls, ARGS("http://10.0.0.1:2380", "http://10.0.0.2:2380"));
        assert_int_equal(r.config->member_id, etcd_member_id(urls, 2, "tok", 0));
        assert_int_equal(r.config->initial_members[0].id, r.config->member_id);
        assert_int_equal(r.config->cluster_id, etcd_cluster_id(&r.config->member_id, 1));
        /* The raw string is kept as given. */
        assert_string_equal(r.config->initial_cluster, "a=http://10.0.0.2:2380,a=http://10.0.0.1:2380");
        run_done(&r);

        /* Empty entries are skipped. */
        expect_ok(&r, ARGS("--name", "a", "--initial-cluster", ",a=http://10.0.0.1:2380,,",
                           "--initial-advertise-peer-urls", "http://10.0.0.1:2380"),
                  NOENV);
        assert_int_equal(r.config->n_initial_members, 1);
        run_done(&r);

        /* Name is not hashed: a renamed default member keeps the documented ID. */
        expect_ok(&r, ARGS("--name", "other"), NOENV);
        assert_string_equal(r.config->initial_cluster, "other=http://localhost:2380,other=http://localhost:7001");
        assert_string_equal(r.config->initial_members[0].name, "other");
        assert_int_equal(r.config->member_id, UINT64_C(0xce2a822cea30bfca));
        assert_int_equal(r.config->cluster_id, UINT64_C(0x7e27652122e8b2ae));
        run_done(&r);

        /* The default rewrite compares values: an explicit default string follows --name too. */
        expect_ok(&r, ARGS("--name", "n", "--initial-cluster",
                           "default=http://localhost:2380,default=http://localhost:7001"),
                  NOENV);
        assert_string_equal(r.config->initial_cluster, "n=http://localhost:2380,n=http://localhost:7001");
        run_done(&r);

        expect_exit(ARGS("--initial-cluster", "default=ftp://a:1"), NOENV, 1,
                    "error setting up initial cluster: URL scheme must be http or https: ftp://a:1");
        expect_exit(ARGS("--initial-cluster", "default"), NOENV, 1,
                    "error setting up initial cluster: URL scheme must be http or https: ");
        expect_exit(ARGS("--initial-cluster", "default=http://a:1/p"), NOENV, 1,
                    "error setting up initial cluster: URL must not contain a path: http://a:1/p");
}

static void test_initial_cluster_three_members(void **state) {
        Run r;

        /* Parses and passes the bootstrap checks; the IDs are etcd2's (reference section 2.2). */
        run_config(&r, ARGS("--name", "infra1", "--initial-cluster-token", "etcd-cluster-1",
                            "--initial-advertise-peer-urls", "http://10.0.1.11:2380",
                            "--initial-cluster",
                            "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380"),
                   NOENV);
        assert_int_equal(r.r, 0);
        assert_int_equal(r.config->n_initial_members, 3);
        assert_true(r.config->member_id == UINT64_C(0xd5dc5f8d75d04e29));
        assert_true(r.config->cluster_id == UINT64_C(0xacccc8912db0cd57));
        assert_not_contains(r.err, "couldn't find");
        run_done(&r);
}

static void test_bootstrap_checks(void **state) {
        Run r;

        expect_exit(ARGS("--name", "foo", "--initial-cluster", "bar=http://localhost:2380"), NOENV, 1,
                    "couldn't find local name \"foo\" in the initial cluster configuration");
        expect_exit(ARGS("--initial-advertise-peer-urls", "http://127.0.0.1:2380"), NOENV, 1,
                    "--initial-cluster must include default=http://127.0.0.1:2380 given "
                    "--initial-advertise-peer-urls=http://127.0.0.1:2380");
        expect_exit(ARGS("--initial-cluster", "default=http://localhost:2380,default=http://localhost:2380",
                         "--initial-advertise-peer-urls", "http://localhost:2380,http://localhost:2380"),
                    NOENV, 1, "has duplicate url");
        expect_exit(ARGS("--initial-cluster", ""), NOENV, 1,
                    "couldn't find local name \"default\" in the initial cluster configuration");

        /* Host names are resolved before giving up on a mismatch (IP literals and localhost are not). */
        char host[256], ip[INET6_ADDRSTRLEN], adv[300], cluster[300];
        struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai = NULL;
        assert_int_equal(gethostname(host, sizeof(host)), 0);
        if (!streq(host, "localhost") && getaddrinfo(host, NULL, &hints, &ai) == 0) {
                assert_non_null(inet_ntop(AF_INET, &((struct sockaddr_in *) ai->ai_addr)->sin_addr, ip, sizeof(ip)));
                freeaddrinfo(ai);
                (void) snprintf(adv, sizeof(adv), "http://%s:2380", host);
                (void) snprintf(cluster, sizeof(cluster), "default=http://%s:2380", ip);
                expect_ok(&r, ARGS("--initial-advertise-peer-urls", adv, "--initial-cluster", cluster), NOENV);
                run_done(&r);
                (void) snprintf(cluster, sizeof(cluster), "default=http://%s:2381", ip);
                expect_exit(ARGS("--initial-advertise-peer-urls", adv, "--initial-cluster", cluster), NOENV, 1,
                            "--initial-cluster must include");
        } else
                print_message("host name '%s' does not resolve, skipping the resolution case\n", host);
        expect_exit(ARGS("--initial-advertise-peer-urls", "http://no-such-host.invalid:2380", "--initial-cluster",
                         "default=http://127.0.0.1:2380"),
                    NOENV, 1, "--initial-cluster must include");

        /* Once the data dir holds a member, etcd ignores --initial-*: so do we. */
        assert_int_equal(mkdir("existing.etcd", 0700), 0);
        assert_int_equal(mkdir("existing.etcd/member", 0700), 0);
        expect_ok(&r, ARGS("--data-dir", "existing.etcd", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"),
                  NOENV);
        assert_string_equal(r.config->data_dir, "existing.etcd");
        assert_not_contains(r.err, "no data-dir provided");
        /* The member ID still follows the local entry of --initial-cluster. */
        assert_int_equal(r.config->member_id, UINT64_C(0xce2a822cea30bfca));
        assert_int_equal(config_verify_bootstrap(r.config), -EINVAL);
        run_done(&r);
        assert_int_equal(rmdir("existing.etcd/member"), 0);
        assert_int_equal(rmdir("existing.etcd"), 0);
}

/* ---- legacy 0.4 flags ---- */

static void test_legacy_addr(void **state) {
        Run r;

        expect_ok(&r, ARGS("-addr", "127.0.0.1:4001"), NOENV);
        assert_urls(&r.config->advertise_client_urls, ARGS("http://127.0.0.1:4001"));
        assert_urls(&r.config->listen_client_urls, ARGS("http://[::]:4001"));
        run_done(&r);

        expect_ok(&r, ARGS("-addr", "127.0.0.1:4001", "-bind-addr", "0.0.0.0:4002"), NOENV);
        assert_urls(&r.config->advertise_client_urls, ARGS("http://127.0.0.1:4001"));
        assert_urls(&r.config->listen_client_urls, ARGS("http://0.0.0.0:4002"));
        run_done(&r);

        /* -bind-addr alone: listen set, advertise keeps its default (listen-client-urls itself is unset). */
        expect_ok(&r, ARGS("-bind-addr", "[::1]:4002"), NOENV);
        assert_urls(&r.config->listen_client_urls, ARGS("http://[::1]:4002"));
        assert_urls(&r.config->advertise_client_urls, ARGS("http://localhost:2379", "http://localhost:4001"));
        run_done(&r);

        expect_ok(&r, ARGS("-peer-addr", "127.0.0.1:7001", "--initial-cluster", "default=http://127.0.0.1:7001"),
                  NOENV);
        assert_urls(&r.config->initial_advertise_peer_urls, ARGS("http://127.0.0.1:7001"));
        assert_urls(&r.config->listen_peer_urls, ARGS("http://[::]:7001"));
        assert_int_equal(r.config->member_id, r.config->initial_members[0].id);
        run_done(&r);

        expect_ok(&r, NOARGS, ARGS("ETCD_ADDR=10.1.2.3:4001", "ETCD_PEER_BIND_ADDR=127.0.0.1:7002"));
        assert_urls(&r.config->advertise_client_urls, ARGS("http://10.1.2.3:4001"));
        assert_urls(&r.config->listen_client_urls, ARGS("http://[::]:4001"));
        assert_urls(&r.config->listen_peer_urls, ARGS("http://127.0.0.1:7002"));
        run_done(&r);

        expect_exit(ARGS("-addr", "localhost:4001"), NOENV, 2,
                    "invalid value \"localhost:4001\" for flag -addr: bad IP in address specification\n");
        expect_exit(ARGS("-addr", "127.0.0.1"), NOENV, 2,
                    "invalid value \"127.0.0.1\" for flag -addr: address 127.0.0.1: missing port in address\n");
        expect_exit(ARGS("-peer-addr", "127.0.0.1:x"), NOENV, 2, "bad port in address specification");
        expect_exit(ARGS("-addr", "127.0.0.1:4001", "--advertise-client-urls", "http://127.0.0.1:4001"), NOENV, 1,
                    "error verifying flags, Set only one of flags -advertise-client-urls and -addr. See 'etcd --help'.");
        expect_exit(ARGS("-bind-addr", "127.0.0.1:4001", "--listen-client-urls", "http://127.0.0.1:4001"), NOENV, 1,
                    "Set only one of flags -listen-client-urls and -bind-addr");
        /* etcd's quirk: -peer-addr implies -peer-bind-addr, which then conflicts with --listen-peer-urls. */
        expect_exit(ARGS("-peer-addr", "127.0.0.1:7001", "--listen-peer-urls", "http://127.0.0.1:7001"), NOENV, 1,
                    "Set only one of flags -listen-peer-urls and -peer-bind-addr");
        /* With client TLS files the converted URL is https. */
        Run t;
        expect_ok(&t, ARGS("-addr", "127.0.0.1:4001", "--cert-file", "/c", "--key-file", "/k"), NOENV);
        assert_string_equal(t.config->advertise_client_urls.urls[0].scheme, "https");
        assert_string_equal(t.config->listen_client_urls.urls[0].scheme, "https");
        run_done(&t);
}

static void test_legacy_rejected_and_ignored(void **state) {
        Run r;

        expect_exit(ARGS("-peers", "a,b"), NOENV, 2,
                    "invalid value \"a,b\" for flag -peers: flag \"-peers\" is no longer supported.\n");
        expect_exit(ARGS("-peers-file=/x"), NOENV, 2, "flag \"-peers-file\" is no longer supported.");
        expect_exit(ARGS("-peers"), NOENV, 2, "flag needs an argument: -peers");

        expect_ok(&r, ARGS("-v", "-vv", "-force", "--snapshot=true", "-cluster-active-size", "-config=false"), NOENV);
        assert_contains(r.err, "flag \"-v\" is no longer supported - ignoring.");
        assert_contains(r.err, "flag \"-vv\" is no longer supported - ignoring.");
        assert_contains(r.err, "flag \"-snapshot\" is no longer supported - ignoring.");
        assert_contains(r.err, "flag \"-config\" is no longer supported - ignoring.");
        run_done(&r);

        /* They are booleans: a value after a space is a stray argument. */
        expect_exit(ARGS("-config", "/etc/etcd.conf"), NOENV, 1, "'/etc/etcd.conf' is not a valid flag");
}

/* ---- misc behaviour ---- */

static void test_derived_values(void **state) {
        Run r;

        expect_ok(&r, ARGS("--discovery-proxy", "127.0.0.1:3128", "--data-dir", "/var/lib/etcd2", "--wal-dir",
                           "/wal"),
                  NOENV);
        assert_string_equal(r.config->discovery_proxy, "http://127.0.0.1:3128");
        assert_string_equal(r.config->data_dir, "/var/lib/etcd2");
        assert_string_equal(r.config->wal_dir, "/wal");
        run_done(&r);

        expect_ok(&r, ARGS("--discovery-proxy", "https://proxy:3128"), NOENV);
        assert_string_equal(r.config->discovery_proxy, "https://proxy:3128");
        run_done(&r);

        /* An empty name: data dir ".etcd", initial cluster stays "default=...", so bootstrap fails as in etcd. */
        run_config(&r, ARGS("--name", ""), NOENV);
        assert_int_equal(r.status, 1);
        assert_contains(r.err, "no data-dir provided, using default data-dir ./.etcd");
        assert_contains(r.err, "couldn't find local name \"\" in the initial cluster configuration");
        run_done(&r);
}

static void test_logging(void **state) {
        Run r;

        expect_ok(&r, ARGS("--debug"), NOENV);
        assert_true(r.config->debug);
        assert_int_equal(log_max_level, LOG_DEBUG);
        run_done(&r);

        expect_ok(&r, ARGS("--log-package-levels", "*=WARNING"), NOENV);
        assert_int_equal(log_max_level, LOG_WARNING);
        assert_string_equal(r.config->log_package_levels, "*=WARNING");
        run_done(&r);

        expect_ok(&r, ARGS("--log-package-levels", "etcdserver=LOUD"), NOENV);
        assert_int_equal(log_max_level, LOG_INFO);
        assert_contains(r.err, "couldn't parse log level string");
        run_done(&r);

        /* capnslog level names are upper case only. */
        expect_ok(&r, ARGS("--log-package-levels", "*=debug"), NOENV);
        assert_int_equal(log_max_level, LOG_INFO);
        assert_contains(r.err, "couldn't parse log level debug");
        run_done(&r);

        expect_ok(&r, ARGS("--log-package-levels", "a=b=c"), NOENV);
        assert_contains(r.err, "oddly structured `pkg=level` option: a=b=c");
        run_done(&r);

        expect_ok(&r, ARGS("--log-package-levels", "etcdserver=DEBUG,raft=W"), NOENV);
        assert_int_equal(log_max_level, LOG_INFO);
        assert_not_contains(r.err, "couldn't parse");
        run_done(&r);
}

static void test_bus_address(void **state) {
        Run r;

        expect_ok(&r, ARGS("--bus-address", "unix:path=/tmp/bus"), NOENV);
        assert_string_equal(r.config->bus_address, "unix:path=/tmp/bus");
        run_done(&r);
}

/* After discovery (or SRV) the initial cluster is replaced, and the IDs follow the token given. */
static void test_set_initial_cluster(void **state) {
        Run r;

        expect_ok(&r, ARGS("--name", "infra0", "--initial-advertise-peer-urls", "http://10.0.1.10:2380",
                           "--discovery", "https://discovery.example/abc"),
                  NOENV);
        assert_int_equal(r.config->n_initial_members, 1);
        assert_int_equal(config_set_initial_cluster(r.config,
                                                    "infra1=http://10.0.1.11:2380,infra0=http://10.0.1.10:2380,"
                                                    "infra2=http://10.0.1.12:2380",
                                                    "etcd-cluster-1"),
                         0);
        assert_int_equal(r.config->n_initial_members, 3);
        assert_true(r.config->member_id == 0x140fedbeeb74765dULL);
        assert_true(r.config->cluster_id == 0xacccc8912db0cd57ULL);
        assert_string_equal(r.config->initial_cluster,
                            "infra1=http://10.0.1.11:2380,infra0=http://10.0.1.10:2380,infra2=http://10.0.1.12:2380");

        /* our name missing, or our URLs differing from what we advertise: etcd2's bootstrap checks */
        assert_int_equal(config_set_initial_cluster(r.config, "infra1=http://10.0.1.11:2380", "t"), -EINVAL);
        assert_int_equal(config_set_initial_cluster(r.config, "infra0=http://10.0.1.99:2380", "t"), -EINVAL);
        /* duplicate peer URLs across members */
        assert_int_equal(config_set_initial_cluster(r.config,
                                                    "infra0=http://10.0.1.10:2380,x=http://10.0.1.10:2380", "t"),
                         -EINVAL);
        /* garbage */
        assert_int_equal(config_set_initial_cluster(r.config, "infra0=ftp://x", "t"), -EINVAL);
        run_done(&r);
}

static void test_unsupported(void **state) {
        const struct {
                const char *const *args;
                const char *what;
        } cases[] = {
                { ARGS("--experimental-v3demo"), "--experimental-v3demo" },
                { ARGS("--enable-pprof"), "--enable-pprof" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char needle[256];

                (void) snprintf(needle, sizeof(needle), "%s is not supported yet by this etcd2", cases[i].what);
                expect_exit(cases[i].args, NOENV, 1, needle);
        }

        /* Client TLS is accepted here (endpoints.c checks the files and the URLs as etcd2's listeners do). */
        Run t;
        expect_ok(&t, ARGS("--cert-file", "/c", "--key-file", "/k", "--ca-file", "/ca", "--trusted-ca-file", "/t",
                           "--client-cert-auth", "--listen-client-urls", "https://127.0.0.1:2379",
                           "--advertise-client-urls", "https://127.0.0.1:2379"), NOENV);
        run_done(&t);

        /* So is peer TLS (likewise). */
        Run pt;
        expect_ok(&pt, ARGS("--peer-cert-file", "/c", "--peer-key-file", "/k", "--peer-ca-file", "/ca",
                            "--peer-trusted-ca-file", "/t", "--peer-client-cert-auth", "--listen-peer-urls",
                            "https://127.0.0.1:2380", "--initial-advertise-peer-urls", "https://127.0.0.1:2380",
                            "--initial-cluster", "default=https://127.0.0.1:2380"), NOENV);
        run_done(&pt);

        /* A proxy's --initial-cluster names the members, not itself: no member bootstrap checks for it. */
        Run p;
        expect_ok(&p, ARGS("--proxy", "on", "--initial-cluster", "infra0=http://10.0.0.1:2380"), NOENV);
        run_done(&p);

        /* Disabled features stay fine; so do their harmless tuning flags. */
        Run r;
        expect_ok(&r, ARGS("--proxy=off", "--client-cert-auth=false", "--force-new-cluster=0",
                           "--experimental-gRPC-addr", "127.0.0.1:9", "--discovery-fallback", "exit"),
                  NOENV);
        run_done(&r);
}

static int group_setup(void **state) {
        static char dir[] = "/tmp/test-config-XXXXXX";

        log_set_prefix(false);
        if (!mkdtemp(dir) || chdir(dir) < 0)
                return -1;
        *state = dir;
        return 0;
}

static int group_teardown(void **state) {
        if (chdir("/") < 0)
                return -1;
        (void) rmdir(*state);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_id_vectors),
                cmocka_unit_test(test_url_parse),
                cmocka_unit_test(test_flag_forms),
                cmocka_unit_test(test_bool_forms),
                cmocka_unit_test(test_flag_syntax_errors),
                cmocka_unit_test(test_numbers),
                cmocka_unit_test(test_help),
                cmocka_unit_test(test_version),
                cmocka_unit_test(test_stray_args),
                cmocka_unit_test(test_env),
                cmocka_unit_test(test_env_counts_as_set),
                cmocka_unit_test(test_bootstrap_conflicts),
                cmocka_unit_test(test_advertise_required),
                cmocka_unit_test(test_election_timeout),
                cmocka_unit_test(test_url_flags),
                cmocka_unit_test(test_choices),
                cmocka_unit_test(test_cors),
                cmocka_unit_test(test_initial_cluster),
                cmocka_unit_test(test_initial_cluster_three_members),
                cmocka_unit_test(test_bootstrap_checks),
                cmocka_unit_test(test_legacy_addr),
                cmocka_unit_test(test_legacy_rejected_and_ignored),
                cmocka_unit_test(test_derived_values),
                cmocka_unit_test(test_logging),
                cmocka_unit_test(test_bus_address),
                cmocka_unit_test(test_set_initial_cluster),
                cmocka_unit_test(test_unsupported),
        };

        return cmocka_run_group_tests_name("config", tests, group_setup, group_teardown);
}
