/*
 * The TAP helpers themselves. A helper that always passed would make every other test
 * unable to fail, so each failure path is run in a child whose output and exit status are
 * checked: a failing assertion must print "not ok" and make done_testing() exit non-zero,
 * and so must a plan that does not match what ran.
 */
#include <sys/wait.h>

#include "tests/tap.h"

/* Runs body in a child with stdout into a pipe; returns its exit status, output in out. */
static int run_child(void (*body)(void), char *out, size_t size)
{
    int fds[2], status = -1;
    size_t len = 0;
    ssize_t n;

    if (pipe(fds) != 0)
        bail("pipe failed");
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        bail("fork failed");
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        tap_planned = -1; /* the child's own counters, not the parent's */
        tap_run = tap_failed = 0;
        body();
        _exit(done_testing());
    }
    close(fds[1]);
    while (len + 1 < size && (n = read(fds[0], out + len, size - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(fds[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

static void passing(void)
{
    ok(1, "fine");
    is_int(2 + 2, 4, "sum");
    is_str("a", "a", "same");
}

static void failing_ok(void)
{
    ok(1, "fine");
    ok(0, "broken");
}

static void failing_is_int(void)
{
    is_int(2 + 2, 5, "sum");
}

static void failing_is_str(void)
{
    is_str("pgcorral", "pgbouncer", "name");
    is_str(NULL, "x", "null against a string");
}

static void short_plan(void)
{
    plan(3);
    ok(1, "only one of three");
}

int main(void)
{
    char out[4096];

    tap_timeout(10);
    plan(11);

    is_int(run_child(passing, out, sizeof out), 0, "passing assertions exit 0");
    ok(strstr(out, "ok 1 - fine\nok 2 - sum\nok 3 - same\n1..3\n") != NULL,
       "they print numbered ok lines and the plan");

    is_int(run_child(failing_ok, out, sizeof out), 1, "one failing ok() makes the program fail");
    ok(strstr(out, "not ok 2 - broken\n") != NULL, "and prints 'not ok' with its number");

    is_int(run_child(failing_is_int, out, sizeof out), 1, "a failing is_int fails the program");
    ok(strstr(out, "not ok 1 - sum\n") && strstr(out, "#   got 4, expected 5"),
       "and shows what it got and what was expected");

    is_int(run_child(failing_is_str, out, sizeof out), 1, "a failing is_str fails the program");
    ok(strstr(out, "got 'pgcorral', expected 'pgbouncer'") != NULL, "and shows both strings");
    ok(strstr(out, "not ok 2 - null against a string") != NULL, "NULL never equals a string");

    is_int(run_child(short_plan, out, sizeof out), 1,
           "running fewer tests than planned fails the program");
    ok(strstr(out, "# planned 3 tests but ran 1") != NULL, "and says so");
    return done_testing();
}
