/*
 * Job test databases (jobtest.h): a private database with the pgcorral schema migrated.
 * Its own file of the test archive, so that only the tests that call it link the
 * coordinator's migrations.
 */
#include "coordinator/jobs_int.h"
#include "tests/lib/jobtest.h"
#include "tests/tap.h"

const char *jt_create_job_db(const char *name)
{
    const char *url = jt_create_db(name);
    struct rt_dburl *u;
    char err[256];

    if (rt_dburl_parse(url, &u, err, sizeof err) < 0 || sup_migrate(u, NULL, err, sizeof err) < 0)
        bail("migrate: %s", err);
    rt_dburl_destroy(u);
    return url;
}

void jt_create_runs_table(PGconn *conn)
{
    jt_exec(conn, "CREATE TABLE t_runs (job_id bigint, attempt int, task text, phase text,"
                  " at timestamptz DEFAULT clock_timestamp())");
}
