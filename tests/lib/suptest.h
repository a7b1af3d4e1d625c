/*
 * Shared by the end-to-end HTTP tests of the real binary (t309, t316, t317, t318): the
 * supervisor started with given flags and environment, waited for until its web workers
 * are ready, its ports read from `ctl config`; one request with any headers; a stop that
 * says whether it was clean.
 */
#ifndef PGCORRAL_SUPTEST_H
#define PGCORRAL_SUPTEST_H

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/webtest.h"

/* A running supervisor. */
struct ts_sup {
    struct pgt_proc p;
    const char *control;
    int port;       /* --listen's bound port */
    int admin_port; /* --admin-listen's, or -1 */
    int web;        /* web workers asked for */
};

/* Whether control lists s->web web workers, each ready. */
bool ts_web_ready(void *arg);

/*
 * Starts `pgcorral run --web WEB --control CONTROL ARGS...` (args NULL-terminated; give
 * --jobs and --listen there) with env added, and waits up to 20 s for its web workers.
 * Returns true, or false with the log in a diagnostic (the process is then killed).
 */
bool ts_start(struct ts_sup *s, const char *name, int web, char *const args[], char *const env[]);

/* SIGTERM, then whether the supervisor exited 0 within 20 s (its output read). */
bool ts_stop(struct ts_sup *s);

/*
 * One request on a new connection: method path, extra header lines (each ending in
 * "\r\n"; may be NULL) and body (may be NULL; sent as application/json unless the headers
 * give a Content-Type). Returns the status (0 on failure); the
 * answer in r (caller frees with wt_resp_free).
 */
int ts_req(int port, const char *method, const char *path, const char *headers, const char *body,
           struct wt_resp *r);

/* Occurrences of needle in hay (0 for NULL). */
int ts_count(const char *hay, const char *needle);

/* Whether s is exactly n lower-case hex digits. */
bool ts_is_hex(const char *s, size_t n);

#endif
