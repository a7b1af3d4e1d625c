/*
 * Logging: the JSON line's keys and their order, level filtering, the text format, the log
 * file (mode, reopen after rotation, errors), ownership of fields, and that lines from 4
 * threads (into a file and into a pipe, some longer than PIPE_BUF) and from several
 * processes never interleave.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "runtime/rt_log.h"
#include "tests/tap.h"

#define NTHREADS 4
#define NLINES 1000

/* The test's scratch directory. */
static char tmpdir[] = "/tmp/pgct-t201-XXXXXX";

/* A path in tmpdir (static buffer per call site: copy it). */
static const char *tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmpdir, name);
    return buf;
}

/* The whole content of path, NUL-terminated (caller frees), or NULL. */
static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    char *buf = NULL;
    size_t len = 0;
    FILE *mem;
    int c;

    if (!fp)
        return NULL;
    mem = open_memstream(&buf, &len);
    while ((c = fgetc(fp)) != EOF)
        fputc(c, mem);
    fclose(mem);
    fclose(fp);
    return buf;
}

/* Number of '\n'-terminated lines in s. */
static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

/* Line i (0-based) of s, copied (caller frees), or NULL. */
static char *nth_line(const char *s, int i)
{
    for (; s && *s && i > 0; s++)
        if (*s == '\n')
            i--;
    if (!s || !*s)
        return NULL;
    return strndup(s, strcspn(s, "\n"));
}

/* Runs fn with fd 2 going to a fresh file; returns what was written to it (caller frees). */
static char *capture_stderr(void (*fn)(void))
{
    char path[PATH_MAX];
    int saved = dup(STDERR_FILENO), fd;

    tmp_path(path, sizeof path, "stderr");
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (saved < 0 || fd < 0)
        bail("cannot redirect stderr: %s", strerror(errno));
    dup2(fd, STDERR_FILENO);
    close(fd);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    return slurp(path);
}

/* Whether the object's keys are exactly want (NULL-terminated), in that order. */
static bool keys_are(json_t *obj, const char *const *want)
{
    void *it = json_object_iter(obj);
    for (; *want; want++, it = json_object_iter_next(obj, it))
        if (!it || strcmp(json_object_iter_key(it), *want) != 0)
            return false;
    return it == NULL;
}

/* Whether ts looks like "2026-11-27T02:30:51.123Z" and is within 10 s of now. */
static bool ts_ok(const char *ts)
{
    regex_t re;
    struct tm tm = {0};
    bool good;

    regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
            REG_EXTENDED | REG_NOSUB);
    good = ts && regexec(&re, ts, 0, NULL, 0) == 0;
    regfree(&re);
    if (good && strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm))
        good = labs((long)(timegm(&tm) - time(NULL))) <= 10;
    return good;
}

/* Logs one warn line as web worker 0, with two fields. */
static void emit_web_line(void)
{
    rt_log_set_identity("web", 0);
    rt_log(RT_LOG_WARN, "pool is slow", json_pack("{s:s,s:i}", "route", "/x", "n", 3));
}

/* Logs a line as the supervisor: control characters, bad UTF-8, clashing fields. */
static void emit_supervisor_line(void)
{
    rt_log_set_identity("supervisor", -1);
    rt_log(RT_LOG_INFO, "line\ttwo\nparts \xff\xfe end",
           json_pack("{s:s,s:i,s:b}", "level", "spoof", "pid", 1, "ok", 1));
}

/* JSON lines: keys, their order and values. */
static void check_json_keys(void)
{
    static const char *const web_keys[] = {"ts",     "level", "msg", "pid", "role",
                                           "worker", "route", "n",   NULL};
    static const char *const sup_keys[] = {"ts",     "level", "msg", "pid", "role",
                                           "_level", "_pid",  "ok",  NULL};
    char *out = capture_stderr(emit_web_line);
    json_error_t jerr;
    json_t *j;

    is_int(count_lines(out), 1, "one line on stderr");
    j = json_loads(out ? out : "", 0, &jerr);
    if (!ok(j != NULL, "the line is JSON")) {
        diag("  %s: %s", jerr.text, out);
    } else {
        ok(keys_are(j, web_keys), "keys ts, level, msg, pid, role, worker, then the fields");
        ok(ts_ok(json_string_value(json_object_get(j, "ts"))), "ts is ISO-8601 UTC with ms, now");
        is_str(json_string_value(json_object_get(j, "level")), "warn", "level");
        is_str(json_string_value(json_object_get(j, "msg")), "pool is slow", "msg");
        is_int(json_integer_value(json_object_get(j, "pid")), getpid(), "pid");
        is_str(json_string_value(json_object_get(j, "role")), "web", "role");
        is_int(json_integer_value(json_object_get(j, "worker")), 0, "worker");
        is_str(json_string_value(json_object_get(j, "route")), "/x", "string field");
        is_int(json_integer_value(json_object_get(j, "n")), 3, "integer field");
    }
    json_decref(j);
    free(out);

    out = capture_stderr(emit_supervisor_line);
    is_int(count_lines(out), 1, "a message with a newline is still one line");
    j = json_loads(out ? out : "", 0, &jerr);
    if (!ok(j != NULL, "a message with bytes that are not UTF-8 still gives JSON")) {
        diag("  %s: %s", jerr.text, out);
    } else {
        ok(keys_are(j, sup_keys), "no worker key for worker -1; clashing fields get '_'");
        is_str(json_string_value(json_object_get(j, "msg")), "line\ttwo\nparts ?? end",
               "msg kept, invalid bytes replaced");
        is_str(json_string_value(json_object_get(j, "level")), "info",
               "a field cannot spoof level");
        is_int(json_integer_value(json_object_get(j, "pid")), getpid(), "nor pid");
        is_str(json_string_value(json_object_get(j, "_level")), "spoof", "it is kept as _level");
    }
    json_decref(j);
    free(out);
}

/* Logs at every level around rt_log_set_level changes. */
static void emit_levels(void)
{
    rt_log_set_identity("job", 1);
    rt_log(RT_LOG_DEBUG, "d0", NULL); /* default level is info */
    rt_log(RT_LOG_INFO, "i0", NULL);
    rt_log_set_level(RT_LOG_WARN);
    rt_log(RT_LOG_DEBUG, "d1", NULL);
    rt_log(RT_LOG_INFO, "i1", json_pack("{s:i}", "dropped", 1));
    rt_logf(RT_LOG_INFO, "i%d", 2);
    rt_log(RT_LOG_WARN, "w1", NULL);
    rt_logf(RT_LOG_ERROR, "e%d %s", 1, "x");
    rt_log_set_level(RT_LOG_DEBUG);
    rt_log(RT_LOG_DEBUG, "d2", NULL);
    rt_log_set_level(RT_LOG_INFO);
}

/* Level filtering, and the level names. */
static void check_levels(void)
{
    static const char *const want[][2] = {
        {"info", "i0"}, {"warn", "w1"}, {"error", "e1 x"}, {"debug", "d2"}};
    char *out = capture_stderr(emit_levels);
    int n = count_lines(out);

    is_int(n, 4, "only lines at or above the level are written");
    for (int i = 0; i < n && i < 4; i++) {
        char *line = nth_line(out, i);
        json_t *j = json_loads(line, 0, NULL);
        is_str(json_string_value(json_object_get(j, "level")), want[i][0], "line %d level", i);
        is_str(json_string_value(json_object_get(j, "msg")), want[i][1], "line %d msg", i);
        json_decref(j);
        free(line);
    }
    free(out);

    is_int(rt_log_level_parse("debug"), RT_LOG_DEBUG, "parse debug");
    is_int(rt_log_level_parse("INFO"), RT_LOG_INFO, "parse INFO");
    is_int(rt_log_level_parse("warn"), RT_LOG_WARN, "parse warn");
    is_int(rt_log_level_parse("warning"), RT_LOG_WARN, "parse warning");
    is_int(rt_log_level_parse("error"), RT_LOG_ERROR, "parse error");
    is_int(rt_log_level_parse("loud"), -1, "unknown level name");
    is_int(rt_log_level_parse(NULL), -1, "NULL level name");
    is_str(rt_log_level_name(RT_LOG_WARN), "warn", "name of warn");
    is_str(rt_log_level_name((enum rt_log_level)9), NULL, "name of an unknown level");
}

/* Logs two lines in text format. */
static void emit_text(void)
{
    rt_log_set_format(RT_LOG_TEXT);
    rt_log_set_identity("web", 0);
    rt_log(RT_LOG_WARN, "slow query",
           json_pack("{s:s,s:i,s:s,s:b,s:[i,i],s:s}", "route", "/api/v1/x", "ms", 812, "sql",
                     "select 1", "retry", 1, "ids", 1, 2, "empty", ""));
    rt_log_set_identity("supervisor", -1);
    rt_log(RT_LOG_ERROR, "two\nlines", NULL);
    rt_log_set_format(RT_LOG_JSON);
}

/* The text format, field by field. */
static void check_text(void)
{
    char *out = capture_stderr(emit_text), *l0 = nth_line(out, 0), *l1 = nth_line(out, 1);
    char want[256], ts[32] = "";

    is_int(count_lines(out), 2, "text format: one line per event");
    if (l0)
        sscanf(l0, "%31s", ts);
    ok(ts_ok(ts), "text line starts with the timestamp");
    snprintf(want, sizeof want,
             " WARN [web 0 pid %d] slow query route=/api/v1/x ms=812 sql=\"select 1\" retry=true "
             "ids=[1,2] empty=\"\"",
             (int)getpid());
    is_str(l0 ? l0 + strlen(ts) : NULL, want, "text line: level, identity, msg, key=value");
    snprintf(want, sizeof want, " ERROR [supervisor pid %d] two\\nlines", (int)getpid());
    is_str(l1 ? l1 + strcspn(l1, " ") : NULL, want, "text line without worker; newline escaped");
    free(l0);
    free(l1);
    free(out);
}

/* rt_log takes ownership of fields whatever it does with them. */
static void check_ownership(void)
{
    json_t *fields = json_pack("{s:i}", "k", 1), *arr = json_array();

    json_incref(fields);
    json_incref(arr);
    rt_log_set_level(RT_LOG_ERROR);
    rt_log(RT_LOG_INFO, "filtered", fields);
    is_int(fields->refcount, 1, "rt_log drops its reference to fields when filtered");
    rt_log_set_level(RT_LOG_INFO);
    json_incref(fields);
    {
        char path[PATH_MAX];
        int saved = dup(STDERR_FILENO),
            fd = open(tmp_path(path, sizeof path, "own"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, STDERR_FILENO);
        close(fd);
        rt_log(RT_LOG_INFO, "written", fields);
        rt_log(RT_LOG_INFO, "not an object", arr);
        dup2(saved, STDERR_FILENO);
        close(saved);
    }
    is_int(fields->refcount, 1, "rt_log drops its reference to fields when written");
    is_int(arr->refcount, 1, "and to fields that are not an object");
    json_decref(fields);
    json_decref(arr);
}

/* Whether every line of s is a JSON object whose msg is one of msgs (NULL-terminated). */
static bool lines_are(const char *s, const char *const *msgs, int *n)
{
    *n = count_lines(s);
    for (int i = 0; i < *n; i++) {
        char *line = nth_line(s, i);
        json_t *j = json_loads(line, 0, NULL);
        bool good =
            j && msgs[i] && strcmp(json_string_value(json_object_get(j, "msg")), msgs[i]) == 0;
        json_decref(j);
        free(line);
        if (!good)
            return false;
    }
    return msgs[*n] == NULL;
}

/* Log file: mode, rotation and reopen, a failed switch, back to stderr. */
static void check_file(void)
{
    char path[PATH_MAX], rotated[PATH_MAX], *a, *b;
    static const char *const want_rotated[] = {"A", "B", NULL};
    static const char *const want_new[] = {"C", "D", "E", NULL};
    static const char *const want_stderr[] = {"F", NULL};
    struct stat st;
    int n;

    tmp_path(path, sizeof path, "pgcorral.log");
    tmp_path(rotated, sizeof rotated, "pgcorral.log.1");
    umask(022);
    is_int(rt_log_set_file(path), 0, "rt_log_set_file opens the file");
    ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "log file is created 0640");
    rt_log(RT_LOG_INFO, "A", NULL);
    is_int(rename(path, rotated), 0, "rotate: rename the file");
    rt_log(RT_LOG_INFO, "B", NULL);
    is_int(rt_log_set_file(path), 0, "reopen with the same path");
    rt_log(RT_LOG_INFO, "C", NULL);
    is_int(rt_log_reopen(), 0, "rt_log_reopen without rotation");
    rt_log(RT_LOG_INFO, "D", NULL);
    is_int(rt_log_set_file("/nonexistent-dir/x.log"), -ENOENT, "bad path: -ENOENT");
    rt_log(RT_LOG_INFO, "E", NULL);
    a = slurp(rotated);
    b = slurp(path);
    if (!ok(lines_are(a, want_rotated, &n), "before reopen lines go to the renamed file"))
        diag("  %s", a ? a : "(none)");
    if (!ok(lines_are(b, want_new, &n), "after reopen to the new file, also after a failed switch"))
        diag("  %s", b ? b : "(none)");
    free(a);
    free(b);

    {
        char *out;
        char epath[PATH_MAX];
        int saved = dup(STDERR_FILENO),
            fd = open(tmp_path(epath, sizeof epath, "stderr2"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, STDERR_FILENO);
        close(fd);
        is_int(rt_log_set_file(NULL), 0, "back to stderr");
        rt_log(RT_LOG_INFO, "F", NULL);
        is_int(rt_log_reopen(), 0, "rt_log_reopen on stderr does nothing");
        dup2(saved, STDERR_FILENO);
        close(saved);
        out = slurp(epath);
        ok(lines_are(out, want_stderr, &n), "the line went to stderr");
        free(out);
        b = slurp(path);
        is_int(count_lines(b), 3, "and not to the file");
        free(b);
    }
}

/* Arguments of one writer thread. */
struct writer {
    pthread_t tid;
    int id;
};

/* A message of len bytes made of the writer's letter. */
static void fill_msg(char *msg, size_t len, int id)
{
    memset(msg, 'a' + id, len);
    msg[len] = '\0';
}

/* Message length of line i: mostly short, every 50th longer than PIPE_BUF. */
static size_t msg_len(int i)
{
    return i % 50 == 0 ? 3 * PIPE_BUF : 100 + (size_t)(i % 7) * 37;
}

/* One writer thread: NLINES lines with its id and a sequence number. */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    static char msgs[NTHREADS][3 * PIPE_BUF + 1];

    for (int i = 0; i < NLINES; i++) {
        fill_msg(msgs[w->id], msg_len(i), w->id);
        rt_log(RT_LOG_INFO, msgs[w->id], json_pack("{s:i,s:i}", "thread", w->id, "seq", i));
    }
    return NULL;
}

/* Runs NTHREADS writer threads to completion. */
static void run_writers(void)
{
    struct writer w[NTHREADS];

    for (int t = 0; t < NTHREADS; t++) {
        w[t].id = t;
        if (pthread_create(&w[t].tid, NULL, writer_main, &w[t]) != 0)
            bail("pthread_create failed");
    }
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(w[t].tid, NULL);
}

/*
 * Checks that s holds exactly nproc * NTHREADS * NLINES lines (nproc writers of each thread
 * id), each a JSON object with the right message, and each writer's lines in order.
 */
static void check_interleaving(const char *what, const char *s, int nproc)
{
    int next[8][NTHREADS] = {{0}}, n = count_lines(s), bad = 0, pids[8] = {0}, npids = 0;
    const char *p = s;

    is_int(n, nproc * NTHREADS * NLINES, "%s: every line arrived", what);
    for (int i = 0; i < n && p; i++) {
        const char *nl = strchr(p, '\n');
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
        int t = (int)json_integer_value(json_object_get(j, "thread"));
        int seq = (int)json_integer_value(json_object_get(j, "seq"));
        int pid = (int)json_integer_value(json_object_get(j, "pid")), k;
        const char *msg = json_string_value(json_object_get(j, "msg"));
        for (k = 0; k < npids && pids[k] != pid; k++)
            ;
        if (k == npids && npids < 8)
            pids[npids++] = pid;
        if (!j || !msg || t < 0 || t >= NTHREADS || k >= 8 || seq != next[k][t] ||
            strlen(msg) != msg_len(seq) || msg[0] != 'a' + t || msg[strlen(msg) - 1] != 'a' + t) {
            if (bad++ < 3)
                diag("  bad line %d: %.80s", i, p);
        } else {
            next[k][t]++;
        }
        json_decref(j);
        p = nl ? nl + 1 : NULL;
    }
    is_int(bad, 0, "%s: every line is whole JSON, each writer's lines in order", what);
    is_int(npids, nproc, "%s: lines from %d process(es)", what, nproc);
}

/* Threads writing to a log file. */
static void check_threads_file(void)
{
    char path[PATH_MAX], *out;

    tmp_path(path, sizeof path, "threads.log");
    if (rt_log_set_file(path) != 0)
        bail("cannot log to %s", path);
    run_writers();
    if (rt_log_set_file(NULL) != 0)
        bail("cannot log to stderr");
    out = slurp(path);
    check_interleaving("4 threads into a file", out, 1);
    free(out);
}

/* Reads a pipe to EOF into memory. */
struct drain {
    pthread_t tid;
    int fd;
    char *buf;
    size_t len;
};

/* The drain thread. */
static void *drain_main(void *arg)
{
    struct drain *d = arg;
    FILE *mem = open_memstream(&d->buf, &d->len);
    char chunk[65536];
    ssize_t n;

    while ((n = read(d->fd, chunk, sizeof chunk)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0)
            fwrite(chunk, 1, (size_t)n, mem);
    fclose(mem);
    return NULL;
}

/* Threads writing to stderr when it is a pipe. */
static void check_threads_pipe(void)
{
    struct drain d = {0};
    int fds[2], saved = dup(STDERR_FILENO);

    if (pipe2(fds, O_CLOEXEC) != 0)
        bail("pipe: %s", strerror(errno));
    d.fd = fds[0];
    if (pthread_create(&d.tid, NULL, drain_main, &d) != 0)
        bail("pthread_create failed");
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    run_writers();
    dup2(saved, STDERR_FILENO); /* closes the last write end: the reader sees EOF */
    close(saved);
    pthread_join(d.tid, NULL);
    close(fds[0]);
    check_interleaving("4 threads into a pipe (some lines > PIPE_BUF)", d.buf, 1);
    free(d.buf);
}

/* Two forked processes and the parent writing to one log file. */
static void check_processes_file(void)
{
    char path[PATH_MAX], *out;
    pid_t kids[2];
    int status, good = 0;

    tmp_path(path, sizeof path, "procs.log");
    if (rt_log_set_file(path) != 0)
        bail("cannot log to %s", path);
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] < 0)
            bail("fork: %s", strerror(errno));
        if (kids[k] == 0) {
            run_writers();
            _exit(0);
        }
    }
    run_writers();
    for (int k = 0; k < 2; k++)
        good += waitpid(kids[k], &status, 0) == kids[k] && WIFEXITED(status) &&
                WEXITSTATUS(status) == 0;
    is_int(good, 2, "writer processes exited cleanly");
    if (rt_log_set_file(NULL) != 0)
        bail("cannot log to stderr");
    out = slurp(path);
    check_interleaving("3 processes x 4 threads into one file", out, 3);
    free(out);
}

/* Removes the scratch directory. */
static void cleanup(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        diag("could not remove %s", tmpdir);
}

int main(void)
{
    tap_timeout(60);
    if (!mkdtemp(tmpdir))
        bail("mkdtemp: %s", strerror(errno));
    check_json_keys();
    check_levels();
    check_text();
    check_ownership();
    check_file();
    check_threads_file();
    check_threads_pipe();
    check_processes_file();
    cleanup();
    return done_testing();
}
