/*
 * The node registry: each supervisor records itself in pgcorral.nodes (its name, host,
 * pid, version and the tasks its plugins register), refreshes that row every
 * --lease-heartbeat on its job connection and deletes it when it stops cleanly. The
 * enqueue commands refuse a task no live node registers, and a job worker that claimed a
 * task it does not know asks whether another live node does (migration 9 says how).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs_int.h"
#include "runtime/rt_util.h"
#include "runtime/rt_version.h"

/*
 * The heartbeat: $1 node, $2 host, $3 pid, $4 version, $5 tasks and $6 schedule ids (JSON
 * arrays). Also removes the rows of nodes silent for an hour (supervisors that died), so
 * the table stays as small as the cluster.
 */
static const char beat_sql[] =
    "WITH gone AS (DELETE FROM pgcorral.nodes"
    "   WHERE heartbeat_at < now() - interval '1 hour' AND node <> $1)"
    " INSERT INTO pgcorral.nodes AS n (node, host, pid, version, tasks, schedules)"
    " VALUES ($1, $2, $3::int, $4, ARRAY(SELECT jsonb_array_elements_text($5::jsonb)),"
    "   ARRAY(SELECT jsonb_array_elements_text($6::jsonb)))"
    " ON CONFLICT (node) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
    "   version = EXCLUDED.version, heartbeat_at = now(), tasks = EXCLUDED.tasks,"
    "   schedules = EXCLUDED.schedules";

/* Start-up: the heartbeat without schedules (the first beat on the job connection, right
 * after, brings them), with started_at set anew (the name may be reused). */
static const char register_sql[] =
    "INSERT INTO pgcorral.nodes AS n (node, host, pid, version, tasks)"
    " VALUES ($1, $2, $3::int, $4, ARRAY(SELECT jsonb_array_elements_text($5::jsonb)))"
    " ON CONFLICT (node) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
    "   version = EXCLUDED.version, started_at = now(), heartbeat_at = now(),"
    "   tasks = EXCLUDED.tasks, schedules = '{}'";

/* A clean stop: only our own row ($2 host, $3 pid), not one a binary upgrade's new
 * supervisor took over under the same name. */
static const char leave_sql[] =
    "DELETE FROM pgcorral.nodes WHERE node = $1 AND host = $2 AND pid = $3::int";

/* Who holds node $1 and is live. */
static const char holder_sql[] = "SELECT host, pid FROM pgcorral.live_nodes() WHERE node = $1";

char *sup_node_default_name(char *buf, size_t size)
{
    char host[64];
    rt_host_name(host, sizeof host);
    snprintf(buf, size, "%s:%d", host, (int)getpid());
    return buf;
}

/* The first lease ($1 node, $2 host, $3 pid, $4 version, $5 want, $6 in_use, $7 ttl_s,
 * $8 default budget): no job workers yet. */
static const char first_lease_sql[] =
    "SELECT granted, budget, target, jsonb_array_length(nodes)"
    " FROM pgcorral.lease_renew($1, $2, $3::int, $4, $5::int, $6::int, $7::int, $8::int, '{}')";

/* Takes the first lease on conn into *grant. Returns NULL or the error. */
static PGresult *first_lease(PGconn *conn, const char *const base[4],
                             const struct sup_lease_ask *ask, struct sup_lease_grant *grant)
{
    char want[16], in_use[16], ttl[16], dflt[16];
    const char *values[8] = {base[0], base[1], base[2], base[3], want, in_use, ttl, dflt};
    PGresult *res;

    snprintf(want, sizeof want, "%d", ask->want);
    snprintf(in_use, sizeof in_use, "%d", ask->in_use);
    snprintf(ttl, sizeof ttl, "%d", ask->ttl_s);
    snprintf(dflt, sizeof dflt, "%d", ask->default_budget);
    grant->sent_ms = uv_hrtime() / 1000000;
    res = PQexecParams(conn, first_lease_sql, 8, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return res;
    grant->granted = atoi(PQgetvalue(res, 0, 0));
    grant->budget = atoi(PQgetvalue(res, 0, 1));
    grant->target = atoi(PQgetvalue(res, 0, 2));
    grant->nodes = atoi(PQgetvalue(res, 0, 3));
    PQclear(res);
    return NULL;
}

int sup_node_register(const struct rt_dburl *db, const char *node, const char *tasks, bool takeover,
                      const struct sup_lease_ask *ask, struct sup_lease_grant *grant, char *err,
                      size_t errlen)
{
    PGconn *conn = PQconnectdbParams(db->keywords, db->values, 0);
    PGresult *res = NULL;
    char host[256], pid[16], msg[512];
    const char *values[5];
    const char *errpos;

    rt_host_name(host, sizeof host);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        errpos = "connect";
        rt_copy_message(msg, sizeof msg, conn ? PQerrorMessage(conn) : "out of memory");
        goto fail;
    }
    values[0] = node;
    res = PQexecParams(conn, holder_sql, 1, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        errpos = "read pgcorral.nodes";
        rt_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
        goto fail;
    }
    if (PQntuples(res) == 1 && !takeover) {
        const char *h = PQgetvalue(res, 0, 0);
        pid_t p = (pid_t)atoi(PQgetvalue(res, 0, 1));
        /* Ours, or a process of this host that is gone (a killed run's row, still fresh). */
        bool stale = strcmp(h, host) == 0 && (p == getpid() || (kill(p, 0) < 0 && errno == ESRCH));
        if (!stale) {
            snprintf(err, errlen,
                     "--node-name '%s' is held by a live supervisor (host %s, pid %d): choose "
                     "another name, or stop that one",
                     node, h, (int)p);
            PQclear(res);
            PQfinish(conn);
            return -1;
        }
    }
    PQclear(res);
    values[1] = host;
    values[2] = pid;
    values[3] = PGCORRAL_VERSION;
    values[4] = tasks;
    res = PQexecParams(conn, register_sql, 5, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        errpos = "write pgcorral.nodes";
        rt_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
        goto fail;
    }
    PQclear(res);
    res = first_lease(conn, values, ask, grant);
    if (res) {
        errpos = "lease of the cluster budget";
        rt_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
        goto fail;
    }
    PQfinish(conn);
    return 0;

fail:
    snprintf(err, errlen, "cannot register node '%s' in %s (%s): %s", node, db->redacted, errpos,
             msg);
    PQclear(res);
    PQfinish(conn);
    return -1;
}

int sup_nodes_sql(const struct sup_jobq *j, const struct sup_jobq_op *op, const char **sql,
                  const char *values[SUP_JOBQ_OP_PARAMS])
{
    const struct sup_jobq_node *n = sup_jobq_node(j);

    values[0] = n->name;
    values[1] = n->host;
    values[2] = n->pid;
    if (op->kind == SUP_JOBQ_OP_LEAVE) {
        *sql = leave_sql;
        return 3;
    }
    *sql = beat_sql;
    values[3] = PGCORRAL_VERSION;
    values[4] = n->tasks;
    values[5] = n->schedules;
    return 6;
}

void sup_nodes_result(struct sup_jobq *j, const struct sup_jobq_op *op, PGresult *res,
                      const char *err)
{
    /* Logged once per run of failures: a beat every 2 s would repeat an outage's line. */
    static bool failing;

    if (err && !failing)
        rt_log(RT_LOG_WARN,
               op->kind == SUP_JOBQ_OP_LEAVE ? "cannot remove this node from pgcorral.nodes"
                                             : "node heartbeat failed; retrying",
               json_pack("{s:s,s:s}", "node", sup_jobq_node(j)->name, "error", err));
    else if (!err && failing)
        rt_log(RT_LOG_INFO, "node heartbeat works again",
               json_pack("{s:s}", "node", sup_jobq_node(j)->name));
    failing = err != NULL;
}
