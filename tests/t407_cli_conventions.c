/*
 * The command line's conventions, against the real binary: --version, -h/--help on every
 * command, usage errors on stderr with exit 2, flags in any position, each error printed
 * once, `ctl help` without a supervisor, every --listen form serving /api/v1/ping, the
 * version in stats and /metrics, and JSON reals at a sensible precision.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/rt.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* The version every output must show; runtime/rt_version.h is its one source. */
#define WANT_VERSION PGCORRAL_VERSION

static char env_url[1024];

/* Runs `pgcorral ARGS` with env added; stdout and stderr apart in o. Returns the exit code. */
static int pgc(struct ot_output *o, char *const env[], char *const args[])
{
    char *argv[32] = {(char *)pgt_binary()};
    int n = 1;
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ot_run(argv, env, 30000, o);
}

/* One test skipped for what the machine lacks: "ok N # SKIP why". */
static void skip_one(const char *why)
{
    printf("ok %d # SKIP %s\n", ++tap_run, why);
    fflush(stdout);
}

/* Whether some non-empty line occurs twice in text. */
static bool repeated_line(const char *text)
{
    const char *a = text;
    while (a && *a) {
        size_t la = strcspn(a, "\n");
        const char *b = a + la + (a[la] == '\n');
        while (la > 0 && *b) {
            size_t lb = strcspn(b, "\n");
            if (la == lb && memcmp(a, b, la) == 0)
                return true;
            b += lb + (b[lb] == '\n');
        }
        a += la + (a[la] == '\n');
    }
    return false;
}

static int count_lines(const char *text)
{
    int n = 0;
    for (; text && *text; text++)
        n += *text == '\n';
    return n;
}

/*
 * The most decimals any number in the JSON text has (outside strings), and how many
 * numbers with a fraction it has, in *reals.
 */
static int max_decimals(const char *text, int *reals)
{
    int most = 0;
    *reals = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (!*p)
                break;
            continue;
        }
        if (*p == '.' && p > text && isdigit((unsigned char)p[-1])) {
            int n = 0;
            while (isdigit((unsigned char)p[1 + n]))
                n++;
            (*reals)++;
            if (n > most)
                most = n;
        }
    }
    return most;
}

/* GET path from numeric address host (IPv4 or IPv6) and port; returns the status or 0. */
static int http_get(const char *host, int port, const char *path, char **body)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char req[256], buf[65536];
    size_t got = 0;
    int fd, n;

    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ss.ss_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        len = sizeof(struct sockaddr_in6);
    } else {
        return 0;
    }
    if (body)
        *body = NULL;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0 || write(fd, req, (size_t)n) != n) {
        close(fd);
        return 0;
    }
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0 || got == sizeof buf - 1)
            break;
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (strncmp(buf, "HTTP/1.", 7) != 0)
        return 0;
    if (body) {
        const char *b = strstr(buf, "\r\n\r\n");
        *body = strdup(b ? b + 4 : "");
    }
    return atoi(buf + 9);
}

/* Whether this machine has IPv6 loopback (a socket can be bound to ::1). */
static bool have_ipv6_loopback(void)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    bool ok6 = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok6;
}

/* ---- a supervisor ---------------------------------------------------------------------- */

struct sup {
    struct pgt_proc p;
    char control[108];
    int port;
    char address[80]; /* what --listen resolved to, from `ctl config` */
};

static bool one_web_ready(void *arg)
{
    return ot_all_ready(arg, 1, 0);
}

/* Starts `pgcorral run --web 1 --jobs 0 --listen listen`; false (with diagnostics) if it
 * does not come up. */
static bool sup_start(struct sup *s, const char *name, const char *listen)
{
    s->port = 0;
    s->address[0] = '\0';
    snprintf(s->control, sizeof s->control, "%s", pgt_tmp_path(name));
    char *argv[] = {
        (char *)pgt_binary(), "run",      "--web",        "1", "--jobs", "0", "--control",
        s->control,           "--listen", (char *)listen, NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&s->p, argv, env);
    if (!pgt_wait_until(one_web_ready, s->control, 20000)) {
        pgt_proc_drain(&s->p);
        diag("--listen %s: the supervisor did not come up:\n%s", listen, s->p.log);
        return false;
    }
    json_t *doc = pgt_ctl(s->control, "config");
    json_t *cfg = json_object_get(doc, "config");
    s->port = (int)json_integer_value(json_object_get(cfg, "listen_port"));
    const char *addr = json_string_value(json_object_get(cfg, "listen_address"));
    snprintf(s->address, sizeof s->address, "%s", addr ? addr : "");
    json_decref(doc);
    return s->port > 0;
}

static void sup_stop(struct sup *s)
{
    kill(s->p.pid, SIGTERM);
    if (!pgt_proc_wait_exit(&s->p, 20000))
        diag("supervisor did not exit on SIGTERM");
    pgt_proc_cleanup(&s->p);
}

/* ---- the tests --------------------------------------------------------------------------- */

static void test_version(char *sha, size_t size)
{
    static char *const forms[][2] = {{"--version", NULL}, {"-V", NULL}, {"version", NULL}};
    struct ot_output o, g;
    char first[256] = "";
    bool same = true;

    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        int code = pgc(&o, NULL, forms[i]);
        char ver[32] = "", git[64] = "";
        int n = sscanf(o.out, "pgcorral %31s (git %63[^)])", ver, git);
        ok(code == 0 && n == 2 && strcmp(ver, WANT_VERSION) == 0 && !*o.err &&
               count_lines(o.out) == 1,
           "pgcorral %s prints 'pgcorral %s (git SHA)' and exits 0", forms[i][0], WANT_VERSION);
        if (code != 0 || n != 2)
            diag("exit %d, stdout '%s', stderr '%s'", code, o.out, o.err);
        if (i == 0) {
            snprintf(first, sizeof first, "%s", o.out);
            snprintf(sha, size, "%s", git);
        } else {
            same = same && strcmp(first, o.out) == 0;
        }
        ot_output_free(&o);
    }
    ok(same, "the three forms print the same line");

    /* The commit is the source tree's, when it is a git checkout. */
    char *git_argv[] = {"/usr/bin/git", "rev-parse", "--short", "HEAD", NULL};
    if (access(git_argv[0], X_OK) == 0 && ot_run(git_argv, NULL, 10000, &g) == 0) {
        g.out[strcspn(g.out, "\n")] = '\0';
        is_str(sha, g.out, "the git SHA is HEAD's (`git rev-parse --short HEAD`)");
    } else {
        ok(strcmp(sha, "unknown") == 0 || strlen(sha) >= 4,
           "no git checkout here: the SHA is 'unknown' or a commit (%s)", sha);
    }
    ot_output_free(&g);
}

static void test_help(void)
{
    /* Every command and the client's own ctl subcommands: -h and --help. */
    static const struct {
        char *words[3];
        const char *want; /* the start of the usage text */
    } cmds[] = {
        {{"run"}, "usage: pgcorral run"},
        {{"ctl"}, "usage: pgcorral ctl"},
        {{"enqueue"}, "usage: pgcorral enqueue"},
        {{"check"}, "usage: pgcorral check"},
        {{"tune"}, "usage: pgcorral tune"},
        {{"migrate"}, "usage: pgcorral migrate"},
        {{"help"}, "usage: pgcorral COMMAND"},
        {{"version"}, "usage: pgcorral version"},
        {{"ctl", "top"}, "usage: pgcorral ctl top"},
        {{"ctl", "db"}, "usage: pgcorral ctl [--json] db"},
        {{"ctl", "workers"}, "usage: pgcorral ctl"},
    };
    /* A broken environment must not hide help. */
    char *bad_env[] = {"PGCORRAL_WEB=lots", "PGCORRAL_CONFIG=/nonexistent/pgcorral.conf",
                       "DATABASE_URL=mysql://nope", NULL};
    struct ot_output o;

    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        bool good = true;
        char label[64];
        snprintf(label, sizeof label, "%s%s%s", cmds[i].words[0], cmds[i].words[1] ? " " : "",
                 cmds[i].words[1] ? cmds[i].words[1] : "");
        for (int form = 0; form < 2; form++) {
            char *args[5];
            int n = 0;
            for (int w = 0; cmds[i].words[w]; w++)
                args[n++] = cmds[i].words[w];
            args[n++] = form ? "--help" : "-h";
            args[n] = NULL;
            int code = pgc(&o, bad_env, args);
            if (code != 0 || strncmp(o.out, cmds[i].want, strlen(cmds[i].want)) != 0 || *o.err) {
                diag("pgcorral %s %s: exit %d, stdout '%.200s', stderr '%.200s'", label,
                     args[n - 1], code, o.out, o.err);
                good = false;
            }
            ot_output_free(&o);
        }
        ok(good, "pgcorral %s -h and --help: usage on stdout, nothing on stderr, exit 0", label);
    }

    /* `pgcorral help COMMAND` is COMMAND --help. */
    struct ot_output h;
    pgc(&o, NULL, (char *[]){"help", "tune", NULL});
    pgc(&h, NULL, (char *[]){"tune", "--help", NULL});
    ok(o.code == 0 && *o.out && strcmp(o.out, h.out) == 0,
       "pgcorral help tune prints what pgcorral tune --help prints");
    ot_output_free(&o);
    ot_output_free(&h);
}

static void test_usage_errors(void)
{
    static const struct {
        char *args[8];
        const char *want; /* in stderr */
    } cases[] = {
        {{NULL}, "usage: pgcorral COMMAND"},
        {{"--bogus"}, "unknown flag '--bogus'"},
        {{"frobnicate"}, "unknown command 'frobnicate'"},
        {{"run", "--bogus"}, "unknown flag '--bogus'"},
        {{"run", "--jobs"}, "--jobs needs a value"},
        {{"run", "extra"}, "unexpected argument 'extra'"},
        {{"ctl"}, "no command given"},
        {{"ctl", "--bogus", "workers"}, "unknown flag '--bogus'"},
        {{"ctl", "workers", "--bogus"}, "unknown flag '--bogus'"},
        {{"ctl", "workers", "--control"}, "--control needs a value"},
        {{"ctl", "top", "--count"}, "--count needs a value"},
        {{"ctl", "top", "--count", "zero"}, "--count must be 1..1000000, got 'zero'"},
        {{"enqueue"}, "TASK and JSON are missing"},
        {{"enqueue", "noop", "{}", "--bogus", "x"}, "unknown flag '--bogus'"},
        {{"enqueue", "noop", "{}", "--queue"}, "--queue needs a value"},
        {{"check", "--ram"}, "--ram needs a value"},
        {{"check", "--bogus"}, "unknown flag '--bogus'"},
        {{"tune", "--bogus"}, "unknown flag '--bogus'"},
        {{"tune", "--ram"}, "--ram needs a value"},
        {{"migrate", "--bogus"}, "unknown flag '--bogus'"},
        {{"version", "extra"}, "unexpected argument 'extra'"},
        {{"help", "nope"}, "unknown command 'nope'"},
    };
    char *env[] = {env_url, NULL};
    struct ot_output o;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char label[128] = "";
        for (int w = 0; cases[i].args[w]; w++)
            snprintf(label + strlen(label), sizeof label - strlen(label), " %s", cases[i].args[w]);
        int code = pgc(&o, env, cases[i].args);
        ok(code == 2 && !*o.out && strstr(o.err, cases[i].want) &&
               ot_count(o.err, cases[i].want) == 1 && !repeated_line(o.err),
           "pgcorral%s: '%s' once on stderr, nothing on stdout, exit 2", label, cases[i].want);
        if (code != 2 || *o.out || !strstr(o.err, cases[i].want) || repeated_line(o.err))
            diag("exit %d, stdout '%.300s', stderr '%.600s'", code, o.out, o.err);
        ot_output_free(&o);
    }
}

/* Without a supervisor or a database: one error line each, never the same line twice. */
static void test_errors_once(void)
{
    const char *nowhere = pgt_tmp_path("nowhere.sock");
    char url[256], env_bad[300];
    struct ot_output o;

    static const char *const ctl_cmds[][3] = {
        {"top", NULL}, {"workers", NULL}, {"stats", "--json"}};
    for (size_t i = 0; i < sizeof ctl_cmds / sizeof ctl_cmds[0]; i++) {
        char *args[] = {"ctl",           (char *)ctl_cmds[i][0], "--control",
                        (char *)nowhere, (char *)ctl_cmds[i][1], NULL};
        int code = pgc(&o, NULL, args);
        ok(code == 1 && count_lines(o.err) == 1 && ot_count(o.err, "cannot connect to") == 1 &&
               strstr(o.err, nowhere) && !*o.out,
           "pgcorral ctl %s with no supervisor: exit 1, one line on stderr naming %s",
           ctl_cmds[i][0], nowhere);
        if (code != 1 || count_lines(o.err) != 1)
            diag("exit %d, stdout '%s', stderr '%s'", code, o.out, o.err);
        ot_output_free(&o);
    }

    /* A database nobody listens on. */
    snprintf(url, sizeof url, "postgresql://u@127.0.0.1:%d/db?connect_timeout=3",
             pgt_closed_port());
    snprintf(env_bad, sizeof env_bad, "DATABASE_URL=%s", url);
    char *env[] = {env_bad, NULL};
    static char *const db_cmds[][4] = {
        {"enqueue", "noop", "{}", NULL}, {"check", NULL}, {"migrate", NULL}, {"ctl", "db", NULL}};
    for (size_t i = 0; i < sizeof db_cmds / sizeof db_cmds[0]; i++) {
        int code = pgc(&o, env, db_cmds[i]);
        size_t lo = strlen(o.out), le = strlen(o.err);
        char *both = malloc(lo + le + 2);
        snprintf(both, lo + le + 2, "%s\n%s", o.out, o.err);
        ok(code == 1 && ot_count(both, "Connection refused") == 1 && !repeated_line(o.err) &&
               !repeated_line(o.out),
           "pgcorral %s with the database down: exit 1, the error once", db_cmds[i][0]);
        if (code != 1 || ot_count(both, "Connection refused") != 1)
            diag("exit %d, stdout '%s', stderr '%s'", code, o.out, o.err);
        free(both);
        ot_output_free(&o);
    }

    /* ctl help needs no supervisor, and --control is honoured after the command. */
    int code = pgc(&o, NULL, (char *[]){"ctl", "help", "--control", (char *)nowhere, NULL});
    ok(code == 0 && strstr(o.out, "workers") && strstr(o.out, "shutdown") && strstr(o.out, "top") &&
           strstr(o.err, "not reachable") && strstr(o.err, nowhere) && count_lines(o.err) == 1,
       "pgcorral ctl help --control %s with no supervisor: the local list on stdout, one line "
       "'not reachable' naming that path on stderr, exit 0",
       nowhere);
    if (code != 0 || !strstr(o.err, nowhere))
        diag("exit %d, stdout '%s', stderr '%s'", code, o.out, o.err);
    ot_output_free(&o);
    code = pgc(&o, NULL, (char *[]){"ctl", "help", "--json", "--control", (char *)nowhere, NULL});
    json_t *doc = json_loads(o.out, 0, NULL);
    ok(code == 0 && json_object_get(json_object_get(doc, "commands"), "stats"),
       "pgcorral ctl help --json with no supervisor prints the local {\"commands\":…} document");
    json_decref(doc);
    ot_output_free(&o);
}

/* Logs go through the same JSON printer: reals without binary noise, in both formats. */
static void test_log_precision(void)
{
    const char *path = pgt_tmp_path("t407.log");
    char *text;

    unlink(path);
    if (rt_log_set_file(path) < 0)
        bail("cannot log to %s", path);
    rt_log_set_identity("test", -1);
    rt_log(RT_LOG_INFO, "reals",
           json_pack("{s:f,s:f,s:f}", "sum", 0.1 + 0.2, "third", 1.0 / 3, "uptime_s",
                     10.448206000000001));
    rt_log_set_format(RT_LOG_TEXT);
    rt_log(RT_LOG_INFO, "reals", json_pack("{s:f}", "sum", 0.1 + 0.2));
    rt_log_set_format(RT_LOG_JSON);
    if (rt_log_set_file(NULL) < 0)
        bail("cannot log to stderr again");
    text = ot_read_file(path);
    ok(text && strstr(text, "\"sum\":0.3,") && strstr(text, "\"third\":0.333333,") &&
           strstr(text, "\"uptime_s\":10.448206}") && strstr(text, " sum=0.3\n"),
       "log lines print 0.1+0.2 as 0.3, 1/3 as 0.333333, 10.448206000000001 as 10.448206 "
       "(JSON and text)");
    if (text && !strstr(text, "\"sum\":0.3,"))
        diag("%s", text);
    free(text);
    unlink(path);
}

/* `ctl --json CMD` and GET /api/v1/stats: no real with more than 6 decimals, and at least
 * min_reals of them (uptime_s ..., so that the check has something to check). */
static void check_precision(const char *what, const char *text, int min_reals)
{
    int reals, most = max_decimals(text ? text : "", &reals);
    ok(text && reals >= min_reals && most <= 6,
       "%s: %d reals, none with more than 6 decimals (most %d)", what, reals, most);
    if (!text || most > 6)
        diag("%.2000s", text ? text : "(no answer)");
}

static void test_supervisor(const char *sha)
{
    struct sup s;
    struct ot_output o;
    char *body = NULL;
    char want[160];

    if (!ok(sup_start(&s, "conv.sock", "localhost:0"),
            "pgcorral run --listen localhost:0 comes up"))
        bail("no supervisor:\n%s", s.p.log);
    ok(strncmp(s.address, "127.0.0.1:", 10) == 0,
       "--listen localhost:0 resolved to 127.0.0.1 (config listen_address %s)", s.address);
    is_int(http_get("127.0.0.1", s.port, "/api/v1/ping", NULL), 200,
           "--listen localhost:0: GET /api/v1/ping answers 200");

    /* Flags after the command and in the middle. */
    int code = pgc(&o, NULL, (char *[]){"ctl", "workers", "--control", s.control, "--json", NULL});
    json_t *doc = json_loads(o.out, 0, NULL);
    ok(code == 0 && json_array_size(json_object_get(doc, "workers")) == 1,
       "pgcorral ctl workers --control P --json: flags after the command work");
    json_decref(doc);
    check_precision("ctl workers --json", o.out, 2);
    ot_output_free(&o);
    code = pgc(&o, NULL, (char *[]){"ctl", "--json", "stats", "--control", s.control, NULL});
    doc = json_loads(o.out, 0, NULL);
    json_t *st = json_object_get(doc, "stats");
    ok(code == 0 && json_is_string(json_object_get(st, "version")) &&
           strcmp(json_string_value(json_object_get(st, "version")), WANT_VERSION) == 0 &&
           json_is_string(json_object_get(st, "git")) &&
           strcmp(json_string_value(json_object_get(st, "git")), sha) == 0,
       "ctl --json stats has \"version\":\"%s\" and \"git\":\"%s\"", WANT_VERSION, sha);
    json_decref(doc);
    check_precision("ctl --json stats", o.out, 1);
    ot_output_free(&o);
    code = pgc(&o, NULL, (char *[]){"ctl", "stats", "--control", s.control, NULL});
    snprintf(want, sizeof want, "\"%s\"", WANT_VERSION);
    ok(code == 0 && strstr(o.out, "version") && strstr(o.out, want),
       "pgcorral ctl stats (table) shows the version");
    ot_output_free(&o);

    is_int(http_get("127.0.0.1", s.port, "/api/v1/stats", &body), 200, "GET /api/v1/stats");
    doc = json_loads(body ? body : "", 0, NULL);
    ok(doc && json_is_string(json_object_get(doc, "version")) &&
           strcmp(json_string_value(json_object_get(doc, "version")), WANT_VERSION) == 0,
       "GET /api/v1/stats has \"version\":\"%s\"", WANT_VERSION);
    json_decref(doc);
    check_precision("GET /api/v1/stats", body, 0);
    free(body);

    is_int(http_get("127.0.0.1", s.port, "/metrics", &body), 200, "GET /metrics");
    snprintf(want, sizeof want, "\npgcorral_build_info{version=\"%s\",git=\"%s\"} 1\n",
             WANT_VERSION, sha);
    ok(body && strstr(body, want) && strstr(body, "# TYPE pgcorral_build_info gauge\n"),
       "/metrics has pgcorral_build_info{version=\"%s\",git=\"%s\"} 1", WANT_VERSION, sha);
    if (body && system("command -v promtool >/dev/null 2>&1") == 0) {
        const char *path = pgt_tmp_path("metrics.txt");
        FILE *f = fopen(path, "w");
        fputs(body, f);
        fclose(f);
        char *pt[] = {"/bin/sh", "-c", "promtool check metrics < \"$0\"", (char *)path, NULL};
        code = ot_run(pt, NULL, 20000, &o);
        ok(code == 0, "promtool check metrics accepts the real /metrics");
        if (code != 0)
            diag("promtool: %s%s", o.out, o.err);
        ot_output_free(&o);
        unlink(path);
    } else {
        skip_one("promtool not installed (Debian package prometheus)");
    }
    free(body);

    /* ctl help with a supervisor: its list, nothing on stderr. */
    code = pgc(&o, NULL, (char *[]){"ctl", "help", "--control", s.control, NULL});
    ok(code == 0 && strstr(o.out, "workers") && strstr(o.out, "top") && !*o.err,
       "pgcorral ctl help --control P asks that supervisor (its list, nothing on stderr)");
    ot_output_free(&o);

    /* enqueue with flags before, between and after TASK and JSON. */
    char *env[] = {env_url, NULL};
    char id1[32] = "", id2[32] = "";
    code =
        pgc(&o, env, (char *[]){"enqueue", "--queue", "t407a", "t407.task", "{}", "--force", NULL});
    snprintf(id1, sizeof id1, "%.*s", (int)strcspn(o.out, "\n"), o.out);
    ok(code == 0 && atoll(id1) > 0, "pgcorral enqueue --queue q TASK '{}' prints an id (%s)", id1);
    ot_output_free(&o);
    code = pgc(&o, env,
               (char *[]){"enqueue", "t407.task", "--priority=7", "{\"a\":1}", "--queue", "t407b",
                          "--force", NULL});
    snprintf(id2, sizeof id2, "%.*s", (int)strcspn(o.out, "\n"), o.out);
    ok(code == 0 && atoll(id2) > 0, "pgcorral enqueue TASK --priority=7 JSON --queue q (%s)", id2);
    ot_output_free(&o);
    PGconn *conn = pgt_connect();
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pgcorral.jobs WHERE (id = %lld AND queue = 't407a') OR "
             "(id = %lld AND queue = 't407b' AND priority = 7 AND payload = '{\"a\":1}')",
             atoll(id1), atoll(id2));
    is_int(pgt_query_ll(conn, sql), 2, "both jobs are stored with their flags' queue and priority");
    pgt_query_ll(conn, "WITH d AS (DELETE FROM pgcorral.jobs WHERE queue IN ('t407a', 't407b') "
                       "RETURNING 1) SELECT count(*) FROM d");
    PQfinish(conn);

    sup_stop(&s);
}

static void test_listen_forms(void)
{
    struct sup s;
    char listen[32];
    bool v6 = have_ipv6_loopback();

    /* [::1]:0 */
    if (v6) {
        ok(sup_start(&s, "v6.sock", "[::1]:0") && strncmp(s.address, "[::1]:", 6) == 0 &&
               http_get("::1", s.port, "/api/v1/ping", NULL) == 200,
           "--listen [::1]:0: bound to %s, GET /api/v1/ping over ::1 answers 200", s.address);
        sup_stop(&s);
    } else {
        skip_one("--listen [::1]:0: this machine has no IPv6 loopback (cannot bind ::1)");
    }

    /* :0 is every address: IPv4 loopback, and IPv6 loopback where there is IPv6. */
    bool up = sup_start(&s, "all.sock", ":0");
    ok(up && (strncmp(s.address, "[::]:", 5) == 0 || strncmp(s.address, "0.0.0.0:", 8) == 0) &&
           http_get("127.0.0.1", s.port, "/api/v1/ping", NULL) == 200,
       "--listen :0: bound to every address (%s), GET /api/v1/ping over 127.0.0.1 answers 200",
       s.address);
    if (v6 && strncmp(s.address, "[::]:", 5) == 0)
        is_int(http_get("::1", s.port, "/api/v1/ping", NULL), 200,
               "--listen :0: and over ::1 too (one dual-stack socket)");
    else
        skip_one("--listen :0 over ::1: no IPv6 here");
    if (up)
        sup_stop(&s);
    else
        pgt_proc_cleanup(&s.p);

    /* A bare port: 127.0.0.1, like the default. */
    int port = pgt_closed_port();
    snprintf(listen, sizeof listen, "%d", port);
    up = sup_start(&s, "bare.sock", listen);
    char want[32];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    ok(up && s.port == port && strcmp(s.address, want) == 0 &&
           http_get("127.0.0.1", port, "/api/v1/ping", NULL) == 200,
       "--listen %d: bound to %s, GET /api/v1/ping answers 200", port, s.address);
    if (up)
        sup_stop(&s);
    else
        pgt_proc_cleanup(&s.p);

    /* Malformed values: refused before anything starts, naming the setting. */
    static char *const bad[] = {"localhost:", "127.0.0.1:99999", "::1:3000",
                                "[::1]3000",  "host:port",       ""};
    char *env[] = {env_url, NULL};
    struct ot_output o;
    bool all = true;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int code =
            pgc(&o, env, (char *[]){"run", "--web", "1", "--jobs", "0", "--listen", bad[i], NULL});
        if (code != 2 || !strstr(o.err, "--listen") || count_lines(o.err) != 1) {
            diag("--listen '%s': exit %d, stderr '%s'", bad[i], code, o.err);
            all = false;
        }
        ot_output_free(&o);
    }
    ok(all, "malformed --listen values exit 2 with one line naming --listen");

    /* A name that does not resolve. */
    int code =
        pgc(&o, env,
            (char *[]){"run", "--web", "1", "--jobs", "0", "--control",
                       (char *)pgt_tmp_path("nores.sock"), "--listen", "nohost.invalid:0", NULL});
    ok(code != 0 && strstr(o.err, "--listen: cannot resolve 'nohost.invalid'") &&
           count_lines(o.err) == 1,
       "--listen nohost.invalid:0: refused with one line naming --listen and the host");
    if (!strstr(o.err, "cannot resolve"))
        diag("exit %d, stderr '%s'", code, o.err);
    ot_output_free(&o);
}

int main(void)
{
    char sha[64];

    tap_timeout(240);
    plan(73);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    test_version(sha, sizeof sha);
    test_help();
    test_usage_errors();
    test_errors_once();
    test_log_precision();
    test_supervisor(sha);
    test_listen_forms();
    return done_testing();
}
