/*
 * The web server's epoll backend: libuv streams. The inherited listening socket is
 * adopted with uv_tcp_open (libuv 1.44 cannot create SO_REUSEPORT sockets itself), each
 * accepted socket is a uv_tcp_t embedded in its struct web_conn.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workers/web.h"

/* Backlog given to listen(2) again by uv_listen; the supervisor used the same. */
#define EP_BACKLOG 1024

/* A connection's socket handle is closed: hand the connection back to the core. */
static void ep_on_close(uv_handle_t *h)
{
    web_conn_on_closed(h->data);
}

/* Close callback of a connection whose accept failed: it was never started. */
static void ep_on_close_unstarted(uv_handle_t *h)
{
    web_conn_discard(h->data);
}

/* A connection is waiting on the listener: adopt it as a struct web_conn. */
static void ep_on_connection(uv_stream_t *server, int status)
{
    struct web_server *s = server->data;
    struct web_conn *c;

    if (status < 0) {
        rt_log(RT_LOG_WARN, "web: accept failed", json_pack("{s:s}", "error", uv_strerror(status)));
        return;
    }
    c = web_conn_new(s);
    if (!c) {
        /* Out of memory: drop the connection libuv accepted for us. Left there, it would
         * make libuv stop watching the listener (accepted_fd is libuv's own field). */
        if (server->accepted_fd >= 0) {
            close(server->accepted_fd);
            server->accepted_fd = -1;
        }
        return;
    }
    uv_tcp_init(s->loop, &c->io.ep.tcp);
    c->io.ep.tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->io.ep.tcp) < 0) {
        uv_close((uv_handle_t *)&c->io.ep.tcp, ep_on_close_unstarted);
        return;
    }
    uv_tcp_nodelay(&c->io.ep.tcp, 1);
    web_conn_start(c);
}

/* Close callback of a heap handle nothing else refers to. */
static void ep_free_handle(uv_handle_t *h)
{
    free(h);
}

/* Adopts the inherited listening socket (uv_tcp_open) and starts accepting. */
static int ep_listen_start(struct web_server *s)
{
    uv_tcp_t *l = malloc(sizeof *l);
    int rc;

    if (!l)
        return -ENOMEM;
    rc = uv_tcp_init(s->loop, l);
    if (rc < 0) {
        free(l);
        return rc;
    }
    l->data = s;
    rc = uv_tcp_open(l, s->listen_fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)l, EP_BACKLOG, ep_on_connection);
    if (rc < 0) {
        uv_close((uv_handle_t *)l, ep_free_handle);
        return rc;
    }
    s->listener = l;
    return 0;
}

static void ep_on_listener_closed(uv_handle_t *h)
{
    struct web_server *s = h->data;
    free(h);
    web_server_listener_closed(s);
}

static void ep_listen_stop(struct web_server *s)
{
    uv_close((uv_handle_t *)s->listener, ep_on_listener_closed);
    s->listener = NULL;
}

/* libuv reads straight into the connection's input buffer. */
static void ep_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    size_t len;
    web_conn_read_space(h->data, &buf->base, &len);
    buf->len = len;
}

static void ep_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct web_conn *c = stream->data;

    if (nread > 0)
        web_conn_on_read(c, (size_t)nread);
    else if (nread == UV_EOF)
        web_conn_on_eof(c);
    else if (nread == UV_ENOBUFS)
        uv_read_stop(stream); /* web_conn_read_space() marked it; restarted by the core */
    else if (nread < 0)
        web_conn_on_error(c, (int)nread);
}

static void ep_read_start(struct web_conn *c)
{
    uv_read_start((uv_stream_t *)&c->io.ep.tcp, ep_alloc, ep_on_read);
}

static void ep_read_stop(struct web_conn *c)
{
    uv_read_stop((uv_stream_t *)&c->io.ep.tcp);
}

/* The response bytes in c->wout are written (or failed). */
static void ep_on_write(uv_write_t *req, int status)
{
    web_conn_on_write_done(req->data, status);
}

static void ep_write(struct web_conn *c)
{
    uv_buf_t buf = uv_buf_init(c->wout.data, (unsigned)c->wout.len);
    int rc;

    c->io.ep.wreq.data = c;
    rc = uv_write(&c->io.ep.wreq, (uv_stream_t *)&c->io.ep.tcp, &buf, 1, ep_on_write);
    if (rc < 0)
        web_conn_on_write_done(c, rc); /* closes c; the core checks after write() */
}

/* FIN sent; the core keeps reading until the client closes or the linger time ends. */
static void ep_on_shutdown(uv_shutdown_t *req, int status)
{
}

static void ep_shutdown(struct web_conn *c)
{
    if (uv_shutdown(&c->io.ep.sreq, (uv_stream_t *)&c->io.ep.tcp, ep_on_shutdown) < 0)
        web_conn_on_error(c, -EPIPE);
}

static void ep_close(struct web_conn *c)
{
    uv_close((uv_handle_t *)&c->io.ep.tcp, ep_on_close);
}

/* Nothing to do: libuv has no completions queued outside its loop. */
static void ep_poll_now(struct web_server *s)
{
    /* libuv reads what arrived on its next loop turn; the drain grace waits for that. */
}

/* The epoll backend owns no handle besides the listener and the connections. */
static void ep_close_backend(struct web_server *s)
{
    web_server_backend_closed(s);
}

const struct web_io_ops web_io_epoll = {
    .name = "epoll",
    .listen_start = ep_listen_start,
    .listen_stop = ep_listen_stop,
    .read_start = ep_read_start,
    .read_stop = ep_read_stop,
    .write = ep_write,
    .shutdown = ep_shutdown,
    .close = ep_close,
    .poll_now = ep_poll_now,
    .close_backend = ep_close_backend,
};
