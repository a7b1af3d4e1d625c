/*
 * What the files of the plugin API in runtime/ share: plugin_api.c's replica reads, the
 * plain statements of route handlers that start without a connection, and the connection
 * such a handler pins, go through plugin_bridge.c's loop bridge.
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

/*
 * Runs sql with its n values on env's primary pool on the loop (rt_pool_query, so
 * auto-pipelined when the pool pipelines it), and waits for it. request_id (may be NULL)
 * names the HTTP request in the slow-query log. Returns as plugin_bridge_read. Handler
 * thread, never the loop's.
 */
PGresult *plugin_bridge_exec(struct plugin_env *env, const char *label, const char *request_id,
                             const char *sql, int n, const char *const *values,
                             struct rt_error *err);

/*
 * Checks out a connection of env's primary pool on the loop and lends it to the calling
 * thread (rt_conn_lend): only that thread uses it, with the blocking rt_conn_exec* / rt_tx
 * calls, until the loop takes it back with rt_conn_return. Waits (pool_timeout). Returns the
 * connection, or NULL with *err set (pool timeout, database unreachable, RT_EPOOL_CLOSED
 * when the env is closing). label is borrowed until it returns. Handler thread.
 */
struct rt_conn *plugin_bridge_pin(struct plugin_env *env, const char *label, struct rt_error *err);

#endif
