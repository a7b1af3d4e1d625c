/*
 * Helpers of the job and plugin tests: private databases, plugins built at test time,
 * captured child runs. See jobtest.h.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

const char *jt_create_db(const char *name)
{
    static char urls[4][1024];
    static int next;
    char *url = urls[next++ % 4];
    const char *base = pgt_db_url();
    const char *q = strchr(base, '?');
    const char *slash;
    char sql[256];
    PGconn *c;

    /* postgresql://user@/postgres?host=... -> postgresql://user@/NAME?host=... */
    slash = q ? q : base + strlen(base);
    while (slash > base && *slash != '/')
        slash--;
    if (slash == base)
        bail("cannot find the database name in the test URL");
    snprintf(url, sizeof urls[0], "%.*s/%s%s", (int)(slash - base), base, name, q ? q : "");
    c = jt_connect(base);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    jt_exec(c, sql);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    jt_exec(c, sql);
    PQfinish(c);
    return url;
}

/* Drops the server's NOTICEs (DROP ... IF EXISTS, CASCADE): TAP output stays readable. */
static void quiet_notice(void *arg, const char *message)
{
}

PGconn *jt_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        bail("cannot connect to %s: %s", url, PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

void jt_exec(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        bail("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

const char *jt_repo_root(void)
{
    static char root[PATH_MAX];
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        bail("readlink /proc/self/exe: %s", strerror(errno));
    exe[n] = '\0';
    /* ROOT/BUILD/tests/tNNN */
    for (int i = 0; i < 3; i++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            bail("unexpected test path %s", exe);
        *slash = '\0';
    }
    snprintf(root, sizeof root, "%s", exe);
    return root;
}

const char *jt_build_plugin(const char *name, const char *extra_cflags)
{
    static char paths[8][256];
    static int next;
    int n = next++;
    char *out = paths[n % 8];
    char cmd[2048];
    const char *root = jt_repo_root();

    snprintf(out, sizeof paths[0], "/tmp/pgct-%d-%s-%d.so", (int)getpid(), name, n);
    snprintf(cmd, sizeof cmd,
             "cc -std=c11 -D_GNU_SOURCE -fPIC -shared -Wall -Werror -I%s/runtime %s "
             "-o %s %s/tests/plugins/%s.c 2>&1",
             root, extra_cflags ? extra_cflags : "", out, root, name);
    if (system(cmd) != 0)
        bail("cannot build test plugin %s: %s", name, cmd);
    return out;
}

void jt_remove_plugins(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -f /tmp/pgct-%d-*.so", (int)getpid());
    if (system(cmd) != 0) {
    }
}

const char *jt_example_plugin(const char *name)
{
    static char path[PATH_MAX + 64];
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        bail("readlink /proc/self/exe: %s", strerror(errno));
    exe[n] = '\0';
    /* BUILD/tests/tNNN -> BUILD/examples/NAME.so */
    for (int i = 0; i < 2; i++)
        *strrchr(exe, '/') = '\0';
    snprintf(path, sizeof path, "%s/examples/%.40s.so", exe, name);
    if (access(path, R_OK) != 0)
        bail("no example plugin at %s (make builds it)", path);
    return path;
}

int jt_run_captured(int (*fn)(void *arg), void *arg, char **out)
{
    int fds[2], status = -1;
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    pid_t pid;

    if (!buf || pipe(fds) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        int rc = fn(arg);
        fflush(NULL);
        _exit(rc & 0xff);
    }
    close(fds[1]);
    for (;;) {
        if (cap - len < 1024)
            buf = realloc(buf, cap *= 2);
        ssize_t n = read(fds[0], buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fds[0]);
    waitpid(pid, &status, 0);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

const char *jt_job_state(PGconn *conn, long long id)
{
    static char buf[32];
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT pgcorral.job_state(j) FROM pgcorral.jobs j WHERE id = %lld",
             id);
    PGresult *r = PQexec(conn, sql);
    snprintf(buf, sizeof buf, "%s",
             PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0)
                                                                       : "(none)");
    PQclear(r);
    return buf;
}
