/*
 * The control socket: a unix stream socket (mode 0600, peer uid checked) on which each
 * line is one command and each answer one JSON document on one line. Commands themselves
 * are in control_cmds.c; this file does the socket, the framing and the limits.
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

#define CONTROL_LINE_MAX 4096

/* One control connection: its handle and the bytes of a line not yet complete. */
struct control_client {
    uv_pipe_t pipe;
    struct sup *sup;
    size_t len;
    bool closing;
    char buf[CONTROL_LINE_MAX];
};

/* One answer being written; freed in the write callback. */
struct control_write {
    uv_write_t req;
    struct control_client *client;
    bool close_after;
    char *text;
};

static void on_client_closed(uv_handle_t *h)
{
    free(h->data);
}

static void client_close(struct control_client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

static void on_written(uv_write_t *req, int status)
{
    struct control_write *w = (struct control_write *)req;
    if (status < 0 || w->close_after)
        client_close(w->client);
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
    uv_buf_t buf = uv_buf_init(line, (unsigned)(n + 1));
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written) < 0) {
        free(line);
        free(w);
        client_close(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct control_client *c = h->data;
    buf->base = c->buf + c->len;
    buf->len = sizeof c->buf - c->len;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct control_client *c = stream->data;
    char *start, *nl;

    if (nread < 0) {
        client_close(c);
        return;
    }
    c->len += (size_t)nread;
    start = c->buf;
    while (!c->closing && (nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
        *nl = '\0';
        if (nl > start && nl[-1] == '\r')
            nl[-1] = '\0';
        client_send(c, sup_control_dispatch(c->sup, start), false);
        start = nl + 1;
    }
    c->len -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->len);
    if (c->len == sizeof c->buf) {
        /* A line this long is not a command; say so and hang up rather than buffer more. */
        uv_read_stop(stream);
        client_send(c,
                    json_pack("{s:s}", "error",
                              "command too long (limit 4096 bytes including the newline)"),
                    true);
    }
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
    c->pipe.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        client_close(c);
        return;
    }
    if (!peer_allowed(&c->pipe, &uid)) {
        rt_log(RT_LOG_WARN, "control connection refused: other user",
               json_pack("{s:i}", "uid", (int)uid));
        client_send(c, json_pack("{s:s}", "error", "permission denied: not the same user"),
                    true);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* Removes a socket file left by a supervisor that died; refuses if one still answers. */
static int clear_stale_socket(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un addr;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
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

int sup_control_start(struct sup *s, char *err, size_t errlen)
{
    const char *path = s->cfg->control_path;
    mode_t old_mask;
    int rc;

    rc = clear_stale_socket(path, err, errlen);
    if (rc < 0) {
        if (rc != -EEXIST && rc != -EADDRINUSE)
            snprintf(err, errlen, "control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    uv_pipe_init(&s->loop, &s->control, 0);
    s->control.data = s;
    /* Created 0600 from the start: no window in which others could connect. */
    old_mask = umask(0177);
    rc = uv_pipe_bind(&s->control, path);
    umask(old_mask);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->control, 64, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on control socket %s: %s", path, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->control, NULL);
        return rc;
    }
    uv_fileno((uv_handle_t *)&s->control, &s->control_fd);
    return 0;
}

void sup_control_stop(struct sup *s)
{
    if (s->control_fd < 0)
        return;
    uv_close((uv_handle_t *)&s->control, NULL);
    unlink(s->cfg->control_path);
    s->control_fd = -1;
}
