/*
 * Query accounting: the counters and the query-time histogram of every finished
 * statement, and the slow-query log (one JSON line per query at or over the threshold,
 * plus an entry in the shm slow-query ring). Any thread: only atomics and rt_log.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pool_int.h"
#include "rt_log.h"
#include "rt_util.h"

/* A JSON string of s cut to max bytes; "<invalid utf-8>" when it is not text. */
static json_t *slow_string(const char *s, size_t max)
{
    json_t *j = json_stringn(s, rt_utf8_cut(s, strnlen(s, max + 1), max));
    return j ? j : json_string("<invalid utf-8>");
}

void rt__slowlog_note(const struct rt_slowlog *s, const char *sql, int nparams,
                      const char *const *values, uint64_t duration_us, const char *caller,
                      const char *request_id)
{
    char dur[32], ts[40];
    struct timespec now;
    struct tm tm;

    if (s->threshold_ms < 0 || duration_us < (uint64_t)s->threshold_ms * 1000)
        return;
    shm_count(&s->stats->counters.slow_queries, 1);

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
    snprintf(dur, sizeof dur, "%llums", (unsigned long long)(duration_us / 1000));

    json_t *params = json_array();
    for (int i = 0; params && i < nparams; i++) {
        json_t *v;
        if (s->redact)
            v = json_string("***");
        else if (!values || !values[i])
            v = json_null();
        else
            v = slow_string(values[i], (size_t)s->max_len);
        json_array_append_new(params, v);
    }
    json_t *fields = json_object();
    if (fields) {
        /* The guide's field names (rt_log itself writes "msg"). */
        json_object_set_new(fields, "message", json_string("Slow query detected"));
        json_object_set_new(fields, "query", slow_string(sql, (size_t)s->max_len));
        json_object_set_new(fields, "duration", json_string(dur));
        json_object_set_new(fields, "duration_ms", json_integer((json_int_t)(duration_us / 1000)));
        json_object_set_new(fields, "params", params ? params : json_array());
        json_object_set_new(fields, "timestamp", json_string(ts));
        json_object_set_new(fields, "pool", json_string(s->pool_name));
        if (caller && *caller)
            json_object_set_new(fields, "caller", slow_string(caller, SHM_LABEL_LEN));
        if (request_id && *request_id)
            json_object_set_new(fields, "request_id", slow_string(request_id, 128));
    } else {
        json_decref(params);
    }
    rt_log(RT_LOG_WARN, "Slow query detected", fields);

    if (s->seg) {
        struct shm_slow_entry e;
        memset(&e, 0, sizeof e);
        e.ts_us = (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000;
        e.duration_us = duration_us;
        e.pid = (int32_t)getpid();
        e.role = atomic_load_explicit(&s->stats->role, memory_order_relaxed);
        e.role_index = atomic_load_explicit(&s->stats->role_index, memory_order_relaxed);
        memcpy(e.query, sql, rt_utf8_cut(sql, strnlen(sql, sizeof e.query), sizeof e.query - 1));
        shm_slow_push(s->seg, &e);
    }
}

void rt__pool_note_stmt(struct rt_pool *p, const char *caller, const char *sql, int nparams,
                        const char *const *values, uint64_t duration_ns, const struct rt_error *err,
                        const char *request_id)
{
    struct shm_worker *s = p->stats;
    uint64_t us = duration_ns / 1000;

    shm_count(&s->counters.queries, 1);
    shm_hist_add(&s->hists.query, us);
    if (err)
        shm_count(err->transient ? &s->counters.errors_transient : &s->counters.errors_fatal, 1);
    rt__slowlog_note(&p->slow, sql, nparams, values, us, caller, request_id);
}

void rt__pool_note_query(const struct rt_conn *c, const char *sql, int nparams,
                         const char *const *values, uint64_t duration_ns,
                         const struct rt_error *err, const char *request_id)
{
    rt__pool_note_stmt(c->pool, c->label, sql, nparams, values, duration_ns, err,
                       request_id ? request_id : c->request_id);
}
