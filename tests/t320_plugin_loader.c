/*
 * The plugin loader: a good plugin's tasks and routes are found; every way a plugin can be
 * wrong (missing file, undefined symbol, no or another ABI version, no init, failing init,
 * duplicate task or route, a built-in route, a bad name) stops loading with a message that
 * names the plugin and the problem; the supervisor's check unloads, so a rebuilt plugin is
 * what workers load afterwards.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "tests/lib/jobtest.h"
#include "tests/tap.h"
#include "workers/plugin.h"
#include "workers/workers.h"

/* Loads paths; returns the error message ("" on success) and frees the registry. */
static const char *load_error(const char *a, const char *b)
{
    static char err[1024];
    const char *paths[] = {a, b, NULL};
    struct pgc_registry *reg = NULL;
    err[0] = '\0';
    if (plugin_registry_load(&reg, paths, err, sizeof err) == 0) {
        plugin_registry_free(reg);
        err[0] = '\0';
    }
    return err;
}

static void expect_error(const char *a, const char *b, const char *needle, const char *what)
{
    const char *err = load_error(a, b);
    const char *named = b ? b : a;
    if (!ok(strstr(err, needle) && strstr(err, strrchr(named, '/') + 1), "%s", what))
        diag("  error: '%s'", err);
    else
        diag("  %s", err);
}

int main(void)
{
    struct pgc_registry *reg;
    struct plugin_params params;
    char err[1024];
    bool mismatch;

    tap_timeout(60);
    const char *good = jt_build_plugin("variants", "-DGOOD");
    const char *paths[] = {good, NULL};

    ok(plugin_registry_load(&reg, paths, err, sizeof err) == 0, "a good plugin loads");
    const struct plugin_task *t = plugin_task_find(reg, "v.b");
    ok(t && t->timeout_ms == 1000 && strcmp(t->plugin, good) == 0,
       "its task is found, with its timeout and plugin");
    ok(!plugin_task_find(reg, "v.c"), "an unregistered task is not");
    const struct plugin_route *r =
        plugin_route_match(reg, "GET", "/v/items/42", strlen("/v/items/42"), &params, NULL);
    ok(r && strcmp(r->path, "/v/items/:id") == 0 && params.n == 1 && params.value_len[0] == 2 &&
           memcmp(params.value[0], "42", 2) == 0,
       "a route with a :id segment matches and captures it");
    r = plugin_route_match(reg, "GET", "/v/items/new", strlen("/v/items/new"), &params, NULL);
    ok(r && (r->flags & PGC_ROUTE_READONLY) && params.n == 0,
       "a literal segment wins over a parameter; the read-only flag is kept");
    r = plugin_route_match(reg, "DELETE", "/v/items", strlen("/v/items"), NULL, &mismatch);
    ok(!r && mismatch, "a known path with another method is told apart (405)");
    r = plugin_route_match(reg, "GET", "/v/nothing", strlen("/v/nothing"), NULL, &mismatch);
    ok(!r && !mismatch, "an unknown path does not match (404)");
    plugin_registry_free(reg);

    expect_error("/nonexistent/app.so", NULL, "cannot load it", "a missing file is named");
    expect_error(jt_build_plugin("variants", "-DUNDEFINED"), NULL, "pgc_no_such_function",
                 "an undefined symbol is named (RTLD_NOW)");
    expect_error(jt_build_plugin("variants", "-DNO_ABI"), NULL, "not built against pgcorral.h",
                 "a plugin without the ABI stamp is refused");
    expect_error(jt_build_plugin("variants", "-DBAD_ABI"), NULL, "plugin ABI 2",
                 "a plugin built for another ABI version is refused");
    expect_error(jt_build_plugin("variants", "-DNO_INIT"), NULL, "no pgc_plugin_init",
                 "a plugin without pgc_plugin_init is refused");
    expect_error(jt_build_plugin("variants", "-DINIT_FAILS"), NULL, "returned -5",
                 "a failing pgc_plugin_init stops loading");
    expect_error(jt_build_plugin("variants", "-DBAD_NAME"), NULL, "has space",
                 "a bad task name is refused");
    expect_error(good, jt_build_plugin("variants", "-DDUP_TASK"),
                 "task \"v.a\" is registered twice", "a task registered by two plugins is refused");
    const char *e = load_error(good, jt_build_plugin("variants", "-DDUP_TASK"));
    ok(strstr(e, good) != NULL, "and both plugins are named");
    expect_error(good, jt_build_plugin("variants", "-DDUP_ROUTE"), "registered twice",
                 "a route registered twice (other parameter name) is refused");
    expect_error(jt_build_plugin("variants", "-DBUILTIN_ROUTE"), NULL, "built into pgcorral",
                 "a built-in route cannot be taken");
    expect_error(good, good, "given twice", "the same plugin twice is refused");

    /* The supervisor's check unloads: a rebuilt file at the same path is what loads next. */
    const char *path = "/tmp/pgct-t320-rebuilt.so";
    char cmd[512];
    snprintf(cmd, sizeof cmd, "cp %s %s", good, path);
    char *tasks = NULL;
    ok(system(cmd) == 0 && plugin_check((const char *[]){path, NULL}, &tasks, err, sizeof err) == 0,
       "plugin_check loads a good plugin");
    /* What the supervisor records in pgcorral.nodes for the registry. */
    is_str(tasks, "[\"v.a\",\"v.b\"]", "plugin_check lists the tasks the plugin registers");
    free(tasks);
    snprintf(cmd, sizeof cmd, "cp %s %s.new && mv %s.new %s",
             jt_build_plugin("variants", "-DGOOD2"), path, path, path);
    ok(system(cmd) == 0 &&
           plugin_load_process((const char *[]){path, NULL}, err, sizeof err) == 0 &&
           plugin_task_find(plugin_process_registry(), "v2.only") &&
           !plugin_task_find(plugin_process_registry(), "v.a"),
       "after it, a worker loads the new build");
    unlink(path);
    jt_remove_plugins();
    return done_testing();
}
