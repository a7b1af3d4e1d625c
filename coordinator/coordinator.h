/*
 * The coordinator module's public header: the command line (`pgcorral run`, `ctl`, ...),
 * the supervisor's configuration, preflight and entry points.
 */
#ifndef PGCORRAL_COORDINATOR_H
#define PGCORRAL_COORDINATOR_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/rt.h"

#define SUP_MAX_PLUGINS 16
#define SUP_MAX_QUEUES 32
#define SUP_MAX_CRON_LINES 64   /* --cron schedules */
#define SUP_NODE_NAME_MAX 128   /* --node-name bytes */
#define SUP_MAX_ROLE_WORKERS 64 /* --web, --jobs and `ctl scale`: workers of one role */
#define SUP_SOCKET_PATH_MAX 108 /* sizeof sockaddr_un.sun_path: a socket path and its NUL */

/* Everything `pgcorral run` was told: flags over config file over environment over defaults.
 * Strings are owned copies (never pointers into argv, which the process title overwrites). */
struct sup_config {
    int web_workers;        /* --web, PGCORRAL_WEB; default 2 */
    int job_workers;        /* --jobs, PGCORRAL_JOBS; default 2 */
    char *control_path;     /* --control, PGCORRAL_CONTROL; default sup_default_control_path */
    bool control_default;   /* control_path is the default: its folder is ours to create
                               and must be private (checked at start) */
    char *listen_addr;      /* --listen HOST:PORT, [V6]:PORT, :PORT, PORT; 127.0.0.1:3000 */
    char *admin_listen;     /* --admin-listen (same forms): stats, metrics, jobs; NULL = none */
    char *access_log;       /* --access-log PATH or "-" (stderr); NULL = off */
    char *api_token;        /* PGCORRAL_API_TOKEN (environment only); NULL = none; wiped */
    int shutdown_timeout_s; /* --shutdown-timeout; default 30 */
    int max_db_connections; /* --max-db-connections B; 0 = sum of pools + 1 */
    int cluster_budget;     /* --cluster-budget C; 0 = what the server allows */
    int lease_heartbeat_s;  /* --lease-heartbeat; 2 */
    int lease_ttl_s;        /* --lease-ttl; 10 */
    char *io_mode;          /* --io auto|uring|epoll; default auto */
    int slow_query_ms;      /* SLOW_QUERY_THRESHOLD; default 500 */
    int health_timeout_s;   /* --health-timeout: GET /api/v1/health answers within; 2 */
    int wait_for_db_s;      /* --wait-for-db: retry the preflight this long; 0 = fail */
    int worker_timeout_s;   /* --worker-timeout: silent worker is replaced; default 30 */
    int stats_interval_s;   /* --stats-interval: stats log line period; 0 = off; 60 */
    int utilization_warn_s; /* --utilization-warn-after: >80 % this long warns; 30 */
    char *log_format;       /* --log-format json|text; default json */
    char *log_file;         /* --log-file PATH; default stderr; reopened on SIGUSR1 */
    char *queues;           /* --queues a,b: queues job workers serve; NULL = all */
    int keep_completed_s;   /* --keep-completed: completed jobs kept; 0 = deleted at ack */
    int keep_failed_s;      /* --keep-failed: failed/cancelled kept; -1 = forever (default) */
    char *queue_list[SUP_MAX_QUEUES + 1]; /* queues split, NULL-terminated (points into
                                             queue_buf) */
    char *queue_buf;
    /* --queue-concurrency QUEUE=N, repeatable (a queue named again takes the later N):
     * at most N jobs of QUEUE run at once, over every worker of every supervisor */
    char *limited_queues[SUP_MAX_QUEUES + 1]; /* owned; NULL-terminated */
    int queue_limits[SUP_MAX_QUEUES];         /* N of limited_queues[i] */
    int nlimited;
    char *plugins[SUP_MAX_PLUGINS + 1]; /* --plugin PATH, repeatable; NULL-terminated */
    int nplugins;
    char *node_name; /* --node-name, PGCORRAL_NODE_NAME; NULL = "host:pid" (set at start) */
    char *cron[SUP_MAX_CRON_LINES + 1]; /* --cron 'SPEC TASK [JSON]', repeatable (also
                                           `cron =` lines of the config file), validated;
                                           NULL-terminated */
    int ncron;
    char *config_path;        /* --config FILE, PGCORRAL_CONFIG */
    char *database_url;       /* DATABASE_URL (env, config file database_url, or flag) */
    char *replica_url;        /* DATABASE_REPLICA_URL, same sources */
    struct rt_dburl *db;      /* DATABASE_URL, required */
    struct rt_dburl *replica; /* DATABASE_REPLICA_URL, optional */
};

/*
 * Fills cfg from argv (after the subcommand word) and the environment. Returns 0, or -1
 * with a message in err that names the flag or setting and the bad value (never a
 * password). Caller frees with sup_config_free, also after an error.
 */
__attribute__((warn_unused_result)) int sup_config_parse(struct sup_config *cfg, int argc,
                                                         char **argv, char *err, size_t errlen);
void sup_config_free(struct sup_config *cfg);

/* The budget B the configuration asks for: --max-db-connections, or every pool plus one. */
int sup_config_budget(const struct sup_config *cfg);

/* What the server said in preflight. */
struct sup_preflight {
    int max_connections;
    int superuser_reserved;
    int reserved;          /* reserved_connections (PostgreSQL 16+; 0 before) */
    int other_connections; /* client backends that are not ours, at preflight time */
    char server_version[32];
};

/*
 * Connects once (bounded by connect_timeout) and reads the server's connection limits.
 * Returns 0, or -1 with the reason in err (URL redacted). Blocking; start-up only.
 */
__attribute__((warn_unused_result)) int
sup_preflight_run(const struct rt_dburl *db, struct sup_preflight *out, char *err, size_t errlen);

/*
 * Whether budget B fits what the server can take. Returns 0, or -1 with a message in err
 * that fills in the guide's formula with the real numbers and says what to change.
 */
int sup_preflight_check_budget(const struct sup_config *cfg, const struct sup_preflight *pf,
                               char *err, size_t errlen);

/* ---- the HTTP listening sockets (http_sockets.c) ------------------------------------- */

/*
 * Checks the form of a --listen value: "HOST:PORT" (HOST a name or an IPv4 address),
 * "[IPV6]:PORT", ":PORT" (every address) or "PORT" (127.0.0.1), PORT 0..65535. Returns 0
 * and writes the host ("" for every address; NULL host skips it) and the port (NULL
 * skips it), or -EINVAL. Resolves nothing.
 */
int sup_listen_parse(const char *addr, char *host, size_t hostlen, int *port);

/*
 * Opens n listening sockets on addr (see sup_listen_parse; a name is resolved here, once,
 * and its first IPv4 address used, else its first IPv6 one; ":PORT" is one dual-stack
 * IPv6 socket, or IPv4 only without IPv6) with SO_REUSEPORT, all on the same port (port 0
 * picks one free port for all). Returns 0 and writes fds[0..n) and the bound port, or
 * -errno with the reason in err, which names --listen.
 */
__attribute__((warn_unused_result)) int sup_listen_open(const char *addr, int n, int *fds,
                                                        int *port, char *err, size_t errlen);

/* sup_listen_open for the setting named flag ("--admin-listen"), which err names. */
__attribute__((warn_unused_result)) int sup_listen_open_as(const char *flag, const char *addr,
                                                           int n, int *fds, int *port, char *err,
                                                           size_t errlen);

/* Whether listening socket fd is bound to a loopback address (127.0.0.0/8, ::1, or
 * ::ffff:127.x); false for a wildcard or any other address. */
bool sup_listen_is_loopback(int fd);

/* The port a bound socket listens on, or a negative errno from getsockname. */
int sup_listen_port(int fd);

/*
 * Opens one more listening socket bound like like_fd (one of ours: same address, port and
 * dual-stack setting, no second name lookup), for a web worker added at run time.
 * Returns 0 and writes *fd, or -errno with the reason in err.
 */
__attribute__((warn_unused_result)) int sup_listen_add(int like_fd, int *fd, char *err,
                                                       size_t errlen);

/*
 * Socket activation: the listening socket a service manager passed (LISTEN_PID is our pid,
 * LISTEN_FDS at least 1; the socket is fd 3, SD_LISTEN_FDS_START). Returns 1 and writes
 * *fd (fd 3, made close-on-exec and non-blocking) and its *port, 0 when nothing was passed,
 * or -errno with the reason in err when fd 3 is not a listening TCP socket. Removes
 * LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment in every case, so that
 * nothing forked from us takes them for its own. Further passed sockets are not used.
 */
__attribute__((warn_unused_result)) int sup_listen_inherited(int *fd, int *port, char *err,
                                                             size_t errlen);

/* The address fd is bound to, as "1.2.3.4:PORT" or "[::1]:PORT", into buf. Returns buf. */
char *sup_listen_name(int fd, char *buf, size_t size);

/* `pgcorral run ...`: the supervisor. Returns the process exit status. */
int sup_main(int argc, char **argv);

/* `pgcorral ctl ...`: the control client. Returns the process exit status. */
int ctl_main(int argc, char **argv);

/*
 * The default control socket path for this user, the same for `run` and `ctl`, into buf:
 * $RUNTIME_DIRECTORY/control.sock (systemd's RuntimeDirectory=, its first entry), else
 * $XDG_RUNTIME_DIR/pgcorral/control.sock, else /run/pgcorral/control.sock for root, else
 * /tmp/pgcorral-UID/control.sock. Values that are not absolute paths are ignored. `run`
 * creates the folder 0700 and refuses one that is not private (coordinator/control.c).
 * Returns 0, or -ENAMETOOLONG when the path does not fit buf or a unix socket address.
 */
__attribute__((warn_unused_result)) int sup_default_control_path(char *buf, size_t size);

/* "uid 65534 (nobody)", or "uid 1234" when the user has no name, into buf. Returns buf. */
char *sup_uid_describe(unsigned uid, char *buf, size_t size);

#endif
