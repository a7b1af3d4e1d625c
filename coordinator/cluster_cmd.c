/*
 * `pgcorral cluster [--json]` and `pgcorral cluster set-budget N`: the cluster budget C and
 * every node's lease of it, read from and changed in the database named by DATABASE_URL
 * (no supervisor needed), through the table and functions of migration 10 (pgcorral.cluster,
 * pgcorral.nodes, pgcorral.cluster_set_budget). Also prints `ctl cluster`'s node table.
 */
#include <ctype.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "coordinator/cmds_int.h"
#include "coordinator/jobs_int.h"
#include "runtime/rt_json.h"
#include "runtime/rt_util.h"

/* Node rows one invocation prints (a string: it is part of the SQL): rows of dead nodes stay
 * up to an hour (nodes.c), so the table is bounded by time, not by size; this bounds the
 * output. */
#define CLUSTER_NODES_MAX "1000"

/*
 * The cluster row (NULL columns when none was recorded yet), the totals of the nodes whose
 * lease runs, how many node rows there are, and the first CLUSTER_NODES_MAX of them as JSON
 * in `ctl cluster`'s form plus lease_expired. One statement, so one now() judges every
 * lease. Columns: budget, set_at for people, set_at RFC 3339, set_by, nodes leasing, slots
 * leased, slots in use, node rows, nodes.
 */
static const char view_sql[] =
    "SELECT c.budget, to_char(c.set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS\"+00\"'),"
    "  to_char(c.set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), c.set_by,"
    "  s.leasing, s.leased, s.in_use, s.total, l.nodes"
    " FROM (SELECT) one LEFT JOIN pgcorral.cluster c ON true"
    " CROSS JOIN (SELECT count(*) FILTER (WHERE n.lease_expires_at > now()) leasing,"
    "   coalesce(sum(n.slots_leased) FILTER (WHERE n.lease_expires_at > now()), 0) leased,"
    "   coalesce(sum(n.slots_in_use) FILTER (WHERE n.lease_expires_at > now()), 0) in_use,"
    "   count(*) total FROM pgcorral.nodes n) s"
    " CROSS JOIN (SELECT coalesce(json_agg(json_build_object('node', n.node, 'host', n.host,"
    "   'pid', n.pid, 'version', n.version, 'slots_leased', n.slots_leased,"
    "   'slots_in_use', n.slots_in_use, 'slots_wanted', n.slots_wanted, 'heartbeat_age_s',"
    "   round(extract(epoch FROM now() - n.heartbeat_at)::numeric, 1), 'lease_expires_in_s',"
    "   round(extract(epoch FROM n.lease_expires_at - now())::numeric, 1), 'lease_expired',"
    "   coalesce(n.lease_expires_at <= now(), true)) ORDER BY n.node), '[]') nodes"
    "   FROM (SELECT * FROM pgcorral.nodes ORDER BY node LIMIT " CLUSTER_NODES_MAX ") n) l";

/* The slots the running leases hold; read after the new budget, under its advisory lock. */
static const char leased_sql[] = "SELECT coalesce(sum(slots_leased), 0) FROM pgcorral.nodes"
                                 " WHERE lease_expires_at > now()";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pgcorral cluster [--json]\n"
            "       pgcorral cluster set-budget N\n"
            "  (no word)   the cluster budget (who set it, when), what the nodes whose lease\n"
            "              runs lease and hold, then every node in pgcorral.nodes: host, pid,\n"
            "              version, slots leased, in use and wanted, heartbeat age and when its\n"
            "              lease expires (or expired), by the server's clock; --json: one object\n"
            "  set-budget  change the cluster budget C to N (1 to %d); nodes that lease more\n"
            "              shrink to fit at their next renewals, closing connections as their\n"
            "              workers release them\n"
            "Works without a supervisor: DATABASE_URL comes from the environment. Exit status:\n"
            "0, 1 when the database cannot be reached or refuses, 2 for a usage error.\n",
            SHM_MAX_SLOTS);
}

/* Prints why res failed: a schema without the cluster (missing schema, table, column or
 * function) as what to run, anything else in the database's words. */
static void print_error(const char *cmd, const struct rt_dburl *db, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (state && (strcmp(state, "3F000") == 0 || strcmp(state, "42P01") == 0 ||
                  strcmp(state, "42703") == 0 || strcmp(state, "42883") == 0))
        fprintf(stderr,
                "pgcorral %s: the pgcorral schema in %s is missing or older than version %d "
                "(the cluster budget): run 'pgcorral migrate' (or start 'pgcorral run' once)\n",
                cmd, db->redacted, SUP_SCHEMA_VERSION);
    else
        fprintf(stderr, "pgcorral %s: %s\n", cmd, msg ? msg : PQresultErrorMessage(res));
}

/* The larger of width and the length of the string s (at most 200: a bound on a line). */
static int text_width(json_t *s, int width)
{
    size_t len = json_string_length(s);
    return len > 200 ? 200 : (int)len > width ? (int)len : width;
}

void sup_cluster_print_nodes(json_t *nodes)
{
    size_t i;
    json_t *n;
    int wnode = 4, whost = 4, wversion = 7;

    /* Columns as wide as their longest value (names are cut nowhere: they identify). */
    json_array_foreach(nodes, i, n)
    {
        wnode = text_width(json_object_get(n, "node"), wnode);
        whost = text_width(json_object_get(n, "host"), whost);
        wversion = text_width(json_object_get(n, "version"), wversion);
    }
    printf("%-*s %-*s %8s %-*s %6s %6s %6s %11s  %s\n", wnode, "NODE", whost, "HOST", "PID",
           wversion, "VERSION", "LEASED", "IN_USE", "WANTED", "HEARTBEAT_S", "LEASE");
    json_array_foreach(nodes, i, n)
    {
        json_t *expires = json_object_get(n, "lease_expires_in_s");
        json_t *expired = json_object_get(n, "lease_expired");
        double in_s = json_number_value(expires);
        char lease[64];

        /* `ctl cluster` lists running leases only and has no lease_expired. */
        if (json_is_null(expires) || !expires)
            snprintf(lease, sizeof lease, "no lease");
        else if (expired ? json_is_true(expired) : in_s <= 0)
            snprintf(lease, sizeof lease, "expired %.0f s ago", -in_s);
        else
            snprintf(lease, sizeof lease, "expires in %.1f s", in_s);
        printf("%-*s %-*s %8lld %-*s %6lld %6lld %6lld %11.1f  %s\n", wnode,
               json_string_value(json_object_get(n, "node")), whost,
               json_string_value(json_object_get(n, "host")),
               (long long)json_integer_value(json_object_get(n, "pid")), wversion,
               json_string_value(json_object_get(n, "version")),
               (long long)json_integer_value(json_object_get(n, "slots_leased")),
               (long long)json_integer_value(json_object_get(n, "slots_in_use")),
               (long long)json_integer_value(json_object_get(n, "slots_wanted")),
               json_number_value(json_object_get(n, "heartbeat_age_s")), lease);
    }
}

/* An integer column of row 0. */
static long long column_ll(const PGresult *res, int col)
{
    return strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

/* `pgcorral cluster [--json]`. */
static int cmd_view(bool as_json)
{
    struct rt_dburl *db = NULL;
    PGconn *conn;
    PGresult *res;
    json_t *nodes = NULL;
    int status;

    if (!(conn = sup_cli_connect("cluster", &db, &status)))
        goto out;
    res = PQexec(conn, view_sql);
    PQfinish(conn);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        print_error("cluster", db, res);
        PQclear(res);
        goto out;
    }
    bool recorded = !PQgetisnull(res, 0, 0);
    long long leasing = column_ll(res, 4), leased = column_ll(res, 5), in_use = column_ll(res, 6),
              total = column_ll(res, 7);
    nodes = recorded ? json_loads(PQgetvalue(res, 0, 8), 0, NULL) : json_array();
    if (!json_is_array(nodes)) {
        fprintf(stderr, "pgcorral cluster: the database's list of nodes is not a JSON array\n");
        PQclear(res);
        goto out;
    }
    if (as_json) {
        json_t *doc = json_pack(
            "{s:o,s:o,s:o,s:I,s:I,s:I,s:O}", "budget",
            recorded ? json_integer(column_ll(res, 0)) : json_null(), "set_at",
            recorded ? json_string(PQgetvalue(res, 0, 2)) : json_null(), "set_by",
            recorded ? json_string(PQgetvalue(res, 0, 3)) : json_null(), "leased",
            (json_int_t)(recorded ? leased : 0), "in_use", (json_int_t)(recorded ? in_use : 0),
            "nodes_total", (json_int_t)(recorded ? total : 0), "nodes", nodes);
        char *text = rt_json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (text)
            printf("%s\n", text);
        else
            fprintf(stderr, "pgcorral cluster: out of memory\n");
        status = text ? 0 : 1;
        free(text);
        json_decref(doc);
    } else if (!recorded) {
        printf("no cluster budget recorded yet: the first pgcorral run records it\n");
        status = 0;
    } else {
        printf("cluster budget %s (set %s by %s); %lld node%s lease%s %lld, hold%s %lld\n",
               PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 3), leasing,
               leasing == 1 ? "" : "s", leasing == 1 ? "s" : "", leased, leasing == 1 ? "s" : "",
               in_use);
        sup_cluster_print_nodes(nodes);
        if (total > (long long)json_array_size(nodes))
            printf("(%lld more nodes not shown)\n", total - (long long)json_array_size(nodes));
        status = 0;
    }
    PQclear(res);
out:
    json_decref(nodes);
    rt_dburl_destroy(db);
    return status;
}

/* Who changes the budget, for pgcorral.cluster.set_by: "pgcorral cluster set-budget
 * (USER@HOST)", into buf. */
static void who_text(char *buf, size_t size)
{
    struct passwd *pw = getpwuid(geteuid());
    char host[256], user[64];

    rt_host_name(host, sizeof host);
    if (pw && pw->pw_name)
        snprintf(user, sizeof user, "%s", pw->pw_name);
    else
        snprintf(user, sizeof user, "uid %u", (unsigned)geteuid());
    snprintf(buf, size, "pgcorral cluster set-budget (%s@%s)", user, host);
}

/* `pgcorral cluster set-budget N`, N already checked. One transaction: the new budget,
 * then what the running leases hold under the same advisory lock, so that no grant falls
 * between the two. */
static int cmd_set_budget(int budget)
{
    struct rt_dburl *db = NULL;
    PGconn *conn;
    PGresult *res = NULL;
    char nbuf[16], who[512];
    const char *values[2] = {nbuf, who};
    int status;

    if (!(conn = sup_cli_connect("cluster set-budget", &db, &status)))
        goto out;
    snprintf(nbuf, sizeof nbuf, "%d", budget);
    who_text(who, sizeof who);
    status = 1;
    res = PQexec(conn, "BEGIN");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto failed;
    PQclear(res);
    res = PQexecParams(conn, "SELECT pgcorral.cluster_set_budget($1::int, $2)", 2, NULL, values,
                       NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto failed;
    char old[16];
    snprintf(old, sizeof old, "%s", PQgetisnull(res, 0, 0) ? "none" : PQgetvalue(res, 0, 0));
    PQclear(res);
    res = PQexec(conn, leased_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto failed;
    long long leased = column_ll(res, 0);
    PQclear(res);
    res = PQexec(conn, "COMMIT");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto failed;
    printf("cluster budget: %s -> %d\n", old, budget);
    if (leased > budget)
        printf("the nodes lease %lld now: they shrink to fit at their next renewals (within "
               "--lease-heartbeat), closing connections as their workers release them\n",
               leased);
    status = 0;
    goto done;
failed:
    print_error("cluster set-budget", db, res);
done:
    PQclear(res);
    PQfinish(conn);
out:
    rt_dburl_destroy(db);
    return status;
}

/* Whether a is a flag: "-x" or "--x", not "-" alone or a negative number (a bad N). */
static bool is_flag(const char *a)
{
    return a[0] == '-' && a[1] && !isdigit((unsigned char)a[1]);
}

int sup_cluster_main(int argc, char **argv)
{
    char *words[3];
    int nwords = 0, budget;
    bool as_json = false, only_words = false;

    if (sup_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < argc; i++) {
        if (only_words || !is_flag(argv[i])) {
            if (nwords == 3) {
                fprintf(stderr, "pgcorral cluster: unexpected argument '%.64s'\n", argv[i]);
                return 2;
            }
            words[nwords++] = argv[i];
        } else if (strcmp(argv[i], "--") == 0) {
            only_words = true;
        } else if (strcmp(argv[i], "--json") == 0) {
            as_json = true;
        } else {
            fprintf(stderr,
                    "pgcorral cluster: unknown flag '%.64s' (try 'pgcorral cluster --help')\n",
                    argv[i]);
            return 2;
        }
    }
    if (nwords == 0)
        return cmd_view(as_json);
    if (strcmp(words[0], "set-budget") != 0) {
        fprintf(stderr, "pgcorral cluster: unknown command '%.64s'\n", words[0]);
        usage(stderr);
        return 2;
    }
    if (as_json) {
        fprintf(stderr, "pgcorral cluster set-budget: --json is a flag of 'pgcorral cluster'\n");
        return 2;
    }
    if (nwords == 1) {
        fprintf(stderr, "pgcorral cluster set-budget: which budget? give N, from 1 to %d\n",
                SHM_MAX_SLOTS);
        return 2;
    }
    if (nwords > 2) {
        fprintf(stderr, "pgcorral cluster set-budget: unexpected argument '%.64s'\n", words[2]);
        return 2;
    }
    if (rt_parse_int(words[1], 1, SHM_MAX_SLOTS, &budget) < 0) {
        fprintf(stderr,
                "pgcorral cluster set-budget: N must be an integer from 1 to %d, got '%.64s'\n",
                SHM_MAX_SLOTS, words[1]);
        return 2;
    }
    return cmd_set_budget(budget);
}
