/* SPDX-License-Identifier: Apache-2.0 */
/* srv.c - --discovery-srv: the initial cluster from DNS SRV records (etcd2's discovery/srv.go). */

/*
 * etcd 2.3's SRVGetCluster(), once, blocking, at start-up:
 *   1. resolve each of our --initial-advertise-peer-urls host:port to "IP:port" (Go's ResolveTCPAddr: the
 *      first IPv4 address if there is one, else the first address); a failure here is fatal;
 *   2. look up _etcd-server-ssl._tcp.<domain> (entries get https://) and _etcd-server._tcp.<domain>
 *      (http://); discovery fails only if both lookups fail. A lookup that answers without SRV records is
 *      a failure too ("no such host"), as with Go's resolver;
 *   3. each SRV answer becomes "<name>=<scheme>://<target>:<port>": target without its trailing dot, the URL
 *      keeps the host name. The name is --name if target:port resolves to one of our own addresses, else a
 *      placeholder "0", "1", ... counted over both lookups. A target that does not resolve is skipped
 *      with a warning.
 * Member IDs hash only the peer URLs and the token, so every member computes the same IDs although each
 * one names the others differently. Priority and weight are ignored (etcd2: "they don't make as much sense
 * for a bootstrap"); Go sorted the answers by priority and shuffled equal priorities by weight, which only
 * changes the order of the placeholders, so we keep priority order and the server's order within one.
 */

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <sys/socket.h>

/* <arpa/nameser.h> pulls in <sys/param.h>, whose MIN/MAX macro.h defines its own way. */
#undef MIN
#undef MAX

#include "log.h"
#include "srv.h"

#define SRV_ANSWER_MAX 65536

typedef struct SrvResult {
        char **parts;           /* "name=url" */
        size_t n_parts;
        unsigned next_placeholder;
} SrvResult;

static void srv_result_done(SrvResult *r) {
        for (size_t i = 0; i < r->n_parts; i++)
                free(r->parts[i]);
        free(r->parts);
}

/* net.JoinHostPort(): brackets around hosts that contain a colon. */
static char *join_host_port(const char *host, uint16_t port) {
        char *s = NULL;

        if (asprintf(&s, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port) < 0)
                return NULL;
        return s;
}

/* net.ResolveTCPAddr("tcp", host:port).String(): "IP:port", IPv4 preferred. On failure returns the
 * getaddrinfo() error (EAI_*, non-zero); *ret is written only on success. */
static int resolve_tcp_addr(const char *host, uint16_t port, char **ret) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
        struct addrinfo *ai = NULL;
        const struct addrinfo *pick = NULL;
        char ip[INET6_ADDRSTRLEN];
        char *s;
        int r;

        assert(host);
        assert(ret);

        if (isempty(host))
                return EAI_NONAME;
        r = getaddrinfo(host, NULL, &hints, &ai);
        if (r != 0)
                return r;
        for (const struct addrinfo *i = ai; i && !pick; i = i->ai_next)
                if (i->ai_family == AF_INET)
                        pick = i;
        for (const struct addrinfo *i = ai; i && !pick; i = i->ai_next)
                if (i->ai_family == AF_INET6)
                        pick = i;
        if (!pick) {
                freeaddrinfo(ai);
                return EAI_NONAME;
        }
        if (pick->ai_family == AF_INET)
                (void) inet_ntop(AF_INET, &((const struct sockaddr_in *) pick->ai_addr)->sin_addr, ip,
                                 sizeof(ip));
        else
                (void) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *) pick->ai_addr)->sin6_addr, ip,
                                 sizeof(ip));
        freeaddrinfo(ai);

        s = join_host_port(ip, port);
        if (!s)
                return EAI_MEMORY;
        *ret = s;
        return 0;
}

static int cmp_priority(const void *a, const void *b) {
        const SrvRecord *x = a, *y = b;

        return (x->priority > y->priority) - (x->priority < y->priority);
}

/* Go's errors read "lookup <name>: <what>"; h_errno is mapped to Go's words and to an errno. */
static int lookup_error(int h, const char *qname, char **ret_error) {
        const char *what;
        int r;

        switch (h) {
        case HOST_NOT_FOUND:
        case NO_DATA:
                what = "no such host";
                r = -ENXIO;
                break;
        case TRY_AGAIN:
                what = "server misbehaving or timed out";
                r = -EAGAIN;
                break;
        default:
                what = "server misbehaving";
                r = -EIO;
        }
        if (asprintf(ret_error, "lookup %s: %s", qname, what) < 0)
                *ret_error = NULL;
        return r;
}

/* res_nquery() + ns_parse for the SRV records of qname, sorted by priority. On failure *ret_error is a
 * message in Go's words (or NULL if out of memory). */
static int lookup_srv(const char *qname, SrvRecord **ret, size_t *ret_n, char **ret_error) {
        _cleanup_(freep) unsigned char *answer = NULL;
        struct __res_state state = {};
        size_t size = 4096;
        int len, h;

        if (res_ninit(&state) < 0)
                return lookup_error(NO_RECOVERY, qname, ret_error);

        for (;;) {
                unsigned char *a = realloc(answer, size);

                if (!a) {
                        res_nclose(&state);
                        *ret_error = NULL;
                        return -ENOMEM;
                }
                answer = a;
                len = res_nquery(&state, qname, ns_c_in, ns_t_srv, answer, (int) size);
                /* res_query() returns the full length of a reply that did not fit. */
                if (len < 0 || (size_t) len <= size || size >= SRV_ANSWER_MAX)
                        break;
                size = SRV_ANSWER_MAX;
        }
        h = state.res_h_errno;
        res_nclose(&state);
        if (len < 0)
                return lookup_error(h, qname, ret_error);
        len = MIN(len, (int) size);

        return srv_parse_answer(answer, (size_t) len, qname, ret, ret_n, ret_error);
}

int srv_parse_answer(const unsigned char *answer, size_t len, const char *qname, SrvRecord **ret, size_t *ret_n,
                     char **ret_error) {
        _cleanup_(freep) SrvRecord *records = NULL;
        size_t n = 0;
        ns_msg msg;
        int r;

        if (len > SRV_ANSWER_MAX)
                return lookup_error(NO_RECOVERY, qname, ret_error);
        if (ns_initparse(answer, (int) len, &msg) < 0)
                return lookup_error(NO_RECOVERY, qname, ret_error);

        for (int i = 0; i < ns_msg_count(msg, ns_s_an); i++) {
                const unsigned char *rd;
                ns_rr rr;

                if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
                        return lookup_error(NO_RECOVERY, qname, ret_error);
                /* CNAMEs leading to the records are in the answer section too. */
                if (ns_rr_class(rr) != ns_c_in || ns_rr_type(rr) != ns_t_srv)
                        continue;
                if (ns_rr_rdlen(rr) < 7)
                        return lookup_error(NO_RECOVERY, qname, ret_error);

                SrvRecord *m = realloc(records, (n + 1) * sizeof(SrvRecord));
                if (!m) {
                        *ret_error = NULL;
                        return -ENOMEM;
                }
                records = m;
                rd = ns_rr_rdata(rr);
                records[n].priority = ns_get16(rd);
                records[n].port = ns_get16(rd + 4);
                /* The uncompressed text form has no trailing dot (the root alone is "."). */
                r = ns_name_uncompress(ns_msg_base(msg), ns_msg_end(msg), rd + 6, records[n].target,
                                       sizeof(records[n].target));
                if (r < 0)
                        return lookup_error(NO_RECOVERY, qname, ret_error);
                n++;
        }
        if (n == 0)
                return lookup_error(NO_DATA, qname, ret_error);

        qsort(records, n, sizeof(SrvRecord), cmp_priority);
        *ret = TAKE_PTR(records);
        *ret_n = n;
        return 0;
}

/* updateNodeMap(): one service's records into `res`. */
static int srv_update_node_map(const char *service, const char *scheme, const char *domain, const char *name,
                               char * const *own_addrs, size_t n_own, SrvResult *res, char **ret_error) {
        _cleanup_(freep) SrvRecord *records = NULL;
        _cleanup_(freep) char *qname = NULL;
        size_t n = 0;
        int r;

        if (asprintf(&qname, "_%s._tcp.%s", service, domain) < 0) {
                qname = NULL;
                return log_oom();
        }
        r = lookup_srv(qname, &records, &n, ret_error);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                _cleanup_(freep) char *target = NULL, *host = NULL, *addr = NULL, *placeholder = NULL;
                const char *n_use = NULL;
                size_t l;
                char *part;

                /* strings.TrimSuffix(srv.Target, ".") */
                target = strdup(records[i].target);
                if (!target)
                        return log_oom();
                l = strlen(target);
                if (l > 0 && target[l - 1] == '.')
                        target[l - 1] = '\0';
                host = join_host_port(target, records[i].port);
                if (!host)
                        return log_oom();

                r = resolve_tcp_addr(target, records[i].port, &addr);
                if (r != 0) {
                        log_warning("couldn't resolve host %s during SRV discovery", host);
                        continue;
                }

                for (size_t j = 0; j < n_own; j++)
                        if (streq(own_addrs[j], addr))
                                n_use = name;
                if (!n_use) {
                        if (asprintf(&placeholder, "%u", res->next_placeholder++) < 0) {
                                placeholder = NULL;
                                return log_oom();
                        }
                        n_use = placeholder;
                }

                if (asprintf(&part, "%s=%s%s", n_use, scheme, host) < 0)
                        return log_oom();
                char **p = realloc(res->parts, (res->n_parts + 1) * sizeof(char *));
                if (!p) {
                        free(part);
                        return log_oom();
                }
                res->parts = p;
                res->parts[res->n_parts++] = part;
                log_info("got bootstrap from DNS for %s at %s%s (%s)", service, scheme, host, addr);
        }
        return 0;
}

int srv_get_cluster(const char *name, const char *domain, const EtcdUrlList *advertise_peer_urls,
                    char **ret_cluster) {
        _cleanup_(strv_freep) char **own = NULL;
        _cleanup_(freep) char *ssl_error = NULL, *plain_error = NULL;
        _cleanup_(srv_result_done) SrvResult res = {};
        size_t len = 1;
        char *s, *o;
        int r_ssl, r_plain, r;

        assert(name);
        assert(domain);
        assert(advertise_peer_urls);
        assert(ret_cluster);

        /* First our own advertised peer addresses, as IP:port. */
        own = calloc(advertise_peer_urls->n + 1, sizeof(char *));
        if (!own)
                return log_oom();
        for (size_t i = 0; i < advertise_peer_urls->n; i++) {
                const EtcdUrl *u = &advertise_peer_urls->urls[i];

                r = resolve_tcp_addr(u->host, u->port, &own[i]);
                if (r != 0) {
                        _cleanup_(freep) char *hp = join_host_port(u->host, u->port);

                        log_error("couldn't resolve host %s during SRV discovery: %s", strempty(hp),
                                  gai_strerror(r));
                        return r == EAI_MEMORY ? -ENOMEM : -EADDRNOTAVAIL;
                }
        }

        r_ssl = srv_update_node_map("etcd-server-ssl", "https://", domain, name, own, advertise_peer_urls->n,
                                    &res, &ssl_error);
        if (r_ssl == -ENOMEM)
                return log_oom();
        r_plain = srv_update_node_map("etcd-server", "http://", domain, name, own, advertise_peer_urls->n,
                                      &res, &plain_error);
        if (r_plain == -ENOMEM)
                return log_oom();

        /* etcd2 warns about one failed lookup (most clusters have only one of the two record sets) and
         * fails if both failed. */
        if (r_ssl < 0)
                log_full(r_plain < 0 ? LOG_ERR : LOG_WARNING,
                         "error querying DNS SRV records for _etcd-server-ssl %s", strempty(ssl_error));
        if (r_plain < 0)
                log_full(r_ssl < 0 ? LOG_ERR : LOG_WARNING,
                         "discovery: error querying DNS SRV records for _etcd-server %s",
                         strempty(plain_error));
        if (r_ssl < 0 && r_plain < 0)
                return log_error_errno(r_plain,
                                       "SRV discovery failed: too many errors querying DNS SRV records");

        for (size_t i = 0; i < res.n_parts; i++)
                len += strlen(res.parts[i]) + 1;
        s = o = malloc(len);
        if (!s)
                return log_oom();
        *o = '\0';
        for (size_t i = 0; i < res.n_parts; i++)
                o = stpcpy(stpcpy(o, i == 0 ? "" : ","), res.parts[i]);

        log_info("SRV discovery for %s: initial cluster %s", domain, s);
        *ret_cluster = s;
        return 0;
}
