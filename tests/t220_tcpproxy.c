/*
 * The test harness's TCP proxy (tests/lib/tcpproxy.h) against the real server: libpq works
 * through it, also for data far larger than its buffers; a stall holds a query's answer and a
 * new connection's start-up back while the backend stays connected; a resume delivers both; a
 * cut closes the connection at once and the proxy serves new ones; a direct connection never
 * notices any of it; a proxy whose test is killed goes with it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "tests/lib/pgtest.h"
#include "tests/lib/tcpproxy.h"
#include "tests/tap.h"

/* A parameter and a result this big cross the proxy's 64 KiB buffers many times over. */
#define BIG_BYTES (1024 * 1024)

/* How long a stalled proxy must hold everything back: the wait is the assertion. */
#define STALL_MS 500

/* Opens a connection to the test database through the proxy: the test URL with the proxy's
 * host and port. Blocking (PQconnectdbParams), or only started when start_only. */
static PGconn *connect_proxied(const struct tcpproxy *px, bool start_only)
{
    char port[16];
    snprintf(port, sizeof port, "%d", tcpproxy_port(px));
    /* With expand_dbname, the keywords after the URL override its host and port. */
    const char *const keys[] = {"dbname",           "host", "port", "sslmode", "gssencmode",
                                "application_name", NULL};
    const char *const vals[] = {pgt_db_url(), "127.0.0.1",    port, "disable",
                                "disable",    "t220_proxied", NULL};
    return start_only ? PQconnectStartParams(keys, vals, 1) : PQconnectdbParams(keys, vals, 1);
}

/* Whether conn's socket becomes readable (an answer, or the server's close) within ms. */
static bool readable_within(PGconn *conn, int ms)
{
    struct pollfd pf = {.fd = PQsocket(conn), .events = POLLIN};
    return poll(&pf, 1, ms) == 1;
}

/* Reads conn's input until a whole result is in; false if it is not within ms. */
static bool result_within(PGconn *conn, int ms)
{
    long long deadline = pgt_now_ms() + ms;
    while (PQisBusy(conn)) {
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || !readable_within(conn, (int)left) || !PQconsumeInput(conn))
            return false;
    }
    return true;
}

/* Drives a started connection (PQconnectStartParams) for up to ms; returns PQconnectPoll's
 * last answer (PGRES_POLLING_OK once the connection is made). */
static PostgresPollingStatusType connect_within(PGconn *conn, int ms)
{
    long long deadline = pgt_now_ms() + ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING) {
        struct pollfd pf = {.fd = PQsocket(conn),
                            .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || poll(&pf, 1, (int)left) != 1)
            return st;
        st = PQconnectPoll(conn);
    }
    return st;
}

/* Passes a 1 MiB parameter in and gets a 1 MiB value back over conn. */
static bool big_round_trip(PGconn *conn)
{
    char *big = malloc(BIG_BYTES + 1);
    if (!big)
        bail("out of memory");
    memset(big, 'y', BIG_BYTES);
    big[BIG_BYTES] = '\0';
    const char *vals[] = {big};
    PGresult *r = PQexecParams(conn, "SELECT length($1), repeat('x', length($1))", 1, NULL, vals,
                               NULL, NULL, 0);
    bool good = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == BIG_BYTES &&
                PQgetlength(r, 0, 1) == BIG_BYTES;
    if (!good)
        diag("big round trip: %s", PQresultErrorMessage(r));
    PQclear(r);
    free(big);
    return good;
}

/* pgt_wait_until's condition: nothing listens on the loopback port *arg any more. */
static bool port_refused(void *arg)
{
    int port = *(int *)arg;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool refused =
        fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno == ECONNREFUSED;
    if (fd >= 0)
        close(fd);
    return refused;
}

/* A process that starts a proxy and is then killed with SIGKILL, as a test can be: its proxy
 * must not outlive it (a leftover would keep a node's connections alive for later tests). */
static void test_dies_with_its_test(const char *host, int port)
{
    int pipefd[2], proxy_port = 0;

    if (pipe(pipefd) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0) {
        struct tcpproxy *px = tcpproxy_start(host, port);
        int p = tcpproxy_port(px);
        if (write(pipefd[1], &p, sizeof p) != (ssize_t)sizeof p)
            _exit(1);
        pause();
        _exit(0);
    }
    close(pipefd[1]);
    if (read(pipefd[0], &proxy_port, sizeof proxy_port) != (ssize_t)sizeof proxy_port)
        bail("the child did not start its proxy");
    close(pipefd[0]);
    ok(!port_refused(&proxy_port), "a child's proxy listens");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ok(pgt_wait_until(port_refused, &proxy_port, 5000),
       "once the child is killed with SIGKILL its proxy is gone within 5 s");
}

int main(void)
{
    char *err = NULL, sql[128];
    const char *host = NULL;
    int port = 0;

    tap_timeout(60);
    PQconninfoOption *opts = PQconninfoParse(pgt_db_url(), &err);
    if (!opts)
        bail("cannot parse the test database URL: %s", err ? err : "out of memory");
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "port") == 0 && o->val)
            port = atoi(o->val);
    }
    if (!host || port <= 0)
        bail("the test database URL names no host and port");
    PGconn *direct = pgt_connect();
    int direct_pid = PQbackendPID(direct);
    struct tcpproxy *px = tcpproxy_start(host, port);

    /* 1: through the proxy, like directly. */
    PGconn *c = connect_proxied(px, false);
    if (!ok(PQstatus(c) == CONNECTION_OK, "a libpq connection through the proxy opens"))
        bail("no connection through the proxy: %s", PQerrorMessage(c));
    is_int(pgt_query_ll(c, "SELECT 1"), 1, "it runs SELECT 1");
    ok(big_round_trip(c), "1 MiB goes through in each direction");

    /* 2: stalled, nothing moves, and nothing is closed. */
    int pid = PQbackendPID(c);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
    tcpproxy_stall(px);
    ok(PQsendQuery(c, "SELECT 42"), "a query is sent during the stall");
    ok(!readable_within(c, STALL_MS), "no answer arrives within %d ms of the stall", STALL_MS);
    is_int(pgt_query_ll(direct, sql), 1, "the stalled connection's backend is still connected");
    PGconn *late = connect_proxied(px, true);
    PostgresPollingStatusType st = connect_within(late, STALL_MS);
    ok(st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING,
       "a connection opened during the stall is still starting %d ms later (state %d)", STALL_MS,
       (int)st);
    is_int(pgt_query_ll(direct, "SELECT 1"), 1, "a direct connection runs queries meanwhile");

    /* 3: resumed, what was held back arrives. */
    tcpproxy_resume(px);
    ok(result_within(c, 5000), "after the resume the query's answer arrives within 5 s");
    PGresult *r = PQgetResult(c);
    is_str(PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : PQresultErrorMessage(r),
           "42", "and it is the query's result");
    PQclear(r);
    ok(PQgetResult(c) == NULL, "and nothing else");
    is_int(connect_within(late, 5000), PGRES_POLLING_OK,
           "the connection opened during the stall completes after the resume");
    is_int(pgt_query_ll(late, "SELECT 2"), 2, "and runs queries");
    PQfinish(late);

    /* 4: cut, the client notices at once; the proxy serves new connections. */
    tcpproxy_cut(px);
    ok(readable_within(c, 5000) && !PQconsumeInput(c),
       "after the cut the client reads the server's close within 5 s");
    diag("libpq says: %s", PQerrorMessage(c));
    is_int(PQstatus(c), CONNECTION_BAD, "the connection reports itself bad");
    is_int(pgt_wait_count(direct, sql, 0, 5000), 0, "its backend ends too");
    PQfinish(c);
    c = connect_proxied(px, false);
    if (!ok(PQstatus(c) == CONNECTION_OK && pgt_query_ll(c, "SELECT 1") == 1,
            "a new connection through the proxy runs SELECT 1 after the cut"))
        diag("libpq says: %s", PQerrorMessage(c));
    PQfinish(c);

    /* 5: the direct connection saw none of it. */
    ok(PQstatus(direct) == CONNECTION_OK && PQbackendPID(direct) == direct_pid &&
           pgt_query_ll(direct, "SELECT 1") == 1,
       "the direct connection is the same one and still works");
    tcpproxy_stop(px);
    PQfinish(direct);

    test_dies_with_its_test(host, port);
    PQconninfoFree(opts);
    return done_testing();
}
