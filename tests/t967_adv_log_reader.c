/*
 * A log reader that stops reading must not stop the service: the supervisor's stderr is a
 * pipe the test does not drain, and every query is logged as slow (threshold 0), so the
 * pipe is full after a few hundred requests. Requests go on being answered and the
 * control socket answers; once the reader reads again, a line says how many lines were
 * dropped meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

struct reader {
    struct pgt_proc *p;
    int port;
};

/* Reads the log again; a request after that makes a line, which reports the drops first. */
static bool dropped_line(void *arg)
{
    struct reader *rd = arg;
    char *resp = NULL;

    pgt_proc_drain(rd->p);
    ot_http_get(rd->port, "/api/v1/health", &resp);
    free(resp);
    pgt_proc_drain(rd->p);
    return rd->p->log && strstr(rd->p->log, "log lines dropped: the log's reader did not keep up");
}

int main(void)
{
    char env_url[1100];
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs", "0", "--listen", "127.0.0.1:0", "--slow-query-threshold", "0", NULL};
    struct ts_sup sup;
    struct ot_wrk wrk;
    struct ot_wrk_result r;
    json_t *doc;

    tap_timeout(60);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    sup.control = pgt_tmp_path("logreader.sock");
    if (!ts_start(&sup, "logreader", 1, args, env))
        bail("the supervisor did not start");

    /* Nobody reads the supervisor's stderr from here on. */
    ot_wrk_start(&wrk, sup.port, "/api/v1/health", 8, 30);
    usleep(3000 * 1000); /* the load's length, not a wait for anything */
    doc = pgt_ctl(sup.control, "workers");
    ok(doc && json_array_size(json_object_get(doc, "workers")) == 1,
       "the control socket answers while the log is not read");
    json_decref(doc);
    ot_wrk_stop(&wrk, &r);
    ok(r.ran && r.requests > 2000 && r.non2xx == 0 && r.err_timeout == 0 && r.err_read == 0,
       "wrk: %ld requests answered 2xx, %ld timeouts (the pipe holds a few hundred lines)",
       r.requests, r.err_timeout);
    if (r.requests <= 2000)
        diag("%s", r.out);

    /* The reader comes back: the next line says what was lost. */
    struct reader rd = {&sup.p, sup.port};
    ok(pgt_wait_until(dropped_line, &rd, 5000), "once read again, the log says lines were dropped");
    ok(ts_stop(&sup), "the supervisor stops cleanly");
    pgt_proc_cleanup(&sup.p);
    return done_testing();
}
