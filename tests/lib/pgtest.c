/*
 * The test harness: test cluster access, child processes with captured output, and a
 * control-socket client. See pgtest.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/pgtest.h"
#include "tests/tap.h"

extern char **environ;

const char *pgt_db_url(void)
{
    const char *url = getenv("PGC_TEST_DATABASE_URL");
    if (!url || !*url)
        bail("PGC_TEST_DATABASE_URL is not set: run through scripts/with-test-pg.sh (make test)");
    return url;
}

PGconn *pgt_connect(void)
{
    PGconn *c = PQconnectdb(pgt_db_url());
    if (PQstatus(c) != CONNECTION_OK)
        bail("cannot connect to the test database: %s", PQerrorMessage(c));
    return c;
}

long long pgt_query_ll(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = atoll(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        diag("query failed: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return v;
}

const char *pgt_binary(void)
{
    static char path[PATH_MAX + 16];
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        bail("readlink /proc/self/exe: %s", strerror(errno));
    exe[n] = '\0';
    /* build/tests/tNNN -> build/pgcorral */
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    slash = strrchr(exe, '/');
    *slash = '\0';
    snprintf(path, sizeof path, "%s/pgcorral", exe);
    if (access(path, X_OK) != 0)
        bail("no pgcorral binary at %s", path);
    return path;
}

static char public_dir[64];

static void public_binary_remove(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/pgcorral", public_dir);
    unlink(path);
    rmdir(public_dir);
}

const char *pgt_binary_public(void)
{
    static char path[128];
    char buf[65536];
    ssize_t n;
    int in, out;

    if (path[0])
        return path;
    snprintf(public_dir, sizeof public_dir, "/tmp/pgct-%d-bin", (int)getpid());
    snprintf(path, sizeof path, "%s/pgcorral", public_dir);
    if (mkdir(public_dir, 0755) < 0 && errno != EEXIST)
        bail("mkdir %s: %s", public_dir, strerror(errno));
    chmod(public_dir, 0755); /* whatever the umask */
    in = open(pgt_binary(), O_RDONLY | O_CLOEXEC);
    out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (in < 0 || out < 0)
        bail("copying %s to %s: %s", pgt_binary(), path, strerror(errno));
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            bail("copying %s: %s", path, strerror(errno));
    close(in);
    if (fchmod(out, 0755) < 0 || close(out) < 0)
        bail("copying %s: %s", path, strerror(errno));
    atexit(public_binary_remove);
    return path;
}

const char *pgt_tmp_path(const char *name)
{
    static char paths[8][108];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "/tmp/pgct-%d-%s", (int)getpid(), name);
    return p;
}

long long pgt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pgt_exec_child(char *const argv[], char *const env[])
{
    for (int i = 0; env && env[i]; i++)
        putenv(env[i]);
    /* No alarm or blocked signals from the test leak into the child. */
    alarm(0);
    signal(SIGALRM, SIG_DFL);
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

void pgt_spawn(struct pgt_proc *p, char *const argv[], char *const env[])
{
    int pipefd[2];

    memset(p, 0, sizeof *p);
    p->fd = -1;
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0)
        bail("fork: %s", strerror(errno));
    if (p->pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        pgt_exec_child(argv, env);
    }
    close(pipefd[1]);
    p->fd = pipefd[0];
    fcntl(p->fd, F_SETFL, O_NONBLOCK);
    p->cap = 4096;
    p->log = calloc(1, p->cap);
}

void pgt_proc_drain(struct pgt_proc *p)
{
    while (p->fd >= 0) {
        if (p->cap - p->len < 4096) {
            p->cap *= 2;
            p->log = realloc(p->log, p->cap);
        }
        ssize_t n = read(p->fd, p->log + p->len, p->cap - p->len - 1);
        if (n > 0) {
            p->len += (size_t)n;
            p->log[p->len] = '\0';
            continue;
        }
        if (n == 0) {
            close(p->fd);
            p->fd = -1;
        }
        break;
    }
}

/* Waits up to ms for output (or EOF) from the process. */
static void wait_output(struct pgt_proc *p, int ms)
{
    if (p->fd >= 0) {
        struct pollfd pf = {.fd = p->fd, .events = POLLIN};
        poll(&pf, 1, ms);
    } else {
        struct timespec ts = {0, (long)ms * 1000000};
        nanosleep(&ts, NULL);
    }
    pgt_proc_drain(p);
}

bool pgt_proc_wait_log(struct pgt_proc *p, const char *needle, int timeout_ms)
{
    long long deadline = pgt_now_ms() + timeout_ms;
    pgt_proc_drain(p);
    while (!strstr(p->log, needle)) {
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || (p->fd < 0 && p->exited))
            return false;
        wait_output(p, left > 50 ? 50 : (int)left);
        if (!p->exited && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
            p->exited = true;
    }
    return true;
}

bool pgt_proc_wait_exit(struct pgt_proc *p, int timeout_ms)
{
    long long deadline = pgt_now_ms() + timeout_ms;
    while (!p->exited) {
        if (waitpid(p->pid, &p->status, WNOHANG) == p->pid) {
            p->exited = true;
            break;
        }
        long long left = deadline - pgt_now_ms();
        if (left <= 0)
            return false;
        wait_output(p, left > 20 ? 20 : (int)left);
    }
    pgt_proc_drain(p);
    return true;
}

void pgt_proc_cleanup(struct pgt_proc *p)
{
    if (p->pid > 0 && !p->exited) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &p->status, 0);
        p->exited = true;
    }
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    free(p->log);
    p->log = NULL;
}

json_t *pgt_ctl(const char *control_path, const char *command)
{
    struct sockaddr_un addr;
    char buf[65536];
    size_t len = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    json_t *doc = NULL;

    if (fd < 0)
        return NULL;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", control_path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        goto out;
    if (write(fd, command, strlen(command)) < 0 || write(fd, "\n", 1) != 1)
        goto out;
    while (len < sizeof buf - 1) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0)
            goto out;
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            goto out;
        len += (size_t)n;
        buf[len] = '\0';
        if (strchr(buf, '\n'))
            break;
    }
    doc = json_loads(buf, JSON_DISABLE_EOF_CHECK, NULL);
out:
    close(fd);
    return doc;
}

bool pgt_wait_until(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    long long deadline = pgt_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (pgt_now_ms() >= deadline)
            return cond(arg);
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
}

bool pgt_count_reached(void *arg)
{
    struct pgt_count *c = arg;
    c->got = pgt_query_ll(c->conn, c->sql);
    return c->at_least ? c->got >= c->want : c->got == c->want;
}

long long pgt_wait_count(PGconn *conn, const char *sql, long long want, int timeout_ms)
{
    struct pgt_count c = {conn, sql, want, false, -1};
    pgt_wait_until(pgt_count_reached, &c, timeout_ms);
    return c.got;
}

long long pgt_wait_at_least(PGconn *conn, const char *sql, long long want, int timeout_ms)
{
    struct pgt_count c = {conn, sql, want, true, -1};
    pgt_wait_until(pgt_count_reached, &c, timeout_ms);
    return c.got;
}

int pgt_closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        bail("cannot find a free port");
    close(fd);
    return ntohs(a.sin_port);
}

int pgt_silent_listener(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        bail("cannot open a listening socket");
    *port = ntohs(a.sin_port);
    return fd;
}

bool pgt_pid_alive(pid_t pid)
{
    char path[64], state = '?';
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return false;
    /* pid (comm) state ...: a zombie counts as gone. */
    if (fscanf(f, "%*d (%*[^)]) %c", &state) != 1)
        state = '?';
    fclose(f);
    return state != 'Z' && state != 'X';
}
