/*
 * Times and durations as people write them (rt_time.h): run_at timestamps, relative
 * run_at ("+5m") and durations ("1h").
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_time.h"

int rt_duration_parse(const char *s, long long max_s, long long *out_s)
{
    char *end;
    long long n, mult;

    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    n = strtoll(s, &end, 10);
    if (errno)
        return -EINVAL;
    switch (*end) {
    case '\0':
    case 's':
        mult = 1;
        break;
    case 'm':
        mult = 60;
        break;
    case 'h':
        mult = 3600;
        break;
    case 'd':
        mult = 86400;
        break;
    default:
        return -EINVAL;
    }
    if (*end && end[1])
        return -EINVAL;
    /* Bounded after the unit: "3153600000d" would overflow. */
    if (n > max_s / mult)
        return -EINVAL;
    *out_s = n * mult;
    return 0;
}

/* Reads exactly n digits at *p into *out; advances *p. */
static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

bool rt_timestamp_valid(const char *s)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec, oh, om;

    if (!digits(&s, 4, &y) || *s++ != '-' || !digits(&s, 2, &mo) || *s++ != '-' ||
        !digits(&s, 2, &d))
        return false;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
        return false;
    if (*s == '\0')
        return true;
    if (*s != 'T' && *s != 't' && *s != ' ')
        return false;
    s++;
    if (!digits(&s, 2, &h) || *s++ != ':' || !digits(&s, 2, &mi) || h > 23 || mi > 59)
        return false;
    if (*s == ':') {
        s++;
        if (!digits(&s, 2, &sec) || sec > 60)
            return false;
        if (*s == '.') {
            s++;
            if (!isdigit((unsigned char)*s))
                return false;
            while (isdigit((unsigned char)*s))
                s++;
        }
    }
    if (*s == 'Z' || *s == 'z')
        return s[1] == '\0';
    if (*s == '+' || *s == '-') {
        s++;
        if (!digits(&s, 2, &oh) || oh > 15)
            return false;
        if (*s == ':')
            s++;
        if (*s == '\0')
            return true;
        return digits(&s, 2, &om) && om <= 59 && *s == '\0';
    }
    return *s == '\0';
}

int rt_run_at_parse(const char *s, char *out, size_t size)
{
    long long ahead;
    time_t t;
    struct tm tm;

    if (!s)
        return -EINVAL;
    if (s[0] != '+') {
        if (!rt_timestamp_valid(s) || strlen(s) >= size)
            return -EINVAL;
        memcpy(out, s, strlen(s) + 1);
        return 0;
    }
    if (rt_duration_parse(s + 1, RT_RUN_AT_AHEAD_MAX_S, &ahead) < 0)
        return -EINVAL;
    t = time(NULL) + (time_t)ahead;
    if (!gmtime_r(&t, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        return -EINVAL;
    return 0;
}
