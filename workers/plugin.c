/*
 * The plugin loader: dlopens each plugin (RTLD_NOW|RTLD_LOCAL), checks its ABI stamp and
 * its pgc_plugin_init, runs it against the registry, and refuses duplicate tasks and routes
 * with a message that names the plugins. Also the registry's lookups (task by name, route by
 * method and path).
 */
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "workers/plugin.h"
#include "workers/workers.h"

/* The registry of this worker process (plugin_load_process), NULL until loaded. */
static struct pgc_registry *process_registry;

/* Routes the web worker answers itself; plugins cannot take them. */
static const char *const builtin_paths[] = {"/api/v1/health", "/api/v1/stats",    "/metrics",
                                            "/api/v1/jobs",   "/api/v1/jobs/:id", NULL};

/* Records the first registration error of the plugin being loaded. Returns PGC_EINVAL. */
__attribute__((format(printf, 2, 3))) static int reg_error(struct pgc_registry *reg,
                                                           const char *fmt, ...)
{
    va_list ap;
    if (reg->error[0])
        return PGC_EINVAL;
    va_start(ap, fmt);
    vsnprintf(reg->error, sizeof reg->error, fmt, ap);
    va_end(ap);
    return PGC_EINVAL;
}

int pgc_register_task(struct pgc_registry *reg, const char *name, pgc_task_fn fn, int timeout_ms)
{
    const struct plugin_task *old;
    struct plugin_task *t;

    if (!reg)
        return PGC_EINVAL;
    if (!reg->loading)
        return reg_error(reg, "pgc_register_task called outside pgc_plugin_init");
    if (!name || !*name || strlen(name) > 200)
        return reg_error(reg, "pgc_register_task: the task name must be 1 to 200 bytes");
    for (const char *p = name; *p; p++)
        if (iscntrl((unsigned char)*p) || *p == ' ' || *p == ',')
            return reg_error(reg,
                             "pgc_register_task: task name \"%s\" contains a space, "
                             "comma or control character",
                             name);
    if (!fn)
        return reg_error(reg, "pgc_register_task: task \"%s\" has no handler", name);
    if (timeout_ms < 0)
        return reg_error(reg, "pgc_register_task: task \"%s\" has a negative timeout", name);
    old = plugin_task_find(reg, name);
    if (old)
        return reg_error(reg, "task \"%s\" is registered twice: by %s and by %s", name, old->plugin,
                         reg->loading);
    if (reg->ntasks == reg->cap_tasks) {
        int cap = reg->cap_tasks ? reg->cap_tasks * 2 : 16;
        t = realloc(reg->tasks, (size_t)cap * sizeof *t);
        if (!t)
            return PGC_ENOMEM;
        reg->tasks = t;
        reg->cap_tasks = cap;
    }
    t = &reg->tasks[reg->ntasks];
    t->name = strdup(name);
    if (!t->name)
        return PGC_ENOMEM;
    t->fn = fn;
    t->timeout_ms = timeout_ms;
    t->plugin = reg->loading;
    reg->ntasks++;
    return 0;
}

/* Next segment of a path at *p (after its '/'): start and length; false at the end. */
static bool next_segment(const char **p, const char *end, const char **seg, size_t *len)
{
    const char *s = *p;
    if (s >= end)
        return false;
    if (*s == '/')
        s++;
    *seg = s;
    while (s < end && *s != '/')
        s++;
    *len = (size_t)(s - *seg);
    *p = s;
    return true;
}

/* How path_match compares: a request path; a registered path for a duplicate (":x" only
 * equals ":y"); a registered path that could take some of pattern's requests. */
enum match_mode { MATCH_REQUEST, MATCH_SAME, MATCH_OVERLAP };

/* Whether pattern (a registered path) matches path[0..len). Fills params (MATCH_REQUEST). */
static bool path_match(const char *pattern, const char *path, size_t len,
                       struct plugin_params *params, enum match_mode mode)
{
    const char *pp = pattern, *pe = pattern + strlen(pattern);
    const char *sp = path, *se = path + len;
    const char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    struct plugin_params tmp;

    if (!params)
        params = &tmp;
    params->n = 0;
    for (;;) {
        bool more_a = next_segment(&pp, pe, &a, &alen);
        bool more_b = next_segment(&sp, se, &b, &blen);
        if (!more_a || !more_b)
            return more_a == more_b;
        bool pa = alen > 0 && a[0] == ':';
        bool pb = mode != MATCH_REQUEST && blen > 0 && b[0] == ':';
        if (mode == MATCH_SAME && pa != pb)
            return false;
        if (pa && mode == MATCH_REQUEST) {
            if (blen == 0 || params->n == PLUGIN_MAX_PARAMS)
                return false;
            params->name[params->n] = a + 1;
            params->name_len[params->n] = alen - 1;
            params->value[params->n] = b;
            params->value_len[params->n] = blen;
            params->n++;
            continue;
        }
        if (pa || pb)
            continue;
        if (alen != blen || memcmp(a, b, alen) != 0)
            return false;
    }
}

int pgc_register_route(struct pgc_registry *reg, const char *method, const char *path,
                       pgc_route_fn fn, unsigned flags)
{
    struct plugin_route *r;
    int nparams = 0;

    if (!reg)
        return PGC_EINVAL;
    if (!reg->loading)
        return reg_error(reg, "pgc_register_route called outside pgc_plugin_init");
    if (!method || !*method || strlen(method) > 16)
        return reg_error(reg, "pgc_register_route: the method must be 1 to 16 letters");
    for (const char *p = method; *p; p++)
        if (!isupper((unsigned char)*p))
            return reg_error(reg,
                             "pgc_register_route: method \"%s\" must be upper case "
                             "letters (GET, POST, ...)",
                             method);
    if (!path || path[0] != '/' || strlen(path) > 512)
        return reg_error(reg, "pgc_register_route: path \"%s\" must start with '/'",
                         path ? path : "(null)");
    for (const char *p = path; *p; p++) {
        if (*p == '?' || *p == '#' || *p == '%' || isspace((unsigned char)*p) ||
            iscntrl((unsigned char)*p))
            return reg_error(reg,
                             "pgc_register_route: path \"%s\" has a character that "
                             "cannot be in a route ('?', '#', '%%', space)",
                             path);
        if (*p == '/' && (p[1] == '/' || (p[1] == ':' && (p[2] == '/' || p[2] == '\0'))))
            return reg_error(reg,
                             "pgc_register_route: path \"%s\" has an empty segment "
                             "or parameter name",
                             path);
        if (*p == '/' && p[1] == ':')
            nparams++;
    }
    if (nparams > PLUGIN_MAX_PARAMS)
        return reg_error(reg, "pgc_register_route: path \"%s\" has more than %d parameters", path,
                         PLUGIN_MAX_PARAMS);
    if (!fn)
        return reg_error(reg, "pgc_register_route: %s %s has no handler", method, path);
    if (flags & ~(PGC_ROUTE_READONLY | PGC_ROUTE_ON_LOOP))
        return reg_error(reg, "pgc_register_route: %s %s: unknown flags 0x%x", method, path, flags);
    for (int i = 0; builtin_paths[i]; i++)
        if (path_match(builtin_paths[i], path, strlen(path), NULL, MATCH_OVERLAP))
            return reg_error(reg, "route %s %s is built into pgcorral", method, path);
    for (int i = 0; i < reg->nroutes; i++) {
        const struct plugin_route *o = &reg->routes[i];
        if (strcmp(o->method, method) == 0 &&
            path_match(o->path, path, strlen(path), NULL, MATCH_SAME))
            return reg_error(reg, "route %s %s is registered twice: by %s (as %s) and by %s",
                             method, path, o->plugin, o->path, reg->loading);
    }
    if (reg->nroutes == reg->cap_routes) {
        int cap = reg->cap_routes ? reg->cap_routes * 2 : 16;
        r = realloc(reg->routes, (size_t)cap * sizeof *r);
        if (!r)
            return PGC_ENOMEM;
        reg->routes = r;
        reg->cap_routes = cap;
    }
    r = &reg->routes[reg->nroutes];
    r->method = strdup(method);
    r->path = strdup(path);
    if (!r->method || !r->path) {
        free(r->method);
        free(r->path);
        return PGC_ENOMEM;
    }
    r->fn = fn;
    r->flags = flags;
    r->plugin = reg->loading;
    reg->nroutes++;
    return 0;
}

const struct plugin_task *plugin_task_find(const struct pgc_registry *reg, const char *name)
{
    for (int i = 0; reg && i < reg->ntasks; i++)
        if (strcmp(reg->tasks[i].name, name) == 0)
            return &reg->tasks[i];
    return NULL;
}

char *plugin_task_names(const struct pgc_registry *reg, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; reg && i < reg->ntasks && len < size; i++) {
        int n = snprintf(buf + len, size - len, "%s%s", i ? ", " : "", reg->tasks[i].name);
        if (n < 0)
            break;
        len += (size_t)n;
    }
    if (!reg || reg->ntasks == 0)
        snprintf(buf, size, "none");
    return buf;
}

const struct plugin_route *plugin_route_match(const struct pgc_registry *reg, const char *method,
                                              const char *path, size_t len,
                                              struct plugin_params *params, bool *method_mismatch)
{
    const struct plugin_route *best = NULL;
    struct plugin_params p, best_p;

    if (method_mismatch)
        *method_mismatch = false;
    for (int i = 0; reg && i < reg->nroutes; i++) {
        const struct plugin_route *r = &reg->routes[i];
        if (!path_match(r->path, path, len, &p, MATCH_REQUEST))
            continue;
        if (strcmp(r->method, method) != 0) {
            if (method_mismatch)
                *method_mismatch = true;
            continue;
        }
        /* A literal segment beats a parameter: /items/new over /items/:id. */
        if (!best || p.n < best_p.n) {
            best = r;
            best_p = p;
        }
    }
    if (best && params)
        *params = best_p;
    if (best && method_mismatch)
        *method_mismatch = false;
    return best;
}

/* Frees the registry's tasks and routes (not the plugins). */
static void free_entries(struct pgc_registry *reg)
{
    for (int i = 0; i < reg->ntasks; i++)
        free(reg->tasks[i].name);
    for (int i = 0; i < reg->nroutes; i++) {
        free(reg->routes[i].method);
        free(reg->routes[i].path);
    }
    free(reg->tasks);
    free(reg->routes);
}

void plugin_registry_free(struct pgc_registry *reg)
{
    if (!reg)
        return;
    free_entries(reg);
    /* Tasks and routes point into the plugins: forget them before unloading. */
    for (int i = reg->nplugins - 1; i >= 0; i--) {
        if (reg->plugins[i].dl)
            dlclose(reg->plugins[i].dl);
        free(reg->plugins[i].path);
    }
    free(reg->plugins);
    free(reg);
}

/* Loads one plugin into reg. Returns 0 or -EINVAL with err set. */
static int load_one(struct pgc_registry *reg, struct plugin_so *so, char *err, size_t errlen)
{
    const unsigned *abi;
    int (*init)(struct pgc_registry *);
    const char *why;
    int rc;

    dlerror();
    so->dl = dlopen(so->path, RTLD_NOW | RTLD_LOCAL);
    if (!so->dl) {
        why = dlerror();
        snprintf(err, errlen, "plugin %s: cannot load it: %s", so->path,
                 why ? why : "unknown error");
        return -EINVAL;
    }
    abi = dlsym(so->dl, "pgc_plugin_abi");
    if (!abi) {
        snprintf(err, errlen,
                 "plugin %s: no pgc_plugin_abi symbol: it was not built against pgcorral.h "
                 "(include \"pgcorral.h\" in it and rebuild)",
                 so->path);
        return -EINVAL;
    }
    if (*abi != PGC_ABI_VERSION) {
        snprintf(err, errlen,
                 "plugin %s: built for plugin ABI %u, but this pgcorral has ABI %d: rebuild it "
                 "against this pgcorral's pgcorral.h",
                 so->path, *abi, PGC_ABI_VERSION);
        return -EINVAL;
    }
    *(void **)&init = dlsym(so->dl, "pgc_plugin_init");
    if (!init) {
        snprintf(err, errlen,
                 "plugin %s: no pgc_plugin_init function (define int "
                 "pgc_plugin_init(struct pgc_registry *reg) in it)",
                 so->path);
        return -EINVAL;
    }
    reg->loading = so->path;
    reg->error[0] = '\0';
    rc = init(reg);
    reg->loading = NULL;
    if (reg->error[0]) {
        snprintf(err, errlen, "plugin %s: %s", so->path, reg->error);
        return -EINVAL;
    }
    if (rc != 0) {
        snprintf(err, errlen, "plugin %s: pgc_plugin_init failed (returned %d)", so->path, rc);
        return -EINVAL;
    }
    return 0;
}

int plugin_registry_load(struct pgc_registry **out, const char *const *paths, char *err,
                         size_t errlen)
{
    struct pgc_registry *reg;
    int n = 0, rc;

    rc = plugin_api_init();
    if (rc < 0) {
        snprintf(err, errlen, "cannot set up the plugin API: %s", strerror(-rc));
        return rc;
    }
    while (paths && paths[n])
        n++;
    reg = calloc(1, sizeof *reg);
    if (!reg || (n > 0 && !(reg->plugins = calloc((size_t)n, sizeof *reg->plugins)))) {
        free(reg);
        snprintf(err, errlen, "out of memory loading plugins");
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        struct plugin_so *so = &reg->plugins[reg->nplugins];
        /* Without a '/', dlopen searches the library path, not the current folder. */
        bool bare = strchr(paths[i], '/') == NULL;
        for (int k = 0; k < i; k++) {
            if (strcmp(paths[k], paths[i]) == 0) {
                snprintf(err, errlen, "plugin %s is given twice", paths[i]);
                rc = -EINVAL;
                goto fail;
            }
        }
        if (asprintf(&so->path, "%s%s", bare ? "./" : "", paths[i]) < 0) {
            so->path = NULL;
            snprintf(err, errlen, "out of memory loading plugins");
            rc = -ENOMEM;
            goto fail;
        }
        reg->nplugins++;
        rc = load_one(reg, so, err, errlen);
        if (rc < 0)
            goto fail;
    }
    *out = reg;
    return 0;

fail:
    plugin_registry_free(reg);
    return rc;
}

int plugin_check(const char *const *paths, char **tasks, char *err, size_t errlen)
{
    struct pgc_registry *reg;
    int rc = plugin_registry_load(&reg, paths, err, errlen);
    if (rc < 0)
        return rc;
    if (tasks) {
        json_t *names = json_array();
        for (int i = 0; names && i < reg->ntasks; i++)
            json_array_append_new(names, json_string(reg->tasks[i].name));
        *tasks = names ? json_dumps(names, JSON_COMPACT) : NULL;
        json_decref(names);
        if (!*tasks) {
            snprintf(err, errlen, "out of memory listing the plugins' tasks");
            rc = -ENOMEM;
        }
    }
    plugin_registry_free(reg);
    return rc;
}

int plugin_load_process(const char *const *paths, char *err, size_t errlen)
{
    if (process_registry)
        return 0;
    return plugin_registry_load(&process_registry, paths, err, errlen);
}

const struct pgc_registry *plugin_process_registry(void)
{
    return process_registry;
}
