/* SPDX-License-Identifier: Apache-2.0 */
/* log.c - stderr logging with "<N>" priority prefixes that journald turns into PRIORITY=; structured
 * messages go to the journal directly when stderr is a journald stream. */

#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "log.h"

int log_max_level = LOG_INFO;
static int log_prefix = -1; /* -1: decide on first use */

void log_set_max_level(int level) {
        log_max_level = level;
}

void log_set_prefix(bool on) {
        log_prefix = on;
}

static bool log_stderr_is_journal(void);

_printf_(3, 0) static int log_vline(int level, int error, const char *format, va_list ap) {
        char buf[4096];
        int saved = errno;

        if (log_prefix < 0)
                log_prefix = !isatty(STDERR_FILENO);
        if (error != 0)
                errno = abs(error);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        /* journald already knows us as SYSLOG_IDENTIFIER=etcd2: do not repeat the name in MESSAGE=. */
        if (log_prefix && log_stderr_is_journal())
                (void) fprintf(stderr, "<%d>%s\n", LOG_PRI(level), buf);
        else if (log_prefix)
                (void) fprintf(stderr, "<%d>etcd2: %s\n", LOG_PRI(level), buf);
        else
                (void) fprintf(stderr, "etcd2: %s\n", buf);
        errno = saved;
        return error == 0 ? 0 : -abs(error);
}

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) {
        va_list ap;
        int r;

        (void) file;
        (void) line;
        (void) func;
        va_start(ap, format);
        r = log_vline(level, error, format, ap);
        va_end(ap);
        return r;
}

/* journald connected our stderr if $JOURNAL_STREAM names stderr's device and inode (systemd.exec(5));
 * only then do structured messages go to the journal socket instead of stderr. Decided once. */
static int log_journal = -1;

void log_set_journal(int mode) {
        log_journal = mode < 0 ? -1 : !!mode;
}

static bool log_stderr_is_journal(void) {
        unsigned long long dev, ino;
        const char *e;
        struct stat st;
        int n = 0;

        if (log_journal >= 0)
                return log_journal;
        log_journal = false;
        e = getenv("JOURNAL_STREAM");
        if (isempty(e))
                return false;
        if (sscanf(e, "%llu:%llu%n", &dev, &ino, &n) != 2 || e[n] != '\0')
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        /* sd_journal_sendv() silently succeeds when the socket is missing: check it, or messages vanish. */
        log_journal = st.st_dev == (dev_t) dev && st.st_ino == (ino_t) ino &&
                access("/run/systemd/journal/socket", F_OK) >= 0;
        return log_journal;
}

static int iovec_printf(struct iovec *iov, const char *format, ...) _printf_(2, 3);
static int iovec_printf(struct iovec *iov, const char *format, ...) {
        va_list ap;
        char *s;
        int n;

        va_start(ap, format);
        n = vasprintf(&s, format, ap);
        va_end(ap);
        if (n < 0)
                return -ENOMEM;
        *iov = (struct iovec) { .iov_base = s, .iov_len = (size_t) n };
        return 0;
}

/* Sends one entry: PRIORITY, MESSAGE, CODE_*, SYSLOG_IDENTIFIER, ERRNO, then the caller's fields. */
static int log_journal_send(int level, int error, const char *file, int line, const char *func,
                            const char *const *fields, const char *message) {
        size_t n_fields = 0, n = 0, n_owned;
        struct iovec *iov;
        int r = 0;

        while (fields && fields[n_fields])
                n_fields++;
        iov = calloc(7 + n_fields, sizeof(struct iovec));
        if (!iov)
                return -ENOMEM;

        if (iovec_printf(&iov[n++], "PRIORITY=%d", LOG_PRI(level)) < 0 ||
            iovec_printf(&iov[n++], "MESSAGE=%s", message) < 0 ||
            iovec_printf(&iov[n++], "CODE_FILE=%s", strempty(file)) < 0 ||
            iovec_printf(&iov[n++], "CODE_LINE=%d", line) < 0 ||
            iovec_printf(&iov[n++], "CODE_FUNC=%s", strempty(func)) < 0 ||
            iovec_printf(&iov[n++], "SYSLOG_IDENTIFIER=%s", "etcd2") < 0 ||
            (error != 0 && iovec_printf(&iov[n++], "ERRNO=%d", abs(error)) < 0))
                r = -ENOMEM;
        n_owned = n;
        if (r >= 0) {
                for (size_t i = 0; i < n_fields; i++)
                        /* a field without '=' would make journald drop the whole entry */
                        if (strchr(fields[i], '='))
                                iov[n++] = (struct iovec) { .iov_base = (char *) fields[i],
                                                            .iov_len = strlen(fields[i]) };
                r = sd_journal_sendv(iov, (int) n);
        }
        for (size_t i = 0; i < n_owned; i++)
                free(iov[i].iov_base);
        free(iov);
        return r;
}

int log_struct_internal(int level, int error, const char *file, int line, const char *func,
                        const char *const *fields, const char *format, ...) {
        char buf[4096];
        va_list ap;
        int saved = errno;

        if (level > log_max_level)
                return error == 0 ? 0 : -abs(error);

        if (log_stderr_is_journal()) {
                if (error != 0)
                        errno = abs(error);
                va_start(ap, format);
                (void) vsnprintf(buf, sizeof(buf), format, ap);
                va_end(ap);
                errno = saved;
                /* Either the journal or stderr, never both: fall back only if the send failed. */
                if (log_journal_send(level, error, file, line, func, fields, buf) >= 0)
                        return error == 0 ? 0 : -abs(error);
                return log_internal(level, error, file, line, func, "%s", buf);
        }

        va_start(ap, format);
        (void) log_vline(level, error, format, ap);
        va_end(ap);
        return error == 0 ? 0 : -abs(error);
}
