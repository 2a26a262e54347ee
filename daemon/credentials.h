/* SPDX-License-Identifier: Apache-2.0 */
/* credentials.h - certificate and key flags naming systemd credentials ($CREDENTIALS_DIRECTORY). */
#pragma once

#include "config.h"

/* Number of Config fields credentials_resolve() looks at: --cert-file, --key-file, --trusted-ca-file,
 * --ca-file and their --peer-* twins. */
#define CREDENTIALS_N_FLAGS 8

/**
 * credentials_resolve() - turns credential names in the eight file flags into paths.
 *
 * With credentials_dir NULL or "" (the service runs without LoadCredential=/SetCredential=) nothing
 * changes: the flags keep etcd2's meaning, paths relative to the working directory. Otherwise a non-empty
 * value without a '/' names a credential and is replaced by "<credentials_dir>/<value>"; values with a '/'
 * stay paths. A named credential that is not a regular file in credentials_dir is a configuration error:
 * the error names the flag, its ETCD_* variable and the credential, and the caller exits 1 (falling back
 * to a file of that name in the working directory would load whatever happens to lie there).
 *
 * Reads no environment and no globals (main.c passes $CREDENTIALS_DIRECTORY); the only I/O is a stat()
 * of each named credential. Logs at info which flag came from which credential.
 *
 * Returns the number of flags resolved (>= 0), -ENOENT for a missing credential, -EINVAL for a name that
 * cannot be a credential ("." or ".."), -ENOMEM. On error *c is unchanged.
 */
int credentials_resolve(Config *c, const char *credentials_dir);
