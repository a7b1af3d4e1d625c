/*
 * Statistics as JSON, read from the shared segment: the answers of the control socket's
 * `stats`, `pools` and `slow` commands and of GET /api/v1/stats. Any process may call
 * these; they only read shm.
 */
#ifndef PGCORRAL_RT_STATS_H
#define PGCORRAL_RT_STATS_H

#include <jansson.h>

#include "shm/shm.h"

/* A counter of struct shm_counters by its JSON/metrics name. */
struct rt_counter_desc {
    const char *name;
    size_t offset; /* offsetof(struct shm_counters, field) */
    const char *help;
};
extern const struct rt_counter_desc rt_counter_descs[];
extern const size_t rt_counter_ndescs;

/* A histogram of struct shm_hists by name. */
struct rt_hist_desc {
    const char *name; /* "acquire_wait_us" */
    size_t offset;    /* offsetof(struct shm_hists, field) */
    const char *help;
    bool counts; /* the values are counts (claim_batch), not microseconds */
};
extern const struct rt_hist_desc rt_hist_descs[];
extern const size_t rt_hist_ndescs;

/* "web", "job" or "none"; "starting", "ready", ... Static strings. */
const char *rt_role_name(unsigned role);
const char *rt_state_name(unsigned state);

/*
 * {"version":"0.3.0","git":"1a2b3c4",
 *  "totals":{counter:n,...},"histograms":{name:{"count","sum_us","p50","p90","p99"}},
 *  "budget":{"slots","in_use"},"workers":[{"role","index","pid","state",counters...}]}
 * Totals include workers that died (retired). Returns a new reference, NULL on ENOMEM.
 */
json_t *rt_stats_json(const struct shm_segment *seg);

/*
 * {"total":{"open","in_use","idle","waiting","acquires","timeouts","connects",
 *  "connect_errors","retries","slow_queries","acquire_wait_us":{"p50","p99"},
 *  "query_us":{"p50","p99"}},"workers":[{"role","index","pid","limit",...same}]}
 */
json_t *rt_pools_json(const struct shm_segment *seg);

/* [{"ts","duration_ms","pid","role","worker","query"}], newest first, at most max. */
json_t *rt_slow_json(const struct shm_segment *seg, int max);

#endif
