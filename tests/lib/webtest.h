/*
 * Shared by the web worker tests (t30x): a web server run in a forked child on a libuv
 * loop (on a listening socket the test opened, as the supervisor would), a few test-only
 * routes, and a small blocking HTTP client over real sockets with bounded waits.
 */
#ifndef PGCORRAL_WEBTEST_H
#define PGCORRAL_WEBTEST_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "runtime/rt_pool.h"
#include "tests/tap.h"
#include "workers/web.h"

/* Bound on every wait of the client: a failure, never a pause. */
#define WT_WAIT_MS 5000

/* ---- time ---------------------------------------------------------------------------- */

long long wt_now_ms(void);

/* ---- the server child ---------------------------------------------------------------- */

/* A test route's timer: /test/slow answers after ms milliseconds. */
struct wt_slow {
    uv_timer_t timer;
    struct web_conn *c;
};

/* What the child serves with. */
struct wt_opts {
    enum web_io_mode io;
    struct web_limits limits;
    struct shm_segment *seg;  /* may be NULL */
    struct shm_worker *stats; /* may be NULL */
    const char *db_url;       /* a pool for /health when not NULL */
    int pool_timeout_ms;
    _Atomic int *inflight; /* shared counter of /test/slow requests, or NULL */
};

/* The child's state. */
struct wt_child {
    uv_loop_t loop;
    uv_signal_t term;
    struct web_server *srv;
    struct rt_pool *pool;
    struct rt_dburl *url;
    int exit_code;
};

/* Body of the server child: serves lfd until SIGTERM, then drains and exits 0 (or 2 when
 * it cannot start, 3 when the loop still holds handles after the drain). */
__attribute__((noreturn)) void wt_child_main(int lfd, const struct wt_opts *o);

/* A server child on its own listening socket. */
struct wt_server {
    pid_t pid;
    int lfd; /* the test's copy of the listening socket, kept like the supervisor's */
    int port;
};

/* Opens a listening socket on 127.0.0.1 (port 0: any), nonblocking as the supervisor's. */
int wt_listen(int *port);

/* Forks a server child on s->lfd (opened with wt_listen before). */
void wt_server_fork(struct wt_server *s, const struct wt_opts *o);

void wt_server_start(struct wt_server *s, const struct wt_opts *o);

/* Waits for the child to exit within timeout_ms. Returns its exit code, -1 when it was
 * killed by a signal, or -2 on timeout (it is SIGKILLed then). */
int wt_server_wait(struct wt_server *s, int timeout_ms);

/* SIGTERM (drain) and wait; returns what wt_server_wait returns. */
int wt_server_stop(struct wt_server *s);

/* Shared memory for counters the child writes and the parent reads. */
void *wt_shared(size_t size);

/* Polls until *v == want or timeout_ms pass. Returns the last value seen. */
int wt_wait_value(_Atomic int *v, int want, int timeout_ms);

/* A mapped block for the child's HTTP stats, readable by the parent. */
struct shm_worker *wt_stats_block(void);

/* ---- the client ---------------------------------------------------------------------- */

int wt_connect(int port);

/* Sends all of buf (len bytes). Returns true, or false when the peer is gone. */
bool wt_send(int fd, const void *buf, size_t len);

bool wt_sends(int fd, const char *s);

/* One parsed response. */
struct wt_resp {
    int status;
    char head[4096]; /* status line and headers, NUL-terminated */
    char *body;      /* malloc'd, NUL-terminated; freed by wt_resp_free */
    size_t body_len;
};

void wt_resp_free(struct wt_resp *r);

/* The value of header name in r (case-insensitive) copied into out, or NULL. */
const char *wt_header(const struct wt_resp *r, const char *name, char *out, size_t n);

/* Whether r says Connection: close. */
bool wt_says_close(const struct wt_resp *r);

/* A connection's read side: bytes received and not yet parsed. */
struct wt_conn {
    int fd;
    char buf[2 << 20];
    size_t len;
    bool eof;   /* the server closed (or reset) */
    bool reset; /* ECONNRESET seen */
};

/* Reads once (up to timeout_ms). Returns false on timeout. */
bool wt_fill(struct wt_conn *c, int timeout_ms);

/*
 * Reads one response (skipping 1xx interim ones unless keep_1xx) within timeout_ms.
 * Returns true and fills r, or false (timeout, or the connection ended first).
 * head_only: the request was HEAD (no body follows whatever Content-Length says).
 */
bool wt_read_resp_ex(struct wt_conn *c, struct wt_resp *r, int timeout_ms, bool head_only,
                     bool keep_1xx);

bool wt_read_resp(struct wt_conn *c, struct wt_resp *r);

/* Whether the server closes the connection within timeout_ms without sending anything
 * more. Returns 1 when it closed, 0 on timeout, -1 when bytes arrived instead. */
int wt_wait_close(struct wt_conn *c, int timeout_ms);

struct wt_conn *wt_open(int port);

void wt_close(struct wt_conn *c);

/* One request on a new connection; returns the status (0 on failure) and the response
 * in r (caller frees with wt_resp_free). */
int wt_request(int port, const char *req, struct wt_resp *r);

/* GET path on a new connection; returns the status (0 on failure), body in r. */
int wt_get(int port, const char *path, struct wt_resp *r);

/*
 * The backends to run a suite over: epoll always; uring when the kernel has it; and
 * "uring-nodefer" (uring without DEFER_TASKRUN, as on kernels before 6.2) when the kernel
 * would use deferred task work, so that both ring modes are tested. Returns how many.
 */
int wt_backends(enum web_io_mode modes[3], const char *names[3]);

/* Sets up the ring mode a backend name from wt_backends() asks for, in this process (call
 * before forking the server). */
void wt_backend_env(const char *name);

#endif
