/*
 * The operator commands: `pgcorral tune` prints ALTER SYSTEM lines with the guide's numbers
 * that the server accepts, and names bad input; `pgcorral check` reports connectivity, the
 * budget math and the settings, and fails when the budget does not fit or the database
 * cannot be reached; `pgcorral ctl db` shows size, largest tables and pgcorral's
 * connections by state. Each command runs in a child process, as it would from the CLI.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "coordinator/cmds_int.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* What a command printed, and its exit status. */
struct out {
    int status;
    char text[65536]; /* stdout */
    char err[16384];  /* stderr */
};

/* Reads what is in fd (the child has exited, so this ends) into buf. */
static void slurp(int fd, char *buf, size_t size)
{
    size_t len = 0;
    ssize_t n;
    while (len < size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = 0;
    close(fd);
}

/*
 * Runs fn(argc, argv) in a child with env ("NAME=value" sets, "NAME" unsets; NULL-ended)
 * applied, capturing stdout and stderr. Outputs stay far below a pipe's capacity.
 */
static void run(int (*fn)(int, char **), char **argv, const char *const *env, struct out *o)
{
    int po[2], pe[2], argc = 0, st;
    pid_t pid;

    while (argv[argc])
        argc++;
    if (pipe(po) < 0 || pipe(pe) < 0)
        bail("pipe");
    fcntl(po[0], F_SETPIPE_SZ, 1 << 20);
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        bail("fork");
    if (pid == 0) {
        for (int i = 0; env && env[i]; i++) {
            const char *eq = strchr(env[i], '=');
            if (eq) {
                char name[64];
                snprintf(name, sizeof name, "%.*s", (int)(eq - env[i]), env[i]);
                setenv(name, eq + 1, 1);
            } else {
                unsetenv(env[i]);
            }
        }
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        int rc = fn(argc, argv);
        fflush(NULL);
        _exit(rc);
    }
    close(po[1]);
    close(pe[1]);
    if (waitpid(pid, &st, 0) != pid)
        bail("waitpid");
    o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(po[0], o->text, sizeof o->text);
    slurp(pe[0], o->err, sizeof o->err);
}

static bool has(const char *haystack, const char *needle)
{
    return strstr(haystack, needle) != NULL;
}

/* Shows what a command printed when an assertion about it failed. */
static void show(const struct out *o)
{
    diag("exit %d; stdout:\n%s\nstderr:\n%s", o->status, o->text, o->err);
}

/* The test URL with extra query parameters, in a static buffer (two alternate). */
static const char *url_with(const char *extra)
{
    static char bufs[2][1024];
    static int k;
    char *b = bufs[k++ % 2];
    const char *base = pgt_db_url();
    snprintf(b, sizeof bufs[0], "%s%s%s", base, strchr(base, '?') ? "&" : "?", extra);
    return b;
}

/* ---- tune ---------------------------------------------------------------------------- */

/* Runs every ALTER SYSTEM line of text on the server, then resets those settings. Returns
 * how many lines the server accepted, -1 if one was refused. */
static int apply_and_reset(PGconn *c, const char *text)
{
    static const char *const names[] = {"max_connections", "shared_buffers", "effective_cache_size",
                                        "work_mem", "maintenance_work_mem"};
    char line[512];
    int accepted = 0;

    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        snprintf(line, sizeof line, "%.*s", (int)n, p);
        p += n + (p[n] == '\n');
        if (strncmp(line, "ALTER SYSTEM", 12) != 0)
            continue;
        PGresult *r = PQexec(c, line);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            diag("refused: %s: %s", line, PQresultErrorMessage(r));
            accepted = -1;
        } else if (accepted >= 0) {
            accepted++;
        }
        PQclear(r);
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(line, sizeof line, "ALTER SYSTEM RESET %s", names[i]);
        PQclear(PQexec(c, line));
    }
    return accepted;
}

static void test_tune(PGconn *c)
{
    struct out o;

    run(sup_tune_main,
        (char *[]){"--ram", "8GB", "--workers", "4", "--connection-limit", "10", NULL}, NULL, &o);
    is_int(o.status, 0, "tune --ram 8GB --workers 4 --connection-limit 10 succeeds");
    if (!ok(has(o.text, "ALTER SYSTEM SET max_connections = 50;") &&
                has(o.text, "ALTER SYSTEM SET shared_buffers = '2GB';") &&
                has(o.text, "ALTER SYSTEM SET effective_cache_size = '6GB';") &&
                has(o.text, "ALTER SYSTEM SET work_mem = '41943kB';") &&
                has(o.text, "ALTER SYSTEM SET maintenance_work_mem = '838860kB';"),
            "8GB, 4 x 10: max_connections 50, 2GB, 6GB, 8GB/50/4, 10 %%"))
        show(&o);
    is_int(apply_and_reset(c, o.text), 5, "the server accepts all five lines as they are");

    run(sup_tune_main, (char *[]){"--ram=512MB", "--workers=2", "--connection-limit=10", NULL},
        NULL, &o);
    if (!ok(o.status == 0 && has(o.text, "max_connections = 30;") &&
                has(o.text, "shared_buffers = '128MB';") &&
                has(o.text, "effective_cache_size = '384MB';") &&
                has(o.text, "work_mem = '4369kB';") &&
                has(o.text, "maintenance_work_mem = '52428kB';"),
            "512MB, 2 x 10 (--flag=value form)"))
        show(&o);

    run(sup_tune_main,
        (char *[]){"--ram", "64gb", "--workers", "8", "--connection-limit", "20", NULL}, NULL, &o);
    if (!ok(o.status == 0 && has(o.text, "max_connections = 170;") &&
                has(o.text, "shared_buffers = '16GB';") &&
                has(o.text, "maintenance_work_mem = '2GB';"),
            "64GB: maintenance_work_mem is capped at 2GB"))
        show(&o);
    is_int(apply_and_reset(c, o.text), 5, "the server accepts those too");

    run(sup_tune_main,
        (char *[]){"--ram", "16MB", "--workers", "100", "--connection-limit", "100", NULL}, NULL,
        &o);
    if (!ok(o.status == 0 && has(o.text, "work_mem = '64kB';") &&
                has(o.text, "raised to PostgreSQL's minimum"),
            "a tiny RAM for many connections: work_mem raised to the minimum, and said so"))
        show(&o);
    is_int(apply_and_reset(c, o.text), 5, "and the server accepts the raised values");

    /* Bad input: exit 2 and a message that names the flag and the value. */
    static const struct {
        const char *args[8];
        const char *msg;
    } bad[] = {
        {{"--ram", "8XB", "--workers", "4", "--connection-limit", "10"},
         "--ram '8XB' needs a unit"},
        {{"--ram", "8", "--workers", "4", "--connection-limit", "10"}, "--ram '8' needs a unit"},
        {{"--ram", "lots", "--workers", "4", "--connection-limit", "10"},
         "--ram must be a size like 8GB or 512MB, got 'lots'"},
        {{"--ram", "0x10GB", "--workers", "4", "--connection-limit", "10"},
         "--ram must be a size like 8GB or 512MB, got '0x10GB'"},
        {{"--ram", "100kB", "--workers", "4", "--connection-limit", "10"},
         "--ram must be from 1MB to 16TB, got '100kB'"},
        {{"--ram", "8GB", "--workers", "0", "--connection-limit", "10"},
         "--workers must be an integer from 1 to 10000, got '0'"},
        {{"--ram", "8GB", "--workers", "4", "--connection-limit", "ten"},
         "--connection-limit must be an integer from 1 to 10000, got 'ten'"},
        {{"--ram", "8GB", "--connection-limit", "10"}, "--workers N is required"},
        {{"--ram", "8GB", "--workers", "4", "--connection-limit"},
         "--connection-limit needs a value"},
        {{"--ram", "8GB", "--workers", "10000", "--connection-limit", "10000"},
         "is more than PostgreSQL's largest max_connections"},
        {{"--cpus", "4"}, "unknown flag '--cpus'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[8] = {0};
        for (int k = 0; k < 7 && bad[i].args[k]; k++)
            argv[k] = (char *)bad[i].args[k];
        run(sup_tune_main, argv, NULL, &o);
        if (!ok(o.status == 2 && has(o.err, bad[i].msg) && !has(o.text, "ALTER"),
                "tune refuses bad input: %s", bad[i].msg))
            show(&o);
    }
}

/* ---- check --------------------------------------------------------------------------- */

static void test_check(void)
{
    struct out o;
    char dburl[1024], env_url[1200], env_rep[1200];
    const char *env_base[] = {"PGCORRAL_WEB",
                              "PGCORRAL_JOBS",
                              "DATABASE_REPLICA_URL",
                              "PGCORRAL_CONFIG",
                              "PGCORRAL_MAX_DB_CONNECTIONS",
                              NULL,
                              NULL};

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url_with("connection_limit=5"));
    env_base[5] = env_url;
    run(sup_check_main, (char *[]){"--web", "1", "--jobs", "1", NULL}, env_base, &o);
    is_int(o.status, 0, "check of a configuration that fits exits 0");
    if (!ok(has(o.text, "ok    connect") && has(o.text, "(PostgreSQL 15"),
            "it reports the connection and the server version"))
        show(&o);
    if (!ok(has(o.text, "ok    budget") &&
                has(o.text, "(2 workers x connection_limit 5) + 1 = 11 <= max_connections"),
            "it shows the budget math with the real numbers"))
        show(&o);
    if (!ok(has(o.text, "ok    max_connections       200") &&
                has(o.text, "recommended >= 20 (workers x limit + 10)"),
            "it compares max_connections with workers x limit + 10"))
        show(&o);
    ok(has(o.text, "shared_buffers") && has(o.text, "work_mem") &&
           has(o.text, "RAM: this machine's, the database is local"),
       "memory settings are compared against this machine's RAM (local database)");

    run(sup_check_main, (char *[]){"--web", "1", "--jobs", "1", "--ram", "8GB", NULL}, env_base,
        &o);
    if (!ok(o.status == 0 &&
                has(o.text, "low   shared_buffers        128MB      recommended 2GB") &&
                has(o.text, "OK, with"),
            "with --ram 8GB the default shared_buffers is reported low, as a warning only"))
        show(&o);

    /* The same environment as run: PGCORRAL_WEB / PGCORRAL_JOBS. */
    const char *env_workers[] = {"PGCORRAL_WEB=3", "PGCORRAL_JOBS=0", env_url,
                                 "DATABASE_REPLICA_URL", NULL};
    run(sup_check_main, (char *[]){NULL}, env_workers, &o);
    if (!ok(o.status == 0 && has(o.text, "3 web + 0 job workers") &&
                has(o.text, "(3 workers x connection_limit 5) + 1 = 16"),
            "check reads the worker counts from the environment, as run does"))
        show(&o);

    /* A budget that does not fit: exit 1, the preflight's message. */
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url_with("connection_limit=100"));
    run(sup_check_main, (char *[]){"--web", "2", "--jobs", "2", NULL}, env_base, &o);
    is_int(o.status, 1, "a budget that does not fit the server: exit 1");
    if (!ok(has(o.text, "FAIL  budget") && has(o.text, "(4 x 100) + 1 = 401 > 200 - 3 - ") &&
                has(o.text, "FAILED"),
            "with the formula filled in"))
        show(&o);
    run(sup_check_main,
        (char *[]){"--web", "1", "--jobs", "1", "--max-db-connections", "500", NULL}, env_base, &o);
    if (!ok(o.status == 1 && has(o.text, "--max-db-connections 500 > max_connections"),
            "--max-db-connections over the server's limit: exit 1"))
        show(&o);

    /* Unreachable database: exit 1; the password never shows. */
    snprintf(dburl, sizeof dburl, "DATABASE_URL=postgresql://someone:s3cret@127.0.0.1:%d/db",
             pgt_closed_port());
    const char *env_down[] = {dburl, "DATABASE_REPLICA_URL", "PGCORRAL_CONFIG", NULL};
    run(sup_check_main, (char *[]){"--web", "1", "--jobs", "1", NULL}, env_down, &o);
    is_int(o.status, 1, "an unreachable database: exit 1");
    if (!ok(has(o.text, "FAIL  connect") && has(o.text, "Connection refused"),
            "check says it cannot connect, and why"))
        show(&o);
    ok(!has(o.text, "s3cret") && !has(o.err, "s3cret"), "the password is not printed");

    /* The replica: reachable (the same server), then unreachable. */
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", url_with("connection_limit=5"));
    snprintf(env_rep, sizeof env_rep, "DATABASE_REPLICA_URL=%s", url_with("connection_limit=3"));
    const char *env_rep_ok[] = {env_url, env_rep, "PGCORRAL_CONFIG", NULL};
    run(sup_check_main, (char *[]){"--web", "1", "--jobs", "1", NULL}, env_rep_ok, &o);
    if (!ok(o.status == 0 && has(o.text, "ok    replica connect") &&
                has(o.text, "ok    replica capacity") &&
                has(o.text, "2 workers x connection_limit 3 = 6 <="),
            "a reachable replica is checked for connectivity and capacity"))
        show(&o);
    snprintf(env_rep, sizeof env_rep, "DATABASE_REPLICA_URL=postgresql://someone@127.0.0.1:%d/db",
             pgt_closed_port());
    run(sup_check_main, (char *[]){"--web", "1", "--jobs", "1", NULL}, env_rep_ok, &o);
    if (!ok(o.status == 1 && has(o.text, "FAIL  replica connect"),
            "an unreachable replica fails the check"))
        show(&o);

    /* Bad flags and settings: exit 2 with run's message. */
    run(sup_check_main, (char *[]){"--web", "x", NULL}, env_base, &o);
    if (!ok(o.status == 2 && has(o.err, "--web must be an integer from 0 to 64, got 'x'"),
            "a bad flag: exit 2, named as run names it"))
        show(&o);
    run(sup_check_main, (char *[]){"--ram", "big", NULL}, env_base, &o);
    if (!ok(o.status == 2 && has(o.err, "--ram must be a size like 8GB"), "a bad --ram: exit 2"))
        show(&o);
    const char *env_nourl[] = {"DATABASE_URL", "PGCORRAL_CONFIG", NULL};
    run(sup_check_main, (char *[]){NULL}, env_nourl, &o);
    if (!ok(o.status == 2 && has(o.err, "DATABASE_URL is not set"), "no DATABASE_URL: exit 2"))
        show(&o);
}

/* ---- ctl db -------------------------------------------------------------------------- */

static int db_json(int argc, char **argv)
{
    return ctl_db_main(true, argc, argv);
}

static int db_text(int argc, char **argv)
{
    return ctl_db_main(false, argc, argv);
}

/* A connection with application_name app; bails out on failure. */
static PGconn *connect_as(const char *app)
{
    char extra[128];
    snprintf(extra, sizeof extra, "application_name=%s", app);
    PGconn *c = PQconnectdb(url_with(extra));
    if (PQstatus(c) != CONNECTION_OK)
        bail("connect as %s: %s", app, PQerrorMessage(c));
    return c;
}

/* The by_application entry of doc for app and state; NULL when none. */
static json_t *app_entry(json_t *doc, const char *app, const char *state)
{
    json_t *arr = json_object_get(json_object_get(doc, "connections"), "by_application"), *e;
    size_t i;
    json_array_foreach(arr, i, e)
    {
        if (!strcmp(json_string_value(json_object_get(e, "application_name")), app) &&
            !strcmp(json_string_value(json_object_get(e, "state")), state))
            return e;
    }
    return NULL;
}

static void test_ctl_db(PGconn *c)
{
    struct out o;
    char env_url[1200];
    json_error_t jerr;

    PQclear(PQexec(c, "SET client_min_messages = warning"));
    PQclear(PQexec(c, "DROP TABLE IF EXISTS t410_big, t410_small"));
    PQclear(PQexec(c, "CREATE TABLE t410_big AS SELECT g AS id, repeat('x', 200) AS pad "
                      "FROM generate_series(1, 20000) g"));
    PQclear(PQexec(c, "CREATE INDEX ON t410_big (id)"));
    PQclear(PQexec(c, "CREATE TABLE t410_small AS SELECT 1 AS id"));
    PQclear(PQexec(c, "ANALYZE t410_big"));
    PGconn *idle = connect_as("pgcorral t410 a");
    PGconn *intx = connect_as("pgcorral t410 a");
    PGconn *other = connect_as("t410 not ours");
    PQclear(PQexec(intx, "BEGIN"));
    PQclear(PQexec(intx, "SELECT 1"));

    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    const char *env[] = {env_url, NULL};
    run(db_json, (char *[]){"3", NULL}, env, &o);
    is_int(o.status, 0, "ctl db --json exits 0");
    json_t *doc = json_loads(o.text, 0, &jerr);
    if (!ok(doc != NULL, "and prints one JSON document"))
        show(&o);
    json_t *dbo = json_object_get(doc, "database");
    is_str(json_string_value(json_object_get(dbo, "name")), "postgres", "database name");
    ok(json_integer_value(json_object_get(dbo, "size_bytes")) > 1000000,
       "database size in bytes (%lld)",
       (long long)json_integer_value(json_object_get(dbo, "size_bytes")));
    json_t *tables = json_object_get(doc, "tables");
    ok(json_array_size(tables) >= 1 && json_array_size(tables) <= 3, "at most N=3 tables");
    json_t *t0 = json_array_get(tables, 0);
    is_str(json_string_value(json_object_get(t0, "name")), "t410_big", "the largest table first");
    ok(json_integer_value(json_object_get(t0, "index_bytes")) > 0 &&
           json_integer_value(json_object_get(t0, "total_bytes")) >
               json_integer_value(json_object_get(t0, "table_bytes")),
       "with its size split into table and indexes");
    is_int(json_integer_value(json_object_get(t0, "rows_estimate")), 20000, "and its rows");
    json_t *e_idle = app_entry(doc, "pgcorral t410 a", "idle");
    json_t *e_tx = app_entry(doc, "pgcorral t410 a", "idle in transaction");
    ok(e_idle && json_integer_value(json_object_get(e_idle, "count")) == 1,
       "our idle connection is counted by state");
    ok(e_tx && json_integer_value(json_object_get(e_tx, "count")) == 1,
       "our connection idle in a transaction too");
    ok(e_tx && json_real_value(json_object_get(e_tx, "oldest_xact_s")) >= 0,
       "with the age of its transaction");
    ok(!app_entry(doc, "t410 not ours", "idle"),
       "connections that are not pgcorral's are left out");
    ok(!app_entry(doc, "pgcorral ctl", "active"), "ctl db does not count itself");
    json_t *by_state = json_object_get(json_object_get(doc, "connections"), "by_state");
    ok(json_integer_value(json_object_get(by_state, "idle in transaction")) >= 1,
       "totals by state");
    json_decref(doc);

    run(db_text, (char *[]){NULL}, env, &o);
    if (!ok(o.status == 0 && has(o.text, "database postgres:") && has(o.text, "t410_big") &&
                has(o.text, "t410_small") && has(o.text, "pgcorral t410 a") &&
                has(o.text, "idle in transaction"),
            "the table view shows the database, tables and our connections"))
        show(&o);

    run(db_json, (char *[]){"0", NULL}, env, &o);
    if (!ok(o.status == 2 && has(o.err, "must be from 1 to 1000, got '0'"), "a bad N: exit 2"))
        show(&o);
    const char *env_none[] = {"DATABASE_URL", NULL};
    run(db_json, (char *[]){NULL}, env_none, &o);
    if (!ok(o.status == 2 && has(o.err, "DATABASE_URL is not set") &&
                has(o.err, "connects to the database itself"),
            "without DATABASE_URL it says it needs it, and why"))
        show(&o);
    char env_down[256];
    snprintf(env_down, sizeof env_down, "DATABASE_URL=postgresql://u:s3cret@127.0.0.1:%d/db",
             pgt_closed_port());
    const char *env_d[] = {env_down, NULL};
    run(db_json, (char *[]){NULL}, env_d, &o);
    if (!ok(o.status == 1 && has(o.err, "cannot connect to the database") && !has(o.err, "s3cret"),
            "an unreachable database: exit 1, without the password"))
        show(&o);

    PQfinish(idle);
    PQfinish(intx);
    PQfinish(other);
    PQclear(PQexec(c, "DROP TABLE IF EXISTS t410_big, t410_small"));
}

int main(void)
{
    tap_timeout(60);
    PGconn *c = pgt_connect();
    test_tune(c);
    test_check();
    test_ctl_db(c);
    PQfinish(c);
    return done_testing();
}
