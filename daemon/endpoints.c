/* SPDX-License-Identifier: Apache-2.0 */
/* endpoints.c - which handler serves which listener, with which limits (see endpoints.h). */

#include <assert.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "client-api.h"
#include "endpoints.h"
#include "http-server.h"
#include "log.h"
#include "macro.h"

/* etcd2's client listeners: Go's http.Server with ReadTimeout 5 minutes and the default 1 MiB of
 * headers (plus Go's 4 KiB slack); bodies are read by the handlers up to 10 MiB (HTTP_BODY_MAX). */
#define CLIENT_TIMEOUT_USEC (300 * USEC_PER_SEC)
#define CLIENT_HEAD_MAX ((size_t) 1024 * 1024 + 4096)
/* Request targets beyond this get a 414 (Go has no such limit below the 1 MiB of the head; etcd 3.4's cmux
 * closes connections whose request line exceeds 4 KiB): keys of up to 64 KiB travel in the target. */
#define CLIENT_URI_MAX ((size_t) 64 * 1024)
/* Connections beyond the fd limit minus this reserve (RocksDB, peers, libcurl) get a 503. */
#define CLIENT_FD_RESERVE 256u
/* Peer listeners take members only: a few streams and member-list fetches each. A head must be
 * complete within 5 s (etcd2's peer transport reads with 5 s timeouts), however slowly it trickles in. */
#define PEER_HEAD_MAX ((size_t) 64 * 1024)
#define PEER_CONNECTIONS_MAX 256u
#define PEER_PER_IP_MAX 32u
#define PEER_HEAD_TIMEOUT_USEC (5 * USEC_PER_SEC)
#define PEER_TIMEOUT_USEC (30 * USEC_PER_SEC)

struct Endpoints {
        const Config *config;
        HttpServer *http;
        HttpService *client, *peer;
        ClientApi *client_api, *peer_api;
};

/* Test knobs: ETCD2_HTTP_*_MS and ETCD2_HTTP_MAX_CONNECTIONS override the client listeners' limits. */
static void env_usec(const char *name, uint64_t *v) {
        const char *e = getenv(name);
        char *end;
        unsigned long long ms;

        if (isempty(e))
                return;
        ms = strtoull(e, &end, 10);
        if (*end || ms == 0) {
                log_warning("Ignoring %s=%s: not a positive number of milliseconds.", name, e);
                return;
        }
        *v = (uint64_t) ms * USEC_PER_MSEC;
}

static unsigned client_connections_max(void) {
        const char *e = getenv("ETCD2_HTTP_MAX_CONNECTIONS");
        struct rlimit rl;

        if (!isempty(e)) {
                char *end;
                unsigned long n = strtoul(e, &end, 10);

                if (!*end && n > 0 && n < UINT32_MAX)
                        return (unsigned) n;
                log_warning("Ignoring ETCD2_HTTP_MAX_CONNECTIONS=%s: not a positive number.", e);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 10000000)
                return 1000000;
        if (rl.rlim_cur <= 2 * CLIENT_FD_RESERVE)
                return (unsigned) rl.rlim_cur / 2;
        return (unsigned) rl.rlim_cur - CLIENT_FD_RESERVE;
}

static int listen_url(HttpService *s, const char *what, const EtcdUrl *u, bool tls) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
        struct addrinfo *res = NULL;
        char port[8];
        unsigned n_ok = 0;
        int r, last = 0;

        /* setup_client_tls()/setup_peer_tls() refused an https URL without a certificate */
        assert(streq(u->scheme, "http") || tls);

        snprintf(port, sizeof port, "%u", (unsigned) u->port);
        r = getaddrinfo(u->host, port, &hints, &res);
        if (r != 0)
                return log_error_errno(-EADDRNOTAVAIL, "Failed to resolve '%s': %s", u->host, gai_strerror(r));

        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                _cleanup_(closep) int fd = -1;
                int one = 1;

                fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0) {
                        last = -errno;
                        continue;
                }
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
                if (ai->ai_family == AF_INET6)
                        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
                        last = -errno;
                        /* "localhost" may resolve to the same address twice. */
                        if (errno == EADDRINUSE && n_ok > 0)
                                continue;
                        log_warning_errno(last, "Failed to listen on an address of '%s': %m", u->str);
                        continue;
                }

                r = tls ? http_service_add_tls_listener(s, fd) : http_service_add_listener(s, fd);
                if (r < 0) {
                        freeaddrinfo(res);
                        return r;
                }
                TAKE_FD(fd);
                n_ok++;
        }
        freeaddrinfo(res);

        if (n_ok == 0)
                return log_error_errno(last ?: -EADDRNOTAVAIL, "Failed to listen on '%s': %m", u->str);
        log_info("Listening for %s requests on %s", what, u->str);
        return 0;
}

/* etcd2's TLSInfo.Empty(): neither --cert-file nor --key-file */
static bool client_tls_given(const Config *c) {
        return !isempty(c->cert_file) || !isempty(c->key_file);
}

/* What etcd2 (etcdmain.startEtcd(), transport.NewListener(), TLSInfo.ServerConfig()) checks and says about
 * the client URLs and the TLS flags, then the service's credentials if an https URL needs them. Returns
 * whether the client listeners (socket-activated ones too) speak TLS. */
static int setup_client_tls(Endpoints *e) {
        const Config *c = e->config;
        const EtcdUrlList *l = &c->listen_client_urls;
        bool https = false;
        int r;

        for (size_t i = 0; i < l->n; i++) {
                const EtcdUrl *u = &l->urls[i];

                if (streq(u->scheme, "http") && client_tls_given(c))
                        log_warning("The scheme of client url %s is HTTP while client key/cert files are presented. "
                                    "Ignored client key/cert files.", u->str);
                if (!streq(u->scheme, "https"))
                        continue;
                if (!client_tls_given(c))
                        return log_error_errno(-EINVAL, "cannot listen on TLS for %s: KeyFile and CertFile are not presented",
                                               u->str);
                if (isempty(c->cert_file) || isempty(c->key_file))
                        return log_error_errno(-EINVAL, "KeyFile and CertFile must both be present[key: %s, cert: %s]",
                                               strempty(c->key_file), strempty(c->cert_file));
                https = true;
        }
        if (!https)
                return 0;
        if (!isempty(c->ca_file))
                log_warning("--ca-file is deprecated: '--ca-file ca.crt' is '--trusted-ca-file ca.crt --client-cert-auth'.");

        r = http_service_set_tls(e->client, &(HttpTlsConfig) {
                .cert_file = c->cert_file,
                .key_file = c->key_file,
                .trusted_ca_file = c->trusted_ca_file,
                .ca_file = c->ca_file,
                .client_cert_auth = c->client_cert_auth,
        });
        if (r < 0)
                return r;
        log_info("ClientTLS: cert = %s, key = %s, ca = %s, trusted-ca = %s, client-cert-auth = %s", c->cert_file,
                 c->key_file, strempty(c->ca_file), strempty(c->trusted_ca_file),
                 c->client_cert_auth ? "true" : "false");
        return 1;
}

/* etcd2's peerTLSInfo.Empty(): neither --peer-cert-file nor --peer-key-file */
static bool peer_tls_given(const Config *c) {
        return !isempty(c->peer_cert_file) || !isempty(c->peer_key_file);
}

/* The same for the peer URLs and the --peer-* flags (etcdmain.startEtcd(), rafthttp.NewListener()):
 * returns whether the peer listeners (socket-activated ones too) speak TLS. With --peer-client-cert-auth
 * (or the deprecated --peer-ca-file) every connection must present a certificate of the trusted CA
 * before anything (/members, /version, /raft/stream) is read. */
static int setup_peer_tls(Endpoints *e) {
        const Config *c = e->config;
        const EtcdUrlList *l = &c->listen_peer_urls;
        bool https = false;
        int r;

        if (!e->peer)
                return 0;
        for (size_t i = 0; i < l->n; i++) {
                const EtcdUrl *u = &l->urls[i];

                if (streq(u->scheme, "http") && peer_tls_given(c))
                        log_warning("The scheme of peer url %s is HTTP while peer key/cert files are presented. "
                                    "Ignored peer key/cert files.", u->str);
                if (!streq(u->scheme, "https"))
                        continue;
                if (!peer_tls_given(c))
                        return log_error_errno(-EINVAL, "cannot listen on TLS for %s: KeyFile and CertFile are not presented",
                                               u->str);
                if (isempty(c->peer_cert_file) || isempty(c->peer_key_file))
                        return log_error_errno(-EINVAL, "KeyFile and CertFile must both be present[key: %s, cert: %s]",
                                               strempty(c->peer_key_file), strempty(c->peer_cert_file));
                https = true;
        }
        if (!https)
                return 0;
        if (!isempty(c->peer_ca_file))
                log_warning("--peer-ca-file is deprecated: '--peer-ca-file ca.crt' is "
                            "'--peer-trusted-ca-file ca.crt --peer-client-cert-auth'.");

        r = http_service_set_tls(e->peer, &(HttpTlsConfig) {
                .cert_file = c->peer_cert_file,
                .key_file = c->peer_key_file,
                .trusted_ca_file = c->peer_trusted_ca_file,
                .ca_file = c->peer_ca_file,
                .client_cert_auth = c->peer_client_cert_auth,
        });
        if (r < 0)
                return r;
        log_info("PeerTLS: cert = %s, key = %s, ca = %s, trusted-ca = %s, client-cert-auth = %s", c->peer_cert_file,
                 c->peer_key_file, strempty(c->peer_ca_file), strempty(c->peer_trusted_ca_file),
                 c->peer_client_cert_auth ? "true" : "false");
        return 1;
}

static int setup_listeners(Endpoints *e) {
        _cleanup_(strv_freep) char **names = NULL;
        bool have_client = false, have_peer = false, client_tls, peer_tls;
        int n, r;

        r = setup_client_tls(e);
        if (r < 0)
                return r;
        client_tls = r > 0;
        r = setup_peer_tls(e);
        if (r < 0)
                return r;
        peer_tls = r > 0;

        n = sd_listen_fds_with_names(false, &names);
        if (n < 0)
                log_warning_errno(n, "Failed to get socket-activated fds, ignoring: %m");

        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                const char *name = names && names[i] ? names[i] : "unknown";
                HttpService *s;

                if (streq(name, "peer")) {
                        if (!e->peer) {
                                log_warning("Socket-activated fd %d is a peer socket; a proxy has no peer listeners, ignoring it.", fd);
                                continue;
                        }
                        s = e->peer;
                        have_peer = true;
                } else {
                        if (!streq(name, "client"))
                                log_warning("Socket-activated fd %d has name '%s', serving the client API on it.", fd, name);
                        s = e->client;
                        have_client = true;
                }
                /* Socket-activated sockets speak TLS when the client (peer) URLs are https ones. */
                r = (s == e->client ? client_tls : peer_tls) ? http_service_add_tls_listener(s, fd)
                                                             : http_service_add_listener(s, fd);
                if (r < 0)
                        return r;
        }

        if (!have_client)
                for (size_t i = 0; i < e->config->listen_client_urls.n; i++) {
                        r = listen_url(e->client, "client", &e->config->listen_client_urls.urls[i],
                                       streq(e->config->listen_client_urls.urls[i].scheme, "https"));
                        if (r < 0)
                                return r;
                }
        if (!have_peer && e->peer)
                for (size_t i = 0; i < e->config->listen_peer_urls.n; i++) {
                        r = listen_url(e->peer, "peer", &e->config->listen_peer_urls.urls[i],
                                       streq(e->config->listen_peer_urls.urls[i].scheme, "https"));
                        if (r < 0)
                                return r;
                }
        return 0;
}

int endpoints_new(sd_event *event, const Config *config, Server *server, Proxy *proxy, Endpoints **ret) {
        HttpLimits client = {
                .head_max = CLIENT_HEAD_MAX,
                .uri_max = CLIENT_URI_MAX,
                .body_max = HTTP_BODY_MAX,
                .idle_timeout_usec = CLIENT_TIMEOUT_USEC,
                .head_timeout_usec = CLIENT_TIMEOUT_USEC,
                .body_timeout_usec = CLIENT_TIMEOUT_USEC,
        };
        HttpLimits peer = {
                .head_max = PEER_HEAD_MAX,
                .body_max = HTTP_BODY_MAX,
                .idle_timeout_usec = PEER_TIMEOUT_USEC,
                .head_timeout_usec = PEER_HEAD_TIMEOUT_USEC,
                .body_timeout_usec = PEER_TIMEOUT_USEC,
                .max_connections = PEER_CONNECTIONS_MAX,
                .max_per_ip = PEER_PER_IP_MAX,
        };
        Endpoints *e;
        int r;

        assert(event);
        assert(config);
        assert(!!server != !!proxy);
        assert(ret);

        e = calloc(1, sizeof(Endpoints));
        if (!e)
                return log_oom();
        e->config = config;

        r = http_server_new(event, &e->http);
        if (r < 0)
                goto fail;

        client.max_connections = client_connections_max();
        env_usec("ETCD2_HTTP_IDLE_TIMEOUT_MS", &client.idle_timeout_usec);
        env_usec("ETCD2_HTTP_HEAD_TIMEOUT_MS", &client.head_timeout_usec);
        env_usec("ETCD2_HTTP_BODY_TIMEOUT_MS", &client.body_timeout_usec);

        if (proxy)
                r = http_server_add_service(e->http, "client", &proxy_http_handler, proxy, &client, &e->client);
        else {
                r = client_api_new(server, config, false, &e->client_api);
                if (r >= 0)
                        r = http_server_add_service(e->http, "client", &client_api_handler, e->client_api, &client,
                                                    &e->client);
                if (r >= 0)
                        r = client_api_new(server, config, true, &e->peer_api);
                if (r >= 0)
                        r = http_server_add_service(e->http, "peer", &client_api_handler, e->peer_api, &peer, &e->peer);
        }
        if (r < 0)
                goto fail;

        r = setup_listeners(e);
        if (r < 0)
                goto fail;

        *ret = e;
        return 0;

fail:
        endpoints_free(e);
        return r;
}

void endpoints_stop_listening(Endpoints *e) {
        if (e)
                http_server_stop_listening(e->http);
}

Endpoints *endpoints_free(Endpoints *e) {
        if (!e)
                return NULL;
        e->http = http_server_free(e->http);
        e->client_api = client_api_free(e->client_api);
        e->peer_api = client_api_free(e->peer_api);
        free(e);
        return NULL;
}
