/*
 * The web worker's access log (--access-log): one JSON line per answered request, built on
 * the loop into a bounded buffer and written by a thread of its own in batches, so that a
 * slow disk or a full pipe never blocks the loop; lines that find the buffer full are
 * dropped and counted.
 *
 *   loop thread                         writer thread
 *   line -> buf (up to BUF_CAP)         waits for a batch
 *   64 KiB, or FLUSH_MS after the
 *   first line: buf <-> wbuf  ------->  write(2) wbuf, then idle again
 *   (only when the writer is idle;
 *   else buf keeps filling)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "workers/web.h"

#define AL_BUF_CAP (1024 * 1024)   /* lines waiting on the loop side; more are dropped */
#define AL_FLUSH_BYTES (64 * 1024) /* hand a batch to the writer at this size */
#define AL_FLUSH_MS 100            /* ... or this long after the first line of a batch */
#define AL_PATH_MAX 2048           /* longer paths are cut in the log */
/* Room one line may need: the path escaped (6 bytes a byte at worst), the id, the rest. */
#define AL_LINE_MAX (6 * AL_PATH_MAX + RT_REQUEST_ID_MAX + 512)
#define AL_DROP_LOG_MS 10000  /* at most one "lines dropped" warning this often */
#define AL_CLOSE_WAIT_MS 2000 /* close: how long to wait for a writer stuck in write(2) */

struct web_access_log {
    /* loop side */
    uv_loop_t *loop;
    uv_timer_t timer; /* FLUSH_MS after the first line of a batch */
    char *buf;        /* AL_BUF_CAP bytes */
    size_t len;
    int worker;
    struct shm_worker *stats; /* access_log_dropped counter; may be NULL */
    uint64_t dropped, dropped_logged;
    uint64_t last_drop_log_ms;
    char ts[24]; /* "2026-01-31T12:00:00." for ts_sec */
    time_t ts_sec;
    bool closing;

    /* shared with the writer, under mu */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *wbuf; /* the batch being written: AL_BUF_CAP bytes, owned by the writer while busy */
    size_t wlen;
    bool busy;   /* the writer has a batch */
    bool reopen; /* reopen path before the next write */
    bool stop;   /* write what is left, then end */

    /* writer thread only (and open/close) */
    int fd;
    char *path; /* NULL: stderr */
};

/* Opens the destination: path appended to (created 0640), or a copy of stderr. Returns the
 * fd or -errno. */
static int al_open_fd(const char *path)
{
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640)
                  : fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

/* Writes all of b (n bytes) to fd; gives up on an error other than EINTR. */
static void al_write_all(int fd, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* a full disk or a closed pipe: nowhere to report it but the log */
        b += w;
        n -= (size_t)w;
    }
}

/* The writer: waits for a batch, writes it, reopens when asked, ends when stopped. */
static void *al_writer(void *arg)
{
    struct web_access_log *al = arg;

    pthread_mutex_lock(&al->mu);
    for (;;) {
        while (!al->busy && !al->stop && !al->reopen)
            pthread_cond_wait(&al->cv, &al->mu);
        if (al->reopen) {
            al->reopen = false;
            pthread_mutex_unlock(&al->mu);
            int fd = al_open_fd(al->path);
            if (fd >= 0) {
                close(al->fd);
                al->fd = fd;
            } else {
                rt_log(RT_LOG_ERROR, "cannot reopen the access log; writing to the old file",
                       json_pack("{s:s,s:s}", "access_log", al->path ? al->path : "-", "error",
                                 strerror(-fd)));
            }
            pthread_mutex_lock(&al->mu);
            continue;
        }
        if (al->busy) {
            size_t n = al->wlen;
            pthread_mutex_unlock(&al->mu);
            al_write_all(al->fd, al->wbuf, n);
            pthread_mutex_lock(&al->mu);
            al->wlen = 0;
            al->busy = false;
            pthread_cond_broadcast(&al->cv); /* web_access_log_close may wait for this */
            continue;
        }
        if (al->stop)
            break;
    }
    pthread_mutex_unlock(&al->mu);
    return NULL;
}

/* Hands the loop's lines to the writer when it is idle. Returns whether it did (or there
 * was nothing to hand over). Loop thread. */
static bool al_handover(struct web_access_log *al)
{
    char *tmp;

    if (al->len == 0)
        return true;
    pthread_mutex_lock(&al->mu);
    if (al->busy) {
        pthread_mutex_unlock(&al->mu);
        return false;
    }
    tmp = al->wbuf;
    al->wbuf = al->buf;
    al->wlen = al->len;
    al->busy = true;
    pthread_cond_broadcast(&al->cv);
    pthread_mutex_unlock(&al->mu);
    al->buf = tmp;
    al->len = 0;
    return true;
}

static void al_on_timer(uv_timer_t *t)
{
    struct web_access_log *al = t->data;
    uint64_t now = uv_now(al->loop);

    /* The writer still busy with the last batch: try again a little later. */
    if (!al_handover(al))
        uv_timer_start(&al->timer, al_on_timer, AL_FLUSH_MS, 0);
    if (al->dropped > al->dropped_logged &&
        (al->last_drop_log_ms == 0 || now - al->last_drop_log_ms >= AL_DROP_LOG_MS)) {
        rt_log(RT_LOG_WARN, "access log: lines dropped (the file does not keep up)",
               json_pack("{s:I,s:I}", "dropped", (json_int_t)(al->dropped - al->dropped_logged),
                         "dropped_total", (json_int_t)al->dropped));
        al->dropped_logged = al->dropped;
        al->last_drop_log_ms = now;
    }
}

int web_access_log_open(struct web_access_log **out, uv_loop_t *loop, const char *path, int worker,
                        struct shm_worker *stats)
{
    struct web_access_log *al = calloc(1, sizeof *al);
    const char *errpos = NULL;
    int rc;

    if (!al)
        return -ENOMEM;
    al->loop = loop;
    al->worker = worker;
    al->stats = stats;
    al->fd = -1;
    al->buf = malloc(AL_BUF_CAP);
    al->wbuf = malloc(AL_BUF_CAP);
    if (!al->buf || !al->wbuf || (path && strcmp(path, "-") != 0 && !(al->path = strdup(path)))) {
        rc = -ENOMEM;
        errpos = "malloc";
        goto fail;
    }
    rc = al_open_fd(al->path);
    if (rc < 0) {
        errpos = "open";
        goto fail;
    }
    al->fd = rc;
    pthread_mutex_init(&al->mu, NULL);
    pthread_cond_init(&al->cv, NULL);
    rc = -pthread_create(&al->thread, NULL, al_writer, al);
    if (rc < 0) {
        errpos = "pthread_create";
        goto fail_sync;
    }
    uv_timer_init(loop, &al->timer);
    al->timer.data = al;
    /* The timer is no reason for the loop to go on: drain ends it with the log's close. */
    uv_unref((uv_handle_t *)&al->timer);
    *out = al;
    return 0;

fail_sync:
    pthread_cond_destroy(&al->cv);
    pthread_mutex_destroy(&al->mu);
    close(al->fd);
fail:
    rt_log(RT_LOG_ERROR, "cannot open the access log",
           json_pack("{s:s,s:s,s:s}", "access_log", path ? path : "-", "step", errpos, "error",
                     strerror(-rc)));
    free(al->path);
    free(al->buf);
    free(al->wbuf);
    free(al);
    return rc;
}

/* Appends the JSON-escaped s (n bytes) to p; bytes that are not UTF-8 become U+FFFD. */
static char *al_put_escaped(char *p, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xe0) == 0xc0 ? 2
                     : (c & 0xf0) == 0xe0 ? 3
                     : (c & 0xf8) == 0xf0 ? 4
                                          : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xc2) && !(c > 0xf4);
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (!ok) {
            memcpy(p, "\\ufffd", 6);
            p += 6;
            i++;
        } else if (len > 1) {
            memcpy(p, s + i, len);
            p += len;
            i += len;
        } else if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(p, "\\u00", 4);
            p[4] = hex[c >> 4];
            p[5] = hex[c & 15];
            p += 6;
            i++;
        } else {
            *p++ = (char)c;
            i++;
        }
    }
    return p;
}

/* Appends v in decimal to p. */
static char *al_put_u64(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *al_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define AL_PUT_LIT(p, lit) al_put(p, lit, sizeof lit - 1)

void web_access_log_line(struct web_access_log *al, const struct web_access_entry *e)
{
    struct timespec now;
    uint64_t dur_us = e->duration_us;
    size_t path_len = e->path_len > AL_PATH_MAX ? AL_PATH_MAX : e->path_len;
    char *p;

    if (al->closing)
        return;
    if (AL_BUF_CAP - al->len < AL_LINE_MAX && !al_handover(al)) {
        al->dropped++;
        if (al->stats)
            shm_count(&al->stats->counters.access_log_dropped, 1);
        if (!uv_is_active((uv_handle_t *)&al->timer))
            uv_timer_start(&al->timer, al_on_timer, AL_FLUSH_MS, 0);
        return;
    }
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != al->ts_sec) {
        struct tm tm;
        al->ts_sec = now.tv_sec;
        gmtime_r(&now.tv_sec, &tm);
        strftime(al->ts, sizeof al->ts, "%Y-%m-%dT%H:%M:%S.", &tm);
    }
    p = al->buf + al->len;
    p = AL_PUT_LIT(p, "{\"ts\":\"");
    p = al_put(p, al->ts, strlen(al->ts));
    {
        unsigned ms = (unsigned)(now.tv_nsec / 1000000);
        *p++ = (char)('0' + ms / 100);
        *p++ = (char)('0' + ms / 10 % 10);
        *p++ = (char)('0' + ms % 10);
    }
    p = AL_PUT_LIT(p, "Z\",\"method\":\"");
    p = al_put_escaped(p, e->method, strlen(e->method));
    p = AL_PUT_LIT(p, "\",\"path\":\"");
    p = al_put_escaped(p, e->path, path_len);
    p = AL_PUT_LIT(p, "\",\"status\":");
    p = al_put_u64(p, (uint64_t)e->status);
    p = AL_PUT_LIT(p, ",\"bytes\":");
    p = al_put_u64(p, (uint64_t)e->bytes);
    p = AL_PUT_LIT(p, ",\"duration_ms\":");
    p = al_put_u64(p, dur_us / 1000);
    *p++ = '.';
    *p++ = (char)('0' + dur_us / 100 % 10);
    *p++ = (char)('0' + dur_us / 10 % 10);
    *p++ = (char)('0' + dur_us % 10);
    p = AL_PUT_LIT(p, ",\"request_id\":\"");
    p = al_put(p, e->request_id, e->request_id_len); /* [A-Za-z0-9._-] only */
    p = AL_PUT_LIT(p, "\",\"worker\":");
    p = al_put_u64(p, (uint64_t)al->worker);
    p = AL_PUT_LIT(p, "}\n");
    al->len = (size_t)(p - al->buf);
    if (al->len >= AL_FLUSH_BYTES && al_handover(al)) {
        uv_timer_stop(&al->timer);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&al->timer))
        uv_timer_start(&al->timer, al_on_timer, AL_FLUSH_MS, 0);
}

void web_access_log_reopen(struct web_access_log *al)
{
    if (!al)
        return;
    pthread_mutex_lock(&al->mu);
    al->reopen = true;
    pthread_cond_broadcast(&al->cv);
    pthread_mutex_unlock(&al->mu);
}

uint64_t web_access_log_dropped(const struct web_access_log *al)
{
    return al ? al->dropped : 0;
}

static void al_on_closed(uv_handle_t *h)
{
    struct web_access_log *al = h->data;

    free(al->path);
    free(al->buf);
    free(al->wbuf);
    free(al);
}

/* Waits (mu held) until the writer is idle, at most until deadline. Returns whether it is. */
static bool al_wait_idle(struct web_access_log *al, const struct timespec *deadline)
{
    while (al->busy)
        if (pthread_cond_timedwait(&al->cv, &al->mu, deadline) == ETIMEDOUT)
            return !al->busy;
    return true;
}

void web_access_log_close(struct web_access_log *al)
{
    struct timespec deadline;
    bool idle;

    if (!al || al->closing)
        return;
    al->closing = true;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += AL_CLOSE_WAIT_MS / 1000;
    /* The last lines: wait for the writer's batch, hand over ours, stop it once written. */
    pthread_mutex_lock(&al->mu);
    idle = al_wait_idle(al, &deadline);
    pthread_mutex_unlock(&al->mu);
    if (idle)
        (void)al_handover(al); /* the writer is idle: always taken */
    pthread_mutex_lock(&al->mu);
    al->stop = true;
    pthread_cond_broadcast(&al->cv);
    idle = al_wait_idle(al, &deadline);
    pthread_mutex_unlock(&al->mu);
    if (al->dropped > al->dropped_logged)
        rt_log(RT_LOG_WARN, "access log: lines dropped (the file does not keep up)",
               json_pack("{s:I,s:I}", "dropped", (json_int_t)(al->dropped - al->dropped_logged),
                         "dropped_total", (json_int_t)al->dropped));
    if (!idle) {
        /* The writer is stuck in write(2) (a pipe nobody reads): it keeps al; the process
         * is about to exit, which ends it. */
        rt_log(RT_LOG_WARN, "access log: the writer is stuck; its last batch is lost",
               json_pack("{s:s}", "access_log", al->path ? al->path : "-"));
        uv_close((uv_handle_t *)&al->timer, NULL);
        return;
    }
    pthread_join(al->thread, NULL);
    close(al->fd);
    pthread_cond_destroy(&al->cv);
    pthread_mutex_destroy(&al->mu);
    uv_close((uv_handle_t *)&al->timer, al_on_closed);
}
