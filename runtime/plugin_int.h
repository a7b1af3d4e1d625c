/*
 * What the files of the plugin API in runtime/ share: plugin_api.c's replica reads go
 * through plugin_bridge.c's loop bridge.
 */
#ifndef PGCORRAL_PLUGIN_INT_H
#define PGCORRAL_PLUGIN_INT_H

#include <libpq-fe.h>

#include "runtime/plugin_abi.h"

/*
 * Runs sql with its n values on env's replica pool (through env's read router when it has
 * one, so on the primary while the replica is down) on the loop, and waits for it. Returns
 * the result (caller PQclears), or NULL with *err set (RT_EPOOL_CLOSED when the env is
 * closing). values and label are borrowed until it returns. Handler thread, never the
 * loop's.
 */
PGresult *plugin_bridge_read(struct plugin_env *env, const char *label, const char *sql, int n,
                             const char *const *values, struct rt_error *err);

#endif
