/*
 * Benchmark harness: the web worker module alone, without the supervisor. Opens one
 * SO_REUSEPORT socket per web process on 127.0.0.1:PORT, forks the processes, and runs
 * in each a libuv loop with its own pool (DATABASE_URL) and the HTTP server, as a web
 * worker does. bench/http/run.sh uses it when build/pgcorral does not serve HTTP.
 *
 *   serve --web N --io auto|uring|epoll --port P     (SIGTERM: drain and exit)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/rt_pool.h"
#include "workers/web.h"

#define MAX_WEB 16

/* One web process's state. */
struct serve_proc {
    uv_loop_t loop;
    uv_signal_t term;
    struct web_server *srv;
    struct rt_pool *pool;
};

/* This process's state (each forked web process has its own copy). */
static struct serve_proc proc;

static void on_pool_closed(void *arg)
{
    uv_close((uv_handle_t *)&proc.term, NULL);
}

static void on_drained(struct web_server *s, void *arg)
{
    web_server_destroy(s);
    if (proc.pool)
        rt_pool_close(proc.pool, on_pool_closed, NULL);
    else
        on_pool_closed(NULL);
}

static void on_term(uv_signal_t *sig, int signum)
{
    uv_signal_stop(sig);
    web_server_drain(proc.srv, on_drained, NULL);
}

/* Body of one web process. */
__attribute__((noreturn)) static void web_proc(int index, int fd, enum web_io_mode io)
{
    struct web_server_config cfg = {0};
    const char *url = getenv("DATABASE_URL");
    struct rt_dburl *db = NULL;
    char err[256];

    rt_log_set_identity("web", index);
    uv_loop_init(&proc.loop);
    if (url && *url) {
        struct rt_pool_opts po;
        if (rt_dburl_parse(url, &db, err, sizeof err) < 0) {
            fprintf(stderr, "serve: DATABASE_URL: %s\n", err);
            _exit(2);
        }
        rt_pool_opts_init(&po);
        po.loop = &proc.loop;
        po.url = db;
        if (rt_pool_create(&proc.pool, &po) < 0)
            _exit(2);
    }
    cfg.listen_fd = fd;
    cfg.io = io;
    web_limits_default(&cfg.limits);
    cfg.pool = proc.pool;
    if (web_server_create(&proc.srv, &proc.loop, &cfg) < 0)
        _exit(2);
    uv_signal_init(&proc.loop, &proc.term);
    uv_signal_start(&proc.term, on_term, SIGTERM);
    uv_run(&proc.loop, UV_RUN_DEFAULT);
    _exit(0);
}

/* The parent's signal flag. */
static volatile sig_atomic_t stop;

static void on_parent_signal(int sig)
{
    stop = 1;
}

int main(int argc, char **argv)
{
    int nweb = 2, port = 0, one = 1, fds[MAX_WEB];
    enum web_io_mode io = WEB_IO_AUTO;
    pid_t pids[MAX_WEB];
    struct sigaction sa;
    sigset_t mask, old;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--web") == 0)
            nweb = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--io") == 0 && web_io_mode_parse(argv[i + 1], &io) == 0)
            continue;
        else {
            fprintf(stderr, "usage: serve --web N --io auto|uring|epoll --port P\n");
            return 2;
        }
    }
    if (nweb < 1 || nweb > MAX_WEB)
        return 2;
    rt_log_set_level(RT_LOG_WARN);
    for (int i = 0; i < nweb; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || setsockopt(fds[i], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            setsockopt(fds[i], SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
            bind(fds[i], (struct sockaddr *)&a, sizeof a) < 0 || listen(fds[i], 1024) < 0) {
            fprintf(stderr, "serve: listen on port %d: %s\n", port, strerror(errno));
            return 1;
        }
    }
    /* Block SIGTERM/SIGINT until the children exist, so none is lost. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, &old);
    for (int i = 0; i < nweb; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            web_proc(i, fds[i], io);
        }
    }
    printf("serve: %d web processes on 127.0.0.1:%d:", nweb, port);
    for (int i = 0; i < nweb; i++)
        printf(" %d", (int)pids[i]);
    printf("\n");
    fflush(stdout);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_parent_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    while (!stop)
        pause();
    for (int i = 0; i < nweb; i++)
        kill(pids[i], SIGTERM);
    for (int i = 0; i < nweb; i++)
        waitpid(pids[i], NULL, 0);
    return 0;
}
