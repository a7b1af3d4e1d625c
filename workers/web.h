/*
 * The web worker's internals, shared by workers/web.c, http_server.c (the server: backend
 * choice, start, drain, stop), http_conn.c (the connection core: parsing, limits,
 * responses, timeouts), http_routes.c, io_epoll.c and io_uring.c (and the t30x tests): the
 * HTTP/1.1 server that runs on one libuv loop and serves one inherited listening socket,
 * its limits, its request and route types, and the interface between the connection core
 * and the two I/O backends.
 *
 *   struct web_server  (one per worker)
 *     listener          epoll: uv_tcp_t; uring: multishot accept
 *     conns             every connection, open or closing, until it is freed
 *
 *   struct web_conn    (one per accepted socket; buffers allocated once, reused)
 *     in[]              bytes read and not yet parsed (requests pipelined behind a busy one)
 *     hs[]              the current request's URL and headers, copied and NUL-terminated
 *     body              the current request's body (grows up to max_body_bytes, kept)
 *     out, wout         responses being built / being written (double buffer)
 *
 * One request per connection is handled at a time: llhttp pauses after each message, the
 * route answers (at once or later, on the loop), and parsing resumes, so pipelined
 * requests are answered in order.
 */
#ifndef PGCORRAL_WEB_H
#define PGCORRAL_WEB_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/rt_id.h"
#include "runtime/rt_util.h"
#include "shm/shm.h"
#include "workers/workers.h"

struct rt_pool;
struct pgc_registry;
struct plugin_env;

/* The role's hooks; worker.c returns them for SHM_ROLE_WEB. */
extern const struct worker_role_ops web_role_ops;

/* ---- configuration ------------------------------------------------------------------- */

/* Limits of one connection. web_limits_default() fills the defaults given here. */
struct web_limits {
    size_t max_header_bytes;    /* request line + headers; 8192; over it: 431 */
    size_t max_body_bytes;      /* decoded body (+ chunk extensions, trailers); 1 MiB; 413 */
    unsigned max_requests;      /* per connection; 1000; the last answer says Connection: close */
    unsigned header_timeout_ms; /* first byte to end of headers; 10000; 408 */
    unsigned body_timeout_ms;   /* end of headers to end of body; 30000; 408. Also bounds a
                                   response the client does not read */
    unsigned idle_timeout_ms;   /* keep-alive wait for the next request; 5000; closed quietly */
    unsigned linger_ms;         /* after the last answer, read and discard up to this long
                                   before closing, so that the client sees the answer
                                   and not a reset; 2000 */
};

void web_limits_default(struct web_limits *l);

enum web_io_mode { WEB_IO_AUTO = 0, WEB_IO_URING, WEB_IO_EPOLL };

/* "auto", "uring" or "epoll" (NULL = auto). Returns 0 and writes *out, or -EINVAL. */
__attribute__((warn_unused_result)) int web_io_mode_parse(const char *s, enum web_io_mode *out);

struct web_conn;
struct web_request;

/* A route handler: must call web_respond(c, ...) exactly once, before it returns or later
 * on the loop thread. req stays valid (and unchanged) until then. */
typedef void (*web_handler_fn)(struct web_conn *c, const struct web_request *req);

/* One entry of a route table. */
struct web_route {
    int method;       /* llhttp_method_t: HTTP_GET, HTTP_POST, ... (GET also answers HEAD) */
    const char *path; /* exact path, without query string; or "/prefix/" then '*': any
                         longer path under /prefix/ */
    web_handler_fn handler;
};

/* Which routes a listener serves (--admin-listen splits them over two listeners). */
enum web_route_set {
    WEB_ROUTES_ALL = 0, /* every route: the only listener */
    WEB_ROUTES_PUBLIC,  /* plugin routes, /api/v1/ping, /api/v1/health; the rest 404 */
    WEB_ROUTES_ADMIN,   /* /metrics, /api/v1/stats, the jobs routes; the rest 404 */
};

struct web_access_log;

struct web_server_config {
    int listen_fd; /* a listening socket; the server closes its copy when it drains */
    enum web_io_mode io;
    struct web_limits limits;
    struct shm_segment *seg;        /* for /api/v1/stats and /metrics; NULL: those answer 503 */
    struct shm_worker *stats;       /* HTTP counters, histogram, http_open; NULL: not counted */
    struct rt_pool *pool;           /* for /api/v1/health; NULL: health answers 503 */
    unsigned health_timeout_ms;     /* /api/v1/health answers 503 ("database":"timeout") when
                                       the check takes longer; 0 = 2000 */
    const struct web_route *routes; /* extra routes, looked at before the built-in ones */
    size_t nroutes;
    const struct pgc_registry *plugins; /* plugin routes, looked at after the built-in ones;
                                           NULL: none */
    struct plugin_env *plugin_env;      /* what plugin route handlers run with; needed
                                           when plugins is set */
    bool test_no_accept;          /* test hook (PGCORRAL_TEST_STOP_ACCEPT, workers/web.c): never
                                     accept; the loop runs on, connections queue on the socket */
    enum web_route_set route_set; /* WEB_ROUTES_ALL unless there is an admin listener */
    const char *api_token;        /* PGCORRAL_API_TOKEN: the admin routes (and POST /api/v1/jobs)
                                     want "Authorization: Bearer TOKEN"; NULL = open. Borrowed */
    struct web_access_log *access_log; /* one line per answer; NULL = none. Borrowed */
    const char *name; /* "admin" for the admin listener (in log lines); NULL = the public */
};

/* ---- server -------------------------------------------------------------------------- */

struct web_server;

/*
 * Creates a server on loop and starts accepting on cfg->listen_fd with the backend that
 * cfg->io asks for (auto: io_uring when the kernel has what it needs, else epoll; the
 * choice is logged). Returns 0 and writes *out, or -EINVAL (listen_fd is not a listening
 * socket), -ENOSYS (io_uring asked for and not usable), -ENOMEM, or a negative
 * libuv/errno error. The server owns its copy of listen_fd from then on (closed when it
 * drains). cfg is copied; routes, seg, stats and pool are borrowed and must outlive the
 * server. Loop thread.
 */
__attribute__((warn_unused_result)) int web_server_create(struct web_server **out, uv_loop_t *loop,
                                                          const struct web_server_config *cfg);

/* "uring" or "epoll": the backend in use. Static string. */
const char *web_server_io_name(const struct web_server *s);

/*
 * Drains: stops accepting (closes the server's copy of the listening socket), closes idle
 * keep-alive connections, answers the requests in flight and those already received
 * (the last answer on each connection says Connection: close), closes the rest, and
 * releases every handle the server owns. Then done(s, arg) runs on the loop; the caller
 * then frees s with web_server_destroy(). Called once. Loop thread.
 */
void web_server_drain(struct web_server *s, void (*done)(struct web_server *s, void *arg),
                      void *arg);

/* Frees a drained server. web_server_destroy(NULL) does nothing. */
void web_server_destroy(struct web_server *s);

/* Connections open now (accepted and not yet freed). */
unsigned web_server_conn_count(const struct web_server *s);

/* ---- requests and responses (route handlers) ----------------------------------------- */

struct web_header {
    const char *name; /* NUL-terminated, as the client spelled it */
    const char *value;
    size_t name_len, value_len;
};

#define WEB_MAX_HEADERS 64

/* The request a handler answers. Every pointer points into the connection's buffers. */
struct web_request {
    int method;       /* llhttp_method_t */
    const char *path; /* NUL-terminated, no query */
    size_t path_len;
    const char *query; /* after '?', NUL-terminated; "" when none */
    const struct web_header *headers;
    unsigned nheaders;
    const char *body; /* NULL when empty; not NUL-terminated */
    size_t body_len;
    uint64_t start_ns; /* uv_hrtime() at the request's first byte */
    /* The client's X-Request-Id when valid (rt_request_id_valid), else one made up; also
     * sent back as X-Request-Id. NUL-terminated. */
    const char *request_id;
    size_t request_id_len;
};

/* The value of header name (case-insensitive), or NULL. Borrowed, like req. */
const char *web_request_header(const struct web_request *req, const char *name);

/*
 * Answers the request being handled on c: status line, Date, Content-Type (when
 * content_type is not NULL), Content-Length, Connection when needed, extra_headers
 * verbatim (each line ending in "\r\n"; may be NULL), then len bytes of body (left out
 * for HEAD). The bytes are copied. Counts the answer in the worker's shm stats. If the
 * connection closed meanwhile, the answer is dropped. Loop thread; exactly once per
 * handled request.
 */
void web_respond(struct web_conn *c, int status, const char *content_type,
                 const char *extra_headers, const void *body, size_t len);

/* web_respond with a JSON body {"error": msg} (msg must need no JSON escaping); a 5xx is
 * answered by web_respond_failure (with an error id and a log line). */
void web_respond_error(struct web_conn *c, int status, const char *msg, const char *extra_headers);

/*
 * Answers a failure (5xx) without its details: the body is {"error": public_msg, "error_id":
 * ID} with a new random ID, and one error line goes to the log with the same error_id, the
 * request's route, method, path and request id, detail (the full reason: database text,
 * host names...; may be NULL) and fields (a JSON object taken over; may be NULL). The
 * client learns nothing about the database; the operator finds the line by the id.
 */
void web_respond_failure(struct web_conn *c, int status, const char *public_msg, const char *detail,
                         json_t *fields, const char *extra_headers);

/*
 * The route pattern the request matched, for metrics and failure logs ("/api/v1/jobs/:id",
 * a plugin's "/v/items/:id"); a static string or one that lives as long as the process.
 * Set by the dispatcher before the handler runs; "unmatched" when no route answers.
 */
void web_conn_set_route(struct web_conn *c, const char *pattern);

/* The server a connection belongs to (for its config: seg, pool). */
struct web_server *web_conn_server(const struct web_conn *c);
const struct web_server_config *web_server_config(const struct web_server *s);

/* Writes s JSON-escaped (the inside of a string) into out: n bytes, NUL-terminated, cut
 * when too long. */
void web_json_escape(char *out, size_t n, const char *s);

/* Reason phrase of a status code ("Not Found"); "Unknown" for codes we never send. */
const char *web_status_reason(int status);

/* ---- routes (http_routes.c) ---------------------------------------------------------- */

/* Finds the handler for req in the server's extra routes, then the built-in table, then
 * the plugins' routes (run on a threadpool thread with a borrowed connection), and runs
 * it; 404 for an unknown path, 405 with Allow for a known path and another method. */
void web_routes_dispatch(struct web_conn *c, const struct web_request *req);

/* Per-server state of the routes (free lists of async requests). */
__attribute__((warn_unused_result)) int web_routes_init(struct web_server *s);
void web_routes_fini(struct web_server *s);

/* ---- access log (access_log.c) -------------------------------------------------------- */

/* One answered request, as the access log writes it. Strings are borrowed for the call. */
struct web_access_entry {
    const char *method;
    const char *path; /* without the query string; path_len bytes */
    size_t path_len;
    int status;
    size_t bytes;         /* body bytes sent */
    uint64_t duration_us; /* the request's first byte to the answer */
    const char *request_id;
    size_t request_id_len;
};

/*
 * Opens the access log of one web worker: path ("-" or NULL = stderr), appended to and
 * created 0640; starts its writer thread. worker is the web worker's index (each line's
 * "worker"); stats (may be NULL) counts dropped lines. Returns 0 and writes *out, or
 * -errno (logged). Loop thread.
 */
__attribute__((warn_unused_result)) int web_access_log_open(struct web_access_log **out,
                                                            uv_loop_t *loop, const char *path,
                                                            int worker, struct shm_worker *stats);

/*
 * Adds one line {"ts","method","path","status","bytes","duration_ms","request_id","worker"}.
 * Never blocks and never allocates: lines wait in a bounded buffer that a thread writes in
 * batches (at 64 KiB, or 100 ms after a batch's first line); when the buffer is full
 * because the file does not keep up, the line is dropped and counted. Loop thread.
 */
void web_access_log_line(struct web_access_log *al, const struct web_access_entry *e);

/* Reopens the file (after rotation: SIGUSR1) before the next batch. NULL does nothing.
 * Loop thread. */
void web_access_log_reopen(struct web_access_log *al);

/* Lines dropped so far. */
uint64_t web_access_log_dropped(const struct web_access_log *al);

/* Writes what is buffered, stops the writer and frees al (once its timer has closed).
 * NULL does nothing. Loop thread. */
void web_access_log_close(struct web_access_log *al);

/* ===== below: the connection core and the backends; not for route handlers ============ */

/* An io_uring operation's identity in user_data: what kind, and for whom. */
enum web_uring_op_kind { WEB_UOP_ACCEPT = 1, WEB_UOP_RECV, WEB_UOP_SEND, WEB_UOP_CLOSE };
struct web_uring_op {
    enum web_uring_op_kind kind;
    void *owner; /* struct web_server (accept) or struct web_conn */
};

/* Which timeout the connection's timer stands for. */
enum web_timer_kind {
    WEB_TIMER_NONE = 0,
    WEB_TIMER_IDLE,    /* keep-alive wait: close quietly */
    WEB_TIMER_FIRST,   /* new connection, nothing received: header timeout, close quietly */
    WEB_TIMER_HEADERS, /* 408 */
    WEB_TIMER_BODY,    /* 408 */
    WEB_TIMER_SEND,    /* the client does not read our answer: abort */
    WEB_TIMER_LINGER,  /* lingering close: close */
};

/* Where the parser is in the current request's head (llhttp's callbacks). */
enum web_hdr_state {
    WEB_HDR_URL = 0, /* in the request target */
    WEB_HDR_FIELD,   /* in a header name */
    WEB_HDR_VALUE,   /* in a header value */
    WEB_HDR_BETWEEN, /* after the request target or a header value, before the next name */
};

/* How the current header value arrived so far: llhttp hands a value over in spans, one
 * per buffer it was given; a second span is only legal as the continuation of one that
 * ran to the end of its buffer. */
enum web_value_span {
    WEB_SPAN_NONE = 0, /* no span yet */
    WEB_SPAN_TO_END,   /* a span ran to the end of its buffer */
    WEB_SPAN_ENDED,    /* a span ended inside its buffer: the value is over */
};

/* Where the connection is in its current request. */
enum web_phase {
    WEB_PHASE_IDLE = 0, /* between requests */
    WEB_PHASE_HEADERS,  /* request line and headers arriving */
    WEB_PHASE_BODY,     /* headers complete, body arriving */
    WEB_PHASE_HANDLING, /* the route runs; parsing is paused */
};

/* Connection flags (struct web_conn.flags). */
#define WEB_CF_WRITING 0x01u      /* a write is in flight (wout) */
#define WEB_CF_CLOSE_AFTER 0x02u  /* the last answer is queued: flush, then close */
#define WEB_CF_CLOSING 0x04u      /* the backend is closing the socket */
#define WEB_CF_EOF 0x08u          /* the client shut down its side */
#define WEB_CF_LINGER 0x10u       /* shut down our side; discarding input until EOF */
#define WEB_CF_READ_OFF 0x20u     /* reading paused: input buffer full behind a busy request */
#define WEB_CF_PROCESSING 0x40u   /* inside conn_process (re-entrancy guard) */
#define WEB_CF_SEEN_BYTES 0x80u   /* at least one byte received on this connection */
#define WEB_CF_KEEPALIVE10 0x100u /* HTTP/1.0 client that asked for keep-alive */
#define WEB_CF_HEAD 0x200u        /* current request is HEAD */
#define WEB_CF_CLOSE_RESP 0x400u  /* current request's answer closes the connection */

struct web_conn {
    struct web_server *srv;
    struct web_conn *prev, *next; /* srv->conns */
    int refs;                     /* socket + timer + a route holding the request; freed at 0 */

    union {
        struct {
            uv_tcp_t tcp;
            uv_write_t wreq;
            uv_shutdown_t sreq;
        } ep;
        struct {
            int fd;
            bool recv_armed;      /* a multishot recv is active */
            bool want_read;       /* core wants input; re-arm when the recv ends */
            bool send_busy;       /* a send is in flight */
            bool closing;         /* the core closed it: cancel, then IORING_OP_CLOSE */
            bool close_queued;    /* the IORING_OP_CLOSE is submitted */
            const char *send_ptr; /* unsent rest of wout */
            size_t send_left;
            struct web_uring_op recv_op, send_op, close_op;
        } ur;
    } io;

    uv_timer_t timer;
    enum web_timer_kind timer_kind;
    uint64_t timer_at;         /* uv_now() the timer is armed for */
    uint64_t deadline_ms;      /* uv_now() at which the current phase times out */
    uint64_t send_deadline_ms; /* uv_now() by which the write in flight must be done */

    llhttp_t parser;
    enum web_phase phase;
    unsigned flags;
    unsigned nreq;  /* requests answered or being answered */
    int err_status; /* set by a parser callback that rejects the request */
    const char *err_msg;

    /* input */
    char *in;
    size_t in_pos, in_len, in_cap;
    const char *exec_start; /* the buffer given to the current llhttp_execute */
    const char *exec_end;
    size_t hdr_bytes;  /* bytes of the current request's head so far */
    size_t body_bytes; /* body + chunk extension + trailer bytes so far */

    /* head of the current request: hs holds URL and headers, NUL-separated */
    char *hs;
    size_t hs_len, hs_cap;
    size_t url_off;
    enum web_hdr_state hdr_state;
    enum web_value_span value_span; /* of the current header's value */
    struct web_header hdrs[WEB_MAX_HEADERS];
    unsigned nhdrs;
    struct rt_buf body;
    struct web_request req;
    const char *route;               /* web_conn_set_route; NULL = none yet */
    char rid[RT_REQUEST_ID_MAX + 1]; /* the request id (req.request_id) */
    size_t rid_len;                  /* 0: none yet */

    struct rt_buf out, wout;
};

/* The backend of a server: how sockets are accepted, read, written and closed. */
struct web_io_ops {
    const char *name;
    /* Starts accepting on s->listen_fd. Returns 0 or a negative error. */
    int (*listen_start)(struct web_server *s);
    /* Stops accepting and closes the listener; then calls web_server_listener_closed(). */
    void (*listen_stop)(struct web_server *s);
    void (*read_start)(struct web_conn *c);
    void (*read_stop)(struct web_conn *c);
    /* Writes c->wout; web_conn_on_write_done() later, never before this returns. */
    void (*write)(struct web_conn *c);
    /* Sends FIN once the write in flight (if any) is done. */
    void (*shutdown)(struct web_conn *c);
    /* Closes the socket; web_conn_on_closed() later, once no operation refers to c. */
    void (*close)(struct web_conn *c);
    /* Handles completions that are ready now (drain looks at every connection after it). */
    void (*poll_now)(struct web_server *s);
    /* Releases the backend's handles; then calls web_server_backend_closed(). */
    void (*close_backend)(struct web_server *s);
};

extern const struct web_io_ops web_io_epoll;
extern const struct web_io_ops web_io_uring;

/* io_uring backend: whether this kernel has what it needs (multishot accept and recv,
 * provided-buffer rings). Returns 0, or a negative error with the reason in why. */
int web_uring_probe(const char **why);

/* After a successful probe: whether rings use IORING_SETUP_DEFER_TASKRUN (the kernel
 * signals its eventfd at once for deferred task work and flags work it left behind). */
bool web_uring_defer_taskrun(void);

/* After a probe: why DEFER_TASKRUN is not used (a static string), or NULL when it is. */
const char *web_uring_defer_reason(void);

struct web_server {
    uv_loop_t *loop;
    struct web_server_config cfg;
    const struct web_io_ops *io;
    int listen_fd;
    void *io_state;     /* the backend's (uring: struct web_uring) */
    uv_tcp_t *listener; /* epoll backend; heap, freed in its close callback */
    bool listening;

    struct web_conn *conns;
    unsigned nconns;
    llhttp_settings_t settings;

    bool draining, backend_closing;
    void (*drain_done)(struct web_server *s, void *arg);
    void *drain_arg;
    uv_idle_t drain_idle; /* finishes a drain on the next loop turn, outside callbacks */

    char date[64]; /* "Date: ...\r\n", renewed once a second */
    uint64_t date_sec;

    void *routes_state; /* http_routes.c */
};

/* Allocates a connection for an accepted socket; the backend fills c->io, then calls
 * web_conn_start(). Returns NULL on ENOMEM (the backend closes the socket). */
struct web_conn *web_conn_new(struct web_server *s);
/* Frees a connection that web_conn_start() was never called for. */
void web_conn_discard(struct web_conn *c);
/* Counts the connection open and accepted, arms the first-request timeout and starts
 * reading. */
void web_conn_start(struct web_conn *c);

/*
 * Space for the next read: compacts the input buffer and returns its free tail in *buf,
 * *len (0 when the buffer is full behind a busy request: stop reading).
 */
void web_conn_read_space(struct web_conn *c, char **buf, size_t *len);
/* n bytes were read into the space returned by web_conn_read_space(). */
void web_conn_on_read(struct web_conn *c, size_t n);
/* n bytes were read elsewhere (an io_uring provided buffer); they are copied. */
void web_conn_on_data(struct web_conn *c, const char *data, size_t n);
void web_conn_on_eof(struct web_conn *c);
/* A read or write failed (reset by peer, ...): close without answering. */
void web_conn_on_error(struct web_conn *c, int err);
void web_conn_on_write_done(struct web_conn *c, int status);
void web_conn_on_closed(struct web_conn *c);

/* Backend callbacks of the server's own lifecycle. */
void web_server_listener_closed(struct web_server *s);
void web_server_backend_closed(struct web_server *s);

/* ---- between http_conn.c and http_server.c ----------------------------------------------- */

/* Fills settings with the connection core's llhttp callbacks. */
void web_conn_parser_settings(llhttp_settings_t *settings);
/* The server drains: an idle keep-alive connection closes after a short grace, a busy one
 * once its request is answered (Connection: close). May free c. */
void web_conn_drain(struct web_conn *c);
/* A connection was freed: once draining with no listener and no connection left, the
 * backend is released. */
void web_server_conn_gone(struct web_server *s);

#endif
