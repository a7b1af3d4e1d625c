/*
 * pgcorral's plugin API: the only header a plugin includes. A plugin is a shared object
 * that defines pgc_plugin_init(), which registers job tasks and HTTP routes. Handlers are
 * ordinary blocking C run on a worker thread with a database connection already checked
 * out for them; every pgc_ function below may be called from a handler's thread.
 *
 *   #include "pgcorral.h"
 *
 *   static int hello(struct pgc_ctx *ctx, const struct pgc_job *job)
 *   {
 *       return pgc_exec(ctx, "INSERT INTO greetings DEFAULT VALUES", NULL);
 *   }
 *
 *   int pgc_plugin_init(struct pgc_registry *reg)
 *   {
 *       return pgc_register_task(reg, "hello", hello, 0);
 *   }
 *
 * Build: cc -shared -fPIC $(pkg-config --cflags pgcorral) -o hello.so hello.c once pgcorral
 * is installed (`make install`), or with -I PGCORRAL/runtime from a source tree. Nothing to
 * link: the pgc_ symbols resolve against the pgcorral binary when it loads the plugin. The
 * header needs only the C standard library's headers, and compiles as C99 or later and as
 * C++.
 *
 * Strings returned by accessors are borrowed: valid until the handler returns unless a
 * function says otherwise. Functions that can fail return 0 or a negative PGC_E* code.
 */
#ifndef PGCORRAL_H
#define PGCORRAL_H

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever a change to this header breaks plugins built against the old one. */
#define PGC_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Every plugin carries the ABI version it was compiled against; the loader refuses a
 * plugin whose version differs from its own, or that has none. This weak definition puts
 * it in every plugin that includes this header (define PGC_NO_ABI_STAMP to leave it out).
 */
#if !defined(PGC_NO_ABI_STAMP) && !defined(PGC_HOST)
#ifdef __cplusplus
/* C++ gives a const at namespace scope internal linkage unless its definition says extern. */
__attribute__((weak, visibility("default"))) extern const unsigned pgc_plugin_abi = PGC_ABI_VERSION;
#else
__attribute__((weak, visibility("default"))) extern const unsigned pgc_plugin_abi;
__attribute__((weak, visibility("default"))) const unsigned pgc_plugin_abi = PGC_ABI_VERSION;
#endif
#endif

/* ---- errors -------------------------------------------------------------------------- */

#define PGC_EFAIL (-1)       /* the handler failed on purpose (pgc_fail) */
#define PGC_ENOENT (-2)      /* no such thing: cache miss, missing payload field */
#define PGC_ENOMEM (-12)     /* out of memory */
#define PGC_EINVAL (-22)     /* bad argument, or a call where it is not allowed */
#define PGC_ETIMEOUT (-1101) /* no connection within pool_timeout (transient) */
#define PGC_ECONN                                                                                  \
    (-1103)                  /* could not connect, the connection was lost, or the database is     \
                                unreachable and the pool refused at once (transient) */
#define PGC_ESQL (-1105)     /* the server reported an error: see pgc_error_sqlstate() */
#define PGC_EDISCARD (-1201) /* the handler gave its job up for good (pgc_discard) */
#define PGC_ESNOOZE (-1202)  /* the handler put its job off (pgc_snooze) */

struct pgc_ctx;      /* one run of a handler */
struct pgc_registry; /* what pgc_plugin_init registers into */
struct pgc_job;      /* the job a task handler runs */
struct pgc_request;  /* the HTTP request a route handler answers */
struct pgc_response; /* its response, built by the handler */
struct pgc_result;   /* the rows of one statement */

/* ---- registration (only inside pgc_plugin_init) --------------------------------------- */

/*
 * Runs one job. Returns 0 when the job is done (deleted, or kept as completed with
 * --keep-completed), anything else when it failed: the job is retried with exponential
 * backoff until its max_attempts, then kept as failed, with pgc_error_message() as its
 * last_error. Two returns mean something else: pgc_discard's (failed at once, never
 * retried) and pgc_snooze's (run again later, the attempt not counted). A job whose cancel
 * was asked (pgc_cancelled) ends as cancelled whatever the handler returned.
 */
typedef int (*pgc_task_fn)(struct pgc_ctx *ctx, const struct pgc_job *job);

/*
 * Answers one request by filling res. A non-zero return without a status set answers
 * 500 with pgc_error_message() as {"error": ...}.
 */
typedef int (*pgc_route_fn)(struct pgc_ctx *ctx, const struct pgc_request *req,
                            struct pgc_response *res);

/*
 * Defined by the plugin: registers its tasks and routes. Returns 0, or non-zero to stop
 * start-up (the loader names the plugin). Runs once per process that loads the plugin:
 * the supervisor (to check it) and each worker, after fork. No database access here.
 */
int pgc_plugin_init(struct pgc_registry *reg);

/*
 * Registers task name (copied; e.g. "order.create") with its handler. timeout_ms > 0: a
 * run that takes longer fails (and is retried) and the worker is replaced, as a thread
 * cannot be stopped safely; 0 = the worker's default (none unless configured). Returns 0,
 * or PGC_EINVAL for an empty name or a name some loaded plugin already registered (start-up
 * then fails naming both plugins).
 */
int pgc_register_task(struct pgc_registry *reg, const char *name, pgc_task_fn fn, int timeout_ms);

/* The route is read-only: it runs on a connection of the replica pool
 * (DATABASE_REPLICA_URL) when there is one, on the primary otherwise. */
#define PGC_ROUTE_READONLY 1u

/*
 * The handler waits only in pgc_ calls: it runs on the worker's event loop (on a fiber with
 * a 256 KiB stack of its own) instead of a thread, and each statement suspends it until its
 * result is in, so a request costs no thread hand-offs (README "Routes on the loop": 1.6x
 * the requests per second of the same handler on a thread, in bench-http). Its statements
 * are those that leave no session state (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES,
 * TABLE, MERGE; auto-pipelined with the worker's other queries); pgc_tx, SET, BEGIN and the
 * like fail with PGC_EINVAL. Anything else that blocks (sleep, files, other network calls,
 * a long computation) stops every request of the worker meanwhile: such a handler must not
 * have this flag.
 */
#define PGC_ROUTE_ON_LOOP 2u

/*
 * Registers an HTTP route: method ("GET", "POST", ...) and path ("/api/v1/products";
 * a segment ":name" matches any one segment, read with pgc_req_param). flags: 0,
 * PGC_ROUTE_READONLY, PGC_ROUTE_ON_LOOP or both. Returns 0, or PGC_EINVAL for a malformed
 * method or path, or a method and path already registered.
 */
int pgc_register_route(struct pgc_registry *reg, const char *method, const char *path,
                       pgc_route_fn fn, unsigned flags);

/* ---- database ------------------------------------------------------------------------ */

/*
 * Runs one statement on the handler's connection, with text parameters values[0..n)
 * (NULL = SQL NULL) bound to $1..$n. Slow statements are logged; errors are classified.
 * Outside pgc_tx, a statement that failed with a serialization failure or deadlock (it
 * was rolled back, so it is safe) is retried with backoff. Returns 0 and, when res is not
 * NULL, *res (free with pgc_result_free); or PGC_ESQL / PGC_ECONN / PGC_ETIMEOUT with
 * pgc_error_message() and pgc_error_sqlstate() set.
 *
 * Route handlers on the primary with auto-pipelining (pipeline_depth > 0) start without a
 * connection: a statement whose first word is SELECT, INSERT, UPDATE, DELETE, WITH, VALUES,
 * TABLE or MERGE runs on the worker's loop and may share a busy connection with other
 * requests' statements, each with its own result and errors. Any other statement, or
 * pgc_tx, first gets the handler a connection of its own for the rest of its run (so
 * BEGIN, SET, ... by hand work as before). Session state made by such a statement (a
 * session advisory lock, set_config(..., false)) does not outlive it unless the handler
 * holds a connection already: do that inside pgc_tx.
 */
int pgc_exec_params(struct pgc_ctx *ctx, const char *sql, int n, const char *const *values,
                    struct pgc_result **res);

/* pgc_exec_params without parameters. */
int pgc_exec(struct pgc_ctx *ctx, const char *sql, struct pgc_result **res);

/*
 * pgc_exec_params on the replica pool (DATABASE_REPLICA_URL), or on the handler's own
 * connection when there is no replica or the handler is a read-only route already. Never
 * inside pgc_tx (PGC_EINVAL): a transaction's reads belong to it.
 */
int pgc_exec_read(struct pgc_ctx *ctx, const char *sql, int n, const char *const *values,
                  struct pgc_result **res);

/*
 * Runs fn(ctx, arg) in a transaction on the handler's connection: BEGIN, fn, COMMIT.
 * fn uses pgc_exec* as usual and returns 0 to commit or non-zero to roll back. On a
 * transient error (serialization failure, deadlock, lost connection, ...) the whole
 * transaction is rolled back and fn runs again, after 1 s, 2 s, 4 s (3 retries), so fn
 * must not have effects outside the database it cannot repeat. Returns 0 once committed,
 * or fn's error (pgc_error_message() says why). Not nested (PGC_EINVAL).
 */
typedef int (*pgc_tx_fn)(struct pgc_ctx *ctx, void *arg);
int pgc_tx(struct pgc_ctx *ctx, pgc_tx_fn fn, void *arg);

/* Optional settings of pgc_enqueue; NULL / 0 fields take the defaults. */
struct pgc_enqueue_opts {
    const char *queue;  /* "default" */
    const char *run_at; /* ISO 8601 timestamp; now */
    int priority;       /* 0; lower runs first */
    int max_attempts;   /* 0 = 25 */
    const char *key;    /* dedupe key: while a job with it exists, nothing is added */
};

/*
 * Adds a job on the handler's connection, so inside pgc_tx it commits (and notifies the
 * job workers) with the transaction, or not at all. payload is JSON text (NULL = {}).
 * Returns 0 and *id (when id is not NULL; the existing job's id for a duplicate key), or
 * PGC_ESQL etc.; PGC_EINVAL, before any SQL, for a field over its limit (task and queue
 * 128 bytes, key 512 bytes, payload 256 KiB; pgc_error_message names it).
 */
int pgc_enqueue(struct pgc_ctx *ctx, const char *task, const char *payload,
                const struct pgc_enqueue_opts *opts, int64_t *id);

/* Rows and columns of a result. */
int pgc_nrows(const struct pgc_result *r);
int pgc_ncols(const struct pgc_result *r);
/* The text of a value, NULL for SQL NULL or out of range. Borrowed from r. */
const char *pgc_value(const struct pgc_result *r, int row, int col);
/* A column's name, NULL when out of range. Borrowed from r. */
const char *pgc_colname(const struct pgc_result *r, int col);
/* Rows an INSERT / UPDATE / DELETE changed (or a SELECT returned). */
long long pgc_affected(const struct pgc_result *r);
/* pgc_result_free(NULL) does nothing. */
void pgc_result_free(struct pgc_result *r);

/* ---- errors of the last failed call -------------------------------------------------- */

/* The last error's message ("" when none). Never holds a password. Borrowed from ctx. */
const char *pgc_error_message(const struct pgc_ctx *ctx);
/* The last error's SQLSTATE ("40P01"), "" when the server did not give one. */
const char *pgc_error_sqlstate(const struct pgc_ctx *ctx);
/* Whether retrying the last failed call later may succeed. */
int pgc_error_transient(const struct pgc_ctx *ctx);

/* Records why the handler fails (printf-style); returns PGC_EFAIL, for `return pgc_fail(..)`.
 * The job is retried with backoff: for what may work later (a service that is down). */
int pgc_fail(struct pgc_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * For a job that can never succeed (a payload that will not get better): records why
 * (printf-style) and returns PGC_EDISCARD, for `return pgc_discard(ctx, ...)`. When the task
 * handler returns it (also through pgc_tx, which rolls back first), the job is failed at
 * once and for good, with the message as its last_error, whatever attempts it has left.
 * Only in a task handler: elsewhere it returns PGC_EINVAL.
 */
int pgc_discard(struct pgc_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The longest pgc_snooze: 7 days. */
#define PGC_SNOOZE_MAX_S (7 * 24 * 3600)

/*
 * For a job that should run again later (a rate limit's window, something not ready yet):
 * returns PGC_ESNOOZE, for `return pgc_snooze(ctx, seconds)`. When the task handler returns
 * it (also through pgc_tx, which rolls back first), the job is scheduled to run again
 * seconds from now (0: as soon as a worker is free), without counting this run as an
 * attempt and with its last_error unchanged. Only in a task handler, seconds from 0 to
 * PGC_SNOOZE_MAX_S: otherwise it returns PGC_EINVAL (and the job, if the handler returns
 * that, is retried as failed).
 */
int pgc_snooze(struct pgc_ctx *ctx, int seconds);

/* ---- cache --------------------------------------------------------------------------- */

/*
 * The worker process's TTL cache, shared by all its handlers (not between workers).
 * pgc_cache_get copies the value for key into a new buffer (NUL-terminated after len bytes;
 * free with pgc_free): 0, or PGC_ENOENT when absent or expired. pgc_cache_set stores a copy
 * for ttl_s seconds (> 0), evicting the least recently used entries beyond the cache's
 * size: 0, PGC_EINVAL or PGC_ENOMEM.
 */
int pgc_cache_get(struct pgc_ctx *ctx, const char *key, char **value, size_t *len);
int pgc_cache_set(struct pgc_ctx *ctx, const char *key, const void *value, size_t len, int ttl_s);
void pgc_free(void *p);

/* ---- log ----------------------------------------------------------------------------- */

enum pgc_log_level { PGC_LOG_DEBUG = 0, PGC_LOG_INFO, PGC_LOG_WARN, PGC_LOG_ERROR };

/* One log line (JSON by default) with the plugin, and the job id or route, as fields. */
void pgc_log(struct pgc_ctx *ctx, enum pgc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- jobs ---------------------------------------------------------------------------- */

int64_t pgc_job_id(const struct pgc_job *job);
const char *pgc_job_task(const struct pgc_job *job);
const char *pgc_job_queue(const struct pgc_job *job);
/* The payload as JSON text ("{}" when none). */
const char *pgc_job_payload(const struct pgc_job *job);
/* The dedupe key, or NULL. */
const char *pgc_job_key(const struct pgc_job *job);
/* This run's attempt number (1 for the first run) and the job's limit. */
int pgc_job_attempt(const struct pgc_job *job);
int pgc_job_max_attempts(const struct pgc_job *job);
int pgc_job_priority(const struct pgc_job *job);

/*
 * A top-level field of an object payload: pgc_job_arg_int writes an integer field into
 * *out and returns 0, PGC_ENOENT when absent, or PGC_EINVAL when it is not an integer.
 * pgc_job_arg_str returns a string field, or NULL when absent or not a string.
 */
int pgc_job_arg_int(const struct pgc_job *job, const char *field, long long *out);
const char *pgc_job_arg_str(const struct pgc_job *job, const char *field);

/*
 * Whether a cancel of the running job was asked (`pgcorral jobs cancel ID`, POST
 * /api/v1/jobs/ID/cancel, pgcorral.cancel_job): a long handler checks now and then and
 * returns early. The job then ends as cancelled, whatever the handler returns. Asks the
 * database on the handler's connection at most every PGC_CANCEL_CHECK_MS (in between, the
 * last answer); once 1, always 1. Returns 1 or 0 (also in a route handler, or when the
 * question fails: an aborted transaction, a lost connection). Handler thread.
 */
#define PGC_CANCEL_CHECK_MS 200
int pgc_cancelled(struct pgc_ctx *ctx);

/* ---- HTTP requests and responses ----------------------------------------------------- */

const char *pgc_req_method(const struct pgc_request *req);
/* The path without the query string ("/api/v1/products"). */
const char *pgc_req_path(const struct pgc_request *req);
/* The raw query string without '?' ("" when none). */
const char *pgc_req_query(const struct pgc_request *req);
/* A header's value by name (any case), or NULL. */
const char *pgc_req_header(const struct pgc_request *req, const char *name);
/* The body and its length (not NUL-terminated; NULL and 0 when empty). */
const char *pgc_req_body(const struct pgc_request *req, size_t *len);
/* The value of path segment ":name" of the matched route, or NULL. */
const char *pgc_req_param(const struct pgc_request *req, const char *name);
/*
 * Query parameter name, percent-decoded into buf (size bytes, NUL-terminated). Returns its
 * length, PGC_ENOENT when absent, or PGC_EINVAL when it does not fit.
 */
int pgc_req_query_param(const struct pgc_request *req, const char *name, char *buf, size_t size);

/* Sets the status (200 unless set). */
void pgc_res_status(struct pgc_response *res, int status);
/* Adds a header (copied). Returns 0, PGC_EINVAL (CR or LF in it) or PGC_ENOMEM. */
int pgc_res_header(struct pgc_response *res, const char *name, const char *value);
/* Sets the body (copied; replaces an earlier one). Returns 0 or PGC_ENOMEM. */
int pgc_res_body(struct pgc_response *res, const void *data, size_t len);
/* Status, "Content-Type: application/json" and the body json (a NUL-terminated string). */
int pgc_res_json(struct pgc_response *res, int status, const char *json);

#ifdef __cplusplus
}
#endif

#endif
