/*
 * Error classification and retry: which errors are transient (DESIGN "Pool": Retry), the
 * rt_error of a failed libpq call with its SQLSTATE kept, and exponential backoff with
 * jitter for the blocking retry helper.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pool_int.h"
#include "rt_util.h"

/* Per-thread xorshift64 state for jitter; seeded on first use. */
static _Thread_local uint64_t retry_rng;

/* SQLSTATEs outside class 08 that are worth retrying. */
static const char *const retry_transient_states[] = {
    "40001", /* serialization_failure */
    "40P01", /* deadlock_detected */
    "53300", /* too_many_connections */
    "57P01", /* admin_shutdown */
    "57P02", /* crash_shutdown */
    "57P03", /* cannot_connect_now */
    "25006", /* read_only_sql_transaction: a failover left us on a standby */
};

bool rt_sqlstate_is_transient(const char *s)
{
    if (!s || strlen(s) != 5)
        return false;
    if (s[0] == '0' && s[1] == '8')
        return true;
    for (size_t i = 0; i < sizeof retry_transient_states / sizeof *retry_transient_states; i++)
        if (memcmp(s, retry_transient_states[i], 5) == 0)
            return true;
    return false;
}

int rt_error_set(struct rt_error *err, int code, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;

    err->code = code;
    if (sqlstate && strlen(sqlstate) == 5)
        memcpy(err->sqlstate, sqlstate, 6);
    else
        err->sqlstate[0] = 0;
    va_start(ap, fmt);
    rt_vformat(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->transient = code == RT_EPOOL_TIMEOUT || code == RT_ECONNECT_TIMEOUT ||
                     code == RT_ECONN_LOST || code == RT_EDB_UNAVAILABLE ||
                     (code != RT_ECANCELED && rt_sqlstate_is_transient(err->sqlstate));
    return code;
}

void rt__error_from_result(struct rt_error *err, const PGresult *res, PGconn *pg)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    bool lost = PQstatus(pg) != CONNECTION_OK;

    if (!msg || !*msg)
        msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(pg);
    if (!msg || !*msg)
        msg = "unknown error";
    /* The server ends the session (restart, crash): the connection is as good as lost. */
    if (state && (strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
                  (state[0] == '0' && state[1] == '8')))
        lost = true;
    if (lost && (!state || !*state))
        state = "08006"; /* connection_failure */
    int n = (int)strcspn(msg, "\n");
    rt_error_set(err, lost ? RT_ECONN_LOST : RT_ESQL, state, "%.*s", n, msg);
}

/* A number in [0, 1) from this thread's generator. */
static double retry_uniform(void)
{
    uint64_t x = retry_rng;
    if (!x) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
            (uintptr_t)&retry_rng;
        x |= 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    retry_rng = x;
    return (double)(x >> 11) / 9007199254740992.0; /* 2^53 */
}

int rt_retry_delay_ms(const struct rt_retry_policy *p, int attempt)
{
    double d = (double)p->base_ms * pow(p->factor > 0 ? p->factor : 1.0, attempt);
    double j = p->jitter < 0 ? 0 : p->jitter > 1 ? 1 : p->jitter;

    if (j > 0)
        d *= 1.0 - j * retry_uniform();
    if (d > 3600000.0)
        d = 3600000.0; /* an hour: longer means a misconfiguration */
    return d < 0 ? 0 : (int)d;
}

/* Sleeps ms milliseconds, across signals. */
static void retry_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

int rt_retry(const struct rt_retry_policy *policy, int (*fn)(void *arg, struct rt_error *err),
             void *arg, struct rt_error *err)
{
    struct rt_retry_policy p = policy ? *policy : RT_RETRY_DEFAULT;

    for (int attempt = 0;; attempt++) {
        err->code = 0;
        err->transient = false;
        int rc = fn(arg, err);
        if (rc == 0 || !err->transient || attempt >= p.max_retries)
            return rc;
        retry_sleep_ms(rt_retry_delay_ms(&p, attempt));
    }
}

/* Used by rt_tx (query_sync.c): the same sleep. */
void rt__retry_sleep_ms(int ms)
{
    retry_sleep_ms(ms);
}
