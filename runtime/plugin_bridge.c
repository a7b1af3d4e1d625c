/*
 * The loop bridge: a handler thread's read on the worker's replica pool runs on the loop
 * (an asynchronous query there; the connection never leaves the loop) while the thread
 * waits; plugin_env holds the worker's pools for handler threads.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/plugin_abi.h"
#include "runtime/plugin_int.h"

/*
 * A handler thread's read for the replica pool: the loop runs it there asynchronously
 * (rt_pool_query: the connection never leaves the loop) while the thread waits on cond.
 */
struct bridge_read {
    struct bridge_read *next;
    struct plugin_env *env;
    const char *sql, *label;
    int n;
    const char *const *values;
    struct rt_query q;       /* straight on the replica pool (no router) */
    struct rt_read_query rq; /* through the router */
    PGresult *res;
    struct rt_error err;
    pthread_cond_t cond;
    bool done;
};

struct plugin_env {
    uv_loop_t *loop;
    struct rt_pool *primary, *replica;
    struct rt_read_router *router; /* borrowed; NULL = replica reads without fallback */
    uv_async_t async;
    pthread_mutex_t mu;          /* guards pending, closing and every read's done/res/err */
    struct bridge_read *pending; /* posted by threads, taken by the loop */
    bool closing;
};

/* Wakes the thread that waits for b. Loop thread. */
static void bridge_finish(struct plugin_env *env, struct bridge_read *b, PGresult *res,
                          const struct rt_error *err)
{
    pthread_mutex_lock(&env->mu);
    b->res = res;
    if (!res)
        b->err = *err;
    b->done = true;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&env->mu);
}

static void on_bridge_read(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct bridge_read *b = q->data;
    bridge_finish(b->env, b, res, err);
}

static void on_bridge_read_routed(struct rt_read_query *rq, PGresult *res,
                                  const struct rt_error *err)
{
    struct bridge_read *b = rq->data;
    bridge_finish(b->env, b, res, err);
}

static void on_async(uv_async_t *h)
{
    struct plugin_env *env = h->data;
    struct bridge_read *list, *b;
    struct rt_error err;

    pthread_mutex_lock(&env->mu);
    list = env->pending;
    env->pending = NULL;
    pthread_mutex_unlock(&env->mu);
    while ((b = list) != NULL) {
        list = b->next;
        b->next = NULL;
        int rc;
        if (env->router) {
            b->rq.data = b;
            rc = rt_read_query(env->router, &b->rq, b->label, b->sql, b->n, b->values,
                               on_bridge_read_routed);
        } else {
            b->q.data = b;
            rc = rt_pool_query(env->replica, &b->q, b->label, b->sql, b->n, b->values,
                               on_bridge_read);
        }
        if (rc < 0) {
            rt_error_set(&err, RT_EPOOL_CLOSED, NULL, "the replica pool is closing");
            bridge_finish(env, b, NULL, &err);
        }
    }
}

PGresult *plugin_bridge_read(struct plugin_env *env, const char *label, const char *sql, int n,
                             const char *const *values, struct rt_error *err)
{
    struct bridge_read b;

    memset(&b, 0, sizeof b);
    b.env = env;
    b.sql = sql;
    b.n = n;
    b.values = values;
    b.label = label;
    pthread_mutex_lock(&env->mu);
    if (env->closing) {
        pthread_mutex_unlock(&env->mu);
        rt_error_set(err, RT_EPOOL_CLOSED, NULL, "the worker is stopping");
        return NULL;
    }
    pthread_cond_init(&b.cond, NULL);
    b.next = env->pending;
    env->pending = &b;
    pthread_mutex_unlock(&env->mu);
    uv_async_send(&env->async);
    pthread_mutex_lock(&env->mu);
    while (!b.done)
        pthread_cond_wait(&b.cond, &env->mu);
    pthread_mutex_unlock(&env->mu);
    pthread_cond_destroy(&b.cond);
    if (!b.res)
        *err = b.err;
    return b.res;
}

int plugin_env_create(struct plugin_env **out, uv_loop_t *loop, struct rt_pool *primary,
                      struct rt_pool *replica, struct rt_read_router *router)
{
    struct plugin_env *env = calloc(1, sizeof *env);
    int rc;

    if (!env)
        return -ENOMEM;
    env->loop = loop;
    env->primary = primary;
    env->replica = replica;
    env->router = router;
    pthread_mutex_init(&env->mu, NULL);
    rc = uv_async_init(loop, &env->async, on_async);
    if (rc < 0) {
        pthread_mutex_destroy(&env->mu);
        free(env);
        return rc;
    }
    env->async.data = env;
    /* The bridge alone must not keep the loop running. */
    uv_unref((uv_handle_t *)&env->async);
    *out = env;
    return 0;
}

static void env_closed(uv_handle_t *h)
{
    struct plugin_env *env = h->data;
    pthread_mutex_destroy(&env->mu);
    free(env);
}

void plugin_env_close(struct plugin_env *env)
{
    struct bridge_read *list, *b;
    struct rt_error err;

    if (!env)
        return;
    pthread_mutex_lock(&env->mu);
    env->closing = true;
    list = env->pending;
    env->pending = NULL;
    pthread_mutex_unlock(&env->mu);
    rt_error_set(&err, RT_EPOOL_CLOSED, NULL, "the worker is stopping");
    while ((b = list) != NULL) {
        list = b->next;
        bridge_finish(env, b, NULL, &err);
    }
    if (!uv_is_closing((uv_handle_t *)&env->async))
        uv_close((uv_handle_t *)&env->async, env_closed);
}

struct rt_pool *plugin_env_replica(const struct plugin_env *env)
{
    return env ? env->replica : NULL;
}

struct rt_pool *plugin_env_primary(const struct plugin_env *env)
{
    return env->primary;
}

struct rt_read_router *plugin_env_router(const struct plugin_env *env)
{
    return env->router;
}
