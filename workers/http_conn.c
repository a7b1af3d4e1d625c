/*
 * The HTTP/1.1 connection core of the web worker, independent of the I/O backend: llhttp
 * parsing with our limits and request-smuggling checks, one request at a time per
 * connection (pipelined ones wait in the input buffer and are answered in order),
 * keep-alive, timeouts, response writing, lingering close, and how one connection takes
 * the server's drain. The server itself (backend choice, start, drain, stop) is
 * http_server.c.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "workers/web.h"

#define CONN_IN_CAP 8192           /* input buffer; grows only behind a busy request */
#define CONN_OUT_HIGH (64 * 1024)  /* stop parsing while more output than this waits */
#define CONN_BUF_KEEP (256 * 1024) /* larger body/output buffers are freed once used */
#define CONN_BUF_MIN 4096          /* first allocation of a body/output buffer */
#define DRAIN_IDLE_GRACE_MS 250    /* draining: how long an idle keep-alive connection stays */

static void conn_process(struct web_conn *c);
static void conn_settle(struct web_conn *c);
static void conn_close(struct web_conn *c);

/* ---- small helpers ------------------------------------------------------------------- */

void web_limits_default(struct web_limits *l)
{
    l->max_header_bytes = 8192;
    l->max_body_bytes = 1024 * 1024;
    l->max_requests = 1000;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 30000;
    l->idle_timeout_ms = 5000;
    l->linger_ms = 2000;
}

/* Reason phrases of the status codes we send (RFC 9110). */
static const struct {
    int status;
    const char *reason;
} status_reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {304, "Not Modified"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *web_status_reason(int status)
{
    for (size_t i = 0; i < sizeof status_reasons / sizeof status_reasons[0]; i++)
        if (status_reasons[i].status == status)
            return status_reasons[i].reason;
    return "Unknown";
}

/* Empties b; frees its memory when one large request or answer made it big. */
static void buf_reset(struct rt_buf *b)
{
    b->len = 0;
    if (b->cap > CONN_BUF_KEEP) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

/* Whether parsing must wait: a route is answering, output backs up, or we are closing. */
static bool conn_blocked(const struct web_conn *c)
{
    return c->phase == WEB_PHASE_HANDLING ||
           (c->flags & (WEB_CF_CLOSE_AFTER | WEB_CF_CLOSING | WEB_CF_LINGER)) ||
           c->out.len + c->wout.len > CONN_OUT_HIGH;
}

static void conn_unref(struct web_conn *c);

/* ---- parser callbacks ---------------------------------------------------------------- */

/* Rejects the request being parsed: the process loop answers status and closes. */
static int reject(struct web_conn *c, int status, const char *msg)
{
    c->err_status = status;
    c->err_msg = msg;
    return HPE_USER;
}

/* Appends to the head store; the NUL terminators need their byte too. */
static int hs_append(struct web_conn *c, const char *at, size_t n)
{
    if (c->hs_len + n + 1 > c->hs_cap)
        return -1;
    memcpy(c->hs + c->hs_len, at, n);
    c->hs_len += n;
    return 0;
}

/* NUL-terminates the current URL, name or value in the head store. */
static int hs_end(struct web_conn *c)
{
    if (c->hs_len + 1 > c->hs_cap)
        return -1;
    c->hs[c->hs_len++] = '\0';
    return 0;
}

/* First byte of a request: reset the per-request state (no allocation) and start the
 * header deadline. */
static int on_message_begin(llhttp_t *p)
{
    struct web_conn *c = p->data;

    c->phase = WEB_PHASE_HEADERS;
    c->flags &= ~(WEB_CF_HEAD | WEB_CF_KEEPALIVE10 | WEB_CF_CLOSE_RESP);
    c->hs_len = 0;
    c->url_off = 0;
    c->nhdrs = 0;
    c->hdr_state = WEB_HDR_URL;
    c->body.len = 0;
    c->body_bytes = 0;
    c->route = NULL;
    c->rid_len = 0;
    c->req.start_ns = uv_hrtime();
    c->deadline_ms = uv_now(c->srv->loop) + c->srv->cfg.limits.header_timeout_ms;
    return 0;
}

/* The request target, possibly in pieces: copied into the head store. */
static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct web_conn *c = p->data;
    if (hs_append(c, at, n) < 0)
        return reject(c, 414, "request target too long");
    return 0;
}

/* End of the request target. */
static int on_url_complete(llhttp_t *p)
{
    struct web_conn *c = p->data;
    if (hs_end(c) < 0)
        return reject(c, 414, "request target too long");
    c->hdr_state = WEB_HDR_BETWEEN;
    return 0;
}

/* Trailer fields, chunk extensions: not kept, but they count against the body limit. */
static int count_body_extra(struct web_conn *c, size_t n)
{
    c->body_bytes += n;
    if (c->body_bytes > c->srv->cfg.limits.max_body_bytes)
        return reject(c, 413, "request body too large");
    return 0;
}

/* A header name (or a piece of one); a new name starts a new entry in hdrs. */
static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct web_conn *c = p->data;

    if (c->phase == WEB_PHASE_BODY)
        return count_body_extra(c, n);
    /* "Name :" is accepted by llhttp's loose mode; RFC 9112 says reject (smuggling). */
    if (memchr(at, ' ', n) || memchr(at, '\t', n))
        return reject(c, 400, "whitespace in a header name");
    if (c->hdr_state != WEB_HDR_FIELD) {
        if (c->nhdrs == WEB_MAX_HEADERS)
            return reject(c, 431, "too many header fields");
        c->hdrs[c->nhdrs].name = c->hs + c->hs_len;
        c->hdrs[c->nhdrs].value = "";
        c->hdrs[c->nhdrs].value_len = 0;
        c->nhdrs++;
        c->hdr_state = WEB_HDR_FIELD;
    }
    if (hs_append(c, at, n) < 0)
        return reject(c, 431, "request header fields too large");
    return 0;
}

/* End of a header name: its value starts next in the head store. */
static int on_header_field_complete(llhttp_t *p)
{
    struct web_conn *c = p->data;
    struct web_header *h;

    if (c->phase == WEB_PHASE_BODY)
        return 0;
    /* llhttp (even strict) takes a line starting with ':' as a field with an empty name;
     * a field name is a token (RFC 9110 5.1), so that is no request: reject. */
    if (c->hdr_state != WEB_HDR_FIELD || c->hs + c->hs_len == c->hdrs[c->nhdrs - 1].name)
        return reject(c, 400, "empty header name");
    h = &c->hdrs[c->nhdrs - 1];
    h->name_len = (size_t)(c->hs + c->hs_len - h->name);
    if (hs_end(c) < 0)
        return reject(c, 431, "request header fields too large");
    h->value = c->hs + c->hs_len;
    c->hdr_state = WEB_HDR_VALUE;
    c->value_span = WEB_SPAN_NONE;
    return 0;
}

/* A header value (or a piece of one). */
static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct web_conn *c = p->data;

    if (c->phase == WEB_PHASE_BODY)
        return count_body_extra(c, n);
    /*
     * llhttp (loose mode) accepts obs-fold and hands the folded line over as another
     * value span. Without a fold a value is split only where a read ended: its span runs
     * to the end of that buffer and the next one starts the next buffer. A span after one
     * that ended inside its buffer (at the CR) is a fold. RFC 9112: reject.
     */
    if (c->value_span == WEB_SPAN_ENDED ||
        (c->value_span == WEB_SPAN_TO_END && at != c->exec_start))
        return reject(c, 400, "obsolete line folding in a header value");
    c->value_span = at + n < c->exec_end ? WEB_SPAN_ENDED : WEB_SPAN_TO_END;
    if (hs_append(c, at, n) < 0)
        return reject(c, 431, "request header fields too large");
    return 0;
}

/* End of a header value. */
static int on_header_value_complete(llhttp_t *p)
{
    struct web_conn *c = p->data;
    struct web_header *h;

    if (c->phase == WEB_PHASE_BODY)
        return 0;
    h = &c->hdrs[c->nhdrs - 1];
    h->value_len = (size_t)(c->hs + c->hs_len - h->value);
    if (hs_end(c) < 0)
        return reject(c, 431, "request header fields too large");
    c->hdr_state = WEB_HDR_BETWEEN;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct web_conn *c = p->data;
    /* Pause, so that the process loop knows exactly how many bytes the head took and
     * checks the head before any byte of the body is read. */
    c->phase = WEB_PHASE_BODY;
    return HPE_PAUSED;
}

/* Body bytes, decoded from chunks when chunked: kept in c->body up to the limit. */
static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct web_conn *c = p->data;

    if (count_body_extra(c, n) != 0)
        return HPE_USER;
    if (rt_buf_reserve(&c->body, n, CONN_BUF_MIN) < 0)
        return reject(c, 503, "out of memory");
    memcpy(c->body.data + c->body.len, at, n);
    c->body.len += n;
    return 0;
}

/* Chunk extensions (";name=value"): ignored, but counted against the body limit. */
static int on_chunk_extension(llhttp_t *p, const char *at, size_t n)
{
    return count_body_extra(p->data, n);
}

/* A whole request: pause, so that it is answered before the next one is parsed. Decides
 * whether its answer closes the connection. */
static int on_message_complete(llhttp_t *p)
{
    struct web_conn *c = p->data;

    c->phase = WEB_PHASE_HANDLING;
    if (!llhttp_should_keep_alive(p) || llhttp_get_upgrade(p))
        c->flags |= WEB_CF_CLOSE_RESP;
    else if (p->http_minor == 0)
        c->flags |= WEB_CF_KEEPALIVE10;
    return HPE_PAUSED;
}

/* ---- responses ----------------------------------------------------------------------- */

/* Keeps s->date ("Date: <IMF-fixdate>\r\n") current to the second. */
static const char *server_date(struct web_server *s)
{
    time_t now = time(NULL);
    struct tm tm;

    if ((uint64_t)now != s->date_sec) {
        s->date_sec = (uint64_t)now;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof s->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    }
    return s->date;
}

/*
 * Route numbers and counters of this process's HTTP block (struct shm_http), by route
 * pattern (its address: patterns are static or live as long as the process), method and
 * status, so that counting an answer is a lookup here instead of a walk of the block.
 * Direct-mapped; a collision only costs the walk. Loop thread of the worker process.
 */
#define ROUTE_CACHE 64
#define SERIES_CACHE 256
static struct {
    const char *pattern;
    const struct shm_http *blk;
    uint32_t route;
} route_cache[ROUTE_CACHE];
static struct {
    const char *pattern;
    const struct shm_http *blk;
    unsigned method, status;
    _Atomic uint64_t *counter;
} series_cache[SERIES_CACHE];

/* The route label of answers that no route produced (404, 405, parse errors). */
static const char route_unmatched[] = "unmatched";

static size_t ptr_hash(const void *p, unsigned salt)
{
    uint64_t x = ((uint64_t)(uintptr_t)p >> 3) ^ ((uint64_t)salt * 0x9e3779b97f4a7c15u);
    return (size_t)((x * 0xff51afd7ed558ccdu) >> 40);
}

/* The metrics label of an llhttp method. */
static unsigned method_label(int method)
{
    switch (method) {
    case HTTP_GET:
        return SHM_HTTP_GET;
    case HTTP_HEAD:
        return SHM_HTTP_HEAD;
    case HTTP_POST:
        return SHM_HTTP_POST;
    case HTTP_PUT:
        return SHM_HTTP_PUT;
    case HTTP_DELETE:
        return SHM_HTTP_DELETE;
    case HTTP_PATCH:
        return SHM_HTTP_PATCH;
    case HTTP_OPTIONS:
        return SHM_HTTP_OPTIONS;
    default:
        return SHM_HTTP_OTHER;
    }
}

/* Counts one answer by route, method and status, and its time by route. */
static void count_route(struct shm_http *h, const char *pattern, unsigned method, int status,
                        uint64_t us)
{
    size_t ri = ptr_hash(pattern, 0) % ROUTE_CACHE;
    size_t si = ptr_hash(pattern, (unsigned)status * 8u + method) % SERIES_CACHE;
    uint32_t route;

    if (route_cache[ri].pattern != pattern || route_cache[ri].blk != h) {
        route_cache[ri].pattern = pattern;
        route_cache[ri].blk = h;
        route_cache[ri].route = shm_http_route(h, pattern);
    }
    route = route_cache[ri].route;
    if (series_cache[si].pattern != pattern || series_cache[si].blk != h ||
        series_cache[si].method != method || series_cache[si].status != (unsigned)status) {
        series_cache[si].pattern = pattern;
        series_cache[si].blk = h;
        series_cache[si].method = method;
        series_cache[si].status = (unsigned)status;
        series_cache[si].counter = shm_http_counter(h, route, method, (unsigned)status);
    }
    shm_count(series_cache[si].counter, 1);
    shm_hist_add(shm_http_hist(h, route), us);
}

/* A request id for c's current request, if it has none yet (made up: 16 hex digits). */
static void conn_ensure_rid(struct web_conn *c)
{
    if (c->rid_len)
        return;
    rt_id_hex(c->rid, RT_REQUEST_ID_LEN);
    c->rid_len = RT_REQUEST_ID_LEN;
}

/* Counts one answer in the worker's shm block and writes its access log line. method is
 * an llhttp method, or -1 when the request line was not understood. */
static void count_response(struct web_conn *c, int status, int method, size_t bytes)
{
    const struct web_server_config *cfg = &c->srv->cfg;
    struct shm_worker *st = cfg->stats;
    uint64_t us = c->req.start_ns ? (uv_hrtime() - c->req.start_ns) / 1000 : 0;
    _Atomic uint64_t *cls;

    if (cfg->access_log) {
        const char *path = c->req.path ? c->req.path : "";
        struct web_access_entry e = {
            .method = method >= 0 ? llhttp_method_name((llhttp_method_t)method) : "-",
            .path = path,
            .path_len = c->req.path ? c->req.path_len : 0,
            .status = status,
            .bytes = (c->flags & WEB_CF_HEAD) ? 0 : bytes,
            .duration_us = us,
            .request_id = c->rid,
            .request_id_len = c->rid_len,
        };
        web_access_log_line(cfg->access_log, &e);
    }
    if (!st)
        return;
    shm_count(&st->counters.http_requests, 1);
    switch (status / 100) {
    case 1:
        cls = &st->counters.http_1xx;
        break;
    case 2:
        cls = &st->counters.http_2xx;
        break;
    case 3:
        cls = &st->counters.http_3xx;
        break;
    case 4:
        cls = &st->counters.http_4xx;
        break;
    default:
        cls = &st->counters.http_5xx;
        break;
    }
    shm_count(cls, 1);
    if (c->req.start_ns)
        shm_hist_add(&st->hists.http, us);
    count_route(&st->http, c->route ? c->route : route_unmatched,
                method >= 0 ? method_label(method) : SHM_HTTP_OTHER, status, us);
}

/* Appends a whole response to c->out. Returns 0 or -ENOMEM. */
static int append_response(struct web_conn *c, int status, const char *content_type,
                           const char *extra, const void *body, size_t len, bool close)
{
    struct rt_buf *b = &c->out;
    size_t need = 160 + (content_type ? strlen(content_type) : 0) + (extra ? strlen(extra) : 0) +
                  sizeof c->srv->date + c->rid_len + len;
    const char *conn_hdr = close                             ? "Connection: close\r\n"
                           : (c->flags & WEB_CF_KEEPALIVE10) ? "Connection: keep-alive\r\n"
                                                             : "";
    int n;

    if (rt_buf_reserve(b, need, CONN_BUF_MIN) < 0)
        return -ENOMEM;
    n = snprintf(b->data + b->len, b->cap - b->len,
                 "HTTP/1.1 %d %s\r\n%s%s%s%sContent-Length: %zu\r\n%sX-Request-Id: %s\r\n%s\r\n",
                 status, web_status_reason(status), server_date(c->srv),
                 content_type ? "Content-Type: " : "", content_type ? content_type : "",
                 content_type ? "\r\n" : "", len, conn_hdr, c->rid, extra ? extra : "");
    assert(n > 0 && (size_t)n < b->cap - b->len);
    b->len += (size_t)n;
    if (len && !(c->flags & WEB_CF_HEAD)) {
        memcpy(b->data + b->len, body, len);
        b->len += len;
    }
    return 0;
}

void web_json_escape(char *out, size_t n, const char *s)
{
    size_t o = 0;

    if (n == 0)
        return;
    for (; *s && o + 7 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

/* Writes {"error":"msg"} into out (n bytes). */
static void error_json(char *out, size_t n, const char *msg)
{
    char esc[200];
    web_json_escape(esc, sizeof esc, msg);
    snprintf(out, n, "{\"error\":\"%s\"}", esc);
}

/*
 * Answers a request that could not be handled (parse error, limit, timeout) and closes
 * the connection once the answer is out. Any phase but HANDLING.
 */
static void conn_fail(struct web_conn *c, int status, const char *msg)
{
    char body[256];

    assert(c->phase != WEB_PHASE_HANDLING);
    error_json(body, sizeof body, msg);
    c->flags &= ~WEB_CF_HEAD;
    c->flags &= ~WEB_CF_KEEPALIVE10;
    /* Not dispatched: its method and path (without the query) when the request line made
     * it, for the access log and the metrics. */
    bool line = (c->phase == WEB_PHASE_HEADERS || c->phase == WEB_PHASE_BODY) &&
                c->hdr_state == WEB_HDR_BETWEEN;
    c->req.path = line ? c->hs + c->url_off : NULL;
    c->req.path_len = line ? strcspn(c->req.path, "?") : 0;
    c->route = NULL;
    conn_ensure_rid(c);
    if (append_response(c, status, "application/json", NULL, body, strlen(body), true) == 0)
        count_response(c, status, line ? (int)c->parser.method : -1, strlen(body));
    c->req.start_ns = 0;
    c->phase = WEB_PHASE_IDLE;
    c->flags |= WEB_CF_CLOSE_AFTER;
    c->in_pos = c->in_len = 0;
}

void web_respond(struct web_conn *c, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len)
{
    bool close;

    assert(c->phase == WEB_PHASE_HANDLING);
    c->phase = WEB_PHASE_IDLE;
    if (c->flags & WEB_CF_CLOSING) {
        conn_unref(c); /* the client went away meanwhile: nobody to answer */
        return;
    }
    /* Draining, or the client shut its side: answer what is buffered, and say close on
     * the last answer only (an earlier one would make the client drop the rest). */
    close = (c->flags & WEB_CF_CLOSE_RESP) ||
            (((c->flags & WEB_CF_EOF) || c->srv->draining) && c->in_pos == c->in_len);
    if (append_response(c, status, content_type, extra_headers, body, len, close) < 0) {
        conn_close(c);
        conn_unref(c);
        return;
    }
    count_response(c, status, c->req.method, len);
    c->req.start_ns = 0;
    c->rid_len = 0; /* an answer without a request (a timeout) gets an id of its own */
    if (close)
        c->flags |= WEB_CF_CLOSE_AFTER;
    c->deadline_ms = uv_now(c->srv->loop) + c->srv->cfg.limits.idle_timeout_ms;
    if (!(c->flags & WEB_CF_PROCESSING))
        conn_process(c);
    conn_unref(c);
}

void web_respond_error(struct web_conn *c, int status, const char *msg, const char *extra_headers)
{
    char body[256];

    if (status >= 500) {
        /* Every 5xx names a log line by its error id. */
        web_respond_failure(c, status, msg, NULL, NULL, extra_headers);
        return;
    }
    error_json(body, sizeof body, msg);
    web_respond(c, status, "application/json", extra_headers, body, strlen(body));
}

void web_respond_failure(struct web_conn *c, int status, const char *public_msg, const char *detail,
                         json_t *fields, const char *extra_headers)
{
    char id[RT_ERROR_ID_LEN + 1], esc[200], body[320];
    const char *route = c->route ? c->route : route_unmatched;
    int n;

    if (!fields || !json_is_object(fields)) {
        json_decref(fields);
        fields = json_object();
    }
    if (fields) {
        json_object_set_new(fields, "status", json_integer(status));
        json_object_set_new(fields, "route", json_string(route));
        json_object_set_new(fields, "method",
                            json_string(llhttp_method_name((llhttp_method_t)c->req.method)));
        if (c->req.path) {
            json_t *path = json_stringn(c->req.path, c->req.path_len);
            json_object_set_new(fields, "path", path ? path : json_string("<not UTF-8>"));
        }
        json_object_set_new(fields, "request_id", json_stringn(c->rid, c->rid_len));
    }
    rt_log_failure(status >= 500 ? RT_LOG_ERROR : RT_LOG_WARN, public_msg, detail, route, fields,
                   id);
    web_json_escape(esc, sizeof esc, public_msg);
    n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"error_id\":\"%s\"}", esc, id);
    web_respond(c, status, "application/json", extra_headers, body, (size_t)n);
}

void web_conn_set_route(struct web_conn *c, const char *pattern)
{
    c->route = pattern;
}

const char *web_request_header(const struct web_request *req, const char *name)
{
    for (unsigned i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

struct web_server *web_conn_server(const struct web_conn *c)
{
    return c->srv;
}

const struct web_server_config *web_server_config(const struct web_server *s)
{
    return &s->cfg;
}

/* ---- request flow -------------------------------------------------------------------- */

/*
 * The head is complete (parser paused): checks what llhttp leaves to us. Returns true to
 * go on with the body, false after conn_fail().
 */
static bool conn_head_done(struct web_conn *c)
{
    llhttp_t *p = &c->parser;
    const struct web_limits *lim = &c->srv->cfg.limits;
    unsigned hosts = 0;
    const char *expect = NULL;
    bool te = false;

    if (p->http_major != 1 || p->http_minor > 1) {
        conn_fail(c, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
        return false;
    }
    for (unsigned i = 0; i < c->nhdrs; i++) {
        if (strcasecmp(c->hdrs[i].name, "host") == 0)
            hosts++;
        else if (strcasecmp(c->hdrs[i].name, "expect") == 0)
            expect = c->hdrs[i].value;
        else if (strcasecmp(c->hdrs[i].name, "transfer-encoding") == 0)
            te = true;
    }
    /* llhttp ignores an empty Transfer-Encoding and frames by Content-Length; a proxy in
     * front may not (TE/CL smuggling). RFC 9112 6.1: unless chunked is last, 400. */
    if (te && !(p->flags & F_CHUNKED)) {
        conn_fail(c, 400, "Transfer-Encoding must end in chunked");
        return false;
    }
    if (hosts > 1 || (hosts == 0 && p->http_minor == 1)) {
        conn_fail(c, 400, "an HTTP/1.1 request needs exactly one Host header");
        return false;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > lim->max_body_bytes) {
        conn_fail(c, 413, "request body too large");
        return false;
    }
    if (p->method == HTTP_HEAD)
        c->flags |= WEB_CF_HEAD;
    if (expect && p->http_minor == 1 && strcasecmp(expect, "100-continue") == 0 &&
        ((p->flags & F_CHUNKED) || p->content_length > 0)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (rt_buf_reserve(&c->out, sizeof cont - 1, CONN_BUF_MIN) == 0) {
            memcpy(c->out.data + c->out.len, cont, sizeof cont - 1);
            c->out.len += sizeof cont - 1;
        }
    }
    c->deadline_ms = uv_now(c->srv->loop) + lim->body_timeout_ms;
    return true;
}

/* A whole request is parsed (parser paused): builds req and runs its route. */
static void conn_dispatch(struct web_conn *c)
{
    struct web_request *r = &c->req;
    char *path = c->hs + c->url_off, *q;

    c->nreq++;
    c->hdr_bytes = 0;
    if (c->nreq >= c->srv->cfg.limits.max_requests)
        c->flags |= WEB_CF_CLOSE_RESP;
    r->method = c->parser.method;
    q = strchr(path, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    } else {
        r->query = "";
    }
    r->path = path;
    r->path_len = strlen(path);
    r->headers = c->hdrs;
    r->nheaders = c->nhdrs;
    r->body = c->body.len ? c->body.data : NULL;
    r->body_len = c->body.len;
    /* X-Request-Id: the client's when it is safe to repeat everywhere, else our own. */
    for (unsigned i = 0; i < c->nhdrs; i++) {
        if (strcasecmp(c->hdrs[i].name, "x-request-id") == 0) {
            if (rt_request_id_valid(c->hdrs[i].value, c->hdrs[i].value_len)) {
                memcpy(c->rid, c->hdrs[i].value, c->hdrs[i].value_len);
                c->rid[c->hdrs[i].value_len] = '\0';
                c->rid_len = c->hdrs[i].value_len;
            }
            break;
        }
    }
    conn_ensure_rid(c);
    r->request_id = c->rid;
    r->request_id_len = c->rid_len;
    c->refs++; /* the route holds c until web_respond() */
    web_routes_dispatch(c, r);
}

/* Maps an llhttp error to our answer. */
static void conn_fail_parse(struct web_conn *c, llhttp_errno_t e)
{
    /* A reject() of ours: HPE_USER from a data callback, but HPE_CB_*_COMPLETE from a
     * *_complete one (on_url_complete's 414, the header callbacks' 400 and 431). */
    if (c->err_status) {
        conn_fail(c, c->err_status, c->err_msg);
        return;
    }
    switch (e) {
    case HPE_INVALID_VERSION:
        conn_fail(c, 505, "only HTTP/1.0 and HTTP/1.1 are supported");
        break;
    case HPE_INVALID_METHOD:
        conn_fail(c, 400, "invalid method");
        break;
    default: {
        const char *why = llhttp_get_error_reason(&c->parser);
        conn_fail(c, 400, why && *why ? why : "malformed request");
        break;
    }
    }
}

/*
 * Parses what is buffered, one request at a time, until the input is used up or a request
 * waits for its route, output backs up, or the connection is to close; then flushes and
 * re-arms the timer (conn_settle).
 */
static void conn_process(struct web_conn *c)
{
    const size_t max_head = c->srv->cfg.limits.max_header_bytes;

    if (c->flags & WEB_CF_PROCESSING)
        return;
    c->flags |= WEB_CF_PROCESSING;
    /* After a pause llhttp may have work left that needs no byte (a request without a
     * body completes right after its head), so it runs once more even on empty input. */
    bool resumed = false;
    while ((c->in_pos < c->in_len || resumed) && !conn_blocked(c)) {
        const char *data = c->in + c->in_pos;
        size_t len = c->in_len - c->in_pos, used;
        enum web_phase before = c->phase;
        llhttp_errno_t e;

        c->exec_start = data;
        c->exec_end = data + len;
        e = llhttp_execute(&c->parser, data, len);
        resumed = false;
        if (e == HPE_OK) {
            used = len;
        } else if (e == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
            llhttp_resume(&c->parser);
            resumed = true;
        } else {
            conn_fail_parse(c, e);
            break;
        }
        c->in_pos += used;
        if (before == WEB_PHASE_IDLE || before == WEB_PHASE_HEADERS) {
            c->hdr_bytes += used;
            if (c->hdr_bytes > max_head) {
                conn_fail(c, 431, "request header fields too large");
                break;
            }
            if (c->phase == WEB_PHASE_BODY && !conn_head_done(c))
                break;
        }
        if (c->phase == WEB_PHASE_HANDLING)
            conn_dispatch(c);
    }
    if (c->in_pos == c->in_len)
        c->in_pos = c->in_len = 0;
    c->flags &= ~WEB_CF_PROCESSING;
    conn_settle(c);
}

/* ---- timers -------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct web_conn *c = t->data;
    enum web_timer_kind kind = c->timer_kind;

    c->timer_kind = WEB_TIMER_NONE;
    switch (kind) {
    case WEB_TIMER_HEADERS:
    case WEB_TIMER_BODY:
        conn_fail(c, 408,
                  kind == WEB_TIMER_HEADERS ? "timed out waiting for request headers"
                                            : "timed out waiting for the request body");
        conn_settle(c);
        break;
    case WEB_TIMER_NONE:
        break;
    default: /* idle, first request, send, linger */
        conn_close(c);
        break;
    }
}

/* Points the timer at the deadline of what the connection waits for now. */
static void conn_arm_timer(struct web_conn *c)
{
    enum web_timer_kind kind;
    uint64_t deadline = c->deadline_ms, now;

    if (c->flags & WEB_CF_LINGER)
        kind = WEB_TIMER_LINGER; /* deadline set when lingering began */
    else if (c->phase == WEB_PHASE_HANDLING)
        kind = WEB_TIMER_NONE;
    else if (c->phase == WEB_PHASE_HEADERS)
        kind = WEB_TIMER_HEADERS;
    else if (c->phase == WEB_PHASE_BODY)
        kind = WEB_TIMER_BODY;
    else if (c->flags & WEB_CF_WRITING || c->out.len)
        kind = WEB_TIMER_SEND;
    else if (c->in_pos < c->in_len)
        kind = WEB_TIMER_HEADERS; /* only blank lines so far */
    else
        kind = (c->flags & WEB_CF_SEEN_BYTES) ? WEB_TIMER_IDLE : WEB_TIMER_FIRST;
    if (kind == WEB_TIMER_NONE) {
        if (c->timer_kind != WEB_TIMER_NONE)
            uv_timer_stop(&c->timer);
        c->timer_kind = kind;
        return;
    }
    if (kind == WEB_TIMER_SEND)
        deadline = c->send_deadline_ms;
    if (kind == c->timer_kind && deadline == c->timer_at)
        return;
    now = uv_now(c->srv->loop);
    c->timer_kind = kind;
    c->timer_at = deadline;
    uv_timer_start(&c->timer, on_timer, deadline > now ? deadline - now : 0, 0);
}

/* ---- connection state ---------------------------------------------------------------- */

/* Starts writing c->out if nothing is in flight. */
static void conn_flush(struct web_conn *c)
{
    struct rt_buf tmp;

    if ((c->flags & WEB_CF_WRITING) || c->out.len == 0)
        return;
    tmp = c->wout;
    c->wout = c->out;
    c->out = tmp;
    c->out.len = 0;
    c->flags |= WEB_CF_WRITING;
    c->send_deadline_ms = uv_now(c->srv->loop) + c->srv->cfg.limits.body_timeout_ms;
    c->srv->io->write(c);
}

/* Our last answer is out: half-close, then read and discard until the client closes. */
static void conn_linger(struct web_conn *c)
{
    c->flags |= WEB_CF_LINGER;
    c->in_pos = c->in_len = 0;
    if (c->flags & WEB_CF_EOF) {
        conn_close(c);
        return;
    }
    c->srv->io->shutdown(c);
    if (c->flags & WEB_CF_CLOSING)
        return;
    c->deadline_ms = uv_now(c->srv->loop) + c->srv->cfg.limits.linger_ms;
    if (c->flags & WEB_CF_READ_OFF) {
        c->flags &= ~WEB_CF_READ_OFF;
        c->srv->io->read_start(c);
    }
}

/* Decides what the connection does next, after anything changed: flush, close, resume
 * reading, re-arm the timer. */
static void conn_settle(struct web_conn *c)
{
    if (c->flags & WEB_CF_CLOSING)
        return;
    conn_flush(c);
    if (c->flags & WEB_CF_CLOSING) /* the write failed at once */
        return;
    if (c->flags & WEB_CF_LINGER) {
        conn_arm_timer(c);
        return;
    }
    if ((c->flags & WEB_CF_CLOSE_AFTER) && !(c->flags & WEB_CF_WRITING) &&
        c->phase != WEB_PHASE_HANDLING) {
        conn_linger(c);
        if (!(c->flags & WEB_CF_CLOSING))
            conn_arm_timer(c);
        return;
    }
    if (c->phase == WEB_PHASE_IDLE && !(c->flags & WEB_CF_WRITING) && c->out.len == 0 &&
        c->in_pos == c->in_len) {
        /* Nothing in flight and the client hung up. */
        if (c->flags & WEB_CF_EOF) {
            conn_close(c);
            return;
        }
        if (c->srv->draining) {
            /* Idle while draining (keep-alive answers were sent before the drain, or only
             * blank lines came): at most the drain grace left. */
            uint64_t grace = uv_now(c->srv->loop) + DRAIN_IDLE_GRACE_MS;
            if (grace < c->deadline_ms)
                c->deadline_ms = grace;
        }
    }
    if ((c->flags & WEB_CF_EOF) && c->phase != WEB_PHASE_HANDLING && !conn_blocked(c) &&
        !(c->flags & WEB_CF_WRITING) && c->out.len == 0) {
        /* A partial request that can never be completed. */
        conn_close(c);
        return;
    }
    if ((c->flags & WEB_CF_READ_OFF) && !conn_blocked(c) && !(c->flags & WEB_CF_EOF)) {
        c->flags &= ~WEB_CF_READ_OFF;
        c->srv->io->read_start(c);
    }
    conn_arm_timer(c);
}

/* The connection timer is closed: drop its reference. */
static void on_timer_closed(uv_handle_t *h)
{
    conn_unref(h->data);
}

/* Closes the socket now (quietly, or after conn_linger). Idempotent. */
static void conn_close(struct web_conn *c)
{
    struct shm_worker *st = c->srv->cfg.stats;

    if (c->flags & WEB_CF_CLOSING)
        return;
    c->flags |= WEB_CF_CLOSING;
    c->timer_kind = WEB_TIMER_NONE;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    if (st)
        atomic_fetch_sub_explicit(&st->http_open, 1, memory_order_relaxed);
    c->srv->io->close(c);
}

/* Drops a reference; the last one frees the connection. */
static void conn_unref(struct web_conn *c)
{
    struct web_server *s = c->srv;

    assert(c->refs > 0);
    if (--c->refs > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    free(c->in);
    free(c->hs);
    free(c->body.data);
    free(c->out.data);
    free(c->wout.data);
    free(c);
    web_server_conn_gone(s);
}

struct web_conn *web_conn_new(struct web_server *s)
{
    struct web_conn *c = calloc(1, sizeof *c);

    if (!c)
        return NULL;
    c->srv = s;
    c->in_cap = CONN_IN_CAP;
    c->hs_cap = s->cfg.limits.max_header_bytes + 2 * WEB_MAX_HEADERS + 2;
    c->in = malloc(c->in_cap);
    c->hs = malloc(c->hs_cap);
    if (!c->in || !c->hs) {
        web_conn_discard(c);
        return NULL;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    /* Every lenient mode stays off: they exist for broken peers and open smuggling. */
    c->parser.lenient_flags = 0;
    c->parser.data = c;
    return c;
}

void web_conn_discard(struct web_conn *c)
{
    if (!c)
        return;
    free(c->in);
    free(c->hs);
    free(c);
}

void web_conn_start(struct web_conn *c)
{
    struct web_server *s = c->srv;
    struct shm_worker *st = s->cfg.stats;

    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    c->refs = 2; /* socket and timer */
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    if (st) {
        atomic_fetch_add_explicit(&st->http_open, 1, memory_order_relaxed);
        shm_count(&st->counters.http_accepted, 1);
    }
    c->deadline_ms = uv_now(s->loop) + s->cfg.limits.header_timeout_ms;
    conn_arm_timer(c);
    s->io->read_start(c);
}

/* ---- backend callbacks --------------------------------------------------------------- */

static bool conn_discarding(const struct web_conn *c)
{
    return (c->flags & (WEB_CF_CLOSE_AFTER | WEB_CF_LINGER | WEB_CF_CLOSING)) != 0;
}

void web_conn_read_space(struct web_conn *c, char **buf, size_t *len)
{
    if (conn_discarding(c) || c->in_pos == c->in_len) {
        c->in_pos = c->in_len = 0;
    } else if (c->in_pos > 0) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    *buf = c->in + c->in_len;
    *len = c->in_cap - c->in_len;
    if (*len == 0 && !(c->flags & WEB_CF_READ_OFF)) {
        /* Full behind a busy request: the backend stops reading (not from here: libuv
         * forbids uv_read_stop inside alloc_cb); conn_settle restarts it. */
        c->flags |= WEB_CF_READ_OFF;
    }
}

void web_conn_on_read(struct web_conn *c, size_t n)
{
    if (c->flags & WEB_CF_CLOSING)
        return;
    c->flags |= WEB_CF_SEEN_BYTES;
    if (conn_discarding(c))
        return;
    c->in_len += n;
    conn_process(c);
}

void web_conn_on_data(struct web_conn *c, const char *data, size_t n)
{
    if (c->flags & WEB_CF_CLOSING)
        return;
    c->flags |= WEB_CF_SEEN_BYTES;
    if (conn_discarding(c))
        return;
    if (c->in_pos == c->in_len) {
        c->in_pos = c->in_len = 0;
    } else if (c->in_pos > 0 && c->in_cap - c->in_len < n) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    if (c->in_cap - c->in_len < n) {
        /* Only behind a busy request (a recv completed before reading could stop). */
        size_t cap = c->in_cap * 2;
        char *p;
        while (cap - c->in_len < n)
            cap *= 2;
        p = realloc(c->in, cap);
        if (!p) {
            conn_close(c);
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, n);
    c->in_len += n;
    conn_process(c);
    if (!(c->flags & (WEB_CF_CLOSING | WEB_CF_READ_OFF)) && conn_blocked(c) &&
        c->in_len - c->in_pos >= CONN_IN_CAP) {
        c->flags |= WEB_CF_READ_OFF;
        c->srv->io->read_stop(c);
    }
}

void web_conn_on_eof(struct web_conn *c)
{
    if (c->flags & WEB_CF_CLOSING)
        return;
    c->flags |= WEB_CF_EOF;
    if (c->flags & WEB_CF_LINGER) {
        conn_close(c);
        return;
    }
    conn_process(c);
}

void web_conn_on_error(struct web_conn *c, int err)
{
    conn_close(c);
}

void web_conn_on_write_done(struct web_conn *c, int status)
{
    c->flags &= ~WEB_CF_WRITING;
    buf_reset(&c->wout);
    if (c->flags & WEB_CF_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->phase == WEB_PHASE_IDLE)
        c->deadline_ms = uv_now(c->srv->loop) + c->srv->cfg.limits.idle_timeout_ms;
    if (c->out.len == 0 && c->phase == WEB_PHASE_IDLE && c->body.cap > CONN_BUF_KEEP)
        buf_reset(&c->body);
    conn_process(c);
}

void web_conn_on_closed(struct web_conn *c)
{
    conn_unref(c);
}

/* ---- for the server (http_server.c) -------------------------------------------------- */

void web_conn_parser_settings(llhttp_settings_t *settings)
{
    llhttp_settings_init(settings);
    settings->on_message_begin = on_message_begin;
    settings->on_url = on_url;
    settings->on_url_complete = on_url_complete;
    settings->on_header_field = on_header_field;
    settings->on_header_field_complete = on_header_field_complete;
    settings->on_header_value = on_header_value;
    settings->on_header_value_complete = on_header_value_complete;
    settings->on_headers_complete = on_headers_complete;
    settings->on_body = on_body;
    settings->on_chunk_extension_name = on_chunk_extension;
    settings->on_chunk_extension_value = on_chunk_extension;
    settings->on_message_complete = on_message_complete;
}

void web_conn_drain(struct web_conn *c)
{
    if (c->flags & WEB_CF_CLOSING)
        return;
    if (c->phase == WEB_PHASE_IDLE && c->in_pos == c->in_len && !(c->flags & WEB_CF_WRITING) &&
        c->out.len == 0) {
        /*
         * Idle keep-alive: closed after a short grace, not at once. A busy client's next
         * request is usually on its way already; closing under it would fail it. During the
         * grace that request is answered with Connection: close instead.
         */
        uint64_t grace = uv_now(c->srv->loop) + DRAIN_IDLE_GRACE_MS;
        if (grace < c->deadline_ms)
            c->deadline_ms = grace;
        conn_arm_timer(c);
        return;
    }
    conn_settle(c);
}
