/*
 * The supervisor's single job connection, on its loop: LISTEN pgcorral_jobs and fan each
 * notification out to the job workers' eventfds (so worker pools never hold session state
 * and stay transaction-pooler safe), and run the statements of orphans.c (orphaned jobs,
 * sweeps), nodes.c (this node's heartbeat) and cron.c (recurring jobs) one at a time, off
 * the workers' claim and ack path. It holds one budget slot (the supervisor's token) while
 * connected, and reconnects with backoff when the server goes away; workers' fallback
 * polls cover the gap.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "workers/job.h"

#define RECONNECT_MIN_MS 250

enum conn_state {
    JC_DOWN,       /* no connection; the timer reconnects */
    JC_CONNECTING, /* PQconnectPoll in progress */
    JC_LISTENING,  /* LISTEN sent */
    JC_READY,      /* idle, or running current */
};

struct sup_jobs {
    struct sup_jobs_opts o;
    uint32_t token;
    int slot; /* budget slot held for the connection, -1 when none */
    PGconn *pg;
    enum conn_state state;
    uv_poll_t *poll; /* on the connection's socket; heap: closed before its socket changes */
    int poll_fd;
    int poll_events;
    uv_timer_t timer;          /* connect deadline, then reconnect backoff */
    uv_timer_t sweep_timer;    /* queues a sweep every sweep_ms */
    uv_timer_t beat_timer;     /* queues the node's heartbeat every SUP_NODE_HEARTBEAT_MS */
    uv_timer_t cron_timer;     /* looks at the schedules at their next tick */
    struct sup_jobs_node node; /* owned copies: the configuration may be reloaded */
    int backoff_ms;
    struct sup_jobs_op *head, *tail; /* waiting ops */
    struct sup_jobs_op *current;     /* op in flight */
    PGresult *current_res;           /* its first result */
    char current_err[512];
    /* The last SUP_JOBS_DEAD_MAX incarnations that died, with the claim_seq from which
     * their jobs never started: a claim in flight at the death commits after the unlock,
     * and the scan that frees it later must give those jobs their attempt back too. A
     * ring; dead_next is where the next one goes. */
    struct {
        char locked_by[96];
        uint64_t unstarted_from;
    } dead[SUP_JOBS_DEAD_MAX];
    unsigned dead_next;
    json_t *depth;       /* {"queue": {"ready":..}} from the last sweep, or NULL */
    long long dead_rows; /* of pgcorral.jobs, from the statistics at the last sweep */
    uint64_t depth_at_us;
    bool stopping;
    bool stop_soft; /* stopping once the queued unlocks are sent (bounded by the timer) */
    int handles_open;
    void (*stop_cb)(void *);
    void *stop_arg;
};

static void connect_start(struct sup_jobs *j);
static void send_next(struct sup_jobs *j);

void sup_jobs_opts_init(struct sup_jobs_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->lease_s = 120;
    opts->sweep_ms = 5000;
    opts->reconnect_max_ms = 10000;
}

int sup_jobs_lease_s(const struct sup_jobs *j)
{
    return j->o.lease_s;
}

const struct shm_segment *sup_jobs_seg(const struct sup_jobs *j)
{
    return j->o.seg;
}

const struct sup_jobs_node *sup_jobs_node(const struct sup_jobs *j)
{
    return &j->node;
}

void sup_jobs_set_tasks(struct sup_jobs *j, const char *tasks)
{
    char *copy;
    if (!j || !(copy = strdup(tasks ? tasks : "[]")))
        return; /* the old list stays until the next reload */
    free(j->node.tasks);
    j->node.tasks = copy;
}

/* Frees what node holds. */
static void node_free(struct sup_jobs_node *n)
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
static int node_init(struct sup_jobs *j, const struct sup_jobs_opts *o)
{
    struct sup_jobs_node *n = &j->node;
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
    if (gethostname(n->host, sizeof n->host) < 0 || !n->host[0])
        snprintf(n->host, sizeof n->host, "localhost");
    n->host[sizeof n->host - 1] = '\0';
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

/* The count of one state in a queue's object of the sweep's answer; 0 if missing. */
static uint64_t depth_count(json_t *queue, const char *state)
{
    json_int_t v = json_integer_value(json_object_get(queue, state));
    return v > 0 ? (uint64_t)v : 0;
}

/* Publishes the depths to the segment, for /metrics in the web workers. */
static void publish_depths(struct shm_segment *seg, json_t *queues, uint64_t at_us)
{
    struct shm_queue_depths d;
    const char *name;
    json_t *q;

    memset(&d, 0, sizeof d);
    d.at_us = at_us;
    json_object_foreach(queues, name, q)
    {
        if (d.nqueues == SHM_MAX_QUEUES) {
            d.omitted++;
            continue;
        }
        struct shm_queue_depth *e = &d.queues[d.nqueues++];
        size_t len = strlen(name);
        if (len >= sizeof e->name) {
            /* Cut before a continuation byte (10xxxxxx), so that the label stays UTF-8. */
            len = sizeof e->name - 1;
            while (len > 0 && ((unsigned char)name[len] & 0xc0) == 0x80)
                len--;
        }
        memcpy(e->name, name, len);
        e->ready = depth_count(q, "ready");
        e->scheduled = depth_count(q, "scheduled");
        e->running = depth_count(q, "running");
        e->failed = depth_count(q, "failed");
    }
    shm_depths_publish(seg, &d);
}

void sup_jobs_remember_dead(struct sup_jobs *j, const char *locked_by, uint64_t unstarted_from)
{
    unsigned i = j->dead_next++ % SUP_JOBS_DEAD_MAX;
    snprintf(j->dead[i].locked_by, sizeof j->dead[i].locked_by, "%s", locked_by);
    j->dead[i].unstarted_from = unstarted_from;
}

uint64_t sup_jobs_dead_unstarted_from(const struct sup_jobs *j, const char *locked_by)
{
    for (unsigned i = 0; i < SUP_JOBS_DEAD_MAX; i++)
        if (strcmp(j->dead[i].locked_by, locked_by) == 0)
            return j->dead[i].unstarted_from;
    return 0;
}

void sup_jobs_set_depth(struct sup_jobs *j, json_t *queues, long long dead_rows)
{
    json_decref(j->depth);
    j->depth = queues;
    j->dead_rows = dead_rows;
    j->depth_at_us = shm_now_us();
    if (queues)
        publish_depths(j->o.seg, queues, j->depth_at_us);
}

json_t *sup_jobs_json(const struct sup_jobs *j)
{
    json_t *doc;
    if (!j || !j->depth)
        return json_pack("{s:{},s:n}", "queues", "age_ms");
    doc = json_pack("{s:O,s:I,s:I}", "queues", j->depth, "age_ms",
                    (json_int_t)((shm_now_us() - j->depth_at_us) / 1000), "dead_rows",
                    (json_int_t)j->dead_rows);
    return doc;
}

void sup_jobs_wake_all(struct sup_jobs *j)
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

/* ---- the socket watcher -------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct sup_jobs *j = h->data;
    if (h != (uv_handle_t *)&j->timer && h != (uv_handle_t *)&j->sweep_timer &&
        h != (uv_handle_t *)&j->beat_timer && h != (uv_handle_t *)&j->cron_timer)
        free(h);
    if (--j->handles_open == 0 && j->stopping) {
        void (*cb)(void *) = j->stop_cb;
        void *arg = j->stop_arg;
        json_decref(j->depth);
        node_free(&j->node);
        free(j);
        if (cb)
            cb(arg);
    }
}

static void unwatch(struct sup_jobs *j)
{
    if (!j->poll)
        return;
    j->handles_open++;
    uv_close((uv_handle_t *)j->poll, on_handle_closed);
    j->poll = NULL;
    j->poll_fd = -1;
}

static void on_socket(uv_poll_t *p, int status, int events);

/* Watches the connection's socket for events (re-creating the watcher if it moved). */
static int watch(struct sup_jobs *j, int events)
{
    int fd = PQsocket(j->pg);
    if (fd < 0)
        return -EBADF;
    if (j->poll && j->poll_fd != fd)
        unwatch(j);
    if (!j->poll) {
        j->poll = malloc(sizeof *j->poll);
        if (!j->poll)
            return -ENOMEM;
        if (uv_poll_init(j->o.loop, j->poll, fd) < 0) {
            free(j->poll);
            j->poll = NULL;
            return -EBADF;
        }
        j->poll->data = j;
        j->poll_fd = fd;
        j->poll_events = 0;
    }
    if (events != j->poll_events) {
        uv_poll_start(j->poll, events, on_socket);
        j->poll_events = events;
    }
    return 0;
}

/* ---- connection life ----------------------------------------------------------------- */

static void on_reconnect_timer(uv_timer_t *t)
{
    connect_start(t->data);
}

/* Drops the connection and its slot; an op in flight goes back to the front of the queue.
 * Reconnects after the backoff unless stopping. */
static void disconnect(struct sup_jobs *j, const char *why)
{
    /* One line when an established connection goes; attempts that fail while the server
     * is away are not news (a database outage is logged by the pools). */
    if ((j->state == JC_LISTENING || j->state == JC_READY) && why)
        rt_log(RT_LOG_WARN, "job wake-up connection lost; reconnecting",
               json_pack("{s:s,s:i}", "error", why, "retry_in_ms", j->backoff_ms));
    else if (j->state == JC_CONNECTING && why)
        rt_log(RT_LOG_DEBUG, "job wake-up connection attempt failed",
               json_pack("{s:s,s:i}", "error", why, "retry_in_ms", j->backoff_ms));
    unwatch(j);
    PQfinish(j->pg);
    j->pg = NULL;
    if (j->slot >= 0) {
        if (shm_budget_release(j->o.seg, j->slot, j->token) < 0)
            rt_logf(RT_LOG_ERROR, "budget slot %d was not ours on release", j->slot);
        j->slot = -1;
    }
    PQclear(j->current_res);
    j->current_res = NULL;
    if (j->current) {
        j->current->next = j->head;
        j->head = j->current;
        if (!j->tail)
            j->tail = j->current;
        j->current = NULL;
    }
    j->state = JC_DOWN;
    uv_timer_stop(&j->sweep_timer);
    uv_timer_stop(&j->beat_timer);
    uv_timer_stop(&j->cron_timer);
    if (j->stopping)
        return;
    if (j->stop_soft) {
        /* Lost while flushing unlocks before a stop: the next start's scan frees them. */
        sup_jobs_stop(j, j->stop_cb, j->stop_arg);
        return;
    }
    uv_timer_start(&j->timer, on_reconnect_timer, (uint64_t)j->backoff_ms, 0);
    j->backoff_ms *= 2;
    if (j->backoff_ms > j->o.reconnect_max_ms)
        j->backoff_ms = j->o.reconnect_max_ms;
}

static void on_connect_deadline(uv_timer_t *t)
{
    struct sup_jobs *j = t->data;
    if (j->state == JC_CONNECTING)
        disconnect(j, "connect timeout");
}

/* Queues an op of kind unless one is queued or running already. */
static void enqueue_once(struct sup_jobs *j, int kind)
{
    struct sup_jobs_op *op;
    for (op = j->head; op; op = op->next)
        if (op->kind == kind)
            return;
    if (j->current && j->current->kind == kind)
        return;
    op = calloc(1, sizeof *op);
    if (!op)
        return;
    op->kind = kind;
    sup_jobs_enqueue_op(j, op);
}

static void on_sweep_timer(uv_timer_t *t)
{
    struct sup_jobs *j = t->data;

    /* The server restarted with fewer connections and a pool fitted the budget to it: a
     * slot beyond the usable ones is given back (the next reservation is the lowest free). */
    if (j->slot >= 0 && (uint32_t)j->slot >= shm_budget_usable(j->o.seg) && !j->current) {
        disconnect(j, "its budget slot is beyond what the server takes now");
        return;
    }
    enqueue_once(j, SUP_JOBS_OP_SWEEP);
    /* A worker SIGKILLed while its claim was in flight: the server commits that claim
     * after our unlock at its death already ran. The scan finds such jobs (locked by an
     * incarnation of this host that is gone) within one sweep. */
    enqueue_once(j, SUP_JOBS_OP_SCAN_LOCAL);
}

static void on_beat_timer(uv_timer_t *t)
{
    enqueue_once(t->data, SUP_JOBS_OP_BEAT);
}

static void on_cron_timer(uv_timer_t *t)
{
    struct sup_jobs *j = t->data;
    uv_timer_start(&j->cron_timer, on_cron_timer, sup_cron_due(j), 0);
}

/* The connection is up: LISTEN. */
static void connected(struct sup_jobs *j)
{
    uv_timer_stop(&j->timer);
    if (!PQsendQuery(j->pg, "LISTEN " JOB_CHANNEL)) {
        disconnect(j, PQerrorMessage(j->pg));
        return;
    }
    j->state = JC_LISTENING;
    if (watch(j, UV_READABLE | (PQflush(j->pg) == 1 ? UV_WRITABLE : 0)) < 0)
        disconnect(j, "cannot watch the socket");
}

static void connect_step(struct sup_jobs *j)
{
    switch (PQconnectPoll(j->pg)) {
    case PGRES_POLLING_READING:
        if (watch(j, UV_READABLE) < 0)
            disconnect(j, "cannot watch the socket");
        return;
    case PGRES_POLLING_WRITING:
        if (watch(j, UV_WRITABLE) < 0)
            disconnect(j, "cannot watch the socket");
        return;
    case PGRES_POLLING_OK:
        connected(j);
        return;
    default: {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(j->pg));
        msg[strcspn(msg, "\n")] = '\0';
        disconnect(j, msg);
        return;
    }
    }
}

static void connect_start(struct sup_jobs *j)
{
    if (j->stopping || j->state != JC_DOWN)
        return;
    j->slot = shm_budget_reserve(j->o.seg, j->token);
    if (j->slot < 0) {
        rt_log(RT_LOG_WARN, "no budget slot for the job wake-up connection; retrying",
               json_pack("{s:i}", "retry_in_ms", j->backoff_ms));
        j->slot = -1;
        disconnect(j, NULL);
        return;
    }
    j->pg = PQconnectStartParams(j->o.db->keywords, j->o.db->values, 0);
    if (!j->pg || PQstatus(j->pg) == CONNECTION_BAD) {
        disconnect(j, j->pg ? PQerrorMessage(j->pg) : "out of memory");
        return;
    }
    PQsetnonblocking(j->pg, 1);
    j->state = JC_CONNECTING;
    uv_timer_start(
        &j->timer, on_connect_deadline,
        (uint64_t)(j->o.db->connect_timeout_s > 0 ? j->o.db->connect_timeout_s : 5) * 1000, 0);
    connect_step(j);
}

/* ---- results and notifications ------------------------------------------------------- */

/* The statement in flight has delivered all its results. */
static void op_finished(struct sup_jobs *j)
{
    struct sup_jobs_op *op = j->current;
    j->current = NULL;
    const char *err = j->current_err[0] ? j->current_err : NULL;
    if (op->kind == SUP_JOBS_OP_BEAT || op->kind == SUP_JOBS_OP_LEAVE)
        sup_nodes_result(j, op, j->current_res, err);
    else if (op->kind == SUP_JOBS_OP_CRON)
        sup_cron_result(j, op, j->current_res, err);
    else if (sup_orphans_result(j, op, j->current_res, err))
        sup_jobs_wake_all(j);
    PQclear(j->current_res);
    j->current_res = NULL;
    free(op);
    if (j->stop_soft && !j->head) {
        sup_jobs_stop(j, j->stop_cb, j->stop_arg);
        return;
    }
    send_next(j);
}

/* Reads what the server sent: results of the statement in flight and notifications. */
static void read_input(struct sup_jobs *j)
{
    PGnotify *n;
    int notified = 0;

    if (!PQconsumeInput(j->pg)) {
        disconnect(j, PQerrorMessage(j->pg));
        return;
    }
    while ((n = PQnotifies(j->pg)) != NULL) {
        notified++;
        PQfreemem(n);
    }
    if (notified)
        sup_jobs_wake_all(j);
    while ((j->state == JC_LISTENING || j->current) && !PQisBusy(j->pg)) {
        PGresult *res = PQgetResult(j->pg);
        if (!res) {
            if (j->state == JC_LISTENING) {
                j->state = JC_READY;
                j->backoff_ms = RECONNECT_MIN_MS;
                rt_log(RT_LOG_INFO, "job wake-ups: listening",
                       json_pack("{s:s,s:i}", "channel", JOB_CHANNEL, "budget_slot", j->slot));
                /* Wake-ups may have been missed while down; the sweep frees old leases. */
                sup_jobs_wake_all(j);
                uv_timer_start(&j->sweep_timer, on_sweep_timer, 0, (uint64_t)j->o.sweep_ms);
                uv_timer_start(&j->beat_timer, on_beat_timer, 0, SUP_NODE_HEARTBEAT_MS);
                if (j->node.ncron > 0)
                    uv_timer_start(&j->cron_timer, on_cron_timer, 0, 0);
                send_next(j);
            } else {
                op_finished(j);
            }
            if (!j->pg)
                return;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR) {
            if (j->state == JC_LISTENING) {
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

static void on_socket(uv_poll_t *p, int status, int events)
{
    struct sup_jobs *j = p->data;

    if (j->state == JC_CONNECTING) {
        connect_step(j);
        return;
    }
    if (status < 0) {
        disconnect(j, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE) {
        int rc = PQflush(j->pg);
        if (rc < 0) {
            disconnect(j, PQerrorMessage(j->pg));
            return;
        }
        if (rc == 0 && watch(j, UV_READABLE) < 0) {
            disconnect(j, "cannot watch the socket");
            return;
        }
    }
    if (events & UV_READABLE)
        read_input(j);
    if (j->pg && PQstatus(j->pg) == CONNECTION_BAD)
        disconnect(j, "connection lost");
}

/* Sends the next queued op when the connection is idle. */
static void send_next(struct sup_jobs *j)
{
    struct sup_jobs_op *op;
    const char *sql, *values[SUP_JOBS_OP_PARAMS];
    char buf[256];
    int n;

    if (j->state != JC_READY || j->current || !j->head)
        return;
    op = j->head;
    j->head = op->next;
    if (!j->head)
        j->tail = NULL;
    op->next = NULL;
    if (op->kind == SUP_JOBS_OP_BEAT || op->kind == SUP_JOBS_OP_LEAVE)
        n = sup_nodes_sql(j, op, &sql, values);
    else if (op->kind == SUP_JOBS_OP_CRON)
        n = sup_cron_sql(j, op, &sql, values, buf, sizeof buf);
    else
        n = sup_orphans_sql(j, op, &sql, values, buf, sizeof buf);
    j->current = op;
    j->current_err[0] = '\0';
    if (!PQsendQueryParams(j->pg, sql, n, NULL, values, NULL, NULL, 0)) {
        disconnect(j, PQerrorMessage(j->pg));
        return;
    }
    if (watch(j, UV_READABLE | (PQflush(j->pg) == 1 ? UV_WRITABLE : 0)) < 0)
        disconnect(j, "cannot watch the socket");
}

void sup_jobs_enqueue_op(struct sup_jobs *j, struct sup_jobs_op *op)
{
    if (op->kind == SUP_JOBS_OP_VACUUM) {
        /* One vacuum at a time is enough. */
        bool pending = j->current && j->current->kind == SUP_JOBS_OP_VACUUM;
        for (struct sup_jobs_op *o = j->head; o && !pending; o = o->next)
            pending = o->kind == SUP_JOBS_OP_VACUUM;
        if (pending) {
            free(op);
            return;
        }
    }
    op->next = NULL;
    op->queued_us = shm_now_us();
    if (j->tail)
        j->tail->next = op;
    else
        j->head = op;
    j->tail = op;
    send_next(j);
}

/* ---- start and stop ------------------------------------------------------------------ */

int sup_jobs_start(struct sup_jobs **out, const struct sup_jobs_opts *opts)
{
    struct sup_jobs *j;
    struct sup_jobs_op *scan;

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
    j->token = opts->token ? opts->token : shm_token(SHM_SUPERVISOR_INDEX, 1);
    j->slot = -1;
    j->poll_fd = -1;
    j->backoff_ms = RECONNECT_MIN_MS;
    uv_timer_init(j->o.loop, &j->timer);
    uv_timer_init(j->o.loop, &j->sweep_timer);
    uv_timer_init(j->o.loop, &j->beat_timer);
    uv_timer_init(j->o.loop, &j->cron_timer);
    j->timer.data = j->sweep_timer.data = j->beat_timer.data = j->cron_timer.data = j;
    /* Jobs left locked by processes of this host that are gone (a previous run that was
     * killed whole) are unlocked first. */
    scan->kind = SUP_JOBS_OP_SCAN_LOCAL;
    sup_jobs_enqueue_op(j, scan);
    connect_start(j);
    *out = j;
    return 0;
}

static void on_stop_deadline(uv_timer_t *t)
{
    struct sup_jobs *j = t->data;
    sup_jobs_stop(j, j->stop_cb, j->stop_arg);
}

void sup_jobs_stop(struct sup_jobs *j, void (*cb)(void *arg), void *arg)
{
    struct sup_jobs_op *op, **link;

    if (!j || j->stopping)
        return;
    if (!j->stop_soft && j->state == JC_READY) {
        /* Unlocks of workers that just died go out first, then this node leaves the
         * registry (at most 2 s); the rest is housekeeping that the next start redoes. */
        for (link = &j->head; (op = *link) != NULL;) {
            if (op->kind != SUP_JOBS_OP_UNLOCK) {
                *link = op->next;
                free(op);
            } else {
                j->tail = op;
                link = &op->next;
            }
        }
        if (!j->head)
            j->tail = NULL;
        if ((op = calloc(1, sizeof *op)) != NULL) {
            op->kind = SUP_JOBS_OP_LEAVE;
            sup_jobs_enqueue_op(j, op);
        }
        /* The leave may be in flight already (sent at once on an idle connection). */
        if (j->head || (j->current && (j->current->kind == SUP_JOBS_OP_UNLOCK ||
                                       j->current->kind == SUP_JOBS_OP_LEAVE))) {
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
    j->handles_open += 4;
    uv_close((uv_handle_t *)&j->timer, on_handle_closed);
    uv_close((uv_handle_t *)&j->sweep_timer, on_handle_closed);
    uv_close((uv_handle_t *)&j->beat_timer, on_handle_closed);
    uv_close((uv_handle_t *)&j->cron_timer, on_handle_closed);
}
