/*
 * Binary upgrade without dropping a connection (SIGUSR2, as with nginx or Unicorn): the
 * supervisor execs the binary on disk again. The new supervisor inherits the shared
 * segment (one budget B for both generations while they overlap), the listening sockets
 * and the control socket, starts its workers in worker-table entries the old one does not
 * use, and once all of them are ready the old one hands over and drains. A new binary that
 * fails (its preflight, its workers' readiness, or exec itself) leaves the old generation
 * serving, and the failure is logged.
 *
 *   old supervisor                         new supervisor (its child, exec'd)
 *   SIGUSR2: socketpair, fork, execve ---> adopt segment, sockets; preflight; fork workers
 *                                          ... every worker READY
 *            <------------------------ "ready\n"   (or "failed REASON\n", then exit)
 *   stop serving the control socket,
 *   MAINPID=new to systemd, "go\n" ------> serve the control socket, READY=1
 *   drain own workers, exit 0              (reparented; frees what the old one left)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "coordinator/sup_int.h"
#include "runtime/rt_util.h"

#define UPGRADE_ENV "PGCORRAL_UPGRADE"
#define UPGRADE_READY_TIMEOUT_S 60 /* the new generation must be ready within this */
#define UPGRADE_KILL_AFTER_S                                                                       \
    10                       /* then SIGTERM; SIGKILL if it has not exited this much               \
                                after its own shutdown timeout */
#define UPGRADE_CHECK_MS 100 /* the new side looks at its workers' readiness */
#define DELETED_SUFFIX " (deleted)"

extern char **environ;

/* Whether name=... is one of the variables the new supervisor gets from us, not from our
 * environment. */
static bool env_replaced(const char *entry)
{
    static const char *const names[] = {UPGRADE_ENV,     "NOTIFY_SOCKET", "WATCHDOG_USEC",
                                        "WATCHDOG_PID",  "LISTEN_PID",    "LISTEN_FDS",
                                        "LISTEN_FDNAMES"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i]);
        if (strncmp(entry, names[i], n) == 0 && entry[n] == '=')
            return true;
    }
    return false;
}

/* The path of the running binary. /proc/self/exe names the file we were started from,
 * with " (deleted)" appended once it was replaced; the path is what an upgrade execs. */
static void resolve_exe(struct sup_upgrade *u)
{
    size_t tail = strlen(DELETED_SUFFIX);
    ssize_t n = readlink("/proc/self/exe", u->exe, sizeof u->exe - 1);

    if (n <= 0) {
        u->exe[0] = '\0';
        return;
    }
    u->exe[n] = '\0';
    if ((size_t)n > tail && strcmp(u->exe + n - tail, DELETED_SUFFIX) == 0)
        u->exe[(size_t)n - tail] = '\0';
}

/* Parses "3,4,5" into fds[] (*n of them). Returns 0 or -EINVAL. */
static int parse_fd_list(char *list, int *fds, int *n)
{
    char *save = NULL;
    long long v;

    if (*list == '\0')
        return 0;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n >= SHM_MAX_WORKERS || rt_parse_ll(t, 0, 1 << 20, &v) < 0)
            return -EINVAL;
        fds[(*n)++] = (int)v;
    }
    return 0;
}

int sup_upgrade_init(struct sup *s, struct sup_upgrade_fds *fds, char *err, size_t errlen)
{
    struct sup_upgrade *u = &s->upgrade;
    const char *env = getenv(UPGRADE_ENV), *ns = getenv("NOTIFY_SOCKET");
    char buf[2048], *save = NULL;
    long long v;

    u->chan = -1;
    u->control_fd = -1;
    u->held_notify_fd = -1;
    u->sup_generation = 1;
    resolve_exe(u);
    if (ns && strlen(ns) < sizeof u->notify_socket)
        snprintf(u->notify_socket, sizeof u->notify_socket, "%s", ns);
    if (!env)
        return 0;
    snprintf(buf, sizeof buf, "%s", env);
    unsetenv(UPGRADE_ENV);
    memset(fds, 0, sizeof *fds);
    fds->seg = fds->control = fds->activated = fds->chan = -1;
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(t, '=');
        if (!eq)
            goto bad;
        *eq = '\0';
        if (strcmp(t, "listen") == 0 || strcmp(t, "admin") == 0) {
            bool admin = t[0] == 'a';
            if (parse_fd_list(eq + 1, admin ? fds->admin : fds->listen,
                              admin ? &fds->nadmin : &fds->nlisten) < 0)
                goto bad;
            continue;
        }
        if (rt_parse_ll(eq + 1, -1, 0xffffffffLL, &v) < 0)
            goto bad;
        if (strcmp(t, "seg") == 0)
            fds->seg = (int)v;
        else if (strcmp(t, "ctl") == 0)
            fds->control = (int)v;
        else if (strcmp(t, "act") == 0)
            fds->activated = (int)v;
        else if (strcmp(t, "chan") == 0)
            fds->chan = (int)v;
        else if (strcmp(t, "gen") == 0)
            fds->next_generation = (uint32_t)v;
        else if (strcmp(t, "sgen") == 0)
            fds->sup_generation = (uint32_t)v;
        else
            goto bad;
    }
    if (fds->seg < 0 || fds->chan < 0 || fds->control < 0 || fds->sup_generation < 2)
        goto bad;
    fds->parent = getppid();
    u->adopting = true;
    u->chan = fds->chan;
    u->control_fd = fds->control;
    u->parent = fds->parent;
    u->sup_generation = fds->sup_generation;
    /* Ours alone: a worker forked from us, or a plugin's exec, must not hold them. */
    fcntl(u->chan, F_SETFD, FD_CLOEXEC);
    fcntl(u->control_fd, F_SETFD, FD_CLOEXEC);
    return 1;

bad:
    snprintf(err, errlen,
             "%s is malformed (a supervisor sets it for the binary that replaces it; never set "
             "it by hand)",
             UPGRADE_ENV);
    return -EINVAL;
}

/* ---- shared by both sides ------------------------------------------------------------ */

bool sup_entry_free(const struct sup *s, int index)
{
    const struct sup_worker *w = &s->workers[index];
    /* Another supervisor's workers (the other side of an upgrade) are in entries that are
     * not EMPTY in the segment although we do not use them. */
    /* Acquire: pairs with the release of EMPTY by whichever supervisor freed the entry. */
    return !w->used && w->pid <= 0 &&
           atomic_load_explicit(&s->seg->workers[index].state, memory_order_acquire) ==
               SHM_STATE_EMPTY;
}

bool sup_upgrade_busy(const struct sup *s)
{
    const struct sup_upgrade *u = &s->upgrade;
    return (u->child > 0 && !u->handed_off) || (u->adopting && !u->serving);
}

void sup_upgrade_tick(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;
    bool left = false;

    if (!u->foreign_check)
        return;
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        struct shm_worker *sw = &s->seg->workers[i];
        /* Acquire: pairs with the other supervisor's release of the state it wrote last;
         * pid was written by it before (relaxed: it only names a process to look for). */
        unsigned state = atomic_load_explicit(&sw->state, memory_order_acquire);
        pid_t pid = atomic_load_explicit(&sw->pid, memory_order_relaxed);
        int freed;

        if (s->workers[i].used || s->workers[i].pid > 0 || state == SHM_STATE_EMPTY)
            continue;
        /* A worker of the other supervisor that still runs (it dies with its supervisor,
         * PR_SET_PDEATHSIG, but not at once): its slots are freed once it is gone. */
        if (state != SHM_STATE_DEAD && pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) {
            left = true;
            continue;
        }
        freed = shm_worker_retire(s->seg, i);
        atomic_store_explicit(&sw->state, SHM_STATE_EMPTY, memory_order_release);
        if (freed > 0)
            rt_log(RT_LOG_WARN, "freed the budget slots of a gone supervisor's worker",
                   json_pack("{s:i,s:i,s:i}", "entry", i, "worker_pid", (int)pid, "slots_reclaimed",
                             freed));
    }
    u->foreign_check = left;
}

/* Stops listening on the channel and closes it. */
static void chan_close(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;

    if (u->chan_polled) {
        uv_close((uv_handle_t *)&u->chan_poll, NULL);
        u->chan_polled = false;
    }
    if (u->chan >= 0)
        close(u->chan);
    u->chan = -1;
    u->len = 0;
}

/*
 * Reads what is there on the channel. Returns the next complete line (NUL-terminated, in
 * u->buf, consumed by the next call), NULL when none is complete yet, and sets *eof when the
 * other side closed it (or it failed).
 */
static char *chan_line(struct sup_upgrade *u, size_t *consumed, bool *eof)
{
    char *nl;
    ssize_t n;

    if (*consumed) {
        memmove(u->buf, u->buf + *consumed, u->len - *consumed);
        u->len -= *consumed;
        *consumed = 0;
    }
    while (!(nl = memchr(u->buf, '\n', u->len))) {
        if (u->len == sizeof u->buf - 1) {
            /* A line this long is not ours: take it as it is. */
            nl = u->buf + u->len;
            break;
        }
        n = read(u->chan, u->buf + u->len, sizeof u->buf - 1 - u->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return NULL;
        if (n <= 0) {
            *eof = true;
            return NULL;
        }
        u->len += (size_t)n;
    }
    *nl = '\0';
    *consumed = (size_t)(nl - u->buf) + (nl < u->buf + u->len ? 1 : 0);
    return u->buf;
}

/* ---- the old side -------------------------------------------------------------------- */

static void on_old_deadline(uv_timer_t *t);

/* The upgrade is over, one way or the other: forget the child's channel and deadline. */
static void old_end(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;

    chan_close(s);
    if (u->deadline_ready)
        uv_timer_stop(&u->deadline);
}

/* Logs the failure once; the old generation keeps serving. */
static void old_failed(struct sup *s, const char *reason)
{
    struct sup_upgrade *u = &s->upgrade;

    rt_log(RT_LOG_ERROR, "binary upgrade failed; the old generation keeps serving",
           json_pack("{s:s,s:i,s:s,s:f}", "reason", reason, "new_pid", (int)u->child, "binary",
                     u->exe, "after_s", (double)(shm_now_us() - u->started_us) / 1e6));
    sup_notify_status(&s->notify, "binary upgrade failed: %s", reason);
}

/* The new supervisor is ready: stop answering on the control socket, tell systemd who
 * the main process is now, let the new one serve, and drain. */
static void old_hand_off(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;
    char msg[64];

    sup_control_detach(s);
    snprintf(msg, sizeof msg, "MAINPID=%d", (int)u->child);
    sup_notify_send(&s->notify, msg);
    /* From here on the new supervisor speaks for the service; STOPPING=1 from us would be
     * taken as the service stopping. */
    sup_notify_close(&s->notify);
    if (write(u->chan, "go\n", 3) != 3)
        rt_log(RT_LOG_WARN, "binary upgrade: cannot tell the new supervisor to go on",
               json_pack("{s:s}", "error", strerror(errno)));
    u->handed_off = true;
    sup_jobq_hand_off(s->jobs);
    if (u->deadline_ready)
        uv_timer_stop(&u->deadline);
    rt_log(RT_LOG_INFO, "binary upgrade: the new supervisor serves; the old workers drain",
           json_pack("{s:i,s:f}", "new_pid", (int)u->child, "took_s",
                     (double)(shm_now_us() - u->started_us) / 1e6));
    sup_shutdown(s, false);
}

static void on_old_chan(uv_poll_t *p, int status, int events)
{
    struct sup *s = p->data;
    struct sup_upgrade *u = &s->upgrade;
    size_t consumed = 0;
    bool eof = false;
    char *line;

    while ((line = chan_line(u, &consumed, &eof))) {
        if (u->handed_off)
            continue;
        if (strcmp(line, "ready") == 0) {
            old_hand_off(s);
        } else if (strncmp(line, "failed ", 7) == 0) {
            old_failed(s, line + 7);
            u->child_failed_logged = true;
        }
    }
    if (eof) {
        /* The new one exited (reaped in sup_upgrade_reaped) or, after the hand-off, keeps
         * running without us listening. */
        if (u->chan_polled) {
            uv_close((uv_handle_t *)&u->chan_poll, NULL);
            u->chan_polled = false;
        }
        if (!u->handed_off) {
            close(u->chan);
            u->chan = -1;
        }
    }
}

/* The new generation is not ready in time: stop it (its workers drain; it exits). */
static void on_old_deadline(uv_timer_t *t)
{
    struct sup *s = t->data;
    struct sup_upgrade *u = &s->upgrade;
    char reason[160];

    if (u->child <= 0 || u->handed_off)
        return;
    if (!u->child_failed_logged) {
        snprintf(reason, sizeof reason,
                 "the new supervisor's workers were not all ready within %d s; stopping it",
                 UPGRADE_READY_TIMEOUT_S);
        old_failed(s, reason);
        u->child_failed_logged = true;
        kill(u->child, SIGTERM);
        uv_timer_start(&u->deadline, on_old_deadline,
                       ((uint64_t)s->cfg->shutdown_timeout_s + UPGRADE_KILL_AFTER_S) * 1000, 0);
        return;
    }
    rt_log(RT_LOG_WARN, "binary upgrade: the failed new supervisor did not stop; killing it",
           json_pack("{s:i}", "new_pid", (int)u->child));
    kill(u->child, SIGKILL);
}

bool sup_upgrade_reaped(struct sup *s, pid_t pid, int status)
{
    struct sup_upgrade *u = &s->upgrade;
    char reason[200];

    if (pid <= 0 || pid != u->child)
        return false;
    if (u->handed_off) {
        rt_log(RT_LOG_WARN,
               "binary upgrade: the new supervisor exited while the old workers "
               "drain",
               json_pack("{s:i,s:i}", "new_pid", (int)pid, "exit_code",
                         WIFEXITED(status) ? WEXITSTATUS(status) : -1));
    } else if (!u->child_failed_logged) {
        if (WIFEXITED(status))
            snprintf(reason, sizeof reason, "the new supervisor exited with status %d",
                     WEXITSTATUS(status));
        else
            snprintf(reason, sizeof reason, "the new supervisor was killed by %s",
                     WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "a signal");
        old_failed(s, reason);
    }
    old_end(s);
    u->child = 0;
    u->child_failed_logged = false;
    /* What its workers held (if it had any) is freed once they are gone too. */
    if (!u->handed_off)
        u->foreign_check = true;
    return true;
}

/* Clears close-on-exec on fd (in the forked child: only its descriptor table changes). */
static void keep_open(int fd)
{
    int flags;
    if (fd >= 0 && (flags = fcntl(fd, F_GETFD)) >= 0)
        fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}

/*
 * What the new supervisor gets in its environment: ours without the variables below,
 * plus PGCORRAL_UPGRADE=upgrade and NOTIFY_SOCKET / WATCHDOG_USEC as systemd gave them to
 * us. Built before fork: the child only calls async-signal-safe functions. Caller frees
 * the array and its three own strings (NULL on ENOMEM).
 */
static char **child_env(const struct sup *s, const char *upgrade, char *own[3])
{
    size_t n = 0, k = 0;
    char **env;

    for (char **e = environ; *e; e++)
        n++;
    env = calloc(n + 4, sizeof *env);
    own[0] = own[1] = own[2] = NULL;
    if (!env)
        return NULL;
    for (char **e = environ; *e; e++)
        if (!env_replaced(*e))
            env[k++] = *e;
    if (asprintf(&own[0], "%s=%s", UPGRADE_ENV, upgrade) < 0) {
        own[0] = NULL;
        free(env);
        return NULL;
    }
    env[k++] = own[0];
    if (s->upgrade.notify_socket[0] &&
        asprintf(&own[1], "NOTIFY_SOCKET=%s", s->upgrade.notify_socket) >= 0)
        env[k++] = own[1];
    else
        own[1] = NULL;
    /* No WATCHDOG_PID: unset means "the process that reads it", the new supervisor. */
    if (s->upgrade.notify_socket[0] && s->notify.watchdog_usec > 0 &&
        asprintf(&own[2], "WATCHDOG_USEC=%llu", (unsigned long long)s->notify.watchdog_usec) >= 0)
        env[k++] = own[2];
    else
        own[2] = NULL;
    env[k] = NULL;
    return env;
}

/* In the forked child: keep the descriptors the new supervisor adopts, unblock the
 * signals we take through the signalfd, exec. Async-signal-safe calls only. */
__attribute__((noreturn)) static void child_exec(struct sup *s, int chan, char **argv, char **env)
{
    static const char msg[] = "failed cannot exec the new binary\n";
    sigset_t none;

    keep_open(s->seg->fd);
    for (int i = 0; i < s->n_listen_fds; i++)
        keep_open(s->listen_fds[i]);
    for (int i = 0; i < s->n_admin_fds; i++)
        keep_open(s->admin_fds[i]);
    keep_open(s->inherited_listen_fd);
    keep_open(s->control_fd);
    keep_open(chan);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(s->upgrade.exe, argv, env);
    if (write(chan, msg, sizeof msg - 1) < 0) {
    }
    _exit(127);
}

int sup_upgrade_begin(struct sup *s, char *err, size_t errlen)
{
    struct sup_upgrade *u = &s->upgrade;
    char upgrade[1024], *own[3] = {NULL, NULL, NULL}, **env = NULL, **argv = NULL;
    int sv[2] = {-1, -1}, n, rc = -1;
    size_t len;
    pid_t pid;

    if (u->child > 0) {
        snprintf(err, errlen, "a binary upgrade is already under way (new supervisor pid %d)",
                 (int)u->child);
        return -1;
    }
    if (u->adopting && !u->serving) {
        snprintf(err, errlen, "this supervisor is still taking over from the previous one");
        return -1;
    }
    if (s->phase != SUP_RUNNING || u->handed_off) {
        snprintf(err, errlen, "the supervisor is stopping");
        return -1;
    }
    if (s->reloading) {
        snprintf(err, errlen, "a rolling restart is under way; send SIGUSR2 again after it");
        return -1;
    }
    if (u->exe[0] == '\0' || access(u->exe, X_OK) < 0) {
        snprintf(err, errlen, "cannot execute the binary %s: %s",
                 u->exe[0] ? u->exe : "(path unknown)", u->exe[0] ? strerror(errno) : "");
        return -1;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        return -1;
    }
    n = snprintf(upgrade, sizeof upgrade,
                 "seg=%d ctl=%d act=%d chan=%d gen=%u sgen=%u listen=", s->seg->fd, s->control_fd,
                 s->inherited_listen_fd, sv[1], s->next_generation + 1, u->sup_generation + 1);
    len = (size_t)n;
    for (int i = 0; i < s->n_listen_fds && len < sizeof upgrade; i++)
        len += (size_t)snprintf(upgrade + len, sizeof upgrade - len, "%s%d", i ? "," : "",
                                s->listen_fds[i]);
    /* The --admin-listen sockets too: without them the new generation would serve the
     * admin routes on the public listener. */
    if (len < sizeof upgrade)
        len += (size_t)snprintf(upgrade + len, sizeof upgrade - len, " admin=");
    for (int i = 0; i < s->n_admin_fds && len < sizeof upgrade; i++)
        len += (size_t)snprintf(upgrade + len, sizeof upgrade - len, "%s%d", i ? "," : "",
                                s->admin_fds[i]);
    if (len >= sizeof upgrade || s->control_fd < 0) {
        snprintf(err, errlen, "too many listening sockets to hand over");
        goto out;
    }
    /* The same command line: `BINARY run ARGS...` (argv of run is intact: only workers
     * rewrite their process title). */
    argv = calloc((size_t)s->argc + 3, sizeof *argv);
    env = child_env(s, upgrade, own);
    if (!argv || !env) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    argv[0] = u->exe;
    argv[1] = "run";
    for (int i = 0; i < s->argc; i++)
        argv[i + 2] = s->argv[i];
    fflush(NULL);
    pid = fork();
    if (pid == 0)
        child_exec(s, sv[1], argv, env);
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto out;
    }
    close(sv[1]);
    sv[1] = -1;
    u->child = pid;
    u->chan = sv[0];
    sv[0] = -1;
    u->len = 0;
    u->child_failed_logged = false;
    u->started_us = shm_now_us();
    fcntl(u->chan, F_SETFL, fcntl(u->chan, F_GETFL) | O_NONBLOCK);
    uv_poll_init(&s->loop, &u->chan_poll, u->chan);
    u->chan_poll.data = s;
    u->chan_polled = true;
    uv_poll_start(&u->chan_poll, UV_READABLE, on_old_chan);
    if (!u->deadline_ready) {
        uv_timer_init(&s->loop, &u->deadline);
        u->deadline.data = s;
        u->deadline_ready = true;
    }
    uv_timer_start(&u->deadline, on_old_deadline, (uint64_t)UPGRADE_READY_TIMEOUT_S * 1000, 0);
    rt_log(RT_LOG_INFO, "binary upgrade: new supervisor started",
           json_pack("{s:s,s:i,s:s,s:i}", "binary", u->exe, "new_pid", (int)pid, "old_version",
                     PGCORRAL_VERSION, "ready_timeout_s", UPGRADE_READY_TIMEOUT_S));
    rc = 0;
out:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    free(argv);
    free(env);
    for (int i = 0; i < 3; i++)
        free(own[i]);
    return rc;
}

/* ---- the new side -------------------------------------------------------------------- */

/* Whether every worker we configured is running and ready. */
static bool all_ready(const struct sup *s)
{
    int n = 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct sup_worker *w = &s->workers[i];
        if (!w->used || w->retiring)
            continue;
        /* Acquire: pairs with the worker's release of READY, after its start-up. */
        if (w->pid <= 0 || atomic_load_explicit(&s->seg->workers[i].state, memory_order_acquire) !=
                               SHM_STATE_READY)
            return false;
        n++;
    }
    return n > 0;
}

/* We serve: the control socket, the service manager, the log says so. */
static void new_take_over(struct sup *s, const char *how)
{
    struct sup_upgrade *u = &s->upgrade;
    int rc;

    if (u->serving)
        return;
    u->serving = true;
    uv_timer_stop(&u->check);
    rc = sup_control_adopt(s, u->control_fd);
    u->control_fd = -1;
    if (rc < 0)
        rt_log(RT_LOG_ERROR, "binary upgrade: cannot serve the inherited control socket",
               json_pack("{s:s,s:s}", "control", s->cfg->control_path, "error", uv_strerror(rc)));
    s->notify.fd = u->held_notify_fd;
    u->held_notify_fd = -1;
    sup_notify_start(s);
    rt_log(RT_LOG_INFO, "binary upgrade: the new supervisor serves",
           json_pack("{s:s,s:i,s:s}", "version", PGCORRAL_VERSION, "old_pid", (int)u->parent, "how",
                     how));
}

static void on_new_chan(uv_poll_t *p, int status, int events)
{
    struct sup *s = p->data;
    struct sup_upgrade *u = &s->upgrade;
    size_t consumed = 0;
    bool eof = false;
    char *line;

    while ((line = chan_line(u, &consumed, &eof)))
        if (strcmp(line, "go") == 0)
            new_take_over(s, "handed over");
    if (!eof)
        return;
    /* The old supervisor exited: its leftovers are freed once its workers are gone. */
    chan_close(s);
    u->foreign_check = true;
    if (u->reported)
        new_take_over(s, "the old supervisor is gone");
}

static void on_new_check(uv_timer_t *t)
{
    struct sup *s = t->data;
    struct sup_upgrade *u = &s->upgrade;

    if (u->reported || s->phase != SUP_RUNNING || !all_ready(s))
        return;
    u->reported = true;
    rt_log(RT_LOG_INFO, "binary upgrade: the new workers are ready",
           json_pack("{s:i}", "workers", sup_live_workers(s)));
    if (u->chan < 0 || write(u->chan, "ready\n", 6) != 6)
        new_take_over(s, "the old supervisor is gone");
}

void sup_upgrade_adopt_start(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;

    fcntl(u->chan, F_SETFL, fcntl(u->chan, F_GETFL) | O_NONBLOCK);
    uv_poll_init(&s->loop, &u->chan_poll, u->chan);
    u->chan_poll.data = s;
    u->chan_polled = true;
    uv_poll_start(&u->chan_poll, UV_READABLE, on_new_chan);
    uv_timer_init(&s->loop, &u->check);
    u->check.data = s;
    uv_timer_start(&u->check, on_new_check, UPGRADE_CHECK_MS, UPGRADE_CHECK_MS);
}

void sup_upgrade_fail(struct sup *s, const char *errpos, const char *err)
{
    struct sup_upgrade *u = &s->upgrade;
    char line[sizeof u->buf];
    int n;

    if (!u->adopting || u->serving || u->chan < 0)
        return;
    n = snprintf(line, sizeof line, "failed %s: %s", errpos, err);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    /* One line: the reason's own line breaks become spaces. */
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    if (write(u->chan, line, (size_t)n) < 0) {
    }
}

void sup_upgrade_close_in_child(struct sup *s)
{
    struct sup_upgrade *u = &s->upgrade;

    if (u->control_fd >= 0)
        close(u->control_fd);
    if (u->held_notify_fd >= 0)
        close(u->held_notify_fd);
}
