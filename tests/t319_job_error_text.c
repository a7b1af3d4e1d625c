/*
 * A handler's failure message longer than the error field is cut at a character boundary.
 * Cut inside a character, it made the ack's text[] of errors invalid UTF-8: the server
 * refused the whole ack, the worker sent it again forever, and every job of that batch
 * stayed locked. Through the real binary, so the message takes the path users see:
 * pgc_fail, the ack, last_error.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "runtime/rt_pool.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

static PGconn *db;

int main(void)
{
    static char env_url[1200];
    struct pgt_proc sup;

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_db("pgct_t319");
    const char *control = pgt_tmp_path("t319.sock");
    db = jt_connect(url);
    const char *plugin = jt_build_plugin("jobs", NULL);

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    char *argv[] = {
        (char *)pgt_binary(), "run",       "--web",         "0", "--jobs", "1", "--plugin",
        (char *)plugin,       "--control", (char *)control, NULL};
    char *env[] = {env_url, NULL};
    char *migrate[] = {(char *)pgt_binary(), "migrate", NULL};
    pgt_spawn(&sup, migrate, env);
    if (!pgt_proc_wait_exit(&sup, 20000) || !WIFEXITED(sup.status) || WEXITSTATUS(sup.status))
        bail("pgcorral migrate failed:\n%s", sup.log);
    pgt_proc_cleanup(&sup);
    pgt_spawn(&sup, argv, env);

    /* "é" (2 bytes) 1000 times, and a job behind it in the same ack batch. */
    jt_exec(db, "SELECT pgcorral.add_job('t.fail_text', '{\"text\":\"\xc3\xa9\",\"n\":1000}',"
                " max_attempts => 1)");
    jt_exec(db, "SELECT pgcorral.add_job('t.fail_text', '{\"text\":\"x\xc3\xa9\",\"n\":1000}',"
                " max_attempts => 1)");
    long long settled = pgt_wait_count(
        db, "SELECT count(*) FROM pgcorral.jobs WHERE locked_by IS NULL AND last_error IS NOT NULL",
        2, 20000);
    if (!ok(settled == 2, "both failing jobs are acked with their error (%lld of 2)", settled)) {
        pgt_proc_drain(&sup);
        diag("%s", sup.log);
    }
    long long len1 = pgt_query_ll(db, "SELECT octet_length(last_error) FROM pgcorral.jobs"
                                      " WHERE payload->>'text' = '\xc3\xa9'");
    ok(len1 > 0 && len1 < RT_ERROR_MSG_LEN && len1 % 2 == 0,
       "a message of 2000 bytes is kept as whole characters under %d bytes (%lld)",
       RT_ERROR_MSG_LEN, len1);
    is_int(pgt_query_ll(
               db, "SELECT count(*) FROM pgcorral.jobs WHERE last_error ~ '^(x?\xc3\xa9)+x?$'"),
           2, "each last_error is the start of its message, cut between characters");

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "the supervisor stops cleanly");
    pgt_proc_cleanup(&sup);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
