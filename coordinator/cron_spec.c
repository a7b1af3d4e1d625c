/*
 * Recurring-job schedules: parses `--cron 'SPEC TASK [JSON]'` (5-field crontab syntax with
 * an optional CRON_TZ=Zone prefix, or @every DURATION, @hourly, @daily) and computes a
 * schedule's ticks, the next one after a time and the last one at or before it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_input.h"
#include "runtime/rt_util.h"

/* A search for the next or previous tick looks this far (a spec such as "0 0 30 2 *" never
 * matches: it is refused at parse time). */
#define SEARCH_WINDOW_S (5LL * 366 * 86400)
#define EVERY_MAX_S (366LL * 86400)

/* One of the five fields: its name for errors, its range, and value names (or NULL). */
struct field_def {
    const char *name;
    int min, max;
    const char *const *names; /* names[i] is the value min + i */
    int nnames;
};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct field_def fields[5] = {
    {"minute", 0, 59, NULL, 0},          {"hour", 0, 23, NULL, 0},
    {"day-of-month", 1, 31, NULL, 0},    {"month", 1, 12, month_names, 12},
    {"day-of-week", 0, 7, day_names, 7}, /* 7 is Sunday too */
};

/* One value of field f from text [s, s+n): a number or a name. Returns 0 or -1 (err set). */
static int field_value(const struct field_def *f, const char *s, size_t n, int *out, char *err,
                       size_t errlen)
{
    char tok[32];
    long long v;

    snprintf(tok, sizeof tok, "%.*s", (int)(n < sizeof tok - 1 ? n : sizeof tok - 1), s);
    if (n > 0 && rt_parse_ll(tok, -1000000, 1000000, &v) == 0 && tok[0] != '+' && tok[0] != '-') {
        if (v < f->min || v > f->max) {
            snprintf(err, errlen, "%s field '%s' is out of range %d-%d", f->name, tok, f->min,
                     f->max);
            return -1;
        }
        *out = (int)v;
        return 0;
    }
    for (int i = 0; i < f->nnames; i++) {
        if (n == 3 && strncasecmp(s, f->names[i], 3) == 0) {
            *out = f->min + i;
            return 0;
        }
    }
    snprintf(err, errlen, "%s field '%s' is not a number%s", f->name, tok,
             f == &fields[3]   ? " or a month name (jan-dec)"
             : f == &fields[4] ? " or a day name (sun-sat)"
                               : "");
    return -1;
}

/*
 * Parses field f (a comma-separated list of *, N, N-M, each optionally /STEP) into a bit
 * set. Returns 0 or -1 with the reason in err.
 */
static int field_parse(const struct field_def *f, const char *text, uint64_t *bits, char *err,
                       size_t errlen)
{
    const char *p = text;

    *bits = 0;
    for (;;) {
        size_t n = strcspn(p, ",");
        const char *slash = memchr(p, '/', n);
        size_t rn = slash ? (size_t)(slash - p) : n;
        int lo, hi, step = 1;

        if (n == 0) {
            snprintf(err, errlen, "%s field '%s' has an empty list element", f->name, text);
            return -1;
        }
        if (slash) {
            char st[16];
            long long v;
            size_t sn = n - rn - 1;
            snprintf(st, sizeof st, "%.*s", (int)(sn < sizeof st - 1 ? sn : sizeof st - 1),
                     slash + 1);
            if (rt_parse_ll(st, 1, f->max, &v) < 0 || st[0] == '+') {
                snprintf(err, errlen, "%s field step '%s' must be a number from 1 to %d", f->name,
                         st, f->max);
                return -1;
            }
            step = (int)v;
        }
        if (rn == 1 && p[0] == '*') {
            lo = f->min;
            hi = f == &fields[4] ? 6 : f->max;
        } else {
            const char *dash = memchr(p, '-', rn);
            if (field_value(f, p, dash ? (size_t)(dash - p) : rn, &lo, err, errlen) < 0)
                return -1;
            hi = lo;
            if (dash) {
                if (field_value(f, dash + 1, rn - (size_t)(dash - p) - 1, &hi, err, errlen) < 0)
                    return -1;
                if (hi < lo) {
                    snprintf(err, errlen, "%s field range '%.*s' goes backwards", f->name, (int)rn,
                             p);
                    return -1;
                }
            } else if (slash) {
                hi = f == &fields[4] ? 6 : f->max; /* "N/STEP": from N to the end */
            }
        }
        for (int v = lo; v <= hi; v += step)
            *bits |= 1ULL << (f == &fields[4] && v == 7 ? 0 : v);
        if (p[n] == '\0')
            return 0;
        p += n + 1;
    }
}

/* "10s", "5m", "1h30m", "2d": seconds in [1, EVERY_MAX_S]. Returns 0 or -1. */
static int duration_parse(const char *s, long long *out)
{
    long long total = 0;

    if (!*s)
        return -1;
    while (*s) {
        char *end;
        long long n, unit;
        if (*s < '0' || *s > '9')
            return -1;
        errno = 0;
        n = strtoll(s, &end, 10);
        if (errno || n > EVERY_MAX_S)
            return -1;
        switch (*end) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        default:
            return -1;
        }
        total += n * unit;
        if (total > EVERY_MAX_S)
            return -1;
        s = end + 1;
    }
    if (total < 1)
        return -1;
    *out = total;
    return 0;
}

/* Whether zone names a time zone of the system's database ($TZDIR or /usr/share/zoneinfo). */
static bool zone_known(const char *zone)
{
    const char *dir = getenv("TZDIR");
    char path[512];
    struct stat st;

    if (!*zone || zone[0] == '/' || strstr(zone, "..") || strlen(zone) > 64)
        return false;
    for (const char *c = zone; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '/' || *c == '_' || *c == '-' || *c == '+'))
            return false;
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", zone);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The next whitespace-separated word of *p: its start, length in *n; *p moves past it. */
static const char *next_word(const char **p, size_t *n)
{
    const char *s = *p + strspn(*p, " \t");
    *n = strcspn(s, " \t");
    *p = s + *n;
    return *n ? s : NULL;
}

/* Appends [s, s+n) to buf (with a space first unless empty). Returns -1 when it is full. */
static int spec_append(char *buf, size_t size, const char *s, size_t n)
{
    size_t len = strlen(buf);
    if (len + n + 2 > size)
        return -1;
    if (len)
        buf[len++] = ' ';
    memcpy(buf + len, s, n);
    buf[len + n] = '\0';
    return 0;
}

/* FNV-1a, 64 bits, of s and then a 0xff byte (no UTF-8 text holds one), so that
 * ("ab", "c") and ("a", "bc") differ. */
static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    h ^= 0xff;
    return h * 0x100000001b3ULL;
}

int sup_cron_parse_spec(struct sup_cron *c, const char *text, const char **rest, char *err,
                        size_t errlen)
{
    const char *p = text, *w;
    size_t n;

    memset(c, 0, sizeof *c);
    w = next_word(&p, &n);
    if (w && n > 8 && strncmp(w, "CRON_TZ=", 8) == 0) {
        snprintf(c->tz, sizeof c->tz, "%.*s", (int)(n - 8 < 64 ? n - 8 : 64), w + 8);
        if (n - 8 >= sizeof c->tz || !zone_known(c->tz)) {
            snprintf(err, errlen, "CRON_TZ=%.*s is not a known time zone (e.g. Europe/Paris)",
                     (int)(n - 8 < 80 ? n - 8 : 80), w + 8);
            return -1;
        }
        spec_append(c->spec, sizeof c->spec, w, n);
        w = next_word(&p, &n);
    } else if (w && n == 8 && strncmp(w, "CRON_TZ=", 8) == 0) {
        snprintf(err, errlen, "CRON_TZ= needs a zone (e.g. CRON_TZ=Europe/Paris)");
        return -1;
    }
    if (!w) {
        snprintf(err, errlen, "the schedule is missing: 'SPEC TASK [JSON]'");
        return -1;
    }
    if (w[0] == '@') {
        if (n == 6 && strncmp(w, "@every", 6) == 0) {
            const char *d = next_word(&p, &n);
            char dur[32];
            long long secs;
            snprintf(dur, sizeof dur, "%.*s", (int)(d && n < sizeof dur ? n : 0), d ? d : "");
            if (!d || n >= sizeof dur || duration_parse(dur, &secs) < 0) {
                snprintf(err, errlen,
                         "@every needs a duration from 1s to 366d such as 10s, 5m, 1h30m, got "
                         "'%.*s'",
                         d ? (int)(n < 40 ? n : 40) : 0, d ? d : "");
                return -1;
            }
            if (c->tz[0]) {
                snprintf(err, errlen,
                         "CRON_TZ does not apply to @every (its ticks are "
                         "multiples of the duration since 1970 UTC)");
                return -1;
            }
            c->every_s = secs;
            spec_append(c->spec, sizeof c->spec, "@every", 6);
            spec_append(c->spec, sizeof c->spec, d, n);
            *rest = p;
            return 0;
        }
        static const struct {
            const char *word, *fields;
        } macros[] = {{"@hourly", "0 * * * *"}, {"@daily", "0 0 * * *"}};
        for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++) {
            if (n == strlen(macros[i].word) && strncmp(w, macros[i].word, n) == 0) {
                const char *m = macros[i].fields;
                spec_append(c->spec, sizeof c->spec, w, n);
                for (int k = 0; k < 5; k++) {
                    size_t fn;
                    const char *fw = next_word(&m, &fn);
                    char ftext[8];
                    snprintf(ftext, sizeof ftext, "%.*s", (int)fn, fw);
                    if (field_parse(&fields[k], ftext, &c->bits[k], err, errlen) < 0)
                        return -1;
                }
                c->dom_star = c->dow_star = true;
                *rest = p;
                return 0;
            }
        }
        snprintf(err, errlen,
                 "unknown schedule '%.*s' (use 5 crontab fields, @every DURATION, "
                 "@hourly or @daily)",
                 (int)(n < 40 ? n : 40), w);
        return -1;
    }
    for (int k = 0; k < 5; k++) {
        char ftext[128];
        if (k > 0)
            w = next_word(&p, &n);
        if (!w) {
            snprintf(err, errlen,
                     "the schedule has %d of the 5 fields (minute hour day-of-month month "
                     "day-of-week)",
                     k);
            return -1;
        }
        if (n >= sizeof ftext) {
            snprintf(err, errlen, "%s field is longer than %zu bytes", fields[k].name,
                     sizeof ftext - 1);
            return -1;
        }
        snprintf(ftext, sizeof ftext, "%.*s", (int)n, w);
        if (field_parse(&fields[k], ftext, &c->bits[k], err, errlen) < 0)
            return -1;
        if (spec_append(c->spec, sizeof c->spec, w, n) < 0) {
            snprintf(err, errlen, "the schedule is longer than %zu bytes", sizeof c->spec - 1);
            return -1;
        }
        if (k == 2)
            c->dom_star = w[0] == '*';
        if (k == 4)
            c->dow_star = w[0] == '*';
    }
    *rest = p;
    if (sup_cron_next(c, time(NULL)) < 0) {
        snprintf(err, errlen, "the schedule '%s' never runs", c->spec);
        return -1;
    }
    return 0;
}

int sup_cron_parse(struct sup_cron *c, const char *line, char *err, size_t errlen)
{
    const char *rest, *w;
    size_t n, flen, fmax;
    json_error_t jerr;
    json_t *payload;
    uint64_t h;

    if (sup_cron_parse_spec(c, line, &rest, err, errlen) < 0)
        return -1;
    w = next_word(&rest, &n);
    if (!w) {
        snprintf(err, errlen, "TASK is missing after the schedule '%s' ('SPEC TASK [JSON]')",
                 c->spec);
        return -1;
    }
    if (n > RT_JOB_TASK_MAX) {
        snprintf(err, errlen, "TASK is %zu bytes; the limit is %d bytes", n, RT_JOB_TASK_MAX);
        return -1;
    }
    snprintf(c->task, sizeof c->task, "%.*s", (int)n, w);
    rest += strspn(rest, " \t");
    payload = json_loads(*rest ? rest : "{}", JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!payload) {
        snprintf(err, errlen, "the payload of task %s is not valid JSON (column %d): %s", c->task,
                 jerr.column, jerr.text);
        return -1;
    }
    c->payload = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(payload);
    if (!c->payload) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (rt_job_field_too_long(c->task, NULL, NULL, strlen(c->payload), &flen, &fmax)) {
        snprintf(err, errlen, "the payload is %zu bytes; the limit is %zu bytes", flen, fmax);
        sup_cron_free(c);
        return -1;
    }
    /* The schedule's name: the same spec, task and payload are one schedule on every node. */
    h = fnv1a(fnv1a(fnv1a(0xcbf29ce484222325ULL, c->spec), c->task), c->payload);
    snprintf(c->id, sizeof c->id, "%016llx", (unsigned long long)h);
    return 0;
}

void sup_cron_free(struct sup_cron *c)
{
    if (!c)
        return;
    free(c->payload);
    c->payload = NULL;
}

/* ---- ticks --------------------------------------------------------------------------- */

/*
 * The wall clock of c's zone is read with localtime_r/mktime under TZ set to that zone,
 * restored afterwards: glibc has no per-call zone. The supervisor and the CLI call this on
 * one thread only.
 */
struct tz_saved {
    char old[256];
    bool had;
};

static void tz_enter(const struct sup_cron *c, struct tz_saved *s)
{
    const char *old = getenv("TZ");
    s->had = old != NULL;
    snprintf(s->old, sizeof s->old, "%s", old ? old : "");
    setenv("TZ", c->tz[0] ? c->tz : "UTC0", 1);
    tzset();
}

static void tz_leave(const struct tz_saved *s)
{
    if (s->had)
        setenv("TZ", s->old, 1);
    else
        unsetenv("TZ");
    tzset();
}

static bool has(uint64_t bits, int v)
{
    return (bits >> v) & 1;
}

/* Cron's day rule: when both day fields are restricted, either may match. */
static bool day_matches(const struct sup_cron *c, const struct tm *tm)
{
    bool dom = has(c->bits[2], tm->tm_mday), dow = has(c->bits[4], tm->tm_wday);
    return c->dom_star || c->dow_star ? dom && dow : dom || dow;
}

/* mktime of the local wall-clock time tm (normalised: a day 32 is the next month's first),
 * or fallback when it cannot be represented. */
static time_t local_time(struct tm *tm, time_t fallback)
{
    tm->tm_isdst = -1;
    time_t t = mktime(tm);
    return t == (time_t)-1 ? fallback : t;
}

int64_t sup_cron_next(const struct sup_cron *c, int64_t after)
{
    struct tz_saved saved;
    struct tm tm;
    time_t t, end, nt;

    if (c->every_s > 0)
        return (after / c->every_s + 1) * c->every_s;
    tz_enter(c, &saved);
    t = (time_t)((after / 60 + 1) * 60);
    end = (time_t)(after + SEARCH_WINDOW_S);
    while (t <= end) {
        localtime_r(&t, &tm);
        if (!has(c->bits[3], tm.tm_mon + 1)) {
            tm.tm_mon++;
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!day_matches(c, &tm)) {
            tm.tm_mday++;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!has(c->bits[1], tm.tm_hour)) {
            tm.tm_hour++;
            tm.tm_min = tm.tm_sec = 0;
        } else if (!has(c->bits[0], tm.tm_min)) {
            t += 60;
            continue;
        } else {
            tz_leave(&saved);
            return (int64_t)t;
        }
        nt = local_time(&tm, t + 60);
        t = nt > t ? nt : t + 60;
    }
    tz_leave(&saved);
    return -1;
}

int64_t sup_cron_prev(const struct sup_cron *c, int64_t at)
{
    struct tz_saved saved;
    struct tm tm;
    time_t t, end, nt;

    if (c->every_s > 0)
        return at / c->every_s * c->every_s;
    tz_enter(c, &saved);
    t = (time_t)(at / 60 * 60);
    end = (time_t)(at - SEARCH_WINDOW_S);
    while (t >= end) {
        localtime_r(&t, &tm);
        if (!has(c->bits[3], tm.tm_mon + 1)) {
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!day_matches(c, &tm)) {
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        } else if (!has(c->bits[1], tm.tm_hour)) {
            /* The start of this local hour: zone offsets are whole minutes. */
            t -= tm.tm_min * 60 + tm.tm_sec + 60;
            continue;
        } else if (!has(c->bits[0], tm.tm_min)) {
            t -= 60;
            continue;
        } else {
            tz_leave(&saved);
            return (int64_t)t;
        }
        /* The last minute before the start of this month or day. */
        nt = local_time(&tm, t) - 60;
        t = nt < t ? nt : t - 60;
    }
    tz_leave(&saved);
    return -1;
}
