/*
 * bench-http's second accounts route: the handler of examples/accounts.c registered without
 * PGC_ROUTE_ON_LOOP (so on a thread of the web worker's threadpool), at
 * GET /bench/accounts-thread/:id, to measure in the same run what running on the loop saves.
 */
#define pgc_plugin_init accounts_example_init /* the example's own registration, unused */
#include "examples/accounts.c"
#undef pgc_plugin_init

int pgc_plugin_init(struct pgc_registry *reg);

int pgc_plugin_init(struct pgc_registry *reg)
{
    return pgc_register_route(reg, "GET", "/bench/accounts-thread/:id", accounts, 0);
}
