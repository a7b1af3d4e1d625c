/*
 * systemd integration against the real binary, with the test as the service manager: a
 * NOTIFY_SOCKET datagram socket gets READY=1 only once every worker is ready, STATUS=
 * lines, WATCHDOG=1 every WATCHDOG_USEC / 2, RELOADING=1 + MONOTONIC_USEC then READY=1
 * around a rolling restart (SIGHUP, as ExecReload= sends), STOPPING=1 on SIGTERM, all from
 * the supervisor's pid alone; and socket activation: a listening socket passed as fd 3 with
 * LISTEN_FDS/LISTEN_PID serves HTTP while --listen names an address that cannot be bound.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* The test's end of NOTIFY_SOCKET, and what it has received so far. */
struct manager {
    int fd;
    struct pgt_proc *sup; /* whose log is drained while waiting (a full pipe would stall it) */
    int messages;
    int foreign;   /* datagrams whose sender was not the supervisor's pid */
    int watchdogs; /* WATCHDOG=1 seen */
    char first_status[256], last_status[256];
};

/* A unix datagram socket bound at path ("@name": abstract) that receives senders' pids. */
static int manager_open(struct manager *m, const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    socklen_t alen;
    int one = 1;

    memset(m, 0, sizeof *m);
    m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (m->fd < 0)
        bail("socket: %s", strerror(errno));
    memcpy(a.sun_path, path, len);
    if (path[0] == '@') {
        a.sun_path[0] = '\0';
        alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        unlink(path);
        alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    if (bind(m->fd, (struct sockaddr *)&a, alen) < 0 ||
        setsockopt(m->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0)
        bail("bind %s: %s", path, strerror(errno));
    return m->fd;
}

/* Whether the newline-separated message msg has exactly the line line. */
static bool has_line(const char *msg, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = msg; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (l == n && memcmp(p, line, n) == 0)
            return true;
        p += l + (p[l] == '\n');
    }
    return false;
}

/* The value of NAME= in msg, or NULL. Points into msg (up to the end of its line). */
static const char *field(const char *msg, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = msg; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (l > n && memcmp(p, name, n) == 0 && p[n] == '=')
            return p + n + 1;
        p += l + (p[l] == '\n');
    }
    return NULL;
}

/* The next datagram within timeout_ms into buf, counted and checked for its sender. */
static bool next_msg(struct manager *m, char *buf, size_t size, int timeout_ms)
{
    long long deadline = pgt_now_ms() + timeout_ms;

    for (;;) {
        struct pollfd pf = {.fd = m->fd, .events = POLLIN};
        long long left = deadline - pgt_now_ms();
        if (left < 0)
            return false;
        pgt_proc_drain(m->sup);
        if (poll(&pf, 1, left > 100 ? 100 : (int)left) <= 0)
            continue;
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(struct ucred))];
        } ctl;
        struct iovec iov = {buf, size - 1};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(m->fd, &mh, MSG_DONTWAIT);
        if (n < 0)
            continue;
        buf[n] = '\0';
        pid_t from = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cr;
                memcpy(&cr, CMSG_DATA(c), sizeof cr);
                from = cr.pid;
            }
        }
        m->messages++;
        if (from != m->sup->pid) {
            m->foreign++;
            diag("datagram from pid %d, not the supervisor's %d: %s", (int)from, (int)m->sup->pid,
                 buf);
        }
        if (has_line(buf, "WATCHDOG=1"))
            m->watchdogs++;
        const char *st = field(buf, "STATUS");
        if (st) {
            if (!m->first_status[0])
                snprintf(m->first_status, sizeof m->first_status, "%s", st);
            snprintf(m->last_status, sizeof m->last_status, "%s", st);
        }
        return true;
    }
}

/* Reads datagrams until one has the line line (into buf). Returns false after timeout_ms. */
static bool wait_line(struct manager *m, const char *line, char *buf, size_t size, int timeout_ms)
{
    long long deadline = pgt_now_ms() + timeout_ms;
    while (pgt_now_ms() < deadline)
        if (next_msg(m, buf, size, (int)(deadline - pgt_now_ms())) && has_line(buf, line))
            return true;
    return false;
}

static unsigned long long mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
}

static char env_url[1024];

/* Waits for the supervisor to exit; whether it exited 0. */
static bool exits_zero(struct pgt_proc *p)
{
    return pgt_proc_wait_exit(p, 40000) && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
}

static void test_notify(void)
{
    const char *control = pgt_tmp_path("sd.sock");
    char path[108], env_notify[160], buf[1024];
    struct manager m;
    struct pgt_proc sup;
    struct ot_worker before[64], now[64];
    int nbefore, n;

    snprintf(path, sizeof path, "%s", pgt_tmp_path("notify"));
    manager_open(&m, path);
    snprintf(env_notify, sizeof env_notify, "NOTIFY_SOCKET=%s", path);
    /* Its init takes 1 s: no worker is ready sooner than that after it is forked, so the
     * first STATUS= (sent as the workers are forked) and READY=1 cannot race them. */
    const char *slow = jt_build_plugin("slow_init", NULL);
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "2",
                    "--jobs",
                    "2",
                    "--listen",
                    "127.0.0.1:0",
                    "--control",
                    (char *)control,
                    "--plugin",
                    (char *)slow,
                    NULL};
    char *env[] = {env_url, env_notify, "WATCHDOG_USEC=1000000", NULL};
    pgt_spawn(&sup, argv, env);
    m.sup = &sup;

    /* READY=1, and at that moment the control socket shows every worker ready. */
    bool ready = wait_line(&m, "READY=1", buf, sizeof buf, 30000);
    bool all = ready && ot_all_ready(control, 2, 2);
    if (!ok(ready && all, "READY=1 arrives, and every worker is ready when it does")) {
        pgt_proc_drain(&sup);
        diag("ready=%d all=%d; log:\n%s", ready, all, sup.log);
        bail("the supervisor did not become ready");
    }
    ok(strncmp(m.first_status, "web 0/2 ready, jobs 0/2 ready, budget ", 38) == 0,
       "the first STATUS= came while the workers were starting: '%s'", m.first_status);
    ok(strncmp(m.last_status, "web 2/2 ready, jobs 2/2 ready, budget ", 38) == 0,
       "STATUS= with workers and budget by then: '%s'", m.last_status);

    /* WATCHDOG_USEC=1 s: a ping every 0.5 s. */
    int w0 = m.watchdogs;
    long long t0 = pgt_now_ms();
    while (pgt_now_ms() - t0 < 2600)
        next_msg(&m, buf, sizeof buf, 2600 - (int)(pgt_now_ms() - t0));
    int pings = m.watchdogs - w0;
    ok(pings >= 3 && pings <= 8, "WATCHDOG=1 every WATCHDOG_USEC/2: %d in 2.6 s", pings);

    /* SIGHUP (ExecReload=kill -HUP $MAINPID): RELOADING=1 with the monotonic clock, then
     * READY=1 once the rolling restart has replaced every worker. */
    nbefore = ot_workers(control, before, 64);
    unsigned long long t_before = mono_us();
    kill(sup.pid, SIGHUP);
    bool reloading = wait_line(&m, "RELOADING=1", buf, sizeof buf, 10000);
    unsigned long long t_after = mono_us();
    ok(reloading, "RELOADING=1 on SIGHUP");
    const char *mu = field(buf, "MONOTONIC_USEC");
    unsigned long long usec = mu ? strtoull(mu, NULL, 10) : 0;
    ok(reloading && usec >= t_before && usec <= t_after,
       "with MONOTONIC_USEC from CLOCK_MONOTONIC (%llu in [%llu, %llu])", usec, t_before, t_after);
    bool again = wait_line(&m, "READY=1", buf, sizeof buf, 30000);
    n = again ? ot_workers(control, now, 64) : 0;
    int fresh = 0, stale = 0;
    for (int i = 0; i < n; i++) {
        bool old = false;
        for (int j = 0; j < nbefore; j++)
            old = old || now[i].pid == before[j].pid;
        if (strcmp(now[i].state, "ready") == 0) {
            fresh += !old;
            stale += old;
        }
    }
    /* The last old worker may not have marked itself draining yet: only new ones count. */
    ok(again && fresh == 4,
       "READY=1 again once all four workers are new ones and ready (%d new ready, %d old)", fresh,
       stale);

    kill(sup.pid, SIGTERM);
    ok(wait_line(&m, "STOPPING=1", buf, sizeof buf, 10000), "STOPPING=1 on SIGTERM");
    ok(exits_zero(&sup), "the supervisor exits 0");
    ok(m.messages > 0 && m.foreign == 0,
       "all %d datagrams came from the supervisor's pid (none from a worker)", m.messages);
    pgt_proc_cleanup(&sup);
    close(m.fd);
    unlink(path);
}

/*
 * Starts argv as systemd would under socket activation: the listening socket as fd 3,
 * LISTEN_FDS=1 and LISTEN_PID set to the pid that execs the binary.
 */
static void spawn_activated(struct pgt_proc *p, int sock, char *const argv[], char *const env[])
{
    int pipefd[2];

    memset(p, 0, sizeof *p);
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0)
        bail("fork: %s", strerror(errno));
    if (p->pid == 0) {
        char pid[32];
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        /* fd 3 must survive exec: dup2 clears close-on-exec on its copy; a socket that is
         * fd 3 already loses the flag here. */
        if ((sock == 3 ? fcntl(3, F_SETFD, 0) : dup2(sock, 3)) < 0)
            _exit(126);
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        setenv("LISTEN_PID", pid, 1);
        setenv("LISTEN_FDS", "1", 1);
        pgt_exec_child(argv, env);
    }
    close(pipefd[1]);
    p->fd = pipefd[0];
    fcntl(p->fd, F_SETFL, O_NONBLOCK);
    p->cap = 4096;
    p->log = calloc(1, p->cap);
}

static void test_socket_activation(void)
{
    const char *control = pgt_tmp_path("sa.sock");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    char abstract[108], env_notify[160], buf[1024];
    struct manager m;
    struct pgt_proc sup;
    int one = 1, port, sock;

    /* What a .socket unit would have made: bound and listening, before pgcorral runs. */
    sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(sock, (struct sockaddr *)&a, sizeof a) < 0 || listen(sock, 128) < 0 ||
        getsockname(sock, (struct sockaddr *)&a, &alen) < 0)
        bail("listening socket: %s", strerror(errno));
    port = ntohs(a.sin_port);

    snprintf(abstract, sizeof abstract, "@pgct-%d-notify", (int)getpid());
    manager_open(&m, abstract);
    snprintf(env_notify, sizeof env_notify, "NOTIFY_SOCKET=%s", abstract);
    /* 192.0.2.1 (TEST-NET-1) is on no interface here: binding --listen would fail. */
    char *argv[] = {
        (char *)pgt_binary(), "run",       "--web",         "2", "--jobs", "0", "--listen",
        "192.0.2.1:3000",     "--control", (char *)control, NULL};
    char *env[] = {env_url, env_notify, NULL};
    spawn_activated(&sup, sock, argv, env);
    m.sup = &sup;

    bool ready = wait_line(&m, "READY=1", buf, sizeof buf, 30000);
    if (!ok(ready, "READY=1 on an abstract NOTIFY_SOCKET (%s)", abstract)) {
        pgt_proc_drain(&sup);
        diag("log:\n%s", sup.log);
    }
    pgt_proc_drain(&sup);
    json_t *lines = ot_log_lines(sup.log, "listening");
    json_t *l = json_array_get(lines, 0);
    ok(json_is_true(json_object_get(l, "socket_activation")) &&
           json_integer_value(json_object_get(l, "port")) == port,
       "the supervisor listens on the passed socket (port %d), not on --listen", port);
    json_decref(lines);
    int good = 0;
    for (int i = 0; i < 10; i++) {
        char *resp = NULL;
        good += ot_http_get(port, "/api/v1/ping", &resp) == 200;
        free(resp);
    }
    is_int(good, 10, "GET /api/v1/ping on the passed socket answers 200, ten times of ten");
    ok(ot_all_ready(control, 2, 0), "both web workers serve (each on a dup of fd 3)");
    kill(sup.pid, SIGTERM);
    ok(exits_zero(&sup), "the supervisor exits 0");
    pgt_proc_cleanup(&sup);
    close(m.fd);
    close(sock);
}

int main(void)
{
    tap_timeout(150);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    plan(15);
    test_notify();
    test_socket_activation();
    jt_remove_plugins();
    return done_testing();
}
