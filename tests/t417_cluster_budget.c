/*
 * Three supervisors on one PostgreSQL act as three nodes sharing one cluster budget C = 12
 * (each would take B = 5 alone). Under wrk on every node and busy job workers, the
 * nodes' connections sampled every 100 ms in pg_stat_activity never exceed C, and the
 * leases never add up to more. Scaling one node up borrows the slots the idle others give
 * back. A single node with no --cluster-budget grows online where B used to be fixed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/clustertest.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

#define C 12
#define NODES 3

static PGconn *db;

static int lease_field(const char *control, const char *field)
{
    json_t *c = ct_cluster(control);
    int v = c ? (int)json_integer_value(json_object_get(c, field)) : -1;
    json_decref(c);
    return v;
}

struct lease_want {
    const char *control;
    const char *field;
    int at_least;
};

static bool lease_at_least(void *arg)
{
    struct lease_want *w = arg;
    return lease_field(w->control, w->field) >= w->at_least;
}

static bool three_nodes_seen(void *arg)
{
    const char *const *controls = arg;
    for (int i = 0; i < NODES; i++) {
        json_t *c = ct_cluster(controls[i]);
        size_t n = c ? json_array_size(json_object_get(c, "nodes")) : 0;
        json_decref(c);
        if (n != NODES)
            return false;
    }
    return true;
}

static long long leased_sum(void)
{
    return pgt_query_ll(db, "SELECT coalesce(sum(slots_leased), 0) FROM pgcorral.nodes"
                            " WHERE lease_expires_at > now()");
}

static bool three_web_ready(void *control)
{
    return ot_all_ready(control, 3, 1);
}

/* B = 5 (1 web + 1 job worker x connection_limit 2, + 1) with no --cluster-budget: the
 * budget grows online, by ctl scale, within what the server allows. */
static void single_node_grows(const char *plugin)
{
    const char *url = jt_create_job_db("pgct_t417_one");
    char env_url[1200];
    char *env[] = {env_url, NULL};
    struct ts_sup one;
    json_t *doc;

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=2", url);
    char *args[] = {"--jobs", "1", "--listen", "127.0.0.1:0", "--plugin", (char *)plugin, NULL};
    one.control = pgt_tmp_path("one.sock");
    if (!ts_start(&one, "one", 1, args, env))
        bail("the single node did not start");
    is_int(lease_field(one.control, "slots_leased"), 5, "one node alone leases its B = 5");
    doc = pgt_ctl(one.control, "scale web 3");
    ok(json_object_get(doc, "scaled") != NULL,
       "ctl scale web 3 (B 5 -> 9) is accepted without --max-db-connections");
    json_decref(doc);
    struct lease_want grown = {one.control, "slots_leased", 9};
    ok(pgt_wait_until(lease_at_least, &grown, 10000),
       "and its lease grows to 9 at the next renewal");
    doc = pgt_ctl(one.control, "budget");
    is_int(json_integer_value(json_object_get(json_object_get(doc, "budget"), "slots")), 9,
           "ctl budget says slots 9");
    json_decref(doc);
    ok(pgt_wait_until(three_web_ready, (void *)one.control, 10000),
       "three web workers and the job worker are ready");

    ok(ts_stop(&one), "the single node stops cleanly");

    pgt_proc_cleanup(&one.p);
}

int main(void)
{
    const char *url, *plugin;
    char limited[1200];
    const char *names[NODES] = {"node-a", "node-b", "node-c"};
    const char *controls[NODES];
    struct ts_sup nodes[NODES];
    struct ot_wrk wrk[NODES];
    struct ot_wrk_result res[NODES];
    struct ot_sampler sampler;
    int peak;
    json_t *doc;

    tap_timeout(120);
    pgt_db_url();
    plugin = jt_build_plugin("jobs", NULL);
    url = jt_create_job_db("pgct_t417");
    db = jt_connect(url);
    jt_create_runs_table(db);
    snprintf(limited, sizeof limited, "%s&connection_limit=2", url);

    ot_sampler_start(&sampler, url, CT_MARKED_SQL, 100);
    for (int i = 0; i < NODES; i++) {
        ct_start_node(&nodes[i], names[i], limited, plugin, i == 0 ? "12" : NULL);
        controls[i] = nodes[i].control;
    }
    ok(pgt_wait_until(three_nodes_seen, controls, 10000),
       "every node sees three nodes holding a lease");
    is_int(pgt_query_ll(db, "SELECT budget FROM pgcorral.cluster"), C,
           "the first node recorded --cluster-budget 12");
    ok(leased_sum() <= C, "the leases add up to %lld <= C", leased_sum());
    char *metrics = NULL;
    ok(ot_http_get(nodes[1].port, "/metrics", &metrics) == 200 && metrics &&
           strstr(metrics, "\npgcorral_cluster_budget_slots 12\n") &&
           strstr(metrics, "\npgcorral_cluster_nodes 3\n") &&
           strstr(metrics, "\npgcorral_lease_fenced 0\n") &&
           strstr(metrics, "\npgcorral_lease_renewal_age_seconds "),
       "/metrics of node-b: cluster budget 12, 3 nodes, not fenced, the renewal's age");
    free(metrics);

    /* Load: wrk on every node's health route, and 60 jobs of 50 ms on the job workers. */
    jt_exec(db, "SELECT pgcorral.add_job('t.record', '{\"ms\":50}') FROM generate_series(1, 60)");
    for (int i = 0; i < NODES; i++)
        ot_wrk_start(&wrk[i], nodes[i].port, "/api/v1/health", 8, 30);
    long long ran =
        pgt_wait_at_least(db, "SELECT count(*) FROM t_runs WHERE phase = 'done'", 60, 30000);
    ok(ran >= 60, "the 60 jobs ran under load (%lld)", ran);
    for (int i = 0; i < NODES; i++)
        diag("%s under load: leases %d, keeps %d, holds %d", names[i],
             lease_field(controls[i], "slots_leased"), lease_field(controls[i], "slots_target"),
             lease_field(controls[i], "slots_in_use"));
    for (int i = 0; i < NODES; i++)
        ot_wrk_stop(&wrk[i], &res[i]);
    for (int i = 0; i < NODES; i++)
        ok(res[i].ran && res[i].requests > 0 && res[i].err_connect + res[i].err_read == 0,
           "wrk on %s: %ld requests, %ld not 2xx, no socket error", names[i], res[i].requests,
           res[i].non2xx);

    doc = pgt_ctl(controls[2], "scale web 6");
    const char *err = json_string_value(json_object_get(doc, "error"));
    ok(err && strstr(err, "(7 x 2) + 1 = 15 exceeds the cluster budget of 12") &&
           strstr(err, "3 nodes share it") && strstr(err, "pgcorral cluster set-budget"),
       "beyond C the refusal names the cluster's numbers (%s)", err ? err : "no error");
    json_decref(doc);

    /* Scale node-c up (B 5 -> 9); a and b idle give their slots back within 5 heartbeats. */
    doc = pgt_ctl(controls[2], "scale web 3");
    ok(json_object_get(doc, "scaled") != NULL, "node-c: scale web 3 is accepted within C");
    json_decref(doc);
    ot_wrk_start(&wrk[2], nodes[2].port, "/api/v1/health", 16, 30);
    struct lease_want borrow = {controls[2], "slots_leased", 7};
    bool borrowed = pgt_wait_until(lease_at_least, &borrow, 20000);
    ok(borrowed, "node-c borrows what the idle nodes give back: it leases %d (>= 7)",
       lease_field(controls[2], "slots_leased"));
    ok(lease_field(controls[0], "slots_leased") <= 3 &&
           lease_field(controls[1], "slots_leased") <= 3,
       "node-a and node-b gave back down to %d and %d", lease_field(controls[0], "slots_leased"),
       lease_field(controls[1], "slots_leased"));
    ot_wrk_stop(&wrk[2], &res[2]);
    ok(res[2].ran && res[2].err_connect + res[2].err_read == 0,
       "wrk on the scaled node: %ld requests, no socket error", res[2].requests);
    ok(leased_sum() <= C, "the leases still add up to %lld <= C", leased_sum());

    ot_sampler_stop(&sampler);
    peak = ct_peak(&sampler);
    ok(atomic_load(&sampler.nsamples) > 50 && peak <= C,
       "pg_stat_activity sampled every 100 ms: %d samples, at most %d of the nodes' "
       "connections (C = %d)",
       atomic_load(&sampler.nsamples), peak, C);
    ot_sampler_free(&sampler);

    for (int i = 0; i < NODES; i++) {
        ok(ts_stop(&nodes[i]), "%s stops cleanly", names[i]);
        pgt_proc_cleanup(&nodes[i].p);
    }
    is_int(pgt_query_ll(db, "SELECT count(*) FROM pgcorral.nodes"), 0,
           "a clean stop removes the node and its lease");

    single_node_grows(plugin);
    PQfinish(db);
    jt_remove_plugins();
    return done_testing();
}
