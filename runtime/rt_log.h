/*
 * Logging: one JSON line per event (ts, level, msg, pid, role, worker, then the event's
 * fields), or a human-readable line with --log-format text. Never give it a password or a
 * full DATABASE_URL: pass rt_dburl's redacted form.
 */
#ifndef PGCORRAL_RT_LOG_H
#define PGCORRAL_RT_LOG_H

#include <jansson.h>

enum rt_log_level { RT_LOG_DEBUG = 0, RT_LOG_INFO, RT_LOG_WARN, RT_LOG_ERROR };
enum rt_log_format { RT_LOG_JSON = 0, RT_LOG_TEXT };

/*
 * Who is logging: role "supervisor", "web" or "job" (borrowed: a string literal), and the
 * worker index (-1 for none). Called once per process, after fork. Not thread-safe.
 */
void rt_log_set_identity(const char *role, int worker);

/* Output format; JSON by default. Not thread-safe. */
void rt_log_set_format(enum rt_log_format fmt);

/* Minimum level written; RT_LOG_INFO by default. Not thread-safe. */
void rt_log_set_level(enum rt_log_level level);

/*
 * Writes to path (appending; created 0640) instead of stderr, or back to stderr with
 * NULL. Returns 0 or -errno, and keeps the old destination on error. Call again with the
 * same path to reopen after rotation (SIGUSR1). The file is close-on-exec. Any thread (safe
 * against concurrent rt_log()).
 */
__attribute__((warn_unused_result)) int rt_log_set_file(const char *path);

/*
 * Reopens the file given to rt_log_set_file (after rotation: SIGUSR1); nothing when logging
 * to stderr. Returns 0 or -errno, keeping the old file open on error. Any thread (not from
 * a signal handler: set a flag there and call it from the loop).
 */
__attribute__((warn_unused_result)) int rt_log_reopen(void);

/*
 * Writes one line. fields is a JSON object of extra fields, or NULL; rt_log takes
 * ownership of it (json_decref). Each line is written with one write(2), so lines from
 * threads and processes never interleave. A field named like a fixed key (ts, level, msg,
 * pid, role, worker) is written with a '_' prefix. Text format: "TS LEVEL [role worker pid
 * N] msg key=value ...", strings quoted (JSON) only when they contain spaces, '"' or '='.
 * Any thread.
 */
void rt_log(enum rt_log_level level, const char *msg, json_t *fields);

/* Same as rt_log with a printf-style message and no fields. Any thread. */
void rt_logf(enum rt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Logs a failure that an answer reports only by id (a 5xx body's "error_id"): writes a new
 * error id (RT_ERROR_ID_LEN hex digits and a NUL) into id, and one line msg with fields
 * (taken over; may be NULL) plus "error_id" and "error": detail (may be NULL). The same
 * failure again (equal msg, detail and key, e.g. the route) within RT_LOG_FAILURE_WINDOW_MS
 * of its line is not logged again: id gets that line's id, and the next line of the failure
 * says how many answers reused it ("repeated"). So a database outage under load is a few
 * lines, and every id a client saw names a line with the full detail. Any thread.
 */
#define RT_LOG_FAILURE_WINDOW_MS 10000
void rt_log_failure(enum rt_log_level level, const char *msg, const char *detail, const char *key,
                    json_t *fields, char *id);

/* "debug", "info", "warn" (or "warning"), "error" in any case; or -1 / NULL for an unknown
 * name or level. */
int rt_log_level_parse(const char *name);
const char *rt_log_level_name(enum rt_log_level level);

#endif
