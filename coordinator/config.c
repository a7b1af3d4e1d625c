/*
 * `pgcorral run` configuration: flags, then environment, then defaults. Every setting is
 * described once in the table below; an unknown or malformed one is an error that names it.
 */
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/cmds_int.h"
#include "coordinator/coordinator.h"
#include "coordinator/jobs_int.h"
#include "runtime/rt_input.h"
#include "runtime/rt_time.h"
#include "runtime/rt_util.h"
#include "shm/shm.h"

enum setting_kind { SET_INT, SET_STR, SET_PLUGIN, SET_DURATION, SET_QUEUE_LIMIT, SET_CRON };

/* The longest retention a duration setting takes: 10 years, in seconds (fits an int). */
#define DURATION_MAX_S (10LL * 365 * 86400)
/* The largest N of --queue-concurrency. */
#define QUEUE_LIMIT_MAX 100000

/* One setting: its flag, its environment variable (or NULL), where it goes, its range. */
struct setting {
    const char *flag;
    const char *env;
    enum setting_kind kind;
    size_t offset;
    long min, max;
    const char *help;
};

#define OFF(field) offsetof(struct sup_config, field)

/* Every `run` setting. Integer ranges are inclusive. */
static const struct setting settings[] = {
    {"--web", "PGCORRAL_WEB", SET_INT, OFF(web_workers), 0, SUP_MAX_ROLE_WORKERS,
     "web (HTTP) workers"},
    {"--jobs", "PGCORRAL_JOBS", SET_INT, OFF(job_workers), 0, SUP_MAX_ROLE_WORKERS, "job workers"},
    {"--control", "PGCORRAL_CONTROL", SET_STR, OFF(control_path), 0, 0, "control socket path"},
    {"--listen", "PGCORRAL_LISTEN", SET_STR, OFF(listen_addr), 0, 0,
     "HTTP address: HOST:PORT, [IPV6]:PORT, :PORT (all) or PORT (127.0.0.1)"},
    {"--admin-listen", "PGCORRAL_ADMIN_LISTEN", SET_STR, OFF(admin_listen), 0, 0,
     "address of /metrics, /api/v1/stats and the jobs routes (same forms as --listen)"},
    {"--access-log", "PGCORRAL_ACCESS_LOG", SET_STR, OFF(access_log), 0, 0,
     "access log: one JSON line per request to PATH, or - for stderr"},
    {"--shutdown-timeout", "PGCORRAL_SHUTDOWN_TIMEOUT", SET_INT, OFF(shutdown_timeout_s), 1, 3600,
     "seconds to drain before SIGKILL"},
    {"--max-db-connections", "PGCORRAL_MAX_DB_CONNECTIONS", SET_INT, OFF(max_db_connections), 2,
     SHM_MAX_SLOTS, "global connection budget B"},
    {"--io", "PGCORRAL_IO", SET_STR, OFF(io_mode), 0, 0, "HTTP I/O: auto, uring or epoll"},
    {"--slow-query-threshold", "SLOW_QUERY_THRESHOLD", SET_INT, OFF(slow_query_ms), 0, 3600000,
     "slow-query log threshold in ms"},
    {"--health-timeout", "PGCORRAL_HEALTH_TIMEOUT", SET_INT, OFF(health_timeout_s), 1, 3600,
     "seconds GET /api/v1/health may take before it answers 503 (database timeout)"},
    {"--wait-for-db", "PGCORRAL_WAIT_FOR_DB", SET_INT, OFF(wait_for_db_s), 0, 86400,
     "seconds to keep retrying an unreachable database at start-up; 0 = fail at once"},
    {"--worker-timeout", "PGCORRAL_WORKER_TIMEOUT", SET_INT, OFF(worker_timeout_s), 1, 3600,
     "seconds without heartbeat before a worker is replaced"},
    {"--stats-interval", "PGCORRAL_STATS_INTERVAL", SET_INT, OFF(stats_interval_s), 0, 86400,
     "seconds between stats log lines; 0 = off"},
    {"--utilization-warn-after", "PGCORRAL_UTILIZATION_WARN_AFTER", SET_INT,
     OFF(utilization_warn_s), 1, 86400, "seconds above 80 % budget/pool use before a warning"},
    {"--log-format", "PGCORRAL_LOG_FORMAT", SET_STR, OFF(log_format), 0, 0, "json or text"},
    {"--log-file", "PGCORRAL_LOG_FILE", SET_STR, OFF(log_file), 0, 0,
     "log file (reopened on SIGUSR1); default stderr"},
    {"--queues", "PGCORRAL_QUEUES", SET_STR, OFF(queues), 0, 0,
     "comma-separated queues the job workers serve; default all"},
    {"--keep-completed", "PGCORRAL_KEEP_COMPLETED", SET_DURATION, OFF(keep_completed_s), 0, 0,
     "keep completed jobs this long (90s, 5m, 1h, 7d; forever); default 0: deleted at once"},
    {"--keep-failed", "PGCORRAL_KEEP_FAILED", SET_DURATION, OFF(keep_failed_s), 0, 0,
     "keep failed and cancelled jobs this long (same forms); default forever"},
    {"--queue-concurrency", NULL, SET_QUEUE_LIMIT, 0, 1, QUEUE_LIMIT_MAX,
     "QUEUE=N: at most N jobs of QUEUE run at once, over all supervisors (repeatable)"},
    {"--plugin", NULL, SET_PLUGIN, 0, 0, 0, "plugin .so to load (repeatable)"},
    {"--node-name", "PGCORRAL_NODE_NAME", SET_STR, OFF(node_name), 0, 0,
     "this supervisor's name in pgcorral.nodes; default HOST:PID"},
    {"--cluster-budget", "PGCORRAL_CLUSTER_BUDGET", SET_INT, OFF(cluster_budget), 1, SHM_MAX_SLOTS,
     "connections all nodes on this database may hold together, recorded by the first node "
     "(then: pgcorral cluster set-budget N); default what the server allows"},
    {"--lease-heartbeat", "PGCORRAL_LEASE_HEARTBEAT", SET_INT, OFF(lease_heartbeat_s), 1, 60,
     "seconds between renewals of this node's lease of the cluster budget"},
    {"--lease-ttl", "PGCORRAL_LEASE_TTL", SET_INT, OFF(lease_ttl_s), 3, 600,
     "seconds a lease runs after its last renewal (by the server's clock), at least 3 "
     "heartbeats"},
    {"--cron", NULL, SET_CRON, 0, 0, 0,
     "recurring job 'SPEC TASK [JSON]': 5 crontab fields (CRON_TZ=Zone prefix), @every 10s, "
     "@hourly, @daily (repeatable)"},
    {"--config", "PGCORRAL_CONFIG", SET_STR, OFF(config_path), 0, 0,
     "config file of 'name = value' lines (re-read on reload)"},
    {"--database-url", "DATABASE_URL", SET_STR, OFF(database_url), 0, 0,
     "the database (prefer the environment: flags show in ps)"},
    {"--database-replica-url", "DATABASE_REPLICA_URL", SET_STR, OFF(replica_url), 0, 0,
     "read replica for read-only routes and pgc_exec_read"},
};

#define NSETTINGS (sizeof settings / sizeof settings[0])

static void usage(void)
{
    printf("usage: pgcorral run [FLAGS]   (DATABASE_URL from the environment)\n\nflags:\n");
    for (size_t i = 0; i < NSETTINGS; i++)
        printf("  %-24s %s%s%s\n", settings[i].flag, settings[i].help,
               settings[i].env ? ", env " : "", settings[i].env ? settings[i].env : "");
}

/* Stores "QUEUE=N" of --queue-concurrency (split at the last '=', so that a queue name may
 * hold one). A queue named again takes the new N. Returns 0 or -1 with err. */
static int queue_limit_store(struct sup_config *cfg, const struct setting *s, const char *source,
                             const char *value, char *err, size_t errlen)
{
    const char *eq = strrchr(value, '=');
    size_t qlen = eq ? (size_t)(eq - value) : 0;
    long long v;
    int i;

    if (!eq || qlen == 0) {
        snprintf(err, errlen, "%s must be QUEUE=N (e.g. slow=2), got '%s'", source, value);
        return -1;
    }
    if (qlen > RT_JOB_QUEUE_MAX) {
        snprintf(err, errlen, "%s: the queue name is %zu bytes; the limit is %d bytes", source,
                 qlen, RT_JOB_QUEUE_MAX);
        return -1;
    }
    if (rt_parse_ll(eq + 1, s->min, s->max, &v) < 0) {
        snprintf(err, errlen, "%s %.*s: N must be an integer from %ld to %ld, got '%s'", source,
                 (int)qlen, value, s->min, s->max, eq + 1);
        return -1;
    }
    for (i = 0; i < cfg->nlimited; i++)
        if (strlen(cfg->limited_queues[i]) == qlen &&
            memcmp(cfg->limited_queues[i], value, qlen) == 0)
            break;
    if (i == cfg->nlimited) {
        if (cfg->nlimited >= SUP_MAX_QUEUES) {
            snprintf(err, errlen, "%s: at most %d queues", source, SUP_MAX_QUEUES);
            return -1;
        }
        if (!(cfg->limited_queues[i] = strndup(value, qlen)))
            return -1;
        cfg->nlimited++;
    }
    cfg->queue_limits[i] = (int)v;
    return 0;
}

/* Stores value into the setting's field. Returns 0 or -1 with err naming source and value. */
static int setting_store(struct sup_config *cfg, const struct setting *s, const char *source,
                         const char *value, char *err, size_t errlen)
{
    long long v;

    switch (s->kind) {
    case SET_INT:
        if (rt_parse_ll(value, s->min, s->max, &v) < 0) {
            snprintf(err, errlen, "%s must be an integer from %ld to %ld, got '%s'", source, s->min,
                     s->max, value);
            return -1;
        }
        *(int *)((char *)cfg + s->offset) = (int)v;
        return 0;
    case SET_DURATION: {
        long long secs;
        if (strcmp(value, "forever") == 0) {
            *(int *)((char *)cfg + s->offset) = SUP_KEEP_FOREVER;
            return 0;
        }
        if (rt_duration_parse(value, DURATION_MAX_S, &secs) < 0) {
            snprintf(err, errlen,
                     "%s must be a duration such as 90s, 5m, 1h or 7d (at most 3650d), or "
                     "forever, got '%s'",
                     source, value);
            return -1;
        }
        *(int *)((char *)cfg + s->offset) = (int)secs;
        return 0;
    }
    case SET_STR: {
        char **field = (char **)((char *)cfg + s->offset);
        if (*value == '\0') {
            snprintf(err, errlen, "%s must not be empty", source);
            return -1;
        }
        free(*field);
        *field = strdup(value);
        return *field ? 0 : -1;
    }
    case SET_PLUGIN:
        if (cfg->nplugins >= SUP_MAX_PLUGINS) {
            snprintf(err, errlen, "%s: at most %d plugins", source, SUP_MAX_PLUGINS);
            return -1;
        }
        cfg->plugins[cfg->nplugins] = strdup(value);
        if (!cfg->plugins[cfg->nplugins])
            return -1;
        cfg->nplugins++;
        return 0;
    case SET_QUEUE_LIMIT:
        return queue_limit_store(cfg, s, source, value, err, errlen);
    case SET_CRON: {
        struct sup_cron c;
        char why[512];
        if (cfg->ncron >= SUP_MAX_CRON_LINES) {
            snprintf(err, errlen, "%s: at most %d schedules", source, SUP_MAX_CRON_LINES);
            return -1;
        }
        if (sup_cron_parse(&c, value, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s: %s", source, why);
            return -1;
        }
        sup_cron_free(&c);
        cfg->cron[cfg->ncron] = strdup(value);
        if (!cfg->cron[cfg->ncron])
            return -1;
        cfg->ncron++;
        return 0;
    }
    }
    return -1;
}

/* The setting called name: a flag ("--web") or, in a config file, the flag without its
 * dashes ("web", "database_url" with '_' for '-'). NULL when there is none. */
static const struct setting *setting_find(const char *name, bool from_file)
{
    for (size_t k = 0; k < NSETTINGS; k++) {
        const char *flag = settings[k].flag;
        if (!from_file) {
            if (strcmp(name, flag) == 0)
                return &settings[k];
            continue;
        }
        size_t i = 0;
        for (flag += 2; flag[i] && (name[i] == flag[i] || (name[i] == '_' && flag[i] == '-')); i++)
            ;
        if (flag[i] == '\0' && name[i] == '\0' && strcmp(name, "config") != 0)
            return &settings[k];
    }
    return NULL;
}

/* Trims spaces at both ends in place. Returns the start. */
static char *trim(char *s)
{
    char *end = s + strlen(s);
    while (*s == ' ' || *s == '\t')
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

/* Applies a config file: "name = value" lines, '#' comments, blank lines. */
static int config_file_load(struct sup_config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char line[4096], source[512];
    int lineno = 0;

    if (!f) {
        snprintf(err, errlen, "--config %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        char *name, *value, *eq;
        const struct setting *s;

        lineno++;
        name = trim(line);
        if (*name == '\0' || *name == '#')
            continue;
        eq = strchr(name, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'name = value'", path, lineno);
            goto fail;
        }
        *eq = '\0';
        name = trim(name);
        value = trim(eq + 1);
        s = setting_find(name, true);
        if (!s) {
            snprintf(err, errlen, "%s:%d: unknown setting '%.64s'", path, lineno, name);
            goto fail;
        }
        snprintf(source, sizeof source, "%s:%d: %s", path, lineno, name);
        if (setting_store(cfg, s, source, value, err, errlen) < 0)
            goto fail;
    }
    fclose(f);
    return 0;

fail:
    fclose(f);
    return -1;
}

bool sup_wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

/* An environment variable that names a folder, or NULL when unset, empty or relative. */
static const char *env_dir(const char *name, size_t *len)
{
    const char *v = getenv(name);
    if (!v || v[0] != '/')
        return NULL;
    *len = strcspn(v, ":"); /* RUNTIME_DIRECTORY lists several folders split by ':' */
    return v;
}

int sup_default_control_path(char *buf, size_t size)
{
    size_t len, max = size < SUP_SOCKET_PATH_MAX ? size : SUP_SOCKET_PATH_MAX;
    const char *dir;
    int n;

    /* Not /tmp itself: anyone can create a file there first. A runtime folder is private
     * to its user; the /tmp fallback is a folder checked to be ours and private. */
    if ((dir = env_dir("RUNTIME_DIRECTORY", &len)))
        n = snprintf(buf, size, "%.*s/control.sock", (int)len, dir);
    else if ((dir = env_dir("XDG_RUNTIME_DIR", &len)))
        n = snprintf(buf, size, "%.*s/pgcorral/control.sock", (int)len, dir);
    else if (geteuid() == 0)
        n = snprintf(buf, size, "/run/pgcorral/control.sock");
    else
        n = snprintf(buf, size, "/tmp/pgcorral-%u/control.sock", (unsigned)geteuid());
    return n < 0 || (size_t)n >= max ? -ENAMETOOLONG : 0;
}

char *sup_uid_describe(unsigned uid, char *buf, size_t size)
{
    struct passwd pw, *found = NULL;
    char strings[1024];

    if (getpwuid_r((uid_t)uid, &pw, strings, sizeof strings, &found) == 0 && found)
        snprintf(buf, size, "uid %u (%s)", uid, found->pw_name);
    else
        snprintf(buf, size, "uid %u", uid);
    return buf;
}

int sup_config_budget(const struct sup_config *cfg)
{
    if (cfg->max_db_connections > 0)
        return cfg->max_db_connections;
    return (cfg->web_workers + cfg->job_workers) * cfg->db->connection_limit + 1;
}

int sup_config_parse(struct sup_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    char path[SUP_SOCKET_PATH_MAX];
    const char *url;

    memset(cfg, 0, sizeof *cfg);
    cfg->web_workers = 2;
    cfg->job_workers = 2;
    cfg->shutdown_timeout_s = 30;
    cfg->slow_query_ms = 500;
    cfg->health_timeout_s = 2;
    cfg->worker_timeout_s = 30;
    cfg->stats_interval_s = 60;
    cfg->utilization_warn_s = 30;
    cfg->keep_failed_s = SUP_KEEP_FOREVER;
    cfg->lease_heartbeat_s = 2;
    cfg->lease_ttl_s = 10;

    /* Help first: a broken environment or config file must not hide it. */
    if (sup_wants_help(argc, argv)) {
        usage();
        snprintf(err, errlen, "help");
        return -1;
    }
    /* Environment, then the config file, then flags: each overrides the one before. */
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *v = settings[i].env ? getenv(settings[i].env) : NULL;
        if (v && *v && setting_store(cfg, &settings[i], settings[i].env, v, err, errlen) < 0)
            return -1;
    }
    for (int i = 0; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            free(cfg->config_path);
            cfg->config_path = strdup(argv[i + 1]);
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            free(cfg->config_path);
            cfg->config_path = strdup(argv[i] + 9);
        }
    }
    if (cfg->config_path && config_file_load(cfg, cfg->config_path, err, errlen) < 0)
        return -1;
    for (int i = 0; i < argc; i++) {
        const struct setting *s = NULL;
        const char *arg = argv[i], *value;
        size_t flen;

        if (arg[0] != '-') {
            snprintf(err, errlen, "unexpected argument '%s' (only flags are taken; see --help)",
                     arg);
            return -1;
        }
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(arg, "="), arg);
        s = setting_find(name, false);
        if (!s) {
            snprintf(err, errlen, "unknown flag '%s' (see pgcorral run --help)", arg);
            return -1;
        }
        flen = strlen(s->flag);
        if (arg[flen] == '=') {
            value = arg + flen + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            snprintf(err, errlen, "%s needs a value", s->flag);
            return -1;
        }
        if (setting_store(cfg, s, s->flag, value, err, errlen) < 0)
            return -1;
    }
    if (cfg->web_workers + cfg->job_workers == 0) {
        snprintf(err, errlen, "--web and --jobs are both 0: nothing to run");
        return -1;
    }
    if (cfg->web_workers + cfg->job_workers > SHM_MAX_WORKERS / 2) {
        snprintf(err, errlen, "--web + --jobs must be at most %d", SHM_MAX_WORKERS / 2);
        return -1;
    }
    if (!cfg->control_path) {
        if (sup_default_control_path(path, sizeof path) < 0) {
            snprintf(err, errlen,
                     "the default control socket path (from RUNTIME_DIRECTORY or "
                     "XDG_RUNTIME_DIR) is longer than %zu bytes: use --control",
                     sizeof path - 1);
            return -1;
        }
        cfg->control_path = strdup(path);
        cfg->control_default = true;
    }
    if (!cfg->listen_addr)
        cfg->listen_addr = strdup("127.0.0.1:3000");
    if (!cfg->io_mode)
        cfg->io_mode = strdup("auto");
    if (cfg->listen_addr && sup_listen_parse(cfg->listen_addr, NULL, 0, NULL) < 0) {
        snprintf(err, errlen,
                 "--listen must be HOST:PORT, [IPV6]:PORT, :PORT (all addresses) or PORT, "
                 "got '%s'",
                 cfg->listen_addr);
        return -1;
    }
    /* --admin-listen, and the API token (environment only: flags show in ps). */
    if (cfg->admin_listen && sup_listen_parse(cfg->admin_listen, NULL, 0, NULL) < 0) {
        snprintf(err, errlen,
                 "--admin-listen must be HOST:PORT, [IPV6]:PORT, :PORT (all addresses) or "
                 "PORT, got '%s'",
                 cfg->admin_listen);
        return -1;
    }
    if (getenv("PGCORRAL_API_TOKEN") && *getenv("PGCORRAL_API_TOKEN") &&
        !(cfg->api_token = strdup(getenv("PGCORRAL_API_TOKEN")))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (!cfg->log_format)
        cfg->log_format = strdup("json");
    if (!cfg->control_path || !cfg->listen_addr || !cfg->io_mode || !cfg->log_format) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (strlen(cfg->control_path) >= sizeof path) {
        snprintf(err, errlen, "--control path is longer than %zu bytes", sizeof path - 1);
        return -1;
    }
    if (strcmp(cfg->io_mode, "auto") && strcmp(cfg->io_mode, "uring") &&
        strcmp(cfg->io_mode, "epoll")) {
        snprintf(err, errlen, "--io must be auto, uring or epoll, got '%s'", cfg->io_mode);
        return -1;
    }

    if (cfg->queues) {
        int n = 0;
        cfg->queue_buf = strdup(cfg->queues);
        for (char *save = NULL, *q = strtok_r(cfg->queue_buf, ",", &save); q;
             q = strtok_r(NULL, ",", &save)) {
            while (*q == ' ')
                q++;
            if (*q == '\0')
                continue;
            if (n >= SUP_MAX_QUEUES) {
                snprintf(err, errlen, "--queues: at most %d queues", SUP_MAX_QUEUES);
                return -1;
            }
            cfg->queue_list[n++] = q;
        }
        if (n == 0) {
            snprintf(err, errlen, "--queues names no queue, got '%s'", cfg->queues);
            return -1;
        }
    }
    if (cfg->node_name && strlen(cfg->node_name) > SUP_NODE_NAME_MAX) {
        snprintf(err, errlen, "--node-name is %zu bytes; the limit is %d bytes",
                 strlen(cfg->node_name), SUP_NODE_NAME_MAX);
        return -1;
    }
    if (cfg->lease_ttl_s < 3 * cfg->lease_heartbeat_s) {
        snprintf(err, errlen,
                 "--lease-ttl %d must be at least 3 x --lease-heartbeat (%d): a lease must "
                 "survive a lost renewal",
                 cfg->lease_ttl_s, cfg->lease_heartbeat_s);
        return -1;
    }
    if (strcmp(cfg->log_format, "json") && strcmp(cfg->log_format, "text")) {
        snprintf(err, errlen, "--log-format must be json or text, got '%s'", cfg->log_format);
        return -1;
    }

    url = cfg->database_url;
    if (!url || !*url) {
        snprintf(err, errlen, "DATABASE_URL is not set (e.g. postgresql://user@localhost/db)");
        return -1;
    }
    if (rt_dburl_parse(url, &cfg->db, err, errlen) < 0)
        return -1;
    url = cfg->replica_url;
    if (url && *url &&
        rt_dburl_parse_as("DATABASE_REPLICA_URL", url, &cfg->replica, err, errlen) < 0)
        return -1;
    if (cfg->max_db_connections == 0 && sup_config_budget(cfg) > SHM_MAX_SLOTS) {
        snprintf(err, errlen, "(workers x connection_limit) + 1 = %d is more than %d slots",
                 sup_config_budget(cfg), SHM_MAX_SLOTS);
        return -1;
    }
    return 0;
}

void sup_config_free(struct sup_config *cfg)
{
    free(cfg->control_path);
    free(cfg->listen_addr);
    free(cfg->admin_listen);
    free(cfg->access_log);
    if (cfg->api_token)
        explicit_bzero(cfg->api_token, strlen(cfg->api_token));
    free(cfg->api_token);
    free(cfg->io_mode);
    free(cfg->log_format);
    free(cfg->log_file);
    free(cfg->config_path);
    free(cfg->queues);
    free(cfg->queue_buf);
    /* The URLs hold passwords: wipe them before giving the memory back. */
    if (cfg->database_url)
        explicit_bzero(cfg->database_url, strlen(cfg->database_url));
    if (cfg->replica_url)
        explicit_bzero(cfg->replica_url, strlen(cfg->replica_url));
    free(cfg->database_url);
    free(cfg->replica_url);
    for (int i = 0; i < cfg->nplugins; i++)
        free(cfg->plugins[i]);
    for (int i = 0; i < cfg->nlimited; i++)
        free(cfg->limited_queues[i]);
    free(cfg->node_name);
    for (int i = 0; i < cfg->ncron; i++)
        free(cfg->cron[i]);
    rt_dburl_destroy(cfg->db);
    rt_dburl_destroy(cfg->replica);
    memset(cfg, 0, sizeof *cfg);
}
