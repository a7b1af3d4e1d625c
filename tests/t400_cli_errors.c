/*
 * `pgcorral run` refuses bad configuration at start-up with a message that names the
 * problem and never the password: flags, DATABASE_URL, an unreachable or silent server,
 * a budget the server cannot take, a port or control socket already in use.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define SECRET "s3cretPassw0rd"

/* Runs `pgcorral run ARGS` with DATABASE_URL=url; returns its exit code, output in *out. */
static int run_with(const char *url, char *const args[], struct pgt_proc *p, int timeout_ms)
{
    char *argv[32] = {(char *)pgt_binary(), "run"};
    char env_url[2048];
    int n = 2;
    for (int i = 0; args[i] && n < 30; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url ? url : "");
    char *env[] = {env_url, NULL};
    pgt_spawn(p, argv, env);
    if (!pgt_proc_wait_exit(p, timeout_ms)) {
        diag("did not exit within %d ms; output:\n%s", timeout_ms, p->log);
        return -1;
    }
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
}

/* Checks that the run fails, mentions want, and never shows the secret. */
static void expect_refusal(const char *what, const char *url, char *const args[], const char *want,
                           int timeout_ms)
{
    struct pgt_proc p;
    long long t0 = pgt_now_ms();
    int code = run_with(url, args, &p, timeout_ms);
    ok(code > 0 && strstr(p.log, want) != NULL && strstr(p.log, SECRET) == NULL,
       "%s: refused in %lld ms with a message naming the problem", what, pgt_now_ms() - t0);
    if (code <= 0 || !strstr(p.log, want) || strstr(p.log, SECRET))
        diag("exit %d, wanted '%s' in:\n%s", code, want, p.log);
    pgt_proc_cleanup(&p);
}

int main(void)
{
    const char *db = pgt_db_url();
    char url[2048], url2[2048];
    int port, silent;

    tap_timeout(120);
    plan(12);

    expect_refusal("no DATABASE_URL", NULL, (char *[]){NULL}, "DATABASE_URL is not set", 5000);
    expect_refusal("unknown flag", db, (char *[]){"--wbe", "2", NULL}, "unknown flag '--wbe'",
                   5000);
    expect_refusal("malformed worker count", db, (char *[]){"--web", "two", NULL},
                   "--web must be an integer from 0 to 64, got 'two'", 5000);
    expect_refusal("flag without value", db, (char *[]){"--jobs", NULL}, "--jobs needs a value",
                   5000);
    expect_refusal("bad --io", db, (char *[]){"--io", "kqueue", NULL},
                   "--io must be auto, uring or epoll", 5000);
    expect_refusal("malformed connection_limit",
                   "postgresql://u:" SECRET "@localhost/db?connection_limit=abc", (char *[]){NULL},
                   "connection_limit", 5000);
    expect_refusal("wrong URL scheme", "mysql://u:" SECRET "@localhost/db", (char *[]){NULL},
                   "DATABASE_URL", 5000);

    /* Nothing listens on port 1: refused at once, with the redacted URL. */
    expect_refusal("unreachable database", "postgresql://u:" SECRET "@127.0.0.1:1/db",
                   (char *[]){NULL}, "cannot connect to the database postgresql://u:***@", 10000);

    /* A server that accepts TCP but never speaks: connect_timeout bounds the wait. */
    silent = pgt_silent_listener(&port);
    snprintf(url, sizeof url, "postgresql://u:" SECRET "@127.0.0.1:%d/db?connect_timeout=2", port);
    long long t0 = pgt_now_ms();
    expect_refusal("silent server", url, (char *[]){NULL}, "cannot connect", 10000);
    ok(pgt_now_ms() - t0 < 6000, "the silent server is given up on within connect_timeout");
    close(silent);

    /* 30 + 30 workers x 10 connections do not fit max_connections = 200. */
    expect_refusal("budget over max_connections", db,
                   (char *[]){"--web", "30", "--jobs", "30", "--listen", "127.0.0.1:0", NULL},
                   "(60 x 10) + 1 = 601 > 200", 10000);

    /* The HTTP port is taken by someone else. */
    silent = pgt_silent_listener(&port);
    snprintf(url2, sizeof url2, "127.0.0.1:%d", port);
    expect_refusal("port in use", db,
                   (char *[]){"--web", "1", "--jobs", "0", "--listen", url2, NULL},
                   "cannot listen on", 10000);
    close(silent);
    return done_testing();
}
