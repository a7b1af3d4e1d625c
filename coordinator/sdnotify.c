/*
 * Talking to systemd without libsystemd: the sd_notify datagram protocol (READY=1,
 * RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1 to $NOTIFY_SOCKET), sent by the supervisor
 * alone. Readiness is the supervisor's view of the worker table in shm, checked on a timer.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/sup_int.h"
#include "runtime/rt_util.h"

/* How often readiness and the STATUS= line are looked at: the supervisor learns that a
 * worker is ready from its state in shm, which no event announces. */
#define NOTIFY_CHECK_MS 200

/* Parses a decimal environment value into *out. Returns 0, or -EINVAL. */
static int env_u64(const char *name, unsigned long long *out)
{
    const char *v = getenv(name);
    long long n;

    if (!v || rt_parse_ll(v, 0, LLONG_MAX, &n) != 0)
        return -EINVAL;
    *out = (unsigned long long)n;
    return 0;
}

int sup_notify_init(struct sup_notify *n, char *err, size_t errlen)
{
    const char *path = getenv("NOTIFY_SOCKET");
    unsigned long long usec = 0, pid = 0;
    size_t len;
    int rc = 0;

    memset(n, 0, sizeof *n);
    n->fd = -1;
    if (path && *path) {
        len = strlen(path);
        if ((path[0] != '/' && path[0] != '@') || len >= sizeof n->addr.sun_path) {
            snprintf(err, errlen,
                     "NOTIFY_SOCKET '%.80s' is not a socket path or an abstract name (@...) of "
                     "at most %zu bytes",
                     path, sizeof n->addr.sun_path - 1);
            rc = -EINVAL;
            goto out;
        }
        n->addr.sun_family = AF_UNIX;
        memcpy(n->addr.sun_path, path, len);
        /* '@' stands for the leading NUL of an abstract address, which has no terminator. */
        if (path[0] == '@') {
            n->addr.sun_path[0] = '\0';
            n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
        } else {
            n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
        }
        /* Non-blocking: a service manager that stops reading must not stall the loop. */
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (n->fd < 0) {
            rc = -errno;
            snprintf(err, errlen, "NOTIFY_SOCKET: socket: %s", strerror(-rc));
            goto out;
        }
        /* The watchdog is ours when WATCHDOG_PID is unset or names us. */
        if (env_u64("WATCHDOG_USEC", &usec) == 0 && usec > 0 &&
            (!getenv("WATCHDOG_PID") ||
             (env_u64("WATCHDOG_PID", &pid) == 0 && pid == (unsigned long long)getpid())))
            n->watchdog_usec = usec;
    }
out:
    /* Workers are forked from us and plugins may exec: none of them may speak for the
     * service, so the variables go whether or not they were usable. */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return rc;
}

int sup_notify_send(struct sup_notify *n, const char *msg)
{
    int e;

    if (n->fd < 0)
        return 0;
    if (sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
               n->addrlen) >= 0) {
        n->last_errno = 0;
        return 0;
    }
    e = errno;
    /* Once per kind of failure: a watchdog ping every few seconds must not flood the log. */
    if (e != n->last_errno)
        rt_log(RT_LOG_WARN, "cannot notify the service manager",
               json_pack("{s:s,s:s%}", "error", strerror(e), "message", msg, strcspn(msg, "=\n")));
    n->last_errno = e;
    return -e;
}

void sup_notify_status(struct sup_notify *n, const char *fmt, ...)
{
    char msg[sizeof n->status + 8];
    va_list ap;

    if (n->fd < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(n->status, sizeof n->status, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "STATUS=%s", n->status);
    /* A newline would end the assignment (and could start another one). */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    sup_notify_send(n, msg);
}

/* READY=1 when every configured worker is ready and no reload or stop is under way;
 * STATUS= when the counts or the budget changed. */
static void notify_check(struct sup *s)
{
    struct sup_notify *n = &s->notify;
    int web = 0, web_ready = 0, jobs = 0, jobs_ready = 0;
    bool all = true;
    char status[sizeof n->status];

    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct sup_worker *w = &s->workers[i];
        bool ready;
        if (!w->used || w->retiring)
            continue;
        ready = w->pid > 0 && atomic_load_explicit(&s->seg->workers[i].state,
                                                   memory_order_relaxed) == SHM_STATE_READY;
        all = all && ready;
        if (w->role == SHM_ROLE_WEB) {
            web++;
            web_ready += ready;
        } else {
            jobs++;
            jobs_ready += ready;
        }
    }
    snprintf(status, sizeof status, "%sweb %d/%d ready, jobs %d/%d ready, budget %u/%d",
             s->phase != SUP_RUNNING ? "stopping: "
             : s->reloading          ? "reloading: "
                                     : "",
             web_ready, web, jobs_ready, jobs, (unsigned)shm_budget_in_use(s->seg), s->budget);
    if (strcmp(status, n->status) != 0)
        sup_notify_status(n, "%s", status);
    if (!n->ready && all && s->phase == SUP_RUNNING && !s->reloading) {
        n->ready = true;
        sup_notify_send(n, "READY=1");
    }
}

static void on_check(uv_timer_t *t)
{
    notify_check(t->data);
}

static void on_watchdog(uv_timer_t *t)
{
    struct sup *s = t->data;
    sup_notify_send(&s->notify, "WATCHDOG=1");
}

void sup_notify_start(struct sup *s)
{
    struct sup_notify *n = &s->notify;
    uint64_t every_ms;

    if (n->fd < 0)
        return;
    uv_timer_init(&s->loop, &n->check);
    n->check.data = s;
    uv_timer_start(&n->check, on_check, NOTIFY_CHECK_MS, NOTIFY_CHECK_MS);
    if (n->watchdog_usec > 0) {
        /* Twice per period, as systemd asks, so that one late tick is not a miss. */
        every_ms = n->watchdog_usec / 2000;
        if (every_ms == 0)
            every_ms = 1;
        uv_timer_init(&s->loop, &n->watchdog);
        n->watchdog.data = s;
        uv_timer_start(&n->watchdog, on_watchdog, every_ms, every_ms);
    }
    rt_log(RT_LOG_INFO, "notifying the service manager",
           json_pack("{s:b,s:f}", "abstract", n->addr.sun_path[0] == '\0', "watchdog_s",
                     (double)n->watchdog_usec / 1e6));
    /* The first STATUS= right away, while the workers just forked are still starting. */
    notify_check(s);
}

void sup_notify_reloading(struct sup *s)
{
    struct sup_notify *n = &s->notify;
    struct timespec ts;
    char msg[64];

    if (n->fd < 0)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    /* MONOTONIC_USEC tells systemd which reload this answers (Type=notify-reload needs it). */
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    n->ready = false;
    sup_notify_send(n, msg);
}

void sup_notify_stopping(struct sup *s)
{
    struct sup_notify *n = &s->notify;

    if (n->fd < 0 || n->stopping)
        return;
    n->stopping = true;
    sup_notify_send(n, "STOPPING=1");
    notify_check(s);
}

void sup_notify_close(struct sup_notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
