/*
 * Helpers of the operations tests (t40x): commands run with stdout and stderr apart, wrk
 * under control, a pg_stat_activity sampler thread, the worker table, log files as JSON
 * lines, and one-shot HTTP GETs.
 */
#ifndef PGCORRAL_OPSTEST_H
#define PGCORRAL_OPSTEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include <jansson.h>

/* ---- commands ------------------------------------------------------------------------ */

/* What a finished command printed, apart. */
struct ot_output {
    char *out; /* stdout, NUL-terminated (malloc'ed) */
    char *err; /* stderr, NUL-terminated (malloc'ed) */
    int code;  /* exit code; -1 when killed by a signal or timed out */
};

/*
 * Runs argv (argv[0] a path) with the extra environment entries env ("NAME=value",
 * NULL-terminated, may be NULL) added to ours, stdin from /dev/null, for at most
 * timeout_ms (then SIGKILL). Returns the exit code (also in o->code), -1 on a signal or
 * timeout. Caller frees o with ot_output_free. Bails out when it cannot fork.
 */
int ot_run(char *const argv[], char *const env[], int timeout_ms, struct ot_output *o);

/* Frees what ot_run captured; nothing for NULL fields. */
void ot_output_free(struct ot_output *o);

/* The whole file at path as a string (caller frees), or NULL when it cannot be read. */
char *ot_read_file(const char *path);

/* How many times needle occurs in text (0 for NULL text). */
int ot_count(const char *text, const char *needle);

/* ---- HTTP ---------------------------------------------------------------------------- */

/*
 * GET path from 127.0.0.1:port with Connection: close. Returns the status (0 on failure)
 * and the whole response (status line, headers, body) in *resp (caller frees; NULL on
 * failure). Waits at most 5 s.
 */
int ot_http_get(int port, const char *path, char **resp);

/* ---- wrk ----------------------------------------------------------------------------- */

/* A wrk process started by ot_wrk_start. */
struct ot_wrk {
    pid_t pid;
    int fd; /* its stdout and stderr */
};

/* wrk's totals, parsed from its summary. */
struct ot_wrk_result {
    bool ran; /* exited 0 and printed a summary */
    long requests, non2xx, err_connect, err_read, err_write, err_timeout;
    char out[4096]; /* what it printed */
};

/* Starts `wrk -t1 -c conns -d max_secs http://127.0.0.1:port/path`. Bails on failure. */
void ot_wrk_start(struct ot_wrk *w, int port, const char *path, int conns, int max_secs);

/* Stops wrk (SIGINT: it prints its summary then) and parses what it printed. */
void ot_wrk_stop(struct ot_wrk *w, struct ot_wrk_result *r);

/* ---- pg_stat_activity sampler -------------------------------------------------------- */

#define OT_MAX_SAMPLES 4096

/* One sample: when (pgt_now_ms) and the count the query returned. */
struct ot_sample {
    long long t_ms;
    int n;
};

/* A thread that runs one count query every period on its own connection. */
struct ot_sampler {
    pthread_t thread;
    char url[1024];
    char sql[512];
    int period_ms;
    atomic_bool running;
    atomic_int nsamples;       /* written by the thread, read after ot_sampler_stop */
    atomic_int errors;         /* queries or connects that failed */
    struct ot_sample *samples; /* OT_MAX_SAMPLES of them */
};

/*
 * Starts sampling: connects to url and runs sql (one row, one integer column) every
 * period_ms. The sampler's own connection should be excluded by sql (pid <>
 * pg_backend_pid()). Bails out when the thread cannot start.
 */
void ot_sampler_start(struct ot_sampler *s, const char *url, const char *sql, int period_ms);

/* Stops the thread and waits for it; the samples stay readable until ot_sampler_free. */
void ot_sampler_stop(struct ot_sampler *s);

void ot_sampler_free(struct ot_sampler *s);

/* ---- the supervisor ------------------------------------------------------------------ */

/* A row of the `workers` answer. */
struct ot_worker {
    pid_t pid;
    char role[8];
    char state[16];
    int index;
};

/* The worker table from control; returns how many rows (at most max), 0 when no answer. */
int ot_workers(const char *control, struct ot_worker *out, int max);

/* Whether control lists exactly web + jobs workers, each in state "ready". */
bool ot_all_ready(const char *control, int web, int jobs);

/* The `config` answer's config.key as an integer (-1 when missing). */
long long ot_config_int(const char *control, const char *key);

/*
 * The JSON log lines in text whose "msg" is msg (all of them for NULL), parsed, in order,
 * as a new array (caller decrefs). Lines that are not JSON objects are skipped.
 */
json_t *ot_log_lines(const char *text, const char *msg);

#endif
