/*
 * Auto-pipelining and PgBouncer: pgbouncer=true turns pipelining off (an explicit
 * pipeline_depth above 0 with it is refused: t200; a pipelined statement through PgBouncer
 * 1.18 in transaction mode once lost its result in CI). Through a real PgBouncer in
 * transaction mode, the concurrent statements of many callers come back right, one per
 * connection at a time; an error stays with its statement. Skipped when
 * /usr/sbin/pgbouncer is not installed.
 */
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/lib/pooltest.h"

/* The test's one loop. */
static uv_loop_t loop;

struct bq {
    struct rt_query q;
    bool done;
    long long val;
    struct rt_error err;
    const char *vals[1];
    char buf[16];
};

static void bq_cb(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct bq *t = q->data;
    t->done = true;
    t->val = -1;
    if (err)
        t->err = *err;
    if (res && PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
        t->val = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
}

static bool bq_all(struct bq *t, int n)
{
    for (int i = 0; i < n; i++)
        if (!t[i].done)
            return false;
    return true;
}

/* PgBouncer's unix socket exists. */
static bool sock_ready(void *arg)
{
    struct stat st;
    return stat(arg, &st) == 0;
}

int main(void)
{
    const char *bin = "/usr/sbin/pgbouncer";
    char dir[512], ini[600], users[600], sock[600], url[1200];
    struct pgt_proc bouncer;
    enum { N = 64 };
    static struct bq t[N];
    FILE *f;

    tap_timeout(60);
    char err[256];
    struct rt_dburl *u;
    if (access(bin, X_OK) != 0)
        skip_all("%s is not installed", bin);
    const char *pgdir = getenv("PGC_TEST_PGDIR"), *pgport = getenv("PGC_TEST_PGPORT");
    if (!pgdir || !pgport)
        skip_all("needs PGC_TEST_PGDIR and PGC_TEST_PGPORT (scripts/with-test-pg.sh)");
    rt_log_set_level(RT_LOG_ERROR);
    uv_loop_init(&loop);

    int bport = atoi(pgport) + 1000;
    const char *user = getuid() == 0 ? "postgres" : getenv("USER");
    snprintf(dir, sizeof dir, "%s", pgt_tmp_path("t222-bouncer"));
    mkdir(dir, 0755);
    snprintf(ini, sizeof ini, "%s/pgbouncer.ini", dir);
    snprintf(users, sizeof users, "%s/users.txt", dir);
    snprintf(sock, sizeof sock, "%s/.s.PGSQL.%d", dir, bport);
    if (!(f = fopen(users, "w")))
        bail("cannot write %s", users);
    fprintf(f, "\"%s\" \"\"\n", user);
    fclose(f);
    if (!(f = fopen(ini, "w")))
        bail("cannot write %s", ini);
    fprintf(f,
            "[databases]\npostgres = host=%s port=%s dbname=postgres\n[pgbouncer]\n"
            "listen_addr =\nlisten_port = %d\nunix_socket_dir = %s\nauth_type = trust\n"
            "auth_file = %s\npool_mode = transaction\ndefault_pool_size = 4\n"
            "max_client_conn = 50\nserver_reset_query =\n"
            "ignore_startup_parameters = extra_float_digits\n",
            pgdir, pgport, bport, dir, users);
    fclose(f);
    if (getuid() == 0 && (chown(dir, 0, 0) < 0 || chmod(dir, 0777) < 0 || chmod(ini, 0644) < 0 ||
                          chmod(users, 0644) < 0))
        bail("chmod");
    char *argv_root[] = {"/usr/sbin/runuser", "-u", "postgres", "--", (char *)bin, ini, NULL};
    char *argv_user[] = {(char *)bin, ini, NULL};
    pgt_spawn(&bouncer, getuid() == 0 ? argv_root : argv_user, NULL);
    if (!pgt_wait_until(sock_ready, sock, 10000)) {
        pgt_proc_drain(&bouncer);
        bail("PgBouncer did not start:\n%s", bouncer.log);
    }

    snprintf(url, sizeof url,
             "postgresql://%s@/postgres?host=%s&port=%d&pgbouncer=true&pipeline_depth=0&"
             "connection_limit=2",
             user, dir, bport);
    if (rt_dburl_parse(url, &u, err, sizeof err) != 0)
        bail("%s", err);
    is_int(u->pipeline_depth, 0, "pgbouncer=true with pipeline_depth=0 is accepted");
    struct rt_pool *p = t_pool(&loop, u, NULL);

    for (int round = 0; round < 3; round++) {
        memset(t, 0, sizeof t);
        for (int i = 0; i < N; i++) {
            t[i].q.data = &t[i];
            snprintf(t[i].buf, sizeof t[i].buf, "%d", i);
            t[i].vals[0] = t[i].buf;
            const char *sql = i % 16 == 5 ? "SELECT 1/($1::int - $1::int)" : "SELECT $1::int";
            if (rt_pool_query(p, &t[i].q, "t222", sql, 1, t[i].vals, bq_cb) != 0)
                bail("rt_pool_query refused");
        }
        long long end = pgt_now_ms() + 15000;
        while (!bq_all(t, N) && pgt_now_ms() < end)
            t_run_for(&loop, 5);
        int right = 0, failed_right = 0;
        for (int i = 0; i < N; i++) {
            if (i % 16 == 5)
                failed_right += t[i].done && !strcmp(t[i].err.sqlstate, "22012");
            else if (t[i].done && t[i].err.code == 0 && t[i].val == i)
                right++;
            else
                diag("round %d, statement %d: done %d, value %lld, error %d %s %s", round + 1, i,
                     t[i].done, t[i].val, t[i].err.code, t[i].err.sqlstate, t[i].err.message);
        }
        is_int(right, N - N / 16, "round %d: every good statement got its own result", round + 1);
        is_int(failed_right, N / 16, "round %d: only the failing statements failed", round + 1);
    }
    is_int(T_COUNTER(p, pipelined), 0, "nothing was pipelined through PgBouncer");
    ok(T_COUNTER(p, connects) <= 2, "on at most 2 connections to PgBouncer");
    ok(t_pool_close(&loop, p), "pool closes");
    rt_dburl_destroy(u);
    kill(bouncer.pid, SIGTERM);
    pgt_proc_wait_exit(&bouncer, 10000);
    pgt_proc_cleanup(&bouncer);
    uv_run(&loop, UV_RUN_NOWAIT);
    is_int(uv_loop_close(&loop), 0, "every handle was closed");
    return done_testing();
}
