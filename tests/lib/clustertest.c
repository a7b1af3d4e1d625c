/*
 * Cluster test helpers (clustertest.h).
 */
#include <stdio.h>

#include "tests/lib/clustertest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

void ct_start_node(struct ts_sup *s, const char *name, const char *url, const char *plugin,
                   const char *cluster_budget)
{
    char env_url[1200];
    char *env[] = {env_url, NULL};
    char *args[] = {"--jobs",
                    "1",
                    "--listen",
                    "127.0.0.1:0",
                    "--node-name",
                    (char *)name,
                    "--plugin",
                    (char *)plugin,
                    "--lease-heartbeat",
                    "1",
                    "--lease-ttl",
                    "3",
                    cluster_budget ? "--cluster-budget" : NULL,
                    (char *)cluster_budget,
                    NULL};

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url);
    s->control = pgt_tmp_path(name);
    if (!ts_start(s, name, 1, args, env))
        bail("node %s did not start", name);
}

json_t *ct_cluster(const char *control)
{
    json_t *doc = pgt_ctl(control, "cluster");
    json_t *c = json_incref(json_object_get(doc, "cluster"));
    json_decref(doc);
    return c;
}

int ct_peak(struct ot_sampler *s)
{
    int peak = 0;
    for (int i = 0; i < atomic_load(&s->nsamples); i++)
        if (s->samples[i].n > peak)
            peak = s->samples[i].n;
    return peak;
}
