/*
 * run_at and durations without a server (runtime/rt_time.h): the forms `pgcorral enqueue
 * --run-at` and POST /api/v1/jobs both take, the durations of --keep-completed, and the
 * bounds that keep a value the database could not store from getting through.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_time.h"
#include "tests/tap.h"

/* Seconds from now to the UTC timestamp ts ("YYYY-MM-DDTHH:MM:SSZ"), or -1e9 when malformed. */
static double ahead_of_now(const char *ts)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!end || *end)
        return -1e9;
    return difftime(timegm(&tm), time(NULL));
}

int main(void)
{
    long long s = -1;
    char out[64];

    tap_timeout(10);
    ok(rt_duration_parse("90", 86400, &s) == 0 && s == 90, "a bare number is seconds");
    ok(rt_duration_parse("90s", 86400, &s) == 0 && s == 90, "90s");
    ok(rt_duration_parse("5m", 86400, &s) == 0 && s == 300, "5m is 300 s");
    ok(rt_duration_parse("1h", 86400, &s) == 0 && s == 3600, "1h is 3600 s");
    ok(rt_duration_parse("7d", 30 * 86400, &s) == 0 && s == 7 * 86400, "7d");
    ok(rt_duration_parse("0", 86400, &s) == 0 && s == 0, "0 is a duration");
    s = 42;
    ok(rt_duration_parse("2d", 86400, &s) == -EINVAL && s == 42,
       "over the maximum: refused, the output untouched");
    ok(rt_duration_parse("1w", 86400, &s) == -EINVAL, "an unknown unit is refused");
    ok(rt_duration_parse("-5m", 86400, &s) == -EINVAL, "a negative duration is refused");
    ok(rt_duration_parse("5mm", 86400, &s) == -EINVAL, "trailing text is refused");
    ok(rt_duration_parse("", 86400, &s) == -EINVAL, "an empty duration is refused");
    ok(rt_duration_parse("99999999999999999999d", 86400, &s) == -EINVAL,
       "a number too large for any integer is refused");

    ok(rt_run_at_parse("+5m", out, sizeof out) == 0, "+5m is a run_at");
    double d = ahead_of_now(out);
    ok(d >= 299 && d <= 301, "... 300 s from now as a UTC timestamp (%s, %.0f s)", out, d);
    ok(rt_run_at_parse("+1h", out, sizeof out) == 0 && ahead_of_now(out) >= 3599,
       "+1h is an hour ahead");
    ok(rt_run_at_parse("2026-01-31T12:00:00Z", out, sizeof out) == 0 &&
           strcmp(out, "2026-01-31T12:00:00Z") == 0,
       "an ISO 8601 timestamp is kept as it is");
    ok(rt_run_at_parse("2026-01-31 12:00:00.5+02:00", out, sizeof out) == 0,
       "a timestamp with a fraction and a zone");
    ok(rt_run_at_parse("+101y", out, sizeof out) == -EINVAL, "+101y: unknown unit, refused");
    ok(rt_run_at_parse("+36600d", out, sizeof out) == -EINVAL,
       "more than 100 years ahead is refused");
    ok(rt_run_at_parse("tomorrow", out, sizeof out) == -EINVAL, "words are refused");
    ok(rt_run_at_parse("2026-02-30", out, sizeof out) == -EINVAL, "a day that does not exist");
    ok(rt_run_at_parse("2026-01-31T12:00:00Z", out, 8) == -EINVAL,
       "a timestamp that does not fit the output is refused");
    ok(strstr(RT_RUN_AT_FORMS, "+N[s|m|h|d]") != NULL, "the error text names both forms");
    return done_testing();
}
