/* SPDX-License-Identifier: Apache-2.0 */
/* log.c - stderr logging with "<N>" priority prefixes that journald turns into PRIORITY=. */

#include <stdarg.h>
#include <stdio.h>

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

_printf_(3, 0) static int log_vline(int level, int error, const char *format, va_list ap) {
        char buf[4096];
        int saved = errno;

        if (log_prefix < 0)
                log_prefix = !isatty(STDERR_FILENO);
        if (error != 0)
                errno = abs(error);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        if (log_prefix)
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

int log_struct_internal(int level, int error, const char *file, int line, const char *func,
                        const char *const *fields, const char *format, ...) {
        va_list ap;
        int r;

        (void) file;
        (void) line;
        (void) func;
        (void) fields; /* structured fields: wired to sd_journal_send in the systemd issue */
        if (level > log_max_level)
                return error == 0 ? 0 : -abs(error);
        va_start(ap, format);
        r = log_vline(level, error, format, ap);
        va_end(ap);
        return r;
}
