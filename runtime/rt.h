/*
 * The runtime library's public header: the one header other modules include. Each part
 * of the runtime declares its API in its own rt_*.h, included here.
 */
#ifndef PGCORRAL_RT_H
#define PGCORRAL_RT_H

#include "rt_dburl.h"
#include "rt_id.h"
#include "rt_json.h"
#include "rt_input.h"
#include "rt_log.h"
#include "rt_pgconn.h"
#include "rt_pool.h"
#include "rt_read_pool.h"
#include "rt_stats.h"
#include "rt_version.h"

#endif
