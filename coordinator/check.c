/*
 * `pgcorral check`: with the same flags and environment as `run`, connects to the
 * database (and the replica), does the preflight's budget math, and compares the server's
 * settings with `tune`'s recommendations, without starting anything.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/coordinator.h"

/* What the checks found so far: FAIL lines make the exit status 1. */
struct check_tally {
    int failed, warned;
};

/* One result line: verdict ("ok", "warn", "low", "high", "FAIL", "info"), topic, text. */
__attribute__((format(printf, 4, 5))) static void report(struct check_tally *t, const char *verdict,
                                                         const char *topic, const char *fmt, ...)
{
    va_list ap;

    if (!strcmp(verdict, "FAIL"))
        t->failed++;
    else if (strcmp(verdict, "ok") && strcmp(verdict, "info"))
        t->warned++;
    printf("%-5s %-21s ", verdict, topic);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Prints a multi-line message indented under a result line. */
static void indent(const char *text)
{
    while (*text) {
        size_t n = strcspn(text, "\n");
        printf("      %.*s\n", (int)n, text);
        text += n;
        if (*text == '\n')
            text++;
    }
}

/* `check --help`: our flag, then run's flags as run prints them. */
static void check_usage(void)
{
    char err[64];
    char *help[] = {"--help", NULL};
    struct sup_config cfg;

    printf("usage: pgcorral check [--ram SIZE] [FLAGS]\n"
           "Checks a configuration without starting it: the database and replica can be\n"
           "reached, the connection budget fits the server, and the server's settings\n"
           "against `pgcorral tune`'s. Exit status 1 when the budget does not fit or the\n"
           "database cannot be reached.\n"
           "  --ram SIZE               the server's memory for the recommendations (default:\n"
           "                           this machine's, when the database is local)\n"
           "It takes the same flags and environment (DATABASE_URL, ...) as run:\n\n");
    /* run's own flag list, printed by its parser. */
    if (sup_config_parse(&cfg, 1, help, err, sizeof err) < 0) {
    }
    sup_config_free(&cfg);
}

/* Whether every host of u is this machine (a unix socket or a loopback address). */
static bool db_is_local(const struct rt_dburl *u)
{
    const char *h = rt_dburl_get(u, "hostaddr");

    if (!h)
        h = rt_dburl_get(u, "host");
    if (!h || !*h)
        return true; /* libpq's default: the unix socket */
    while (*h) {
        size_t n = strcspn(h, ",");
        bool local = h[0] == '/' || h[0] == '@' || (n == 9 && !strncmp(h, "localhost", n)) ||
                     (n == 9 && !strncmp(h, "127.0.0.1", n)) || (n == 3 && !strncmp(h, "::1", n));
        if (!local)
            return false;
        h += n;
        if (*h == ',')
            h++;
    }
    return true;
}

/* This machine's memory in kB, or 0 when unknown. */
static long long machine_ram_kb(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (long long)pages * (size / 1024) : 0;
}

/* The server's memory settings in kB, and max_connections. */
struct server_settings {
    int max_connections;
    long long shared_buffers_kb, effective_cache_kb, work_mem_kb, maintenance_mem_kb;
};

/* The settings `tune` recommends, memory in kB, in one row. */
static const char settings_sql[] =
    "SELECT current_setting('max_connections')::int,"
    "       pg_size_bytes(current_setting('shared_buffers')) / 1024,"
    "       pg_size_bytes(current_setting('effective_cache_size')) / 1024,"
    "       pg_size_bytes(current_setting('work_mem')) / 1024,"
    "       pg_size_bytes(current_setting('maintenance_work_mem')) / 1024";

/* Reads the settings. Returns 0, or -1 with the reason in err. */
static int read_settings(const struct rt_dburl *db, struct server_settings *out, char *err,
                         size_t errlen)
{
    PGconn *conn = PQconnectdbParams(db->keywords, db->values, 0);
    PGresult *res = NULL;
    const char *errpos;

    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        errpos = "connect";
        snprintf(err, errlen, "%s", conn ? PQerrorMessage(conn) : "out of memory");
        goto fail;
    }
    res = PQexec(conn, settings_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        errpos = "read settings";
        snprintf(err, errlen, "%s", PQresultErrorMessage(res));
        goto fail;
    }
    out->max_connections = atoi(PQgetvalue(res, 0, 0));
    out->shared_buffers_kb = atoll(PQgetvalue(res, 0, 1));
    out->effective_cache_kb = atoll(PQgetvalue(res, 0, 2));
    out->work_mem_kb = atoll(PQgetvalue(res, 0, 3));
    out->maintenance_mem_kb = atoll(PQgetvalue(res, 0, 4));
    PQclear(res);
    PQfinish(conn);
    return 0;

fail:
    /* libpq's messages end with a newline. */
    err[strcspn(err, "\n")] = 0;
    snprintf(err + strlen(err), errlen - strlen(err), " (%s)", errpos);
    PQclear(res);
    PQfinish(conn);
    return -1;
}

/* kb for people: exact ("2GB", "128MB") when it is whole, else "5.9GB" or "12046MB". */
static char *approx_kb(long long kb, char *buf, size_t size)
{
    if (kb >= 1024 * 1024 && kb % (1024 * 1024) != 0)
        snprintf(buf, size, "%.1fGB", (double)kb / (1024.0 * 1024.0));
    else if (kb >= 10 * 1024 && kb % 1024 != 0)
        snprintf(buf, size, "%lldMB", (kb + 512) / 1024);
    else
        sup_tune_format_kb(kb, buf, size);
    return buf;
}

/* One memory setting against its recommendation (rec_kb 0 = no recommendation). */
static void compare_kb(struct check_tally *t, const char *name, long long cur_kb, long long rec_kb)
{
    char cur[32], rec[32];
    const char *verdict = "ok";

    approx_kb(cur_kb, cur, sizeof cur);
    if (rec_kb <= 0) {
        report(t, "info", name, "%-10s", cur);
        return;
    }
    /* Within a factor of two either way is close enough to the guide. */
    if (cur_kb * 2 < rec_kb)
        verdict = "low";
    else if (cur_kb > rec_kb * 2)
        verdict = "high";
    report(t, verdict, name, "%-10s recommended %s", cur, approx_kb(rec_kb, rec, sizeof rec));
}

/* The primary: connect, budget. Returns whether the database could be reached. */
static bool check_primary(struct check_tally *t, const struct sup_config *cfg,
                          struct sup_preflight *pf)
{
    char err[2048];
    int workers = cfg->web_workers + cfg->job_workers;
    int budget = sup_config_budget(cfg);
    int available;

    if (sup_preflight_run(cfg->db, pf, err, sizeof err) < 0) {
        report(t, "FAIL", "connect", "%s", cfg->db->redacted);
        indent(err);
        return false;
    }
    report(t, "ok", "connect", "%s (PostgreSQL %s)", cfg->db->redacted, pf->server_version);
    available = pf->max_connections - pf->superuser_reserved - pf->reserved - pf->other_connections;
    if (sup_preflight_check_budget(cfg, pf, err, sizeof err) < 0) {
        report(t, "FAIL", "budget", "%d connections do not fit", budget);
        indent(err);
    } else if (cfg->max_db_connections > 0) {
        report(t, "ok", "budget",
               "--max-db-connections %d <= max_connections - reserved - held by others = "
               "%d - %d - %d = %d",
               budget, pf->max_connections, pf->superuser_reserved + pf->reserved,
               pf->other_connections, available);
    } else {
        report(t, "ok", "budget",
               "(%d workers x connection_limit %d) + 1 = %d <= max_connections - reserved - "
               "held by others = %d - %d - %d = %d",
               workers, cfg->db->connection_limit, budget, pf->max_connections,
               pf->superuser_reserved + pf->reserved, pf->other_connections, available);
    }
    return true;
}

/* The replica: connect, and room for every worker's read pool (not in the budget). */
static void check_replica(struct check_tally *t, const struct sup_config *cfg)
{
    struct sup_preflight pf;
    char err[2048];
    int workers = cfg->web_workers + cfg->job_workers;
    int need = workers * cfg->replica->connection_limit;
    int available;

    if (sup_preflight_run(cfg->replica, &pf, err, sizeof err) < 0) {
        report(t, "FAIL", "replica connect", "%s", cfg->replica->redacted);
        indent(err);
        indent("(reads would fall back to the primary)");
        return;
    }
    report(t, "ok", "replica connect", "%s (PostgreSQL %s)", cfg->replica->redacted,
           pf.server_version);
    available = pf.max_connections - pf.superuser_reserved - pf.reserved - pf.other_connections;
    report(t, need <= available ? "ok" : "FAIL", "replica capacity",
           "%d workers x connection_limit %d = %d %s max_connections - reserved - held by "
           "others = %d - %d - %d = %d",
           workers, cfg->replica->connection_limit, need, need <= available ? "<=" : ">",
           pf.max_connections, pf.superuser_reserved + pf.reserved, pf.other_connections,
           available);
}

/* The server's settings against `tune`'s for ram_kb (0 = unknown: shown, not judged). */
static void check_settings(struct check_tally *t, const struct sup_config *cfg, long long ram_kb,
                           const char *ram_source)
{
    struct server_settings s;
    struct sup_tune rec;
    char err[1024], ram[32];
    int workers = cfg->web_workers + cfg->job_workers;

    if (read_settings(cfg->db, &s, err, sizeof err) < 0) {
        report(t, "warn", "settings", "cannot read them: %s", err);
        return;
    }
    if (sup_tune_compute(&rec, ram_kb ? ram_kb : 1024, workers, cfg->db->connection_limit, err,
                         sizeof err) < 0)
        memset(&rec, 0, sizeof rec);
    if (ram_kb)
        printf("settings, against `pgcorral tune --ram %s --workers %d --connection-limit %d` "
               "(RAM: %s):\n",
               sup_tune_format_kb(ram_kb, ram, sizeof ram), workers, cfg->db->connection_limit,
               ram_source);
    else
        printf("settings (the database is not on this machine: pass --ram SIZE to compare the "
               "memory settings):\n");
    if (rec.max_connections)
        report(t, s.max_connections >= rec.max_connections ? "ok" : "low", "max_connections",
               "%-10d recommended >= %d (workers x limit + 10)", s.max_connections,
               rec.max_connections);
    compare_kb(t, "shared_buffers", s.shared_buffers_kb, ram_kb ? rec.shared_buffers_kb : 0);
    compare_kb(t, "effective_cache_size", s.effective_cache_kb,
               ram_kb ? rec.effective_cache_kb : 0);
    compare_kb(t, "work_mem", s.work_mem_kb, ram_kb ? rec.work_mem_kb : 0);
    compare_kb(t, "maintenance_work_mem", s.maintenance_mem_kb,
               ram_kb ? rec.maintenance_mem_kb : 0);
}

int sup_check_main(int argc, char **argv)
{
    struct sup_config cfg;
    struct sup_preflight pf;
    struct check_tally tally = {0, 0};
    char err[1024];
    char **args = calloc((size_t)argc + 1, sizeof *args);
    const char *ram = NULL, *ram_source = "--ram";
    long long ram_kb = 0;
    int nargs = 0, status = 2;

    memset(&cfg, 0, sizeof cfg);
    if (!args) {
        fprintf(stderr, "pgcorral check: out of memory\n");
        return 2;
    }
    if (sup_wants_help(argc, argv)) {
        check_usage();
        status = 0;
        goto out;
    }
    /* --ram is ours; everything else is run's. */
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--ram")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "pgcorral check: --ram needs a value\n");
                goto out;
            }
            ram = argv[++i];
        } else if (!strncmp(argv[i], "--ram=", 6)) {
            ram = argv[i] + 6;
        } else {
            args[nargs++] = argv[i];
        }
    }
    if (ram && sup_tune_parse_size("--ram", ram, &ram_kb, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral check: %s\n", err);
        goto out;
    }
    if (sup_config_parse(&cfg, nargs, args, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral check: %s\n", err);
        goto out;
    }
    /* Our own connections show up as such in pg_stat_activity. */
    if (rt_dburl_get(cfg.db, "application_name") &&
        !strcmp(rt_dburl_get(cfg.db, "application_name"), "pgcorral") &&
        rt_dburl_set(cfg.db, "application_name", "pgcorral check") < 0) {
        fprintf(stderr, "pgcorral check: out of memory\n");
        goto out;
    }
    if (!ram_kb && db_is_local(cfg.db)) {
        /* Whole megabytes: the figure is shown as a `tune --ram` argument. */
        ram_kb = machine_ram_kb() / 1024 * 1024;
        ram_source = "this machine's, the database is local";
    }

    printf("pgcorral check: %d web + %d job workers, connection_limit %d, budget %d%s\n",
           cfg.web_workers, cfg.job_workers, cfg.db->connection_limit, sup_config_budget(&cfg),
           cfg.max_db_connections > 0 ? " (--max-db-connections)" : "");
    if (check_primary(&tally, &cfg, &pf)) {
        if (cfg.replica)
            check_replica(&tally, &cfg);
        check_settings(&tally, &cfg, ram_kb, ram_source);
    }
    if (tally.failed)
        printf("pgcorral check: FAILED: %d problem%s, %d warning%s\n", tally.failed,
               tally.failed == 1 ? "" : "s", tally.warned, tally.warned == 1 ? "" : "s");
    else if (tally.warned)
        printf("pgcorral check: OK, with %d warning%s (see above)\n", tally.warned,
               tally.warned == 1 ? "" : "s");
    else
        printf("pgcorral check: OK\n");
    status = tally.failed ? 1 : 0;

out:
    sup_config_free(&cfg);
    free(args);
    return status;
}
