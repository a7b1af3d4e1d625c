/*
 * The database side of the cluster benchmark (bench/cluster/run.sh), one connection each:
 *   probe drain URL N     adds N no-op jobs in bulk in one transaction, then times from the
 *                         commit until pgcorral.jobs is empty (completed jobs are deleted;
 *                         the table is vacuumed first);
 *                         prints "enqueue_s", "drain_s", "jobs_per_s" lines
 *   probe sample URL      counts pgcorral's connections in pg_stat_activity every 100 ms
 *                         until SIGTERM (or its parent's death); prints "peak", "samples"
 * Exit status 1 with a message on stderr when the database fails or a bound passes.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include <libpq-fe.h>

/* A drain slower than this is a broken run, not a measurement. */
#define PROBE_DRAIN_LIMIT_S 300
/* How often the drain asks whether the table is empty: small against a drain of seconds. */
#define PROBE_POLL_MS 20
#define PROBE_SAMPLE_MS 100
/* The sampler stops by itself after this long, should nobody stop it. */
#define PROBE_SAMPLE_LIMIT_S 1800

/* Set by SIGTERM/SIGINT: the sampler prints its peak and exits. */
static volatile sig_atomic_t stop_sampling;

static PGconn *connect_db(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "probe: cannot connect: %s", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

/* The first column of the first row of a query that must succeed, as a number. */
static long long query_ll(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    long long v;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "probe: %s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "probe: %s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    PQclear(r);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int drain(const char *url, long long n)
{
    PGconn *c = connect_db(url);
    char sql[256];
    double t0, t1, start, end;

    /* Left-over jobs would be counted as this run's. */
    if (query_ll(c, "SELECT count(*) FROM pgcorral.jobs") != 0) {
        fprintf(stderr, "probe: pgcorral.jobs is not empty before the run\n");
        return 1;
    }
    /* Every run starts from a table without the previous drain's dead rows, whichever
     * configuration ran before it. */
    exec_ok(c, "VACUUM pgcorral.jobs");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg('{\"task\":\"noop\"}'::"
             "jsonb) FROM generate_series(1, %lld)))",
             n);
    exec_ok(c, "BEGIN");
    t0 = now_s();
    exec_ok(c, sql);
    t1 = now_s();
    exec_ok(c, "COMMIT");
    start = now_s();
    while (query_ll(c, "SELECT (NOT EXISTS (SELECT 1 FROM pgcorral.jobs))::int") != 1) {
        if (now_s() - start > PROBE_DRAIN_LIMIT_S) {
            fprintf(stderr, "probe: %lld of %lld jobs still there after %d s\n",
                    query_ll(c, "SELECT count(*) FROM pgcorral.jobs"), n, PROBE_DRAIN_LIMIT_S);
            return 1;
        }
        sleep_ms(PROBE_POLL_MS);
    }
    end = now_s();
    printf("enqueue_s %.3f\n", t1 - t0);
    printf("drain_s %.3f\n", end - start);
    printf("jobs_per_s %.0f\n", (double)n / (end - start));
    PQfinish(c);
    return 0;
}

static void on_stop(int sig)
{
    stop_sampling = 1;
}

static int sample(const char *url)
{
    struct sigaction sa;
    PGconn *c;
    long long peak = 0, samples = 0;
    double start;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* A benchmark script that dies must not leave the sampler behind. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    c = connect_db(url);
    start = now_s();
    while (!stop_sampling && now_s() - start < PROBE_SAMPLE_LIMIT_S) {
        /* Our own connection is not pgcorral's: its application_name is libpq's default. */
        long long n = query_ll(c, "SELECT count(*) FROM pg_stat_activity"
                                  " WHERE application_name LIKE 'pgcorral%'");
        if (n > peak)
            peak = n;
        samples++;
        sleep_ms(PROBE_SAMPLE_MS);
    }
    printf("peak %lld\n", peak);
    printf("samples %lld\n", samples);
    PQfinish(c);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "drain") == 0 && atoll(argv[3]) > 0)
        return drain(argv[2], atoll(argv[3]));
    if (argc == 3 && strcmp(argv[1], "sample") == 0)
        return sample(argv[2]);
    fprintf(stderr, "usage: probe drain URL N | probe sample URL\n");
    return 2;
}
