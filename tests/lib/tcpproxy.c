/*
 * The test TCP proxy: a forked child with one poll() loop that copies bytes between each
 * accepted connection and its own connection to the target, and obeys one-byte commands
 * (stall, resume, cut) from the test over a socketpair. See tcpproxy.h.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/tcpproxy.h"
#include "tests/tap.h"

/* Connections at once: two descriptors each must fit the default limit of 1024. A connection
 * beyond it is accepted and closed at once. */
#define TP_MAX_PAIRS 500
/* Bytes held per direction of a connection; a full buffer stops reading that side. */
#define TP_BUF_SIZE (64 * 1024)
/* How long a command waits for the proxy's acknowledgement. */
#define TP_ACK_TIMEOUT_MS 5000

/* Commands on the control socket; the proxy acknowledges each with the same byte once done. */
enum { TP_STALL = 's', TP_RESUME = 'r', TP_CUT = 'c' };

struct tcpproxy {
    pid_t pid; /* the proxy child */
    int ctl;   /* the test's end of the control socketpair */
    int port;  /* where the proxy listens on 127.0.0.1 */
};

/* Bytes read from one side and not yet written to the other: data[off, len). */
struct tp_buf {
    size_t off, len;
    char data[TP_BUF_SIZE];
};

/* One proxied connection. Side 0 is the accepted client, side 1 the target; buf[i] holds
 * what side i sent. */
struct tp_pair {
    int fd[2];
    bool connecting; /* the connection to the target is not established yet */
    bool eof[2];     /* side i has sent its end */
    bool shut[2];    /* side i's end has been passed on (the other side shut for writing) */
    struct tp_buf buf[2];
};

/* The proxy child's state; filled in by the test before the fork, then only the child's. */
struct tp_child {
    int ctl, listener;
    struct sockaddr_storage target;
    socklen_t target_len;
    bool stalled;
    int npairs;
    struct tp_pair *pairs[TP_MAX_PAIRS];
};

static void pair_close(struct tp_pair *p)
{
    close(p->fd[0]);
    close(p->fd[1]);
    free(p);
}

/* Accepts every waiting connection and starts its connection to the target. */
static void accept_all(struct tp_child *c)
{
    int fd;
    while ((fd = accept4(c->listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        struct tp_pair *p = c->npairs < TP_MAX_PAIRS ? calloc(1, sizeof *p) : NULL;
        int up =
            p ? socket(c->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
        int rc = up < 0 ? -1 : connect(up, (struct sockaddr *)&c->target, c->target_len);
        if (!p || up < 0 || (rc < 0 && errno != EINPROGRESS)) {
            /* The client sees its connection closed, as it would if the target refused. */
            free(p);
            if (up >= 0)
                close(up);
            close(fd);
            continue;
        }
        p->fd[0] = fd;
        p->fd[1] = up;
        p->connecting = rc < 0;
        c->pairs[c->npairs++] = p;
    }
}

/* What to wait for on the pair's two sockets: nothing at all while stalled, so that not
 * even a hang-up is noticed. A socket with nothing to wait for is left out (fd -1): poll
 * would report its hang-up over and over. */
static void pair_events(const struct tp_pair *p, bool stalled, struct pollfd pf[2])
{
    for (int i = 0; i < 2; i++) {
        short ev;
        if (stalled)
            ev = 0;
        else if (p->connecting)
            ev = i == 1 ? POLLOUT : 0;
        else
            ev = (!p->eof[i] && p->buf[i].len < TP_BUF_SIZE ? POLLIN : 0) |
                 (p->buf[1 - i].len > 0 ? POLLOUT : 0);
        pf[i] = (struct pollfd){.fd = ev ? p->fd[i] : -1, .events = ev};
    }
}

/* Reads what side i has into its buffer. Returns false on a connection error. */
static bool side_read(struct tp_pair *p, int i)
{
    struct tp_buf *b = &p->buf[i];
    if (p->eof[i] || b->len == TP_BUF_SIZE)
        return true;
    ssize_t n = recv(p->fd[i], b->data + b->len, TP_BUF_SIZE - b->len, 0);
    if (n > 0)
        b->len += (size_t)n;
    else if (n == 0)
        p->eof[i] = true;
    else
        return errno == EAGAIN || errno == EINTR;
    return true;
}

/* Writes side i's buffer to the other side, and passes on side i's end once all is written.
 * Returns false on a connection error. */
static bool side_flush(struct tp_pair *p, int i)
{
    struct tp_buf *b = &p->buf[i];
    if (b->off < b->len) {
        ssize_t n = send(p->fd[1 - i], b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR;
        b->off += (size_t)n;
        if (b->off == b->len)
            b->off = b->len = 0;
    }
    if (p->eof[i] && b->len == 0 && !p->shut[i]) {
        shutdown(p->fd[1 - i], SHUT_WR);
        p->shut[i] = true;
    }
    return true;
}

/* Moves what can move after a poll. Returns false once the pair is done: both ends passed
 * on, a connection error, or a failed connection to the target. */
static bool pair_step(struct tp_pair *p, const struct pollfd pf[2])
{
    if (p->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (!pf[1].revents)
            return true;
        if (getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
            return false;
        p->connecting = false;
    }
    for (int i = 0; i < 2; i++)
        if ((pf[i].revents & (POLLIN | POLLHUP | POLLERR)) && !side_read(p, i))
            return false;
    for (int i = 0; i < 2; i++)
        if (!side_flush(p, i))
            return false;
    return !(p->shut[0] && p->shut[1]);
}

/* Carries out one command and acknowledges it. Returns false when the test has closed the
 * control socket (tcpproxy_stop) or gone. */
static bool child_command(struct tp_child *c)
{
    char cmd;
    if (read(c->ctl, &cmd, 1) != 1)
        return false;
    if (cmd == TP_STALL || cmd == TP_RESUME)
        c->stalled = cmd == TP_STALL;
    else if (cmd == TP_CUT)
        while (c->npairs > 0)
            pair_close(c->pairs[--c->npairs]);
    else
        return false;
    return write(c->ctl, &cmd, 1) == 1;
}

static _Noreturn void child_run(struct tp_child *c)
{
    static struct pollfd pfd[2 + 2 * TP_MAX_PAIRS];

    for (;;) {
        int n = c->npairs;
        pfd[0] = (struct pollfd){.fd = c->ctl, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = c->listener, .events = POLLIN};
        for (int i = 0; i < n; i++)
            pair_events(c->pairs[i], c->stalled, &pfd[2 + 2 * i]);
        if (poll(pfd, (nfds_t)(2 + 2 * n), -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        if (pfd[0].revents) {
            if (!child_command(c))
                _exit(0);
            /* The pairs' poll results predate the command (a cut freed them). */
            continue;
        }
        /* Backwards, so that the last pair moved into a closed one's slot is one already
         * stepped. */
        for (int i = n - 1; i >= 0; i--) {
            if (pair_step(c->pairs[i], &pfd[2 + 2 * i]))
                continue;
            pair_close(c->pairs[i]);
            c->pairs[i] = c->pairs[--c->npairs];
        }
        if (pfd[1].revents)
            accept_all(c);
    }
}

/* Closes every descriptor above stderr except the two the proxy uses: a copy of the test's
 * sockets or pipes held here would keep them open after the test closes them. */
static void close_others(int a, int b)
{
    unsigned lo = (unsigned)(a < b ? a : b), hi = (unsigned)(a < b ? b : a);
    if (lo > 3)
        close_range(3, lo - 1, 0);
    if (hi > lo + 1)
        close_range(lo + 1, hi - 1, 0);
    close_range(hi + 1, ~0U, 0);
}

/* Fills in c's target address; bails out when it cannot. */
static void target_resolve(struct tp_child *c, const char *host, int port)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    char service[16];
    int rc;

    if (host[0] == '/') {
        struct sockaddr_un *u = (struct sockaddr_un *)&c->target;
        u->sun_family = AF_UNIX;
        rc = snprintf(u->sun_path, sizeof u->sun_path, "%s/.s.PGSQL.%d", host, port);
        if (rc < 0 || (size_t)rc >= sizeof u->sun_path)
            bail("tcpproxy: socket path too long: %s/.s.PGSQL.%d", host, port);
        c->target_len = sizeof *u;
        return;
    }
    snprintf(service, sizeof service, "%d", port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0)
        bail("tcpproxy: cannot resolve %s: %s", host, gai_strerror(rc));
    memcpy(&c->target, res->ai_addr, res->ai_addrlen);
    c->target_len = res->ai_addrlen;
    freeaddrinfo(res);
}

struct tcpproxy *tcpproxy_start(const char *target_host, int target_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    struct tp_child c = {0};
    struct tcpproxy *p = calloc(1, sizeof *p);
    pid_t parent = getpid();
    int sv[2];

    target_resolve(&c, target_host, target_port);
    c.listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!p || c.listener < 0 || bind(c.listener, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(c.listener, 128) < 0 || getsockname(c.listener, (struct sockaddr *)&a, &len) < 0)
        bail("tcpproxy: cannot listen on 127.0.0.1: %s", strerror(errno));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        bail("tcpproxy: socketpair: %s", strerror(errno));
    fflush(NULL);
    p->pid = fork();
    if (p->pid < 0)
        bail("tcpproxy: fork: %s", strerror(errno));
    if (p->pid == 0) {
        /* Dies with the test, even by SIGKILL; the check covers a test that died first. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        signal(SIGPIPE, SIG_IGN);
        c.ctl = sv[1];
        close_others(c.ctl, c.listener);
        child_run(&c);
    }
    close(sv[1]);
    close(c.listener);
    p->ctl = sv[0];
    p->port = ntohs(a.sin_port);
    return p;
}

int tcpproxy_port(const struct tcpproxy *p)
{
    return p->port;
}

/* Sends cmd and waits for the proxy to acknowledge it; bails out if it does not. */
static void tp_command(struct tcpproxy *p, char cmd, const char *what)
{
    struct pollfd pf = {.fd = p->ctl, .events = POLLIN};
    char ack = 0;
    if (send(p->ctl, &cmd, 1, MSG_NOSIGNAL) != 1 || poll(&pf, 1, TP_ACK_TIMEOUT_MS) != 1 ||
        read(p->ctl, &ack, 1) != 1 || ack != cmd)
        bail("tcpproxy: the proxy (pid %d) did not confirm %s", (int)p->pid, what);
}

void tcpproxy_stall(struct tcpproxy *p)
{
    tp_command(p, TP_STALL, "the stall");
}

void tcpproxy_resume(struct tcpproxy *p)
{
    tp_command(p, TP_RESUME, "the resume");
}

void tcpproxy_cut(struct tcpproxy *p)
{
    tp_command(p, TP_CUT, "the cut");
}

void tcpproxy_stop(struct tcpproxy *p)
{
    int status = 0;

    if (!p)
        return;
    /* The proxy exits when it reads the end of its control socket. */
    close(p->ctl);
    pid_t got = waitpid(p->pid, &status, 0);
    if (got == p->pid && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        bail("tcpproxy: the proxy (pid %d) failed: status 0x%x", (int)p->pid, status);
    free(p);
}
