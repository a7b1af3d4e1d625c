/*
 * This node's lease of the cluster budget C (README "Several hosts"; the SQL is migration
 * 10). Every heartbeat the supervisor renews it on its job-queue connection, ahead of any
 * other queued statement: it says what it wants and holds, and the server grants, under
 * one advisory lock, so that the leases never add up to more than C. The grant becomes the
 * cap on the slots this node's workers may hold (shm_budget_set_lease; one slot of the
 * lease is this connection's).
 *
 * Fencing. The server expires a lease at now() of its last renewal + TTL, by its own
 * clock, and only then may grant those slots to another node. This node sends a renewal
 * at monotonic time t0; the server's now() for it is later than t0. So a lease renewed by
 * a renewal sent at t0 runs at least until t0 + TTL, and the node trusts it only until
 * t0 + TTL - margin (margin = max(heartbeat, TTL / 5)): after that, until a renewal
 * succeeds again, no worker reserves a new slot. A clock that runs up to margin/TTL (20 %)
 * slower than the server's is still inside the bound. Connections the node opened while
 * it trusted the lease may outlive it when the node is cut off but still connected; the
 * node that finds the lease expired terminates them (by the ' @NODE' mark in their
 * application_name) before it takes the slots.
 *
 * Demand. The node wants its whole budget B; but when other nodes run and no worker of
 * it waited for a slot for 5 heartbeats, it wants only the connections its workers have
 * checked out, plus its own (at least SUP_LEASE_MIN): the pools close idle connections
 * beyond that (lease_excess) and the slots go back to the cluster. A worker that waits
 * again makes it want B, in a renewal sent within SUP_LEASE_DEMAND_MS. The server also asks a node
 * above its fair share C / nodes to give back down to it while another node is below its own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_version.h"

/* Slots a node keeps when it gives idle ones back: its own connection and one worker's. */
#define SUP_LEASE_MIN 2
/* Idle slots are given back after this many heartbeats without a worker waiting. */
#define SUP_LEASE_IDLE_BEATS 5
/* How often the supervisor looks for workers that wait for a slot the lease does not
 * give: one load from the segment; a renewal then goes out at once, not at the next
 * heartbeat, so that a burst after an idle spell waits milliseconds, not seconds. */
#define SUP_LEASE_DEMAND_MS 100
#define SUP_LEASE_DEMAND_GAP_MS 250

static const char renew_sql[] =
    "SELECT granted, budget, target, array_to_string(expired, ', '), nodes"
    " FROM pgcorral.lease_renew($1, $2, $3::int, $4, $5::int, $6::int, $7::int, $8::int,"
    "   $9::text[])";

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* The slots the workers may hold, and the fence, into the segment; report fields too. */
static void lease_apply(struct sup_jobq *j)
{
    struct sup_lease *l = &j->lease;
    struct shm_segment *seg = j->o.seg;
    int allowed = l->granted < l->target ? l->granted : l->target;

    /* One slot of the lease is the job-queue connection's own (not a worker's). */
    shm_budget_set_lease(seg, allowed > 1 ? (uint32_t)(allowed - 1) : 0, l->fenced);
    atomic_store_explicit(&seg->cluster_budget, (uint32_t)l->budget, memory_order_relaxed);
    atomic_store_explicit(&seg->cluster_nodes, (uint32_t)l->nodes, memory_order_relaxed);
    atomic_store_explicit(&seg->lease_granted, (uint32_t)l->granted, memory_order_relaxed);
    atomic_store_explicit(&seg->lease_target, (uint32_t)l->target, memory_order_relaxed);
}

/* Stops trusting the lease (no new worker connection), once per lapse. */
static void lease_fence(struct sup_jobq *j, uint64_t now)
{
    struct sup_lease *l = &j->lease;

    if (l->fenced)
        return;
    l->fenced = true;
    atomic_fetch_add_explicit(&j->o.seg->lease_fences, 1, memory_order_relaxed);
    lease_apply(j);
    rt_log(RT_LOG_WARN,
           "lease of the cluster budget not renewed in time: no new database connection "
           "until it is",
           json_pack("{s:s,s:i,s:I}", "node", j->node.name, "lease_ttl_s", l->ttl_ms / 1000,
                     "since_renewal_sent_ms", (json_int_t)(now - l->sent_ms)));
}

static void on_fence_timer(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;
    struct sup_lease *l = &j->lease;
    uint64_t now = mono_ms();

    if (now < l->trusted_until_ms) {
        uv_timer_start(&l->fence_timer, on_fence_timer, l->trusted_until_ms - now, 0);
        return;
    }
    lease_fence(j, now);
}

/* Workers wait for slots while the lease holds less than B: renew now, at most every
 * SUP_LEASE_DEMAND_GAP_MS (a full cluster must not turn waiting into a renewal storm
 * on the advisory lock). */
static void on_demand_timer(uv_timer_t *t)
{
    struct sup_jobq *j = t->data;
    struct sup_lease *l = &j->lease;

    if (atomic_load_explicit(&j->o.seg->waiters, memory_order_relaxed) > 0 &&
        l->granted < (int)shm_budget_size(j->o.seg) &&
        mono_ms() - l->sent_ms >= SUP_LEASE_DEMAND_GAP_MS)
        sup_jobq_renew_lease(j);
}

/* Trust the lease a renewal sent at sent_ms granted (see the top). */
static void lease_trust(struct sup_jobq *j, uint64_t sent_ms)
{
    struct sup_lease *l = &j->lease;
    uint64_t now = mono_ms();

    l->trusted_until_ms = sent_ms + (uint64_t)l->ttl_ms - (uint64_t)l->margin_ms;
    /* An answer that came after its own trust ran out proves nothing: still fenced. */
    if (now >= l->trusted_until_ms) {
        lease_fence(j, now);
        lease_apply(j);
        return;
    }
    if (l->fenced) {
        l->fenced = false;
        rt_log(RT_LOG_INFO, "lease of the cluster budget renewed: connections may open again",
               json_pack("{s:s,s:i}", "node", j->node.name, "granted", l->granted));
    }
    lease_apply(j);
    uv_timer_start(&l->fence_timer, on_fence_timer, l->trusted_until_ms - now, 0);
}

void sup_lease_start(struct sup_jobq *j)
{
    struct sup_lease *l = &j->lease;
    const struct sup_jobq_opts *o = &j->o;

    l->ttl_ms = (o->lease_ttl_s > 0 ? o->lease_ttl_s : 10) * 1000;
    l->heartbeat_ms = (o->lease_heartbeat_s > 0 ? o->lease_heartbeat_s : 2) * 1000;
    l->margin_ms = l->ttl_ms / 5 > l->heartbeat_ms ? l->ttl_ms / 5 : l->heartbeat_ms;
    l->granted = o->first_lease.granted;
    l->budget = o->first_lease.budget;
    l->target = o->first_lease.target;
    l->nodes = o->first_lease.nodes;
    l->busy_ms = mono_ms();
    uv_timer_init(o->loop, &l->fence_timer);
    uv_timer_init(o->loop, &l->demand_timer);
    l->fence_timer.data = l->demand_timer.data = j;
    uv_timer_start(&l->demand_timer, on_demand_timer, SUP_LEASE_DEMAND_MS, SUP_LEASE_DEMAND_MS);
    /* Without a first lease (tests that start the connection alone) the segment stays
     * uncapped until the first renewal. */
    if (o->first_lease.sent_ms > 0)
        lease_trust(j, o->first_lease.sent_ms);
}

void sup_lease_hand_off(struct sup_jobq *j)
{
    uv_timer_stop(&j->lease.fence_timer);
    uv_timer_stop(&j->lease.demand_timer);
}

void sup_lease_close(struct sup_jobq *j, uv_close_cb cb)
{
    uv_close((uv_handle_t *)&j->lease.fence_timer, cb);
    uv_close((uv_handle_t *)&j->lease.demand_timer, cb);
}

/* Connections the workers have checked out now (a snapshot of their pool gauges). */
static int checked_out(const struct shm_segment *seg)
{
    int n = 0;
    for (int i = 0; i < SHM_MAX_WORKERS; i++)
        n += (int)atomic_load_explicit(&seg->workers[i].pool_in_use, memory_order_relaxed);
    return n;
}

int sup_lease_sql(struct sup_jobq *j, const char **sql, const char *values[SUP_JOBQ_OP_PARAMS])
{
    static char want[16], in_use[16], ttl[16], dflt[16], live[SHM_MAX_WORKERS * 100 + 4];
    struct sup_lease *l = &j->lease;
    struct shm_segment *seg = j->o.seg;
    uint64_t now = mono_ms();
    int w = (int)shm_budget_size(seg), used = (int)shm_budget_in_use(seg);

    if (atomic_load_explicit(&seg->waiters, memory_order_relaxed) > 0)
        l->busy_ms = now;
    else if (l->nodes > 1 && now - l->busy_ms >= (uint64_t)l->heartbeat_ms * SUP_LEASE_IDLE_BEATS) {
        int keep = checked_out(seg) + 1;
        if (keep < SUP_LEASE_MIN)
            keep = SUP_LEASE_MIN;
        if (keep < w)
            w = keep;
    }
    l->sent_ms = now;
    snprintf(want, sizeof want, "%d", w);
    snprintf(in_use, sizeof in_use, "%d", used);
    snprintf(ttl, sizeof ttl, "%d", l->ttl_ms / 1000);
    snprintf(dflt, sizeof dflt, "%d", j->o.first_lease.budget > 0 ? j->o.first_lease.budget : w);
    sup_jobq_live_workers(seg, live, sizeof live);
    *sql = renew_sql;
    values[0] = j->node.name;
    values[1] = j->node.host;
    values[2] = j->node.pid;
    values[3] = PGCORRAL_VERSION;
    values[4] = want;
    values[5] = in_use;
    values[6] = ttl;
    values[7] = dflt;
    values[8] = live;
    return 9;
}

void sup_lease_result(struct sup_jobq *j, PGresult *res, const char *err)
{
    struct sup_lease *l = &j->lease;
    json_t *view;

    if (err || PQntuples(res) != 1) {
        /* Logged once per run of failures; the fence timer stops new connections in time. */
        if (!l->failing)
            rt_log(RT_LOG_WARN, "lease renewal failed; retrying",
                   json_pack("{s:s,s:s}", "node", j->node.name, "error",
                             err ? err : "no row from pgcorral.lease_renew"));
        l->failing = true;
        return;
    }
    if (l->failing)
        rt_log(RT_LOG_INFO, "lease renewal works again", json_pack("{s:s}", "node", j->node.name));
    l->failing = false;
    l->granted = atoi(PQgetvalue(res, 0, 0));
    l->budget = atoi(PQgetvalue(res, 0, 1));
    l->target = atoi(PQgetvalue(res, 0, 2));
    if (PQgetvalue(res, 0, 3)[0])
        rt_log(RT_LOG_WARN,
               "lease of another node expired: its connections were terminated and its jobs "
               "released",
               json_pack("{s:s,s:s}", "node", j->node.name, "expired", PQgetvalue(res, 0, 3)));
    atomic_store_explicit(&j->o.seg->lease_renewed_us, shm_now_us(), memory_order_relaxed);
    view = json_loads(PQgetvalue(res, 0, 4), 0, NULL);
    if (view) {
        json_decref(l->view);
        l->view = view;
        l->nodes = (int)json_array_size(view);
    }
    lease_trust(j, l->sent_ms);
}

const struct sup_lease *sup_jobq_lease(const struct sup_jobq *j)
{
    return j ? &j->lease : NULL;
}

json_t *sup_jobq_cluster_json(const struct sup_jobq *j)
{
    const struct sup_lease *l = &j->lease;
    uint64_t now = mono_ms();

    return json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:b,s:I,s:i,s:i,s:o}", "node", j->node.name,
                     "cluster_budget", l->budget, "slots_leased", l->granted, "slots_target",
                     l->target, "slots_in_use", (int)shm_budget_in_use(j->o.seg), "budget",
                     (int)shm_budget_size(j->o.seg), "fenced", l->fenced, "trusted_for_ms",
                     (json_int_t)(l->trusted_until_ms > now ? l->trusted_until_ms - now : 0),
                     "lease_ttl_s", l->ttl_ms / 1000, "lease_heartbeat_s", l->heartbeat_ms / 1000,
                     "nodes", l->view ? json_incref(l->view) : json_array());
}
