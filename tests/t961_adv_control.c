/*
 * The control socket under attack (issue 12, items 2 and 3): a client that never reads its
 * answers leaves the supervisor's RSS flat and is dropped, the 65th client is refused, an
 * idle client is dropped; the default path lives in a private runtime directory, `ctl`
 * refuses a socket served by another user, `run` refuses a socket file another user owns.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define MAX_CLIENTS 64
#define IDLE_TIMEOUT_S 4 /* PGCORRAL_CONTROL_IDLE_TIMEOUT of the first supervisor */
/* The RSS bounds: all of the growth, which also holds what an ASan build keeps in its
 * quarantine while the first answers are made (35 MB measured), and the growth in the last
 * 4 s of 6, once the client is over its cap and nothing is made for it any more (without the
 * cap the supervisor grew steadily, 14 to 34 MB/s). */
#define RSS_GROWTH_MAX_KB (64 * 1024)
#define RSS_LATE_GROWTH_MAX_KB (8 * 1024)
#define FAKE_ANSWER                                                                                \
    "{\"workers\":[{\"role\":\"web\",\"index\":0,\"pid\":4242,\"state\":\"FAKE-READY\"}]}\n"

static char env_url[1024];
static struct passwd nobody;

static int connect_to(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads one line from fd into buf (newline removed); false on EOF or after timeout_ms. */
static bool read_line(int fd, char *buf, size_t size, int timeout_ms)
{
    size_t len = 0;
    long long end = pgt_now_ms() + timeout_ms;
    while (len < size - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = end - pgt_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return false;
        ssize_t n = read(fd, buf + len, 1);
        if (n <= 0)
            return false;
        if (buf[len] == '\n') {
            buf[len] = '\0';
            return true;
        }
        len++;
    }
    return false;
}

/* Waits until the peer of fd has closed (EOF or reset). Returns ms waited, or -1. */
static long long wait_closed(int fd, int timeout_ms)
{
    long long t0 = pgt_now_ms(), end = t0 + timeout_ms;
    char buf[4096];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = end - pgt_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return pgt_now_ms() - t0;
    }
}

/* Waits until the peer of fd has hung up, without reading anything (a client that never
 * reads must stay one). Returns ms waited, or -1. */
static long long wait_hangup(int fd, int timeout_ms)
{
    long long t0 = pgt_now_ms(), end = t0 + timeout_ms;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLRDHUP};
        long long left = end - pgt_now_ms();
        if (left <= 0)
            return -1;
        if (poll(&p, 1, (int)left) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR)))
            return pgt_now_ms() - t0;
    }
}

/* VmRSS of pid in kB, or -1. */
static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static bool answers(void *arg)
{
    json_t *doc = pgt_ctl(arg, "workers");
    bool ok_ = doc && json_object_get(doc, "workers");
    json_decref(doc);
    return ok_;
}

static bool ready(void *arg)
{
    return ot_all_ready(arg, 1, 0);
}

/* Starts `pgcorral run --web 1 --jobs 0 --listen 127.0.0.1:0` plus args with env. */
static void start(struct pgt_proc *p, char *const args[], char *const env[])
{
    char *argv[24] = {(char *)pgt_binary(), "run",        "--web", "1", "--jobs", "0",
                      "--listen",           "127.0.0.1:0"};
    int n = 8;
    for (int i = 0; args && args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pgt_spawn(p, argv, env);
}

static void stop(struct pgt_proc *p)
{
    kill(p->pid, SIGTERM);
    if (!pgt_proc_wait_exit(p, 20000))
        diag("supervisor %d did not exit on SIGTERM", (int)p->pid);
    pgt_proc_cleanup(p);
}

/* A new folder /tmp/pgct-PID-name-XXXXXX (mode 0700, root's); returns it (static per call). */
static const char *make_dir(const char *name)
{
    static char dirs[8][128];
    static int next;
    char *d = dirs[next++ % 8];
    snprintf(d, sizeof dirs[0], "/tmp/pgct-%d-%s-XXXXXX", (int)getpid(), name);
    if (!mkdtemp(d))
        bail("mkdtemp: %s", strerror(errno));
    return d;
}

/* In a child that becomes user nobody: a unix socket at path, bound and listening.
 * serve: answer FAKE_ANSWER to every connection until killed; else exit at once, leaving
 * the socket file behind (a stale socket of another user). Returns the child's pid once
 * the socket exists. */
static pid_t nobody_socket(const char *path, bool serve)
{
    int p[2];
    char c;
    if (pipe(p) < 0)
        bail("pipe");
    pid_t pid = fork();
    if (pid < 0)
        bail("fork");
    if (pid == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        close(p[0]);
        if (setgid(nobody.pw_gid) < 0 || setuid(nobody.pw_uid) < 0)
            _exit(1);
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 8) < 0)
            _exit(1);
        (void)!write(p[1], "r", 1);
        if (!serve)
            _exit(0); /* no unlink: the file stays */
        for (;;) {
            int cfd = accept(fd, NULL, NULL);
            if (cfd < 0)
                continue;
            (void)!write(cfd, FAKE_ANSWER, sizeof FAKE_ANSWER - 1);
            char buf[256];
            (void)!read(cfd, buf, sizeof buf);
            close(cfd);
        }
    }
    close(p[1]);
    if (read(p[0], &c, 1) != 1)
        bail("the child (user nobody) could not create %s", path);
    close(p[0]);
    if (!serve)
        waitpid(pid, NULL, 0);
    return pid;
}

/* ---- item 2: bounded clients --------------------------------------------------------- */

/* A client that writes `stats` lines and never reads: the supervisor's RSS stays flat and
 * the client is dropped once it has stayed over its output cap. */
static void test_never_reading(struct pgt_proc *sup, const char *control)
{
    static char lines[65536];
    for (size_t i = 0; i + 6 <= sizeof lines; i += 6)
        memcpy(lines + i, "stats\n", 6);
    long base = rss_kb(sup->pid), peak = base, mid = -1;
    int fd = connect_to(control);
    long long t0 = pgt_now_ms(), sent = 0, last_sample = 0;
    bool broken = false;

    if (fd < 0 || base < 0)
        bail("cannot connect to %s or read the supervisor's RSS", control);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (pgt_now_ms() - t0 < 6000) {
        ssize_t n = send(fd, lines, sizeof lines, MSG_NOSIGNAL);
        if (n > 0) {
            sent += n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 50);
        } else {
            broken = true;
            break;
        }
        if (pgt_now_ms() - last_sample >= 100) {
            long r = rss_kb(sup->pid);
            if (r > peak)
                peak = r;
            if (mid < 0 && pgt_now_ms() - t0 >= 2000)
                mid = r;
            last_sample = pgt_now_ms();
        }
    }
    diag("never-reading client: %lld stats lines sent in %lld ms; supervisor VmRSS %ld kB, "
         "%ld kB after 2 s, peak %ld kB (+%ld kB)",
         sent / 6, pgt_now_ms() - t0, base, mid, peak, peak - base);
    ok(!broken && mid > 0 && peak - base < RSS_GROWTH_MAX_KB && peak - mid < RSS_LATE_GROWTH_MAX_KB,
       "a client writing stats lines for 6 s without reading: the supervisor's RSS grows by "
       "%ld kB in all (< %d MB), %ld kB after the first 2 s (< %d MB), and the client is not "
       "cut off early",
       peak - base, RSS_GROWTH_MAX_KB / 1024, peak - mid, RSS_LATE_GROWTH_MAX_KB / 1024);

    /* Over its 1 MiB output cap for 10 s: dropped. */
    long long waited = wait_hangup(fd, 15000);
    close(fd);
    bool logged = pgt_proc_wait_log(sup, "\"reason\":\"not reading\"", 2000);
    bool serving = pgt_wait_until(answers, (void *)control, 5000);
    if (!logged || !serving)
        diag("logged %d, serving %d; log:\n%s", logged, serving, sup->log);
    ok(waited >= 0 && logged && serving,
       "... it is dropped for not reading (after %lld ms more; logged), and the supervisor "
       "keeps serving others",
       waited);
}

/* 64 clients are served; the 65th gets one JSON error line and is closed; once they hang
 * up, new clients are served again. */
static void test_client_cap(const char *control)
{
    int fds[MAX_CLIENTS];
    char line[65536] = "";
    int served = 0;

    for (int i = 0; i < MAX_CLIENTS; i++) {
        fds[i] = connect_to(control);
        if (fds[i] >= 0 && write(fds[i], "budget\n", 7) == 7 &&
            read_line(fds[i], line, sizeof line, 5000) && strstr(line, "\"budget\""))
            served++;
    }
    line[0] = '\0';
    int extra = connect_to(control);
    bool told = extra >= 0 && read_line(extra, line, sizeof line, 5000) &&
                strstr(line, "{\"error\":\"too many control connections (limit 64)");
    bool closed = told && wait_closed(extra, 5000) >= 0;
    if (!told)
        diag("client 65 read '%s'", line);
    if (extra >= 0)
        close(extra);
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    bool again = pgt_wait_until(answers, (void *)control, 5000);
    ok(served == MAX_CLIENTS && told && closed && again,
       "%d control clients at once are served (%d); client 65 gets {\"error\":\"too many "
       "control connections (limit 64)...\"} and is closed; once they hang up, a new one is "
       "served",
       MAX_CLIENTS, served);
}

/* An idle client is dropped after PGCORRAL_CONTROL_IDLE_TIMEOUT; a busy one is not. */
static void test_idle(struct pgt_proc *sup, const char *control)
{
    char line[65536];
    int idle = connect_to(control), busy = connect_to(control);
    long long t0 = pgt_now_ms();
    bool busy_ok = busy >= 0;

    /* The busy client asks something every 500 ms for longer than the timeout. */
    while (busy_ok && pgt_now_ms() - t0 < (IDLE_TIMEOUT_S + 2) * 1000) {
        busy_ok = write(busy, "budget\n", 7) == 7 && read_line(busy, line, sizeof line, 5000);
        struct pollfd p = {.fd = -1};
        poll(&p, 0, 500);
    }
    line[0] = '\0';
    bool told = idle >= 0 && read_line(idle, line, sizeof line, 1000) &&
                strstr(line, "{\"error\":\"idle for 4 s");
    long long waited = idle >= 0 ? wait_closed(idle, 1000) : -1;
    if (!told)
        diag("the idle client read '%s'", line);
    ok(told && waited >= 0 && busy_ok,
       "a client that sends nothing for %d s is told so and closed "
       "(PGCORRAL_CONTROL_IDLE_TIMEOUT=%d); one that asks every 500 ms is still served",
       IDLE_TIMEOUT_S, IDLE_TIMEOUT_S);
    ok(pgt_proc_wait_log(sup, "\"reason\":\"idle\"", 2000), "the supervisor logs the idle drop");
    if (idle >= 0)
        close(idle);
    if (busy >= 0)
        close(busy);
}

/* ---- item 3: the right socket -------------------------------------------------------- */

/* Runs `pgcorral ctl [--control path] cmd` with env; output in o. */
static int ctl(const char *path, const char *cmd, char *const env[], struct ot_output *o)
{
    char *argv[8] = {(char *)pgt_binary(), "ctl"};
    int n = 2;
    if (path) {
        argv[n++] = "--control";
        argv[n++] = (char *)path;
    }
    argv[n++] = (char *)cmd;
    argv[n] = NULL;
    return ot_run(argv, env, 10000, o);
}

/* The default path: $RUNTIME_DIRECTORY/control.sock, else
 * $XDG_RUNTIME_DIR/pgcorral/control.sock, and `ctl` finds it without --control. */
static void test_default_path(void)
{
    char env_rd[256], env_xdg[256], sock[256], want[300];
    struct pgt_proc sup;
    struct ot_output o;
    struct stat st;
    const char *rd = make_dir("rd");

    snprintf(env_rd, sizeof env_rd, "RUNTIME_DIRECTORY=%s", rd);
    snprintf(sock, sizeof sock, "%s/control.sock", rd);
    char *env1[] = {env_url, env_rd, NULL};
    start(&sup, NULL, env1);
    bool up = pgt_wait_until(answers, sock, 20000);
    ok(up, "RUNTIME_DIRECTORY=%s: the supervisor listens on %s", rd, sock);
    if (!up) {
        pgt_proc_drain(&sup);
        diag("%s", sup.log);
    }
    int code = ctl(NULL, "config", (char *[]){env_rd, NULL}, &o);
    snprintf(want, sizeof want, "\"%s\"", sock);
    ok(code == 0 && strstr(o.out, "control") && strstr(o.out, want),
       "... and `pgcorral ctl config` without --control finds it (control %s)", want);
    if (code != 0)
        diag("ctl: exit %d, stderr %s", code, o.err);
    ot_output_free(&o);
    stop(&sup);

    const char *xdg = make_dir("xdg");
    snprintf(env_xdg, sizeof env_xdg, "XDG_RUNTIME_DIR=%s", xdg);
    snprintf(sock, sizeof sock, "%s/pgcorral/control.sock", xdg);
    char *env2[] = {env_url, env_xdg, NULL};
    start(&sup, NULL, env2);
    up = pgt_wait_until(answers, sock, 20000);
    snprintf(want, sizeof want, "%s/pgcorral", xdg);
    ok(up && stat(want, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700 &&
           st.st_uid == geteuid(),
       "XDG_RUNTIME_DIR=%s: the supervisor creates %s (mode 0700, ours) and listens on %s", xdg,
       want, sock);
    if (!up) {
        pgt_proc_drain(&sup);
        diag("%s", sup.log);
    }
    code = ctl(NULL, "workers", (char *[]){env_xdg, NULL}, &o);
    ok(up && code == 0 && strstr(o.out, "ROLE") && strstr(o.out, "web"),
       "... and `pgcorral ctl workers` without --control finds it");
    ot_output_free(&o);
    stop(&sup);
    snprintf(want, sizeof want, "rm -rf '%s' '%s'", rd, xdg);
    (void)!system(want);
}

/* A runtime folder others could write to, or that belongs to someone else, is refused. */
static void test_unsafe_dir(void)
{
    char env_xdg[256], sub[256], want[512];
    struct pgt_proc sup;
    const char *xdg = make_dir("loose");

    snprintf(env_xdg, sizeof env_xdg, "XDG_RUNTIME_DIR=%s", xdg);
    snprintf(sub, sizeof sub, "%s/pgcorral", xdg);
    if (mkdir(sub, 0700) < 0 || chmod(sub, 0777) < 0)
        bail("mkdir %s", sub);
    char *env[] = {env_url, env_xdg, NULL};
    start(&sup, NULL, env);
    snprintf(want, sizeof want, "%s is writable by group or others", sub);
    bool exited = pgt_proc_wait_exit(&sup, 20000);
    ok(exited && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) != 0 && strstr(sup.log, want),
       "a runtime folder with mode 0777 is refused: '%s'", want);
    if (!exited || !strstr(sup.log, want))
        diag("%s", sup.log);
    pgt_proc_cleanup(&sup);

    if (chmod(sub, 0700) < 0 || chown(sub, nobody.pw_uid, nobody.pw_gid) < 0)
        bail("chown %s", sub);
    start(&sup, NULL, env);
    snprintf(want, sizeof want, "%s belongs to uid %d (%s)", sub, (int)nobody.pw_uid,
             nobody.pw_name);
    exited = pgt_proc_wait_exit(&sup, 20000);
    ok(exited && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) != 0 && strstr(sup.log, want),
       "a runtime folder of user nobody is refused: '%s'", want);
    if (!exited || !strstr(sup.log, want))
        diag("%s", sup.log);
    pgt_proc_cleanup(&sup);
    snprintf(want, sizeof want, "rm -rf '%s'", xdg);
    (void)!system(want);
}

/* `ctl` talks only to a server of its own user or root; `run` leaves another user's socket
 * file alone. */
static void test_other_users_socket(void)
{
    char fake[256], stale[256], want[512];
    struct ot_output o;
    struct pgt_proc sup;
    struct stat st;
    const char *dir = make_dir("nobody");

    if (chown(dir, nobody.pw_uid, nobody.pw_gid) < 0)
        bail("chown %s: %s", dir, strerror(errno));
    snprintf(fake, sizeof fake, "%s/fake.sock", dir);
    snprintf(stale, sizeof stale, "%s/stale.sock", dir);
    pid_t server = nobody_socket(fake, true);

    int code = ctl(fake, "workers", NULL, &o);
    snprintf(want, sizeof want, "uid %d (%s)", (int)nobody.pw_uid, nobody.pw_name);
    bool refused = code != 0 && strstr(o.err, want) && strstr(o.err, fake) && o.out[0] == '\0' &&
                   !strstr(o.err, "FAKE") && !strstr(o.out, "FAKE");
    ok(refused,
       "ctl refuses a socket served by user nobody: exit %d, stderr names '%s', nothing the "
       "peer sent is printed",
       code, want);
    if (!refused)
        diag("stdout '%s', stderr '%s'", o.out, o.err);
    ot_output_free(&o);

    /* `run` on that live socket of another user, and on a stale one. */
    nobody_socket(stale, false);
    char *env[] = {env_url, NULL};
    const char *paths[2] = {fake, stale};
    for (int i = 0; i < 2; i++) {
        start(&sup, (char *[]){"--control", (char *)paths[i], NULL}, env);
        snprintf(want, sizeof want, "control socket %s belongs to uid %d (%s)", paths[i],
                 (int)nobody.pw_uid, nobody.pw_name);
        bool exited = pgt_proc_wait_exit(&sup, 20000);
        ok(exited && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) != 0 &&
               strstr(sup.log, want) && lstat(paths[i], &st) == 0 && S_ISSOCK(st.st_mode),
           "run --control on %s socket of user nobody refuses with '%s' and leaves it there",
           i == 0 ? "a live" : "a stale", want);
        if (!exited || !strstr(sup.log, want))
            diag("%s", sup.log);
        pgt_proc_cleanup(&sup);
    }
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    snprintf(want, sizeof want, "rm -rf '%s'", dir);
    (void)!system(want);
}

int main(void)
{
    const char *control = pgt_tmp_path("ctl961.sock");
    char env_idle[64];
    struct pgt_proc sup;
    struct passwd *pw;

    tap_timeout(180);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    pw = getpwnam("nobody");
    if (!pw)
        bail("no user nobody");
    nobody = *pw;
    /* The default path depends on these; each case sets its own. */
    unsetenv("RUNTIME_DIRECTORY");
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("PGCORRAL_CONTROL");
    plan(14);

    snprintf(env_idle, sizeof env_idle, "PGCORRAL_CONTROL_IDLE_TIMEOUT=%d", IDLE_TIMEOUT_S);
    start(&sup, (char *[]){"--control", (char *)control, NULL},
          (char *[]){env_url, env_idle, NULL});
    if (!pgt_wait_until(ready, (void *)control, 20000)) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }
    test_client_cap(control);
    test_idle(&sup, control);
    test_never_reading(&sup, control);
    stop(&sup);

    test_default_path();
    test_unsafe_dir();
    test_other_users_socket();
    return done_testing();
}
