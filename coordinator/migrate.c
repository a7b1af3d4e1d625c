/*
 * Versioned migrations of the `pgcorral` schema: the jobs table, its indexes and the SQL
 * enqueue functions. All pending migrations run in one transaction under an advisory lock,
 * so two supervisors starting at once serialise and the second finds nothing to do.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/jobs_int.h"
#include "runtime/rt_util.h"
#include "runtime/rt_jobq.h"

/* pg_advisory_xact_lock key of the migrations: "pgcorral" in ASCII, as a bigint. */
#define MIGRATE_LOCK_KEY "7045631834937901420"

/* First key of the two-key advisory lock of a limited queue's claims ("pgcq"; the second
 * is hashtext(queue)). Two-key locks never collide with the one-key migration lock. */
#define QUEUE_LOCK_CLASS "1885823857"

/*
 * Version 1: the jobs table (DESIGN "Job workers"), the partial index that serves the
 * claim (`locked_by IS NULL AND failed_at IS NULL ... ORDER BY priority, run_at, id`),
 * a unique index for dedupe keys, and the enqueue functions.
 *
 * A job is, by its columns:
 *   ready      locked_by IS NULL, failed_at IS NULL, run_at <= now()
 *   scheduled  locked_by IS NULL, failed_at IS NULL, run_at > now()  (also: waiting to retry)
 *   running    locked_by = 'host:pid:generation' of the worker incarnation that claimed it
 *   failed     failed_at IS NOT NULL: attempts used up, last_error says why; kept
 *   done       deleted
 *
 * Duplicate keys: while a job with key K exists (ready, scheduled, running or failed),
 * adding another job with key K adds nothing and returns the existing job's id; once that
 * job is done (deleted), K is free again. Notifications: one per queue per transaction
 * (PostgreSQL folds identical NOTIFYs of one transaction), only for jobs due now.
 */
static const char migration_1[] =
    "CREATE TABLE pgcorral.jobs ("
    "  id bigserial PRIMARY KEY,"
    "  queue text NOT NULL DEFAULT 'default' CHECK (queue <> ''),"
    "  task text NOT NULL CHECK (task <> ''),"
    "  payload jsonb NOT NULL DEFAULT '{}',"
    "  priority int NOT NULL DEFAULT 0,"
    "  run_at timestamptz NOT NULL DEFAULT now(),"
    "  attempts int NOT NULL DEFAULT 0,"
    "  max_attempts int NOT NULL DEFAULT 25 CHECK (max_attempts >= 1),"
    "  last_error text,"
    "  locked_by text,"
    "  locked_at timestamptz,"
    "  key text CHECK (key <> ''),"
    "  created_at timestamptz NOT NULL DEFAULT now(),"
    "  failed_at timestamptz"
    ") WITH (fillfactor = 80,"
    "        autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,"
    "        autovacuum_vacuum_insert_scale_factor = 0,"
    "        autovacuum_vacuum_insert_threshold = 10000,"
    "        autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,"
    "        autovacuum_vacuum_cost_delay = 0);\n"
    "CREATE INDEX jobs_claim_idx ON pgcorral.jobs (priority, run_at, id)"
    "  WHERE locked_by IS NULL AND failed_at IS NULL;\n"
    "CREATE UNIQUE INDEX jobs_key_idx ON pgcorral.jobs (key) WHERE key IS NOT NULL;\n"
    "CREATE INDEX jobs_locked_idx ON pgcorral.jobs (locked_by, locked_at)"
    "  WHERE locked_by IS NOT NULL;\n"
    /* What is wrong with one job description (a JSON object), or NULL. Inlined. */
    "CREATE FUNCTION pgcorral.spec_problem(e jsonb) RETURNS text"
    " LANGUAGE sql IMMUTABLE AS $f$ SELECT CASE"
    "  WHEN jsonb_typeof(e) IS DISTINCT FROM 'object' THEN 'must be a JSON object'"
    "  WHEN e - ARRAY['task','payload','queue','run_at','priority','max_attempts','key']"
    "       <> '{}'::jsonb THEN format('unknown field \"%s\"', (SELECT min(k) FROM"
    "       jsonb_object_keys(e - ARRAY['task','payload','queue','run_at','priority',"
    "       'max_attempts','key']) k))"
    "  WHEN jsonb_typeof(e->'task') IS DISTINCT FROM 'string' OR e->>'task' = ''"
    "       THEN '\"task\" must be a non-empty string'"
    "  WHEN jsonb_typeof(e->'queue') NOT IN ('string','null') OR e->>'queue' = ''"
    "       THEN '\"queue\" must be a non-empty string'"
    "  WHEN jsonb_typeof(e->'run_at') NOT IN ('string','null')"
    "       THEN '\"run_at\" must be a timestamp string'"
    "  WHEN jsonb_typeof(e->'priority') NOT IN ('number','null')"
    "       OR (e->>'priority')::numeric NOT BETWEEN -2147483648 AND 2147483647"
    "       OR (e->>'priority')::numeric % 1 <> 0"
    "       THEN '\"priority\" must be an integer'"
    "  WHEN jsonb_typeof(e->'max_attempts') NOT IN ('number','null')"
    "       OR (e->>'max_attempts')::numeric NOT BETWEEN 1 AND 2147483647"
    "       OR (e->>'max_attempts')::numeric % 1 <> 0"
    "       THEN '\"max_attempts\" must be an integer of at least 1'"
    "  WHEN jsonb_typeof(e->'key') NOT IN ('string','null') OR e->>'key' = ''"
    "       THEN '\"key\" must be a non-empty string'"
    "  END $f$;\n"
    /* add_job with a second result: whether the job is new (false: duplicate key). */
    "CREATE FUNCTION pgcorral.add_job_ex(task text, payload jsonb DEFAULT '{}',"
    "  queue text DEFAULT 'default', run_at timestamptz DEFAULT NULL, priority int DEFAULT 0,"
    "  max_attempts int DEFAULT 25, key text DEFAULT NULL,"
    "  OUT id bigint, OUT created boolean)"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "#variable_conflict use_column\n"
    "DECLARE\n"
    "  q text := coalesce(add_job_ex.queue, 'default');\n"
    "  due timestamptz := coalesce(add_job_ex.run_at, now());\n"
    "  new_id bigint;\n"
    "BEGIN\n"
    "  IF add_job_ex.task IS NULL OR add_job_ex.task = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: task must be a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF q = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: queue must be a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF add_job_ex.max_attempts < 1 THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: max_attempts must be at least 1, got %',"
    "      add_job_ex.max_attempts USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF add_job_ex.key = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: key must be NULL or a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    /* A keyed job that exists is returned; one deleted between the INSERT and the SELECT
     * (it finished) frees the key: try again. A snapshot that cannot see the conflicting
     * row (REPEATABLE READ) ends the loop with a serialization failure, which callers
     * retry like any other. */
    "  FOR attempt IN 1..3 LOOP\n"
    "    INSERT INTO pgcorral.jobs AS j (task, payload, queue, run_at, priority,"
    "        max_attempts, key)"
    "      VALUES (add_job_ex.task, coalesce(add_job_ex.payload, '{}'), q, due,"
    "        coalesce(add_job_ex.priority, 0), coalesce(add_job_ex.max_attempts, 25),"
    "        add_job_ex.key)"
    "      ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING"
    "      RETURNING j.id INTO new_id;\n"
    "    IF new_id IS NOT NULL THEN\n"
    "      add_job_ex.id := new_id; add_job_ex.created := true;\n"
    "      IF due <= now() THEN PERFORM pg_notify('" JOB_CHANNEL "', q); END IF;\n"
    "      RETURN;\n"
    "    END IF;\n"
    "    SELECT j.id INTO new_id FROM pgcorral.jobs j WHERE j.key = add_job_ex.key;\n"
    "    IF new_id IS NOT NULL THEN\n"
    "      add_job_ex.id := new_id; add_job_ex.created := false;\n"
    "      RETURN;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    "  RAISE EXCEPTION 'pgcorral.add_job: key % is taken by a job this transaction cannot"
    " see', add_job_ex.key USING ERRCODE = '40001';\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.add_job(task text, payload jsonb DEFAULT '{}',"
    "  queue text DEFAULT 'default', run_at timestamptz DEFAULT NULL, priority int DEFAULT 0,"
    "  max_attempts int DEFAULT 25, key text DEFAULT NULL) RETURNS bigint"
    " LANGUAGE sql VOLATILE AS $f$"
    "  SELECT id FROM pgcorral.add_job_ex(task, payload, queue, run_at, priority,"
    "    max_attempts, key) $f$;\n"
    /* Bulk: a JSON array of job descriptions (the fields of POST /api/v1/jobs). Returns the
     * ids in input order. Jobs without a key are inserted by one statement. */
    "CREATE FUNCTION pgcorral.add_jobs(specs jsonb) RETURNS SETOF bigint"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE bad text;\n"
    "BEGIN\n"
    "  IF jsonb_typeof(specs) IS DISTINCT FROM 'array' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_jobs: expects a JSON array of jobs'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  SELECT format('pgcorral.add_jobs: job %s: %s', ord, msg) INTO bad FROM"
    "    (SELECT ord, pgcorral.spec_problem(e) AS msg"
    "       FROM jsonb_array_elements(specs) WITH ORDINALITY AS t(e, ord)) x"
    "    WHERE msg IS NOT NULL ORDER BY ord LIMIT 1;\n"
    "  IF bad IS NOT NULL THEN RAISE EXCEPTION '%', bad USING ERRCODE = '22023'; END IF;\n"
    "  PERFORM pg_notify('" JOB_CHANNEL "', q) FROM (SELECT DISTINCT"
    "      coalesce(e->>'queue', 'default') AS q"
    "    FROM jsonb_array_elements(specs) e"
    "    WHERE coalesce((e->>'run_at')::timestamptz, now()) <= now()) d;\n"
    "  RETURN QUERY\n"
    "    WITH s AS (SELECT ord, e FROM jsonb_array_elements(specs) WITH ORDINALITY AS t(e, ord)),"
    "    plain AS MATERIALIZED (SELECT ord, e, nextval('pgcorral.jobs_id_seq') AS id"
    "      FROM s WHERE e->>'key' IS NULL ORDER BY ord),"
    "    ins AS (INSERT INTO pgcorral.jobs (id, task, payload, queue, run_at, priority,"
    "        max_attempts)"
    "      SELECT id, e->>'task', coalesce(nullif(e->'payload', 'null'), '{}'),"
    "        coalesce(e->>'queue', 'default'), coalesce((e->>'run_at')::timestamptz, now()),"
    "        coalesce((e->>'priority')::int, 0), coalesce((e->>'max_attempts')::int, 25)"
    "      FROM plain),"
    "    keyed AS MATERIALIZED (SELECT ord, (pgcorral.add_job_ex(e->>'task',"
    "        coalesce(nullif(e->'payload', 'null'), '{}'), e->>'queue',"
    "        (e->>'run_at')::timestamptz, (e->>'priority')::int, (e->>'max_attempts')::int,"
    "        e->>'key')).id AS id"
    "      FROM s WHERE e->>'key' IS NOT NULL)"
    "    SELECT x.id FROM (SELECT ord, id FROM plain UNION ALL SELECT ord, id FROM keyed) x"
    "    ORDER BY x.ord;\n"
    "END $f$;\n"
    /* Puts a failed (or scheduled) job back to run now with fresh attempts. */
    "CREATE FUNCTION pgcorral.retry_job(job_id bigint) RETURNS boolean"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE q text;\n"
    "BEGIN\n"
    "  UPDATE pgcorral.jobs SET failed_at = NULL, attempts = 0, run_at = now()"
    "    WHERE id = job_id AND locked_by IS NULL RETURNING queue INTO q;\n"
    "  IF q IS NULL THEN RETURN false; END IF;\n"
    "  PERFORM pg_notify('" JOB_CHANNEL "', q);\n"
    "  RETURN true;\n"
    "END $f$;\n";

/*
 * Version 2: no index on locked_by. Every claim would insert an entry into it (the claim
 * changes locked_by); the statements that look jobs up by locked_by (orphan unlock, the
 * supervisor's sweep) are rare and scan instead. Measured: +15-30 % jobs/s on no-op jobs.
 */
static const char migration_2[] = "DROP INDEX IF EXISTS pgcorral.jobs_locked_idx;\n";

/*
 * Version 3: the claim and the ack as functions with their plans pinned. Run as plain
 * statements, their plans followed the table's statistics: right after a bulk enqueue,
 * before autoanalyze has seen the new rows, the planner thought the table tiny and claimed
 * with a bitmap scan and a sort of every due job (one claim of 10 read all 200k rows:
 * 5k jobs/s instead of 40k), and a generic plan joined with a sequential scan. Inside the
 * functions only index scans and nested loops are allowed, whatever the statistics say;
 * JIT is off, as the cost of a plan with a disabled node (the final sort of a few rows)
 * is far over jit_above_cost and compiling it took 180 ms per claim.
 *
 * claim_jobs(worker, n, queues, after_*): up to n due, unlocked, not failed jobs (of the
 * queues in the array, NULL = any) in priority order (lower first), then run_at, then id,
 * skipping rows other workers hold; locks them for incarnation `worker` and counts the
 * attempt. Columns: the job, the time from enqueue (or run_at, when later) to the claim,
 * and run_at. With after_* (the last job of the previous batch), the scan starts behind
 * that job instead of at the front of the index: while a backlog drains, the front is a
 * growing run of entries of jobs already claimed or done, which every claim would step
 * over until vacuum removes them (at 100k jobs done, 400 index pages per claim).
 *
 * ack_jobs(worker, done, ids, errs, delays_ms, giveback): deletes the done jobs and unlocks
 * the others (errs NULL = given back unstarted, else rescheduled after delay_ms; giveback
 * = attempts to return, 1 for a job that never started); a job whose attempts are used up
 * keeps its row with failed_at set. Only rows still locked by `worker` change. Returns the
 * numbers of rows deleted and updated.
 */
static const char migration_3[] =
    "CREATE FUNCTION pgcorral.claim_jobs(worker text, n int, queues text[] DEFAULT NULL,"
    "  after_priority int DEFAULT NULL, after_run_at timestamptz DEFAULT NULL,"
    "  after_id bigint DEFAULT NULL)"
    " RETURNS TABLE (id bigint, queue text, task text, payload jsonb, priority int,"
    "   attempts int, max_attempts int, key text, wait_s double precision,"
    "   run_at timestamptz)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "BEGIN\n"
    "  RETURN QUERY\n"
    "    WITH u AS (UPDATE pgcorral.jobs j SET locked_by = worker, locked_at = now(),"
    "        attempts = j.attempts + 1"
    "      WHERE j.ctid = ANY (ARRAY(SELECT c.ctid FROM pgcorral.jobs c"
    "        WHERE c.locked_by IS NULL AND c.failed_at IS NULL AND c.run_at <= now()"
    "          AND (queues IS NULL OR c.queue = ANY (queues))"
    "          AND (c.priority, c.run_at, c.id) > (coalesce(after_priority, -2147483648),"
    "            coalesce(after_run_at, '-infinity'), coalesce(after_id, 0))"
    "        ORDER BY c.priority, c.run_at, c.id LIMIT n FOR UPDATE SKIP LOCKED))"
    "      RETURNING j.*)"
    "    SELECT u.id, u.queue, u.task, u.payload, u.priority, u.attempts, u.max_attempts,"
    "      u.key, greatest(extract(epoch FROM now() - greatest(u.run_at, u.created_at)),"
    "        0)::float8, u.run_at"
    "    FROM u ORDER BY u.priority, u.run_at, u.id;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.ack_jobs(worker text, done bigint[], ids bigint[], errs text[],"
    "  delays_ms int[], giveback int[], OUT deleted bigint, OUT updated bigint)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "BEGIN\n"
    "  DELETE FROM pgcorral.jobs j WHERE j.id = ANY (done) AND j.locked_by = worker;\n"
    "  GET DIAGNOSTICS deleted = ROW_COUNT;\n"
    "  updated := 0;\n"
    "  IF cardinality(ids) > 0 THEN\n"
    "    UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL,"
    "        attempts = j.attempts - f.giveback, last_error = coalesce(f.err, j.last_error),"
    "        run_at = CASE WHEN f.err IS NULL THEN j.run_at"
    "          ELSE now() + f.delay_ms * interval '1 millisecond' END,"
    "        failed_at = CASE WHEN f.err IS NOT NULL AND j.attempts >= j.max_attempts"
    "          THEN now() END"
    "      FROM unnest(ids, errs, delays_ms, giveback) AS f(id, err, delay_ms, giveback)"
    "      WHERE j.id = f.id AND j.locked_by = worker;\n"
    "    GET DIAGNOSTICS updated = ROW_COUNT;\n"
    "  END IF;\n"
    "END $f$;\n";

/*
 * Version 4: attempts are charged only for runs. The claim still counts the attempt (one
 * statement, no round trip when a handler starts), but provisionally: it numbers the jobs
 * of each incarnation's claims in the order the worker runs them (claim_seq = seq_base +
 * the job's place in the batch; the worker passes seq_base, and its batches do not
 * overlap), and the worker publishes in shared memory the number of the first job whose
 * handler has not started. When the worker dies, the supervisor's release gives the
 * attempt back to every job it held from that number on: those never ran (see
 * coordinator/orphans.c). Rows claimed without seq_base (an older pgcorral on another
 * host) have claim_seq NULL and are charged as before.
 *
 * claim_jobs gains seq_base (last, with a default, so the six-argument call of an older
 * binary still resolves) and returns claim_seq after run_at. The order of the ctids in the
 * array is the claim order, so WITH ORDINALITY numbers the jobs without a sort; the join
 * is a nested loop over TID scans, as the `ctid = ANY` scan was.
 */
static const char migration_4[] =
    "ALTER TABLE pgcorral.jobs ADD COLUMN claim_seq bigint;\n"
    "DROP FUNCTION pgcorral.claim_jobs(text, int, text[], int, timestamptz, bigint);\n"
    "CREATE FUNCTION pgcorral.claim_jobs(worker text, n int, queues text[] DEFAULT NULL,"
    "  after_priority int DEFAULT NULL, after_run_at timestamptz DEFAULT NULL,"
    "  after_id bigint DEFAULT NULL, seq_base bigint DEFAULT NULL)"
    " RETURNS TABLE (id bigint, queue text, task text, payload jsonb, priority int,"
    "   attempts int, max_attempts int, key text, wait_s double precision,"
    "   run_at timestamptz, claim_seq bigint)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "BEGIN\n"
    "  RETURN QUERY\n"
    "    WITH u AS (UPDATE pgcorral.jobs j SET locked_by = worker, locked_at = now(),"
    "        attempts = j.attempts + 1, claim_seq = seq_base + o.ord"
    "      FROM unnest(ARRAY(SELECT c.ctid FROM pgcorral.jobs c"
    "        WHERE c.locked_by IS NULL AND c.failed_at IS NULL AND c.run_at <= now()"
    "          AND (queues IS NULL OR c.queue = ANY (queues))"
    "          AND (c.priority, c.run_at, c.id) > (coalesce(after_priority, -2147483648),"
    "            coalesce(after_run_at, '-infinity'), coalesce(after_id, 0))"
    "        ORDER BY c.priority, c.run_at, c.id LIMIT n FOR UPDATE SKIP LOCKED))"
    "        WITH ORDINALITY AS o(t, ord)"
    "      WHERE j.ctid = o.t"
    "      RETURNING j.*)"
    "    SELECT u.id, u.queue, u.task, u.payload, u.priority, u.attempts, u.max_attempts,"
    "      u.key, greatest(extract(epoch FROM now() - greatest(u.run_at, u.created_at)),"
    "        0)::float8, u.run_at, u.claim_seq"
    "    FROM u ORDER BY u.priority, u.run_at, u.id;\n"
    "END $f$;\n";

/*
 * Version 5: the request that enqueued a job. request_id holds the X-Request-Id of the HTTP
 * request that added it (POST /api/v1/jobs, pgc_enqueue in a route handler), so that a job
 * can be traced to its request in the access log and the slow-query log. Nullable, no
 * default: adding it rewrites nothing. add_job_req is add_job_ex with the request id first;
 * it sets the column on the job it created (a duplicate keeps the request of its first
 * enqueue).
 */
static const char migration_5[] =
    "ALTER TABLE pgcorral.jobs ADD COLUMN request_id text;\n"
    "CREATE FUNCTION pgcorral.add_job_req(request_id text, task text, payload jsonb DEFAULT '{}',"
    "  queue text DEFAULT 'default', run_at timestamptz DEFAULT NULL, priority int DEFAULT 0,"
    "  max_attempts int DEFAULT 25, key text DEFAULT NULL,"
    "  OUT id bigint, OUT created boolean)"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "BEGIN\n"
    "  SELECT a.id, a.created INTO id, created"
    "    FROM pgcorral.add_job_ex(add_job_req.task, add_job_req.payload, add_job_req.queue,"
    "      add_job_req.run_at, add_job_req.priority, add_job_req.max_attempts,"
    "      add_job_req.key) a;\n"
    "  IF add_job_req.created AND add_job_req.request_id IS NOT NULL THEN\n"
    "    UPDATE pgcorral.jobs j SET request_id = add_job_req.request_id"
    "      WHERE j.id = add_job_req.id;\n"
    "  END IF;\n"
    "END $f$;\n";

/*
 * Version 6: job states. A job that ends keeps an outcome instead of (only) disappearing:
 *   outcome              NULL while the job is live; 'completed', 'failed' or 'cancelled'
 *                        once it is terminal (failed_at goes: outcome 'failed' says it)
 *   finished_at          when it became terminal
 *   run_ms               how long the handler of a completed (or cancelled) job ran
 *   cancel_requested_at  a cancel was asked while the job ran: the handler sees it
 *                        (pgc_cancelled) and the job ends as cancelled when it returns
 * Existing failed jobs become outcome 'failed' with finished_at = failed_at.
 *
 * What a user sees, pgcorral.job_state(job): the outcome when there is one, else 'running'
 * (locked), 'scheduled' (run_at ahead) or 'queued'. CLI, HTTP and SQL all use it.
 *
 * The claim index covers live, unlocked jobs only; the key index covers live jobs only:
 * a failed, cancelled or completed job never blocks its key (add_job_ex follows it).
 * jobs_finished_idx serves the pruning of terminal jobs by age and the listing by state.
 *
 * ack_jobs(worker, done, ids, errs, delays_ms, giveback, final, keep_completed, run_ms):
 * done jobs are deleted, or with keep_completed kept as 'completed' with finished_at and
 * run_ms (the handler's run time, in the order of done; NULL = not known). A done job
 * whose cancel was requested ends as 'cancelled' either way. For the others (ids[] with
 * errs[], delays_ms[], giveback[], final[]): final true = failed now and for good; err
 * NULL = no error recorded, the attempt given back per giveback, run_at moved to now() +
 * delay_ms when delay_ms > 0; err not NULL = retry after delay_ms, or 'failed' when the
 * attempts are used up. A job whose cancel was requested ends as 'cancelled' whatever its
 * handler returned. Only rows still locked by `worker` change. Returns the numbers of rows
 * deleted and updated.
 */
static const char migration_6[] =
    "ALTER TABLE pgcorral.jobs"
    "  ADD COLUMN outcome text CHECK (outcome IN ('completed', 'failed', 'cancelled')),"
    "  ADD COLUMN finished_at timestamptz, ADD COLUMN run_ms bigint,"
    "  ADD COLUMN cancel_requested_at timestamptz;\n"
    "UPDATE pgcorral.jobs SET outcome = 'failed', finished_at = failed_at"
    "  WHERE failed_at IS NOT NULL;\n"
    "DROP INDEX pgcorral.jobs_claim_idx;\n"
    "DROP INDEX pgcorral.jobs_key_idx;\n"
    "ALTER TABLE pgcorral.jobs DROP COLUMN failed_at;\n"
    "CREATE INDEX jobs_claim_idx ON pgcorral.jobs (priority, run_at, id)"
    "  WHERE locked_by IS NULL AND outcome IS NULL;\n"
    "CREATE UNIQUE INDEX jobs_key_idx ON pgcorral.jobs (key)"
    "  WHERE key IS NOT NULL AND outcome IS NULL;\n"
    "CREATE INDEX jobs_finished_idx ON pgcorral.jobs (outcome, finished_at)"
    "  WHERE outcome IS NOT NULL;\n"
    "CREATE FUNCTION pgcorral.job_state(j pgcorral.jobs) RETURNS text"
    " LANGUAGE sql STABLE AS $f$ SELECT CASE WHEN j.outcome IS NOT NULL THEN j.outcome"
    "  WHEN j.locked_by IS NOT NULL THEN 'running' WHEN j.run_at > now() THEN 'scheduled'"
    "  ELSE 'queued' END $f$;\n"
    /* add_job_ex, with the key rule of the key index. */
    "CREATE OR REPLACE FUNCTION pgcorral.add_job_ex(task text, payload jsonb DEFAULT '{}',"
    "  queue text DEFAULT 'default', run_at timestamptz DEFAULT NULL, priority int DEFAULT 0,"
    "  max_attempts int DEFAULT 25, key text DEFAULT NULL,"
    "  OUT id bigint, OUT created boolean)"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "#variable_conflict use_column\n"
    "DECLARE\n"
    "  q text := coalesce(add_job_ex.queue, 'default');\n"
    "  due timestamptz := coalesce(add_job_ex.run_at, now());\n"
    "  new_id bigint;\n"
    "BEGIN\n"
    "  IF add_job_ex.task IS NULL OR add_job_ex.task = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: task must be a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF q = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: queue must be a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF add_job_ex.max_attempts < 1 THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: max_attempts must be at least 1, got %',"
    "      add_job_ex.max_attempts USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  IF add_job_ex.key = '' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.add_job: key must be NULL or a non-empty string'"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    /* A live keyed job is returned; one that finished between the INSERT and the SELECT
     * frees the key: try again. A snapshot that cannot see the conflicting
     * row (REPEATABLE READ) ends the loop with a serialization failure, which callers
     * retry like any other. */
    "  FOR attempt IN 1..3 LOOP\n"
    "    INSERT INTO pgcorral.jobs AS j (task, payload, queue, run_at, priority,"
    "        max_attempts, key)"
    "      VALUES (add_job_ex.task, coalesce(add_job_ex.payload, '{}'), q, due,"
    "        coalesce(add_job_ex.priority, 0), coalesce(add_job_ex.max_attempts, 25),"
    "        add_job_ex.key)"
    "      ON CONFLICT (key) WHERE key IS NOT NULL AND outcome IS NULL DO NOTHING"
    "      RETURNING j.id INTO new_id;\n"
    "    IF new_id IS NOT NULL THEN\n"
    "      add_job_ex.id := new_id; add_job_ex.created := true;\n"
    "      IF due <= now() THEN PERFORM pg_notify('" JOB_CHANNEL "', q); END IF;\n"
    "      RETURN;\n"
    "    END IF;\n"
    "    SELECT j.id INTO new_id FROM pgcorral.jobs j"
    "      WHERE j.key = add_job_ex.key AND j.outcome IS NULL;\n"
    "    IF new_id IS NOT NULL THEN\n"
    "      add_job_ex.id := new_id; add_job_ex.created := false;\n"
    "      RETURN;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    "  RAISE EXCEPTION 'pgcorral.add_job: key % is taken by a job this transaction cannot"
    " see', add_job_ex.key USING ERRCODE = '40001';\n"
    "END $f$;\n"
    "CREATE OR REPLACE FUNCTION pgcorral.claim_jobs(worker text, n int, queues text[] DEFAULT NULL,"
    "  after_priority int DEFAULT NULL, after_run_at timestamptz DEFAULT NULL,"
    "  after_id bigint DEFAULT NULL, seq_base bigint DEFAULT NULL)"
    " RETURNS TABLE (id bigint, queue text, task text, payload jsonb, priority int,"
    "   attempts int, max_attempts int, key text, wait_s double precision,"
    "   run_at timestamptz, claim_seq bigint)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "BEGIN\n"
    "  RETURN QUERY\n"
    "    WITH u AS (UPDATE pgcorral.jobs j SET locked_by = worker, locked_at = now(),"
    "        attempts = j.attempts + 1, claim_seq = seq_base + o.ord"
    "      FROM unnest(ARRAY(SELECT c.ctid FROM pgcorral.jobs c"
    "        WHERE c.locked_by IS NULL AND c.outcome IS NULL AND c.run_at <= now()"
    "          AND (queues IS NULL OR c.queue = ANY (queues))"
    "          AND (c.priority, c.run_at, c.id) > (coalesce(after_priority, -2147483648),"
    "            coalesce(after_run_at, '-infinity'), coalesce(after_id, 0))"
    "        ORDER BY c.priority, c.run_at, c.id LIMIT n FOR UPDATE SKIP LOCKED))"
    "        WITH ORDINALITY AS o(t, ord)"
    "      WHERE j.ctid = o.t"
    "      RETURNING j.*)"
    "    SELECT u.id, u.queue, u.task, u.payload, u.priority, u.attempts, u.max_attempts,"
    "      u.key, greatest(extract(epoch FROM now() - greatest(u.run_at, u.created_at)),"
    "        0)::float8, u.run_at, u.claim_seq"
    "    FROM u ORDER BY u.priority, u.run_at, u.id;\n"
    "END $f$;\n"
    "DROP FUNCTION pgcorral.ack_jobs(text, bigint[], bigint[], text[], int[], int[]);\n"
    "CREATE FUNCTION pgcorral.ack_jobs(worker text, done bigint[], ids bigint[], errs text[],"
    "  delays_ms int[], giveback int[], final boolean[], keep_completed boolean DEFAULT false,"
    "  run_ms bigint[] DEFAULT NULL, OUT deleted bigint, OUT updated bigint)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "DECLARE n bigint;\n"
    "BEGIN\n"
    "  deleted := 0;\n"
    "  updated := 0;\n"
    "  IF cardinality(done) > 0 AND keep_completed THEN\n"
    "    UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL, finished_at = now(),"
    "        outcome = CASE WHEN j.cancel_requested_at IS NULL THEN 'completed'"
    "          ELSE 'cancelled' END, run_ms = d.ms"
    "      FROM unnest(done, ack_jobs.run_ms) AS d(id, ms)"
    "      WHERE j.id = d.id AND j.locked_by = worker;\n"
    "    GET DIAGNOSTICS updated = ROW_COUNT;\n"
    "  ELSIF cardinality(done) > 0 THEN\n"
    "    DELETE FROM pgcorral.jobs j WHERE j.id = ANY (done) AND j.locked_by = worker"
    "      AND j.cancel_requested_at IS NULL;\n"
    "    GET DIAGNOSTICS deleted = ROW_COUNT;\n"
    /* Only when some were not deleted: the common case costs one statement. */
    "    IF deleted < cardinality(done) THEN\n"
    "      UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL, finished_at = now(),"
    "          outcome = 'cancelled', run_ms = d.ms"
    "        FROM unnest(done, ack_jobs.run_ms) AS d(id, ms)"
    "        WHERE j.id = d.id AND j.locked_by = worker;\n"
    "      GET DIAGNOSTICS updated = ROW_COUNT;\n"
    "    END IF;\n"
    "  END IF;\n"
    "  IF cardinality(ids) > 0 THEN\n"
    "    UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL,"
    "        attempts = j.attempts - f.giveback, last_error = coalesce(f.err, j.last_error),"
    "        run_at = CASE WHEN f.err IS NULL AND coalesce(f.delay_ms, 0) <= 0 THEN j.run_at"
    "          ELSE now() + f.delay_ms * interval '1 millisecond' END,"
    "        outcome = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'"
    "          WHEN f.final THEN 'failed'"
    "          WHEN f.err IS NOT NULL AND j.attempts >= j.max_attempts THEN 'failed' END,"
    "        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR f.final"
    "          OR (f.err IS NOT NULL AND j.attempts >= j.max_attempts) THEN now() END"
    "      FROM unnest(ids, errs, delays_ms, giveback, final)"
    "        AS f(id, err, delay_ms, giveback, final)"
    "      WHERE j.id = f.id AND j.locked_by = worker;\n"
    "    GET DIAGNOSTICS n = ROW_COUNT;\n"
    "    updated := updated + n;\n"
    "  END IF;\n"
    "END $f$;\n"
    /* As before (a failed or scheduled job runs now with fresh attempts), by outcome. */
    "CREATE OR REPLACE FUNCTION pgcorral.retry_job(job_id bigint) RETURNS boolean"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE q text;\n"
    "BEGIN\n"
    "  UPDATE pgcorral.jobs SET outcome = NULL, finished_at = NULL, run_ms = NULL,"
    "      cancel_requested_at = NULL, attempts = 0, run_at = now()"
    "    WHERE id = job_id AND locked_by IS NULL AND outcome IS DISTINCT FROM 'completed'"
    "    RETURNING queue INTO q;\n"
    "  IF q IS NULL THEN RETURN false; END IF;\n"
    "  PERFORM pg_notify('" JOB_CHANNEL "', q);\n"
    "  RETURN true;\n"
    "END $f$;\n";

/*
 * Version 7: job operations, the one implementation behind `pgcorral jobs`, the jobs HTTP
 * routes and your own SQL. Each raises a clear error instead of doing something else:
 * SQLSTATE P0002 "no job N" for an id that does not exist, 55000 "job N is already
 * cancelled" (and the like) for a job whose state does not allow the operation, 22023 for
 * a bad argument. The CLI maps them to exit 1, the routes to 404, 409 and 400.
 *
 *   job_json(job)          one job as JSON, with its state (pgcorral.job_state)
 *   get_job(id)            job_json of one job
 *   list_jobs(state, task, queue, lim)  newest first, at most lim (1..10000; NULL = 100);
 *                          a NULL filter is no filter
 *   retry_job(id)          a failed, cancelled or scheduled job runs now, attempts reset
 *   retry_failed(task)     every failed job (of one task, NULL = any), except those whose
 *                          key a live job holds (and one per key); (retried, skipped)
 *   cancel_job(id)         queued or scheduled: cancelled now; running: cancel requested
 *                          (the handler sees pgc_cancelled, the job ends cancelled)
 *   delete_job(id)         removes a job that is not running; returns it
 *   prune_jobs(outcomes, older_than, batch)  deletes up to batch jobs with one of the
 *                          outcomes that finished more than older_than ago; returns how many
 * retry_job replaces the boolean one of version 1 (undocumented until now).
 */
static const char migration_7[] =
    "CREATE FUNCTION pgcorral.job_json(j pgcorral.jobs) RETURNS json"
    " LANGUAGE sql STABLE AS $f$ SELECT json_build_object('id', j.id,"
    "  'state', pgcorral.job_state(j), 'task', j.task, 'queue', j.queue,"
    "  'payload', j.payload, 'priority', j.priority, 'run_at', j.run_at,"
    "  'attempts', j.attempts, 'max_attempts', j.max_attempts, 'last_error', j.last_error,"
    "  'key', j.key, 'locked_by', j.locked_by, 'created_at', j.created_at,"
    "  'finished_at', j.finished_at, 'run_ms', j.run_ms,"
    "  'cancel_requested_at', j.cancel_requested_at, 'request_id', j.request_id) $f$;\n"
    /* The job, locked, or P0002. */
    "CREATE FUNCTION pgcorral.lock_job(job_id bigint) RETURNS pgcorral.jobs"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE j pgcorral.jobs;\n"
    "BEGIN\n"
    "  SELECT * INTO j FROM pgcorral.jobs WHERE id = job_id FOR UPDATE;\n"
    "  IF NOT FOUND THEN\n"
    "    RAISE EXCEPTION 'no job %', job_id USING ERRCODE = 'P0002';\n"
    "  END IF;\n"
    "  RETURN j;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.get_job(job_id bigint) RETURNS json"
    " LANGUAGE plpgsql STABLE AS $f$\n"
    "DECLARE r json;\n"
    "BEGIN\n"
    "  SELECT pgcorral.job_json(j) INTO r FROM pgcorral.jobs j WHERE j.id = job_id;\n"
    "  IF r IS NULL THEN\n"
    "    RAISE EXCEPTION 'no job %', job_id USING ERRCODE = 'P0002';\n"
    "  END IF;\n"
    "  RETURN r;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.list_jobs(state text DEFAULT NULL, task text DEFAULT NULL,"
    "  queue text DEFAULT NULL, lim int DEFAULT 100) RETURNS SETOF json"
    " LANGUAGE plpgsql STABLE AS $f$\n"
    "BEGIN\n"
    "  IF list_jobs.state IS NOT NULL AND list_jobs.state NOT IN ('queued', 'scheduled',"
    "      'running', 'failed', 'completed', 'cancelled') THEN\n"
    "    RAISE EXCEPTION 'unknown state \"%\": one of queued, scheduled, running, failed,"
    " completed, cancelled', list_jobs.state USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  lim := coalesce(lim, 100);\n"
    "  IF lim < 1 OR lim > 10000 THEN\n"
    "    RAISE EXCEPTION 'the limit must be from 1 to 10000, got %', lim"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  RETURN QUERY SELECT pgcorral.job_json(j) FROM pgcorral.jobs j"
    "    WHERE (list_jobs.state IS NULL OR pgcorral.job_state(j) = list_jobs.state)"
    /* Terminal states by the index on outcome. */
    "      AND (list_jobs.state IS NULL OR list_jobs.state NOT IN ('failed', 'completed',"
    "        'cancelled') OR j.outcome = list_jobs.state)"
    "      AND (list_jobs.task IS NULL OR j.task = list_jobs.task)"
    "      AND (list_jobs.queue IS NULL OR j.queue = list_jobs.queue)"
    "    ORDER BY j.id DESC LIMIT lim;\n"
    "END $f$;\n"
    "DROP FUNCTION pgcorral.retry_job(bigint);\n"
    "CREATE FUNCTION pgcorral.retry_job(job_id bigint) RETURNS json"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE j pgcorral.jobs := pgcorral.lock_job(job_id); st text; holder bigint;\n"
    "BEGIN\n"
    "  st := pgcorral.job_state(j);\n"
    "  IF st NOT IN ('failed', 'cancelled', 'scheduled') THEN\n"
    "    RAISE EXCEPTION 'job % is %: only failed, cancelled or scheduled jobs are retried',"
    "      job_id, st USING ERRCODE = '55000';\n"
    "  END IF;\n"
    "  IF j.key IS NOT NULL AND j.outcome IS NOT NULL THEN\n"
    "    SELECT id INTO holder FROM pgcorral.jobs l WHERE l.key = j.key AND l.outcome IS NULL;\n"
    "    IF FOUND THEN\n"
    "      RAISE EXCEPTION 'job % cannot run again: its key \"%\" is taken by job %', job_id,"
    "        j.key, holder USING ERRCODE = '55000';\n"
    "    END IF;\n"
    "  END IF;\n"
    "  UPDATE pgcorral.jobs SET outcome = NULL, finished_at = NULL, run_ms = NULL,"
    "      cancel_requested_at = NULL, attempts = 0, run_at = now()"
    "    WHERE id = job_id RETURNING * INTO j;\n"
    "  PERFORM pg_notify('" JOB_CHANNEL "', j.queue);\n"
    "  RETURN pgcorral.job_json(j);\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.retry_failed(task text DEFAULT NULL, OUT retried bigint,"
    "  OUT skipped bigint) LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE failed bigint; queues text[];\n"
    "BEGIN\n"
    "  SELECT count(*) INTO failed FROM pgcorral.jobs j WHERE j.outcome = 'failed'"
    "    AND (retry_failed.task IS NULL OR j.task = retry_failed.task);\n"
    "  WITH u AS (UPDATE pgcorral.jobs j SET outcome = NULL, finished_at = NULL,"
    "      run_ms = NULL, cancel_requested_at = NULL, attempts = 0, run_at = now()"
    "    WHERE j.outcome = 'failed' AND (retry_failed.task IS NULL OR j.task = retry_failed.task)"
    "      AND (j.key IS NULL OR (NOT EXISTS (SELECT 1 FROM pgcorral.jobs l"
    "          WHERE l.key = j.key AND l.outcome IS NULL)"
    "        AND j.id = (SELECT max(f.id) FROM pgcorral.jobs f"
    "          WHERE f.key = j.key AND f.outcome = 'failed'"
    "            AND (retry_failed.task IS NULL OR f.task = retry_failed.task))))"
    "    RETURNING j.queue)"
    "  SELECT count(*), array_agg(DISTINCT u.queue) INTO retried, queues FROM u;\n"
    "  PERFORM pg_notify('" JOB_CHANNEL "', q) FROM unnest(queues) q;\n"
    "  skipped := failed - retried;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.cancel_job(job_id bigint) RETURNS json"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE j pgcorral.jobs := pgcorral.lock_job(job_id);\n"
    "BEGIN\n"
    "  IF j.outcome IS NOT NULL THEN\n"
    "    RAISE EXCEPTION 'job % is already %', job_id, j.outcome USING ERRCODE = '55000';\n"
    "  END IF;\n"
    "  IF j.locked_by IS NOT NULL THEN\n"
    /* The handler sees it through pgc_cancelled. */
    "    UPDATE pgcorral.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())"
    "      WHERE id = job_id RETURNING * INTO j;\n"
    "  ELSE\n"
    "    UPDATE pgcorral.jobs SET outcome = 'cancelled', finished_at = now()"
    "      WHERE id = job_id RETURNING * INTO j;\n"
    "  END IF;\n"
    "  RETURN pgcorral.job_json(j);\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.delete_job(job_id bigint) RETURNS json"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE j pgcorral.jobs := pgcorral.lock_job(job_id);\n"
    "BEGIN\n"
    "  IF j.locked_by IS NOT NULL THEN\n"
    "    RAISE EXCEPTION 'job % is running: cancel it first', job_id USING ERRCODE = '55000';\n"
    "  END IF;\n"
    "  DELETE FROM pgcorral.jobs WHERE id = job_id;\n"
    "  RETURN pgcorral.job_json(j);\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.prune_jobs(outcomes text[], older_than interval, batch int)"
    " RETURNS bigint LANGUAGE sql VOLATILE AS $f$"
    "  WITH d AS (DELETE FROM pgcorral.jobs WHERE ctid = ANY (ARRAY("
    "      SELECT ctid FROM pgcorral.jobs WHERE outcome = ANY (outcomes)"
    "        AND finished_at < now() - older_than"
    "      LIMIT batch FOR UPDATE SKIP LOCKED)) RETURNING 1)"
    "  SELECT count(*) FROM d $f$;\n";

/*
 * Version 8: per-queue concurrency (--queue-concurrency QUEUE=N): at most N jobs of QUEUE
 * locked (claimed, running) at once, over every worker of every supervisor, enforced in
 * the claim.
 *
 * Which jobs count: concurrency_limited is set by the claim on the jobs of the queues the
 * claimer limits, and a partial index holds exactly the locked ones among them, so counting
 * a queue's running jobs reads a few index entries. Claims that limit nothing take the old
 * path: no lock, no count, and no entry in that index for their jobs (the claim already
 * rewrites the row; the index's predicate is false for it), so unlimited queues pay
 * nothing.
 *
 * Why it cannot overshoot: every claim of a job of a limited queue Q runs in a transaction
 * that holds Q's advisory lock (pg_try_advisory_xact_lock(QUEUE_LOCK_CLASS, hashtext(Q)))
 * and counts Q's locked jobs after taking it. The claim function runs in its own
 * transaction (the worker sends it alone, autocommit, READ COMMITTED: checked), and each
 * of its statements takes a new snapshot, so the count sees every claim of Q that
 * committed before the lock was granted, and no other claim of Q happens until this one
 * has committed (the lock is released at commit). It takes at most N - count jobs of Q. Only
 * claims add jobs to the count; acks, give-backs and unlocks only remove them, and a stale
 * view of a removal makes a claim take fewer, never more. A claimer that cannot have the
 * lock at once leaves Q out of this claim (another claimer is taking Q's jobs right now)
 * instead of waiting: no claim ever waits for another, so none can deadlock either.
 *
 * Different limits for one queue (two supervisors passing different N): each claim
 * enforces its own N against the one shared count, so Q reaches at most the largest N in
 * use, and a supervisor with a smaller N claims Q's jobs only while fewer than its N are
 * locked. A supervisor that passes no limit for Q claims its jobs without the lock and
 * without counting them: every supervisor that serves Q must pass the limit.
 *
 * The limited claim walks the claim index in order, skipping limited queues that are full;
 * when a queue fills in the middle of a batch, the jobs of it that the walk had locked are
 * left (unclaimed), and the walk goes on behind them without that queue, so a batch fills
 * up with jobs of other queues (at most one walk more per limited queue). claim_jobs gains
 * limited_queues and queue_limits (last, with defaults, so that older calls still resolve).
 */
static const char migration_8[] =
    "ALTER TABLE pgcorral.jobs ADD COLUMN concurrency_limited boolean NOT NULL DEFAULT false;\n"
    "CREATE INDEX jobs_limited_running_idx ON pgcorral.jobs (queue)"
    "  WHERE locked_by IS NOT NULL AND concurrency_limited;\n"
    "DROP FUNCTION pgcorral.claim_jobs(text, int, text[], int, timestamptz, bigint, bigint);\n"
    "CREATE FUNCTION pgcorral.claim_jobs(worker text, n int, queues text[] DEFAULT NULL,"
    "  after_priority int DEFAULT NULL, after_run_at timestamptz DEFAULT NULL,"
    "  after_id bigint DEFAULT NULL, seq_base bigint DEFAULT NULL,"
    "  limited_queues text[] DEFAULT NULL, queue_limits int[] DEFAULT NULL)"
    " RETURNS TABLE (id bigint, queue text, task text, payload jsonb, priority int,"
    "   attempts int, max_attempts int, key text, wait_s double precision,"
    "   run_at timestamptz, claim_seq bigint)"
    " LANGUAGE plpgsql VOLATILE"
    " SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off"
    " SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off AS $f$\n"
    "DECLARE\n"
    "  open_q text[] := '{}';\n" /* limited queues this claim may take jobs of */
    "  room int[] := '{}';\n"    /* how many more of each */
    "  full_q text[] := '{}';\n" /* limited queues it takes no more jobs of */
    "  picked tid[] := '{}';\n"
    "  cand record;\n"
    "  k int;\n"
    "  lim int;\n"
    "  q text;\n"
    "  left_out boolean;\n"
    "  ap int := after_priority; ar timestamptz := after_run_at; ai bigint := after_id;\n"
    "BEGIN\n"
    "  IF limited_queues IS NULL OR cardinality(limited_queues) = 0 THEN\n"
    "    RETURN QUERY\n"
    "      WITH u AS (UPDATE pgcorral.jobs j SET locked_by = worker, locked_at = now(),"
    "          attempts = j.attempts + 1, claim_seq = seq_base + o.ord,"
    "          concurrency_limited = false"
    "        FROM unnest(ARRAY(SELECT c.ctid FROM pgcorral.jobs c"
    "          WHERE c.locked_by IS NULL AND c.outcome IS NULL AND c.run_at <= now()"
    "            AND (queues IS NULL OR c.queue = ANY (queues))"
    "            AND (c.priority, c.run_at, c.id) > (coalesce(after_priority, -2147483648),"
    "              coalesce(after_run_at, '-infinity'), coalesce(after_id, 0))"
    "          ORDER BY c.priority, c.run_at, c.id LIMIT n FOR UPDATE SKIP LOCKED))"
    "          WITH ORDINALITY AS o(t, ord)"
    "        WHERE j.ctid = o.t"
    "        RETURNING j.*)"
    "      SELECT u.id, u.queue, u.task, u.payload, u.priority, u.attempts, u.max_attempts,"
    "        u.key, greatest(extract(epoch FROM now() - greatest(u.run_at, u.created_at)),"
    "          0)::float8, u.run_at, u.claim_seq"
    "      FROM u ORDER BY u.priority, u.run_at, u.id;\n"
    "    RETURN;\n"
    "  END IF;\n"
    /* A snapshot taken before the lock (REPEATABLE READ, SERIALIZABLE) could miss the
     * claims committed while this one waited its turn. */
    "  IF current_setting('transaction_isolation') <> 'read committed' THEN\n"
    "    RAISE EXCEPTION 'pgcorral.claim_jobs: per-queue concurrency needs READ COMMITTED,"
    " not %', current_setting('transaction_isolation') USING ERRCODE = '0A000';\n"
    "  END IF;\n"
    "  FOR q, lim IN SELECT l.q, l.lim FROM unnest(limited_queues, queue_limits) AS l(q, lim)"
    "      WHERE queues IS NULL OR l.q = ANY (queues) ORDER BY l.q LOOP\n"
    "    IF pg_try_advisory_xact_lock(" QUEUE_LOCK_CLASS ", hashtext(q)) THEN\n"
    "      SELECT lim - count(*) INTO lim FROM pgcorral.jobs r"
    "        WHERE r.locked_by IS NOT NULL AND r.concurrency_limited AND r.queue = q;\n"
    "    ELSE\n"
    "      lim := 0;\n"
    "    END IF;\n"
    "    IF lim > 0 THEN open_q := open_q || q; room := room || lim;"
    "    ELSE full_q := full_q || q; END IF;\n"
    "  END LOOP;\n"
    "  LOOP\n"
    "    left_out := false;\n"
    "    FOR cand IN SELECT x.ctid, x.queue, x.priority, x.run_at, x.id FROM pgcorral.jobs x"
    "        WHERE x.locked_by IS NULL AND x.outcome IS NULL AND x.run_at <= now()"
    "          AND (queues IS NULL OR x.queue = ANY (queues)) AND x.queue <> ALL (full_q)"
    "          AND (x.priority, x.run_at, x.id) > (coalesce(ap, -2147483648),"
    "            coalesce(ar, '-infinity'), coalesce(ai, 0))"
    "        ORDER BY x.priority, x.run_at, x.id LIMIT n - cardinality(picked)"
    "        FOR UPDATE SKIP LOCKED LOOP\n"
    "      ap := cand.priority; ar := cand.run_at; ai := cand.id;\n"
    "      k := array_position(open_q, cand.queue);\n"
    "      IF k IS NULL THEN\n"
    "        picked := picked || cand.ctid;\n"
    "      ELSIF room[k] > 0 THEN\n"
    "        picked := picked || cand.ctid;\n"
    "        room[k] := room[k] - 1;\n"
    "        IF room[k] = 0 THEN full_q := full_q || cand.queue; END IF;\n"
    "      ELSE\n"
    "        left_out := true;\n"
    "      END IF;\n"
    "    END LOOP;\n"
    "    EXIT WHEN NOT left_out OR cardinality(picked) >= n;\n"
    "  END LOOP;\n"
    /* Each walk starts behind the last, so picked is in claim order already. */
    "  RETURN QUERY\n"
    "    WITH u AS (UPDATE pgcorral.jobs j SET locked_by = worker, locked_at = now(),"
    "        attempts = j.attempts + 1, claim_seq = seq_base + o.ord,"
    "        concurrency_limited = j.queue = ANY (limited_queues)"
    "      FROM unnest(picked) WITH ORDINALITY AS o(t, ord)"
    "      WHERE j.ctid = o.t"
    "      RETURNING j.*)"
    "    SELECT u.id, u.queue, u.task, u.payload, u.priority, u.attempts, u.max_attempts,"
    "      u.key, greatest(extract(epoch FROM now() - greatest(u.run_at, u.created_at)),"
    "        0)::float8, u.run_at, u.claim_seq"
    "    FROM u ORDER BY u.priority, u.run_at, u.id;\n"
    "END $f$;\n";

/*
 * Version 9: the node registry and recurring jobs (coordinator/nodes.c, coordinator/cron.c).
 *
 * nodes: one row per running supervisor (node = --node-name, default "host:pid"), with the
 * tasks its plugins register, refreshed every 2 s by its heartbeat (heartbeat_at is the
 * server's clock) and deleted when it stops cleanly. A node is live while its heartbeat is
 * younger than 10 s (pgcorral.live_nodes: the only place that says so). Rows of nodes
 * that died stay until any node's heartbeat removes them an hour later.
 *
 * check_task(task) raises SQLSTATE PC422 when no live node registers task, naming the
 * tasks live nodes do register (the first 50); add_known_job is add_job_req behind that
 * check (skipped when force). `pgcorral enqueue` and POST /api/v1/jobs add jobs with it;
 * add_job from your own SQL and pgc_enqueue are not checked.
 *
 * claimed_unknown_task(worker, job_id, task, node, error): a job worker of node claimed
 * job_id of a task it does not know. When a live node other than node registers task,
 * returns true and changes nothing (the worker gives the job back, not charged, through
 * ack_jobs). Otherwise the job is failed at once, kept with error as its last error
 * (still only if `worker` holds it), and the result is false.
 *
 * cron_schedules: one row per recurring job (schedule = a hash of its spec, task and
 * payload) with the last tick enqueued. cron_fire(schedule, spec, task, payload, tick)
 * enqueues the tick's job (key 'cron:SCHEDULE:EPOCH') only when it moves last_tick
 * forward, in the same transaction: of every supervisor that fires a tick, exactly one
 * enqueues it, also after its job finished and its key is free again. The first fire of a
 * schedule only records the tick (a new schedule starts with its next tick). Returns the
 * job id, or NULL when nothing was enqueued.
 */
static const char migration_9[] =
    "CREATE TABLE pgcorral.nodes ("
    "  node text PRIMARY KEY CHECK (node <> ''),"
    "  host text NOT NULL,"
    "  pid int NOT NULL,"
    "  version text NOT NULL,"
    "  started_at timestamptz NOT NULL DEFAULT now(),"
    "  heartbeat_at timestamptz NOT NULL DEFAULT now(),"
    "  tasks text[] NOT NULL DEFAULT '{}',"
    "  schedules text[] NOT NULL DEFAULT '{}');\n"
    "CREATE FUNCTION pgcorral.live_nodes() RETURNS SETOF pgcorral.nodes"
    " LANGUAGE sql STABLE AS $f$"
    "  SELECT * FROM pgcorral.nodes WHERE heartbeat_at > now() - interval '10 seconds' $f$;\n"
    "CREATE FUNCTION pgcorral.check_task(task text) RETURNS void"
    " LANGUAGE plpgsql STABLE AS $f$\n"
    "DECLARE known text[]; nlive int;\n"
    "BEGIN\n"
    "  IF EXISTS (SELECT 1 FROM pgcorral.live_nodes() n WHERE check_task.task = ANY (n.tasks))"
    "  THEN RETURN; END IF;\n"
    "  SELECT count(*) INTO nlive FROM pgcorral.live_nodes();\n"
    "  SELECT array_agg(t ORDER BY t) INTO known FROM (SELECT DISTINCT t"
    "    FROM pgcorral.live_nodes() n, unnest(n.tasks) t) d;\n"
    "  IF nlive = 0 THEN\n"
    "    RAISE EXCEPTION 'no live node registers task \"%\": no pgcorral supervisor runs"
    " against this database', check_task.task USING ERRCODE = '" JOB_UNKNOWN_TASK_STATE "';\n"
    "  END IF;\n"
    "  RAISE EXCEPTION 'no live node registers task \"%\"; known tasks: %', check_task.task,"
    "    CASE WHEN known IS NULL THEN '(none)'"
    "      WHEN cardinality(known) <= 50 THEN array_to_string(known, ', ')"
    "      ELSE array_to_string(known[1:50], ', ') || format(' and %s more',"
    "        cardinality(known) - 50) END USING ERRCODE = '" JOB_UNKNOWN_TASK_STATE "';\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.add_known_job(force boolean, request_id text, task text,"
    "  payload jsonb DEFAULT '{}', queue text DEFAULT 'default', run_at timestamptz DEFAULT NULL,"
    "  priority int DEFAULT 0, max_attempts int DEFAULT 25, key text DEFAULT NULL,"
    "  OUT id bigint, OUT created boolean)"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "BEGIN\n"
    "  IF NOT coalesce(add_known_job.force, false) THEN\n"
    "    PERFORM pgcorral.check_task(add_known_job.task);\n"
    "  END IF;\n"
    "  SELECT a.id, a.created INTO id, created"
    "    FROM pgcorral.add_job_req(add_known_job.request_id, add_known_job.task,"
    "      add_known_job.payload, add_known_job.queue, add_known_job.run_at,"
    "      add_known_job.priority, add_known_job.max_attempts, add_known_job.key) a;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.claimed_unknown_task(worker text, job_id bigint, task text,"
    "  node text, error text) RETURNS boolean"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "BEGIN\n"
    "  IF EXISTS (SELECT 1 FROM pgcorral.live_nodes() n"
    "      WHERE n.node <> claimed_unknown_task.node AND claimed_unknown_task.task = ANY (n.tasks))"
    "  THEN RETURN true; END IF;\n"
    "  UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL,"
    "      last_error = claimed_unknown_task.error, outcome = 'failed', finished_at = now()"
    "    WHERE j.id = claimed_unknown_task.job_id AND j.locked_by = claimed_unknown_task.worker;\n"
    "  RETURN false;\n"
    "END $f$;\n"
    "CREATE TABLE pgcorral.cron_schedules ("
    "  schedule text PRIMARY KEY,"
    "  spec text NOT NULL,"
    "  task text NOT NULL,"
    "  payload jsonb NOT NULL,"
    "  last_tick timestamptz NOT NULL,"
    "  last_job bigint,"
    "  created_at timestamptz NOT NULL DEFAULT now());\n"
    "CREATE FUNCTION pgcorral.cron_fire(schedule text, spec text, task text, payload jsonb,"
    "  tick timestamptz) RETURNS bigint"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE job bigint;\n"
    "BEGIN\n"
    "  INSERT INTO pgcorral.cron_schedules AS c (schedule, spec, task, payload, last_tick)"
    "    VALUES (cron_fire.schedule, cron_fire.spec, cron_fire.task, cron_fire.payload,"
    "      cron_fire.tick) ON CONFLICT DO NOTHING;\n"
    "  IF FOUND THEN RETURN NULL; END IF;\n"
    "  UPDATE pgcorral.cron_schedules c SET last_tick = cron_fire.tick"
    "    WHERE c.schedule = cron_fire.schedule AND c.last_tick < cron_fire.tick;\n"
    "  IF NOT FOUND THEN RETURN NULL; END IF;\n"
    "  SELECT a.id INTO job FROM pgcorral.add_job_ex(cron_fire.task, cron_fire.payload,"
    "    key => format('cron:%s:%s', cron_fire.schedule,"
    "      extract(epoch FROM cron_fire.tick)::bigint)) a;\n"
    "  UPDATE pgcorral.cron_schedules c SET last_job = job"
    "    WHERE c.schedule = cron_fire.schedule;\n"
    "  RETURN job;\n"
    "END $f$;\n";

/*
 * Version 10: the cluster budget, leased to nodes (coordinator/lease.c; README "Several
 * hosts").
 *
 * cluster: one row, the cluster budget C: server connections all nodes together may hold.
 * The first node's lease records it (--cluster-budget, or what the server allows);
 * cluster_set_budget(n) changes it (`pgcorral cluster set-budget N`).
 *
 * nodes gains the lease: slots_leased (what the node may hold), slots_in_use (what it held
 * at its last renewal), slots_wanted, lease_expires_at (the server's clock: now() at the
 * renewal + the node's --lease-ttl) and job_workers (the locked_by names of its job
 * workers, whose jobs are released when the lease expires).
 *
 * lease_renew() runs under one advisory lock (SUP_LEASE_LOCK_KEY), so leases are granted one at
 * a time and sum(slots_leased) <= C holds after each grant. It first expires every other
 * node's lapsed lease (lease_expire: slots to 0, its server connections terminated, its
 * jobs released), then grants the caller:
 *   room  = C - the slots every other node holds;
 *   fair  = C / the nodes whose lease runs (the caller included), at least 1;
 *   target = want, or fair when another node holds less than min(its want, fair) and no
 *            slot is free (pressure: the caller gives back down to its fair share);
 *   granted = least(greatest(target, in_use), room): a node keeps the connections it holds
 *            until it closes them, but never more than the room.
 * Returns granted, C, target, the nodes that just expired and the nodes whose lease runs
 * (JSON, for `pgcorral ctl cluster`).
 *
 * A node's connections carry ' @NODE' at the end of their application_name (cut at the
 * server's 63 bytes); lease_expire terminates the expired node's by that mark, so that a
 * node cut off from the database but still connected cannot outlive its lease on the
 * server (it waits up to 1 s for each to exit: the slots are granted only once they are
 * gone). Connections whose application_name the user set are not marked; those of
 * another role this role may not signal (not a member, no pg_signal_backend) stay, with
 * a warning, and the grant goes on.
 */
static const char migration_10[] =
    "CREATE TABLE pgcorral.cluster ("
    "  one boolean PRIMARY KEY DEFAULT true CHECK (one),"
    "  budget int NOT NULL CHECK (budget > 0),"
    "  set_at timestamptz NOT NULL DEFAULT now(),"
    "  set_by text NOT NULL);\n"
    "ALTER TABLE pgcorral.nodes"
    "  ADD COLUMN slots_leased int NOT NULL DEFAULT 0,"
    "  ADD COLUMN slots_in_use int NOT NULL DEFAULT 0,"
    "  ADD COLUMN slots_wanted int NOT NULL DEFAULT 0,"
    "  ADD COLUMN lease_expires_at timestamptz,"
    "  ADD COLUMN job_workers text[] NOT NULL DEFAULT '{}';\n"
    "CREATE FUNCTION pgcorral.app_marks_node(app text, node text) RETURNS boolean"
    " LANGUAGE sql IMMUTABLE AS $f$"
    "  SELECT app LIKE 'pgcorral %' AND strpos(app, ' @') > 0 AND CASE"
    "    WHEN octet_length(app) < 63 THEN substr(app, strpos(app, ' @') + 2) = node"
    "    ELSE starts_with(node, substr(app, strpos(app, ' @') + 2)) END $f$;\n"
    "CREATE FUNCTION pgcorral.lease_expire(keep text) RETURNS SETOF text"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE x record;\n"
    "BEGIN\n"
    "  FOR x IN UPDATE pgcorral.nodes n SET slots_leased = 0, slots_in_use = 0"
    "      WHERE n.slots_leased > 0 AND n.lease_expires_at <= now() AND n.node <> keep"
    "      RETURNING n.node, n.job_workers LOOP\n"
    "    BEGIN\n"
    "      PERFORM pg_terminate_backend(a.pid, 1000) FROM pg_stat_activity a"
    "        WHERE a.pid <> pg_backend_pid()"
    "        AND pgcorral.app_marks_node(a.application_name, x.node);\n"
    "    EXCEPTION WHEN insufficient_privilege THEN\n"
    "      RAISE WARNING 'cannot terminate the connections of node %: %', x.node, SQLERRM;\n"
    "    END;\n"
    "    UPDATE pgcorral.jobs j SET locked_by = NULL, locked_at = NULL,"
    "        last_error = format('node %s lost its lease: %s stopped (host gone?)', x.node,"
    "          j.locked_by),"
    "        outcome = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'"
    "          WHEN j.attempts >= j.max_attempts THEN 'failed' END,"
    "        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL"
    "          OR j.attempts >= j.max_attempts THEN now() END"
    "      WHERE j.locked_by = ANY (x.job_workers);\n"
    "    RETURN NEXT x.node;\n"
    "  END LOOP;\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.lease_renew(node text, host text, pid int, version text,"
    "  want int, in_use int, ttl_s int, default_budget int, job_workers text[],"
    "  OUT granted int, OUT budget int, OUT target int, OUT expired text[], OUT nodes jsonb)"
    " LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE others int; nleased int; fair int; pressure boolean;\n"
    "BEGIN\n"
    "  PERFORM pg_advisory_xact_lock(" SUP_LEASE_LOCK_KEY ");\n"
    "  INSERT INTO pgcorral.cluster (budget, set_by)"
    "    VALUES (greatest(lease_renew.default_budget, 1), lease_renew.node)"
    "    ON CONFLICT DO NOTHING;\n"
    "  SELECT c.budget INTO budget FROM pgcorral.cluster c;\n"
    "  SELECT coalesce(array_agg(e), '{}') INTO expired"
    "    FROM pgcorral.lease_expire(lease_renew.node) e;\n"
    "  SELECT coalesce(sum(n.slots_leased), 0), count(*)"
    "    INTO others, nleased FROM pgcorral.nodes n"
    "    WHERE n.node <> lease_renew.node AND n.lease_expires_at > now();\n"
    "  fair := greatest(budget / (nleased + 1), 1);\n"
    "  SELECT budget - others - coalesce((SELECT n.slots_leased FROM pgcorral.nodes n"
    "      WHERE n.node = lease_renew.node AND n.lease_expires_at > now()), 0) <= 0"
    "    AND EXISTS (SELECT 1 FROM pgcorral.nodes n WHERE n.node <> lease_renew.node"
    "      AND n.lease_expires_at > now()"
    "      AND n.slots_leased < least(n.slots_wanted, fair)) INTO pressure;\n"
    "  target := CASE WHEN pressure THEN least(lease_renew.want, fair) ELSE lease_renew.want END;\n"
    "  granted := greatest(least(greatest(target, lease_renew.in_use), budget - others), 0);\n"
    "  INSERT INTO pgcorral.nodes AS n (node, host, pid, version, slots_leased, slots_in_use,"
    "      slots_wanted, lease_expires_at, job_workers)"
    "    VALUES (lease_renew.node, lease_renew.host, lease_renew.pid, lease_renew.version,"
    "      granted, lease_renew.in_use, lease_renew.want,"
    "      now() + make_interval(secs => lease_renew.ttl_s), lease_renew.job_workers)"
    "    ON CONFLICT ON CONSTRAINT nodes_pkey DO UPDATE SET host = EXCLUDED.host,"
    "      pid = EXCLUDED.pid,"
    "      version = EXCLUDED.version, heartbeat_at = now(),"
    "      slots_leased = EXCLUDED.slots_leased, slots_in_use = EXCLUDED.slots_in_use,"
    "      slots_wanted = EXCLUDED.slots_wanted, lease_expires_at = EXCLUDED.lease_expires_at,"
    "      job_workers = EXCLUDED.job_workers;\n"
    "  SELECT coalesce(jsonb_agg(jsonb_build_object('node', n.node, 'host', n.host, 'pid', n.pid,"
    "      'version', n.version, 'slots_leased', n.slots_leased, 'slots_in_use', n.slots_in_use,"
    "      'slots_wanted', n.slots_wanted, 'heartbeat_age_s',"
    "      round(extract(epoch FROM now() - n.heartbeat_at)::numeric, 1),"
    "      'lease_expires_in_s',"
    "      round(extract(epoch FROM n.lease_expires_at - now())::numeric, 1)) ORDER BY n.node),"
    "    '[]') INTO nodes FROM pgcorral.nodes n WHERE n.lease_expires_at > now();\n"
    "END $f$;\n"
    "CREATE FUNCTION pgcorral.cluster_set_budget(budget int, who text DEFAULT current_user)"
    " RETURNS int LANGUAGE plpgsql VOLATILE AS $f$\n"
    "DECLARE old int;\n"
    "BEGIN\n"
    "  IF budget IS NULL OR budget < 1 THEN\n"
    "    RAISE EXCEPTION 'the cluster budget must be at least 1, not %', budget"
    "      USING ERRCODE = '22023';\n"
    "  END IF;\n"
    "  PERFORM pg_advisory_xact_lock(" SUP_LEASE_LOCK_KEY ");\n"
    "  SELECT c.budget INTO old FROM pgcorral.cluster c;\n"
    "  INSERT INTO pgcorral.cluster AS c (budget, set_by) VALUES (budget, who)"
    "    ON CONFLICT (one) DO UPDATE SET budget = EXCLUDED.budget, set_at = now(),"
    "      set_by = EXCLUDED.set_by;\n"
    "  RETURN old;\n"
    "END $f$;\n";

/* Every migration, in order; version = index + 1. */
static const struct {
    const char *name;
    const char *sql;
} migrations[] = {
    {"jobs table, claim index, add_job/add_jobs", migration_1},
    {"no index on locked_by (cheaper claims)", migration_2},
    {"claim_jobs and ack_jobs with pinned plans", migration_3},
    {"claim_seq: attempts of unstarted jobs given back on release", migration_4},
    {"jobs.request_id and add_job_req", migration_5},
    {"job states: outcome, finished_at, run_ms, cancel_requested_at", migration_6},
    {"job operations: list, show, retry, cancel, delete, prune", migration_7},
    {"per-queue concurrency in claim_jobs", migration_8},
    {"node registry (unknown tasks) and recurring jobs", migration_9},
    {"cluster budget and node leases", migration_10},
};

#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
_Static_assert(SUP_SCHEMA_JOB_STATES <= NMIGRATIONS, "SUP_SCHEMA_JOB_STATES is a migration");
_Static_assert(SUP_SCHEMA_QUEUE_LIMITS <= NMIGRATIONS, "SUP_SCHEMA_QUEUE_LIMITS is a migration");
_Static_assert(NMIGRATIONS == SUP_SCHEMA_VERSION, "SUP_SCHEMA_VERSION is the last migration");

/* Runs sql; returns the result when its status is want, else NULL with the error in msg. */
static PGresult *run(PGconn *conn, const char *sql, ExecStatusType want, char *msg, size_t msglen)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) == want)
        return res;
    rt_copy_message(msg, msglen, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
    PQclear(res);
    return NULL;
}

int sup_migrate(const struct rt_dburl *db, int *from, char *err, size_t errlen)
{
    return sup_migrate_upto(db, SUP_SCHEMA_VERSION, from, err, errlen);
}

int sup_migrate_upto(const struct rt_dburl *db, int to, int *from, char *err, size_t errlen)
{
    PGconn *conn = PQconnectdbParams(db->keywords, db->values, 0);
    PGresult *res = NULL;
    char msg[1024];
    const char *errpos;
    int version;

    msg[0] = '\0';
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        errpos = "connect";
        rt_copy_message(msg, sizeof msg, conn ? PQerrorMessage(conn) : "out of memory");
        goto fail;
    }
    /* Quiet the NOTICEs of IF NOT EXISTS. */
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
    errpos = "begin";
    if (!(res = run(conn, "BEGIN", PGRES_COMMAND_OK, msg, sizeof msg)))
        goto fail;
    PQclear(res);
    errpos = "take the migration lock";
    if (!(res = run(conn, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_KEY ")", PGRES_TUPLES_OK,
                    msg, sizeof msg)))
        goto fail;
    PQclear(res);
    errpos = "create the schema";
    if (!(res = run(conn,
                    "CREATE SCHEMA IF NOT EXISTS pgcorral;"
                    "CREATE TABLE IF NOT EXISTS pgcorral.migrations ("
                    "  version int PRIMARY KEY, name text NOT NULL,"
                    "  applied_at timestamptz NOT NULL DEFAULT now())",
                    PGRES_COMMAND_OK, msg, sizeof msg)))
        goto fail;
    PQclear(res);
    errpos = "read the schema version";
    if (!(res = run(conn, "SELECT coalesce(max(version), 0) FROM pgcorral.migrations",
                    PGRES_TUPLES_OK, msg, sizeof msg)))
        goto fail;
    version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    res = NULL;
    if (version > NMIGRATIONS) {
        errpos = "check the schema version";
        snprintf(msg, sizeof msg,
                 "the database's pgcorral schema is at version %d, newer than this build "
                 "knows (%d): upgrade pgcorral",
                 version, NMIGRATIONS);
        goto fail;
    }
    if (to > NMIGRATIONS)
        to = NMIGRATIONS;
    for (int v = version + 1; v <= to; v++) {
        errpos = migrations[v - 1].name;
        if (!(res = run(conn, migrations[v - 1].sql, PGRES_COMMAND_OK, msg, sizeof msg)))
            goto fail;
        PQclear(res);
        const char *params[1] = {migrations[v - 1].name};
        char ins[128];
        snprintf(ins, sizeof ins, "INSERT INTO pgcorral.migrations (version, name) VALUES (%d, $1)",
                 v);
        res = PQexecParams(conn, ins, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rt_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
            goto fail;
        }
        PQclear(res);
    }
    errpos = "commit";
    if (!(res = run(conn, "COMMIT", PGRES_COMMAND_OK, msg, sizeof msg)))
        goto fail;
    PQclear(res);
    if (version < to)
        rt_log(RT_LOG_INFO, "schema migrated",
               json_pack("{s:s,s:i,s:i}", "schema", "pgcorral", "from", version, "to", to));
    if (from)
        *from = version;
    PQfinish(conn);
    return 0;

fail:
    snprintf(err, errlen, "cannot migrate the pgcorral schema in %s (%s): %s", db->redacted, errpos,
             msg);
    PQclear(res);
    PQfinish(conn);
    return -1;
}

int sup_migrate_main(int argc, char **argv)
{
    const char *url = getenv("DATABASE_URL");
    struct rt_dburl *db = NULL;
    char err[1024];
    int from, rc;

    if (argc > 0) {
        bool help = sup_wants_help(argc, argv);
        if (!help)
            fprintf(stderr, "pgcorral migrate: %s '%s' (migrate takes none)\n",
                    argv[0][0] == '-' ? "unknown flag" : "unexpected argument", argv[0]);
        fprintf(help ? stdout : stderr,
                "usage: pgcorral migrate   (DATABASE_URL from the environment)\n"
                "Creates or upgrades the pgcorral schema to version %d.\n",
                SUP_SCHEMA_VERSION);
        return help ? 0 : 2;
    }
    if (!url || !*url) {
        fprintf(stderr, "pgcorral migrate: DATABASE_URL is not set\n");
        return 2;
    }
    if (rt_dburl_parse(url, &db, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral migrate: DATABASE_URL: %s\n", err);
        return 2;
    }
    rc = sup_migrate(db, &from, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "pgcorral migrate: %s\n", err);
    else if (from == SUP_SCHEMA_VERSION)
        printf("pgcorral schema is at version %d; nothing to do\n", SUP_SCHEMA_VERSION);
    else
        printf("pgcorral schema migrated from version %d to %d\n", from, SUP_SCHEMA_VERSION);
    rt_dburl_destroy(db);
    return rc < 0 ? 1 : 0;
}
