/* SPDX-License-Identifier: Apache-2.0 */
/* config.h - etcd2's flags with defaults, ETCD_* environment, validation; member and cluster IDs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls.h"

typedef enum ProxyMode {
        PROXY_OFF,
        PROXY_READONLY,
        PROXY_ON,
        _PROXY_MODE_MAX,
        _PROXY_MODE_INVALID = -22,
} ProxyMode;

typedef enum ClusterState {
        CLUSTER_STATE_NEW,
        CLUSTER_STATE_EXISTING,
        _CLUSTER_STATE_MAX,
        _CLUSTER_STATE_INVALID = -22,
} ClusterState;

/* A validated URL as etcd2 accepts it: http or https, host:port, no path. */
typedef struct EtcdUrl {
        char *str;       /* canonical form, e.g. "http://127.0.0.1:2379" */
        char *scheme;    /* "http" or "https" */
        char *host;      /* host name or IP literal (IPv6 without brackets) */
        uint16_t port;
} EtcdUrl;

typedef struct EtcdUrlList {
        EtcdUrl *urls;
        size_t n;
} EtcdUrlList;

/* One entry of --initial-cluster: a name and its peer URLs (sorted by string). */
typedef struct ClusterMember {
        char *name;
        EtcdUrlList peer_urls;
        uint64_t id;     /* computed from the peer URLs and the token */
} ClusterMember;

typedef struct Config {
        /* member */
        char *name;
        char *data_dir;
        char *wal_dir;
        uint64_t snapshot_count;
        unsigned heartbeat_interval_ms;
        unsigned election_timeout_ms;
        EtcdUrlList listen_peer_urls;
        EtcdUrlList listen_client_urls;
        unsigned max_snapshots;
        unsigned max_wals;
        char **cors;             /* strv of origins, "*" allowed; NULL = none */

        /* clustering */
        EtcdUrlList initial_advertise_peer_urls;
        char *initial_cluster;   /* the raw string as given (or the default) */
        ClusterMember *initial_members; /* sorted by id; from --initial-cluster (or, with --discovery, self) */
        size_t n_initial_members;
        ClusterState initial_cluster_state;
        char *initial_cluster_token;
        EtcdUrlList advertise_client_urls;
        char *discovery;
        char *discovery_srv;
        char *discovery_fallback; /* "proxy" or "exit" */
        char *discovery_proxy;
        bool strict_reconfig_check;

        /* proxy */
        ProxyMode proxy;
        unsigned proxy_failure_wait_ms;
        unsigned proxy_refresh_interval_ms;
        unsigned proxy_dial_timeout_ms;
        unsigned proxy_write_timeout_ms;
        unsigned proxy_read_timeout_ms;

        /* security */
        char *cert_file, *key_file, *ca_file, *trusted_ca_file;
        bool client_cert_auth;
        char *peer_cert_file, *peer_key_file, *peer_ca_file, *peer_trusted_ca_file;
        bool peer_client_cert_auth;

        /* logging */
        bool debug;
        char *log_package_levels;

        /* unsafe, experimental, profiling */
        bool force_new_cluster;
        bool experimental_v3demo;
        char *experimental_grpc_addr;
        unsigned experimental_auto_compaction_retention;
        bool enable_pprof;

        /* not an etcd2 flag: serve discovery tokens (GET /new?size=N) as discovery.etcd.io does */
        bool enable_discovery_service;

        /* not an etcd2 flag: for the D-Bus issue, a bus address override (--bus-address / ETCD_BUS_ADDRESS) */
        char *bus_address;

        /* not an etcd2 flag: an etcd v2 data dir to import into an empty --data-dir (import.c) */
        char *import_v2_data_dir;

        /* derived */
        uint64_t member_id;      /* this member's ID (from its advertised peer URLs and the token) */
        uint64_t cluster_id;     /* from all initial members' IDs */
} Config;

/* Parses argv and the environment (envp, NULL-terminated, e.g. `environ`) exactly as etcd2 does.
 * Returns 0 if the daemon should run with *ret filled in; returns 1 if the process should exit now
 * with *ret_exit_status (0 after -h/--version, 2 on a flag syntax error, 1 on invalid configuration;
 * the message has been printed/logged already); < 0 on OOM. */
int config_load(int argc, char *argv[], char *envp[], Config **ret, int *ret_exit_status);
Config *config_free(Config *c);

/* etcd2's member ID: the first 8 bytes (big endian) of SHA-1 over the sorted peer URL strings
 * concatenated, then the token, then (if unix_time != 0) the decimal Unix time. */
uint64_t etcd_member_id(char *const *peer_urls, size_t n, const char *token, uint64_t unix_time);
/* etcd2's cluster ID: SHA-1 over the sorted member IDs, 8 big-endian bytes each; first 8 bytes. */
uint64_t etcd_cluster_id(const uint64_t *member_ids, size_t n);

/* Parses one URL the way etcd2 validates listen/advertise URLs; < 0 (-EINVAL) with a message in
 * *ret_error (malloc'd) if invalid. */
int etcd_url_parse(const char *s, EtcdUrl *ret, char **ret_error);
/* Go's %q of s (quotes, backslashes and control characters escaped), malloc'ed; NULL on OOM. */
char *go_quote(const char *s);
void etcd_url_done(EtcdUrl *u);
void etcd_url_list_done(EtcdUrlList *l);

/* etcdserver's bootstrap sanity checks (VerifyBootstrap / VerifyJoinExisting): the local name is in the
 * initial cluster, its URLs equal --initial-advertise-peer-urls (state new), no peer URL twice, no zero or
 * duplicate member ID. Logs etcd2's message and returns -EINVAL on failure. config_load() already runs it
 * when <data-dir>/member does not exist; exported for callers that know better whether a member exists. */
int config_verify_bootstrap(const Config *c);
/* After --discovery or --discovery-srv: the initial cluster is now `cluster` ("name=URL,..."), member IDs
 * hashed with `token`. Recomputes member_id/cluster_id and runs config_verify_bootstrap()'s checks. */
int config_set_initial_cluster(Config *c, const char *cluster, const char *token);
/* types.URLsMap.String(): "name=url" pairs, sorted, comma-joined (malloc'd; NULL on OOM). This is also the
 * value a member registers with a discovery service. */
char *config_members_string(const ClusterMember *m, size_t n);
/* Parses a "name=url,name=url2,..." cluster string as --initial-cluster is parsed (URLs validated, the
 * same name may repeat); logs what is wrong with it. IDs are hashed with an empty token. */
int config_cluster_parse(const char *cluster, ClusterMember **ret, size_t *ret_n);
void config_cluster_members_free(ClusterMember *m, size_t n);
/* Logs "<feature> is not supported yet by this etcd2" and returns -EOPNOTSUPP for configurations this
 * etcd2 cannot run yet (proxy, discovery, TLS, multi-member, ...); config_load() calls it last. */
int config_check_supported(const Config *c);

/* etcd2's peerTLSInfo for our outgoing member-to-member connections (the strings are the config's). As Go's
 * TLSInfo.ClientConfig(), the deprecated --peer-ca-file is trusted too (when --peer-trusted-ca-file is
 * not given). */
TlsInfo config_peer_tls_info(const Config *c);
/* Whether any --peer-* file is given (then outgoing peer connections use them). */
bool config_peer_tls_given(const Config *c);
