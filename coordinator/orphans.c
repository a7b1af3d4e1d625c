/*
 * Orphaned jobs: when a job worker dies the supervisor unlocks every job its incarnation
 * ("host:pid:generation") had claimed, at once, so they run again without waiting for a
 * lease; those it claimed but never started get their attempt back. A periodic sweep
 * refreshes the leases (locked_at) of this host's live job workers, frees leases nobody
 * refreshed (a host that vanished), reads the queue depth, and vacuums the jobs table when
 * dead rows pile up faster than autovacuum wakes up. At start, and at each sweep, jobs
 * locked by processes of this host that no longer exist are freed (a run killed whole, or
 * a claim in flight when a worker died, which the server commits after that worker's
 * unlock); a lease that expired, or a process this supervisor did not see die, charges
 * every job it frees, as nobody knows which ones started.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_jobq.h"

/*
 * Frees the jobs of one incarnation: $1 locked_by, $2 the reason kept as last_error, $3
 * the claim_seq from which its jobs never started (the worker's jobs_unstarted_from in
 * shm; NULL = not known). A job that started (claim_seq below $3, or unnumbered) is charged
 * the attempt its claim counted: it keeps the reason as its error and is kept as failed
 * when that was its last attempt (a job that kills its worker must not run forever). A job
 * that never started gets the attempt back and keeps its last error, as if never claimed.
 * A job whose cancel was requested ends as cancelled.
 * Columns: jobs freed, jobs given back.
 */
static const char unlock_sql[] =
    "WITH f AS (UPDATE pgcorral.jobs SET locked_by = NULL, locked_at = NULL,"
    "   attempts = CASE WHEN claim_seq >= $3::bigint THEN greatest(attempts - 1, 0)"
    "     ELSE attempts END,"
    "   last_error = CASE WHEN claim_seq >= $3::bigint THEN last_error ELSE $2 END,"
    "   outcome = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'"
    "     WHEN claim_seq >= $3::bigint THEN NULL"
    "     WHEN attempts >= max_attempts THEN 'failed' END,"
    "   finished_at = CASE WHEN cancel_requested_at IS NOT NULL THEN now()"
    "     WHEN claim_seq >= $3::bigint THEN NULL"
    "     WHEN attempts >= max_attempts THEN now() END"
    "   WHERE locked_by = $1 RETURNING coalesce(claim_seq >= $3::bigint, false) AS unstarted)"
    " SELECT count(*), count(*) FILTER (WHERE unstarted) FROM f";

/*
 * The sweep, one statement: refresh the leases of live incarnations ($2, text[]), free the
 * leases older than $1 seconds of everyone else, and count jobs by queue and state.
 */
static const char sweep_sql[] =
    "WITH hb AS (UPDATE pgcorral.jobs SET locked_at = now()"
    "   WHERE locked_by = ANY($2::text[]) RETURNING 1),"
    " freed AS (UPDATE pgcorral.jobs SET locked_by = NULL, locked_at = NULL,"
    "   last_error = 'lease expired: ' || locked_by || ' stopped refreshing it (host gone?)',"
    "   outcome = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'"
    "     WHEN attempts >= max_attempts THEN 'failed' END,"
    "   finished_at = CASE WHEN cancel_requested_at IS NOT NULL"
    "     OR attempts >= max_attempts THEN now() END"
    "   WHERE locked_by IS NOT NULL AND locked_at < now() - make_interval(secs => $1::int)"
    "   AND locked_by <> ALL($2::text[]) RETURNING 1)"
    " SELECT (SELECT count(*) FROM freed), (SELECT count(*) FROM hb),"
    "  pg_stat_get_dead_tuples('pgcorral.jobs'::regclass),"
    "  coalesce((SELECT json_object_agg(queue, json_build_object('ready', ready,"
    "    'scheduled', scheduled, 'running', running, 'failed', failed) ORDER BY queue)"
    "   FROM (SELECT queue,"
    "     count(*) FILTER (WHERE locked_by IS NULL AND outcome IS NULL AND run_at <= now())"
    "       AS ready,"
    "     count(*) FILTER (WHERE locked_by IS NULL AND outcome IS NULL AND run_at > now())"
    "       AS scheduled,"
    "     count(*) FILTER (WHERE locked_by IS NOT NULL) AS running,"
    "     count(*) FILTER (WHERE outcome = 'failed') AS failed"
    "    FROM pgcorral.jobs GROUP BY queue) q), '{}')";

/* Dead rows of the jobs table (as the statistics last said) that make the sweep vacuum
 * it: autovacuum wakes up once a minute (autovacuum_naptime, server-wide), too seldom for
 * a table that churns thousands of rows a second. */
#define VACUUM_DEAD_ROWS 20000

/* One batch of pruning: $1 the outcomes (text[]), $2 their retention in seconds, $3 the
 * batch size. Returns the rows deleted (pgcorral.prune_jobs, migration 7). */
static const char prune_sql[] =
    "SELECT pgcorral.prune_jobs($1::text[], make_interval(secs => $2::int), $3::int)";

/* Incarnations of this host that hold jobs ($1 = "host:"). */
static const char scan_sql[] = "SELECT DISTINCT locked_by FROM pgcorral.jobs"
                               " WHERE locked_by IS NOT NULL AND starts_with(locked_by, $1)";

void sup_jobq_live_workers(const struct shm_segment *seg, char *buf, size_t size)
{
    size_t len = 0;
    char lb[96];

    len += (size_t)snprintf(buf, size, "{");
    for (int i = 0; i < SHM_MAX_WORKERS && len < size; i++) {
        const struct shm_worker *w = &seg->workers[i];
        uint32_t state = atomic_load_explicit(&w->state, memory_order_relaxed);
        pid_t pid = atomic_load_explicit(&w->pid, memory_order_relaxed);
        if (atomic_load_explicit(&w->role, memory_order_relaxed) != SHM_ROLE_JOB || pid <= 0 ||
            (state != SHM_STATE_STARTING && state != SHM_STATE_READY &&
             state != SHM_STATE_DRAINING))
            continue;
        rt_job_locked_by(lb, sizeof lb, pid,
                         atomic_load_explicit(&w->generation, memory_order_relaxed));
        /* Host names have no quotes or backslashes; quoting keeps commas safe. */
        len += (size_t)snprintf(buf + len, size - len, "%s\"%s\"", len > 1 ? "," : "", lb);
    }
    if (len + 2 <= size)
        snprintf(buf + len, size - len, "}");
    else
        snprintf(buf, size, "{}");
}

int sup_orphans_sql(const struct sup_jobq *j, const struct sup_jobq_op *op, const char **sql,
                    const char *values[SUP_JOBQ_OP_PARAMS], char *buf, size_t buflen)
{
    static char live[SHM_MAX_WORKERS * 100 + 4];
    char host[96];
    size_t n;

    switch (op->kind) {
    case SUP_JOBQ_OP_UNLOCK:
        *sql = unlock_sql;
        values[0] = op->locked_by;
        values[1] = op->reason;
        values[2] = NULL;
        if (op->unstarted_from > 0) {
            snprintf(buf, buflen, "%llu", (unsigned long long)op->unstarted_from);
            values[2] = buf;
        }
        return 3;
    case SUP_JOBQ_OP_SWEEP:
        *sql = sweep_sql;
        snprintf(buf, buflen, "%d", sup_jobq_lease_s(j));
        values[0] = buf;
        sup_jobq_live_workers(sup_jobq_seg(j), live, sizeof live);
        values[1] = live;
        return 2;
    case SUP_JOBQ_OP_VACUUM:
        /* Another supervisor vacuuming already is enough. */
        *sql = "VACUUM (SKIP_LOCKED) pgcorral.jobs";
        return 0;
    case SUP_JOBQ_OP_PRUNE_COMPLETED:
    case SUP_JOBQ_OP_PRUNE_FAILED: {
        const struct sup_jobq_opts *o = sup_jobq_opts_of(j);
        bool completed = op->kind == SUP_JOBQ_OP_PRUNE_COMPLETED;
        *sql = prune_sql;
        values[0] = completed ? "{completed}" : "{failed,cancelled}";
        n = (size_t)snprintf(buf, buflen, "%d", completed ? o->keep_completed_s : o->keep_failed_s);
        snprintf(buf + n + 1, buflen - n - 1, "%d", o->prune_batch);
        values[1] = buf;
        values[2] = buf + n + 1;
        return 3;
    }
    default:
        *sql = scan_sql;
        rt_job_locked_by(host, sizeof host, 0, 0); /* "host:0:0" -> "host:" */
        n = strlen(host);
        while (n > 0 && host[n - 1] != ':')
            n--;
        if (n > 0)
            n--;
        while (n > 0 && host[n - 1] != ':')
            n--;
        snprintf(buf, buflen, "%.*s", (int)n, host);
        values[0] = buf;
        return 1;
    }
}

/* Whether pid is a pgcorral job worker of another supervisor on this host. */
static bool foreign_job_worker(pid_t pid)
{
    char path[64], cmd[64];
    FILE *f;
    size_t n;

    if (kill(pid, 0) < 0 && errno == ESRCH)
        return false;
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return false;
    n = fread(cmd, 1, sizeof cmd - 1, f);
    fclose(f);
    cmd[n] = '\0';
    return strncmp(cmd, "pgcorral: job", 13) == 0;
}

/* The scan's result: queue an unlock for every incarnation that is gone. */
static void scan_result(struct sup_jobq *j, PGresult *res)
{
    const struct shm_segment *seg = sup_jobq_seg(j);

    for (int i = 0; i < PQntuples(res); i++) {
        const char *lb = PQgetvalue(res, i, 0);
        const char *colon = strrchr(lb, ':');
        const char *pidp;
        bool mine = false;
        pid_t pid;

        if (!colon || colon == lb)
            continue;
        pidp = colon - 1;
        while (pidp > lb && *pidp != ':')
            pidp--;
        pid = (pid_t)atoi(pidp + 1);
        for (int w = 0; w < SHM_MAX_WORKERS && !mine; w++) {
            char cur[96];
            const struct shm_worker *sw = &seg->workers[w];
            /* Relaxed: this supervisor wrote both itself, at fork. */
            if (atomic_load_explicit(&sw->pid, memory_order_relaxed) != pid)
                continue;
            rt_job_locked_by(cur, sizeof cur, pid,
                             atomic_load_explicit(&sw->generation, memory_order_relaxed));
            mine = strcmp(cur, lb) == 0;
            if (!mine)
                pid = -1; /* our own worker now: that pid's older incarnation is gone */
        }
        if (mine || (pid > 0 && foreign_job_worker(pid)))
            continue;
        struct sup_jobq_op *op = calloc(1, sizeof *op);
        if (!op)
            return;
        op->kind = SUP_JOBQ_OP_UNLOCK;
        /* Known when this supervisor saw it die: jobs it claimed after its unlock. */
        op->unstarted_from = sup_jobq_dead_unstarted_from(j, lb);
        snprintf(op->locked_by, sizeof op->locked_by, "%s", lb);
        snprintf(op->reason, sizeof op->reason,
                 "worker %s is gone (killed, or its run was stopped)", lb);
        sup_jobq_enqueue_op(j, op);
    }
}

/* A batch of pruning deleted n jobs: a full batch is followed by the next at once (behind
 * whatever else is queued); the round's total is logged at its end. */
static void prune_result(struct sup_jobq *j, const struct sup_jobq_op *op, long long n)
{
    long long total = op->pruned + n;

    if (n >= sup_jobq_opts_of(j)->prune_batch) {
        struct sup_jobq_op *next = calloc(1, sizeof *next);
        if (next) {
            next->kind = op->kind;
            next->pruned = total;
            next->batches = op->batches + 1;
            sup_jobq_enqueue_op(j, next);
            return;
        }
    }
    if (total > 0)
        rt_log(RT_LOG_INFO, "pruned finished jobs",
               json_pack("{s:s,s:I,s:i,s:i}", "outcomes",
                         op->kind == SUP_JOBQ_OP_PRUNE_COMPLETED ? "completed" : "failed,cancelled",
                         "jobs", (json_int_t)total, "batches", op->batches + 1, "keep_s",
                         op->kind == SUP_JOBQ_OP_PRUNE_COMPLETED
                             ? sup_jobq_opts_of(j)->keep_completed_s
                             : sup_jobq_opts_of(j)->keep_failed_s));
}

bool sup_orphans_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                        const char *err)
{
    long long n;

    if (!res) {
        rt_log(RT_LOG_ERROR, "job housekeeping statement failed",
               json_pack("{s:s,s:s}", "op",
                         op->kind == SUP_JOBQ_OP_UNLOCK       ? "unlock"
                         : op->kind == SUP_JOBQ_OP_SWEEP      ? "sweep"
                         : op->kind == SUP_JOBQ_OP_VACUUM     ? "vacuum"
                         : op->kind == SUP_JOBQ_OP_SCAN_LOCAL ? "scan"
                                                              : "prune",
                         "error", err ? err : "no result"));
        if (op->kind == SUP_JOBQ_OP_UNLOCK && op->tries < 5) {
            /* Try again (after the ops queued meanwhile); the lease is the last resort. */
            struct sup_jobq_op *again = malloc(sizeof *again);
            if (again) {
                *again = *op;
                again->tries++;
                sup_jobq_enqueue_op(j, again);
            }
        }
        return false;
    }
    switch (op->kind) {
    case SUP_JOBQ_OP_UNLOCK:
        n = atoll(PQgetvalue(res, 0, 0));
        if (n > 0)
            rt_log(RT_LOG_WARN, "unlocked the jobs of a worker that died",
                   json_pack("{s:s,s:I,s:I,s:I}", "locked_by", op->locked_by, "jobs", (json_int_t)n,
                             "given_back", (json_int_t)atoll(PQgetvalue(res, 0, 1)), "after_ms",
                             (json_int_t)((shm_now_us() - op->queued_us) / 1000)));
        return n > 0;
    case SUP_JOBQ_OP_SWEEP:
        n = atoll(PQgetvalue(res, 0, 0));
        if (n > 0)
            rt_log(RT_LOG_WARN, "freed jobs whose lease expired",
                   json_pack("{s:I,s:i}", "jobs", (json_int_t)n, "lease_s", sup_jobq_lease_s(j)));
        sup_jobq_set_depth(j, json_loads(PQgetvalue(res, 0, 3), 0, NULL),
                           atoll(PQgetvalue(res, 0, 2)));
        if (atoll(PQgetvalue(res, 0, 2)) >= VACUUM_DEAD_ROWS) {
            struct sup_jobq_op *vac = calloc(1, sizeof *vac);
            if (vac) {
                vac->kind = SUP_JOBQ_OP_VACUUM;
                sup_jobq_enqueue_op(j, vac);
            }
        }
        return n > 0;
    case SUP_JOBQ_OP_VACUUM:
        return false;
    case SUP_JOBQ_OP_PRUNE_COMPLETED:
    case SUP_JOBQ_OP_PRUNE_FAILED:
        prune_result(j, op, atoll(PQgetvalue(res, 0, 0)));
        return false;
    default:
        scan_result(j, res);
        return false;
    }
}

void sup_jobq_remember_dead(struct sup_jobq *j, const char *locked_by, uint64_t unstarted_from)
{
    unsigned i = j->dead_next++ % SUP_JOBQ_DEAD_MAX;
    snprintf(j->dead[i].locked_by, sizeof j->dead[i].locked_by, "%s", locked_by);
    j->dead[i].unstarted_from = unstarted_from;
}

uint64_t sup_jobq_dead_unstarted_from(const struct sup_jobq *j, const char *locked_by)
{
    for (unsigned i = 0; i < SUP_JOBQ_DEAD_MAX; i++)
        if (strcmp(j->dead[i].locked_by, locked_by) == 0)
            return j->dead[i].unstarted_from;
    return 0;
}

void sup_jobq_worker_died(struct sup_jobq *j, pid_t pid, uint32_t generation,
                          uint64_t unstarted_from)
{
    struct sup_jobq_op *op;
    char lb[96];

    if (!j)
        return;
    rt_job_locked_by(lb, sizeof lb, pid, generation);
    /* First: the scan (at the next sweep) frees what this unlock misses. */
    sup_jobq_remember_dead(j, lb, unstarted_from);
    op = calloc(1, sizeof *op);
    if (!op) {
        rt_logf(RT_LOG_ERROR, "out of memory: the jobs of dead worker %d wait for the next sweep",
                (int)pid);
        return;
    }
    op->kind = SUP_JOBQ_OP_UNLOCK;
    op->unstarted_from = unstarted_from;
    snprintf(op->locked_by, sizeof op->locked_by, "%s", lb);
    snprintf(op->reason, sizeof op->reason, "worker %s died while it held this job", op->locked_by);
    sup_jobq_enqueue_op(j, op);
}
