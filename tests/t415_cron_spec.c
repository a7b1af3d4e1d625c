/*
 * The --cron parser and tick arithmetic (coordinator/cron_spec.c), without a database:
 * lists, ranges, steps, month and day names, 7 = Sunday, cron's either-day rule, CRON_TZ
 * (with a summer-time change), @every/@hourly/@daily, the last tick at or before a time,
 * the schedule's name, and the errors `pgcorral run --cron` gives for bad specs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator/coordinator.h"
#include "coordinator/jobs_int.h"
#include "tests/tap.h"

/* "2026-03-01 12:34" (UTC) as Unix seconds. */
static int64_t utc(const char *text)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!strptime(text, "%Y-%m-%d %H:%M", &tm))
        bail("bad time in the test: %s", text);
    return (int64_t)timegm(&tm);
}

/* Unix seconds as "2026-03-01 12:34" (UTC), into a static buffer (one of 4). */
static const char *text(int64_t t)
{
    static char bufs[4][32];
    static int next;
    char *b = bufs[next++ % 4];
    time_t tt = (time_t)t;
    struct tm tm;
    if (t < 0)
        return "none";
    gmtime_r(&tt, &tm);
    strftime(b, 32, "%Y-%m-%d %H:%M", &tm);
    return b;
}

/* The next tick of line after `after`, as text ("parse error: ..." when it does not parse). */
static const char *next_of(const char *line, const char *after)
{
    static char err[256];
    struct sup_cron c;
    if (sup_cron_parse(&c, line, err, sizeof err) < 0)
        return err;
    int64_t t = sup_cron_next(&c, utc(after));
    sup_cron_free(&c);
    return text(t);
}

static const char *prev_of(const char *line, const char *at)
{
    static char err[256];
    struct sup_cron c;
    if (sup_cron_parse(&c, line, err, sizeof err) < 0)
        return err;
    int64_t t = sup_cron_prev(&c, utc(at));
    sup_cron_free(&c);
    return text(t);
}

/* The error of `pgcorral run --cron LINE` (sup_config_parse), or "" when it is accepted. */
static const char *run_error(const char *line)
{
    static char err[512];
    struct sup_config cfg;
    char *argv[] = {"--cron", (char *)line, "--database-url", "postgresql://u@localhost/db"};
    err[0] = '\0';
    if (sup_config_parse(&cfg, 4, argv, err, sizeof err) == 0)
        err[0] = '\0';
    sup_config_free(&cfg);
    return err;
}

int main(void)
{
    struct sup_cron a, b;
    char err[256];

    tap_timeout(30);
    unsetenv("TZ");

    /* 2026-03-06 is a Friday. */
    is_str(next_of("*/15 * * * * t", "2026-03-06 10:07"), "2026-03-06 10:15", "*/15: a step");
    is_str(next_of("10-30/10 * * * * t", "2026-03-06 10:31"), "2026-03-06 11:10",
           "10-30/10: a stepped range wraps to the next hour");
    is_str(next_of("5,35 9-17 * * mon-fri t", "2026-03-06 17:40"), "2026-03-09 09:05",
           "lists, an hour range and day names: Friday evening -> Monday 09:05");
    is_str(next_of("0 0 1 jan,JUL * t", "2026-03-06 10:00"), "2026-07-01 00:00",
           "month names, any case");
    is_str(next_of("0 12 * * 7 t", "2026-03-06 10:00"), "2026-03-08 12:00", "7 is Sunday");
    is_str(next_of("0 12 * * sun t", "2026-03-06 10:00"), "2026-03-08 12:00", "... as is sun");
    is_str(next_of("0 0 13 * fri t", "2026-03-06 10:00"), "2026-03-13 00:00",
           "both day fields restricted: either matches (Friday the 13th comes first here)");
    is_str(next_of("0 0 10 * fri t", "2026-03-06 10:00"), "2026-03-10 00:00",
           "... the 10th (a Tuesday) matches by its day of month");
    is_str(next_of("0 0 29 2 * t", "2026-03-06 10:00"), "2028-02-29 00:00",
           "29 February: the next leap year");
    is_str(next_of("30 * * * * t", "2026-03-06 10:30"), "2026-03-06 11:30",
           "the next tick is strictly after the time given");

    /* CRON_TZ: 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC in summer (from 29 March). */
    is_str(next_of("CRON_TZ=Europe/Paris 0 9 * * * t", "2026-03-06 10:00"), "2026-03-07 08:00",
           "CRON_TZ=Europe/Paris in winter");
    is_str(next_of("CRON_TZ=Europe/Paris 0 9 * * * t", "2026-03-29 00:00"), "2026-03-29 07:00",
           "... and on the day summer time begins");
    is_str(next_of("CRON_TZ=America/New_York 0 0 * * * t", "2026-07-01 12:00"), "2026-07-02 04:00",
           "CRON_TZ=America/New_York: midnight is 04:00 UTC in July");
    is_str(next_of("0 9 * * * t", "2026-07-01 12:00"), "2026-07-02 09:00", "without it: UTC");
    ok(getenv("TZ") == NULL, "the process's TZ is left as it was");

    is_str(next_of("@every 10s t", "2026-03-06 10:00"), "2026-03-06 10:00",
           "@every 10s: ticks at multiples of 10 s (the minute shown)");
    ok(sup_cron_parse(&a, "@every 10s t", err, sizeof err) == 0 &&
           sup_cron_next(&a, 1000000005) == 1000000010 &&
           sup_cron_prev(&a, 1000000005) == 1000000000 &&
           sup_cron_prev(&a, 1000000010) == 1000000010,
       "@every 10s: next and last tick around 1000000005");
    sup_cron_free(&a);
    ok(sup_cron_parse(&a, "@every 1h30m t", err, sizeof err) == 0 && a.every_s == 5400,
       "@every 1h30m is 5400 s");
    sup_cron_free(&a);
    is_str(next_of("@hourly t", "2026-03-06 10:07"), "2026-03-06 11:00", "@hourly");
    is_str(next_of("@daily t", "2026-03-06 10:07"), "2026-03-07 00:00", "@daily");

    is_str(prev_of("*/15 * * * * t", "2026-03-06 10:14"), "2026-03-06 10:00",
           "the last tick at or before a time");
    is_str(prev_of("*/15 * * * * t", "2026-03-06 10:15"), "2026-03-06 10:15", "... at it");
    is_str(prev_of("5,35 9-17 * * mon-fri t", "2026-03-09 08:00"), "2026-03-06 17:35",
           "... across a weekend");
    is_str(prev_of("0 0 1 jan * t", "2026-03-06 10:00"), "2026-01-01 00:00", "... months back");
    is_str(prev_of("CRON_TZ=Europe/Paris 0 9 * * * t", "2026-03-29 07:30"), "2026-03-29 07:00",
           "... in a zone, on the day summer time begins");

    /* The schedule's name: the same spec, task and payload are one schedule. */
    ok(sup_cron_parse(&a, "*/5  *  * * * mail.digest {\"to\": \"all\"}", err, sizeof err) == 0 &&
           sup_cron_parse(&b, "*/5 * * * * mail.digest {\"to\":\"all\"}", err, sizeof err) == 0 &&
           strcmp(a.id, b.id) == 0 && strlen(a.id) == 16,
       "spaces in the spec and the payload do not change the schedule's name (%s)", a.id);
    is_str(a.spec, "*/5 * * * *", "the spec is kept with single spaces");
    is_str(a.task, "mail.digest", "the task");
    is_str(a.payload, "{\"to\":\"all\"}", "the payload, compact");
    sup_cron_free(&b);
    ok(sup_cron_parse(&b, "*/5 * * * * mail.digest {\"to\":\"some\"}", err, sizeof err) == 0 &&
           strcmp(a.id, b.id) != 0,
       "another payload is another schedule");
    sup_cron_free(&a);
    sup_cron_free(&b);
    ok(sup_cron_parse(&a, "@daily t", err, sizeof err) == 0 && strcmp(a.payload, "{}") == 0,
       "JSON defaults to {}");
    sup_cron_free(&a);

    /* Errors, as `pgcorral run` prints them. */
    is_str(run_error("61 * * * * t"), "--cron: minute field '61' is out of range 0-59",
           "minute 61");
    is_str(run_error("0 24 * * * t"), "--cron: hour field '24' is out of range 0-23", "hour 24");
    is_str(run_error("0 0 0 * * t"), "--cron: day-of-month field '0' is out of range 1-31",
           "day 0");
    is_str(run_error("0 0 * 13 * t"), "--cron: month field '13' is out of range 1-12", "month 13");
    is_str(run_error("0 0 * foo * t"),
           "--cron: month field 'foo' is not a number or a month name (jan-dec)", "month foo");
    is_str(run_error("0 0 * * funday t"),
           "--cron: day-of-week field 'funday' is not a number or a day name (sun-sat)",
           "day funday");
    is_str(run_error("*/0 * * * * t"),
           "--cron: minute field step '0' must be a number from 1 "
           "to 59",
           "step 0");
    is_str(run_error("30-10 * * * * t"), "--cron: minute field range '30-10' goes backwards",
           "a backwards range");
    is_str(run_error("1,,2 * * * * t"), "--cron: minute field '1,,2' has an empty list element",
           "an empty list element");
    is_str(run_error("0 0 30 2 * t"), "--cron: the schedule '0 0 30 2 *' never runs",
           "30 February never comes");
    is_str(run_error("* * * *"),
           "--cron: the schedule has 4 of the 5 fields (minute hour day-of-month month "
           "day-of-week)",
           "4 fields");
    is_str(run_error("* * * * *"),
           "--cron: TASK is missing after the schedule '* * * * *' ('SPEC TASK [JSON]')",
           "no task");
    is_str(run_error("@daily t {oops"),
           "--cron: the payload of task t is not valid JSON (column 5): string or '}' expected "
           "near 'oops'",
           "a payload that is not JSON");
    is_str(run_error("CRON_TZ=Mars/Olympus 0 9 * * * t"),
           "--cron: CRON_TZ=Mars/Olympus is not a known time zone (e.g. Europe/Paris)",
           "an unknown zone");
    is_str(run_error("CRON_TZ=../../etc/passwd 0 9 * * * t"),
           "--cron: CRON_TZ=../../etc/passwd is not a known time zone (e.g. Europe/Paris)",
           "a zone that is a path");
    is_str(run_error("@every 0s t"),
           "--cron: @every needs a duration from 1s to 366d such as 10s, 5m, 1h30m, got '0s'",
           "@every 0s");
    is_str(run_error("@every soon t"),
           "--cron: @every needs a duration from 1s to 366d such as 10s, 5m, 1h30m, got 'soon'",
           "@every soon");
    is_str(run_error("@weekly t"),
           "--cron: unknown schedule '@weekly' (use 5 crontab fields, @every DURATION, @hourly "
           "or @daily)",
           "@weekly is not one of ours");
    is_str(run_error(""), "--cron: the schedule is missing: 'SPEC TASK [JSON]'", "empty");
    is_str(run_error("CRON_TZ=Europe/Paris @daily t"), "", "CRON_TZ with @daily is taken");
    is_str(run_error("@hourly t {\"a\":[1,2]}"), "", "a payload is taken");
    return done_testing();
}
