/* SPDX-License-Identifier: Apache-2.0 */
/* fault-sync.c - LD_PRELOAD shim: make the syncs (and optionally the writes) of a process fail on demand.
 *
 * What a dying or full disk does to RocksDB, without one: once the file named by $FAULT_SYNC_TRIGGER
 * exists (a test creates it mid-run to arm the fault), fdatasync(), fsync(), syncfs() and
 * sync_file_range() fail with $FAULT_SYNC_ERRNO (EIO by default; a number or EIO/ENOSPC/EDQUOT/EROFS),
 * after $FAULT_SYNC_AFTER armed calls that still succeed (default 0). With FAULT_SYNC_WRITES=1,
 * write(), pwrite() and their vector forms to regular files fail the same way (what a full file system
 * does to an append; sockets, pipes and stdout/stderr are left alone). RocksDB 7.8 (strace) syncs its
 * WAL with fdatasync(), its MANIFEST and directories with fsync(), and calls sync_file_range() for
 * background range syncs.
 * The first injected failure is reported on stderr ("fault-sync: ...") so that a test log shows it.
 * Built as a shared module for LD_PRELOAD, and compiled into unit tests directly. */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_uint armed_calls;
static atomic_bool reported;

static int fault_errno(void) {
        const char *e = getenv("FAULT_SYNC_ERRNO");

        if (!e || !*e || strcmp(e, "EIO") == 0)
                return EIO;
        if (strcmp(e, "ENOSPC") == 0)
                return ENOSPC;
        if (strcmp(e, "EDQUOT") == 0)
                return EDQUOT;
        if (strcmp(e, "EROFS") == 0)
                return EROFS;
        return atoi(e) > 0 ? atoi(e) : EIO;
}

/* Returns the errno to fail with, or 0 to call the real function. */
static int should_fail(const char *what) {
        const char *trigger = getenv("FAULT_SYNC_TRIGGER"), *after = getenv("FAULT_SYNC_AFTER");
        int saved = errno, e;

        if (!trigger || !*trigger || access(trigger, F_OK) < 0) {
                errno = saved;
                return 0;
        }
        errno = saved;
        if (after && atomic_fetch_add(&armed_calls, 1) < (unsigned) atoi(after))
                return 0;
        e = fault_errno();
        if (!atomic_exchange(&reported, true)) {
                char msg[128];
                int n = snprintf(msg, sizeof msg, "fault-sync: injecting %s into %s (pid %d)\n",
                                 strerrorname_np(e) ?: "?", what, (int) getpid());

                if (n > 0)
                        (void) !write(STDERR_FILENO, msg, (size_t) n < sizeof msg ? (size_t) n : sizeof msg - 1);
        }
        return e;
}

static bool writes_too(int fd) {
        const char *w = getenv("FAULT_SYNC_WRITES");
        struct stat st;

        /* not stdout/stderr: the test reads the daemon's log from a regular file */
        return fd > STDERR_FILENO && w && strcmp(w, "1") == 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

#define REAL(name) ((__typeof__(&name)) dlsym(RTLD_NEXT, #name))

#define FAIL_OR(what, e)                                                                        \
        do {                                                                                    \
                int _e = should_fail(what);                                                     \
                if (_e) {                                                                       \
                        errno = _e;                                                             \
                        return e;                                                               \
                }                                                                               \
        } while (0)

int fdatasync(int fd) {
        FAIL_OR("fdatasync", -1);
        return REAL(fdatasync)(fd);
}

int fsync(int fd) {
        FAIL_OR("fsync", -1);
        return REAL(fsync)(fd);
}

int syncfs(int fd) {
        FAIL_OR("syncfs", -1);
        return REAL(syncfs)(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
        /* flags 0 does nothing: RocksDB calls it so on each new file to probe for support, and asserts
         * that it succeeds (or ENOSYS); a failing disk would not fail it either. */
        if (flags != 0)
                FAIL_OR("sync_file_range", -1);
        return REAL(sync_file_range)(fd, offset, nbytes, flags);
}

ssize_t write(int fd, const void *buf, size_t count) {
        if (writes_too(fd))
                FAIL_OR("write", -1);
        return REAL(write)(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
        if (writes_too(fd))
                FAIL_OR("pwrite", -1);
        return REAL(pwrite)(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
        if (writes_too(fd))
                FAIL_OR("writev", -1);
        return REAL(writev)(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
        if (writes_too(fd))
                FAIL_OR("pwritev", -1);
        return REAL(pwritev)(fd, iov, iovcnt, offset);
}
