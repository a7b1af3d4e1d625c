/*
 * Times and durations as people write them, parsed in one place for every way in: the
 * run_at of a job (`pgcorral enqueue --run-at`, POST /api/v1/jobs) and the durations of
 * the command line and config file (--keep-completed 1h).
 */
#ifndef PGCORRAL_RT_TIME_H
#define PGCORRAL_RT_TIME_H

#include <stdbool.h>
#include <stddef.h>

/* How far ahead a relative run_at ("+N") may reach: 100 years, in seconds. */
#define RT_RUN_AT_AHEAD_MAX_S (100LL * 365 * 86400)

/* The accepted forms of a run_at, for error messages. */
#define RT_RUN_AT_FORMS                                                                            \
    "an ISO 8601 timestamp (2026-01-31T12:00:00Z) or +N[s|m|h|d] from now (up to 100 years)"

/*
 * Parses a duration: a whole number followed by s, m, h or d (seconds without a unit),
 * "90s", "5m", "1h", "7d". Returns 0 and writes *out_s (seconds) when it is one and at most
 * max_s; -EINVAL otherwise (*out_s untouched). Any thread.
 */
__attribute__((warn_unused_result)) int rt_duration_parse(const char *s, long long max_s,
                                                          long long *out_s);

/* Checks an ISO 8601 timestamp ("2026-01-31T12:00:00Z", "2026-01-31 12:00:00.5+02:00",
 * "2026-01-31"). Returns true when it is one. Any thread. */
bool rt_timestamp_valid(const char *s);

/*
 * Parses a job's run_at: "+N[s|m|h|d]" (from now, at most RT_RUN_AT_AHEAD_MAX_S) becomes
 * the ISO 8601 UTC timestamp that far from now; an ISO 8601 timestamp is copied as it is.
 * Writes out (size bytes, NUL-terminated) and returns 0, or -EINVAL when s is neither
 * (or does not fit out). Any thread.
 */
__attribute__((warn_unused_result)) int rt_run_at_parse(const char *s, char *out, size_t size);

#endif
