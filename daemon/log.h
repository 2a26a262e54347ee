/* SPDX-License-Identifier: Apache-2.0 */
/* log.h - one stderr line per message with sd-daemon priority prefixes, for journald. */
#pragma once

#include <syslog.h>

#include "macro.h"

/* Global threshold: messages with priority > log_max_level are dropped. LOG_INFO by default,
 * LOG_DEBUG with --debug. */
extern int log_max_level;

void log_set_max_level(int level);
/* Force or suppress the "<N>" prefixes (default: on unless stderr is a tty). */
void log_set_prefix(bool on);

/* Writes one line; returns -abs(error) (or 0 if error == 0) so callers can `return log_..._errno(r, ...)`.
 * errno is set to abs(error) while formatting, so %m works. */
int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) _printf_(6, 7);

/* Structured variant: fields are "KEY=value" strings (upper-case journal field names), NULL-terminated.
 * If stderr is connected to journald ($JOURNAL_STREAM matches stderr's st_dev:st_ino) the message goes to
 * the journal only, via sd_journal_sendv(), with PRIORITY, MESSAGE, CODE_FILE/LINE/FUNC,
 * SYSLOG_IDENTIFIER=etcd2, ERRNO (if error != 0) and the fields; otherwise (or if that send fails) the plain
 * prefixed line goes to stderr only, as log_internal() writes it. Same return value as log_internal(). */
int log_struct_internal(int level, int error, const char *file, int line, const char *func,
                        const char *const *fields, const char *format, ...) _printf_(7, 8);

/* Overrides the $JOURNAL_STREAM detection: 1 journal, 0 stderr, -1 detect again on next use (tests). */
void log_set_journal(int mode);

/* log_struct(LOG_INFO, LOG_FIELDS("ETCD_MEMBER_ID=8e9e05c52164694d", "ETCD_TERM=3"), "Became leader.") */
#define LOG_FIELDS(...) ((const char *const[]) { __VA_ARGS__, NULL })
#define log_struct_errno(level, error, fields, ...)                                             \
        ({                                                                                      \
                int _sl = (level), _se = (error);                                               \
                _sl <= log_max_level ? log_struct_internal(_sl, _se, __FILE__, __LINE__, __func__, \
                                                           (fields), __VA_ARGS__)                \
                                     : -abs(_se);                                               \
        })
#define log_struct(level, fields, ...) (void) log_struct_errno(level, 0, fields, __VA_ARGS__)

#define log_full_errno(level, error, ...)                                                       \
        ({                                                                                      \
                int _l = (level), _e = (error);                                                 \
                _l <= log_max_level ? log_internal(_l, _e, __FILE__, __LINE__, __func__, __VA_ARGS__) \
                                    : -abs(_e);                                                 \
        })
#define log_full(level, ...) (void) log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_emergency(...) log_full(LOG_EMERG, __VA_ARGS__)

#define log_debug_errno(e, ...) log_full_errno(LOG_DEBUG, e, __VA_ARGS__)
#define log_info_errno(e, ...) log_full_errno(LOG_INFO, e, __VA_ARGS__)
#define log_notice_errno(e, ...) log_full_errno(LOG_NOTICE, e, __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, e, __VA_ARGS__)
#define log_error_errno(e, ...) log_full_errno(LOG_ERR, e, __VA_ARGS__)

#define log_oom() log_error_errno(-ENOMEM, "Out of memory.")
