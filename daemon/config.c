/* SPDX-License-Identifier: Apache-2.0 */
/* config.c - etcd2's flags with defaults, ETCD_* environment, validation; member and cluster IDs. */

/*
 * This reproduces etcd v2.3.8's etcdmain/config.go on top of Go's `flag` package, step by step:
 *
 *   1. argv is parsed with Go flag syntax (-f / --f, -f=v / -f v, booleans only -f or -f=<bool>, "--" ends
 *      flags, parsing stops at the first non-flag). Syntax errors print Go's message on stderr plus the short
 *      usage on stdout and exit 2; -h/--help prints usage and the long help and exits 0.
 *   2. A stray positional argument is a verification error (exit 1); then --version is honoured.
 *   3. Every flag not given on the command line is read from ETCD_<NAME>, through the same setter, so it
 *      counts as "set" afterwards. Values are validated at set time (URL lists, choices, numbers), as Go's
 *      flag.Value.Set does: on the command line that is a flag error (exit 2), from the environment a fatal
 *      error (exit 1).
 *   4. Cross-flag verification (bootstrap flag conflicts, legacy 0.4 flags, advertise URLs, election timeout)
 *      with "error verifying flags, ... See 'etcd --help'." and exit 1.
 *   5. What etcdmain/etcd.go does before starting: logging setup, the --initial-cluster default rewritten
 *      for --name, the data dir default, then the initial cluster map and the member/cluster IDs
 *      (etcdserver/member.go, cluster.go), and, for a data dir that holds no member yet, etcdserver's
 *      bootstrap sanity checks.
 *   6. Features that this etcd2 does not implement yet are refused in one place, config_check_supported().
 *
 * No global state: everything lives in a Parser on the stack of config_load(). Nothing here exits.
 */

#include <arpa/inet.h>
#include <assert.h>
#include <netdb.h>
#include <ctype.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "config-build.h"
#include "config-help.h"
#include "config.h"
#include "log.h"

#ifndef _cleanup_free_
#define _cleanup_free_ _cleanup_(freep)
#endif
#ifndef _cleanup_strv_free_
#define _cleanup_strv_free_ _cleanup_(strv_freep)
#endif

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

#define DEFAULT_NAME "default"
#define DEFAULT_PEER_URLS "http://localhost:2380,http://localhost:7001"
#define DEFAULT_CLIENT_URLS "http://localhost:2379,http://localhost:4001"
#define DEFAULT_INITIAL_CLUSTER DEFAULT_NAME "=http://localhost:2380," DEFAULT_NAME "=http://localhost:7001"
#define DEFAULT_SNAPSHOT_COUNT 10000
#define MAX_ELECTION_MS 50000

/* Exit statuses, as etcd2's: Go's flag errors exit 2, everything else 1. */
#define EXIT_FLAG_ERROR 2
#define EXIT_INVALID 1

typedef enum FlagType {
        FLAG_STRING,
        FLAG_BOOL,
        FLAG_UINT,        /* Go uint: base-0 ParseUint; stored as `unsigned` */
        FLAG_UINT64,
        FLAG_INT,         /* Go int: base-0 ParseInt; negative values clamp to 0 in our unsigned field */
        FLAG_URLS,        /* flags.URLsValue: comma list, each validated, sorted */
        FLAG_CHOICE_ENUM, /* flags.StringsFlag stored as an enum index */
        FLAG_CHOICE_STR,  /* flags.StringsFlag stored as the string */
        FLAG_CORS,        /* cors.CORSInfo */
        FLAG_IPPORT,      /* flags.IPAddressPort (legacy -addr & co.); offset = legacy slot */
        FLAG_DEPRECATED,  /* flags.DeprecatedFlag: any value is an error */
        FLAG_IGNORED,     /* flags.IgnoredFlag: a boolean that only warns */
        FLAG_VERSION,     /* --version */
} FlagType;

typedef enum LegacySlot {
        LEGACY_ADDR,
        LEGACY_BIND_ADDR,
        LEGACY_PEER_ADDR,
        LEGACY_PEER_BIND_ADDR,
        _LEGACY_MAX,
} LegacySlot;

typedef struct FlagDef {
        const char *name;
        FlagType type;
        size_t offset;
        const char *const *choices;
} FlagDef;

static const char *const proxy_choices[] = { "off", "readonly", "on", NULL };
static const char *const cluster_state_choices[] = { "new", "existing", NULL };
static const char *const fallback_choices[] = { "exit", "proxy", NULL };

#define F(n, t, field) { n, t, offsetof(Config, field), NULL }
#define C(n, t, field, ch) { n, t, offsetof(Config, field), ch }
#define L(n, slot) { n, FLAG_IPPORT, slot, NULL }
#define X(n, t) { n, t, 0, NULL }

/* Sorted by name, which is also the order Go's VisitAll() walks them for the environment. */
static const FlagDef flag_table[] = {
        L("addr", LEGACY_ADDR),
        F("advertise-client-urls", FLAG_URLS, advertise_client_urls),
        L("bind-addr", LEGACY_BIND_ADDR),
        F("bus-address", FLAG_STRING, bus_address), /* ours, for D-Bus; hidden from --help */
        F("ca-file", FLAG_STRING, ca_file),
        F("cert-file", FLAG_STRING, cert_file),
        F("client-cert-auth", FLAG_BOOL, client_cert_auth),
        X("cluster-active-size", FLAG_IGNORED),
        X("cluster-remove-delay", FLAG_IGNORED),
        X("cluster-sync-interval", FLAG_IGNORED),
        X("config", FLAG_IGNORED),
        F("cors", FLAG_CORS, cors),
        F("data-dir", FLAG_STRING, data_dir),
        F("debug", FLAG_BOOL, debug),
        F("discovery", FLAG_STRING, discovery),
        C("discovery-fallback", FLAG_CHOICE_STR, discovery_fallback, fallback_choices),
        F("discovery-proxy", FLAG_STRING, discovery_proxy),
        F("discovery-srv", FLAG_STRING, discovery_srv),
        F("election-timeout", FLAG_UINT, election_timeout_ms),
        F("enable-discovery-service", FLAG_BOOL, enable_discovery_service), /* ours: GET /new?size=N */
        F("enable-pprof", FLAG_BOOL, enable_pprof),
        F("experimental-auto-compaction-retention", FLAG_INT, experimental_auto_compaction_retention),
        F("experimental-gRPC-addr", FLAG_STRING, experimental_grpc_addr),
        F("experimental-v3demo", FLAG_BOOL, experimental_v3demo),
        X("force", FLAG_IGNORED),
        F("force-new-cluster", FLAG_BOOL, force_new_cluster),
        F("heartbeat-interval", FLAG_UINT, heartbeat_interval_ms),
        F("import-v2-data-dir", FLAG_STRING, import_v2_data_dir), /* ours: import.c */
        F("initial-advertise-peer-urls", FLAG_URLS, initial_advertise_peer_urls),
        F("initial-cluster", FLAG_STRING, initial_cluster),
        C("initial-cluster-state", FLAG_CHOICE_ENUM, initial_cluster_state, cluster_state_choices),
        F("initial-cluster-token", FLAG_STRING, initial_cluster_token),
        F("key-file", FLAG_STRING, key_file),
        F("listen-client-urls", FLAG_URLS, listen_client_urls),
        F("listen-peer-urls", FLAG_URLS, listen_peer_urls),
        F("log-package-levels", FLAG_STRING, log_package_levels),
        X("max-result-buffer", FLAG_IGNORED),
        X("max-retry-attempts", FLAG_IGNORED),
        F("max-snapshots", FLAG_UINT, max_snapshots),
        F("max-wals", FLAG_UINT, max_wals),
        F("name", FLAG_STRING, name),
        L("peer-addr", LEGACY_PEER_ADDR),
        L("peer-bind-addr", LEGACY_PEER_BIND_ADDR),
        F("peer-ca-file", FLAG_STRING, peer_ca_file),
        F("peer-cert-file", FLAG_STRING, peer_cert_file),
        F("peer-client-cert-auth", FLAG_BOOL, peer_client_cert_auth),
        X("peer-election-timeout", FLAG_IGNORED),
        X("peer-heartbeat-interval", FLAG_IGNORED),
        F("peer-key-file", FLAG_STRING, peer_key_file),
        F("peer-trusted-ca-file", FLAG_STRING, peer_trusted_ca_file),
        X("peers", FLAG_DEPRECATED),
        X("peers-file", FLAG_DEPRECATED),
        C("proxy", FLAG_CHOICE_ENUM, proxy, proxy_choices),
        F("proxy-dial-timeout", FLAG_UINT, proxy_dial_timeout_ms),
        F("proxy-failure-wait", FLAG_UINT, proxy_failure_wait_ms),
        F("proxy-read-timeout", FLAG_UINT, proxy_read_timeout_ms),
        F("proxy-refresh-interval", FLAG_UINT, proxy_refresh_interval_ms),
        F("proxy-write-timeout", FLAG_UINT, proxy_write_timeout_ms),
        X("retry-interval", FLAG_IGNORED),
        X("snapshot", FLAG_IGNORED),
        F("snapshot-count", FLAG_UINT64, snapshot_count),
        F("strict-reconfig-check", FLAG_BOOL, strict_reconfig_check),
        F("trusted-ca-file", FLAG_STRING, trusted_ca_file),
        X("v", FLAG_IGNORED),
        X("version", FLAG_VERSION),
        X("vv", FLAG_IGNORED),
        F("wal-dir", FLAG_STRING, wal_dir),
};

#define N_FLAGS ELEMENTSOF(flag_table)

/* flags.IPAddressPort: a literal IP and an integer port. */
typedef struct LegacyAddr {
        char *ip;
        long long port;
} LegacyAddr;

typedef struct Parser {
        Config *config;
        bool set[N_FLAGS];       /* Go's FlagSet.actual: set on the command line or from the environment */
        bool cli_set[N_FLAGS];   /* set on the command line only */
        LegacyAddr legacy[_LEGACY_MAX];
        bool print_version;
} Parser;

static void parser_done(Parser *p) {
        for (size_t i = 0; i < _LEGACY_MAX; i++)
                free(p->legacy[i].ip);
        config_free(p->config);
}

/* ---- small string helpers ---- */

static char *errorf(const char *format, ...) _printf_(1, 2);
static char *errorf(const char *format, ...) {
        va_list ap;
        char *s;

        va_start(ap, format);
        if (vasprintf(&s, format, ap) < 0)
                s = NULL;
        va_end(ap);
        return s;
}

/* An error message that could not be allocated still has to fail: callers treat NULL as OOM. */
#define RETURN_ERROR(ret_error, ...)                                    \
        ({                                                              \
                *(ret_error) = errorf(__VA_ARGS__);                     \
                *(ret_error) ? -EINVAL : -ENOMEM;                       \
        })

static bool is_go_space(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* strings.TrimSpace for ASCII white space. */
static char *strndup_trimmed(const char *s, size_t n) {
        while (n > 0 && is_go_space(*s)) {
                s++;
                n--;
        }
        while (n > 0 && is_go_space(s[n - 1]))
                n--;
        return strndup(s, n);
}

/* Go's %q, enough for messages: quotes, backslashes and control characters escaped. */
char *go_quote(const char *s) {
        size_t n = strlen(s);
        char *q = malloc(n * 4 + 3), *o = q;

        if (!q)
                return NULL;
        *o++ = '"';
        for (const unsigned char *c = (const unsigned char *) s; *c; c++) {
                if (*c == '"' || *c == '\\') {
                        *o++ = '\\';
                        *o++ = (char) *c;
                } else if (*c == '\n') {
                        *o++ = '\\';
                        *o++ = 'n';
                } else if (*c == '\t') {
                        *o++ = '\\';
                        *o++ = 't';
                } else if (*c == '\r') {
                        *o++ = '\\';
                        *o++ = 'r';
                } else if (*c < 0x20 || *c == 0x7f)
                        o += sprintf(o, "\\x%02x", *c);
                else
                        *o++ = (char) *c;
        }
        *o++ = '"';
        *o = '\0';
        return q;
}

static int strv_push(char ***l, char *s) {
        size_t n = strv_length(*l);
        char **m = realloc(*l, (n + 2) * sizeof(char *));

        if (!m)
                return -ENOMEM;
        m[n] = s;
        m[n + 1] = NULL;
        *l = m;
        return 0;
}

static int cmp_strp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

/* ---- Go number and boolean syntax (strconv) ---- */

static int go_parse_bool(const char *s, bool *ret, char **ret_error) {
        static const char *const yes[] = { "1", "t", "T", "TRUE", "true", "True" };
        static const char *const no[] = { "0", "f", "F", "FALSE", "false", "False" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (streq(s, yes[i])) {
                        *ret = true;
                        return 0;
                }
                if (streq(s, no[i])) {
                        *ret = false;
                        return 0;
                }
        }
        return RETURN_ERROR(ret_error, "strconv.ParseBool: parsing \"%s\": invalid syntax", s);
}

/* strconv.ParseUint(s, 0, bits) as in Go 1.7: 0x/0X hex, leading 0 octal, else decimal; no sign. */
static int go_parse_uint(const char *fn, const char *s, const char *orig, unsigned bits, uint64_t *ret,
                         char **ret_error) {
        uint64_t v = 0, max = bits >= 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
        unsigned base = 10;
        const char *c = s;

        if (*c == '\0')
                goto syntax;
        if (c[0] == '0') {
                if (c[1] == 'x' || c[1] == 'X') {
                        base = 16;
                        c += 2;
                        if (*c == '\0')
                                goto syntax;
                } else
                        base = 8;
        }
        for (; *c; c++) {
                unsigned d;

                if (*c >= '0' && *c <= '9')
                        d = (unsigned) (*c - '0');
                else if (*c >= 'a' && *c <= 'f')
                        d = (unsigned) (*c - 'a' + 10);
                else if (*c >= 'A' && *c <= 'F')
                        d = (unsigned) (*c - 'A' + 10);
                else
                        goto syntax;
                if (d >= base)
                        goto syntax;
                if (v > (max - d) / base)
                        return RETURN_ERROR(ret_error, "%s: parsing \"%s\": value out of range", fn, orig);
                v = v * base + d;
        }
        *ret = v;
        return 0;

syntax:
        return RETURN_ERROR(ret_error, "%s: parsing \"%s\": invalid syntax", fn, orig);
}

static int go_parse_int(const char *s, int64_t *ret, char **ret_error) {
        bool neg = s[0] == '-';
        const char *digits = s + (s[0] == '-' || s[0] == '+');
        uint64_t u;
        int r;

        r = go_parse_uint("strconv.ParseInt", digits, s, 64, &u, ret_error);
        if (r < 0)
                return r;
        if (u > (neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX))
                return RETURN_ERROR(ret_error, "strconv.ParseInt: parsing \"%s\": value out of range", s);
        *ret = neg ? (int64_t) (0 - u) : (int64_t) u;
        return 0;
}

/* ---- net.SplitHostPort, net.JoinHostPort ---- */

static int go_split_host_port(const char *hostport, char **ret_host, char **ret_port, char **ret_error) {
        const char *last = strrchr(hostport, ':'), *host_start, *host_end;
        _cleanup_free_ char *h = NULL, *p = NULL;
        size_t j = 0, k = 0;
        const char *err;

        if (!last) {
                err = "missing port in address";
                goto fail;
        }
        if (hostport[0] == '[') {
                const char *end = strchr(hostport, ']');

                if (!end) {
                        err = "missing ']' in address";
                        goto fail;
                }
                if (end[1] == '\0') {
                        err = "missing port in address";
                        goto fail;
                }
                if (end + 1 != last) {
                        err = end[1] == ':' ? "too many colons in address" : "missing port in address";
                        goto fail;
                }
                host_start = hostport + 1;
                host_end = end;
                j = 1;
                k = (size_t) (end - hostport) + 1;
        } else {
                host_start = hostport;
                host_end = last;
                if (memchr(host_start, ':', (size_t) (host_end - host_start))) {
                        err = "too many colons in address";
                        goto fail;
                }
        }
        if (strchr(hostport + j, '[')) {
                err = "unexpected '[' in address";
                goto fail;
        }
        if (strchr(hostport + k, ']')) {
                err = "unexpected ']' in address";
                goto fail;
        }

        h = strndup(host_start, (size_t) (host_end - host_start));
        p = strdup(last + 1);
        if (!h || !p)
                return -ENOMEM;
        *ret_host = TAKE_PTR(h);
        *ret_port = TAKE_PTR(p);
        return 0;

fail:
        if (ret_error)
                return RETURN_ERROR(ret_error, "address %s: %s", hostport, err);
        return -EINVAL;
}

static char *go_join_host_port(const char *host, const char *port) {
        return strchr(host, ':') ? errorf("[%s]:%s", host, port) : errorf("%s:%s", host, port);
}

static bool is_ip_literal(const char *s) {
        unsigned char buf[sizeof(struct in6_addr)];

        return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* ---- URLs (pkg/types/urls.go on top of Go's net/url) ---- */

void etcd_url_done(EtcdUrl *u) {
        if (!u)
                return;
        free(u->str);
        free(u->scheme);
        free(u->host);
        *u = (EtcdUrl) {};
}

void etcd_url_list_done(EtcdUrlList *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++)
                etcd_url_done(&l->urls[i]);
        free(l->urls);
        *l = (EtcdUrlList) {};
}

static bool is_scheme_char(char c, bool first) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                return true;
        return !first && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.');
}

/*
 * types.NewURLs() for one entry: url.Parse, then scheme http|https, a host:port authority and no path.
 * The canonical string is url.URL.String(): lower-case scheme, authority as given, query/fragment kept.
 * Stricter than Go only in that the port must be a decimal number 0..65535 (we have to bind it).
 */
int etcd_url_parse(const char *s, EtcdUrl *ret, char **ret_error) {
        _cleanup_free_ char *in = NULL, *scheme = NULL, *authority = NULL, *host = NULL, *port = NULL;
        const char *rest, *fragment = NULL, *query = NULL, *auth_end;
        size_t rest_len;
        char *end;
        int r;

        assert(s);
        assert(ret);
        assert(ret_error);

        in = strndup_trimmed(s, strlen(s));
        if (!in)
                return -ENOMEM;

        /* Split off "#fragment" and "?query" first, as net/url does. */
        rest = in;
        rest_len = strcspn(in, "#");
        if (in[rest_len] == '#')
                fragment = in + rest_len + 1;

        /* getscheme(): letters first, then letters/digits/+-.; ':' at 0 is an error; else no scheme. */
        for (size_t i = 0; i < rest_len; i++) {
                char c = in[i];

                if (c == ':') {
                        if (i == 0)
                                return RETURN_ERROR(ret_error, "parse %s: missing protocol scheme", in);
                        scheme = strndup(in, i);
                        if (!scheme)
                                return -ENOMEM;
                        for (char *x = scheme; *x; x++)
                                if (*x >= 'A' && *x <= 'Z')
                                        *x = (char) (*x - 'A' + 'a');
                        rest = in + i + 1;
                        rest_len -= i + 1;
                        break;
                }
                if (!is_scheme_char(c, i == 0))
                        break;
        }

        {
                const char *q = memchr(rest, '?', rest_len);
                if (q) {
                        query = q + 1;
                        rest_len = (size_t) (q - rest);
                }
        }

        if (!scheme && rest_len > 0 && rest[0] != '/') {
                const char *colon = memchr(rest, ':', rest_len);
                if (colon && !memchr(rest, '/', (size_t) (colon - rest)))
                        return RETURN_ERROR(ret_error, "parse %s: first path segment in URL cannot contain colon",
                                            in);
        }

        if (!scheme || !(streq(scheme, "http") || streq(scheme, "https")))
                return RETURN_ERROR(ret_error, "URL scheme must be http or https: %s", in);

        /* "//authority" else opaque (no host at all). */
        if (rest_len >= 2 && rest[0] == '/' && rest[1] == '/') {
                const char *a = rest + 2, *at;

                auth_end = memchr(a, '/', rest_len - 2);
                if (!auth_end)
                        auth_end = rest + rest_len;
                authority = strndup(a, (size_t) (auth_end - a));
                if (!authority)
                        return -ENOMEM;
                rest_len -= (size_t) (auth_end - rest);
                rest = auth_end;
                at = strrchr(authority, '@');
                r = go_split_host_port(at ? at + 1 : authority, &host, &port, NULL);
        } else {
                r = -EINVAL;
                rest_len = 0; /* opaque: Go's Path is empty */
        }
        if (r == -ENOMEM)
                return r;
        if (r < 0 || isempty(port))
                return RETURN_ERROR(ret_error, "URL address does not have the form \"host:port\": %s", in);

        if (rest_len > 0)
                return RETURN_ERROR(ret_error, "URL must not contain a path: %s", in);

        errno = 0;
        unsigned long pn = strtoul(port, &end, 10);
        if (port[0] < '0' || port[0] > '9' || *end != '\0' || errno != 0 || pn > 65535)
                return RETURN_ERROR(ret_error, "URL address does not have the form \"host:port\": %s", in);

        char *str = errorf("%s://%s%s%s%s%s", scheme, authority, query ? "?" : "", strempty(query),
                           fragment ? "#" : "", strempty(fragment));
        if (!str)
                return -ENOMEM;

        *ret = (EtcdUrl) {
                .str = str,
                .scheme = TAKE_PTR(scheme),
                .host = TAKE_PTR(host),
                .port = (uint16_t) pn,
        };
        return 0;
}

static int cmp_url(const void *a, const void *b) {
        return strcmp(((const EtcdUrl *) a)->str, ((const EtcdUrl *) b)->str);
}

/* types.NewURLs(): each entry validated, the list sorted by string; empty input is an error. */
static int url_list_parse_strv(char *const *strs, size_t n, EtcdUrlList *ret, char **ret_error) {
        _cleanup_(etcd_url_list_done) EtcdUrlList l = {};
        int r;

        if (n == 0)
                return RETURN_ERROR(ret_error, "no valid URLs given");

        l.urls = calloc(n, sizeof(EtcdUrl));
        if (!l.urls)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = etcd_url_parse(strs[i], &l.urls[l.n], ret_error);
                if (r < 0)
                        return r;
                l.n++;
        }
        qsort(l.urls, l.n, sizeof(EtcdUrl), cmp_url);

        *ret = l;
        l = (EtcdUrlList) {};
        return 0;
}

/* strings.Split(s, ","): always at least one (possibly empty) element. */
static int split_commas(const char *s, char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        const char *p = s;
        int r;

        for (;;) {
                size_t n = strcspn(p, ",");
                char *e = strndup(p, n);

                if (!e)
                        return -ENOMEM;
                r = strv_push(&l, e);
                if (r < 0) {
                        free(e);
                        return r;
                }
                if (p[n] == '\0')
                        break;
                p += n + 1;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static int url_list_parse(const char *s, EtcdUrlList *ret, char **ret_error) {
        _cleanup_strv_free_ char **parts = NULL;
        int r;

        r = split_commas(s, &parts);
        if (r < 0)
                return r;
        return url_list_parse_strv(parts, strv_length(parts), ret, ret_error);
}

static char *url_list_join(const EtcdUrlList *l) {
        size_t len = 1;
        char *s, *o;

        for (size_t i = 0; i < l->n; i++)
                len += strlen(l->urls[i].str) + 1;
        s = o = malloc(len);
        if (!s)
                return NULL;
        *o = '\0';
        for (size_t i = 0; i < l->n; i++)
                o = stpcpy(stpcpy(o, i > 0 ? "," : ""), l->urls[i].str);
        return s;
}

/* ---- IDs (etcdserver/member.go NewMember, cluster.go genID) ---- */

static uint64_t sha1_prefix_u64(const void *data, size_t len) {
        uint8_t digest[20];
        uint64_t v = 0;

        /* SHA-1 of a memory buffer cannot fail short of a broken library; ID 0 is then caught as illegal. */
        if (gnutls_hash_fast(GNUTLS_DIG_SHA1, data, len, digest) < 0)
                return 0;
        for (size_t i = 0; i < 8; i++)
                v = (v << 8) | digest[i];
        return v;
}

uint64_t etcd_member_id(char *const *peer_urls, size_t n, const char *token, uint64_t unix_time) {
        _cleanup_free_ char **sorted = NULL;
        _cleanup_free_ char *buf = NULL;
        char when[21] = "";
        size_t len = 0;
        char *o;

        sorted = n > 0 ? malloc(n * sizeof(char *)) : NULL;
        if (n > 0 && !sorted)
                return 0;
        for (size_t i = 0; i < n; i++) {
                sorted[i] = peer_urls[i];
                len += strlen(peer_urls[i]);
        }
        if (n > 0)
                qsort(sorted, n, sizeof(char *), cmp_strp);
        if (unix_time != 0)
                (void) snprintf(when, sizeof(when), "%" PRIu64, unix_time);
        len += strlen(strempty(token)) + strlen(when);

        buf = o = malloc(len + 1);
        if (!buf)
                return 0;
        *o = '\0';
        for (size_t i = 0; i < n; i++)
                o = stpcpy(o, sorted[i]);
        o = stpcpy(o, strempty(token));
        o = stpcpy(o, when);
        return sha1_prefix_u64(buf, len);
}

uint64_t etcd_cluster_id(const uint64_t *member_ids, size_t n) {
        _cleanup_free_ uint64_t *sorted = NULL;
        _cleanup_free_ uint8_t *buf = NULL;

        sorted = malloc(MAX(n, (size_t) 1) * sizeof(uint64_t));
        buf = malloc(MAX(n, (size_t) 1) * 8);
        if (!sorted || !buf)
                return 0;
        if (n > 0)
                memcpy(sorted, member_ids, n * sizeof(uint64_t));
        qsort(sorted, n, sizeof(uint64_t), cmp_u64);
        for (size_t i = 0; i < n; i++)
                for (size_t b = 0; b < 8; b++)
                        buf[i * 8 + b] = (uint8_t) (sorted[i] >> (56 - 8 * b));
        return sha1_prefix_u64(buf, n * 8);
}

static uint64_t member_id_from_urls(const EtcdUrlList *l, const char *token) {
        _cleanup_free_ char **strs = malloc(MAX(l->n, (size_t) 1) * sizeof(char *));

        if (!strs)
                return 0;
        for (size_t i = 0; i < l->n; i++)
                strs[i] = l->urls[i].str;
        return etcd_member_id(strs, l->n, token, 0);
}

/* ---- flag setters (flag.Value.Set of each etcd type) ---- */

static void *field(Parser *p, const FlagDef *f) {
        return (uint8_t *) p->config + f->offset;
}

static int set_string(char **dst, const char *value) {
        char *s = strdup(value);

        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

/* cors.CORSInfo.Set: comma list, trimmed, empties skipped, "*" or something url.Parse accepts. */
static int set_cors(char ***dst, const char *value, char **ret_error) {
        _cleanup_strv_free_ char **parts = NULL, **out = NULL;
        int r;

        r = split_commas(value, &parts);
        if (r < 0)
                return r;
        STRV_FOREACH(i, parts) {
                _cleanup_free_ char *v = strndup_trimmed(*i, strlen(*i));
                bool dup = false;

                if (!v)
                        return -ENOMEM;
                if (isempty(v))
                        continue;
                if (!streq(v, "*")) {
                        /* url.Parse rejects bad %-escapes (and, with newer Go, control characters). */
                        for (const char *c = v; *c; c++) {
                                if ((unsigned char) *c < 0x20 || *c == 0x7f)
                                        return RETURN_ERROR(ret_error,
                                                            "Invalid CORS origin: parse %s: invalid control character in URL",
                                                            v);
                                if (*c == '%' &&
                                    !(isxdigit((unsigned char) c[1]) && isxdigit((unsigned char) c[2]))) {
                                        _cleanup_free_ char *esc = strndup(c, strnlen(c, 3));
                                        _cleanup_free_ char *q = esc ? go_quote(esc) : NULL;
                                        if (!q)
                                                return -ENOMEM;
                                        return RETURN_ERROR(ret_error,
                                                            "Invalid CORS origin: parse %s: invalid URL escape %s",
                                                            v, q);
                                }
                        }
                }
                STRV_FOREACH(o, out)
                        if (streq(*o, v))
                                dup = true;
                if (dup)
                        continue;
                r = strv_push(&out, v);
                if (r < 0)
                        return r;
                v = NULL;
        }
        if (out)
                qsort(out, strv_length(out), sizeof(char *), cmp_strp);
        strv_free(*dst);
        *dst = TAKE_PTR(out);
        return 0;
}

/* flags.IPAddressPort.Set: trimmed "IP:port" with a literal IP and an Atoi port. */
static int set_ipport(LegacyAddr *dst, const char *value, char **ret_error) {
        _cleanup_free_ char *arg = strndup_trimmed(value, strlen(value)), *host = NULL, *port = NULL;
        const char *d;
        char *end;
        long long pn;
        int r;

        if (!arg)
                return -ENOMEM;
        r = go_split_host_port(arg, &host, &port, ret_error);
        if (r < 0)
                return r;
        if (!is_ip_literal(host))
                return RETURN_ERROR(ret_error, "bad IP in address specification");
        d = port + (port[0] == '+' || port[0] == '-');
        errno = 0;
        pn = strtoll(port, &end, 10);
        if (*d < '0' || *d > '9' || *end != '\0' || errno != 0)
                return RETURN_ERROR(ret_error, "bad port in address specification");

        free(dst->ip);
        dst->ip = TAKE_PTR(host);
        dst->port = pn;
        return 0;
}

static int flag_set(Parser *p, size_t idx, const char *value, char **ret_error) {
        const FlagDef *f = &flag_table[idx];
        uint64_t u;
        int64_t i64;
        bool b;
        int r;

        switch (f->type) {

        case FLAG_STRING:
                return set_string(field(p, f), value);

        case FLAG_BOOL:
                r = go_parse_bool(value, &b, ret_error);
                if (r < 0)
                        return r;
                *(bool *) field(p, f) = b;
                return 0;

        case FLAG_VERSION:
                return go_parse_bool(value, &p->print_version, ret_error);

        case FLAG_UINT:
                r = go_parse_uint("strconv.ParseUint", value, value, 32, &u, ret_error);
                if (r < 0)
                        return r;
                *(unsigned *) field(p, f) = (unsigned) u;
                return 0;

        case FLAG_UINT64:
                r = go_parse_uint("strconv.ParseUint", value, value, 64, &u, ret_error);
                if (r < 0)
                        return r;
                *(uint64_t *) field(p, f) = u;
                return 0;

        case FLAG_INT:
                r = go_parse_int(value, &i64, ret_error);
                if (r < 0)
                        return r;
                *(unsigned *) field(p, f) = i64 < 0 ? 0 : i64 > UINT_MAX ? UINT_MAX : (unsigned) i64;
                return 0;

        case FLAG_URLS: {
                EtcdUrlList l = {};

                r = url_list_parse(value, &l, ret_error);
                if (r < 0)
                        return r;
                etcd_url_list_done(field(p, f));
                *(EtcdUrlList *) field(p, f) = l;
                return 0;
        }

        case FLAG_CHOICE_ENUM:
        case FLAG_CHOICE_STR:
                for (size_t c = 0; f->choices[c]; c++) {
                        if (!streq(value, f->choices[c]))
                                continue;
                        if (f->type == FLAG_CHOICE_ENUM)
                                *(int *) field(p, f) = (int) c;
                        else
                                return set_string(field(p, f), value);
                        return 0;
                }
                return RETURN_ERROR(ret_error, "invalid value");

        case FLAG_CORS:
                return set_cors(field(p, f), value, ret_error);

        case FLAG_IPPORT:
                return set_ipport(&p->legacy[f->offset], value, ret_error);

        case FLAG_DEPRECATED:
                return RETURN_ERROR(ret_error, "flag \"-%s\" is no longer supported.", f->name);

        case FLAG_IGNORED:
                log_warning("flag \"-%s\" is no longer supported - ignoring.", f->name);
                return 0;
        }

        assert(false);
        return -EINVAL;
}

static bool flag_is_bool(const FlagDef *f) {
        return f->type == FLAG_BOOL || f->type == FLAG_VERSION || f->type == FLAG_IGNORED;
}

static ssize_t flag_lookup(const char *name, size_t len) {
        for (size_t i = 0; i < N_FLAGS; i++)
                if (strlen(flag_table[i].name) == len && strneq(flag_table[i].name, name, len))
                        return (ssize_t) i;
        return -1;
}

static ssize_t flag_index(const char *name) {
        return flag_lookup(name, strlen(name));
}

static bool flag_is_set(const Parser *p, const char *name) {
        ssize_t i = flag_index(name);

        assert(i >= 0);
        return p->set[i];
}

/* ---- defaults ---- */

static int config_new_defaults(Parser *p) {
        static const struct {
                const char *name, *value;
        } defaults[] = {
                { "name", DEFAULT_NAME },
                { "snapshot-count", "10000" },
                { "heartbeat-interval", "100" },
                { "election-timeout", "1000" },
                { "listen-peer-urls", DEFAULT_PEER_URLS },
                { "listen-client-urls", DEFAULT_CLIENT_URLS },
                { "max-snapshots", "5" },
                { "max-wals", "5" },
                { "initial-advertise-peer-urls", DEFAULT_PEER_URLS },
                { "initial-cluster", DEFAULT_INITIAL_CLUSTER },
                { "initial-cluster-state", "new" },
                { "initial-cluster-token", "etcd-cluster" },
                { "advertise-client-urls", DEFAULT_CLIENT_URLS },
                { "discovery-fallback", "proxy" },
                { "proxy", "off" },
                { "proxy-failure-wait", "5000" },
                { "proxy-refresh-interval", "30000" },
                { "proxy-dial-timeout", "1000" },
                { "proxy-write-timeout", "5000" },
                { "proxy-read-timeout", "0" },
                { "experimental-gRPC-addr", "127.0.0.1:2378" },
                { "experimental-auto-compaction-retention", "0" },
        };
        _cleanup_free_ char *error = NULL;
        int r;

        p->config = calloc(1, sizeof(Config));
        if (!p->config)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(defaults); i++) {
                ssize_t idx = flag_index(defaults[i].name);

                assert(idx >= 0);
                r = flag_set(p, (size_t) idx, defaults[i].value, &error);
                if (r < 0)
                        return r == -EINVAL ? -EIO : r; /* a default that does not parse is our bug */
        }
        return 0;
}

/* ---- command line (Go's FlagSet.Parse with ContinueOnError) ---- */

typedef enum ParseResult {
        PARSE_OK,
        PARSE_HELP,
        PARSE_ERROR,
} ParseResult;

/* failf(): the message on stderr, the short usage on stdout. */
static int flag_fail(char *message) {
        if (!message)
                return -ENOMEM;
        (void) fflush(stdout);
        (void) fprintf(stderr, "%s\n", message);
        (void) fflush(stderr);
        (void) fputs(config_usage_text, stdout);
        (void) fputc('\n', stdout);
        (void) fflush(stdout);
        free(message);
        return PARSE_ERROR;
}

static int parse_argv(Parser *p, int argc, char *argv[], int *ret_first_arg) {
        int i = 1;
        int r;

        while (i < argc) {
                const char *s = argv[i], *name, *eq, *value = NULL;
                _cleanup_free_ char *error = NULL, *q = NULL;
                size_t name_len;
                ssize_t idx;

                if (s[0] != '-' || s[1] == '\0')
                        break;
                if (s[1] == '-' && s[2] == '\0') {
                        i++; /* "--" terminates the flags */
                        break;
                }
                name = s + 1 + (s[1] == '-');
                if (name[0] == '\0' || name[0] == '-' || name[0] == '=')
                        return flag_fail(errorf("bad flag syntax: %s", s));
                i++;

                eq = strchr(name + 1, '=');
                name_len = eq ? (size_t) (eq - name) : strlen(name);
                if (eq)
                        value = eq + 1;

                idx = flag_lookup(name, name_len);
                if (idx < 0) {
                        if ((name_len == 4 && strneq(name, "help", 4)) || (name_len == 1 && name[0] == 'h')) {
                                (void) fflush(stderr);
                                (void) fputs(config_usage_text, stdout);
                                (void) fputc('\n', stdout);
                                return PARSE_HELP;
                        }
                        return flag_fail(errorf("flag provided but not defined: -%.*s", (int) name_len, name));
                }

                if (flag_is_bool(&flag_table[idx])) {
                        r = flag_set(p, (size_t) idx, value ?: "true", &error);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0) {
                                q = go_quote(strempty(value));
                                if (!q)
                                        return -ENOMEM;
                                return flag_fail(errorf("invalid boolean value %s for -%s: %s", q,
                                                        flag_table[idx].name, error));
                        }
                } else {
                        if (!value && i < argc)
                                value = argv[i++];
                        if (!value)
                                return flag_fail(errorf("flag needs an argument: -%s", flag_table[idx].name));
                        r = flag_set(p, (size_t) idx, value, &error);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0) {
                                q = go_quote(value);
                                if (!q)
                                        return -ENOMEM;
                                return flag_fail(errorf("invalid value %s for flag -%s: %s", q,
                                                        flag_table[idx].name, error));
                        }
                }
                p->set[idx] = p->cli_set[idx] = true;
        }

        *ret_first_arg = i;
        return PARSE_OK;
}

/* ---- environment (pkg/flags SetFlagsFromEnv) ---- */

static char *flag_to_env(const char *name) {
        char *e = errorf("ETCD_%s", name);

        if (!e)
                return NULL;
        for (char *c = e + 5; *c; c++) {
                if (*c == '-')
                        *c = '_';
                else if (*c >= 'a' && *c <= 'z')
                        *c = (char) (*c - 'a' + 'A');
        }
        return e;
}

static const char *env_lookup(char **envp, const char *key) {
        size_t n = strlen(key);

        for (char **e = envp; e && *e; e++)
                if (strneq(*e, key, n) && (*e)[n] == '=')
                        return *e + n + 1;
        return NULL;
}

/* Returns 0, -ENOMEM, or -EINVAL with the (last) bad value's message in *ret_error. */
static int apply_env(Parser *p, char **envp, char **ret_error) {
        char *env_names[N_FLAGS] = {};
        bool used[N_FLAGS] = {};
        _cleanup_free_ char *last_error = NULL;
        int r = 0;

        for (size_t i = 0; i < N_FLAGS; i++) {
                env_names[i] = flag_to_env(flag_table[i].name);
                if (!env_names[i]) {
                        r = -ENOMEM;
                        goto finish;
                }
        }

        for (size_t i = 0; i < N_FLAGS; i++) {
                _cleanup_free_ char *error = NULL;
                const char *v;

                if (p->cli_set[i])
                        continue;
                v = env_lookup(envp, env_names[i]);
                if (isempty(v))
                        continue;

                used[i] = true;
                r = flag_set(p, i, v, &error);
                if (r == -ENOMEM)
                        goto finish;
                if (r < 0) {
                        _cleanup_free_ char *q = go_quote(v);

                        free(last_error);
                        last_error = q ? errorf("invalid value %s for %s: %s", q, env_names[i], error) : NULL;
                        if (!last_error) {
                                r = -ENOMEM;
                                goto finish;
                        }
                } else
                        p->set[i] = true;
                log_info("recognized and used environment variable %s=%s", env_names[i], v);
        }
        r = 0;

        for (char **e = envp; e && *e; e++) {
                size_t klen = strcspn(*e, "=");
                bool is_used = false, shadowed = false;

                if ((*e)[klen] != '=')
                        log_warning("found invalid env %s", *e);
                for (size_t i = 0; i < N_FLAGS; i++) {
                        if (strlen(env_names[i]) != klen || !strneq(env_names[i], *e, klen))
                                continue;
                        is_used = used[i];
                        shadowed = p->cli_set[i];
                }
                if (is_used)
                        continue;
                if (shadowed)
                        log_info("recognized environment variable %.*s, but unused: shadowed by corresponding flag",
                                 (int) klen, *e);
                else if (strneq(*e, "ETCD_", 5))
                        log_warning("unrecognized environment variable %s", *e);
        }

finish:
        for (size_t i = 0; i < N_FLAGS; i++)
                free(env_names[i]);
        if (r >= 0 && last_error) {
                *ret_error = TAKE_PTR(last_error);
                return -EINVAL;
        }
        return r;
}

/* ---- cross-flag verification (config.Parse after the environment) ---- */

/* flags.URLsFromFlags: the legacy address flag, if set, replaces the URL list (and excludes it). */
static int urls_from_flags(Parser *p, const char *urls_flag, LegacySlot slot, const char *addr_flag,
                           bool tls, char **ret_error) {
        EtcdUrlList *dst = field(p, &flag_table[flag_index(urls_flag)]);
        _cleanup_free_ char *port = NULL, *hp = NULL, *u = NULL;
        EtcdUrlList l = {};
        int r;

        if (!flag_is_set(p, addr_flag))
                return 0;
        if (flag_is_set(p, urls_flag))
                return RETURN_ERROR(ret_error, "Set only one of flags -%s and -%s", urls_flag, addr_flag);

        port = errorf("%lld", p->legacy[slot].port);
        hp = port ? go_join_host_port(p->legacy[slot].ip, port) : NULL;
        u = hp ? errorf("%s://%s", tls ? "https" : "http", hp) : NULL;
        if (!u)
                return -ENOMEM;
        r = url_list_parse(u, &l, ret_error);
        if (r < 0)
                return r;
        etcd_url_list_done(dst);
        *dst = l;
        return 0;
}

/* flags.SetBindAddrFromAddr: -addr alone also makes the listener [::]:port. */
static int bind_addr_from_addr(Parser *p, const char *bind_flag, LegacySlot bind_slot, const char *addr_flag,
                               LegacySlot addr_slot) {
        char *ip;

        if (flag_is_set(p, bind_flag) || !flag_is_set(p, addr_flag))
                return 0;
        ip = strdup("::");
        if (!ip)
                return -ENOMEM;
        free(p->legacy[bind_slot].ip);
        p->legacy[bind_slot].ip = ip;
        p->legacy[bind_slot].port = p->legacy[addr_slot].port;
        p->set[flag_index(bind_flag)] = true;
        return 0;
}

static int verify_flags(Parser *p, char **ret_error) {
        Config *c = p->config;
        bool client_tls = !isempty(c->cert_file) || !isempty(c->key_file);
        bool peer_tls = !isempty(c->peer_cert_file) || !isempty(c->peer_key_file);
        unsigned n_set = 0;
        bool may_be_proxy;
        int r;

        n_set = flag_is_set(p, "discovery") + flag_is_set(p, "initial-cluster") +
                flag_is_set(p, "discovery-srv");
        if (n_set > 1)
                return RETURN_ERROR(ret_error, "multiple discovery or bootstrap flags are set. "
                                    "Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"");

        r = bind_addr_from_addr(p, "peer-bind-addr", LEGACY_PEER_BIND_ADDR, "peer-addr", LEGACY_PEER_ADDR);
        if (r < 0)
                return r;
        r = bind_addr_from_addr(p, "bind-addr", LEGACY_BIND_ADDR, "addr", LEGACY_ADDR);
        if (r < 0)
                return r;

        r = urls_from_flags(p, "listen-peer-urls", LEGACY_PEER_BIND_ADDR, "peer-bind-addr", peer_tls,
                            ret_error);
        if (r < 0)
                return r;
        r = urls_from_flags(p, "initial-advertise-peer-urls", LEGACY_PEER_ADDR, "peer-addr", peer_tls,
                            ret_error);
        if (r < 0)
                return r;
        r = urls_from_flags(p, "listen-client-urls", LEGACY_BIND_ADDR, "bind-addr", client_tls, ret_error);
        if (r < 0)
                return r;
        r = urls_from_flags(p, "advertise-client-urls", LEGACY_ADDR, "addr", client_tls, ret_error);
        if (r < 0)
                return r;

        /* A member has to tell clients where to reach it; a proxy (or a possible one) does not. */
        may_be_proxy = c->proxy != PROXY_OFF ||
                       (flag_is_set(p, "discovery") && streq(c->discovery_fallback, "proxy"));
        if (!may_be_proxy && flag_is_set(p, "listen-client-urls") && !flag_is_set(p, "advertise-client-urls"))
                return RETURN_ERROR(ret_error,
                                    "-advertise-client-urls is required when -listen-client-urls is set explicitly");

        /* etcd2 would panic dividing by a zero tick later on; refuse it here instead. */
        if (c->heartbeat_interval_ms == 0)
                return RETURN_ERROR(ret_error, "-heartbeat-interval[0ms] must be greater than 0");
        if ((uint64_t) c->heartbeat_interval_ms * 5 > c->election_timeout_ms)
                return RETURN_ERROR(ret_error,
                                    "-election-timeout[%ums] should be at least as 5 times as -heartbeat-interval[%ums]",
                                    c->election_timeout_ms, c->heartbeat_interval_ms);
        if (c->election_timeout_ms > MAX_ELECTION_MS)
                return RETURN_ERROR(ret_error, "-election-timeout[%ums] is too long, and should be set less than %ums",
                                    c->election_timeout_ms, (unsigned) MAX_ELECTION_MS);
        return 0;
}

/* ---- logging setup (etcdmain setupLogging) ---- */

/* capnslog's ParseLogLevelConfig syntax: "pkg=LEVEL,...". We have one global level, so only "*" changes it;
 * per-package entries are validated and otherwise ignored. */
static void setup_logging(const Config *c) {
        static const struct {
                const char *name;
                int level;
        } levels[] = {
                { "CRITICAL", LOG_CRIT }, { "C", LOG_CRIT }, { "ERROR", LOG_ERR }, { "E", LOG_ERR },
                { "WARNING", LOG_WARNING }, { "W", LOG_WARNING }, { "NOTICE", LOG_NOTICE }, { "N", LOG_NOTICE },
                { "INFO", LOG_INFO }, { "I", LOG_INFO }, { "DEBUG", LOG_DEBUG }, { "D", LOG_DEBUG },
                { "TRACE", LOG_DEBUG }, { "T", LOG_DEBUG },
        };
        _cleanup_strv_free_ char **parts = NULL;
        int global = -1;

        log_set_max_level(c->debug ? LOG_DEBUG : LOG_INFO);
        if (isempty(c->log_package_levels))
                return;

        if (split_commas(c->log_package_levels, &parts) < 0) {
                (void) log_oom();
                return;
        }
        STRV_FOREACH(i, parts) {
                char *eq = strchr(*i, '=');
                int level = -1;

                if (!eq || strchr(eq + 1, '=')) {
                        log_warning("couldn't parse log level string: oddly structured `pkg=level` option: %s, "
                                    "continuing with default levels", *i);
                        return;
                }
                for (size_t l = 0; l < ELEMENTSOF(levels); l++)
                        if (streq(eq + 1, levels[l].name))
                                level = levels[l].level;
                if (level < 0) {
                        log_warning("couldn't parse log level string: couldn't parse log level %s, "
                                    "continuing with default levels", eq + 1);
                        return;
                }
                if (eq - *i == 1 && (*i)[0] == '*')
                        global = level;
                else
                        log_debug("Per-package log level '%s' is not supported, ignoring", *i);
        }
        if (global >= 0)
                log_set_max_level(global);
}

/* ---- initial cluster (types.NewURLsMap) and IDs ---- */

static void cluster_members_free(ClusterMember *m, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(m[i].name);
                etcd_url_list_done(&m[i].peer_urls);
        }
        free(m);
}

static int cmp_member_id(const void *a, const void *b) {
        return cmp_u64(&((const ClusterMember *) a)->id, &((const ClusterMember *) b)->id);
}

/* "name=url,name=url2,other=url3": the same name may repeat; an entry without '=' is a name with URL "". */
static int initial_cluster_parse(const char *s, const char *token, ClusterMember **ret, size_t *ret_n,
                                 char **ret_error) {
        _cleanup_strv_free_ char **entries = NULL, **names = NULL;
        ClusterMember *members = NULL;
        size_t n_names = 0;
        int r;

        r = split_commas(s, &entries);
        if (r < 0)
                return r;

        /* Distinct names, in order of first appearance. */
        STRV_FOREACH(e, entries) {
                size_t len = strcspn(*e, "=");
                bool seen = false;
                char *name;

                if (isempty(*e))
                        continue;
                STRV_FOREACH(k, names)
                        if (strlen(*k) == len && strneq(*k, *e, len))
                                seen = true;
                if (seen)
                        continue;
                name = strndup(*e, len);
                if (!name)
                        return -ENOMEM;
                r = strv_push(&names, name);
                if (r < 0) {
                        free(name);
                        return r;
                }
                n_names++;
        }

        members = calloc(MAX(n_names, (size_t) 1), sizeof(ClusterMember));
        if (!members)
                return -ENOMEM;
        for (size_t k = 0; k < n_names; k++) {
                _cleanup_free_ char **urls = calloc(strv_length(entries) + 1, sizeof(char *));
                size_t n_urls = 0, name_len = strlen(names[k]);

                if (!urls) {
                        r = -ENOMEM;
                        goto fail;
                }
                STRV_FOREACH(e, entries) {
                        if (isempty(*e) || !strneq(*e, names[k], name_len))
                                continue;
                        if ((*e)[name_len] == '=')
                                urls[n_urls++] = *e + name_len + 1;
                        else if ((*e)[name_len] == '\0')
                                urls[n_urls++] = (char *) "";
                }
                members[k].name = strndup(names[k], name_len);
                if (!members[k].name) {
                        r = -ENOMEM;
                        goto fail;
                }
                r = url_list_parse_strv(urls, n_urls, &members[k].peer_urls, ret_error);
                if (r < 0)
                        goto fail;
                members[k].id = member_id_from_urls(&members[k].peer_urls, token);
        }
        qsort(members, n_names, sizeof(ClusterMember), cmp_member_id);

        *ret = members;
        *ret_n = n_names;
        return 0;

fail:
        cluster_members_free(members, n_names);
        return r;
}

/* member_id (our entry's ID, else from our advertised URLs) and cluster_id from initial_members. */
static int config_compute_ids(Config *c, const char *token) {
        uint64_t *ids;

        c->member_id = member_id_from_urls(&c->initial_advertise_peer_urls, token);
        for (size_t i = 0; i < c->n_initial_members; i++)
                if (streq(c->initial_members[i].name, c->name))
                        c->member_id = c->initial_members[i].id;

        c->cluster_id = 0;
        if (c->n_initial_members > 0) {
                ids = malloc(c->n_initial_members * sizeof(uint64_t));
                if (!ids)
                        return -ENOMEM;
                for (size_t i = 0; i < c->n_initial_members; i++)
                        ids[i] = c->initial_members[i].id;
                c->cluster_id = etcd_cluster_id(ids, c->n_initial_members);
                free(ids);
        }
        return 0;
}

static int verify_bootstrap(const Config *c, bool members_known);

/* Fills initial_members (by ID), member_id and cluster_id the way etcdmain's getPeerURLsMapAndToken() and
 * etcdserver's NewClusterFromURLsMap() would for a fresh bootstrap. */
static int config_compute_cluster(Config *c, char **ret_error) {
        const char *token = c->initial_cluster_token;
        int r;

        if (!isempty(c->discovery)) {
                /* Discovery: a temporary one-member cluster from our advertised peer URLs; token = the URL. */
                token = c->discovery;
                c->initial_members = calloc(1, sizeof(ClusterMember));
                if (!c->initial_members)
                        return -ENOMEM;
                c->n_initial_members = 1;
                c->initial_members[0].name = strdup(c->name);
                if (!c->initial_members[0].name)
                        return -ENOMEM;
                for (size_t i = 0; i < c->initial_advertise_peer_urls.n; i++) {
                        const EtcdUrl *u = &c->initial_advertise_peer_urls.urls[i];
                        EtcdUrlList *l = &c->initial_members[0].peer_urls;
                        EtcdUrl *m = realloc(l->urls, (l->n + 1) * sizeof(EtcdUrl));

                        if (!m)
                                return -ENOMEM;
                        l->urls = m;
                        r = etcd_url_parse(u->str, &l->urls[l->n], ret_error);
                        if (r < 0)
                                return r;
                        l->n++;
                }
                c->initial_members[0].id = member_id_from_urls(&c->initial_members[0].peer_urls, token);
        } else if (isempty(c->discovery_srv)) {
                r = initial_cluster_parse(c->initial_cluster, token, &c->initial_members, &c->n_initial_members,
                                          ret_error);
                if (r < 0)
                        return r;
        }
        /* With --discovery-srv the members are only known after the DNS lookup. */

        return config_compute_ids(c, token);
}

int config_set_initial_cluster(Config *c, const char *cluster, const char *token) {
        _cleanup_free_ char *error = NULL;
        ClusterMember *members = NULL;
        size_t n = 0;
        char *copy;
        int r;

        assert(c);
        assert(cluster);
        assert(token);

        r = initial_cluster_parse(cluster, token, &members, &n, &error);
        if (r == -EINVAL)
                return log_error_errno(r, "error setting up initial cluster: %s", error);
        if (r < 0)
                return log_oom();
        copy = strdup(cluster);
        if (!copy) {
                cluster_members_free(members, n);
                return log_oom();
        }
        free(c->initial_cluster);
        c->initial_cluster = copy;
        cluster_members_free(c->initial_members, c->n_initial_members);
        c->initial_members = members;
        c->n_initial_members = n;
        r = config_compute_ids(c, token);
        if (r < 0)
                return log_oom();
        return verify_bootstrap(c, true);
}

/* netutil.URLStringsEqual(): equal as sorted strings, or else equal once host names are resolved (IP literals
 * and "localhost" are compared as written). A name that does not resolve makes the lists unequal. */
static char *url_resolved(const EtcdUrl *u) {
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
        char ip[INET6_ADDRSTRLEN], port[6];
        char *s;

        if (is_ip_literal(u->host) || streq(u->host, "localhost"))
                return strdup(u->str);

        /* Go's resolver prefers IPv4 addresses. */
        hints.ai_family = AF_INET;
        if (getaddrinfo(u->host, NULL, &hints, &ai) != 0) {
                hints.ai_family = AF_INET6;
                if (getaddrinfo(u->host, NULL, &hints, &ai) != 0)
                        ai = NULL;
        }
        if (!ai) {
                log_warning("Failed to resolve '%s' while comparing peer URLs", u->host);
                return NULL;
        }
        if (ai->ai_family == AF_INET)
                (void) inet_ntop(AF_INET, &((struct sockaddr_in *) ai->ai_addr)->sin_addr, ip, sizeof(ip));
        else
                (void) inet_ntop(AF_INET6, &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr, ip, sizeof(ip));
        freeaddrinfo(ai);

        (void) snprintf(port, sizeof(port), "%u", u->port);
        _cleanup_free_ char *hp = go_join_host_port(ip, port);
        if (!hp)
                return NULL;
        s = errorf("%s://%s", u->scheme, hp);
        return s;
}

static bool url_lists_equal(const EtcdUrlList *a, const EtcdUrlList *b) {
        _cleanup_strv_free_ char **ra = NULL, **rb = NULL;
        bool equal = a->n == b->n;

        for (size_t i = 0; equal && i < a->n; i++)
                equal = streq(a->urls[i].str, b->urls[i].str);
        if (equal || a->n != b->n)
                return equal;

        ra = calloc(a->n + 1, sizeof(char *));
        rb = calloc(b->n + 1, sizeof(char *));
        if (!ra || !rb)
                return false;
        for (size_t i = 0; i < a->n; i++) {
                ra[i] = url_resolved(&a->urls[i]);
                rb[i] = url_resolved(&b->urls[i]);
                if (!ra[i] || !rb[i])
                        return false;
        }
        qsort(ra, a->n, sizeof(char *), cmp_strp);
        qsort(rb, b->n, sizeof(char *), cmp_strp);
        for (size_t i = 0; i < a->n; i++)
                if (!streq(ra[i], rb[i]))
                        return false;
        return true;
}

/* types.URLsMap.String(): "name=url" pairs, sorted, comma-joined. */
static char *members_to_string(const ClusterMember *m, size_t n) {
        _cleanup_strv_free_ char **pairs = NULL;
        size_t len = 1;
        char *s, *o;

        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < m[i].peer_urls.n; j++) {
                        char *pair = errorf("%s=%s", m[i].name, m[i].peer_urls.urls[j].str);
                        if (!pair || strv_push(&pairs, pair) < 0) {
                                free(pair);
                                return NULL;
                        }
                        len += strlen(pair) + 1;
                }
        if (pairs)
                qsort(pairs, strv_length(pairs), sizeof(char *), cmp_strp);
        s = o = malloc(len);
        if (!s)
                return NULL;
        *o = '\0';
        STRV_FOREACH(i, pairs)
                o = stpcpy(stpcpy(o, i == pairs ? "" : ","), *i);
        return s;
}

char *config_members_string(const ClusterMember *m, size_t n) {
        return members_to_string(m, n);
}

int config_cluster_parse(const char *cluster, ClusterMember **ret, size_t *ret_n) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = initial_cluster_parse(cluster, "", ret, ret_n, &error);
        if (r == -EINVAL)
                return log_error_errno(r, "error parsing cluster '%s': %s", cluster, error);
        if (r < 0)
                return log_oom();
        return 0;
}

void config_cluster_members_free(ClusterMember *m, size_t n) {
        cluster_members_free(m, n);
}

int config_verify_bootstrap(const Config *c) {
        /* SRV discovery fills the map only after DNS; the discovery map is built from our own URLs. */
        return verify_bootstrap(c, isempty(c->discovery_srv));
}

static int verify_bootstrap(const Config *c, bool members_known) {
        const ClusterMember *self = NULL;
        _cleanup_free_ char *map = NULL;
        _cleanup_free_ char **all = NULL;
        size_t n_urls = 0;

        assert(c);

        if (!members_known)
                return 0;

        for (size_t i = 0; i < c->n_initial_members; i++)
                if (streq(c->initial_members[i].name, c->name))
                        self = &c->initial_members[i];
        if (!self)
                return log_error_errno(-EINVAL,
                                       "couldn't find local name \"%s\" in the initial cluster configuration", c->name);

        map = members_to_string(c->initial_members, c->n_initial_members);
        if (!map)
                return log_oom();

        if (c->initial_cluster_state == CLUSTER_STATE_NEW) {
                /* The advertised peer URLs must be this member's entry (both lists are sorted). */
                if (!url_lists_equal(&self->peer_urls, &c->initial_advertise_peer_urls)) {
                        ClusterMember mine = { .name = c->name, .peer_urls = c->initial_advertise_peer_urls };
                        _cleanup_free_ char *want = members_to_string(&mine, 1);
                        _cleanup_free_ char *ap = url_list_join(&c->initial_advertise_peer_urls);

                        if (!want || !ap)
                                return log_oom();
                        return log_error_errno(-EINVAL,
                                               "--initial-cluster must include %s given --initial-advertise-peer-urls=%s",
                                               want, ap);
                }
        }

        /* No peer URL may appear twice, within a member or across members. */
        for (size_t i = 0; i < c->n_initial_members; i++)
                n_urls += c->initial_members[i].peer_urls.n;
        all = malloc(MAX(n_urls, (size_t) 1) * sizeof(char *));
        if (!all)
                return log_oom();
        n_urls = 0;
        for (size_t i = 0; i < c->n_initial_members; i++)
                for (size_t j = 0; j < c->initial_members[i].peer_urls.n; j++)
                        all[n_urls++] = c->initial_members[i].peer_urls.urls[j].str;
        qsort(all, n_urls, sizeof(char *), cmp_strp);
        for (size_t i = 1; i < n_urls; i++)
                if (streq(all[i - 1], all[i]))
                        return log_error_errno(-EINVAL, "initial cluster %s has duplicate url", map);

        if (c->initial_cluster_state == CLUSTER_STATE_EXISTING && !isempty(c->discovery))
                return log_error_errno(-EINVAL,
                                       "discovery URL should not be set when joining existing initial cluster");

        for (size_t i = 0; i < c->n_initial_members; i++) {
                if (c->initial_members[i].id == 0)
                        return log_error_errno(-EINVAL, "cannot use 0 as member id");
                if (i > 0 && c->initial_members[i].id == c->initial_members[i - 1].id)
                        return log_error_errno(-EINVAL, "member exists with identical ID %" PRIx64,
                                               c->initial_members[i].id);
        }
        return 0;
}

/* ---- what this etcd2 does not do yet ---- */

/* One place per feature: a later issue deletes its line here when it implements it. */
int config_check_supported(const Config *c) {
        const char *what = NULL;

        assert(c);

        /* Client and peer TLS (--cert-file, --key-file, --ca-file, --trusted-ca-file, --client-cert-auth, their
         * --peer-* twins, https client and peer URLs) are done: endpoints.c checks and warns as etcd2's
         * listeners do. */
        if (c->experimental_v3demo)
                what = "--experimental-v3demo";
        else if (c->enable_pprof)
                what = "--enable-pprof";

        if (what)
                return log_error_errno(-EOPNOTSUPP, "%s is not supported yet by this etcd2", what);
        return 0;
}

TlsInfo config_peer_tls_info(const Config *c) {
        return (TlsInfo) {
                .cert_file = c->peer_cert_file,
                .key_file = c->peer_key_file,
                .trusted_ca_file = !isempty(c->peer_trusted_ca_file) ? c->peer_trusted_ca_file : c->peer_ca_file,
                .client_cert_auth = c->peer_client_cert_auth || !isempty(c->peer_ca_file),
        };
}

bool config_peer_tls_given(const Config *c) {
        return !isempty(c->peer_cert_file) || !isempty(c->peer_key_file) || !isempty(c->peer_ca_file) ||
               !isempty(c->peer_trusted_ca_file);
}

/* ---- the rest of etcdmain before the server starts ---- */

static int config_finish(Config *c) {
        char *s;

        /* etcd compares values, not "was it set": --initial-cluster equal to the default follows --name. */
        if (!streq(c->name, DEFAULT_NAME) && streq(c->initial_cluster, DEFAULT_INITIAL_CLUSTER)) {
                const char *n = isempty(c->name) ? DEFAULT_NAME : c->name;

                s = errorf("%s=http://localhost:2380,%s=http://localhost:7001", n, n);
                if (!s)
                        return -ENOMEM;
                free(c->initial_cluster);
                c->initial_cluster = s;
        }

        if (isempty(c->data_dir)) {
                s = errorf("%s.etcd", c->name);
                if (!s)
                        return -ENOMEM;
                free(c->data_dir);
                c->data_dir = s;
                log_warning("no data-dir provided, using default data-dir ./%s", c->data_dir);
        }

        /* Optional strings: "" (given empty) and unset mean the same to etcd2; hand out NULL for both. */
        char **optional[] = {
                &c->wal_dir, &c->discovery, &c->discovery_srv, &c->discovery_proxy, &c->cert_file,
                &c->key_file, &c->ca_file, &c->trusted_ca_file, &c->peer_cert_file, &c->peer_key_file,
                &c->peer_ca_file, &c->peer_trusted_ca_file, &c->log_package_levels, &c->bus_address,
                &c->import_v2_data_dir,
        };
        for (size_t i = 0; i < ELEMENTSOF(optional); i++)
                if (isempty(*optional[i]))
                        *optional[i] = mfree(*optional[i]);

        /* discovery's newProxyFunc(): a proxy without an http(s) scheme gets "http://" prepended. */
        if (!isempty(c->discovery_proxy) && !strneq(c->discovery_proxy, "http", 4)) {
                s = errorf("http://%s", c->discovery_proxy);
                if (!s)
                        return -ENOMEM;
                free(c->discovery_proxy);
                c->discovery_proxy = s;
        }

        if (c->snapshot_count == 0)
                c->snapshot_count = DEFAULT_SNAPSHOT_COUNT;

        return 0;
}

static bool data_dir_has_member(const Config *c) {
        _cleanup_free_ char *p = errorf("%s/member", c->data_dir);

        return !p || access(p, F_OK) >= 0;
}

static void print_version(void) {
        (void) fflush(stderr);
        (void) printf("etcd Version: %s\n"
                      "Git SHA: c-rewrite\n"
                      "Go Version: none (C rewrite, not Go)\n"
                      "Go OS/Arch: linux/amd64\n",
                      ETCD2_VERSION);
        (void) fflush(stdout);
}

int config_load(int argc, char *argv[], char *envp[], Config **ret, int *ret_exit_status) {
        _cleanup_(parser_done) Parser p = {};
        _cleanup_free_ char *error = NULL;
        int first_arg = argc, r;

        assert(argc >= 0);
        assert(ret);
        assert(ret_exit_status);

        r = config_new_defaults(&p);
        if (r < 0)
                return r;

        r = parse_argv(&p, argc, argv, &first_arg);
        if (r < 0)
                return r;
        if (r == PARSE_HELP) {
                (void) fputs(config_help_text, stdout);
                (void) fputc('\n', stdout);
                (void) fflush(stdout);
                *ret_exit_status = 0;
                return 1;
        }
        if (r == PARSE_ERROR) {
                *ret_exit_status = EXIT_FLAG_ERROR;
                return 1;
        }

        if (first_arg < argc) {
                log_error("error verifying flags, '%s' is not a valid flag. See 'etcd --help'.", argv[first_arg]);
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }

        if (p.print_version) {
                print_version();
                *ret_exit_status = 0;
                return 1;
        }

        r = apply_env(&p, envp, &error);
        if (r == -EINVAL) {
                log_error("%s", error);
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }
        if (r < 0)
                return r;

        r = verify_flags(&p, &error);
        if (r == -EINVAL) {
                log_error("error verifying flags, %s. See 'etcd --help'.", error);
                if (strstr(error, "-advertise-client-urls is required"))
                        log_error("When listening on specific address(es), this etcd process must advertise "
                                  "accessible url(s) to each connected client.");
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }
        if (r < 0)
                return r;

        setup_logging(p.config);

        r = config_finish(p.config);
        if (r < 0)
                return r;

        r = config_compute_cluster(p.config, &error);
        if (r == -EINVAL) {
                log_error("error setting up initial cluster: %s", error);
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }
        if (r < 0)
                return r;

        /* etcdserver's bootstrap checks apply to a member (a proxy lists the others, not itself) and only while
         * the data dir holds no member yet. */
        if (p.config->proxy == PROXY_OFF && !data_dir_has_member(p.config) &&
            config_verify_bootstrap(p.config) < 0) {
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }

        if (config_check_supported(p.config) < 0) {
                *ret_exit_status = EXIT_INVALID;
                return 1;
        }

        *ret = TAKE_PTR(p.config);
        return 0;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;

        free(c->name);
        free(c->data_dir);
        free(c->wal_dir);
        etcd_url_list_done(&c->listen_peer_urls);
        etcd_url_list_done(&c->listen_client_urls);
        strv_free(c->cors);

        etcd_url_list_done(&c->initial_advertise_peer_urls);
        free(c->initial_cluster);
        cluster_members_free(c->initial_members, c->n_initial_members);
        free(c->initial_cluster_token);
        etcd_url_list_done(&c->advertise_client_urls);
        free(c->discovery);
        free(c->discovery_srv);
        free(c->discovery_fallback);
        free(c->discovery_proxy);

        free(c->cert_file);
        free(c->key_file);
        free(c->ca_file);
        free(c->trusted_ca_file);
        free(c->peer_cert_file);
        free(c->peer_key_file);
        free(c->peer_ca_file);
        free(c->peer_trusted_ca_file);

        free(c->log_package_levels);
        free(c->experimental_grpc_addr);
        free(c->bus_address);
        free(c->import_v2_data_dir);

        free(c);
        return NULL;
}
