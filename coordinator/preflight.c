/*
 * Preflight: before anything forks, connect once and check that the connection budget fits
 * what the server can take, so a misconfiguration fails at start-up and not under load.
 * With --wait-for-db the connection is tried again, with backoff, for a while.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "coordinator/coordinator.h"
#include "coordinator/sup_int.h"
#include "runtime/rt_util.h"

/* What the server can give us, and what others already hold, in one round trip.
 * reserved_connections exists from PostgreSQL 16 on (NULL before). */
static const char preflight_sql[] =
    "SELECT current_setting('max_connections')::int,"
    "       current_setting('superuser_reserved_connections')::int,"
    "       (SELECT count(*) FROM pg_stat_activity"
    "         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())::int,"
    "       current_setting('server_version'),"
    "       coalesce(current_setting('reserved_connections', true)::int, 0)";

int sup_preflight_run(const struct rt_dburl *db, struct sup_preflight *out, char *err,
                      size_t errlen)
{
    PGconn *conn = PQconnectdbParams(db->keywords, db->values, 0);
    PGresult *res = NULL;
    char msg[512];
    const char *errpos;

    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        errpos = "connect";
        rt_copy_message(msg, sizeof msg, conn ? PQerrorMessage(conn) : "out of memory");
        goto fail;
    }
    res = PQexec(conn, preflight_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        errpos = "read server settings";
        rt_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
        goto fail;
    }
    out->max_connections = atoi(PQgetvalue(res, 0, 0));
    out->superuser_reserved = atoi(PQgetvalue(res, 0, 1));
    out->other_connections = atoi(PQgetvalue(res, 0, 2));
    snprintf(out->server_version, sizeof out->server_version, "%s", PQgetvalue(res, 0, 3));
    out->reserved = atoi(PQgetvalue(res, 0, 4));
    PQclear(res);
    PQfinish(conn);
    return 0;

fail:
    snprintf(err, errlen, "cannot %s to the database %s: %s",
             strcmp(errpos, "connect") == 0 ? "connect" : "read settings from", db->redacted, msg);
    PQclear(res);
    PQfinish(conn);
    return -1;
}

int sup_preflight_check_budget(const struct sup_config *cfg, const struct sup_preflight *pf,
                               char *err, size_t errlen)
{
    int workers = cfg->web_workers + cfg->job_workers;
    int limit = cfg->db->connection_limit;
    int budget = sup_config_budget(cfg);
    /* Never a reserved connection: PostgreSQL 16's reserved_connections count too. */
    int reserved = pf->superuser_reserved + pf->reserved;
    const char *rname = pf->reserved > 0 ? "(superuser_reserved_connections + reserved_connections)"
                                         : "superuser_reserved_connections";
    int available = pf->max_connections - reserved - pf->other_connections;

    if (budget <= available)
        return 0;
    if (cfg->max_db_connections > 0) {
        snprintf(err, errlen,
                 "the connection budget does not fit the server:\n"
                 "  --max-db-connections %d > max_connections - %s"
                 " - connections held by others\n"
                 "  %d > %d - %d - %d = %d\n"
                 "Lower --max-db-connections to at most %d, or raise max_connections on the "
                 "server.",
                 budget, rname, budget, pf->max_connections, reserved, pf->other_connections,
                 available, available > 0 ? available : 0);
        return -1;
    }
    snprintf(err, errlen,
             "the connection budget does not fit the server:\n"
             "  (workers x connection_limit) + buffer <= max_connections"
             " - %s - connections held by others\n"
             "  (%d x %d) + 1 = %d > %d - %d - %d = %d\n"
             "Lower --web/--jobs or connection_limit in DATABASE_URL (at most %d per worker "
             "with %d workers), set --max-db-connections %d to share that many connections, "
             "or raise max_connections on the server to at least %d.",
             rname, workers, limit, budget, pf->max_connections, reserved, pf->other_connections,
             available, workers > 0 ? (available - 1) / workers : 0, workers,
             available > 1 ? available : 2, budget + reserved + pf->other_connections);
    return -1;
}

/* Backoff between preflight tries under --wait-for-db: 0.5 s, doubling, at most 5 s. */
#define WAIT_FIRST_S 0.5
#define WAIT_MAX_S 5.0

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int sup_preflight_wait(const struct rt_dburl *db, int wait_s, struct sup_notify *notify,
                       struct sup_preflight *out, char *err, size_t errlen)
{
    double start = mono_s(), delay = WAIT_FIRST_S, waited, pause;
    json_t *fields;

    for (int attempt = 1;; attempt++) {
        if (sup_preflight_run(db, out, err, errlen) == 0) {
            if (attempt > 1)
                rt_log(RT_LOG_INFO, "database reachable",
                       json_pack("{s:i,s:f}", "attempt", attempt, "waited_s", mono_s() - start));
            return 0;
        }
        if (wait_s <= 0)
            return -1; /* no --wait-for-db: fail at once, as without the option */
        waited = mono_s() - start;
        /* err names the database by its redacted URL: no password reaches the log. */
        fields = json_pack("{s:i,s:s,s:f,s:i}", "attempt", attempt, "reason", err, "waited_s",
                           waited, "wait_for_db_s", wait_s);
        if (waited >= wait_s) {
            json_object_set_new(fields, "giving_up", json_true());
            rt_log(RT_LOG_ERROR, "database not reachable", fields);
            size_t n = strlen(err);
            snprintf(err + n, errlen > n ? errlen - n : 0,
                     "\n(still failing after --wait-for-db %d: %d tries in %.1f s)", wait_s,
                     attempt, waited);
            return -1;
        }
        /* The last pause ends at the deadline, for one last try then. */
        pause = delay < wait_s - waited ? delay : wait_s - waited;
        json_object_set_new(fields, "retry_in_s", json_real(pause));
        rt_log(RT_LOG_WARN, "database not reachable", fields);
        sup_notify_status(notify, "waiting for the database (try %d): %s", attempt, err);
        sleep_s(pause);
        delay = delay * 2 < WAIT_MAX_S ? delay * 2 : WAIT_MAX_S;
    }
}
