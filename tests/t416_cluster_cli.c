/*
 * `pgcorral cluster [--json]` and `pgcorral cluster set-budget N` against the database, with
 * no supervisor running: nodes' leases made with pgcorral.lease_renew as a supervisor makes
 * them, the budget line and one line per node (an expired lease and a node without one
 * included), --json, set-budget read back with SQL and with the command, the note when the
 * budget drops below what the nodes lease, and what a user gets wrong: a bad N, an unknown
 * word or flag, no DATABASE_URL, a database without the schema or refusing the change. Then
 * one live supervisor: `ctl cluster`'s table and `pgcorral cluster` show its lease. The
 * password in DATABASE_URL appears in no output.
 */
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_util.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/suptest.h"
#include "tests/tap.h"

/* In DATABASE_URL of every run (trust auth: the server ignores it). */
#define PW "Cl5ter-Pa55-q7"

static char env_url[1300];
static PGconn *db;
/* Outputs that showed the password. */
static int leaks;

/* Runs `pgcorral cluster ARGS...` (NULL-terminated) with env (NULL: env_url) into o;
 * returns the exit code. */
static int cluster_env(char *env0, struct ot_output *o, va_list ap)
{
    char *argv[16] = {(char *)pgt_binary(), "cluster"};
    int n = 2;
    for (char *a; n < 15 && (a = va_arg(ap, char *)) != NULL;)
        argv[n++] = a;
    argv[n] = NULL;
    char *env[] = {env0 ? env0 : env_url, NULL};
    int code = ot_run(argv, env, 10000, o);
    if (strstr(o->out, PW) || strstr(o->err, PW)) {
        diag("the password shows: stdout '%s' stderr '%s'", o->out, o->err);
        leaks++;
    }
    return code;
}

static int cluster(struct ot_output *o, ...)
{
    va_list ap;
    va_start(ap, o);
    int code = cluster_env(NULL, o, ap);
    va_end(ap);
    return code;
}

static int cluster_with(char *env0, struct ot_output *o, ...)
{
    va_list ap;
    va_start(ap, o);
    int code = cluster_env(env0, o, ap);
    va_end(ap);
    return code;
}

/* The line of node name in `pgcorral cluster` output, copied into line; false if none. */
static bool node_line(const char *out, const char *name, char *line, size_t size)
{
    char needle[64];
    snprintf(needle, sizeof needle, "\n%s ", name);
    const char *at = out ? strstr(out, needle) : NULL;
    if (!at)
        return false;
    at++;
    snprintf(line, size, "%.*s", (int)strcspn(at, "\n"), at);
    return true;
}

/* A node line's numbers: pid, leased, in use, wanted and heartbeat age. */
struct row {
    char host[64], version[32];
    long pid, leased, in_use, wanted;
    double heartbeat;
};

static bool parse_row(const char *line, struct row *r)
{
    char name[64];
    return sscanf(line, "%63s %63s %ld %31s %ld %ld %ld %lf", name, r->host, &r->pid, r->version,
                  &r->leased, &r->in_use, &r->wanted, &r->heartbeat) == 8;
}

/* `DATABASE_URL` = the test URL with user:PW, database name and extra query (or ""). */
static void url_env(char *out, size_t size, const char *base, const char *extra)
{
    const char *at = strchr(base, '@'), *q = strchr(base, '?');
    if (!at || !q)
        bail("unexpected test URL %s", base);
    snprintf(out, size, "DATABASE_URL=%.*s:" PW "%s%s", (int)(at - base), base, at, extra);
}

/* The node in a --json document's nodes, or NULL. */
static json_t *json_node(json_t *doc, const char *name)
{
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(doc, "nodes"), i, n)
    {
        if (strcmp(json_string_value(json_object_get(n, "node")), name) == 0)
            return n;
    }
    return NULL;
}

/* Whether the supervisor at control has had a renewal answered (its node table has rows). */
static bool node_listed(void *control)
{
    json_t *doc = pgt_ctl(control, "cluster");
    bool listed = json_array_size(json_object_get(json_object_get(doc, "cluster"), "nodes")) > 0;
    json_decref(doc);
    return listed;
}

int main(void)
{
    struct ot_output o;
    char line[512], sql[1024], who[512], host[256], env_other[1300];
    struct row r;

    tap_timeout(60);
    pgt_db_url();
    const char *url = jt_create_job_db("pgct_t416");
    url_env(env_url, sizeof env_url, url, "");
    db = jt_connect(url);

    /* No node ever ran: no cluster row. */
    is_int(cluster(&o, NULL), 0, "cluster before any node ran: exit 0");
    ok(strstr(o.out, "no cluster budget recorded yet: the first pgcorral run records it") != NULL,
       "... says no budget is recorded yet and who records it");
    ot_output_free(&o);
    is_int(cluster(&o, "--json", NULL), 0, "cluster --json before any node ran: exit 0");
    json_t *doc = json_loads(o.out, 0, NULL);
    ok(doc && json_is_null(json_object_get(doc, "budget")) &&
           json_array_size(json_object_get(doc, "nodes")) == 0 &&
           json_is_array(json_object_get(doc, "nodes")),
       "... budget null, nodes empty");
    json_decref(doc);
    ot_output_free(&o);

    /* Three nodes lease 10 + 20 + 8 of 40 and hold 3 + 5 + 2; the first records the
     * budget. A fourth's lease expired 12 s ago; a fifth has a row but never leased. */
    jt_exec(db, "SELECT * FROM pgcorral.lease_renew('node-a', 'host-a', 101, '0.3.0', 10, 3, 10,"
                " 40, '{}')");
    jt_exec(db, "SELECT * FROM pgcorral.lease_renew('node-b', 'host-b', 102, '0.3.0', 20, 5, 10,"
                " 40, '{}')");
    jt_exec(db, "SELECT * FROM pgcorral.lease_renew('node-c', 'host-c', 103, '0.3.0', 8, 2, 10,"
                " 40, '{}')");
    jt_exec(db, "SELECT * FROM pgcorral.lease_renew('node-d', 'host-d', 104, '0.3.0', 2, 1, 10,"
                " 40, '{}')");
    jt_exec(db, "UPDATE pgcorral.nodes SET lease_expires_at = now() - interval '12 s'"
                " WHERE node = 'node-d'");
    jt_exec(db, "INSERT INTO pgcorral.nodes (node, host, pid, version)"
                " VALUES ('node-e', 'host-e', 105, '0.2.0')");
    is_int(pgt_query_ll(db, "SELECT sum(slots_leased) FROM pgcorral.nodes WHERE node IN"
                            " ('node-a', 'node-b', 'node-c')"),
           38, "(the nodes a, b, c lease 38 of 40)");

    is_int(cluster(&o, NULL), 0, "cluster: exit 0");
    ok(strncmp(o.out, "cluster budget 40 (set ", 23) == 0 &&
           strstr(o.out, " by node-a); 3 nodes lease 38, hold 10\n") != NULL,
       "... first line: budget 40 set by node-a; 3 nodes lease 38, hold 10");
    ok(node_line(o.out, "node-a", line, sizeof line) && parse_row(line, &r) &&
           strcmp(r.host, "host-a") == 0 && r.pid == 101 && strcmp(r.version, "0.3.0") == 0 &&
           r.leased == 10 && r.in_use == 3 && r.wanted == 10 && r.heartbeat >= 0 && r.heartbeat < 5,
       "... node-a: host, pid, version, leased 10, in use 3, wanted 10, heartbeat age");
    double in_s = 0;
    const char *exp = strstr(line, "expires in ");
    ok(exp && sscanf(exp, "expires in %lf s", &in_s) == 1 && in_s > 0 && in_s <= 10,
       "... its lease expires within the TTL: '%s'", exp ? exp : line);
    ok(node_line(o.out, "node-b", line, sizeof line) && parse_row(line, &r) && r.leased == 20 &&
           r.in_use == 5 && r.wanted == 20,
       "... node-b: leased 20, in use 5");
    ok(node_line(o.out, "node-c", line, sizeof line) && parse_row(line, &r) && r.leased == 8,
       "... node-c: leased 8");
    /* 12 s and the time the command took to start (a slow machine, a sanitizer). */
    const char *ago =
        node_line(o.out, "node-d", line, sizeof line) ? strstr(line, "expired ") : NULL;
    double ago_s = 0;
    ok(ago && sscanf(ago, "expired %lf s ago", &ago_s) == 1 && ago_s >= 12 && ago_s < 20,
       "... node-d's lease: 'expired 12 s ago' (%s)", line);
    ok(node_line(o.out, "node-e", line, sizeof line) && strstr(line, "no lease"),
       "... node-e, which never leased: 'no lease'");
    is_int(ot_count(o.out, "\nnode-"), 5, "... one line per node");
    ot_output_free(&o);

    is_int(cluster(&o, "--json", NULL), 0, "cluster --json: exit 0");
    doc = json_loads(o.out, 0, NULL);
    json_t *na = json_node(doc, "node-a"), *nd = json_node(doc, "node-d");
    const char *set_at = json_string_value(json_object_get(doc, "set_at"));
    ok(doc && json_integer_value(json_object_get(doc, "budget")) == 40 &&
           strcmp(json_string_value(json_object_get(doc, "set_by")), "node-a") == 0 && set_at &&
           strlen(set_at) > 20 && set_at[strlen(set_at) - 1] == 'Z' &&
           json_integer_value(json_object_get(doc, "leased")) == 38 &&
           json_integer_value(json_object_get(doc, "in_use")) == 10 &&
           json_array_size(json_object_get(doc, "nodes")) == 5,
       "... budget 40, set_at (UTC), set_by node-a, leased 38, in use 10, 5 nodes");
    ok(na && strcmp(json_string_value(json_object_get(na, "host")), "host-a") == 0 &&
           json_integer_value(json_object_get(na, "pid")) == 101 &&
           strcmp(json_string_value(json_object_get(na, "version")), "0.3.0") == 0 &&
           json_integer_value(json_object_get(na, "slots_leased")) == 10 &&
           json_integer_value(json_object_get(na, "slots_in_use")) == 3 &&
           json_integer_value(json_object_get(na, "slots_wanted")) == 10 &&
           json_is_number(json_object_get(na, "heartbeat_age_s")) &&
           json_number_value(json_object_get(na, "lease_expires_in_s")) > 0 &&
           json_is_false(json_object_get(na, "lease_expired")),
       "... node-a with ctl cluster's fields and lease_expired false");
    ok(nd && json_is_true(json_object_get(nd, "lease_expired")) &&
           json_number_value(json_object_get(nd, "lease_expires_in_s")) <= -11.5,
       "... node-d: lease_expired true, lease_expires_in_s about -12");
    json_decref(doc);
    ot_output_free(&o);

    /* set-budget */
    rt_host_name(host, sizeof host);
    struct passwd *pw = getpwuid(geteuid());
    snprintf(who, sizeof who, "pgcorral cluster set-budget (%s@%s)", pw ? pw->pw_name : "?", host);
    is_int(cluster(&o, "set-budget", "60", NULL), 0, "set-budget 60: exit 0");
    is_str(o.out, "cluster budget: 40 -> 60\n", "... 'cluster budget: 40 -> 60', nothing more");
    ot_output_free(&o);
    is_int(pgt_query_ll(db, "SELECT budget FROM pgcorral.cluster"), 60, "... the budget is 60");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.cluster WHERE set_by = '%s'"
             " AND set_at > now() - interval '1 minute'",
             who);
    is_int(pgt_query_ll(db, sql), 1, "... set by '%s', just now", who);
    cluster(&o, NULL);
    snprintf(line, sizeof line, "cluster budget 60 (set ");
    ok(strncmp(o.out, line, strlen(line)) == 0 && strstr(o.out, who),
       "... and `pgcorral cluster` shows 60 and who set it");
    ot_output_free(&o);

    is_int(cluster(&o, "set-budget", "30", NULL), 0, "set-budget 30, below the 38 leased: exit 0");
    ok(strncmp(o.out, "cluster budget: 60 -> 30\n", 25) == 0 &&
           strstr(o.out, "the nodes lease 38 now: they shrink to fit at their next renewals"),
       "... says the nodes lease 38 and shrink at their next renewals");
    ot_output_free(&o);
    is_int(pgt_query_ll(db, "SELECT budget FROM pgcorral.cluster"), 30, "... the budget is 30");

    /* Bad N: a usage error naming N; the budget stays. */
    static char *const bad[] = {"0", "-1", "abc", "99999", "4097", "1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[96];
        snprintf(want, sizeof want, "N must be an integer from 1 to 4096, got '%s'", bad[i]);
        int code = cluster(&o, "set-budget", bad[i], NULL);
        ok(code == 2 && strstr(o.err, want) && !*o.out, "set-budget %s: exit 2, '%s'", bad[i],
           want);
        ot_output_free(&o);
    }
    is_int(pgt_query_ll(db, "SELECT budget FROM pgcorral.cluster"), 30,
           "... none of them changed the budget");
    ok(cluster(&o, "set-budget", NULL) == 2 && strstr(o.err, "give N"),
       "set-budget without N: exit 2, asking for N");
    ot_output_free(&o);
    ok(cluster(&o, "set-budget", "5", "6", NULL) == 2 && strstr(o.err, "unexpected argument '6'"),
       "set-budget 5 6: exit 2");
    ot_output_free(&o);
    ok(cluster(&o, "set-budget", "5", "--json", NULL) == 2, "set-budget with --json: exit 2");
    ot_output_free(&o);

    /* Usage. */
    is_int(cluster(&o, "--help", NULL), 0, "cluster --help: exit 0");
    ok(strncmp(o.out, "usage: pgcorral cluster", 23) == 0 && strstr(o.out, "set-budget N") &&
           !*o.err,
       "... usage on stdout");
    ot_output_free(&o);
    ok(cluster(&o, "-h", NULL) == 0 && strstr(o.out, "usage: pgcorral cluster"),
       "cluster -h: usage, exit 0");
    ot_output_free(&o);
    ok(cluster(&o, "grow", NULL) == 2 && strstr(o.err, "unknown command 'grow'"),
       "an unknown word: exit 2, naming it");
    ot_output_free(&o);
    ok(cluster(&o, "--color", NULL) == 2 && strstr(o.err, "unknown flag '--color'"),
       "an unknown flag: exit 2, naming it");
    ot_output_free(&o);
    ok(cluster_with("DATABASE_URL=", &o, NULL) == 2 && strstr(o.err, "DATABASE_URL is not set"),
       "no DATABASE_URL: exit 2");
    ot_output_free(&o);

    /* The database refuses (a read-only session): its message, exit 1. */
    url_env(env_other, sizeof env_other, url, "&options=-c%20default_transaction_read_only%3Don");
    int code = cluster_with(env_other, &o, "set-budget", "20", NULL);
    ok(code == 1 && strstr(o.err, "read-only transaction"),
       "set-budget refused by the database: exit 1 with its message (%s)", o.err);
    ot_output_free(&o);
    is_int(pgt_query_ll(db, "SELECT budget FROM pgcorral.cluster"), 30, "... the budget stays");

    /* No database, no schema, an older schema: exit 1, the URL redacted. */
    char nope[1024];
    const char *name = strstr(url, "/pgct_t416?");
    if (!name)
        bail("unexpected test URL %s", url);
    snprintf(nope, sizeof nope, "%.*s/pgct_t416_nope%s", (int)(name - url), url, name + 10);
    url_env(env_other, sizeof env_other, nope, "");
    ok(cluster_with(env_other, &o, NULL) == 1 && strstr(o.err, "cannot connect to") &&
           strstr(o.err, "pgct_t416_nope"),
       "a database that does not exist: exit 1, naming it");
    ot_output_free(&o);
    url_env(env_other, sizeof env_other, jt_create_db("pgct_t416_bare"), "");
    ok(cluster_with(env_other, &o, NULL) == 1 && strstr(o.err, "run 'pgcorral migrate'"),
       "no pgcorral schema: exit 1, saying to run pgcorral migrate");
    ot_output_free(&o);
    ok(cluster_with(env_other, &o, "set-budget", "5", NULL) == 1 &&
           strstr(o.err, "run 'pgcorral migrate'"),
       "... set-budget too");
    ot_output_free(&o);
    const char *old = jt_create_db("pgct_t416_old");
    struct rt_dburl *u;
    char err[256];
    if (rt_dburl_parse(old, &u, err, sizeof err) < 0 ||
        sup_migrate_upto(u, SUP_SCHEMA_NODES, NULL, err, sizeof err) < 0)
        bail("migrate: %s", err);
    rt_dburl_destroy(u);
    url_env(env_other, sizeof env_other, old, "");
    ok(cluster_with(env_other, &o, NULL) == 1 && strstr(o.err, "run 'pgcorral migrate'"),
       "a schema from before the cluster budget: exit 1, saying to run pgcorral migrate");
    ot_output_free(&o);

    /* A live node: `ctl cluster` prints its lease and the nodes as a table, and `pgcorral
     * cluster` sees the same node in the database. */
    struct ts_sup sup;
    char *ctl_argv[] = {(char *)pgt_binary(), "ctl", "--control", NULL, "cluster", NULL};
    url_env(env_other, sizeof env_other, jt_create_job_db("pgct_t416_live"), "");
    char *sup_env[] = {env_other, NULL};
    char *sup_args[] = {"--jobs",           "1",           "--listen",
                        "127.0.0.1:0",      "--node-name", "t416-live",
                        "--cluster-budget", "12",          NULL};
    if (!ts_start(&sup, "t416.sock", 1, sup_args, sup_env))
        bail("the supervisor did not start");
    ctl_argv[3] = (char *)sup.control;
    /* The node table is what the last renewal saw: none yet right after the start. */
    pgt_wait_until(node_listed, (void *)sup.control, 10000);
    is_int(ot_run(ctl_argv, NULL, 10000, &o), 0, "ctl cluster with a live node: exit 0");
    ok(strncmp(o.out, "node t416-live leases ", 22) == 0 &&
           strstr(o.out, " of the cluster budget 12 (target ") &&
           strstr(o.out, "\nlease trusted for ") && strstr(o.out, "(--lease-ttl 10 s, "),
       "... a line on its lease of the budget 12, one on how long it trusts it");
    if (!ok(node_line(o.out, "t416-live", line, sizeof line) && parse_row(line, &r) &&
                r.pid == sup.p.pid && r.leased >= 1 && strstr(line, "expires in "),
            "... and the node table with its line: pid, slots leased, lease expiring"))
        diag("ctl cluster printed:\n%s", o.out);
    ot_output_free(&o);
    cluster_with(env_other, &o, NULL);
    ok(strncmp(o.out, "cluster budget 12 (set ", 23) == 0 &&
           strstr(o.out, " by t416-live); 1 node leases ") &&
           node_line(o.out, "t416-live", line, sizeof line) && parse_row(line, &r) &&
           r.pid == sup.p.pid && strstr(line, "expires in "),
       "pgcorral cluster shows the live node's budget, lease and pid from the database");
    ot_output_free(&o);
    ok(ts_stop(&sup), "the supervisor stops cleanly");
    pgt_proc_cleanup(&sup.p);

    is_int(leaks, 0, "no output showed the password in DATABASE_URL");
    PQfinish(db);
    return done_testing();
}
