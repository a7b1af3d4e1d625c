/*
 * The implementation of pgcorral.h on top of the pool's blocking API: statements and
 * transactions on the handler's connection, replica reads (through the loop bridge of
 * plugin_bridge.c), the process's TTL cache, logging, and the accessors of jobs, requests
 * and responses.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "runtime/plugin_abi.h"
#include "runtime/plugin_int.h"
#include "runtime/rt_cache.h"
#include "runtime/rt_fiber.h"
#include "runtime/rt_id.h"
#include "runtime/rt_input.h"
#include "runtime/rt_jobq.h"
#include "runtime/rt_json.h"
#include "runtime/rt_log.h"
#include "runtime/rt_util.h"

#define CACHE_MAX_ENTRIES 10000
#define CACHE_MAX_BYTES (64u << 20)
#define STMT_RETRIES 3 /* pgc_exec outside pgc_tx: retries of a statement rolled back */

/* The process's TTL cache (pgc_cache_*), created once by plugin_api_init. */
static struct rt_cache *process_cache;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT; /* runs cache_init once */
static int cache_rc;                                  /* what cache_init returned */

static void cache_init(void)
{
    cache_rc = rt_cache_create(&process_cache, CACHE_MAX_ENTRIES, CACHE_MAX_BYTES);
}

int plugin_api_init(void)
{
    pthread_once(&cache_once, cache_init);
    return cache_rc;
}

/* pgc_ codes for the pool's codes: pgcorral.h keeps plugins off rt_pool.h. */
int plugin_error_code(int code)
{
    switch (code) {
    case 0:
        return 0;
    case RT_ESQL:
        return PGC_ESQL;
    case RT_EPOOL_TIMEOUT:
        return PGC_ETIMEOUT;
    case RT_ECONNECT:
    case RT_ECONNECT_TIMEOUT:
    case RT_ECONN_LOST:
    case RT_EDB_UNAVAILABLE:
    case RT_EPOOL_CLOSED:
        return PGC_ECONN;
    case RT_EPROTO:
        return PGC_EINVAL;
    default:
        return code < 0 ? code : PGC_EFAIL;
    }
}

void plugin_ctx_init(struct pgc_ctx *ctx, struct rt_conn *conn, struct plugin_env *env,
                     const char *plugin, const char *label)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->conn = conn;
    ctx->env = env;
    ctx->plugin = plugin;
    ctx->label = label;
}

/* What a PGC_ROUTE_ON_LOOP handler is told when it asks for a session of its own. */
#define ON_LOOP_NO_SESSION                                                                         \
    "a PGC_ROUTE_ON_LOOP handler runs statements that leave no session state (SELECT, "            \
    "INSERT, UPDATE, DELETE, WITH, VALUES, TABLE, MERGE) and no pgc_tx: register the route "       \
    "without PGC_ROUTE_ON_LOOP for transactions and session settings"

/* Sets ctx's error for a misuse; returns PGC_EINVAL. */
static int misuse(struct pgc_ctx *ctx, const char *what)
{
    if (ctx)
        rt_error_set(&ctx->err, PGC_EINVAL, NULL, "%s", what);
    return PGC_EINVAL;
}

/* ---- statements ---------------------------------------------------------------------- */

/* Whether a failed statement was certainly rolled back by the server: safe to run again. */
static bool rolled_back(const struct rt_error *err)
{
    return err->code == RT_ESQL &&
           (strcmp(err->sqlstate, "40001") == 0 || strcmp(err->sqlstate, "40P01") == 0);
}

/* One statement on conn, retried outside a transaction when it was rolled back. */
static int exec_on(struct pgc_ctx *ctx, struct rt_conn *conn, const char *sql, int n,
                   const char *const *values, struct pgc_result **res)
{
    const struct rt_retry_policy policy = RT_RETRY_DEFAULT;
    PGresult *r = NULL;
    int rc;

    for (int attempt = 0;; attempt++) {
        rc = rt_conn_exec_params(conn, sql, n, values, res ? &r : NULL, &ctx->err);
        if (rc == 0) {
            ctx->err.code = 0;
            if (res)
                *res = (struct pgc_result *)r;
            return 0;
        }
        if (ctx->in_tx || attempt >= STMT_RETRIES || !rolled_back(&ctx->err))
            return plugin_error_code(rc);
        int ms = rt_retry_delay_ms(&policy, attempt);
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
}

/* The request id of ctx's HTTP request, or NULL. */
static const char *ctx_request_id(const struct pgc_ctx *ctx)
{
    return ctx->req ? ctx->req->request_id : NULL;
}

/* A lazy handler needs a whole connection (a transaction, session state): the loop checks
 * one out and lends it to this thread for the rest of the run. Returns 0 or a pgc code
 * with ctx->err set. Handler thread. */
static int ctx_pin(struct pgc_ctx *ctx)
{
    struct rt_error err;

    if (ctx->conn)
        return 0;
    if (ctx->on_loop)
        return misuse(ctx, ON_LOOP_NO_SESSION);
    if (!ctx->lazy || !ctx->env)
        return misuse(ctx, "no connection (called outside a handler?)");
    ctx->conn = plugin_bridge_pin(ctx->env, ctx->label, &err);
    if (!ctx->conn) {
        ctx->err = err;
        return plugin_error_code(err.code ? err.code : RT_EPOOL_CLOSED);
    }
    /* Slow-query lines of its statements name the request, as for a route that got its
     * connection up front. */
    rt_conn_set_request_id(ctx->conn, ctx_request_id(ctx));
    return 0;
}

/* Runs a statement through the loop: a read on the replica (plugin_bridge_read), else on
 * the primary (plugin_bridge_exec, auto-pipelined there);
 * retried when the server rolled it back. Handler thread. */
static int exec_bridged(struct pgc_ctx *ctx, bool read, const char *sql, int n,
                        const char *const *values, struct pgc_result **res)
{
    const struct rt_retry_policy policy = RT_RETRY_DEFAULT;
    struct rt_error err;
    PGresult *r;

    for (int attempt = 0;; attempt++) {
        r = read ? plugin_bridge_read(ctx->env, ctx->label, sql, n, values, &err)
                 : plugin_bridge_exec(ctx->env, ctx->label, ctx_request_id(ctx), sql, n, values,
                                      &err);
        if (r || attempt >= STMT_RETRIES || !rolled_back(&err))
            break;
        int ms = rt_retry_delay_ms(&policy, attempt);
        if (ctx->on_loop) { /* the loop goes on meanwhile */
            rt_fiber_sleep((uint64_t)ms);
            continue;
        }
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    if (!r) {
        ctx->err = err;
        return plugin_error_code(err.code ? err.code : RT_EPOOL_CLOSED);
    }
    ctx->err.code = 0;
    if (res)
        *res = (struct pgc_result *)r;
    else
        PQclear(r);
    return 0;
}

int pgc_exec_params(struct pgc_ctx *ctx, const char *sql, int n, const char *const *values,
                    struct pgc_result **res)
{
    int rc;

    if (!ctx || (!ctx->conn && !ctx->lazy))
        return misuse(ctx, "pgc_exec: no connection (called outside a handler?)");
    if (!sql || n < 0 || (n > 0 && !values))
        return misuse(ctx, "pgc_exec: sql is NULL, or values is NULL with parameters");
    /* On the loop: any statement that leaves no session state, on the loop's pools. */
    if (ctx->on_loop) {
        if (!rt_sql_sessionless(sql))
            return misuse(ctx, ON_LOOP_NO_SESSION);
        return exec_bridged(ctx, ctx->readonly, sql, n, values, res);
    }
    /* Nothing pinned yet and a statement the pool pipelines: through the loop. */
    if (!ctx->conn && rt_pool_pipelines(plugin_env_primary(ctx->env), sql))
        return exec_bridged(ctx, false, sql, n, values, res);
    if ((rc = ctx_pin(ctx)) != 0)
        return rc;
    return exec_on(ctx, ctx->conn, sql, n, values, res);
}

int pgc_exec(struct pgc_ctx *ctx, const char *sql, struct pgc_result **res)
{
    return pgc_exec_params(ctx, sql, 0, NULL, res);
}

int pgc_cancelled(struct pgc_ctx *ctx)
{
    struct timespec ts;
    struct rt_error err;
    PGresult *r = NULL;
    char id[24];
    const char *values[1] = {id};
    int64_t now;

    if (!ctx || !ctx->job || !ctx->conn)
        return 0;
    if (ctx->cancelled)
        return 1;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (ctx->cancel_checked_ns && now - ctx->cancel_checked_ns < PGC_CANCEL_CHECK_MS * 1000000LL)
        return 0;
    ctx->cancel_checked_ns = now;
    snprintf(id, sizeof id, "%lld", (long long)ctx->job->id);
    /* Its own error: a failed question must not replace the handler's last error. */
    if (rt_conn_exec_params(ctx->conn,
                            "SELECT cancel_requested_at IS NOT NULL FROM pgcorral.jobs"
                            " WHERE id = $1::bigint",
                            1, values, &r, &err) == 0) {
        ctx->cancelled = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
    }
    return ctx->cancelled;
}

int pgc_exec_read(struct pgc_ctx *ctx, const char *sql, int n, const char *const *values,
                  struct pgc_result **res)
{
    if (!ctx || (!ctx->conn && !ctx->lazy))
        return misuse(ctx, "pgc_exec_read: no connection (called outside a handler?)");
    if (ctx->in_tx)
        return misuse(ctx, "pgc_exec_read inside pgc_tx: use pgc_exec for the "
                           "transaction's reads");
    if (!sql || n < 0 || (n > 0 && !values))
        return misuse(ctx, "pgc_exec_read: sql is NULL, or values is NULL with parameters");
    if (ctx->on_loop && plugin_env_replica(ctx->env))
        return exec_bridged(ctx, true, sql, n, values, res);
    if (ctx->readonly || !plugin_env_replica(ctx->env)) {
        if (!ctx->conn) /* a lazy route without a replica: as pgc_exec */
            return pgc_exec_params(ctx, sql, n, values, res);
        return exec_on(ctx, ctx->conn, sql, n, values, res);
    }
    return exec_bridged(ctx, true, sql, n, values, res);
}

/* ---- transactions -------------------------------------------------------------------- */

/* pgc_tx's function and its argument, for rt_tx. */
struct tx_call {
    struct pgc_ctx *ctx;
    pgc_tx_fn fn;
    void *arg;
};

static int tx_body(struct rt_conn *conn, void *arg, struct rt_error *err)
{
    struct tx_call *t = arg;
    int rc;

    t->ctx->err.code = 0;
    rc = t->fn(t->ctx, t->arg);
    if (rc == 0)
        return 0;
    if (t->ctx->err.code == 0)
        rt_error_set(&t->ctx->err, PGC_EFAIL, NULL, "the transaction function returned %d", rc);
    *err = t->ctx->err;
    return err->code;
}

int pgc_tx(struct pgc_ctx *ctx, pgc_tx_fn fn, void *arg)
{
    struct tx_call t = {ctx, fn, arg};
    int rc;

    if (!ctx || (!ctx->conn && !ctx->lazy))
        return misuse(ctx, "pgc_tx: no connection (called outside a handler?)");
    if (!fn)
        return misuse(ctx, "pgc_tx: no function");
    if (ctx->in_tx)
        return misuse(ctx, "pgc_tx cannot be nested");
    if ((rc = ctx_pin(ctx)) != 0)
        return rc;
    ctx->in_tx = true;
    rc = rt_tx(ctx->conn, NULL, tx_body, &t, NULL, &ctx->err);
    ctx->in_tx = false;
    if (rc == 0)
        ctx->err.code = 0;
    return plugin_error_code(rc);
}

int pgc_enqueue(struct pgc_ctx *ctx, const char *task, const char *payload,
                const struct pgc_enqueue_opts *opts, int64_t *id)
{
    const char *values[8], *field;
    struct rt_job_spec spec = {0}; /* borrows the caller's strings */
    struct pgc_result *res = NULL;
    size_t flen, fmax;
    const char *rid = ctx && ctx->req ? ctx->req->request_id : NULL;
    int rc;

    if (!task || !*task)
        return misuse(ctx, "pgc_enqueue: the task name is empty");
    field = rt_job_field_too_long(task, opts ? opts->queue : NULL, opts ? opts->key : NULL,
                                  payload ? strlen(payload) : 0, &flen, &fmax);
    if (field) {
        char msg[128];
        snprintf(msg, sizeof msg, "pgc_enqueue: %s is %zu bytes; the limit is %zu bytes", field,
                 flen, fmax);
        return misuse(ctx, msg);
    }
    spec.task = task;
    spec.payload = payload;
    if (opts) {
        spec.queue = opts->queue;
        spec.run_at = opts->run_at;
        spec.key = opts->key;
        spec.has_priority = opts->priority != 0;
        spec.priority = opts->priority;
        spec.has_max_attempts = opts->max_attempts > 0;
        spec.max_attempts = opts->max_attempts;
    }
    rt_job_spec_params(&spec, values);
    /* Enqueued while answering an HTTP request: the job keeps its request id. */
    values[7] = rid;
    rc = pgc_exec_params(ctx, rid ? JOB_ADD_REQ_SQL : JOB_ADD_SQL, rid ? 8 : 7, values, &res);
    if (rc == 0 && id)
        *id = strtoll(pgc_value(res, 0, 0) ? pgc_value(res, 0, 0) : "0", NULL, 10);
    pgc_result_free(res);
    return rc;
}

/* ---- results and errors -------------------------------------------------------------- */

int pgc_nrows(const struct pgc_result *r)
{
    return r ? PQntuples((const PGresult *)r) : 0;
}

int pgc_ncols(const struct pgc_result *r)
{
    return r ? PQnfields((const PGresult *)r) : 0;
}

const char *pgc_value(const struct pgc_result *r, int row, int col)
{
    const PGresult *res = (const PGresult *)r;
    if (!r || row < 0 || col < 0 || row >= PQntuples(res) || col >= PQnfields(res) ||
        PQgetisnull(res, row, col))
        return NULL;
    return PQgetvalue(res, row, col);
}

const char *pgc_colname(const struct pgc_result *r, int col)
{
    if (!r || col < 0 || col >= PQnfields((const PGresult *)r))
        return NULL;
    return PQfname((const PGresult *)r, col);
}

long long pgc_affected(const struct pgc_result *r)
{
    const char *s;
    if (!r)
        return 0;
    if (PQresultStatus((const PGresult *)r) == PGRES_TUPLES_OK)
        return PQntuples((const PGresult *)r);
    s = PQcmdTuples((PGresult *)r);
    return s && *s ? atoll(s) : 0;
}

void pgc_result_free(struct pgc_result *r)
{
    PQclear((PGresult *)r);
}

const char *pgc_error_message(const struct pgc_ctx *ctx)
{
    return ctx && ctx->err.code ? ctx->err.message : "";
}

const char *pgc_error_sqlstate(const struct pgc_ctx *ctx)
{
    return ctx && ctx->err.code ? ctx->err.sqlstate : "";
}

int pgc_error_transient(const struct pgc_ctx *ctx)
{
    return ctx && ctx->err.code && ctx->err.transient;
}

int pgc_fail(struct pgc_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    if (!ctx)
        return PGC_EFAIL;
    memset(&ctx->err, 0, sizeof ctx->err);
    ctx->err.code = PGC_EFAIL;
    va_start(ap, fmt);
    rt_vformat(ctx->err.message, sizeof ctx->err.message, fmt, ap);
    va_end(ap);
    return PGC_EFAIL;
}

int pgc_discard(struct pgc_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    if (!ctx || !ctx->job)
        return misuse(ctx, "pgc_discard: only a task handler has a job to discard");
    memset(&ctx->err, 0, sizeof ctx->err);
    /* The code, not only the return value: pgc_tx hands it on as its own return. */
    ctx->err.code = PGC_EDISCARD;
    va_start(ap, fmt);
    vsnprintf(ctx->err.message, sizeof ctx->err.message, fmt, ap);
    va_end(ap);
    return PGC_EDISCARD;
}

int pgc_snooze(struct pgc_ctx *ctx, int seconds)
{
    if (!ctx || !ctx->job)
        return misuse(ctx, "pgc_snooze: only a task handler has a job to snooze");
    if (seconds < 0 || seconds > PGC_SNOOZE_MAX_S) {
        rt_error_set(&ctx->err, PGC_EINVAL, NULL,
                     "pgc_snooze: seconds must be from 0 to %d (7 days), got %d", PGC_SNOOZE_MAX_S,
                     seconds);
        return PGC_EINVAL;
    }
    ctx->snoozed = true;
    ctx->snooze_s = seconds;
    rt_error_set(&ctx->err, PGC_ESNOOZE, NULL, "snoozed for %d s", seconds);
    return PGC_ESNOOZE;
}

/* ---- cache and log ------------------------------------------------------------------- */

int pgc_cache_get(struct pgc_ctx *ctx, const char *key, char **value, size_t *len)
{
    int rc;
    if (!key || !value)
        return PGC_EINVAL;
    if (plugin_api_init() < 0)
        return PGC_ENOMEM;
    rc = rt_cache_get(process_cache, key, value, len);
    return rc == -ENOENT ? PGC_ENOENT : rc == -ENOMEM ? PGC_ENOMEM : rc;
}

int pgc_cache_set(struct pgc_ctx *ctx, const char *key, const void *value, size_t len, int ttl_s)
{
    int rc;
    if (!key || (!value && len) || ttl_s <= 0)
        return PGC_EINVAL;
    if (plugin_api_init() < 0)
        return PGC_ENOMEM;
    rc = rt_cache_set(process_cache, key, value, len, (uint64_t)ttl_s * 1000);
    return rc == -EINVAL ? PGC_EINVAL : rc == -ENOMEM ? PGC_ENOMEM : rc;
}

void pgc_free(void *p)
{
    free(p);
}

void pgc_log(struct pgc_ctx *ctx, enum pgc_log_level level, const char *fmt, ...)
{
    static const enum rt_log_level levels[] = {RT_LOG_DEBUG, RT_LOG_INFO, RT_LOG_WARN,
                                               RT_LOG_ERROR};
    char msg[2048];
    va_list ap;
    json_t *fields;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fields = json_object();
    if (fields && ctx && ctx->plugin) {
        const char *base = strrchr(ctx->plugin, '/');
        json_object_set_new(fields, "plugin", json_string(base ? base + 1 : ctx->plugin));
    }
    if (fields && ctx && ctx->job) {
        json_object_set_new(fields, "job", json_integer(ctx->job->id));
        json_object_set_new(fields, "task", json_string(ctx->job->task));
    } else if (fields && ctx && ctx->req) {
        json_object_set_new(fields, "route", json_string(ctx->label ? ctx->label : ""));
        if (ctx->req->request_id)
            json_object_set_new(fields, "request_id", json_string(ctx->req->request_id));
    }
    rt_log(levels[(unsigned)level <= PGC_LOG_ERROR ? level : PGC_LOG_ERROR], msg, fields);
}

/* ---- jobs ---------------------------------------------------------------------------- */

int64_t pgc_job_id(const struct pgc_job *job)
{
    return job ? job->id : 0;
}

const char *pgc_job_task(const struct pgc_job *job)
{
    return job ? job->task : NULL;
}

const char *pgc_job_queue(const struct pgc_job *job)
{
    return job ? job->queue : NULL;
}

const char *pgc_job_payload(const struct pgc_job *job)
{
    return job && job->payload ? job->payload : "{}";
}

const char *pgc_job_key(const struct pgc_job *job)
{
    return job ? job->key : NULL;
}

int pgc_job_attempt(const struct pgc_job *job)
{
    return job ? job->attempt : 0;
}

int pgc_job_max_attempts(const struct pgc_job *job)
{
    return job ? job->max_attempts : 0;
}

int pgc_job_priority(const struct pgc_job *job)
{
    return job ? job->priority : 0;
}

/* The payload's top-level field, parsing the payload once per run (handler thread). */
static json_t *job_field(const struct pgc_job *job, const char *field)
{
    struct pgc_job *j = (struct pgc_job *)job; /* the parse is cached in the job */
    if (!job || !field)
        return NULL;
    if (!j->args)
        j->args = json_loads(pgc_job_payload(job), JSON_DECODE_ANY, NULL);
    return json_is_object(j->args) ? json_object_get(j->args, field) : NULL;
}

int pgc_job_arg_int(const struct pgc_job *job, const char *field, long long *out)
{
    json_t *v = job_field(job, field);
    if (!v)
        return PGC_ENOENT;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v) && json_real_value(v) == (double)(long long)json_real_value(v)) {
        *out = (long long)json_real_value(v);
        return 0;
    }
    return PGC_EINVAL;
}

const char *pgc_job_arg_str(const struct pgc_job *job, const char *field)
{
    json_t *v = job_field(job, field);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

void plugin_job_clear(struct pgc_job *job)
{
    json_decref(job->args);
    job->args = NULL;
}

/* ---- requests ------------------------------------------------------------------------ */

const char *pgc_req_method(const struct pgc_request *req)
{
    return req ? req->method : NULL;
}

const char *pgc_req_path(const struct pgc_request *req)
{
    return req ? req->path : NULL;
}

const char *pgc_req_query(const struct pgc_request *req)
{
    return req && req->query ? req->query : "";
}

const char *pgc_req_header(const struct pgc_request *req, const char *name)
{
    for (int i = 0; req && name && i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

const char *pgc_req_body(const struct pgc_request *req, size_t *len)
{
    if (len)
        *len = req && req->body ? req->body_len : 0;
    return req && req->body_len ? req->body : NULL;
}

const char *pgc_req_param(const struct pgc_request *req, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    for (int i = 0; req && req->param_buf && i < req->params.n; i++)
        if (req->params.name_len[i] == n && memcmp(req->params.name[i], name, n) == 0)
            return req->params.value[i];
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes s[0..len) into buf ('+' is a space). Returns the length or -1. */
static int url_decode(const char *s, size_t len, char *buf, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < len && hexval((unsigned char)s[i + 1]) >= 0 &&
                   hexval((unsigned char)s[i + 2]) >= 0) {
            c = hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]);
            i += 2;
        }
        if (o + 1 >= size)
            return -1;
        buf[o++] = (char)c;
    }
    buf[o] = '\0';
    return (int)o;
}

int pgc_req_query_param(const struct pgc_request *req, const char *name, char *buf, size_t size)
{
    const char *q = pgc_req_query(req);
    char key[256];

    if (!name || !buf || size == 0)
        return PGC_EINVAL;
    while (*q) {
        const char *amp = strchr(q, '&');
        const char *end = amp ? amp : q + strlen(q);
        const char *eq = memchr(q, '=', (size_t)(end - q));
        const char *kend = eq ? eq : end;
        if (url_decode(q, (size_t)(kend - q), key, sizeof key) >= 0 && strcmp(key, name) == 0) {
            int n = eq ? url_decode(eq + 1, (size_t)(end - eq - 1), buf, size)
                       : url_decode("", 0, buf, size);
            return n < 0 ? PGC_EINVAL : n;
        }
        q = amp ? amp + 1 : end;
    }
    return PGC_ENOENT;
}

/* ---- responses ----------------------------------------------------------------------- */

void pgc_res_status(struct pgc_response *res, int status)
{
    if (res && status >= 100 && status <= 599)
        res->status = status;
}

int pgc_res_header(struct pgc_response *res, const char *name, const char *value)
{
    struct plugin_header *h;
    if (!res || !name || !*name || !value || strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
        return PGC_EINVAL;
    if (res->nheaders == res->cap_headers) {
        int cap = res->cap_headers ? res->cap_headers * 2 : 8;
        h = realloc(res->headers, (size_t)cap * sizeof *h);
        if (!h)
            return PGC_ENOMEM;
        res->headers = h;
        res->cap_headers = cap;
    }
    h = &res->headers[res->nheaders];
    h->name = strdup(name);
    h->value = strdup(value);
    if (!h->name || !h->value) {
        free((char *)h->name);
        free((char *)h->value);
        return PGC_ENOMEM;
    }
    res->nheaders++;
    return 0;
}

int pgc_res_body(struct pgc_response *res, const void *data, size_t len)
{
    char *copy = NULL;
    if (!res || (!data && len))
        return PGC_EINVAL;
    if (len) {
        copy = malloc(len + 1);
        if (!copy)
            return PGC_ENOMEM;
        memcpy(copy, data, len);
        copy[len] = '\0';
    }
    free(res->body);
    res->body = copy;
    res->body_len = len;
    return 0;
}

int pgc_res_json(struct pgc_response *res, int status, const char *json)
{
    int rc;
    if (!res || !json)
        return PGC_EINVAL;
    pgc_res_status(res, status);
    for (int i = 0; i < res->nheaders; i++)
        if (strcasecmp(res->headers[i].name, "Content-Type") == 0)
            return pgc_res_body(res, json, strlen(json));
    rc = pgc_res_header(res, "Content-Type", "application/json");
    return rc < 0 ? rc : pgc_res_body(res, json, strlen(json));
}

void plugin_response_clear(struct pgc_response *res)
{
    for (int i = 0; i < res->nheaders; i++) {
        free((char *)res->headers[i].name);
        free((char *)res->headers[i].value);
    }
    free(res->headers);
    free(res->body);
    memset(res, 0, sizeof *res);
}
