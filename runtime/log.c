/*
 * Logging: formats one event as a JSON line (jansson) or a text line, in memory, and
 * writes it with one write(2) to stderr or to a log file that can be reopened after
 * rotation.
 *
 * A log that nobody reads (stderr a pipe or socket whose reader stopped: a stuck log
 * shipper, a terminal paused with Ctrl-S) must not stop the process: a line waits at
 * most LOG_WAIT_MS for room there, and while there is none, lines are dropped and
 * counted; the first line that fits again comes after one that says how many were lost.
 * A regular file is written as it is (the disk does not stop reading).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt_id.h"
#include "runtime/rt_json.h"
#include "runtime/rt_log.h"
#include "runtime/rt_util.h"

/* Who logs (rt_log_set_identity): a borrowed role name and the worker index, -1 = none. */
static const char *log_role = "main";
static int log_worker = -1;

/* Output format and minimum level written. */
static enum rt_log_format log_format = RT_LOG_JSON;
static enum rt_log_level log_min = RT_LOG_INFO;

/* Where lines go: STDERR_FILENO, or the file at log_path (owned). Guarded by log_lock. */
static int log_fd = STDERR_FILENO;
static char *log_path;

/* How long a line waits for room in a pipe or socket before it is dropped. */
#define LOG_WAIT_MS 100

/* Guarded by log_lock: whether log_fd may stop taking lines (not a regular file; -1 = not
 * looked at yet), and the lines dropped since the last one that was written. */
static int log_may_block = -1;
static uint64_t log_dropped;

/*
 * Serialises the writes of a process's threads (so that even a line longer than PIPE_BUF
 * stays in one piece) and the switch of log_fd. Held across fork (log_atfork) so that a
 * child never inherits it locked.
 */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* Registers the fork handlers once. */
static pthread_once_t log_once = PTHREAD_ONCE_INIT;

/* Level names, by enum rt_log_level: lower case in JSON, upper case in text. */
static const char *const log_names[] = {"debug", "info", "warn", "error"};
static const char *const log_names_upper[] = {"DEBUG", "INFO", "WARN", "ERROR"};

/* Keys of every JSON line; an event field with one of these names gets a '_' prefix. */
static const char *const log_reserved[] = {"ts", "level", "msg", "pid", "role", "worker"};

/* Before fork: hold log_lock so that no thread is mid-write. */
static void log_prepare(void)
{
    pthread_mutex_lock(&log_lock);
}

/* After fork, in parent and child: release log_lock. */
static void log_release(void)
{
    pthread_mutex_unlock(&log_lock);
}

/* Registers the fork handlers (through log_once). */
static void log_atfork(void)
{
    pthread_atfork(log_prepare, log_release, log_release);
}

void rt_log_set_identity(const char *role, int worker)
{
    log_role = role ? role : "main";
    log_worker = worker < 0 ? -1 : worker;
}

void rt_log_set_format(enum rt_log_format fmt)
{
    log_format = fmt == RT_LOG_TEXT ? RT_LOG_TEXT : RT_LOG_JSON;
}

void rt_log_set_level(enum rt_log_level level)
{
    log_min = level;
}

int rt_log_set_file(const char *path)
{
    char *copy = NULL, *old_path;
    int fd = STDERR_FILENO, old_fd, rc;

    pthread_once(&log_once, log_atfork);
    if (path) {
        if (!(copy = strdup(path)))
            return -ENOMEM;
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            rc = -errno;
            free(copy);
            return rc;
        }
    }
    pthread_mutex_lock(&log_lock);
    old_fd = log_fd;
    old_path = log_path;
    log_fd = fd;
    log_path = copy;
    log_may_block = -1;
    pthread_mutex_unlock(&log_lock);
    /* Every use of log_fd holds log_lock, so nobody writes to old_fd any more. */
    if (old_fd != STDERR_FILENO)
        close(old_fd);
    free(old_path);
    return 0;
}

int rt_log_reopen(void)
{
    char *path = NULL;
    int rc = 0;

    pthread_once(&log_once, log_atfork);
    pthread_mutex_lock(&log_lock);
    if (log_path && !(path = strdup(log_path)))
        rc = -ENOMEM;
    pthread_mutex_unlock(&log_lock);
    if (path)
        rc = rt_log_set_file(path);
    free(path);
    return rc;
}

int rt_log_level_parse(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof log_names / sizeof log_names[0]; i++)
        if (strcasecmp(name, log_names[i]) == 0)
            return (int)i;
    if (strcasecmp(name, "warning") == 0)
        return RT_LOG_WARN;
    return -1;
}

const char *rt_log_level_name(enum rt_log_level level)
{
    return (unsigned)level < sizeof log_names / sizeof log_names[0] ? log_names[level] : NULL;
}

/* Writes "2026-11-27T02:30:51.123Z" (UTC, milliseconds) into buf. */
static void log_timestamp(char *buf, size_t size)
{
    struct timespec now;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%03dZ", (int)(now.tv_nsec / 1000000));
}

/* A JSON string for s; bytes that are not valid UTF-8 become '?'. NULL when out of memory. */
static json_t *log_json_text(const char *s)
{
    json_t *j = json_string(s);
    char *copy;

    if (j || !(copy = strdup(s)))
        return j;
    rt_utf8_clean(copy);
    j = json_string(copy);
    free(copy);
    return j;
}

/* Whether key is one of the keys every line has. */
static bool log_is_reserved(const char *key)
{
    for (size_t i = 0; i < sizeof log_reserved / sizeof log_reserved[0]; i++)
        if (strcmp(key, log_reserved[i]) == 0)
            return true;
    return false;
}

/* Writes the JSON line of one event to fp. Returns 0 or -1. fields is borrowed. */
static int log_put_json(FILE *fp, const char *ts, enum rt_log_level level, const char *msg,
                        json_t *fields)
{
    json_t *obj = json_object();
    const char *key;
    json_t *value;
    int rc = -1;

    if (!obj)
        return -1;
    if (json_object_set_new(obj, "ts", json_string(ts)) < 0 ||
        json_object_set_new(obj, "level", json_string(log_names[level])) < 0 ||
        json_object_set_new(obj, "msg", log_json_text(msg)) < 0 ||
        json_object_set_new(obj, "pid", json_integer(getpid())) < 0 ||
        json_object_set_new(obj, "role", log_json_text(log_role)) < 0)
        goto fail;
    if (log_worker >= 0 && json_object_set_new(obj, "worker", json_integer(log_worker)) < 0)
        goto fail;
    json_object_foreach(fields, key, value)
    {
        char *renamed = NULL;
        int set;
        if (log_is_reserved(key)) {
            if (asprintf(&renamed, "_%s", key) < 0)
                goto fail;
            set = json_object_set(obj, renamed, value);
            free(renamed);
        } else {
            set = json_object_set(obj, key, value);
        }
        if (set < 0)
            goto fail;
    }
    if (rt_json_dumpf(obj, fp, JSON_COMPACT) < 0 || fputc('\n', fp) == EOF)
        goto fail;
    rc = 0;

fail:
    json_decref(obj);
    return rc;
}

/* Writes s with control characters escaped, so that a line stays one line. */
static void log_put_escaped(FILE *fp, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n')
            fputs("\\n", fp);
        else if (c == '\r')
            fputs("\\r", fp);
        else if (c == '\t')
            fputs("\\t", fp);
        else if (c < 0x20 || c == 0x7f)
            fprintf(fp, "\\x%02x", c);
        else
            fputc(c, fp);
    }
}

/* Whether a string field can be printed as key=value without quotes. */
static bool log_is_bare(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == '"' || *s == '=' || *s == 0x7f)
            return false;
    return true;
}

/* Writes the text line of one event to fp. Returns 0 or -1. fields is borrowed. */
static int log_put_text(FILE *fp, const char *ts, enum rt_log_level level, const char *msg,
                        json_t *fields)
{
    const char *key;
    json_t *value;

    fprintf(fp, "%s %s [", ts, log_names_upper[level]);
    log_put_escaped(fp, log_role);
    if (log_worker >= 0)
        fprintf(fp, " %d", log_worker);
    fprintf(fp, " pid %d] ", (int)getpid());
    log_put_escaped(fp, msg);
    json_object_foreach(fields, key, value)
    {
        fputc(' ', fp);
        log_put_escaped(fp, key);
        fputc('=', fp);
        if (json_is_string(value) && log_is_bare(json_string_value(value))) {
            fputs(json_string_value(value), fp);
        } else if (rt_json_dumpf(value, fp, JSON_COMPACT | JSON_ENCODE_ANY) < 0) {
            return -1;
        }
    }
    return fputc('\n', fp) == EOF ? -1 : 0;
}

/* Formats one event into *line (malloc'ed, *len bytes). Takes fields. Returns 0 or -1. */
static int log_format_line(enum rt_log_level level, const char *msg, json_t *fields, char **line,
                           size_t *len)
{
    char ts[40];
    FILE *fp;
    int rc;

    if (fields && !json_is_object(fields)) {
        json_decref(fields);
        fields = NULL;
    }
    *line = NULL;
    *len = 0;
    if (!(fp = open_memstream(line, len))) {
        json_decref(fields);
        return -1;
    }
    log_timestamp(ts, sizeof ts);
    if (log_format == RT_LOG_TEXT)
        rc = log_put_text(fp, ts, level, msg ? msg : "", fields);
    else
        rc = log_put_json(fp, ts, level, msg ? msg : "", fields);
    json_decref(fields);
    return fclose(fp) == 0 && rc == 0 ? 0 : -1;
}

/* Writes buf[0..len) to log_fd, as much as it takes. */
static void log_write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(log_fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere to report it */
        buf += n;
        len -= (size_t)n;
    }
}

/* Whether log_fd has room for a line now, waiting at most LOG_WAIT_MS (not at all while
 * lines are being dropped: one wait per stall, not one per line). Under log_lock. */
static bool log_has_room(void)
{
    struct pollfd p = {.fd = log_fd, .events = POLLOUT};
    struct stat st;
    int n;

    if (log_may_block < 0)
        log_may_block = fstat(log_fd, &st) == 0 && !S_ISREG(st.st_mode);
    if (!log_may_block)
        return true;
    do
        n = poll(&p, 1, log_dropped > 0 ? 0 : LOG_WAIT_MS);
    while (n < 0 && errno == EINTR);
    /* An error or a hang-up is write(2)'s to report (or not): let it try. */
    return n != 0;
}

/* Writes line[0..len) to the current destination: one write(2), unless interrupted, or
 * drops it when a pipe or socket there has no room (see the top). */
static void log_write(const char *line, size_t len)
{
    pthread_once(&log_once, log_atfork);
    pthread_mutex_lock(&log_lock);
    if (!log_has_room()) {
        log_dropped++;
        pthread_mutex_unlock(&log_lock);
        return;
    }
    if (log_dropped > 0) {
        char *note = NULL;
        size_t note_len = 0;
        if (log_format_line(RT_LOG_WARN, "log lines dropped: the log's reader did not keep up",
                            json_pack("{s:I}", "dropped", (json_int_t)log_dropped), &note,
                            &note_len) == 0)
            log_write_all(note, note_len);
        free(note);
        log_dropped = 0;
    }
    log_write_all(line, len);
    pthread_mutex_unlock(&log_lock);
}

void rt_log(enum rt_log_level level, const char *msg, json_t *fields)
{
    char *line;
    size_t len;

    if ((unsigned)level > RT_LOG_ERROR)
        level = RT_LOG_ERROR;
    if (level < log_min) {
        json_decref(fields);
        return;
    }
    if (log_format_line(level, msg, fields, &line, &len) == 0)
        log_write(line, len);
    free(line);
}

void rt_logf(enum rt_log_level level, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;
    int n;

    if ((unsigned)level <= RT_LOG_ERROR && level < log_min)
        return;
    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    rt_log(level, n < 0 ? fmt : msg, NULL);
    if (n >= 0)
        free(msg);
}

/* The failures logged lately (rt_log_failure), by the hash of msg, detail and key: when,
 * under which id, and how many answers reused the id since. Guarded by failure_lock. */
#define FAILURE_SLOTS 16
static struct {
    uint64_t hash;
    uint64_t at_ms; /* 0 = free */
    char id[RT_ERROR_ID_LEN + 1];
    unsigned repeated;
} failures[FAILURE_SLOTS];
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;

/* FNV-1a over s (NULL as empty), continuing from h. */
static uint64_t failure_hash(uint64_t h, const char *s)
{
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return (h ^ 0xff) * 0x100000001b3ULL; /* a separator, so that "ab"+"c" != "a"+"bc" */
}

void rt_log_failure(enum rt_log_level level, const char *msg, const char *detail, const char *key,
                    json_t *fields, char *id)
{
    uint64_t h = failure_hash(failure_hash(failure_hash(0xcbf29ce484222325ULL, msg), detail), key);
    struct timespec now;
    uint64_t now_ms;
    unsigned repeated = 0;
    int slot = -1, oldest = 0;

    clock_gettime(CLOCK_MONOTONIC, &now);
    now_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000 + 1;
    pthread_mutex_lock(&failure_lock);
    for (int i = 0; i < FAILURE_SLOTS; i++) {
        if (failures[i].at_ms && failures[i].hash == h) {
            slot = i;
            break;
        }
        if (failures[i].at_ms < failures[oldest].at_ms)
            oldest = i;
    }
    if (slot >= 0 && now_ms - failures[slot].at_ms < RT_LOG_FAILURE_WINDOW_MS) {
        /* Logged a moment ago: the answer names that line. */
        memcpy(id, failures[slot].id, RT_ERROR_ID_LEN + 1);
        failures[slot].repeated++;
        pthread_mutex_unlock(&failure_lock);
        json_decref(fields);
        return;
    }
    if (slot < 0)
        slot = oldest;
    else
        repeated = failures[slot].repeated;
    rt_id_hex(id, RT_ERROR_ID_LEN);
    failures[slot].hash = h;
    failures[slot].at_ms = now_ms;
    failures[slot].repeated = 0;
    memcpy(failures[slot].id, id, RT_ERROR_ID_LEN + 1);
    pthread_mutex_unlock(&failure_lock);

    if (!json_is_object(fields)) {
        json_decref(fields);
        fields = json_object();
    }
    if (fields) {
        json_t *d = detail ? log_json_text(detail) : NULL;
        json_object_set_new(fields, "error_id", json_string(id));
        if (d)
            json_object_set_new(fields, "error", d);
        if (repeated)
            json_object_set_new(fields, "repeated", json_integer(repeated));
    }
    rt_log(level, msg, fields);
}
