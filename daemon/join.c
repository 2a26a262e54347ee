/* SPDX-License-Identifier: Apache-2.0 */
/* join.c - before Raft starts: what the other members of --initial-cluster say about us. */

/*
 * Two start-up questions etcd2 asks the other members over their peer URLs (GET <peer>/members,
 * blocking, with short timeouts, before the event loop serves anything):
 *  - --initial-cluster-state existing: which member ID and cluster ID we have (etcd2's
 *    GetClusterFromRemotePeers), matched by our peer URLs;
 *  - new, on an empty data dir: whether they already know us with client URLs, i.e. this member ran
 *    before and lost its data (etcd2's isMemberBootstrapped), which must be refused.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "curl-glue.h"
#include "join.h"
#include "log.h"
#include "macro.h"

static size_t curl_collect(char *ptr, size_t size, size_t n, void *userdata) {
        FILE *f = userdata;

        return fwrite(ptr, size, n, f);
}

static size_t curl_header(char *ptr, size_t size, size_t n, void *userdata) {
        uint64_t *cluster = userdata;
        size_t len = size * n;
        const char *name = "X-Etcd-Cluster-ID:";

        if (len > strlen(name) && strncasecmp(ptr, name, strlen(name)) == 0) {
                char buf[64];
                size_t l = MIN(len - strlen(name), sizeof(buf) - 1);

                memcpy(buf, ptr + strlen(name), l);
                buf[l] = 0;
                *cluster = strtoull(buf, NULL, 16);
        }
        return len;
}

static bool url_sets_equal(const EtcdUrlList *a, json_object *urls) {
        size_t n = json_object_is_type(urls, json_type_array) ? json_object_array_length(urls) : 0;

        if (n != a->n)
                return false;
        for (size_t i = 0; i < a->n; i++) {
                bool found = false;

                for (size_t j = 0; j < n && !found; j++) {
                        const char *u = json_object_get_string(json_object_array_get_idx(urls, j));

                        found = u && streq(u, a->urls[i].str);
                }
                if (!found)
                        return false;
        }
        return true;
}

/* GET <peer URL>/members: the JSON array and the X-Etcd-Cluster-ID header. 0, or < 0 (logged at debug). */
static int fetch_members(const Config *c, const char *peer_url, long timeout_ms, json_object **ret,
                         uint64_t *ret_cluster) {
        TlsInfo tls = config_peer_tls_info(c);
        _cleanup_(freep) char *body = NULL, *url = NULL;
        size_t body_len = 0;
        uint64_t cluster = 0;
        json_object *j;
        CURL *curl;
        FILE *f;
        long code = 0;
        CURLcode cr;

        if (asprintf(&url, "%s/members", peer_url) < 0)
                return -ENOMEM;
        f = open_memstream(&body, &body_len);
        if (!f)
                return -ENOMEM;
        curl = curl_easy_init();
        if (!curl) {
                fclose(f);
                return -ENOMEM;
        }
        (void) curl_easy_setopt(curl, CURLOPT_URL, url);
        (void) curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        (void) curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, curl_collect);
        (void) curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, curl_header);
        (void) curl_easy_setopt(curl, CURLOPT_HEADERDATA, &cluster);
        /* https peer URLs: our peer certificate, the peer CA (etcd2's peer transport) */
        if (curl_glue_set_tls(curl, &tls) < 0) {
                curl_easy_cleanup(curl);
                fclose(f);
                return -EIO;
        }
        cr = curl_easy_perform(curl);
        (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(curl);
        fclose(f);
        if (cr != CURLE_OK || code != 200 || !body) {
                log_debug("Could not get the member list from %s: %s", url,
                          cr != CURLE_OK ? curl_easy_strerror(cr) : "bad status");
                return -EHOSTUNREACH;
        }
        j = json_tokener_parse(body);
        if (!j || !json_object_is_type(j, json_type_array)) {
                json_object_put(j);
                log_warning("Could not parse the member list from %s.", url);
                return -EBADMSG;
        }
        *ret = j;
        *ret_cluster = cluster;
        return 0;
}

/* --initial-cluster-state existing: ask the other members (GET <peer>/members) for the cluster; our
 * ID and the cluster ID come from there, not from hashing (etcd2's GetClusterFromRemotePeers). */
int join_fetch_existing_cluster(const Config *c, uint64_t *ret_member_id, uint64_t *ret_cluster_id) {
        const ClusterMember *self = NULL;

        for (size_t i = 0; i < c->n_initial_members; i++)
                if (streq(strempty(c->initial_members[i].name), strempty(c->name)))
                        self = &c->initial_members[i];
        if (!self)
                return log_error_errno(-EINVAL, "Couldn't find local name \"%s\" in the initial cluster configuration.",
                                       strempty(c->name));

        for (size_t i = 0; i < c->n_initial_members; i++) {
                const ClusterMember *m = &c->initial_members[i];

                if (m == self)
                        continue;
                for (size_t u = 0; u < m->peer_urls.n; u++) {
                        json_object *j = NULL;
                        uint64_t cluster = 0;

                        if (fetch_members(c, m->peer_urls.urls[u].str, 10000, &j, &cluster) < 0)
                                continue;
                        if (json_object_array_length(j) != c->n_initial_members) {
                                json_object_put(j);
                                return log_error_errno(-EINVAL, "Error validating peerURLs: member count is unequal.");
                        }
                        for (size_t k = 0; k < json_object_array_length(j); k++) {
                                json_object *e = json_object_array_get_idx(j, k), *id, *urls;

                                if (!json_object_object_get_ex(e, "id", &id) ||
                                    !json_object_object_get_ex(e, "peerURLs", &urls))
                                        continue;
                                if (url_sets_equal(&self->peer_urls, urls)) {
                                        *ret_member_id = json_object_get_uint64(id);
                                        *ret_cluster_id = cluster;
                                        json_object_put(j);
                                        if (*ret_member_id == 0 || cluster == 0)
                                                return log_error_errno(-EINVAL, "Got no member or cluster ID from %s.",
                                                                       m->peer_urls.urls[u].str);
                                        log_info("Joining existing cluster %" PRIx64 " as member %" PRIx64 ".",
                                                 cluster, *ret_member_id);
                                        return 0;
                                }
                        }
                        json_object_put(j);
                        return log_error_errno(-EINVAL, "Error validating peerURLs: unmatched member while checking PeerURLs.");
                }
        }
        return log_error_errno(-EHOSTUNREACH, "Cannot fetch cluster info from peer URLs: could not retrieve cluster "
                               "information from the given URLs.");
}

/* --initial-cluster-state new on an empty data dir: if the other members already know us with client
 * URLs, this member ran before and lost its data; refuse (etcd2's isMemberBootstrapped). */
int join_check_not_bootstrapped(const Config *c) {
        for (size_t i = 0; i < c->n_initial_members; i++) {
                const ClusterMember *m = &c->initial_members[i];

                if (m->id == c->member_id)
                        continue;
                for (size_t u = 0; u < m->peer_urls.n; u++) {
                        json_object *j = NULL;
                        uint64_t cluster = 0;

                        if (fetch_members(c, m->peer_urls.urls[u].str, 1000, &j, &cluster) < 0)
                                continue;
                        for (size_t k = 0; k < json_object_array_length(j); k++) {
                                json_object *e = json_object_array_get_idx(j, k), *id, *curls;

                                if (json_object_object_get_ex(e, "id", &id) &&
                                    json_object_get_uint64(id) == c->member_id &&
                                    json_object_object_get_ex(e, "clientURLs", &curls) &&
                                    json_object_is_type(curls, json_type_array) && json_object_array_length(curls) > 0) {
                                        json_object_put(j);
                                        return log_error_errno(-EEXIST, "member %" PRIx64 " has already been bootstrapped",
                                                               c->member_id);
                                }
                        }
                        json_object_put(j);
                        break;
                }
        }
        return 0;
}
