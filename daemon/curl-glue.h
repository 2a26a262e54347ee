/* SPDX-License-Identifier: Apache-2.0 */
/* curl-glue.h - libcurl's multi interface driven by sd-event, plus a small request helper. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <systemd/sd-event.h>

#include "macro.h"
#include "tls.h"

/*
 * Two layers:
 *
 * CurlGlue: one CURLM on one sd_event. curl_glue_add() takes any CURL easy handle and reports its
 * completion through a per-handle callback, always from the event loop and never from inside
 * libcurl, with the handle already removed from the multi handle: the callback may free it, or
 * curl_glue_add() it again (that reuses its keep-alive connection). The glue owns CURLOPT_PRIVATE
 * of added handles.
 *
 * CurlRequest: an easy handle with our defaults (CURLOPT_NOSIGNAL, CURLOPT_TCP_NODELAY, http/https
 * only), a timeout, and the response body either collected into a buffer with a size cap or streamed
 * through a callback (long-poll watches, streaming connections). A request can be started again once
 * it finished. Requests are children of the glue: freeing the glue first detaches them (they stop,
 * without callback, and can then only be freed).
 *
 * Reentrancy: stream callbacks run inside libcurl. From there only curl_request_cancel(),
 * curl_glue_cancel() and curl_glue_add()/curl_request_start() of other handles may be called (the
 * glue defers them to the loop); freeing a request or the glue there is a bug (asserted).
 */

typedef struct CurlGlue CurlGlue;
typedef struct CurlRequest CurlRequest;

/* `result` is CURLE_OK when the transfer completed (look at the HTTP status yourself). */
typedef void (*curl_glue_finished_t)(CurlGlue *g, CURL *easy, CURLcode result, void *userdata);

int curl_glue_new(sd_event *event, CurlGlue **ret);
/* Removes unfinished handles without calling their callbacks; does not free easy handles it did
 * not create. Requests of the glue are detached (curl_request_free() them as usual). */
CurlGlue *curl_glue_free(CurlGlue *g);
DEFINE_TRIVIAL_CLEANUP_FUNC(CurlGlue *, curl_glue_free);

/* A fresh easy handle with our defaults; `url` may be NULL. */
int curl_glue_make_easy(const char *url, CURL **ret);
/* etcd2's TLSInfo on an easy handle: present cert_file/key_file, trust trusted_ca_file (CURLOPT_SSLCERT,
 * CURLOPT_SSLKEY, CURLOPT_CAINFO); NULL or empty fields leave curl's defaults (no certificate, the
 * system's roots as curl_glue_set_system_roots() finds them). info may be NULL (the system's roots only). */
int curl_glue_set_tls(CURL *easy, const TlsInfo *info);
/* Without a CA of ours: the system's roots as Go finds them ($SSL_CERT_FILE, $SSL_CERT_DIR; tls.h). */
int curl_glue_set_system_roots(CURL *easy);

/* -EBUSY if `easy` is added already. */
int curl_glue_add(CurlGlue *g, CURL *easy, curl_glue_finished_t cb, void *userdata);
/* Stops an unfinished transfer; its callback will not be called. Returns 1 if it was running, 0
 * otherwise. From inside libcurl the removal happens on the next loop iteration (the handle must
 * then stay alive until the loop ran once more). */
int curl_glue_cancel(CurlGlue *g, CURL *easy);
/* Number of handles added and not yet finished or cancelled. */
unsigned curl_glue_n_running(const CurlGlue *g);

/* Body chunks as they arrive (stream mode). Return < 0 to abort: the request then finishes with
 * CURLE_WRITE_ERROR and curl_request_data_error() returns that value. */
typedef int (*curl_request_data_t)(CurlRequest *req, const void *data, size_t size, void *userdata);
typedef void (*curl_request_done_t)(CurlRequest *req, CURLcode result, void *userdata);

/* Default cap of a collected body. */
#define CURL_REQUEST_BODY_MAX_DEFAULT ((size_t) 16 * 1024 * 1024)

int curl_request_new(CurlGlue *g, const char *url, CurlRequest **ret);
/* Cancels the transfer if unfinished (no done callback). */
CurlRequest *curl_request_free(CurlRequest *req);
DEFINE_TRIVIAL_CLEANUP_FUNC(CurlRequest *, curl_request_free);

/* For anything not covered here (method, TLS, ...). Leave CURLOPT_PRIVATE, CURLOPT_WRITEFUNCTION,
 * CURLOPT_WRITEDATA and CURLOPT_HTTPHEADER alone. */
CURL *curl_request_get_easy(CurlRequest *req);
int curl_request_set_url(CurlRequest *req, const char *url);
/* Whole transfer, connection included; 0 = none. Applies from the next start. */
void curl_request_set_timeout(CurlRequest *req, uint64_t usec);
/* Collect mode: bodies larger than `max` fail with CURLE_FILESIZE_EXCEEDED. */
void curl_request_set_body_max(CurlRequest *req, size_t max);
/* Stream mode: body bytes go to `cb` and are not collected. NULL = back to collect mode. */
void curl_request_set_stream(CurlRequest *req, curl_request_data_t cb);
/* Appends "Name: value" to the request headers. */
int curl_request_add_header(CurlRequest *req, const char *header);
/* Sets a method (NULL = POST) and a request body, copied. */
int curl_request_set_body(CurlRequest *req, const char *method, const void *body, size_t size);
void curl_request_set_userdata(CurlRequest *req, void *userdata);
void *curl_request_get_userdata(CurlRequest *req);

/* Starts (or restarts, once finished) the transfer; -EBUSY while running, -ESTALE if the glue is
 * gone. The done callback runs from the event loop; from there the request may be freed or started
 * again. */
int curl_request_start(CurlRequest *req, curl_request_done_t done);
/* Like curl_glue_cancel(): no done callback; safe from inside a stream callback. */
int curl_request_cancel(CurlRequest *req);
bool curl_request_is_running(const CurlRequest *req);

/* After completion: the HTTP status (0 if no response), the collected body (NUL-terminated, NULL
 * and 0 if empty), the error returned by the stream callback, and libcurl's error text. */
long curl_request_status(CurlRequest *req);
const char *curl_request_body(CurlRequest *req, size_t *ret_size);
int curl_request_data_error(const CurlRequest *req);
const char *curl_request_error_message(const CurlRequest *req);
