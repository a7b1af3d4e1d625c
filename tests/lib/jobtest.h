/*
 * Helpers of the job and plugin tests (t31x, t32x): a private database per test on the
 * throwaway cluster, plugins compiled from tests/plugins/ at test time, and a job worker
 * run in a forked child without the supervisor.
 */
#ifndef PGCORRAL_JOBTEST_H
#define PGCORRAL_JOBTEST_H

#include <stdbool.h>
#include <sys/types.h>

#include <libpq-fe.h>

/*
 * Drops and creates database name on the test cluster and returns its URL (a static
 * buffer per call, up to 4 live). Bails out when the cluster is not there.
 */
const char *jt_create_db(const char *name);

/* jt_create_db, then the pgcorral schema migrated into it (jobdb.c). */
const char *jt_create_job_db(const char *name);

/* The table t_runs that tests/plugins/jobs.c records its runs in (job_id, attempt, task,
 * phase, at). */
void jt_create_runs_table(PGconn *conn);

/* The state of job id as pgcorral.job_state says ("(none)" when there is no such job).
 * A static buffer. */
const char *jt_job_state(PGconn *conn, long long id);

/* A connection to url; bails out on failure. Caller PQfinish()es. */
PGconn *jt_connect(const char *url);

/* Runs sql (no result wanted); bails out with the server's message on error. */
void jt_exec(PGconn *conn, const char *sql);

/* The repository's top folder (where tests/ and runtime/ are), from the test's path. */
const char *jt_repo_root(void);

/*
 * Compiles tests/plugins/NAME.c with extra_cflags (may be NULL) into a .so under /tmp
 * and returns its path (static buffer per call, up to 8 live). Bails out when cc fails.
 */
const char *jt_build_plugin(const char *name, const char *extra_cflags);

/* Removes the plugins jt_build_plugin built in this process. */
void jt_remove_plugins(void);

/* Path of an example plugin built by make (build/examples/NAME.so), or bails out. */
const char *jt_example_plugin(const char *name);

/* Runs fn(arg) in a forked child with stdout and stderr into a pipe; returns its exit
 * status and its output in out (malloc'ed, caller frees). */
int jt_run_captured(int (*fn)(void *arg), void *arg, char **out);

#endif
