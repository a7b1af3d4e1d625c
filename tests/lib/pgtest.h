/*
 * Test harness shared by the TAP programs: the throwaway PostgreSQL that
 * scripts/with-test-pg.sh started, running the real pgcorral binary as a child process
 * with its log captured, and asking its control socket.
 */
#ifndef PGCORRAL_PGTEST_H
#define PGCORRAL_PGTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>
#include <libpq-fe.h>

/* The test cluster's superuser URL; bails out (a failure, not a skip) when unset. */
const char *pgt_db_url(void);

/* A new connection to the test cluster; bails out on failure. Caller PQfinish()es. */
PGconn *pgt_connect(void);

/* Runs sql and returns the first column of the first row as a number (-1 on error). */
long long pgt_query_ll(PGconn *conn, const char *sql);

/* Path of the pgcorral binary next to the test programs' folder (build/pgcorral). */
const char *pgt_binary(void);

/* A copy of the binary that any user can run, for tests that run it as another user: the
 * checkout may sit in a folder only its owner can enter (root's home is 0700). Made once
 * per test process under /tmp/pgct-PID-bin/ (removed at exit). Bails on failure. */
const char *pgt_binary_public(void);

/* A unique path for this test run, e.g. a control socket: /tmp/pgct-PID-name. */
const char *pgt_tmp_path(const char *name);

/* A child process with its stdout and stderr captured in log. */
struct pgt_proc {
    pid_t pid;
    int fd;    /* read end of the output pipe; -1 once closed */
    char *log; /* everything read so far, NUL-terminated */
    size_t len, cap;
    int status; /* waitpid status once exited */
    bool exited;
};

/* In a forked child: adds env (NAME=VALUE, NULL-terminated; may be NULL) to the
 * environment, clears the test's alarm and execs argv[0]; exits 127 if exec fails. */
_Noreturn void pgt_exec_child(char *const argv[], char *const env[]);

/*
 * Starts argv (argv[0] is the program path) with the extra environment entries env
 * ("NAME=value", NULL-terminated, may be NULL) added to ours. Returns 0 or bails out.
 */
void pgt_spawn(struct pgt_proc *p, char *const argv[], char *const env[]);

/* Reads output that is ready now, without blocking. */
void pgt_proc_drain(struct pgt_proc *p);

/* Waits until the output contains needle. Returns true, or false after timeout_ms. */
bool pgt_proc_wait_log(struct pgt_proc *p, const char *needle, int timeout_ms);

/* Waits for the process to exit (reading its output). Returns true and sets p->status. */
bool pgt_proc_wait_exit(struct pgt_proc *p, int timeout_ms);

/* Kills (SIGKILL) and reaps the process if it is still running; frees the log. */
void pgt_proc_cleanup(struct pgt_proc *p);

/* Sends one command line to a control socket; returns the parsed answer or NULL. */
json_t *pgt_ctl(const char *control_path, const char *command);

/* Polls cond(arg) every 20 ms until it is true or timeout_ms passes. Returns its last value. */
bool pgt_wait_until(bool (*cond)(void *arg), void *arg, int timeout_ms);

/* A count to wait for: sql's number (pgt_query_ll on conn) equal to want, or at least want. */
struct pgt_count {
    PGconn *conn;
    const char *sql;
    long long want;
    bool at_least;
    long long got; /* the last number read */
};

/* pgt_wait_until's condition for a struct pgt_count (also for loops that pump, jh_wait). */
bool pgt_count_reached(void *arg);

/* Waits until sql counts exactly want (pgt_wait_count) or at least want (pgt_wait_at_least),
 * up to timeout_ms. Returns the last number read, for the assertion and its message. */
long long pgt_wait_count(PGconn *conn, const char *sql, long long want, int timeout_ms);
long long pgt_wait_at_least(PGconn *conn, const char *sql, long long want, int timeout_ms);

/* Whether a process with this pid exists (and is not a zombie we could reap). */
bool pgt_pid_alive(pid_t pid);

/* A loopback TCP port nothing listens on (bound, then closed again). Bails on failure. */
int pgt_closed_port(void);

/* A loopback TCP socket that listens but never accepts or answers: a server that does not
 * speak. Returns the socket (caller closes) and writes its port. Bails on failure. */
int pgt_silent_listener(int *port);

/* Milliseconds of CLOCK_MONOTONIC. */
long long pgt_now_ms(void);

#endif
