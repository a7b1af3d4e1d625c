/*
 * GET /metrics: the shared segment's figures (budget, pools, queries, HTTP, jobs,
 * workers) in the Prometheus text exposition format 0.0.4, with HELP and TYPE lines and
 * the log2 histograms as cumulative _bucket/_sum/_count series.
 */
#ifndef PGCORRAL_RT_METRICS_H
#define PGCORRAL_RT_METRICS_H

#include <stddef.h>

#include "shm/shm.h"

/* Content-Type of the exposition. */
#define RT_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * Renders the exposition of seg. Returns 0 and writes *out (NUL-terminated; caller frees
 * with free()) and *len, or -ENOMEM. Only reads shm: any process, any thread.
 *
 * Counters (pgcorral_<name>_total) and histograms (pgcorral_<name>_seconds) are totals
 * over live and retired workers, so they never go backwards when a worker is replaced.
 * pgcorral_build_info{version="0.3.0",git="1a2b3c4"} is 1 and names the build.
 * Gauges (pool and HTTP connections, worker start and heartbeat times) carry
 * {role="web|job",worker="N"} labels, one series per live worker.
 */
__attribute__((warn_unused_result)) int rt_metrics_render(const struct shm_segment *seg, char **out,
                                                          size_t *len);

#endif
