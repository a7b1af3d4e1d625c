/*
 * A small TAP producer for the test programs run by prove. Only the parent process
 * prints; forked children must _exit(). Every line is flushed at once so that a test
 * killed by its timeout still shows how far it got.
 */
#ifndef PGCORRAL_TAP_H
#define PGCORRAL_TAP_H

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int tap_planned = -1;
static int tap_run;
static int tap_failed;

static inline void tap_vprint(const char *prefix, const char *fmt, va_list ap)
{
    fputs(prefix, stdout);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static inline void plan(int n)
{
    tap_planned = n;
    printf("1..%d\n", n);
    fflush(stdout);
}

/* Prints a diagnostic line ("# ..."). */
__attribute__((format(printf, 1, 2))) static inline void diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_vprint("# ", fmt, ap);
    va_end(ap);
}

/* Records one test; returns cond so callers can add diagnostics on failure. */
__attribute__((format(printf, 2, 3))) static inline int ok(int cond, const char *fmt, ...)
{
    va_list ap;
    tap_run++;
    if (!cond)
        tap_failed++;
    printf("%s %d - ", cond ? "ok" : "not ok", tap_run);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    return cond;
}

#define is_int(got, want, ...)                                                                     \
    do {                                                                                           \
        long long is_got_ = (long long)(got), is_want_ = (long long)(want);                        \
        if (!ok(is_got_ == is_want_, __VA_ARGS__))                                                 \
            diag("  got %lld, expected %lld", is_got_, is_want_);                                  \
    } while (0)

#define is_str(got, want, ...)                                                                     \
    do {                                                                                           \
        const char *is_got_ = (got), *is_want_ = (want);                                           \
        int is_same_ =                                                                             \
            (is_got_ && is_want_) ? strcmp(is_got_, is_want_) == 0 : is_got_ == is_want_;          \
        if (!ok(is_same_, __VA_ARGS__))                                                            \
            diag("  got '%s', expected '%s'", is_got_ ? is_got_ : "(null)",                        \
                 is_want_ ? is_want_ : "(null)");                                                  \
    } while (0)

/* Skips the whole program: only for what the machine cannot do, never to hide a failure. */
__attribute__((noreturn, format(printf, 1, 2))) static inline void skip_all(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_vprint("1..0 # SKIP ", fmt, ap);
    va_end(ap);
    exit(0);
}

/* Stops the run: prove counts it as a failure. */
__attribute__((noreturn, format(printf, 1, 2))) static inline void bail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_vprint("Bail out! ", fmt, ap);
    va_end(ap);
    exit(255);
}

/* Ends the program: prints the plan if none was given, exits non-zero on any failure. */
static inline int done_testing(void)
{
    if (tap_planned < 0)
        printf("1..%d\n", tap_run);
    else if (tap_planned != tap_run)
        diag("planned %d tests but ran %d", tap_planned, tap_run);
    fflush(stdout);
    return (tap_failed || (tap_planned >= 0 && tap_planned != tap_run)) ? 1 : 0;
}

static inline void tap_on_alarm(int sig)
{
    static const char msg[] = "Bail out! test timed out\n";
    (void)sig;
    if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0) {
    }
    /* Kill our process group too, so that no forked child outlives the test. */
    kill(0, SIGKILL);
    _exit(255);
}

/*
 * Arms the test's overall timeout. The test becomes leader of its own process group, so
 * that the timeout (and tap_cleanup_children) can reach every process it started.
 */
static inline void tap_timeout(unsigned seconds)
{
    setpgid(0, 0);
    signal(SIGALRM, tap_on_alarm);
    alarm(seconds);
}

#endif
