/*
 * Helpers of the cluster tests (t417, t418): several supervisors as nodes of one cluster
 * budget, asked through their control sockets, and the nodes' connections counted on the
 * server.
 */
#ifndef PGCORRAL_CLUSTERTEST_H
#define PGCORRAL_CLUSTERTEST_H

#include <jansson.h>

#include "tests/lib/opstest.h"

/* Every node's connections (workers' and supervisors'), marked " @NODE" in their
 * application_name, in the current database: for an ot_sampler. */
#define CT_MARKED_SQL                                                                              \
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"                     \
    " AND application_name LIKE 'pgcorral % @%' AND pid <> pg_backend_pid()"

struct ts_sup;

/*
 * Starts a node: `pgcorral run --web 1 --jobs 1` on 127.0.0.1:0 with DATABASE_URL=url,
 * --node-name name, --plugin plugin, --lease-heartbeat 1, --lease-ttl 3 and, when
 * cluster_budget is not NULL, --cluster-budget cluster_budget; its control socket is
 * pgt_tmp_path(name). Bails out when it does not come up.
 */
void ct_start_node(struct ts_sup *s, const char *name, const char *url, const char *plugin,
                   const char *cluster_budget);

/* The `cluster` answer of the supervisor at control (new reference), or NULL. */
json_t *ct_cluster(const char *control);

/* The largest count a stopped sampler saw (0 for none). */
int ct_peak(struct ot_sampler *s);

#endif
