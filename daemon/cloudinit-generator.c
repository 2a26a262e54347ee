/* SPDX-License-Identifier: Apache-2.0 */
/* cloudinit-generator.c - etcd2-cloudinit-generator: a cloud-config's coreos: etcd2: section as a drop-in.
 *
 * A systemd generator (systemd.generator(7)) doing what coreos-cloudinit did for CoreOS's etcd2.service:
 * it reads a cloud-config, takes the `coreos:` -> `etcd2:` mapping, and writes
 *
 *     <normal-dir>/etcd2.service.d/20-cloudinit.conf
 *
 * with `[Service]` and one `Environment="ETCD_X=value"` line per key that has a non-zero value, in the
 * order of coreos-cloudinit's config.Etcd2 struct (alphabetical by YAML key). As there, zero values (false,
 * 0, "") are left out, so they cannot override anything.
 *
 * Input: $ETCD2_CLOUD_CONFIG if set, else /etc/etcd2/cloud-config.yml. A missing file, or one without a
 * coreos.etcd2 mapping, is not an error: no drop-in. Keys are etcd2's flag names without the leading
 * dashes, with hyphens or underscores (`listen-client-urls` = `listen_client_urls`). `$public_ipv4` and
 * `$private_ipv4` in values are replaced by COREOS_PUBLIC_IPV4 / COREOS_PRIVATE_IPV4 from /etc/environment
 * (as CoreOS's coreos-metadata/oem scripts wrote it; $ETCD2_ENVIRONMENT_FILE overrides the path).
 *
 * Errors (unparseable YAML, unknown keys, a key given twice, a bad boolean/integer, `proxy` not
 * on|off|readonly, a $..._ipv4 without its variable): one message per problem on stderr (the kernel log,
 * /dev/kmsg, when stderr is /dev/null as under systemd) and no drop-in
 * at all (a stale one is removed), exit status 1. The file is written to a temporary name and renamed, so
 * systemd never sees half of it.
 *
 * Usage: etcd2-cloudinit-generator NORMAL-DIR [EARLY-DIR LATE-DIR] (systemd passes all three). */

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <yaml.h>

#include "log.h"

#define DEFAULT_CLOUD_CONFIG "/etc/etcd2/cloud-config.yml"
#define DEFAULT_ENVIRONMENT_FILE "/etc/environment"
#define DROPIN_DIR "etcd2.service.d"
#define DROPIN_NAME "20-cloudinit.conf"

typedef enum FieldType {
        FIELD_STRING,
        FIELD_BOOL,
        FIELD_INT,
        FIELD_PROXY,    /* a string that must be on, off or readonly */
} FieldType;

typedef struct Field {
        const char *key; /* YAML key, underscores */
        FieldType type;
} Field;

/* coreos-cloudinit config.Etcd2, in its order; the variable is ETCD_ + the key in upper case. */
static const Field fields[] = {
        { "advertise_client_urls",       FIELD_STRING },
        { "ca_file",                     FIELD_STRING },
        { "cert_file",                   FIELD_STRING },
        { "client_cert_auth",            FIELD_BOOL   },
        { "cors",                        FIELD_STRING },
        { "data_dir",                    FIELD_STRING },
        { "debug",                       FIELD_BOOL   },
        { "discovery",                   FIELD_STRING },
        { "discovery_fallback",          FIELD_STRING },
        { "discovery_srv",               FIELD_STRING },
        { "discovery_proxy",             FIELD_STRING },
        { "election_timeout",            FIELD_INT    },
        { "enable_pprof",                FIELD_BOOL   },
        { "force_new_cluster",           FIELD_BOOL   },
        { "heartbeat_interval",          FIELD_INT    },
        { "initial_advertise_peer_urls", FIELD_STRING },
        { "initial_cluster",             FIELD_STRING },
        { "initial_cluster_state",       FIELD_STRING },
        { "initial_cluster_token",       FIELD_STRING },
        { "key_file",                    FIELD_STRING },
        { "listen_client_urls",          FIELD_STRING },
        { "listen_peer_urls",            FIELD_STRING },
        { "log_package_levels",          FIELD_STRING },
        { "max_snapshots",               FIELD_INT    },
        { "max_wals",                    FIELD_INT    },
        { "name",                        FIELD_STRING },
        { "peer_ca_file",                FIELD_STRING },
        { "peer_cert_file",              FIELD_STRING },
        { "peer_key_file",               FIELD_STRING },
        { "peer_client_cert_auth",       FIELD_BOOL   },
        { "peer_trusted_ca_file",        FIELD_STRING },
        { "proxy",                       FIELD_PROXY  },
        { "proxy_dial_timeout",          FIELD_INT    },
        { "proxy_failure_wait",          FIELD_INT    },
        { "proxy_read_timeout",          FIELD_INT    },
        { "proxy_refresh_interval",      FIELD_INT    },
        { "proxy_write_timeout",         FIELD_INT    },
        { "snapshot_count",              FIELD_INT    },
        { "strict_reconfig_check",       FIELD_BOOL   },
        { "trusted_ca_file",             FIELD_STRING },
        { "wal_dir",                     FIELD_STRING },
};

#define N_FIELDS ELEMENTSOF(fields)

typedef struct Conversion {
        const char *path;          /* of the cloud-config, for messages */
        const char *public_ipv4;   /* NULL if unset or empty */
        const char *private_ipv4;
        char *values[N_FIELDS];    /* normalized value, or NULL when zero/absent */
        bool seen[N_FIELDS];
        unsigned n_errors;
} Conversion;

static void conversion_done(Conversion *c) {
        for (size_t i = 0; i < N_FIELDS; i++)
                free(c->values[i]);
}

static void yaml_parser_deletep(yaml_parser_t *p) {
        yaml_parser_delete(p);
}

static void yaml_document_deletep(yaml_document_t *d) {
        yaml_document_delete(d);
}

_printf_(3, 4) static void conv_error(Conversion *c, const yaml_node_t *n, const char *format, ...) {
        char buf[1024];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);
        if (n)
                log_error("%s:%zu: %s", c->path, n->start_mark.line + 1, buf);
        else
                log_error("%s: %s", c->path, buf);
        c->n_errors++;
}

static const char *scalar(const yaml_node_t *n) {
        return n && n->type == YAML_SCALAR_NODE ? (const char *) n->data.scalar.value : NULL;
}

/* A plain scalar that YAML 1.1 reads as null (also an empty value such as "name:"). */
static bool scalar_is_null(const yaml_node_t *n) {
        const char *s = scalar(n);

        if (!s || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
                return false;
        return streq(s, "") || streq(s, "~") || streq(s, "null") || streq(s, "Null") || streq(s, "NULL");
}

/* Looks `key` up in mapping node `map` (NULL if absent or if `map` is no mapping). */
static yaml_node_t *mapping_get(yaml_document_t *doc, yaml_node_t *map, const char *key) {
        if (!map || map->type != YAML_MAPPING_NODE)
                return NULL;
        for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
                const char *k = scalar(yaml_document_get_node(doc, p->key));
                if (k && streq(k, key))
                        return yaml_document_get_node(doc, p->value);
        }
        return NULL;
}

static int field_lookup(const char *key) {
        char norm[64];
        size_t i;

        for (i = 0; key[i]; i++) {
                if (i + 1 >= sizeof(norm))
                        return -ENOENT;
                norm[i] = key[i] == '-' ? '_' : key[i];
        }
        norm[i] = '\0';
        for (size_t f = 0; f < N_FIELDS; f++)
                if (streq(fields[f].key, norm))
                        return (int) f;
        return -ENOENT;
}

/* The YAML 1.1 booleans (as Go's yaml package reads them into a bool). */
static int parse_yaml_bool(const char *s) {
        static const char *const yes[] = {
                "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
        };
        static const char *const no[] = {
                "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
        };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (streq(s, yes[i]))
                        return 1;
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (streq(s, no[i]))
                        return 0;
        return -EINVAL;
}

/* Replaces every $public_ipv4 / $private_ipv4 (coreos-cloudinit substituted exactly these spellings). */
static int substitute(Conversion *c, const yaml_node_t *n, const char *in, char **ret) {
        static const char pub[] = "$public_ipv4", priv[] = "$private_ipv4";
        _cleanup_(freep) char *out = NULL;
        size_t len = 0, cap = strlen(in) + 1;

        out = malloc(cap);
        if (!out)
                return log_oom();
        for (const char *p = in; *p;) {
                const char *with = NULL;
                size_t skip = 0;

                if (strneq(p, pub, strlen(pub))) {
                        with = c->public_ipv4;
                        skip = strlen(pub);
                } else if (strneq(p, priv, strlen(priv))) {
                        with = c->private_ipv4;
                        skip = strlen(priv);
                }
                if (skip > 0 && !with) {
                        conv_error(c, n, "'%.*s' used, but %s is not set in the environment file",
                                   (int) skip, p,
                                   skip == strlen(pub) ? "COREOS_PUBLIC_IPV4" : "COREOS_PRIVATE_IPV4");
                        return -EINVAL;
                }
                if (!with) {
                        with = p;
                        skip = 1;
                }
                size_t wl = with == p ? 1 : strlen(with);
                if (len + wl + 1 > cap) {
                        char *t;
                        cap = (len + wl + 1) * 2;
                        t = realloc(out, cap);
                        if (!t)
                                return log_oom();
                        out = t;
                }
                memcpy(out + len, with, wl);
                len += wl;
                p += skip;
        }
        out[len] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

/* One key/value of coreos.etcd2: checks it and stores the normalized, non-zero value. */
static int convert_pair(Conversion *c, yaml_node_t *k, yaml_node_t *v) {
        _cleanup_(freep) char *value = NULL;
        const char *key = scalar(k), *s;
        int f, r;

        if (!key) {
                conv_error(c, k, "coreos.etcd2: keys must be plain strings");
                return -EINVAL;
        }
        f = field_lookup(key);
        if (f < 0) {
                conv_error(c, k, "coreos.etcd2: unknown key '%s'", key);
                return -EINVAL;
        }
        if (c->seen[f]) {
                conv_error(c, k, "coreos.etcd2: '%s' is given more than once", fields[f].key);
                return -EINVAL;
        }
        c->seen[f] = true;

        if (scalar_is_null(v))
                return 0; /* a zero value: omitted */
        s = scalar(v);
        if (!s) {
                conv_error(c, v, "coreos.etcd2.%s: expected a single value, not a list or mapping", key);
                return -EINVAL;
        }

        /* As Go's yaml package: a quoted scalar is a string, which a bool or int field does not take. */
        if ((fields[f].type == FIELD_BOOL || fields[f].type == FIELD_INT) &&
            v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
                conv_error(c, v, "coreos.etcd2.%s: '%s' is quoted, but this setting takes a %s", key, s,
                           fields[f].type == FIELD_BOOL ? "boolean" : "number");
                return -EINVAL;
        }

        switch (fields[f].type) {
        case FIELD_BOOL:
                r = parse_yaml_bool(s);
                if (r < 0) {
                        conv_error(c, v, "coreos.etcd2.%s: '%s' is not a boolean", key, s);
                        return -EINVAL;
                }
                if (r == 0)
                        return 0;
                value = strdup("true");
                break;

        case FIELD_INT: {
                char *end;
                long long i;

                errno = 0;
                i = strtoll(s, &end, 0);
                if (errno != 0 || end == s || *end != '\0' || isspace((unsigned char) *s)) {
                        conv_error(c, v, "coreos.etcd2.%s: '%s' is not an integer", key, s);
                        return -EINVAL;
                }
                if (i == 0)
                        return 0;
                if (asprintf(&value, "%lld", i) < 0)
                        value = NULL;
                break;
        }

        case FIELD_PROXY:
                if (!streq(s, "on") && !streq(s, "off") && !streq(s, "readonly")) {
                        conv_error(c, v, "coreos.etcd2.proxy: '%s' is not one of on, off, readonly", s);
                        return -EINVAL;
                }
                __attribute__((fallthrough));
        case FIELD_STRING:
                r = substitute(c, v, s, &value);
                if (r < 0)
                        return r;
                if (isempty(value))
                        return 0;
                for (const char *p = value; *p; p++)
                        if ((unsigned char) *p < ' ' || *p == 0x7f) {
                                conv_error(c, v, "coreos.etcd2.%s: control characters are not allowed", key);
                                return -EINVAL;
                        }
                break;
        }
        if (!value)
                return log_oom();
        c->values[f] = TAKE_PTR(value);
        return 0;
}

/* Parses the cloud-config text; returns 0 (values filled in, maybe none), or < 0 after logging. */
static int convert(Conversion *c, const char *text, size_t size) {
        _cleanup_(yaml_parser_deletep) yaml_parser_t parser = {};
        _cleanup_(yaml_document_deletep) yaml_document_t doc = {};
        yaml_node_t *root, *coreos, *etcd2;
        int r = 0;

        if (!yaml_parser_initialize(&parser))
                return log_oom();
        yaml_parser_set_input_string(&parser, (const unsigned char *) text, size);
        if (!yaml_parser_load(&parser, &doc)) {
                log_error("%s:%zu:%zu: invalid YAML: %s%s%s", c->path, parser.problem_mark.line + 1,
                          parser.problem_mark.column + 1, strempty(parser.problem),
                          parser.context ? " " : "", strempty(parser.context));
                c->n_errors++;
                /* yaml_parser_load() leaves nothing to delete on failure. */
                memset(&doc, 0, sizeof(doc));
                return -EINVAL;
        }

        root = yaml_document_get_root_node(&doc);
        if (!root || scalar_is_null(root))
                return 0; /* an empty file */
        if (root->type != YAML_MAPPING_NODE) {
                conv_error(c, root, "a cloud-config is a mapping at the top level");
                return -EINVAL;
        }
        coreos = mapping_get(&doc, root, "coreos");
        if (!coreos || scalar_is_null(coreos))
                return 0;
        if (coreos->type != YAML_MAPPING_NODE) {
                conv_error(c, coreos, "coreos: expected a mapping");
                return -EINVAL;
        }
        etcd2 = mapping_get(&doc, coreos, "etcd2");
        if (!etcd2 || scalar_is_null(etcd2))
                return 0;
        if (etcd2->type != YAML_MAPPING_NODE) {
                conv_error(c, etcd2, "coreos.etcd2: expected a mapping of etcd2 flag names to values");
                return -EINVAL;
        }

        /* Every problem is reported, not only the first. */
        for (yaml_node_pair_t *p = etcd2->data.mapping.pairs.start; p < etcd2->data.mapping.pairs.top; p++) {
                int k = convert_pair(c, yaml_document_get_node(&doc, p->key),
                                     yaml_document_get_node(&doc, p->value));
                if (k == -ENOMEM)
                        return k;
                if (k < 0)
                        r = k;
        }
        return r;
}

/* Environment="ETCD_X=value": inside the quotes systemd unescapes \\ and \" and expands %-specifiers. */
static int write_value(FILE *f, size_t field, const char *value) {
        fputs("Environment=\"ETCD_", f);
        for (const char *k = fields[field].key; *k; k++)
                fputc(toupper((unsigned char) *k), f);
        fputc('=', f);
        for (const char *p = value; *p; p++) {
                if (*p == '"' || *p == '\\')
                        fputc('\\', f);
                else if (*p == '%')
                        fputc('%', f);
                fputc(*p, f);
        }
        fputs("\"\n", f);
        return ferror(f) ? -EIO : 0;
}

/* /etc/environment in pam_env's simple form: KEY=VALUE lines, optional quotes, '#' comments. */
static int read_environment(const char *path, char **ret_public, char **ret_private) {
        _cleanup_(freep) char *line = NULL, *pub = NULL, *priv = NULL;
        FILE *f;
        size_t n = 0;

        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT) {
                        *ret_public = *ret_private = NULL;
                        return 0;
                }
                return log_error_errno(-errno, "Failed to open '%s': %m", path);
        }
        while (getline(&line, &n, f) >= 0) {
                char *p = line, *eq, *v, **dst;
                size_t l;

                p += strspn(p, " \t");
                if (strneq(p, "export ", 7))
                        p += 7;
                eq = strchr(p, '=');
                if (*p == '#' || !eq)
                        continue;
                *eq = '\0';
                if (streq(p, "COREOS_PUBLIC_IPV4"))
                        dst = &pub;
                else if (streq(p, "COREOS_PRIVATE_IPV4"))
                        dst = &priv;
                else
                        continue;
                v = eq + 1;
                l = strcspn(v, "\r\n");
                v[l] = '\0';
                if (l >= 2 && (v[0] == '"' || v[0] == '\'') && v[l - 1] == v[0]) {
                        v[l - 1] = '\0';
                        v++;
                }
                free(*dst);
                *dst = isempty(v) ? NULL : strdup(v);
                if (!isempty(v) && !*dst) {
                        fclose(f);
                        return log_oom();
                }
        }
        fclose(f);
        *ret_public = TAKE_PTR(pub);
        *ret_private = TAKE_PTR(priv);
        return 0;
}

static int read_file(const char *path, char **ret, size_t *ret_size) {
        _cleanup_(freep) char *buf = NULL;
        size_t size = 0, cap = 0;
        FILE *f;

        f = fopen(path, "re");
        if (!f)
                return -errno;
        for (;;) {
                size_t k;

                if (size + 4096 > cap) {
                        char *t;
                        cap = (size + 4096) * 2;
                        if (cap > 16 * 1024 * 1024) {
                                fclose(f);
                                return -EFBIG;
                        }
                        t = realloc(buf, cap);
                        if (!t) {
                                fclose(f);
                                return -ENOMEM;
                        }
                        buf = t;
                }
                k = fread(buf + size, 1, cap - size - 1, f);
                size += k;
                if (k == 0)
                        break;
        }
        if (ferror(f)) {
                fclose(f);
                return -EIO;
        }
        fclose(f);
        buf[size] = '\0';
        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

static int write_dropin(const char *dir, const Conversion *c) {
        _cleanup_(freep) char *d = NULL, *tmp = NULL, *final = NULL;
        FILE *f;
        int fd, r = 0;

        if (asprintf(&d, "%s/" DROPIN_DIR, dir) < 0 ||
            asprintf(&final, "%s/" DROPIN_NAME, d) < 0 ||
            asprintf(&tmp, "%s/." DROPIN_NAME ".XXXXXX", d) < 0)
                return log_oom();
        if (mkdir(d, 0755) < 0 && errno != EEXIST)
                return log_error_errno(-errno, "Failed to create '%s': %m", d);

        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return log_error_errno(-errno, "Failed to create '%s': %m", tmp);
        (void) fchmod(fd, 0644);
        f = fdopen(fd, "w");
        if (!f) {
                r = -errno;
                (void) close(fd);
                (void) unlink(tmp);
                return log_error_errno(r, "Failed to open '%s': %m", tmp);
        }
        fprintf(f, "# Generated by etcd2-cloudinit-generator from %s (coreos: etcd2:). Do not edit.\n"
                   "[Service]\n", c->path);
        for (size_t i = 0; i < N_FIELDS && r == 0; i++)
                if (c->values[i])
                        r = write_value(f, i, c->values[i]);
        if (fflush(f) != 0 || ferror(f))
                r = -EIO;
        if (fclose(f) != 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, final) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return log_error_errno(r, "Failed to write '%s': %m", final);
        }
        return 0;
}

static void remove_dropin(const char *dir) {
        _cleanup_(freep) char *p = NULL;

        if (asprintf(&p, "%s/" DROPIN_DIR "/" DROPIN_NAME, dir) < 0)
                return;
        if (unlink(p) >= 0)
                log_notice("Removed stale '%s'", p);
}

/* systemd runs generators with stdout/stderr on /dev/null (PID 1's stdio): then log to the kernel log,
 * as systemd's own generators do, so that "journalctl -k" / dmesg show why there is no drop-in. */
static void log_setup_generator(void) {
        struct stat st;
        int fd;

        if (fstat(STDERR_FILENO, &st) >= 0 && !(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)))
                return;
        fd = open("/dev/kmsg", O_WRONLY | O_NOCTTY | O_APPEND | O_CLOEXEC);
        if (fd < 0)
                return;
        if (fd != STDERR_FILENO) {
                (void) dup2(fd, STDERR_FILENO);
                (void) close(fd);
        }
        log_set_prefix(true);
}

int main(int argc, char *argv[]) {
        _cleanup_(freep) char *text = NULL, *pub = NULL, *priv = NULL;
        Conversion c = {};
        const char *dir, *envfile;
        size_t size = 0;
        bool any = false;
        int r;

        log_setup_generator();
        if (argc != 2 && argc != 4) {
                log_error("Usage: %s NORMAL-DIR [EARLY-DIR LATE-DIR]", program_invocation_short_name);
                return 1;
        }
        dir = argv[1];
        c.path = getenv("ETCD2_CLOUD_CONFIG");
        if (isempty(c.path))
                c.path = DEFAULT_CLOUD_CONFIG;
        envfile = getenv("ETCD2_ENVIRONMENT_FILE");
        if (isempty(envfile))
                envfile = DEFAULT_ENVIRONMENT_FILE;

        r = read_file(c.path, &text, &size);
        if (r == -ENOENT) {
                log_debug("No cloud-config at '%s', nothing to do", c.path);
                remove_dropin(dir);
                return 0;
        }
        if (r < 0) {
                log_error_errno(r, "Failed to read cloud-config '%s': %m", c.path);
                remove_dropin(dir);
                return 1;
        }
        if (strlen(text) != size) {
                log_error("%s: contains a NUL byte, not a cloud-config", c.path);
                remove_dropin(dir);
                return 1;
        }

        r = read_environment(envfile, &pub, &priv);
        if (r < 0) {
                remove_dropin(dir);
                return 1;
        }
        c.public_ipv4 = pub;
        c.private_ipv4 = priv;

        r = convert(&c, text, size);
        if (r < 0) {
                log_error("%s: %u problem(s) in the cloud-config, not writing %s/" DROPIN_NAME,
                          c.path, MAX(c.n_errors, 1u), DROPIN_DIR);
                conversion_done(&c);
                remove_dropin(dir);
                return 1;
        }
        for (size_t i = 0; i < N_FIELDS; i++)
                any = any || c.values[i];
        if (!any) {
                log_debug("%s: no non-zero coreos.etcd2 settings, no drop-in", c.path);
                conversion_done(&c);
                remove_dropin(dir);
                return 0;
        }
        r = write_dropin(dir, &c);
        conversion_done(&c);
        return r < 0 ? 1 : 0;
}
