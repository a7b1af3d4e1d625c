/*
 * The supervisor's job-queue connection keeps its budget slot until the server has hung
 * up: through a reconnect after pg_terminate_backend, the server never holds more of our
 * connections than budget slots are taken (B = 1), and a stop frees the slot only once the
 * backend is gone from pg_stat_activity, so that no pool can open connection B+1 meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/jobharness.h"
#include "tests/lib/jobtest.h"

static PGconn *db;

/* Our backends other than this test's own connection: the job-queue connection's. Client
 * backends only: an autovacuum worker visiting the new database is not ours (CI once
 * sampled one while the job-queue connection was between backends). The pid is of one
 * that has run a statement (LISTEN): its handshake is over on both sides. */
static const char backends_sql[] = "SELECT count(*) FROM pg_stat_activity"
                                   " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                   " AND backend_type = 'client backend'";
static const char backend_pid_sql[] =
    "SELECT coalesce(max(pid), 0) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend' AND state = 'idle' AND query <> ''";

struct watch {
    struct jh *h;
    long long old_pid; /* the backend that was terminated */
    long long new_pid;
    int samples, over; /* samples with more backends than slots taken */
};

/* Listening again on a new backend; counts every moment the server had more of our
 * connections than the budget shows taken (the loop does not run while we look). */
static bool relistened(void *arg)
{
    struct watch *w = arg;
    long long n = pgt_query_ll(db, backends_sql);
    uint32_t taken = shm_budget_in_use(w->h->seg);

    w->samples++;
    if (n > (long long)taken) {
        w->over++;
        diag("%lld backends, %u budget slots taken", n, taken);
    }
    w->new_pid = pgt_query_ll(db, backend_pid_sql);
    return w->new_pid != 0 && w->new_pid != w->old_pid;
}

static bool listening(void *arg)
{
    struct jh *h = arg;
    return shm_budget_in_use(h->seg) == 1 && pgt_query_ll(db, backend_pid_sql) != 0;
}

static void on_stopped(void *arg)
{
    *(bool *)arg = true;
}

static bool flag_set(void *arg)
{
    return *(bool *)arg;
}

int main(void)
{
    struct jh h;
    struct watch w;
    char sql[128];
    const char *url;
    bool stopped = false;
    long long pid;

    tap_timeout(60);
    pgt_db_url();
    url = jt_create_job_db("pgct_t413");
    db = jt_connect(url);
    jh_init(&h, url, NULL, 1);
    jh_listen(&h, 0, 0);

    ok(jh_wait(&h, listening, &h, 10000), "the job-queue connection listens on its one slot");
    memset(&w, 0, sizeof w);
    w.h = &h;
    w.old_pid = pgt_query_ll(db, backend_pid_sql);

    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", w.old_pid);
    jt_exec(db, sql);
    ok(jh_wait(&h, relistened, &w, 15000), "it listens again on a new backend after the old "
                                           "one was terminated");
    is_int(w.over, 0,
           "the server never held more of our connections than budget slots were taken "
           "(%d samples)",
           w.samples);
    is_int(shm_budget_in_use(h.seg), 1, "one slot taken once listening again");

    pid = pgt_query_ll(db, backend_pid_sql);
    sup_jobq_stop(h.jobs, on_stopped, &stopped);
    h.jobs = NULL;
    is_int(shm_budget_in_use(h.seg), 1, "right after the stop the slot is still taken");
    ok(jh_wait(&h, flag_set, &stopped, 5000), "the stop completes");
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %lld", pid);
    is_int(pgt_query_ll(db, sql), 0, "when the stop completes the backend is gone");
    is_int(shm_budget_in_use(h.seg), 0, "and its slot is free");

    jh_done(&h);
    PQfinish(db);
    return done_testing();
}
