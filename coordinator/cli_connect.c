/*
 * The database connection of the commands that work without a supervisor (`pgcorral
 * jobs`, `pgcorral cluster`): DATABASE_URL from the environment, parsed and redacted like
 * everywhere else.
 */
#include <stdio.h>
#include <stdlib.h>

#include "coordinator/cmds_int.h"

PGconn *sup_cli_connect(const char *command, struct rt_dburl **db, int *status)
{
    const char *url = getenv("DATABASE_URL");
    char err[1024];
    PGconn *conn;

    *status = 2;
    if (!url || !*url) {
        fprintf(stderr, "pgcorral %s: DATABASE_URL is not set\n", command);
        return NULL;
    }
    if (rt_dburl_parse(url, db, err, sizeof err) < 0) {
        fprintf(stderr, "pgcorral %s: DATABASE_URL: %s\n", command, err);
        return NULL;
    }
    *status = 1;
    conn = PQconnectdbParams((*db)->keywords, (*db)->values, 0);
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "pgcorral %s: cannot connect to %s: %s", command, (*db)->redacted,
                PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}
