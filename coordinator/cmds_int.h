/*
 * Shared between the files of the coordinator: the operator commands `pgcorral check`,
 * `pgcorral tune`, `pgcorral cluster` and `pgcorral ctl db` (check.c, tune.c,
 * cluster_cmd.c, db_info.c), for main.c's and ctl.c's dispatch, the node table that
 * `cluster` and `ctl cluster` share, and the tuning math that `check` compares the server
 * against.
 */
#ifndef PGCORRAL_CMDS_INT_H
#define PGCORRAL_CMDS_INT_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "runtime/rt_dburl.h"

/*
 * Whether argv (a command's words after its name) asks for help: -h or --help anywhere
 * before a "--". Every command answers that with its usage on stdout and exit status 0,
 * before it looks at anything else (environment, config file, other flags).
 */
bool sup_wants_help(int argc, char **argv);

/*
 * A connection to DATABASE_URL for the commands that work without a supervisor (`jobs`,
 * `cluster`), or NULL after a message on stderr that starts "pgcorral COMMAND: " (the URL
 * in it redacted); *status is then the exit status (2: DATABASE_URL unset or malformed,
 * 1: no connection). *db is set when the URL parsed (the caller destroys it).
 */
PGconn *sup_cli_connect(const char *command, struct rt_dburl **db, int *status);

/*
 * `pgcorral check [--ram SIZE] [run's flags]`: connectivity, the connection budget against
 * the server (the preflight's math), and the server's settings against the recommended
 * ones. argv is what follows "check". Returns the exit status: 0 when everything needed
 * to run fits (warnings allowed), 1 when the database cannot be reached or the budget does
 * not fit, 2 for a bad flag or setting.
 */
int sup_check_main(int argc, char **argv);

/*
 * `pgcorral tune --ram SIZE --workers N --connection-limit L`: prints the recommended
 * server settings as ALTER SYSTEM lines. Returns 0, or 2 with a message on stderr that
 * names the bad or missing flag.
 */
int sup_tune_main(int argc, char **argv);

/*
 * `pgcorral ctl [--json] db [N]`: the database's own view (size, the N largest tables,
 * pg_stat_activity counts by state for pgcorral's connections). Not a control-socket
 * command: the supervisor's single loop must not wait on the database, so the ctl process
 * connects itself with DATABASE_URL from its environment. json: print one JSON document
 * instead of tables (--json may also appear in argv). argv is what follows "db". Returns
 * the exit status: 0, 1 (database error), 2 (usage).
 */
int ctl_db_main(bool json, int argc, char **argv);

/*
 * `pgcorral cluster [--json]` and `pgcorral cluster set-budget N` (cluster_cmd.c): the
 * cluster budget and the nodes' leases, read from and changed in DATABASE_URL with or
 * without a running supervisor. argv is what follows "cluster". Returns the exit status:
 * 0; 1 when the database cannot be reached, lacks the schema or refuses; 2 on a usage error.
 */
int sup_cluster_main(int argc, char **argv);

/*
 * Prints nodes, a JSON array of node objects as `ctl cluster` and `pgcorral cluster --json`
 * give them (node, host, pid, version, slots_leased, slots_in_use, slots_wanted,
 * heartbeat_age_s, lease_expires_in_s, and lease_expired when known; borrowed), to stdout:
 * a header line, then one line per node ending in its lease's state ("expires in 7.9 s",
 * "expired 12 s ago", "no lease").
 */
void sup_cluster_print_nodes(json_t *nodes);

/* The recommendations of `tune` for one machine and pool layout. Sizes in kB. */
struct sup_tune {
    long long ram_kb;
    int workers, limit;
    int max_connections;          /* workers x limit + 10 */
    long long shared_buffers_kb;  /* 25 % of RAM */
    long long effective_cache_kb; /* 75 % of RAM */
    long long work_mem_kb;        /* RAM / max_connections / 4 */
    long long maintenance_mem_kb; /* 10 % of RAM, at most 2GB */
    bool raised;                  /* a value was raised to PostgreSQL's minimum */
};

/*
 * Parses a memory size such as "8GB", "512MB", "1.5GB", "64G" or "2TiB" (units kB, MB, GB,
 * TB, 1024-based, any case, a trailing B or iB optional; a unit is required). Returns 0
 * and writes *kb (1MB .. 16TB), or -1 with a message in err that names what (e.g. "--ram")
 * and the bad text.
 */
int sup_tune_parse_size(const char *what, const char *text, long long *kb, char *err,
                        size_t errlen);

/*
 * Computes the recommendations for ram_kb, workers (1..10000) and limit (1..10000). Returns
 * 0 and fills *out, or -1 with a message in err (max_connections over PostgreSQL's
 * maximum).
 */
int sup_tune_compute(struct sup_tune *out, long long ram_kb, int workers, int limit, char *err,
                     size_t errlen);

/* Writes kb as PostgreSQL writes memory settings ("2GB", "384MB", "41943kB": the largest
 * unit that divides it exactly) into buf. Returns buf. */
char *sup_tune_format_kb(long long kb, char *buf, size_t size);

#endif
