/*
 * `pgcorral tune`: the guide's server settings for a machine's RAM and pgcorral's pool
 * layout, printed as ALTER SYSTEM lines that psql can run as they are.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cmds_int.h"
#include "runtime/rt_util.h"

#define KB_PER_MB 1024LL
#define KB_PER_GB (1024LL * 1024)
#define KB_PER_TB (1024LL * 1024 * 1024)
#define TUNE_RAM_MAX_KB (16 * KB_PER_TB)
#define TUNE_MAX_CONNECTIONS 262143 /* PostgreSQL's upper bound for max_connections */
#define TUNE_MAINTENANCE_MAX_KB (2 * KB_PER_GB)
/* PostgreSQL's minimums, and the 8kB block that buffer settings are counted in. */
#define PG_MIN_SHARED_BUFFERS_KB 128LL
#define PG_MIN_WORK_MEM_KB 64LL
#define PG_MIN_MAINTENANCE_KB 1024LL
#define PG_BLOCK_KB 8LL

/* The units a size may carry, in kB. */
static const struct {
    char letter;
    long long kb;
} size_units[] = {{'k', 1}, {'m', KB_PER_MB}, {'g', KB_PER_GB}, {'t', KB_PER_TB}};

int sup_tune_parse_size(const char *what, const char *text, long long *kb, char *err, size_t errlen)
{
    const char *p = text;
    char *end;
    double v;
    long long unit = 0;

    if (!text || !*text)
        goto bad;
    if (!isdigit((unsigned char)*p) && *p != '.')
        goto bad;
    errno = 0;
    v = strtod(p, &end);
    /* Plain decimals only: strtod would also take "0x10" and "1e3". */
    if (errno || end == p || v <= 0 || strspn(p, "0123456789.") != (size_t)(end - p))
        goto bad;
    p = end;
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++)
        if (tolower((unsigned char)*p) == size_units[i].letter)
            unit = size_units[i].kb;
    if (!unit) {
        snprintf(err, errlen, "%s '%s' needs a unit: kB, MB, GB or TB (e.g. 8GB, 512MB)", what,
                 text);
        return -1;
    }
    p++;
    if (tolower((unsigned char)p[0]) == 'i' && tolower((unsigned char)p[1]) == 'b')
        p += 2;
    else if (tolower((unsigned char)p[0]) == 'b')
        p++;
    if (*p)
        goto bad;
    if (v * (double)unit < (double)KB_PER_MB || v * (double)unit > (double)TUNE_RAM_MAX_KB) {
        snprintf(err, errlen, "%s must be from 1MB to 16TB, got '%s'", what, text);
        return -1;
    }
    *kb = (long long)(v * (double)unit);
    return 0;

bad:
    snprintf(err, errlen, "%s must be a size like 8GB or 512MB, got '%s'", what, text ? text : "");
    return -1;
}

/* v rounded down to whole 8kB blocks, and at least min. */
static long long blocks_at_least(long long v, long long min, bool *raised)
{
    v -= v % PG_BLOCK_KB;
    if (v < min) {
        *raised = true;
        return min;
    }
    return v;
}

/* v, and at least min. */
static long long at_least(long long v, long long min, bool *raised)
{
    if (v < min) {
        *raised = true;
        return min;
    }
    return v;
}

int sup_tune_compute(struct sup_tune *t, long long ram_kb, int workers, int limit, char *err,
                     size_t errlen)
{
    long long maxconn = (long long)workers * limit + 10;
    long long maint = ram_kb / 10;

    if (maxconn > TUNE_MAX_CONNECTIONS) {
        snprintf(err, errlen,
                 "workers x connection_limit + 10 = %d x %d + 10 = %lld is more than "
                 "PostgreSQL's largest max_connections (%d)",
                 workers, limit, maxconn, TUNE_MAX_CONNECTIONS);
        return -1;
    }
    memset(t, 0, sizeof *t);
    t->ram_kb = ram_kb;
    t->workers = workers;
    t->limit = limit;
    t->max_connections = (int)maxconn;
    t->shared_buffers_kb = blocks_at_least(ram_kb / 4, PG_MIN_SHARED_BUFFERS_KB, &t->raised);
    t->effective_cache_kb =
        blocks_at_least(ram_kb / 4 * 3 + ram_kb % 4 * 3 / 4, PG_BLOCK_KB, &t->raised);
    t->work_mem_kb = at_least(ram_kb / maxconn / 4, PG_MIN_WORK_MEM_KB, &t->raised);
    if (maint > TUNE_MAINTENANCE_MAX_KB)
        maint = TUNE_MAINTENANCE_MAX_KB;
    t->maintenance_mem_kb = at_least(maint, PG_MIN_MAINTENANCE_KB, &t->raised);
    return 0;
}

char *sup_tune_format_kb(long long kb, char *buf, size_t size)
{
    if (kb > 0 && kb % KB_PER_TB == 0)
        snprintf(buf, size, "%lldTB", kb / KB_PER_TB);
    else if (kb > 0 && kb % KB_PER_GB == 0)
        snprintf(buf, size, "%lldGB", kb / KB_PER_GB);
    else if (kb > 0 && kb % KB_PER_MB == 0)
        snprintf(buf, size, "%lldMB", kb / KB_PER_MB);
    else
        snprintf(buf, size, "%lldkB", kb);
    return buf;
}

/* `tune --help`, or after a usage error (to stderr). */
static void tune_usage(FILE *f)
{
    fprintf(f, "usage: pgcorral tune --ram SIZE --workers N --connection-limit L\n"
               "  --ram SIZE             the database server's memory, e.g. 8GB or 512MB\n"
               "  --workers N            pgcorral workers in all (web + jobs), 1..10000\n"
               "  --connection-limit L   connection_limit of each worker's pool, 1..10000\n"
               "Prints ALTER SYSTEM lines to run as a superuser (psql -f), then restart.\n");
}

/* Parses an integer flag value in [min, max]. Returns 0 or -1 with err naming the flag. */
static int parse_int(const char *flag, const char *text, int min, int max, int *out, char *err,
                     size_t errlen)
{
    if (rt_parse_int(text, min, max, out) != 0) {
        snprintf(err, errlen, "%s must be an integer from %d to %d, got '%s'", flag, min, max,
                 text);
        return -1;
    }
    return 0;
}

/* One ALTER SYSTEM line with its reason as an SQL comment. */
static void print_setting(const char *name, const char *value, bool quote, const char *why)
{
    char stmt[128];
    snprintf(stmt, sizeof stmt, "ALTER SYSTEM SET %s = %s%s%s;", name, quote ? "'" : "", value,
             quote ? "'" : "");
    printf("%-52s -- %s\n", stmt, why);
}

int sup_tune_main(int argc, char **argv)
{
    const char *ram = NULL, *workers = NULL, *limit = NULL;
    char err[256], ramtext[32], v[32], why[128];
    long long ram_kb;
    int nworkers, nlimit;
    struct sup_tune t;

    if (sup_wants_help(argc, argv)) {
        tune_usage(stdout);
        return 0;
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], **dst = NULL, *value;
        size_t n = strcspn(arg, "=");

        if (n == 5 && !strncmp(arg, "--ram", n))
            dst = &ram;
        else if (n == 9 && !strncmp(arg, "--workers", n))
            dst = &workers;
        else if (n == 18 && !strncmp(arg, "--connection-limit", n))
            dst = &limit;
        if (!dst) {
            fprintf(stderr, "pgcorral tune: %s '%s'\n",
                    arg[0] == '-' ? "unknown flag" : "unexpected argument", arg);
            tune_usage(stderr);
            return 2;
        }
        if (arg[n] == '=') {
            value = arg + n + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, "pgcorral tune: %.*s needs a value\n", (int)n, arg);
            return 2;
        }
        *dst = value;
    }
    if (!ram || !workers || !limit) {
        fprintf(stderr, "pgcorral tune: %s is required\n",
                !ram       ? "--ram SIZE"
                : !workers ? "--workers N"
                           : "--connection-limit L");
        tune_usage(stderr);
        return 2;
    }
    if (sup_tune_parse_size("--ram", ram, &ram_kb, err, sizeof err) < 0 ||
        parse_int("--workers", workers, 1, 10000, &nworkers, err, sizeof err) < 0 ||
        parse_int("--connection-limit", limit, 1, 10000, &nlimit, err, sizeof err) < 0 ||
        sup_tune_compute(&t, ram_kb, nworkers, nlimit, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral tune: %s\n", err);
        return 2;
    }

    sup_tune_format_kb(ram_kb, ramtext, sizeof ramtext);
    printf("-- pgcorral tune: %s of RAM, %d workers x connection_limit %d\n", ramtext, nworkers,
           nlimit);
    printf("-- Run as a superuser (psql -f), then restart PostgreSQL: max_connections and\n"
           "-- shared_buffers change only on a restart.\n");
    snprintf(v, sizeof v, "%d", t.max_connections);
    snprintf(why, sizeof why, "workers x limit + 10 = %d x %d + 10", nworkers, nlimit);
    print_setting("max_connections", v, false, why);
    print_setting("shared_buffers", sup_tune_format_kb(t.shared_buffers_kb, v, sizeof v), true,
                  "25 % of RAM");
    print_setting("effective_cache_size", sup_tune_format_kb(t.effective_cache_kb, v, sizeof v),
                  true, "75 % of RAM");
    snprintf(why, sizeof why, "RAM / max_connections / 4 = %s / %d / 4", ramtext,
             t.max_connections);
    print_setting("work_mem", sup_tune_format_kb(t.work_mem_kb, v, sizeof v), true, why);
    print_setting("maintenance_work_mem", sup_tune_format_kb(t.maintenance_mem_kb, v, sizeof v),
                  true, "10 % of RAM, at most 2GB");
    if (t.raised)
        printf("-- Some values were raised to PostgreSQL's minimum: this RAM is small for so "
               "many connections.\n");
    return 0;
}
