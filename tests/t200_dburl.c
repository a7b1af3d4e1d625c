/*
 * DATABASE_URL parsing without a server: valid URLs give the expected pgcorral settings
 * and libpq keywords; malformed ones give an error that names the problem and never the
 * password; redaction hides the password in well-formed and malformed URLs.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "runtime/rt_dburl.h"
#include "tests/tap.h"

/* The password in the tables, raw; every form of it (raw, encoded) starts with PW_MARK. */
#define PW_MARK "S3cr3tZ"
#define PW_RAW PW_MARK "/Pw@x%y"
#define PW_ENC PW_MARK "%2FPw%40x%25y"

/* A URL that must parse: expected settings (name=value, defaults otherwise) and keywords. */
struct valid_case {
    const char *url;
    const char *settings;        /* "connection_limit=20 pgbouncer=1 ..." over the defaults */
    const char *keywords;        /* "host=h|dbname=d": every libpq keyword except connect_timeout
                                    and application_name, which are checked separately */
    const char *connect_timeout; /* expected connect_timeout keyword, NULL = "5" */
    const char *app;             /* expected application_name, NULL = "pgcorral" */
    const char *redacted;        /* expected redacted form, NULL = the URL itself */
};

/* URLs that must parse, with what they must give. */
static const struct valid_case valid[] = {
    {"postgresql://localhost/app", "", "host=localhost|dbname=app", NULL, NULL, NULL},
    {"postgres://u:" PW_ENC "@db.example.com:6432/app", "",
     "user=u|password=" PW_RAW "|host=db.example.com|port=6432|dbname=app", NULL, NULL,
     "postgres://u:***@db.example.com:6432/app"},
    {"postgresql://us%40er:p%40ss%2Fw%3Ford@h/my%20db", "",
     "user=us@er|password=p@ss/w?ord|host=h|dbname=my db", NULL, NULL,
     "postgresql://us%40er:***@h/my%20db"},
    {"postgresql://u:p?#w@h/db", "", "user=u|password=p?#w|host=h|dbname=db", NULL, NULL,
     "postgresql://u:***@h/db"},
    {"postgresql://u@[::1]:5433/db", "", "user=u|host=::1|port=5433|dbname=db", NULL, NULL, NULL},
    {"postgresql://[2001:db8::1]/db", "", "host=2001:db8::1|dbname=db", NULL, NULL, NULL},
    {"postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write", "",
     "host=h1,h2|port=5432,5433|dbname=db|target_session_attrs=read-write", NULL, NULL, NULL},
    {"postgresql://h1,[::1],h3:7000/db", "", "host=h1,::1,h3|port=,,7000|dbname=db", NULL, NULL,
     NULL},
    {"postgresql:///db?host=/var/run/postgresql", "", "host=/var/run/postgresql|dbname=db", NULL,
     NULL, NULL},
    {"postgresql://%2Ftmp%2Fpg/db", "", "host=/tmp/pg|dbname=db", NULL, NULL, NULL},
    {"postgresql:///db?host=/tmp&port=5444&user=postgres", "",
     "host=/tmp|port=5444|user=postgres|dbname=db", NULL, NULL, NULL},
    {"postgresql://", "", "", NULL, NULL, NULL},
    {"postgresql://h/db?", "", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?connection_limit=20&pool_timeout=0&connect_timeout=3&pgbouncer=false"
     "&statement_cache_size=50&max_idle_time=0&max_lifetime=604800&sslmode=require",
     "connection_limit=20 pool_timeout=0 connect_timeout=3 statement_cache_size=50 "
     "max_idle_time=0 max_lifetime=604800",
     "host=h|dbname=db|sslmode=require", "3", NULL, NULL},
    {"postgresql://h/db?sslmode=disable&connection_limit=3&application_name=shop",
     "connection_limit=3", "host=h|dbname=db|sslmode=disable", NULL, "shop", NULL},
    {"postgresql://h/db?connection_limit=1&connect_timeout=3600",
     "connection_limit=1 connect_timeout=3600", "host=h|dbname=db", "3600", NULL, NULL},
    {"postgresql://h/db?connection_limit=10000&pool_timeout=86400&max_idle_time=86400",
     "connection_limit=10000 pool_timeout=86400 max_idle_time=86400", "host=h|dbname=db", NULL,
     NULL, NULL},
    {"postgresql://h/db?connection_limit=%31%32", "connection_limit=12", "host=h|dbname=db", NULL,
     NULL, NULL},
    {"postgresql://h/db?connection%5Flimit=007", "connection_limit=7", "host=h|dbname=db", NULL,
     NULL, NULL},
    {"postgresql://h/db?pgbouncer=true", "pgbouncer=1 statement_cache_size=0", "host=h|dbname=db",
     NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=1&statement_cache_size=25", "pgbouncer=1 statement_cache_size=25",
     "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?statement_cache_size=25&pgbouncer=YES",
     "pgbouncer=1 statement_cache_size=25", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=on", "pgbouncer=1 statement_cache_size=0", "host=h|dbname=db",
     NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=true&statement_cache_size=0&pool_timeout=0",
     "pgbouncer=1 statement_cache_size=0 pool_timeout=0", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=off", "", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=0", "", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?pgbouncer=No", "", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://u@h/db?password=" PW_ENC "&sslmode=prefer", "",
     "user=u|host=h|dbname=db|password=" PW_RAW "|sslmode=prefer", NULL, NULL,
     "postgresql://u@h/db?password=***&sslmode=prefer"},
    {"postgresql://h/db?ssl=true", "", "host=h|dbname=db|sslmode=require", NULL, NULL, NULL},
    {"postgresql://h/db?application_name=", "", "host=h|dbname=db", NULL, NULL, NULL},
    {"postgresql://h/db?options=-c%20search_path%3Dshop", "",
     "host=h|dbname=db|options=-c search_path=shop", NULL, NULL, NULL},
    {"postgresql://h/db?dbname=other", "", "host=h|dbname=other", NULL, NULL, NULL},
    {"postgresql://h/host%3Devil%20dbname%3Dx", "", "host=h|dbname=host=evil dbname=x", NULL, NULL,
     NULL},
};

/* A URL that must be refused, and words its error must contain. */
struct invalid_case {
    const char *url;
    const char *want1, *want2;
};

/* URLs that must be refused; each carries the password where it can. */
static const struct invalid_case invalid[] = {
    {"", "DATABASE_URL is empty", "postgresql://"},
    {"mysql://u:" PW_ENC "@h/db", "unsupported scheme 'mysql'", "postgresql://"},
    {"http://h/db", "scheme 'http'", NULL},
    {"POSTGRESQL://u:" PW_ENC "@h/db", "scheme 'POSTGRESQL'", NULL},
    {"u:" PW_ENC "@localhost:5432/db", "must be a URL that starts with postgresql://", NULL},
    {"host=h password=" PW_RAW " dbname=d", "postgresql://", NULL},
    {"postgresql://u:" PW_ENC "@ho%zzst/db", "invalid percent-encoded token", "ho%zzst"},
    {"postgresql://u:" PW_ENC "%zz@h/db", "invalid percent-encoding in the password", NULL},
    {"postgresql://u:" PW_ENC "%00@h/db", "invalid percent-encoding in the password", "%00"},
    {"postgresql://u:" PW_ENC "%4@h/db", "percent-encoding in the password", NULL},
    {"postgresql://u@h/db?password=" PW_ENC "%zz", "invalid percent-encoded token", NULL},
    {"postgresql://u:" PW_RAW "@h/db", "unexpected '@'", "%40"},
    {"postgresql://u:" PW_MARK "/x@h/db", "unexpected '@'", "%2F"},
    {"postgresql://u:" PW_MARK "@h/db?user=a@b", "unexpected '@'", NULL},
    {"postgresql://u:" PW_ENC "@h:abc/db", "port must be an integer from 1 to 65535", "'abc'"},
    {"postgresql://u:" PW_ENC "@h:0/db", "port must be", "'0'"},
    {"postgresql://u:" PW_ENC "@h:65536/db", "port must be", "'65536'"},
    {"postgresql://h1:5432,h2:x/db", "port must be", "'x'"},
    {"postgresql:///db?host=a,b&port=1,2,3", "3 ports for 2 hosts", NULL},
    {"postgresql://u:" PW_ENC "@h/db?foo=1", "invalid URI query parameter", "\"foo\""},
    {"postgresql://h/db?connection_limits=5", "invalid URI query parameter",
     "\"connection_limits\""},
    {"postgresql://h/db?PGBOUNCER=true", "invalid URI query parameter", "\"PGBOUNCER\""},
    {"postgresql://u:" PW_ENC "@h/db?sslmode=require&", "missing key/value separator", NULL},
    {"postgresql://u:" PW_ENC "@[::1/db", "IPv6", "\"postgresql://u:***@[::1/db\""},
    {"postgresql://u:" PW_ENC "@h/db?connection_limit=abc",
     "DATABASE_URL: connection_limit must be an integer from 1 to 10000, got 'abc'", NULL},
    {"postgresql://u:" PW_ENC "@h/db?connection_limit=0", "connection_limit must be", "'0'"},
    {"postgresql://h/db?connection_limit=-1", "connection_limit must be", "'-1'"},
    {"postgresql://h/db?connection_limit=99999", "connection_limit must be", "'99999'"},
    {"postgresql://h/db?connection_limit=", "connection_limit must be", "got ''"},
    {"postgresql://h/db?connection_limit", "connection_limit must be", "got ''"},
    {"postgresql://h/db?connection_limit=%20%35", "connection_limit must be", "' 5'"},
    {"postgresql://h/db?connection_limit=99999999999999999999", "connection_limit must be", NULL},
    {"postgresql://h/db?connection_limit=%zz", "connection_limit has an invalid percent", "'%zz'"},
    {"postgresql://h/db?pool_timeout=x", "pool_timeout must be an integer from 0 to 86400", "'x'"},
    {"postgresql://h/db?pool_timeout=86401", "pool_timeout must be", "'86401'"},
    {"postgresql://h/db?connect_timeout=0", "connect_timeout must be an integer from 1 to 3600",
     "'0'"},
    {"postgresql://h/db?pgbouncer=maybe", "pgbouncer must be true or false", "'maybe'"},
    {"postgresql://u:" PW_ENC "@h/db?pgbouncer=true&pipeline_depth=8",
     "pipeline_depth=8 cannot be used with pgbouncer=true", "leave pipeline_depth out"},
    {"postgresql://h/db?pgbouncer=", "pgbouncer must be", "got ''"},
    {"postgresql://h/db?statement_cache_size=-5", "statement_cache_size must be", "'-5'"},
    {"postgresql://h/db?max_idle_time=1.5", "max_idle_time must be", "'1.5'"},
    {"postgresql://h/db?max_lifetime=604801", "max_lifetime must be", "'604801'"},
    {"postgresql://u:" PW_ENC "@h/db?connection_limit=5&connection_limit=6",
     "connection_limit is given twice", NULL},
    {"postgresql://h/db?connection_limit=5&connection%5flimit=5", "connection_limit is given twice",
     NULL},
    {"postgresql://h/db?connect_timeout=5&connect_timeout=7", "connect_timeout is given twice",
     NULL},
    {"postgresql://h/db?pgbouncer=true&pgbouncer=true", "pgbouncer is given twice", NULL},
};

/* Redaction on its own, malformed input included. */
static const struct {
    const char *in, *want;
} redactions[] = {
    {"postgresql://u:pw@h/db", "postgresql://u:***@h/db"},
    {"postgresql://u@h/db", "postgresql://u@h/db"},
    {"postgresql://u:@h/db", "postgresql://u:***@h/db"},
    {"postgresql://h:5432/db?application_name=x", "postgresql://h:5432/db?application_name=x"},
    {"postgresql://h/db?sslmode=require&password=pw&user=u",
     "postgresql://h/db?sslmode=require&password=***&user=u"},
    {"postgresql://h/db?pass%77ord=pw", "postgresql://h/db?pass%77ord=***"},
    {"postgresql://h/db?PASSWORD=pw&password=pw2", "postgresql://h/db?PASSWORD=***&password=***"},
    {"postgresql://h/db?password=a?b&x=1", "postgresql://h/db?password=***&x=1"},
    {"postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"},
    {"postgresql://u:p/ss@h/db", "postgresql://u:***@h/db"},
    {"postgresql://u:p?ss@h/db", "postgresql://u:***@h/db"},
    {"mysql://u:pw@h", "mysql://u:***@h"},
    {"u:pw@h/db", "u:***@h/db"},
    {"host=h password=pw dbname=d", "host=h password=*** dbname=d"},
    {"host=h password = 'p w' dbname=d", "host=h password = *** dbname=d"},
    {"", ""},
};

/* Whether kw is a keyword libpq knows. */
static bool libpq_knows(const char *kw)
{
    PQconninfoOption *defs = PQconndefaults();
    bool found = false;

    for (PQconninfoOption *o = defs; o && o->keyword; o++)
        found = found || strcmp(o->keyword, kw) == 0;
    PQconninfoFree(defs);
    return found;
}

/* Reads "name=value ..." over the defaults; returns false on an unknown name. */
static bool expected_settings(const char *spec, struct rt_dburl *want)
{
    char buf[512], *save = NULL;

    want->connection_limit = 10;
    want->pool_timeout_s = 10;
    want->connect_timeout_s = 5;
    want->pgbouncer = false;
    want->statement_cache_size = 100;
    want->max_idle_time_s = 300;
    want->max_lifetime_s = 1800;
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(t, '=');
        int v;
        if (!eq)
            return false;
        *eq = '\0';
        v = atoi(eq + 1);
        if (!strcmp(t, "connection_limit"))
            want->connection_limit = v;
        else if (!strcmp(t, "pool_timeout"))
            want->pool_timeout_s = v;
        else if (!strcmp(t, "connect_timeout"))
            want->connect_timeout_s = v;
        else if (!strcmp(t, "pgbouncer"))
            want->pgbouncer = v != 0;
        else if (!strcmp(t, "statement_cache_size"))
            want->statement_cache_size = v;
        else if (!strcmp(t, "max_idle_time"))
            want->max_idle_time_s = v;
        else if (!strcmp(t, "max_lifetime"))
            want->max_lifetime_s = v;
        else
            return false;
    }
    return true;
}

/* Number of keyword/value pairs in u, checking that values is NULL-terminated alike. */
static int count_keywords(const struct rt_dburl *u)
{
    int n = 0;
    while (u->keywords[n]) {
        if (!u->values[n])
            return -1;
        n++;
    }
    return u->values[n] ? -1 : n;
}

/* Checks every setting and keyword of one valid case. */
static void check_valid(const struct valid_case *c)
{
    struct rt_dburl *u = NULL, want;
    char err[512] = "", buf[512], red[512], *save = NULL;
    int n = 2, rc;
    bool all_known = true;

    rc = rt_dburl_parse(c->url, &u, err, sizeof err);
    if (!ok(rc == 0, "parses %s", c->url)) {
        diag("  error: %s", err);
        return;
    }
    if (!ok(expected_settings(c->settings, &want), "table: settings of %s", c->url))
        goto out;
    if (!ok(u->connection_limit == want.connection_limit &&
                u->pool_timeout_s == want.pool_timeout_s &&
                u->connect_timeout_s == want.connect_timeout_s && u->pgbouncer == want.pgbouncer &&
                u->statement_cache_size == want.statement_cache_size &&
                u->max_idle_time_s == want.max_idle_time_s &&
                u->max_lifetime_s == want.max_lifetime_s,
            "settings of %s", c->url))
        diag("  got limit %d pool %d connect %d pgbouncer %d cache %d idle %d life %d",
             u->connection_limit, u->pool_timeout_s, u->connect_timeout_s, u->pgbouncer,
             u->statement_cache_size, u->max_idle_time_s, u->max_lifetime_s);

    snprintf(buf, sizeof buf, "%s", c->keywords);
    for (char *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save)) {
        char *eq = strchr(t, '=');
        *eq = '\0';
        is_str(rt_dburl_get(u, t), eq + 1, "%s: %s", c->url, t);
        n++;
    }
    is_str(rt_dburl_get(u, "connect_timeout"), c->connect_timeout ? c->connect_timeout : "5",
           "%s: connect_timeout", c->url);
    is_str(rt_dburl_get(u, "application_name"), c->app ? c->app : "pgcorral",
           "%s: application_name", c->url);
    is_int(count_keywords(u), n, "%s: no other keywords", c->url);
    for (int i = 0; u->keywords[i]; i++)
        if (!libpq_knows(u->keywords[i]) && (all_known = false) == false)
            diag("  unknown libpq keyword %s", u->keywords[i]);
    ok(all_known, "%s: every keyword is one libpq knows", c->url);
    is_str(u->redacted, rt_dburl_redact(c->url, red, sizeof red), "%s: redacted field", c->url);
    is_str(u->redacted, c->redacted ? c->redacted : c->url, "%s: redacted form", c->url);
    ok(!strstr(u->redacted, PW_MARK), "%s: redacted form hides the password", c->url);
out:
    rt_dburl_destroy(u);
}

/* Checks one malformed case: refused, message names the problem, no password anywhere. */
static void check_invalid(const struct invalid_case *c)
{
    struct rt_dburl *u = (struct rt_dburl *)&u; /* sentinel: must stay untouched */
    struct rt_dburl *const sentinel = u;
    char err[512] = "x", red[512];
    int rc = rt_dburl_parse(c->url, &u, err, sizeof err);

    is_int(rc, RT_EINVAL_URL, "refuses '%s'", c->url);
    ok(u == sentinel, "'%s': out not written", c->url);
    if (!ok(strstr(err, c->want1) != NULL, "'%s': error names it (%s)", c->url, c->want1))
        diag("  error: %s", err);
    if (c->want2)
        if (!ok(strstr(err, c->want2) != NULL, "'%s': error says %s", c->url, c->want2))
            diag("  error: %s", err);
    if (!ok(!strstr(err, PW_MARK), "'%s': error hides the password", c->url))
        diag("  error: %s", err);
    if (!ok(!strstr(rt_dburl_redact(c->url, red, sizeof red), PW_MARK),
            "'%s': redacted form hides the password", c->url))
        diag("  redacted: %s", red);
}

/* rt_dburl_get/set: override, add, remove, and keep the arrays NULL-terminated. */
static void check_get_set(void)
{
    struct rt_dburl *u = NULL;
    char err[256];
    int n, rc;

    rc = rt_dburl_parse("postgresql://u@h/db?application_name=x", &u, err, sizeof err);
    if (!ok(rc == 0, "parses a URL for get/set"))
        return;
    n = count_keywords(u);
    is_str(rt_dburl_get(u, "nosuch"), NULL, "get of an unset keyword is NULL");
    is_int(rt_dburl_set(u, "application_name", "pgcorral: web 0"), 0, "set overrides");
    is_str(rt_dburl_get(u, "application_name"), "pgcorral: web 0", "override is visible");
    is_int(count_keywords(u), n, "override adds no keyword");
    for (int i = 0; i < 40; i++) {
        char kw[32];
        snprintf(kw, sizeof kw, "extra%d", i);
        if (rt_dburl_set(u, kw, "v") != 0)
            break;
    }
    is_int(rt_dburl_set(u, "options", "-c statement_timeout=5000"), 0, "set adds");
    is_str(rt_dburl_get(u, "options"), "-c statement_timeout=5000", "added keyword is visible");
    is_str(rt_dburl_get(u, "extra39"), "v", "arrays grow");
    is_int(count_keywords(u), n + 41, "arrays stay NULL-terminated and parallel");
    is_int(rt_dburl_set(u, "options", NULL), 0, "set NULL removes");
    is_str(rt_dburl_get(u, "options"), NULL, "removed keyword is gone");
    is_str(rt_dburl_get(u, "user"), "u", "others stay");
    is_int(count_keywords(u), n + 40, "arrays shrink");
    rt_dburl_destroy(u);
    rt_dburl_destroy(NULL);
}

/* Error buffers: truncated but terminated; errlen 0 and NULL err are fine; named parse. */
static void check_err_buffers(void)
{
    struct rt_dburl *u = NULL;
    char small[12];
    int rc;

    memset(small, 'x', sizeof small);
    rc = rt_dburl_parse("mysql://h", &u, small, sizeof small);
    is_int(rc, RT_EINVAL_URL, "refused with a small error buffer");
    ok(memchr(small, '\0', sizeof small) != NULL && !strncmp(small, "DATABASE_UR", 11),
       "small error buffer truncated and terminated");
    is_int(rt_dburl_parse("mysql://h", &u, NULL, 0), RT_EINVAL_URL, "NULL error buffer");
    is_int(rt_dburl_parse(NULL, &u, small, sizeof small), RT_EINVAL_URL, "NULL url refused");
    {
        char err[256];
        rc = rt_dburl_parse_as("DATABASE_REPLICA_URL", "postgresql://h/db?pgbouncer=2", &u, err,
                               sizeof err);
        is_int(rc, RT_EINVAL_URL, "rt_dburl_parse_as refuses");
        if (!ok(!strncmp(err, "DATABASE_REPLICA_URL: pgbouncer must be", 39),
                "rt_dburl_parse_as names its setting"))
            diag("  error: %s", err);
    }
}

/* Short passwords are still hidden inside quoted values, and only there. */
static void check_short_password(void)
{
    struct rt_dburl *u = NULL;
    char err[256];
    int rc = rt_dburl_parse("postgresql://u:Q%zz@h/db", &u, err, sizeof err);

    is_int(rc, RT_EINVAL_URL, "short bad password refused");
    if (!ok(!strstr(err, "Q%zz") && strstr(err, "password"), "short password hidden"))
        diag("  error: %s", err);
    rc = rt_dburl_parse("postgresql://u:Qx@h/db?Qxfoo=1", &u, err, sizeof err);
    is_int(rc, RT_EINVAL_URL, "unknown parameter refused");
    if (!ok(!strstr(err, "Qx") && strstr(err, "invalid URI query parameter: \"***\""),
            "quoted value holding a short password is masked, message kept"))
        diag("  error: %s", err);
}

/* rt_dburl_redact on the table, and its buffer handling. */
static void check_redactions(void)
{
    for (size_t i = 0; i < sizeof redactions / sizeof redactions[0]; i++) {
        char buf[256];
        is_str(rt_dburl_redact(redactions[i].in, buf, sizeof buf), redactions[i].want,
               "redacts '%s'", redactions[i].in);
    }
    {
        char buf[12];
        memset(buf, 'x', sizeof buf);
        rt_dburl_redact("postgresql://u:pw@h/db", buf, sizeof buf);
        is_str(buf, "postgresql:", "redaction truncates and terminates");
        rt_dburl_redact("postgresql://u:pw@h/db", buf, 0);
        is_str(buf, "postgresql:", "size 0 writes nothing");
        is_str(rt_dburl_redact(NULL, buf, sizeof buf), "", "NULL redacts to empty");
    }
}

int main(void)
{
    tap_timeout(30);
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        check_valid(&valid[i]);
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        check_invalid(&invalid[i]);
    check_redactions();
    check_get_set();
    check_err_buffers();
    check_short_password();
    return done_testing();
}
