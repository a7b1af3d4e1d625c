/*
 * Cluster test helpers (clustertest.h).
 */
#include "tests/lib/clustertest.h"
#include "tests/lib/pgtest.h"

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
