/*
 * The pgcorral side of the jobs benchmark: 2 job workers x 10 concurrent jobs (the job role
 * forked like the supervisor does, with its LISTEN connection and sweep) against database
 * URL. `throughput N`: N no-op jobs added in bulk in one transaction while the workers wait,
 * timed from the commit until the table is empty; then the table's dead rows.
 * `throughput-keep N`: the same with retention of completed jobs on (--keep-completed), timed
 * until all N are completed. `latency M`: M jobs added one at a time, enqueue -> handler
 * start. Prints "key value" lines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/lib/jobharness.h"

static PGconn *db;

static PGconn *connect_db(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static long long q_ll(const char *sql)
{
    PGresult *r = PQexec(db, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) && !PQgetisnull(r, 0, 0))
        v = atoll(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return v;
}

static void exec_ok(const char *sql)
{
    PGresult *r = PQexec(db, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    PQclear(r);
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool table_empty(void *arg)
{
    return q_ll("SELECT (NOT EXISTS (SELECT 1 FROM pgcorral.jobs))::int") == 1;
}

/* With retention, the table keeps every job: done means the workers counted n jobs done
 * (shm, free to read) and then that the acks made them all completed (one query). */
static struct jh *bench_h;
static long long bench_n;
static bool all_completed(void *arg)
{
    uint64_t done = 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        done += atomic_load_explicit(&bench_h->seg->workers[i].counters.jobs_done,
                                     memory_order_relaxed);
    return done >= (uint64_t)bench_n &&
           q_ll("SELECT count(*) FROM pgcorral.jobs WHERE outcome = 'completed'") == bench_n;
}

/* Dead rows of pgcorral.jobs: exact (pgstattuple) when the extension is there. */
static long long dead_rows(void)
{
    long long v = q_ll("SELECT dead_tuple_count FROM pgstattuple('pgcorral.jobs')");
    return v >= 0 ? v
                  : q_ll("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid ="
                         " 'pgcorral.jobs'::regclass");
}

int main(int argc, char **argv)
{
    struct jh h;
    struct job_options o;
    const char *plugins[3];
    struct rt_dburl *u;
    char err[512], sql[512];
    long long n, t0, t1;

    if (argc != 6) {
        fprintf(stderr,
                "usage: jobs_driver URL throughput|throughput-keep|latency N BASIC_SO STAMP_SO\n");
        return 2;
    }
    n = atoll(argv[3]);
    plugins[0] = argv[4];
    plugins[1] = argv[5];
    plugins[2] = NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    rt_log_set_level(RT_LOG_WARN);
    if (rt_dburl_parse(argv[1], &u, err, sizeof err) < 0 ||
        sup_migrate(u, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    rt_dburl_destroy(u);
    db = connect_db(argv[1]);
    PQclear(PQexec(db, "CREATE EXTENSION IF NOT EXISTS pgstattuple"));
    exec_ok("CREATE TABLE IF NOT EXISTS bench_lat (t0_us bigint, start_us bigint)");
    exec_ok("TRUNCATE pgcorral.jobs, bench_lat");

    jh_init(&h, argv[1], plugins, 64);
    bool keep = strcmp(argv[2], "throughput-keep") == 0;
    /* As `pgcorral run --keep-completed 1h`: the workers keep, the sweep prunes after 1 h. */
    h.keep_completed_s = keep ? 3600 : 0;
    /* The supervisor's part (LISTEN fan-out, sweep) in a process of its own, as in
     * pgcorral run: this one blocks in its statements. */
    fflush(NULL);
    pid_t sup = fork();
    if (sup == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        jh_listen(&h, 0, 0);
        uv_run(&h.loop, UV_RUN_DEFAULT);
        _exit(0);
    }
    job_options_init(&o);
    o.keep_completed = keep;
    bench_h = &h;
    bench_n = n;
    jh_spawn(&h, 0, &o);
    jh_spawn(&h, 1, &o);
    jh_pump(&h, 500);

    if (strncmp(argv[2], "throughput", 10) == 0) {
        exec_ok("BEGIN");
        t0 = now_us();
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM pgcorral.add_jobs((SELECT jsonb_agg('{\"task\":"
                 "\"noop\"}'::jsonb) FROM generate_series(1, %lld)))",
                 n);
        exec_ok(sql);
        t1 = now_us();
        exec_ok("COMMIT");
        long long start = now_us();
        jh_wait(&h, keep ? all_completed : table_empty, NULL, 600000);
        long long end = now_us();
        printf("enqueue_s %.3f\n", (double)(t1 - t0) / 1e6);
        printf("drain_s %.3f\n", (double)(end - start) / 1e6);
        printf("jobs_per_s %.0f\n", (double)n / ((double)(end - start) / 1e6));
        printf("dead_rows_at_end %lld\n", dead_rows());
        jh_pump(&h, 15000);
        printf("dead_rows_after_15s %lld\n", dead_rows());
    } else {
        for (long long i = 0; i < n; i++) {
            snprintf(sql, sizeof sql, "SELECT pgcorral.add_job('bench.stamp', '{\"t0\": %lld}')",
                     now_us());
            exec_ok(sql);
            jh_pump(&h, 5);
        }
        jh_wait(&h, table_empty, NULL, 60000);
        printf("latency_p50_ms %.3f\n",
               (double)q_ll("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY start_us - t0_us)"
                            " FROM bench_lat") /
                   1000.0);
        printf("latency_p99_ms %.3f\n",
               (double)q_ll("SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY start_us - "
                            "t0_us) FROM bench_lat") /
                   1000.0);
        printf("latency_jobs %lld\n", q_ll("SELECT count(*) FROM bench_lat"));
    }
    fflush(stdout);
    kill(sup, SIGKILL);
    waitpid(sup, NULL, 0);
    jh_done(&h);
    PQfinish(db);
    return 0;
}
