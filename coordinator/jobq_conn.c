/*
 * The supervisor's job-queue connection, on its loop: LISTEN pgcorral_jobs and fan each
 * notification out to the job workers' eventfds (so worker pools never hold session state
 * and stay transaction-pooler safe), and run the statements of orphans.c (orphan unlocks,
 * sweeps, scans, VACUUM, pruning), nodes.c (this node's heartbeat) and cron.c (recurring
 * jobs) one at a time, off the workers' claim and ack path. It is an rt_pgconn: one budget slot
 * (the supervisor's token), held until the server has hung up; it reconnects with backoff when the
 * server goes away, and workers' fallback polls cover the gap.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_util.h"
#include "runtime/rt_jobq.h"

#define RECONNECT_MIN_MS 250

static void connect_start(struct sup_jobq *j);
static void send_next(struct sup_jobq *j);

void sup_jobq_opts_init(struct sup_jobq_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->lease_s = 120;
    opts->sweep_ms = 5000;
    opts->reconnect_max_ms = 10000;
    opts->keep_failed_s = SUP_KEEP_FOREVER;
    opts->prune_batch = SUP_PRUNE_BATCH;
}

const struct sup_jobq_opts *sup_jobq_opts_of(const struct sup_jobq *j)
{
    return &j->o;
}

int sup_jobq_lease_s(const struct sup_jobq *j)
{
    return j->o.lease_s;
}

const struct shm_segment *sup_jobq_seg(const struct sup_jobq *j)
{
    return j->o.seg;
}

const struct sup_jobq_node *sup_jobq_node(const struct sup_jobq *j)
{
    return &j->node;
}

void sup_jobq_set_tasks(struct sup_jobq *j, const char *tasks)
{
    char *copy;
    if (!j || !(copy = strdup(tasks ? tasks : "[]")))
        return; /* the old list stays until the next reload */
    free(j->node.tasks);
    j->node.tasks = copy;
}

/* Frees what node holds. */
static void node_free(struct sup_jobq_node *n)
{
    free(n->name);
    free(n->tasks);
    free(n->schedules);
    for (int i = 0; i < n->ncron; i++)
        sup_cron_free(&n->cron[i]);
    free(n->cron);
    free(n->cron_state);
}

/* Fills j->node from the options: copies, and the schedules parsed again. Returns 0 or
 * -EINVAL (a --cron line that does not parse: the configuration checks them first) or
 * -ENOMEM. */
static int node_init(struct sup_jobq *j, const struct sup_jobq_opts *o)
{
    struct sup_jobq_node *n = &j->node;
    json_t *ids = json_array();
    char err[256];
    int count = 0;

    while (o->cron && o->cron[count])
        count++;
    n->name = strdup(o->node);
    n->tasks = strdup(o->tasks ? o->tasks : "[]");
    n->cron = calloc((size_t)count + 1, sizeof *n->cron);
    n->cron_state = calloc((size_t)count + 1, sizeof *n->cron_state);
    if (!ids || !n->name || !n->tasks || !n->cron || !n->cron_state) {
        json_decref(ids);
        return -ENOMEM;
    }
    snprintf(n->pid, sizeof n->pid, "%d", (int)getpid());
    rt_host_name(n->host, sizeof n->host);
    for (int i = 0; i < count; i++) {
        if (sup_cron_parse(&n->cron[i], o->cron[i], err, sizeof err) < 0) {
            json_decref(ids);
            return -EINVAL;
        }
        n->ncron++;
        json_array_append_new(ids, json_string(n->cron[i].id));
    }
    n->schedules = json_dumps(ids, JSON_COMPACT);
    json_decref(ids);
    return n->schedules ? 0 : -ENOMEM;
}

void sup_jobq_wake_all(struct sup_jobq *j)
{
    const uint64_t one = 1;
    for (int i = 0; i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker *w = &j->o.seg->workers[i];
        uint32_t state = atomic_load_explicit(&w->state, memory_order_relaxed);
        if (atomic_load_explicit(&w->role, memory_order_relaxed) != SHM_ROLE_JOB ||
            (state != SHM_STATE_STARTING && state != SHM_STATE_READY) || j->o.job_wake_fds[i] < 0)
            continue;
        /* Non-blocking: a full counter (never in practice) already means "wake up". */
        if (write(j->o.job_wake_fds[i], &one, sizeof one) < 0) {
        }
    }
}

/* ---- handles ------------------------------------------------------------------------ */

/* One of our handles or of the driver's opened (+1) or closed (-1); once stopping, the
 * last one to close frees j. */
static void on_handle(void *owner, int delta)
{
    struct sup_jobq *j = owner;
    if (delta > 0) {
        j->handles_open++;
        return;
    }
    if (--j->handles_open == 0 && j->stopping) {
        void (*cb)(void *) = j->stop_cb;
        void *arg = j->stop_arg;
        json_decref(j->depth);
        json_decref(j->lease.view);
        node_free(&j->node);
        free(j);
        if (cb)
            cb(arg);
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    on_handle(h->data, -1);
}

/* ---- connection life ----------------------------------------------------------------- */

static void on_reconnect_timer(uv_timer_t *t)
{
    connect_start(t->data);
}

/* Drops the connection and its slot; an op in flight goes back to the front of the queue.
 * Reconnects after the backoff unless stopping. */
static void disconnect(struct sup_jobq *j, const char *why)
{
    /* One line when an established connection goes; attempts that fail while the server
     * is away are not news (a database outage is logged by the pools). */
    if ((j->state == SUP_JOBQ_LISTENING || j->state == SUP_JOBQ_READY) && why)
        rt_log(RT_LOG_WARN, "job wake-up connection lost; reconnecting",
               json_pack("{s:s,s:i}", "error", why, "retry_in_ms", j->backoff_ms));
    else if (j->state == SUP_JOBQ_CONNECTING && why)
        rt_log(RT_LOG_DEBUG, "job wake-up connection attempt failed",
               json_pack("{s:s,s:i}", "error", why, "retry_in_ms", j->backoff_ms));
    /* The slot is freed once the server has hung up, so that our backend and a pool's new
     * connection never both count against max_connections. */
    rt_pgconn_close(&j->pc);
    PQclear(j->current_res);
    j->current_res = NULL;
    if (j->current) {
        j->current->next = j->head;
        j->head = j->current;
        if (!j->tail)
            j->tail = j->current;
        j->current = NULL;
    }
    j->state = SUP_JOBQ_DOWN;
    uv_timer_stop(&j->sweep_timer);
    uv_timer_stop(&j->beat_timer);
    uv_timer_stop(&j->cron_timer);
    if (j->stopping)
        return;
    if (j->stop_soft) {
        /* Lost while flushing unlocks before a stop: the next start's scan frees them. */
        sup_jobq_stop(j, j->stop_cb, j->stop_arg);
        return;
    }
    uv_timer_start(&j->timer, on_reconnect_timer, (uint64_t)j->backoff_ms, 0);
    j->backoff_ms *= 2;
    if (j->backoff_ms > j->o.reconnect_max_ms)
        j->backoff_ms = j->o.reconnect_max_ms;
}

/* Queues an op of kind unless one is queued or running already. */
static void enqueue_once(struct sup_jobq *j, enum sup_jobq_op_kind kind)
{
    struct sup_jobq_op *op;
    for (op = j->head; op; op = op->next)
        if (op->kind == kind)
            return;
    if (j->current && j->current->kind == kind)
        return;
    op = calloc(1, sizeof *op);
    if (!op)
        return;
    op->kind = kind;
    sup_jobq_enqueue_op(j, op);
}

static void on_sweep_timer(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;

    /* The server restarted with fewer connections and a pool fitted the budget to it: a
     * slot beyond the usable ones is given back (the next reservation is the lowest free). */
    if (j->pc.slot >= 0 && (uint32_t)j->pc.slot >= shm_budget_usable(j->o.seg) && !j->current) {
        disconnect(j, "its budget slot is beyond what the server takes now");
        return;
    }
    enqueue_once(j, SUP_JOBQ_OP_SWEEP);
    /* A worker SIGKILLed while its claim was in flight: the server commits that claim
     * after our unlock at its death already ran. The scan finds such jobs (locked by an
     * incarnation of this host that is gone) within one sweep. */
    enqueue_once(j, SUP_JOBQ_OP_SCAN_LOCAL);
    /* Retention: finished jobs past their time go, in batches (orphans.c). */
    if (j->o.keep_completed_s != SUP_KEEP_FOREVER)
        enqueue_once(j, SUP_JOBQ_OP_PRUNE_COMPLETED);
    if (j->o.keep_failed_s != SUP_KEEP_FOREVER)
        enqueue_once(j, SUP_JOBQ_OP_PRUNE_FAILED);
}

static void on_beat_timer(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;

    /* After a binary upgrade's hand-off the node's row and lease are the new
     * supervisor's. */
    if (j->handed_off)
        return;
    enqueue_once(j, SUP_JOBQ_OP_LEASE);
    enqueue_once(j, SUP_JOBQ_OP_BEAT);
}

void sup_jobq_renew_lease(struct sup_jobq *j)
{
    if (j->handed_off || j->stopping || j->stop_soft || j->state != SUP_JOBQ_READY)
        return;
    enqueue_once(j, SUP_JOBQ_OP_LEASE);
}

void sup_jobq_hand_off(struct sup_jobq *j)
{
    if (!j)
        return;
    j->handed_off = true;
    sup_lease_hand_off(j);
}

static void on_cron_timer(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;
    uv_timer_start(&j->cron_timer, on_cron_timer, sup_cron_due(j), 0);
}

/* The connection is up: LISTEN. */
static void connected(struct sup_jobq *j)
{
    rt_pgconn_ready(&j->pc);
    if (!PQsendQuery(j->pc.pg, "LISTEN " JOB_CHANNEL)) {
        disconnect(j, PQerrorMessage(j->pc.pg));
        return;
    }
    j->state = SUP_JOBQ_LISTENING;
    if (rt_pgconn_watch(&j->pc, UV_READABLE | (PQflush(j->pc.pg) == 1 ? UV_WRITABLE : 0)) < 0)
        disconnect(j, "cannot watch the socket");
}

static void on_connect(struct rt_pgconn *pc, int status)
{
    struct sup_jobq *j = pc->owner;
    char msg[512];

    if (status == 0) {
        connected(j);
        return;
    }
    if (status == RT_ECONNECT_TIMEOUT)
        snprintf(msg, sizeof msg, "connect timeout");
    else if (status == RT_ECONNECT)
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(pc->pg));
    else
        snprintf(msg, sizeof msg, "cannot watch the socket: %s", uv_strerror(status));
    msg[strcspn(msg, "\n")] = '\0';
    disconnect(j, msg);
}

static void connect_start(struct sup_jobq *j)
{
    int rc;

    if (j->stopping || j->state != SUP_JOBQ_DOWN)
        return;
    j->state = SUP_JOBQ_CONNECTING;
    rc = rt_pgconn_connect(
        &j->pc, j->o.db,
        (uint64_t)(j->o.db->connect_timeout_s > 0 ? j->o.db->connect_timeout_s : 5) * 1000);
    if (rc == -EAGAIN) {
        rt_log(RT_LOG_WARN, "no budget slot for the job wake-up connection; retrying",
               json_pack("{s:i}", "retry_in_ms", j->backoff_ms));
        j->state = SUP_JOBQ_DOWN;
        disconnect(j, NULL);
    } else if (rc == -ENOMEM) {
        disconnect(j, "out of memory");
    } else if (rc < 0) {
        on_connect(&j->pc, rc);
    }
}

/* ---- results and notifications ------------------------------------------------------- */

/* The statement in flight has delivered all its results. */
static void op_finished(struct sup_jobq *j)
{
    struct sup_jobq_op *op = j->current;
    j->current = NULL;
    const char *err = j->current_err[0] ? j->current_err : NULL;
    if (op->kind == SUP_JOBQ_OP_LEASE)
        sup_lease_result(j, j->current_res, err);
    else if (op->kind == SUP_JOBQ_OP_BEAT || op->kind == SUP_JOBQ_OP_LEAVE)
        sup_nodes_result(j, op, j->current_res, err);
    else if (op->kind == SUP_JOBQ_OP_CRON)
        sup_cron_result(j, op, j->current_res, err);
    else if (sup_orphans_result(j, op, j->current_res, err))
        sup_jobq_wake_all(j);
    PQclear(j->current_res);
    j->current_res = NULL;
    free(op);
    if (j->stop_soft && !j->head) {
        sup_jobq_stop(j, j->stop_cb, j->stop_arg);
        return;
    }
    send_next(j);
}

/* Reads what the server sent: results of the statement in flight and notifications. */
static void read_input(struct sup_jobq *j)
{
    PGnotify *n;
    int notified = 0;

    if (!PQconsumeInput(j->pc.pg)) {
        disconnect(j, PQerrorMessage(j->pc.pg));
        return;
    }
    while ((n = PQnotifies(j->pc.pg)) != NULL) {
        notified++;
        PQfreemem(n);
    }
    if (notified)
        sup_jobq_wake_all(j);
    while ((j->state == SUP_JOBQ_LISTENING || j->current) && !PQisBusy(j->pc.pg)) {
        PGresult *res = PQgetResult(j->pc.pg);
        if (!res) {
            if (j->state == SUP_JOBQ_LISTENING) {
                j->state = SUP_JOBQ_READY;
                j->backoff_ms = RECONNECT_MIN_MS;
                rt_log(RT_LOG_INFO, "job wake-ups: listening",
                       json_pack("{s:s,s:i}", "channel", JOB_CHANNEL, "budget_slot", j->pc.slot));
                /* Wake-ups may have been missed while down; the sweep frees old leases. */
                sup_jobq_wake_all(j);
                uv_timer_start(&j->sweep_timer, on_sweep_timer, 0, (uint64_t)j->o.sweep_ms);
                uv_timer_start(&j->beat_timer, on_beat_timer, 0, (uint64_t)j->lease.heartbeat_ms);
                if (j->node.ncron > 0)
                    uv_timer_start(&j->cron_timer, on_cron_timer, 0, 0);
                send_next(j);
            } else {
                op_finished(j);
            }
            if (!j->pc.pg)
                return;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR) {
            if (j->state == SUP_JOBQ_LISTENING) {
                char msg[512];
                snprintf(msg, sizeof msg, "LISTEN failed: %s", PQresultErrorMessage(res));
                PQclear(res);
                disconnect(j, msg);
                return;
            }
            snprintf(j->current_err, sizeof j->current_err, "%s", PQresultErrorMessage(res));
            j->current_err[strcspn(j->current_err, "\n")] = '\0';
        }
        if (j->current && !j->current_res && st == PGRES_TUPLES_OK)
            j->current_res = res;
        else if (j->current && !j->current_res && st == PGRES_COMMAND_OK)
            j->current_res = res;
        else
            PQclear(res);
    }
}

static void on_socket(struct rt_pgconn *pc, int status, int events)
{
    struct sup_jobq *j = pc->owner;

    if (status < 0) {
        disconnect(j, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(j->pc.pg);
        if (rc < 0) {
            disconnect(j, PQerrorMessage(j->pc.pg));
            return;
        }
        if (rc == 0 && rt_pgconn_watch(&j->pc, UV_READABLE) < 0) {
            disconnect(j, "cannot watch the socket");
            return;
        }
    }
    if (events & UV_READABLE)
        read_input(j);
    if (j->pc.pg && PQstatus(j->pc.pg) == CONNECTION_BAD)
        disconnect(j, "connection lost");
}

/* Sends the next queued op when the connection is idle. */
static void send_next(struct sup_jobq *j)
{
    struct sup_jobq_op *op;
    const char *sql, *values[SUP_JOBQ_OP_PARAMS];
    char buf[256];
    int n;

    if (j->state != SUP_JOBQ_READY || j->current || !j->head)
        return;
    op = j->head;
    j->head = op->next;
    if (!j->head)
        j->tail = NULL;
    op->next = NULL;
    if (op->kind == SUP_JOBQ_OP_LEASE)
        n = sup_lease_sql(j, &sql, values);
    else if (op->kind == SUP_JOBQ_OP_BEAT || op->kind == SUP_JOBQ_OP_LEAVE)
        n = sup_nodes_sql(j, op, &sql, values);
    else if (op->kind == SUP_JOBQ_OP_CRON)
        n = sup_cron_sql(j, op, &sql, values, buf, sizeof buf);
    else
        n = sup_orphans_sql(j, op, &sql, values, buf, sizeof buf);
    j->current = op;
    j->current_err[0] = '\0';
    if (!PQsendQueryParams(j->pc.pg, sql, n, NULL, values, NULL, NULL, 0)) {
        disconnect(j, PQerrorMessage(j->pc.pg));
        return;
    }
    if (rt_pgconn_watch(&j->pc, UV_READABLE | (PQflush(j->pc.pg) == 1 ? UV_WRITABLE : 0)) < 0)
        disconnect(j, "cannot watch the socket");
}

void sup_jobq_enqueue_op(struct sup_jobq *j, struct sup_jobq_op *op)
{
    if (op->kind == SUP_JOBQ_OP_VACUUM) {
        /* One vacuum at a time is enough. */
        bool pending = j->current && j->current->kind == SUP_JOBQ_OP_VACUUM;
        for (struct sup_jobq_op *o = j->head; o && !pending; o = o->next)
            pending = o->kind == SUP_JOBQ_OP_VACUUM;
        if (pending) {
            free(op);
            return;
        }
    }
    op->next = NULL;
    op->queued_us = shm_now_us();
    if (op->kind == SUP_JOBQ_OP_LEASE) {
        /* The lease must not wait behind housekeeping: it goes first. The tail stays what
         * it was, or the ops queued behind the lease would be cut off by the next append. */
        op->next = j->head;
        j->head = op;
        if (!j->tail)
            j->tail = op;
    } else {
        if (j->tail)
            j->tail->next = op;
        else
            j->head = op;
        j->tail = op;
    }
    send_next(j);
}

/* ---- start and stop ------------------------------------------------------------------ */

int sup_jobq_start(struct sup_jobq **out, const struct sup_jobq_opts *opts)
{
    struct sup_jobq *j;
    struct sup_jobq_op *scan;

    if (!opts || !opts->loop || !opts->db || !opts->seg || !opts->job_wake_fds || !opts->node)
        return -EINVAL;
    j = calloc(1, sizeof *j);
    scan = calloc(1, sizeof *scan);
    if (!j || !scan) {
        free(j);
        free(scan);
        return -ENOMEM;
    }
    j->o = *opts;
    int rc = node_init(j, opts);
    if (rc < 0) {
        node_free(&j->node);
        free(j);
        free(scan);
        return rc;
    }
    if (j->o.lease_s <= 0)
        j->o.lease_s = 120;
    if (j->o.sweep_ms <= 0)
        j->o.sweep_ms = 5000;
    if (j->o.sweep_ms > j->o.lease_s * 250)
        j->o.sweep_ms = j->o.lease_s * 250;
    if (j->o.reconnect_max_ms < RECONNECT_MIN_MS)
        j->o.reconnect_max_ms = RECONNECT_MIN_MS;
    rt_pgconn_init(&j->pc);
    j->pc.loop = j->o.loop;
    j->pc.seg = j->o.seg;
    j->pc.token = opts->token ? opts->token : shm_token(SHM_SUPERVISOR_INDEX, 1);
    j->pc.name = "job wake-up connection";
    j->pc.owner = j;
    j->pc.on_connect = on_connect;
    j->pc.on_socket = on_socket;
    j->pc.on_handle = on_handle;
    j->backoff_ms = RECONNECT_MIN_MS;
    uv_timer_init(j->o.loop, &j->timer);
    uv_timer_init(j->o.loop, &j->sweep_timer);
    uv_timer_init(j->o.loop, &j->beat_timer);
    uv_timer_init(j->o.loop, &j->cron_timer);
    j->timer.data = j->sweep_timer.data = j->beat_timer.data = j->cron_timer.data = j;
    j->handles_open = 6;
    sup_lease_start(j);
    /* Jobs left locked by processes of this host that are gone (a previous run that was
     * killed whole) are unlocked first. */
    scan->kind = SUP_JOBQ_OP_SCAN_LOCAL;
    sup_jobq_enqueue_op(j, scan);
    connect_start(j);
    *out = j;
    return 0;
}

static void on_stop_deadline(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;
    sup_jobq_stop(j, j->stop_cb, j->stop_arg);
}

void sup_jobq_stop(struct sup_jobq *j, void (*cb)(void *arg), void *arg)
{
    struct sup_jobq_op *op, **link;

    if (!j || j->stopping)
        return;
    if (!j->stop_soft && j->state == SUP_JOBQ_READY) {
        /* Unlocks of workers that just died go out first, then this node leaves the
         * registry (at most 2 s); the rest is housekeeping that the next start redoes. */
        for (link = &j->head; (op = *link) != NULL;) {
            if (op->kind != SUP_JOBQ_OP_UNLOCK) {
                *link = op->next;
                free(op);
            } else {
                j->tail = op;
                link = &op->next;
            }
        }
        if (!j->head)
            j->tail = NULL;
        if (!j->handed_off && (op = calloc(1, sizeof *op)) != NULL) {
            op->kind = SUP_JOBQ_OP_LEAVE;
            sup_jobq_enqueue_op(j, op);
        }
        /* The leave may be in flight already (sent at once on an idle connection). */
        if (j->head || (j->current && (j->current->kind == SUP_JOBQ_OP_UNLOCK ||
                                       j->current->kind == SUP_JOBQ_OP_LEAVE))) {
            j->stop_soft = true;
            j->stop_cb = cb;
            j->stop_arg = arg;
            uv_timer_stop(&j->sweep_timer);
            uv_timer_stop(&j->beat_timer);
            uv_timer_stop(&j->cron_timer);
            uv_timer_start(&j->timer, on_stop_deadline, 2000, 0);
            return;
        }
    }
    j->stopping = true;
    j->stop_cb = cb;
    j->stop_arg = arg;
    disconnect(j, NULL);
    while ((op = j->head) != NULL) {
        j->head = op->next;
        free(op);
    }
    j->tail = NULL;
    uv_close((uv_handle_t *)&j->timer, on_timer_closed);
    uv_close((uv_handle_t *)&j->sweep_timer, on_timer_closed);
    uv_close((uv_handle_t *)&j->beat_timer, on_timer_closed);
    uv_close((uv_handle_t *)&j->cron_timer, on_timer_closed);
    sup_lease_close(j, on_timer_closed);
}
