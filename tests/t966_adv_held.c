/*
 * What held under attack, kept as regression cases (adversarial suite): 800 connections
 * that connect and never send are all closed by the server's timeout while pings are
 * still answered; after them, and after 20,000 keep-alive requests from wrk, every web
 * worker is back to the descriptors it had at start (nothing leaks) and its RSS stays
 * small.
 */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

enum { NIDLE = 800, NWEB = 2, WRK_REQUESTS = 20000 };

/* ASan's and TSan's shadow memory (and ASan's quarantine) add tens of MB to every process. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_LIMIT_MB 96
#else
#define RSS_LIMIT_MB 16
#endif

static const char *control;
static int idle[NIDLE];

/* Descriptors a process holds now, or -1. */
static int fd_count(pid_t pid)
{
    char path[64];
    struct dirent *e;
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* VmRSS of a process in kB, or -1. */
static long rss_kb(pid_t pid)
{
    char path[64], *text;
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    text = ot_read_file(path);
    const char *p = text ? strstr(text, "VmRSS:") : NULL;
    if (p)
        kb = atol(p + 6);
    free(text);
    return kb;
}

static bool web_ready(void *arg)
{
    return ot_all_ready(control, NWEB, 0);
}

/* Whether the server has closed every idle connection (EOF); reads nothing else. */
static bool idle_all_closed(void *arg)
{
    int open = 0;
    char b[256];
    for (int i = 0; i < NIDLE; i++) {
        if (idle[i] < 0)
            continue;
        ssize_t n = recv(idle[i], b, sizeof b, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            close(idle[i]);
            idle[i] = -1;
        } else {
            open++;
        }
    }
    return open == 0;
}

static long long http_requests(void)
{
    json_t *doc = pgt_ctl(control, "stats");
    long long n = json_integer_value(
        json_object_get(json_object_get(json_object_get(doc, "stats"), "totals"), "http_requests"));
    json_decref(doc);
    return n;
}

/* A worker and the descriptor count it should be back to. */
struct fd_want {
    pid_t pid;
    int want;
};

static bool fds_back(void *arg)
{
    struct fd_want *fw = arg;
    return fd_count(fw->pid) <= fw->want;
}

static long long wrk_target;

static bool wrk_done(void *arg)
{
    return http_requests() >= wrk_target;
}

int main(void)
{
    struct pgt_proc sup;
    struct ot_worker ws[8];
    pid_t web[NWEB];
    int fds0[NWEB], nweb = 0, port, opened = 0, pinged = 0;
    char env_url[1024], *resp = NULL;
    struct rlimit rl;

    tap_timeout(120);
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    control = pgt_tmp_path("held.sock");
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    char *argv[] = {(char *)pgt_binary(), "run",           "--web",    "2",           "--jobs", "0",
                    "--control",          (char *)control, "--listen", "127.0.0.1:0", NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(web_ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        bail("the supervisor did not come up:\n%s", sup.log);
    }
    port = (int)ot_config_int(control, "listen_port");
    int n = ot_workers(control, ws, 8);
    for (int i = 0; i < n && nweb < NWEB; i++)
        if (strcmp(ws[i].role, "web") == 0)
            web[nweb++] = ws[i].pid;
    if (nweb != NWEB)
        bail("expected %d web workers, found %d", NWEB, nweb);
    for (int i = 0; i < NWEB; i++)
        fds0[i] = fd_count(web[i]);

    /* Idle connections: connect, never send. */
    for (int i = 0; i < NIDLE; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        idle[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (idle[i] >= 0 && connect(idle[i], (struct sockaddr *)&a, sizeof a) == 0)
            opened++;
    }
    is_int(opened, NIDLE, "%d idle connections are open", NIDLE);
    for (int i = 0; i < 5; i++) {
        pinged += ot_http_get(port, "/api/v1/ping", &resp) == 200;
        free(resp);
    }
    is_int(pinged, 5, "pings are answered while they sit idle");
    ok(pgt_wait_until(idle_all_closed, NULL, 20000),
       "the server closes every connection that never sent a byte");

    /* Keep-alive load. */
    struct ot_wrk w;
    struct ot_wrk_result r;
    wrk_target = http_requests() + WRK_REQUESTS;
    ot_wrk_start(&w, port, "/api/v1/ping", 32, 30);
    ok(pgt_wait_until(wrk_done, NULL, 30000), "wrk: %d more requests answered", WRK_REQUESTS);
    ot_wrk_stop(&w, &r);
    ok(r.ran && r.non2xx == 0 && r.err_connect + r.err_read + r.err_write + r.err_timeout == 0,
       "wrk: %ld requests, no error and no non-2xx", r.requests);

    for (int i = 0; i < NWEB; i++) {
        struct fd_want fw = {web[i], fds0[i]};
        pgt_wait_until(fds_back, &fw, 5000); /* the last closes may still be in flight */
        is_int(fd_count(web[i]), fds0[i], "web worker %d holds the descriptors it had at start", i);
        long kb = rss_kb(web[i]);
        ok(kb > 0 && kb < RSS_LIMIT_MB * 1024, "web worker %d RSS is %ld kB (< %d MB)", i, kb,
           RSS_LIMIT_MB);
    }

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 15000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "the supervisor drains and exits 0");
    pgt_proc_cleanup(&sup);
    done_testing();
}
