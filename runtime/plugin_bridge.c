/*
 * The loop bridge: a handler thread's read on the worker's replica pool, or a plain
 * statement of a route handler on the primary (auto-pipelined there), runs on the loop (an
 * asynchronous query; the connection never leaves the loop) while the thread waits; a
 * handler that needs a whole connection gets one checked out and lent to it; plugin_env
 * holds the worker's pools for handler threads.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/plugin_abi.h"
#include "runtime/plugin_int.h"
#include "runtime/rt_fiber.h"

/* What a handler thread asks of the loop. */
enum bridge_kind {
    BRIDGE_READ = 0, /* a read on the replica pool (pgc_exec_read) */
    BRIDGE_EXEC,     /* a statement on the primary pool (auto-pipelined when eligible) */
    BRIDGE_PIN,      /* a whole primary connection, lent to the thread */
};

/*
 * A handler thread's request: the loop runs the statement asynchronously (rt_pool_query:
 * the connection never leaves the loop), or checks a connection out and lends it, while
 * the thread waits on its own semaphore.
 */
struct bridge_call {
    struct bridge_call *next;
    enum bridge_kind kind;
    struct plugin_env *env;
    const char *sql, *label, *request_id;
    int n;
    const char *const *values;
    struct rt_query q;       /* straight on a pool (no router) */
    struct rt_read_query rq; /* through the router */
    struct rt_acquire acq;   /* BRIDGE_PIN */
    struct rt_conn *conn;    /* BRIDGE_PIN: the lent connection, NULL with err */
    PGresult *res;
    struct rt_error err;
    sem_t sem;              /* posted once when done: one waiter, so no shared lock */
    struct rt_fiber *fiber; /* a caller on a loop fiber: woken, no semaphore */
    bool done;              /* fiber callers */
};

struct plugin_env {
    uv_loop_t *loop;
    struct rt_pool *primary, *replica;
    struct rt_read_router *router; /* borrowed; NULL = replica reads without fallback */
    uv_async_t async;
    pthread_mutex_t mu;          /* guards pending and closing */
    struct bridge_call *pending; /* posted by threads, taken by the loop */
    struct rt_fibers *fibers;    /* handlers that run on the loop (PGC_ROUTE_ON_LOOP) */
    bool closing;
};

/* Wakes the thread or fiber that waits for b. Loop thread. */
static void bridge_finish(struct bridge_call *b, PGresult *res, const struct rt_error *err)
{
    b->res = res;
    if (!res)
        b->err = *err;
    if (b->fiber) { /* a fiber of this loop: no other thread involved */
        b->done = true;
        rt_fiber_wake(b->fiber);
    } else {
        sem_post(&b->sem); /* publishes res and err to the waiting thread */
    }
}

static void on_bridge_read(struct rt_query *q, PGresult *res, const struct rt_error *err)
{
    struct bridge_call *b = q->data;
    bridge_finish(b, res, err);
}

static void on_bridge_read_routed(struct rt_read_query *rq, PGresult *res,
                                  const struct rt_error *err)
{
    struct bridge_call *b = rq->data;
    bridge_finish(b, res, err);
}

/* A connection for BRIDGE_PIN was checked out (or none could be had): lent to the thread
 * that waits for it. Loop thread. */
static void on_bridge_pinned(struct rt_acquire *acq, struct rt_conn *c, const struct rt_error *err)
{
    struct bridge_call *b = acq->data;
    struct rt_error e;

    if (c && rt_conn_lend(c) != 0) {
        rt_pool_release(c);
        c = NULL;
        rt_error_set(&e, RT_ECONN_LOST, "08006", "connection lost");
        err = &e;
    }
    b->conn = c;
    if (!c)
        b->err = *err;
    sem_post(&b->sem);
}

/* Starts what b asks on the loop; its callback finishes b. Loop thread. */
static void bridge_start(struct plugin_env *env, struct bridge_call *b)
{
    struct rt_error err;
    int rc;

    if (b->kind == BRIDGE_EXEC) {
        b->q.data = b;
        b->q.request_id = b->request_id;
        rc = rt_pool_query(env->primary, &b->q, b->label, b->sql, b->n, b->values, on_bridge_read);
    } else if (b->kind == BRIDGE_PIN) {
        b->acq.data = b;
        rc = rt_pool_acquire(env->primary, &b->acq, b->label, on_bridge_pinned);
    } else if (env->router) {
        b->rq.data = b;
        rc = rt_read_query(env->router, &b->rq, b->label, b->sql, b->n, b->values,
                           on_bridge_read_routed);
    } else {
        b->q.data = b;
        rc = rt_pool_query(env->replica, &b->q, b->label, b->sql, b->n, b->values, on_bridge_read);
    }
    if (rc < 0) {
        rt_error_set(&err, RT_EPOOL_CLOSED, NULL, "the %s pool is closing",
                     b->kind == BRIDGE_READ ? "replica" : "primary");
        bridge_finish(b, NULL, &err);
    }
}

static void on_async(uv_async_t *h)
{
    struct plugin_env *env = h->data;
    struct bridge_call *list, *b;

    pthread_mutex_lock(&env->mu);
    list = env->pending;
    env->pending = NULL;
    pthread_mutex_unlock(&env->mu);
    while ((b = list) != NULL) {
        list = b->next;
        b->next = NULL;
        bridge_start(env, b);
    }
}

/* Posts b to the loop and waits until it is done. Returns false when the env is closing
 * (b was not posted; *err says so). Handler thread. */
static bool bridge_run(struct plugin_env *env, struct bridge_call *b, struct rt_error *err)
{
    b->env = env;
    /* On a fiber of the loop: start it here and let the loop go on until it is done. */
    if ((b->fiber = rt_fiber_current()) != NULL) {
        if (env->closing) {
            rt_error_set(err, RT_EPOOL_CLOSED, NULL, "the worker is stopping");
            return false;
        }
        bridge_start(env, b);
        while (!b->done)
            rt_fiber_suspend();
        return true;
    }
    pthread_mutex_lock(&env->mu);
    if (env->closing) {
        pthread_mutex_unlock(&env->mu);
        rt_error_set(err, RT_EPOOL_CLOSED, NULL, "the worker is stopping");
        return false;
    }
    sem_init(&b->sem, 0, 0);
    b->next = env->pending;
    env->pending = b;
    pthread_mutex_unlock(&env->mu);
    uv_async_send(&env->async);
    while (sem_wait(&b->sem) != 0) /* only EINTR */
        ;
    sem_destroy(&b->sem);
    return true;
}

/* A statement through the loop (BRIDGE_READ or BRIDGE_EXEC). Handler thread. */
static PGresult *bridge_query(struct plugin_env *env, enum bridge_kind kind, const char *label,
                              const char *request_id, const char *sql, int n,
                              const char *const *values, struct rt_error *err)
{
    struct bridge_call b;

    memset(&b, 0, sizeof b);
    b.kind = kind;
    b.sql = sql;
    b.n = n;
    b.values = values;
    b.label = label;
    b.request_id = request_id;
    if (!bridge_run(env, &b, err))
        return NULL;
    if (!b.res)
        *err = b.err;
    return b.res;
}

PGresult *plugin_bridge_read(struct plugin_env *env, const char *label, const char *sql, int n,
                             const char *const *values, struct rt_error *err)
{
    return bridge_query(env, BRIDGE_READ, label, NULL, sql, n, values, err);
}

PGresult *plugin_bridge_exec(struct plugin_env *env, const char *label, const char *request_id,
                             const char *sql, int n, const char *const *values,
                             struct rt_error *err)
{
    return bridge_query(env, BRIDGE_EXEC, label, request_id, sql, n, values, err);
}

struct rt_conn *plugin_bridge_pin(struct plugin_env *env, const char *label, struct rt_error *err)
{
    struct bridge_call b;

    memset(&b, 0, sizeof b);
    b.kind = BRIDGE_PIN;
    b.label = label;
    if (!bridge_run(env, &b, err))
        return NULL;
    if (!b.conn)
        *err = b.err;
    return b.conn;
}

static void env_closed(uv_handle_t *h)
{
    struct plugin_env *env = h->data;
    pthread_mutex_destroy(&env->mu);
    free(env);
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
    rc = rt_fibers_create(&env->fibers, loop);
    if (rc < 0) {
        uv_close((uv_handle_t *)&env->async, env_closed);
        return rc;
    }
    *out = env;
    return 0;
}

void plugin_env_close(struct plugin_env *env)
{
    struct bridge_call *list, *b;
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
        bridge_finish(b, NULL, &err);
    }
    rt_fibers_close(env->fibers);
    env->fibers = NULL;
    if (!uv_is_closing((uv_handle_t *)&env->async))
        uv_close((uv_handle_t *)&env->async, env_closed);
}

int plugin_env_spawn(struct plugin_env *env, void (*fn)(void *arg), void (*done)(void *arg),
                     void *arg)
{
    if (env->closing || !env->fibers)
        return -ESHUTDOWN;
    return rt_fiber_spawn(env->fibers, fn, done, arg);
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

uv_loop_t *plugin_env_loop(const struct plugin_env *env)
{
    return env->loop;
}
