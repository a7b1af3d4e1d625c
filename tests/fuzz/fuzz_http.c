/*
 * libFuzzer target: the web worker's HTTP/1.1 connection core (workers/http_conn.c) and its
 * routes (workers/http_routes.c), fed the input as the bytes a client sent, in several
 * reads, through an in-memory I/O backend; every response written is then checked.
 *
 * Input: byte 0 is a set of flags (FZ_*), byte 1 the largest read (0: one read); the rest
 * is what the client sends (twice with FZ_TWICE, to overflow the 8 KiB input buffer). The
 * server is a real one (web_server_create, no pool, a real shared segment for
 * /api/v1/stats and /metrics) whose backend is swapped for fz_io below: reads, writes,
 * shutdown and close complete when the driver says so, as on a socket.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workers/web.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Flags of input byte 0. */
#define FZ_SMALL 0x01u    /* small limits: 256-byte head, 64-byte body, 3 requests */
#define FZ_TIMEOUTS 0x02u /* every timeout 0 ms: a timer fires whenever time passes */
#define FZ_URING 0x04u    /* deliver as io_uring does (web_conn_on_data), else as libuv */
#define FZ_EOF 0x08u      /* the client shuts down its side right after its last byte */
#define FZ_TWICE 0x10u    /* the client sends its bytes twice: more than the input buffer */

#define FZ_BIG_LEN 66000           /* /fuzz/big: just over what stops parsing (64 KiB) */
#define FZ_CAPTURE_MAX (32u << 20) /* bytes of responses kept for the checks */
#define FZ_STEPS_MAX 64            /* settle rounds before the driver calls it a stall */
#define FZ_STATUS_LINE "HTTP/1.1 " /* what every response starts with */
#define FZ_CONTINUE "HTTP/1.1 100 Continue\r\n\r\n"

/* The server, its loop and its shared segment: made once, kept for the whole run. */
static uv_loop_t loop;
static struct web_server *srv;
static struct shm_segment *seg;

/* The one connection of the current input, as its fake socket sees it. */
static struct {
    struct web_conn *c;
    bool reading;       /* read_start called and no read_stop since */
    bool write_pending; /* write called, web_conn_on_write_done not yet */
    bool shut;          /* shutdown called (FIN): no write may follow */
    bool closed;        /* close called: web_conn_on_closed is owed */
    char *out;          /* every byte written, in order */
    size_t out_len, out_cap;
    bool out_overflow; /* more than FZ_CAPTURE_MAX: output not checked */
} fz;

/* The request /fuzz/later holds: answered by the driver between reads. */
static struct {
    struct web_conn *c;
    size_t body_len;
} later;

/* FUZZ_HTTP_DUMP is set: print what the server wrote (to read a crash's input). */
static bool dump;

/* xorshift32 state of the current input: read sizes and what happens between reads. */
static uint32_t rng;

/* The next pseudo-random number of the current input. */
static uint32_t fz_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* ---- the fake backend ------------------------------------------------------------------ */

/* The server's lifecycle hooks: the server is made once and never drained here. */
static int fz_listen_start(struct web_server *s)
{
    return 0;
}

static void fz_listen_stop(struct web_server *s)
{
    web_server_listener_closed(s);
}

/* Reading on or off: the driver hands bytes over only while it is on. */
static void fz_read_start(struct web_conn *c)
{
    fz.reading = true;
}

static void fz_read_stop(struct web_conn *c)
{
    fz.reading = false;
}

/* Keeps what the server sends; it completes on a later driver step, never in here. */
static void fz_write(struct web_conn *c)
{
    if (fz.write_pending || fz.shut || fz.closed || c->wout.len == 0)
        abort();
    fz.write_pending = true;
    if (fz.out_len + c->wout.len > FZ_CAPTURE_MAX) {
        fz.out_overflow = true;
        return;
    }
    if (fz.out_len + c->wout.len > fz.out_cap) {
        size_t cap = fz.out_cap ? fz.out_cap : 65536;
        while (cap < fz.out_len + c->wout.len)
            cap *= 2;
        char *p = realloc(fz.out, cap);
        if (!p)
            abort();
        fz.out = p;
        fz.out_cap = cap;
    }
    memcpy(fz.out + fz.out_len, c->wout.data, c->wout.len);
    fz.out_len += c->wout.len;
}

/* FIN: lingering close; the core reads and discards until the client closes. */
static void fz_shutdown(struct web_conn *c)
{
    fz.shut = true;
}

/* The socket closes: web_conn_on_closed comes from the driver, after the write in flight
 * is cancelled, as libuv does. */
static void fz_close(struct web_conn *c)
{
    if (fz.closed)
        abort();
    fz.closed = true;
    fz.reading = false;
}

static void fz_poll_now(struct web_server *s)
{
}

static void fz_close_backend(struct web_server *s)
{
    web_server_backend_closed(s);
}

/* The in-memory backend that replaces the server's epoll one after creation. */
static const struct web_io_ops fz_io = {
    .name = "fuzz",
    .listen_start = fz_listen_start,
    .listen_stop = fz_listen_stop,
    .read_start = fz_read_start,
    .read_stop = fz_read_stop,
    .write = fz_write,
    .shutdown = fz_shutdown,
    .close = fz_close,
    .poll_now = fz_poll_now,
    .close_backend = fz_close_backend,
};

/* ---- routes ---------------------------------------------------------------------------- */

/* What the core promises about any request it hands to a route. */
static void check_request(struct web_conn *c, const struct web_request *req)
{
    const struct web_limits *lim = &web_server_config(web_conn_server(c))->limits;
    const char *te = NULL;
    unsigned hosts = 0, cls = 0;

    if (strlen(req->path) != req->path_len || !req->query || strchr(req->path, '?'))
        abort();
    if (req->nheaders > WEB_MAX_HEADERS || (req->body == NULL) != (req->body_len == 0) ||
        req->body_len > lim->max_body_bytes)
        abort();
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct web_header *h = &req->headers[i];
        if (h->name_len == 0 || strlen(h->name) != h->name_len ||
            strlen(h->value) != h->value_len || strpbrk(h->name, " \t\r\n:") ||
            strpbrk(h->value, "\r\n"))
            abort();
        if (strcasecmp(h->name, "host") == 0)
            hosts++;
        else if (strcasecmp(h->name, "content-length") == 0)
            cls++;
        else if (strcasecmp(h->name, "transfer-encoding") == 0 && !te)
            te = "";
        if (strcasecmp(h->name, "transfer-encoding") == 0 && h->value[strspn(h->value, " \t,")])
            te = h->value; /* the last one with a coding: empty list elements do not count */
    }
    /* Request smuggling: one Host at most, never two lengths or a length and chunks, and
     * Transfer-Encoding fields (even empty ones) must end in chunked. */
    if (hosts > 1 || cls > 1 || (te && cls))
        abort();
    if (te) {
        size_t n = strlen(te);
        while (n && (te[n - 1] == ' ' || te[n - 1] == '\t' || te[n - 1] == ','))
            n--;
        if (n < 7 || strncasecmp(te + n - 7, "chunked", 7) != 0)
            abort();
    }
}

/* /fuzz/... (any method listed in fz_routes): a short fixed answer. */
static void route_any(struct web_conn *c, const struct web_request *req)
{
    char body[64];
    int n;

    check_request(c, req);
    n = snprintf(body, sizeof body, "{\"len\":%zu,\"headers\":%u}", req->body_len, req->nheaders);
    web_respond(c, 200, "application/json", NULL, body, (size_t)n);
}

/* GET /fuzz/big: an answer over the output high-water mark, which stops parsing. */
static void route_big(struct web_conn *c, const struct web_request *req)
{
    static char body[FZ_BIG_LEN];

    check_request(c, req);
    if (!body[0])
        memset(body, 'b', sizeof body);
    web_respond(c, 200, "text/plain", "X-Big: 1\r\n", body, sizeof body);
}

/* GET or POST /fuzz/later: answered later, from the driver, like a database route. */
static void route_later(struct web_conn *c, const struct web_request *req)
{
    check_request(c, req);
    if (later.c) /* one request at a time per connection */
        abort();
    later.c = c;
    later.body_len = req->body_len;
}

/* Answers the held /fuzz/later request, if any. */
static bool answer_later(void)
{
    char body[64];
    int n;

    if (!later.c)
        return false;
    n = snprintf(body, sizeof body, "{\"later\":%zu}", later.body_len);
    struct web_conn *c = later.c;
    later.c = NULL;
    web_respond(c, 202, "application/json", NULL, body, (size_t)n);
    return true;
}

/* The fuzzer's own routes, looked at before the built-in ones (ping, health without a
 * pool, stats and metrics on the shared segment, jobs without a pool). */
static const struct web_route fz_routes[] = {
    {HTTP_GET, "/fuzz/later", route_later}, {HTTP_POST, "/fuzz/later", route_later},
    {HTTP_GET, "/fuzz/big", route_big},     {HTTP_GET, "/fuzz/*", route_any},
    {HTTP_POST, "/fuzz/*", route_any},      {HTTP_PUT, "/fuzz/*", route_any},
    {HTTP_DELETE, "/fuzz/*", route_any},    {HTTP_OPTIONS, "/fuzz/*", route_any},
};

/* ---- checking the output ------------------------------------------------------------- */

/* Whether [p, p + n) is a token (RFC 9110 tchar). */
static bool is_token(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

/*
 * Checks the byte stream the server wrote: only whole, well-formed responses, a Content-
 * Length on each that its body matches (a HEAD answer has none: it is told apart because
 * no body we send starts with "HTTP/1.1 "), interim 100 Continue answers, and nothing
 * after an answer that says Connection: close. Returns the number of final answers; sets
 * *last_close when the last one said close.
 */
static unsigned check_output(const char *p, size_t len, bool *last_close)
{
    size_t off = 0;
    unsigned finals = 0;

    *last_close = false;
    /* A reject() of ours that came out as llhttp's generic message lost its status. */
    if (len && memmem(p, len, "callback error", 14))
        abort();
    while (off < len) {
        const char *r = p + off, *end = p + len, *line, *eol;
        size_t cl = 0;
        unsigned ncl = 0;
        int status;
        bool close = false;

        if (*last_close) /* bytes after the answer that closed the connection */
            abort();
        if ((size_t)(end - r) >= sizeof FZ_CONTINUE - 1 &&
            memcmp(r, FZ_CONTINUE, sizeof FZ_CONTINUE - 1) == 0) {
            off += sizeof FZ_CONTINUE - 1;
            continue;
        }
        /* Status line: "HTTP/1.1 DDD Reason\r\n", with the reason we have for DDD. */
        eol = memmem(r, (size_t)(end - r), "\r\n", 2);
        if (!eol || eol - r < 13 || memcmp(r, FZ_STATUS_LINE, 9) != 0 || r[9] < '1' || r[9] > '5' ||
            r[10] < '0' || r[10] > '9' || r[11] < '0' || r[11] > '9' || r[12] != ' ')
            abort();
        status = (r[9] - '0') * 100 + (r[10] - '0') * 10 + (r[11] - '0');
        if (status == 100 || strcmp(web_status_reason(status), "Unknown") == 0 ||
            (size_t)(eol - r - 13) != strlen(web_status_reason(status)) ||
            memcmp(r + 13, web_status_reason(status), (size_t)(eol - r - 13)) != 0)
            abort();
        /* Header lines: "Name: value\r\n", printable, up to an empty line. */
        for (line = eol + 2;; line = eol + 2) {
            const char *colon;
            eol = memmem(line, (size_t)(end - line), "\r\n", 2);
            if (!eol)
                abort();
            if (eol == line)
                break;
            colon = memchr(line, ':', (size_t)(eol - line));
            if (!colon || !is_token(line, (size_t)(colon - line)) || colon + 1 == eol ||
                colon[1] != ' ')
                abort();
            for (const char *v = colon + 2; v < eol; v++)
                if ((unsigned char)*v < 0x20 || (unsigned char)*v >= 0x7f)
                    abort();
            if ((size_t)(colon - line) == 14 && strncasecmp(line, "content-length", 14) == 0) {
                char *e;
                ncl++;
                cl = strtoul(colon + 2, &e, 10);
                if (e != eol || colon[2] < '0' || colon[2] > '9')
                    abort();
            } else if ((size_t)(colon - line) == 10 && strncasecmp(line, "connection", 10) == 0) {
                close = (size_t)(eol - colon - 2) == 5 && memcmp(colon + 2, "close", 5) == 0;
            }
        }
        if (ncl != 1)
            abort();
        off = (size_t)(eol + 2 - p);
        /* The body: cl bytes, unless this answers a HEAD (next answer or end follows). */
        if (cl > 0 && off < len && !(len - off >= 9 && memcmp(p + off, FZ_STATUS_LINE, 9) == 0)) {
            if (len - off < cl)
                abort();
            off += cl;
        }
        finals++;
        *last_close = close;
    }
    return finals;
}

/* ---- driving one connection ------------------------------------------------------------ */

/* Makes the server, once: default limits (set again per input), no pool, a real shared
 * segment, the fuzzer's routes first, then the in-memory backend. */
static void setup(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct web_server_config cfg;
    int fd;

    rt_log_set_level(RT_LOG_ERROR);
    dump = getenv("FUZZ_HTTP_DUMP") != NULL;
    if (uv_loop_init(&loop) < 0 || shm_create(&seg, 4) < 0)
        abort();
    /* A listening socket nobody connects to: web_server_create wants one. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 1) < 0)
        abort();
    memset(&cfg, 0, sizeof cfg);
    cfg.listen_fd = fd;
    cfg.io = WEB_IO_EPOLL;
    web_limits_default(&cfg.limits);
    cfg.seg = seg;
    cfg.stats = &seg->workers[0];
    cfg.routes = fz_routes;
    cfg.nroutes = sizeof fz_routes / sizeof fz_routes[0];
    if (web_server_create(&srv, &loop, &cfg) < 0)
        abort();
    srv->io = &fz_io; /* the epoll listener stays, idle; connections use fz_io */
}

/* Lets time pass: runs the loop once without blocking (due timers, closed handles). */
static void tick(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
}

/*
 * One step of the world outside the core: the write in flight completes, the held route
 * answers, time passes (each with some chance, or surely when all is true). Returns
 * whether anything happened.
 */
static bool step(bool all, bool timeouts)
{
    bool did = false;

    if (fz.write_pending && !fz.closed && (all || fz_rand() % 4 != 0)) {
        fz.write_pending = false;
        web_conn_on_write_done(fz.c, 0);
        did = true;
    }
    if (later.c && (all || fz_rand() % 2 == 0))
        did |= answer_later();
    if (timeouts && fz_rand() % 4 == 0)
        tick();
    return did;
}

/* Hands n bytes to the core as the backend would, while it reads. Returns the bytes it
 * took (fewer when it stopped reading). */
static size_t deliver(const uint8_t *p, size_t n, bool uring)
{
    size_t done = 0;

    while (done < n && fz.reading && !fz.closed) {
        size_t k = n - done;
        if (uring) {
            if (k > 4096) /* one provided buffer */
                k = 4096;
            web_conn_on_data(fz.c, (const char *)p + done, k);
        } else {
            char *buf;
            size_t room;
            web_conn_read_space(fz.c, &buf, &room);
            if (room == 0) { /* libuv: UV_ENOBUFS, then the backend stops reading */
                fz_read_stop(fz.c);
                break;
            }
            if (k > room)
                k = room;
            memcpy(buf, p + done, k);
            web_conn_on_read(fz.c, k);
        }
        done += k;
    }
    return done;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned flags, maxread, nreq, finals;
    bool timeouts, last_close;
    struct web_limits *lim;
    uint8_t *twice = NULL;

    if (!srv)
        setup();
    if (size < 2)
        return 0;
    flags = data[0];
    maxread = data[1];
    data += 2;
    size -= 2;
    if (flags & FZ_TWICE) {
        twice = malloc(2 * size + 1);
        if (!twice)
            return 0;
        memcpy(twice, data, size);
        memcpy(twice + size, data, size);
        data = twice;
        size *= 2;
    }
    timeouts = flags & FZ_TIMEOUTS;
    rng = 0x9e3779b9u ^ (flags << 8 | maxread);

    lim = &srv->cfg.limits;
    web_limits_default(lim);
    if (flags & FZ_SMALL) {
        lim->max_header_bytes = 256;
        lim->max_body_bytes = 64;
        lim->max_requests = 3;
    }
    if (timeouts)
        lim->header_timeout_ms = lim->body_timeout_ms = lim->idle_timeout_ms = lim->linger_ms = 0;

    memset(&fz, 0, sizeof fz);
    fz.c = web_conn_new(srv);
    if (!fz.c)
        abort();
    web_conn_start(fz.c);

    /* The client's bytes, in reads of 1..maxread bytes, the world moving in between. */
    for (size_t off = 0; off < size && !fz.closed;) {
        size_t n = maxread ? 1 + fz_rand() % maxread : size - off;
        if (n > size - off)
            n = size - off;
        for (int i = 0; !fz.reading && !fz.closed; i++) {
            /* Not reading: only the answer of a held request or a write can unblock. */
            if (!step(true, timeouts) && i > FZ_STEPS_MAX)
                abort(); /* stalled: nothing in flight, input pending, reading off */
        }
        off += deliver(data + off, n, flags & FZ_URING);
        step(false, timeouts);
    }
    if (flags & FZ_EOF) {
        /* A socket reports EOF only to a reader. */
        for (int i = 0; !fz.reading && !fz.closed; i++)
            if (!step(true, timeouts) && i > FZ_STEPS_MAX)
                abort();
        if (!fz.closed)
            web_conn_on_eof(fz.c);
    }
    /* Let everything in flight finish: each step answers or writes something, and there
     * are at most as many requests as bytes. */
    for (size_t i = 0; !fz.closed && (fz.write_pending || later.c); i++)
        if (!step(true, timeouts) || i > 2 * size + FZ_STEPS_MAX)
            abort();
    nreq = fz.c->nreq;

    if (dump) /* FUZZ_HTTP_DUMP=1 ./fuzz_http FILE: what the server answered */
        fprintf(stderr, "--- %u requests, %zu bytes out:\n%.*s\n---\n", nreq, fz.out_len,
                (int)fz.out_len, fz.out);
    if (!fz.out_overflow) {
        finals = check_output(fz.out, fz.out_len, &last_close);
        /* Every request handed to a route is answered once, plus at most one error answer
         * for what could not be parsed; a timeout may close with answers unsent. */
        if (finals > nreq + 1 || (!timeouts && finals < nreq))
            abort();
        /* An answer that says close is kept: the server shuts down or closes. */
        if (last_close && !fz.closed && !fz.shut && !fz.write_pending)
            abort();
    }

    /* The client goes away: close, cancel the write in flight, free the connection. */
    if (!fz.closed)
        web_conn_on_error(fz.c, UV_ECONNRESET);
    answer_later(); /* dropped: the connection is closing */
    if (fz.write_pending) {
        fz.write_pending = false;
        web_conn_on_write_done(fz.c, UV_ECANCELED);
    }
    web_conn_on_closed(fz.c);
    fz.c = NULL;
    for (int i = 0; web_server_conn_count(srv) > 0; i++) {
        if (i > 4)
            abort(); /* the connection is never freed */
        tick();
    }
    free(fz.out);
    free(twice);
    return 0;
}
