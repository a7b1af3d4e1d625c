/*
 * The control socket: a unix stream socket (mode 0600, peer uid checked) on which each
 * line is one command and each answer one JSON document on one line. Commands themselves
 * are in control_cmds.c; this file does the socket, its folder, the framing and the
 * limits that keep any client from costing the supervisor more than a bounded amount:
 * 64 clients, 1 MiB of unread answers each, dropped when idle or not reading.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "coordinator/sup_int.h"
#include "runtime/rt_util.h"

#define CONTROL_LINE_MAX 4096
/* Answer bytes a client may have queued and unread; beyond it its commands wait (reads
 * stop), so a client that asks without reading costs at most this much memory. */
#define CONTROL_OUT_MAX (1u << 20)
#define CONTROL_MAX_CLIENTS 64
#define CONTROL_STALL_TIMEOUT_MS 10000  /* over CONTROL_OUT_MAX this long: dropped */
#define CONTROL_IDLE_TIMEOUT_S 60       /* nothing sent or read this long: dropped */
#define CONTROL_REFUSED_LOG_US 10000000 /* at most one "too many clients" line per 10 s */

/*
 * One control connection. Its timer is the idle deadline while it is served, and the
 * stall deadline while its queued answers are over CONTROL_OUT_MAX (reads stopped then).
 * Freed when both handles are closed.
 */
struct control_client {
    uv_pipe_t pipe;
    uv_timer_t timer;
    struct sup *sup;
    struct control_client *prev, *next; /* sup->control_clients */
    size_t pending;                     /* answer bytes handed to uv_write, not yet written */
    size_t len;                         /* bytes in buf: the start of a line not yet complete */
    int open_handles;                   /* handles not yet closed: pipe, timer */
    bool stalled;                       /* over CONTROL_OUT_MAX: not reading */
    bool closing;
    char buf[CONTROL_LINE_MAX];
};

/* One answer being written; freed in the write callback. */
struct control_write {
    uv_write_t req;
    struct control_client *client;
    bool close_after;
    size_t len;
    char *text;
};

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_timer(uv_timer_t *t);

static void on_handle_closed(uv_handle_t *h)
{
    struct control_client *c = h->data;
    if (--c->open_handles == 0)
        free(c);
}

static void client_close(struct control_client *c)
{
    struct sup *s = c->sup;

    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->control_clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->control_nclients--;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
}

/* A client that is being served must say something within the idle timeout. */
static void idle_deadline(struct control_client *c)
{
    uv_timer_start(&c->timer, on_timer, c->sup->control_idle_ms, 0);
}

/* Writes a short line only if the socket takes it now, without queueing: for a client we
 * are about to close anyway. */
static void client_say_and_close(struct control_client *c, const char *line)
{
    uv_buf_t buf = uv_buf_init((char *)line, (unsigned)strlen(line));
    (void)uv_try_write((uv_stream_t *)&c->pipe, &buf, 1);
    client_close(c);
}

static void process_lines(struct control_client *c);

static void on_written(uv_write_t *req, int status)
{
    struct control_write *w = (struct control_write *)req;
    struct control_client *c = w->client;

    c->pending -= w->len;
    if (status < 0 || w->close_after) {
        client_close(c);
    } else if (!c->closing) {
        /* The client reads: that is not idleness. Resume once its backlog halved. */
        if (!c->stalled) {
            idle_deadline(c);
        } else if (c->pending <= CONTROL_OUT_MAX / 2) {
            c->stalled = false;
            idle_deadline(c);
            process_lines(c);
            if (!c->stalled && !c->closing)
                uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
        }
    }
    free(w->text);
    free(w);
}

/* Sends doc (consumed) as one line; closes the connection afterwards when asked. */
static void client_send(struct control_client *c, json_t *doc, bool close_after)
{
    struct control_write *w = calloc(1, sizeof *w);
    char *text = rt_json_dumps(doc, JSON_COMPACT);
    size_t n;

    json_decref(doc);
    if (!w || !text) {
        free(w);
        free(text);
        client_close(c);
        return;
    }
    n = strlen(text);
    /* rt_json_dumps leaves room for nothing more; make the line end ourselves. */
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        free(w);
        client_close(c);
        return;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    w->client = c;
    w->close_after = close_after;
    w->text = line;
    w->len = n + 1;
    uv_buf_t buf = uv_buf_init(line, (unsigned)(n + 1));
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written) < 0) {
        free(line);
        free(w);
        client_close(c);
        return;
    }
    c->pending += w->len;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct control_client *c = h->data;
    buf->base = c->buf + c->len;
    buf->len = sizeof c->buf - c->len;
}

/* Answers the complete lines in c->buf until its unread answers go over CONTROL_OUT_MAX:
 * then it stops reading, keeps the rest of its lines, and has CONTROL_STALL_TIMEOUT_MS to
 * catch up (on_written resumes it) before it is dropped. */
static void process_lines(struct control_client *c)
{
    char *start = c->buf, *nl;

    while (!c->closing && (nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
        if (c->pending >= CONTROL_OUT_MAX) {
            c->stalled = true;
            uv_read_stop((uv_stream_t *)&c->pipe);
            uv_timer_start(&c->timer, on_timer, CONTROL_STALL_TIMEOUT_MS, 0);
            break;
        }
        *nl = '\0';
        if (nl > start && nl[-1] == '\r')
            nl[-1] = '\0';
        client_send(c, sup_control_dispatch(c->sup, start), false);
        start = nl + 1;
    }
    if (c->closing)
        return;
    c->len -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->len);
    if (!c->stalled && c->len == sizeof c->buf) {
        /* A line this long is not a command; say so and hang up rather than buffer more. */
        uv_read_stop((uv_stream_t *)&c->pipe);
        client_send(c,
                    json_pack("{s:s}", "error",
                              "command too long (limit 4096 bytes including the newline)"),
                    true);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct control_client *c = stream->data;

    if (nread < 0) {
        client_close(c);
        return;
    }
    if (nread == 0)
        return;
    c->len += (size_t)nread;
    idle_deadline(c);
    process_lines(c);
}

/* The client's deadline passed: idle for control_idle_ms, or not reading its answers for
 * CONTROL_STALL_TIMEOUT_MS. Either way it goes, so that it holds no slot or memory. */
static void on_timer(uv_timer_t *t)
{
    struct control_client *c = t->data;
    char line[96];

    if (c->stalled) {
        rt_log(RT_LOG_WARN, "control client dropped",
               json_pack("{s:s,s:I,s:i}", "reason", "not reading", "pending_bytes",
                         (json_int_t)c->pending, "timeout_ms", CONTROL_STALL_TIMEOUT_MS));
        client_close(c);
        return;
    }
    rt_log(RT_LOG_INFO, "control client dropped",
           json_pack("{s:s,s:I}", "reason", "idle", "timeout_ms",
                     (json_int_t)c->sup->control_idle_ms));
    snprintf(line, sizeof line, "{\"error\":\"idle for %llu s: closed\"}\n",
             (unsigned long long)(c->sup->control_idle_ms / 1000));
    client_say_and_close(c, line);
}

/* Same user or root may talk to the supervisor; anyone else is told no and cut off. */
static bool peer_allowed(uv_pipe_t *pipe, uid_t *peer_uid)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)pipe, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return false;
    *peer_uid = cred.uid;
    return cred.uid == 0 || cred.uid == geteuid();
}

/* Logs refusals for too many clients: the first, then at most one line per 10 s with the
 * count, so that a flood of connections does not become a flood of log lines. */
static void log_refused(struct sup *s)
{
    uint64_t now = shm_now_us();

    s->control_refused++;
    if (s->control_refused_log_us && now - s->control_refused_log_us < CONTROL_REFUSED_LOG_US)
        return;
    rt_log(
        RT_LOG_WARN, "control connection refused: too many clients",
        json_pack("{s:i,s:i}", "limit", CONTROL_MAX_CLIENTS, "refused", (int)s->control_refused));
    s->control_refused = 0;
    s->control_refused_log_us = now;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct sup *s = server->data;
    struct control_client *c;
    uid_t uid = (uid_t)-1;

    if (status < 0)
        return;
    c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->sup = s;
    uv_pipe_init(&s->loop, &c->pipe, 0);
    uv_timer_init(&s->loop, &c->timer);
    c->pipe.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->next = s->control_clients;
    if (c->next)
        c->next->prev = c;
    s->control_clients = c;
    s->control_nclients++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        client_close(c);
        return;
    }
    if (s->control_nclients > CONTROL_MAX_CLIENTS) {
        char line[96];
        log_refused(s);
        snprintf(line, sizeof line,
                 "{\"error\":\"too many control connections (limit %d): try again later\"}\n",
                 CONTROL_MAX_CLIENTS);
        client_say_and_close(c, line);
        return;
    }
    /* From here on a deadline: also a refused client must not linger unread. */
    idle_deadline(c);
    if (!peer_allowed(&c->pipe, &uid)) {
        rt_log(RT_LOG_WARN, "control connection refused: other user",
               json_pack("{s:i}", "uid", (int)uid));
        client_send(c, json_pack("{s:s}", "error", "permission denied: not the same user"), true);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/*
 * Creates the default socket's folder (mode 0700) when it is missing, then checks that it
 * is a directory of ours that no one else can write to: whoever can write there could put
 * their own socket in our place before we start, or remove ours. Not for an explicit
 * --control path, whose folder is the user's choice.
 */
static int control_dir_prepare(const char *path, char *err, size_t errlen)
{
    char dir[sizeof((struct sockaddr_un *)0)->sun_path], who[96];
    char *slash;
    struct stat st;

    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        int rc = -errno;
        snprintf(err, errlen, "cannot create the control socket folder %s: %s", dir, strerror(-rc));
        return rc;
    }
    if (lstat(dir, &st) < 0) {
        int rc = -errno;
        snprintf(err, errlen, "control socket folder %s: %s", dir, strerror(-rc));
        return rc;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen,
                 "control socket folder %s is not a directory (a symbolic link or a file): "
                 "remove it, or use --control",
                 dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "control socket folder %s belongs to %s, not to us (uid %u): remove it as "
                 "that user (or root), or use --control",
                 dir, sup_uid_describe(st.st_uid, who, sizeof who), (unsigned)geteuid());
        return -EPERM;
    }
    if (st.st_mode & 022) {
        snprintf(err, errlen,
                 "control socket folder %s is writable by group or others (mode %04o): "
                 "chmod 0700 it, or use --control",
                 dir, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return 0;
}

/*
 * Removes a socket file left by a supervisor of ours that died. Refuses a path that belongs
 * to another user (never removed: it is theirs, and its server would be theirs too), one
 * that is not a socket, and one on which a supervisor still answers.
 */
static int clear_stale_socket(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un addr;
    struct stat st;
    char who[96];
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen,
                 "control socket %s belongs to %s, not to us (uid %u): stop that user's "
                 "pgcorral or remove the file as that user (or root), or use another --control",
                 path, sup_uid_describe(st.st_uid, who, sizeof who), (unsigned)geteuid());
        return -EPERM;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "--control %s exists and is not a socket", path);
        return -EEXIST;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen,
                 "another pgcorral is running on control socket %s (stop it, or use --control)",
                 path);
        return -EADDRINUSE;
    }
    unlink(path);
    return 0;
}

/* PGCORRAL_CONTROL_IDLE_TIMEOUT (seconds): a hidden setting for the tests, which cannot
 * wait a minute for an idle client to be dropped. */
static int idle_timeout_ms(uint64_t *out, char *err, size_t errlen)
{
    const char *text = getenv("PGCORRAL_CONTROL_IDLE_TIMEOUT");
    long long v = CONTROL_IDLE_TIMEOUT_S;

    if (text && *text && rt_parse_ll(text, 1, 86400, &v) < 0) {
        snprintf(err, errlen,
                 "PGCORRAL_CONTROL_IDLE_TIMEOUT must be 1..86400 (seconds), got '%.32s'", text);
        return -EINVAL;
    }
    *out = (uint64_t)v * 1000;
    return 0;
}

int sup_control_start(struct sup *s, char *err, size_t errlen)
{
    const char *path = s->cfg->control_path;
    struct sockaddr_un addr;
    mode_t old_mask;
    int rc, fd;

    rc = idle_timeout_ms(&s->control_idle_ms, err, errlen);
    if (rc < 0)
        return rc;
    if (s->cfg->control_default) {
        rc = control_dir_prepare(path, err, errlen);
        if (rc < 0)
            return rc;
    }
    rc = clear_stale_socket(path, err, errlen);
    if (rc < 0) {
        if (rc != -EEXIST && rc != -EADDRINUSE && rc != -EPERM)
            snprintf(err, errlen, "control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    /* Bound here rather than by uv_pipe_bind: libuv removes the file of a pipe it bound
     * when the handle closes, and the old side of a binary upgrade closes its handle while
     * the new supervisor serves the same socket under the same name. */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot create control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    /* Created 0600 from the start: no window in which others could connect. */
    old_mask = umask(0177);
    rc = bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ? -errno : 0;
    umask(old_mask);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on control socket %s: %s", path, strerror(-rc));
        close(fd);
        return rc;
    }
    uv_pipe_init(&s->loop, &s->control, 0);
    s->control.data = s;
    rc = uv_pipe_open(&s->control, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->control, CONTROL_MAX_CLIENTS, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on control socket %s: %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->control, NULL);
        unlink(path);
        return rc;
    }
    s->control_fd = fd;
    return 0;
}

int sup_control_adopt(struct sup *s, int fd)
{
    uint64_t idle_ms;
    char err[160];
    int rc;

    if (idle_timeout_ms(&idle_ms, err, sizeof err) < 0)
        idle_ms = (uint64_t)CONTROL_IDLE_TIMEOUT_S * 1000;
    s->control_idle_ms = idle_ms;
    uv_pipe_init(&s->loop, &s->control, 0);
    s->control.data = s;
    rc = uv_pipe_open(&s->control, fd);
    if (rc < 0) {
        uv_close((uv_handle_t *)&s->control, NULL);
        close(fd);
        return rc;
    }
    /* Listening already; listen() again only takes our backlog. */
    rc = uv_listen((uv_stream_t *)&s->control, CONTROL_MAX_CLIENTS, on_connection);
    if (rc < 0) {
        uv_close((uv_handle_t *)&s->control, NULL); /* the handle owns fd now */
        return rc;
    }
    s->control_fd = fd;
    return 0;
}

void sup_control_detach(struct sup *s)
{
    if (s->control_fd < 0)
        return;
    uv_close((uv_handle_t *)&s->control, NULL);
    s->control_fd = -1;
    while (s->control_clients)
        client_close(s->control_clients);
}

void sup_control_stop(struct sup *s)
{
    if (s->control_fd < 0)
        return;
    uv_close((uv_handle_t *)&s->control, NULL);
    unlink(s->cfg->control_path);
    s->control_fd = -1;
    while (s->control_clients)
        client_close(s->control_clients);
}
