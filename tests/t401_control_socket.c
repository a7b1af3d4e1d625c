/*
 * The control socket as users meet it: `pgcorral ctl` tables and --json, one JSON answer
 * per line, unknown and oversized commands answered with an error while the socket keeps
 * serving, another user (runuser -u nobody) refused by the socket's mode and by the peer
 * uid check, a second supervisor on the same socket refused.
 */
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

static int connect_to(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads one line from fd into buf (NUL-terminated, newline removed); false on EOF/timeout. */
static bool read_line(int fd, char *buf, size_t size)
{
    size_t len = 0;
    while (len < size - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0)
            return false;
        ssize_t n = read(fd, buf + len, 1);
        if (n <= 0)
            return false;
        if (buf[len] == '\n') {
            buf[len] = '\0';
            return true;
        }
        len++;
    }
    return false;
}

static bool ready(void *arg)
{
    json_t *doc = pgt_ctl(arg, "workers"), *w;
    size_t i;
    int n = 0;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        n += strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0;
    }
    json_decref(doc);
    return n == 2;
}

/* Runs `pgcorral ctl --control path args...`; returns its exit code and output in p. */
static int ctl(struct pgt_proc *p, const char *path, char *const args[])
{
    char *argv[16] = {(char *)pgt_binary(), "ctl", "--control", (char *)path};
    int n = 4;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pgt_spawn(p, argv, NULL);
    pgt_proc_wait_exit(p, 10000);
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

int main(void)
{
    const char *control = pgt_tmp_path("ctl.sock");
    char env_url[1024], line[8192];
    struct pgt_proc sup, p, second;
    int fd, code;

    tap_timeout(90);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s", pgt_db_url());
    plan(22);

    char *argv[] = {(char *)pgt_binary(), "run",           "--web",    "1",           "--jobs", "1",
                    "--control",          (char *)control, "--listen", "127.0.0.1:0", NULL};
    char *env[] = {env_url, NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(ready, (void *)control, 15000)) {
        pgt_proc_drain(&sup);
        bail("supervisor did not come up:\n%s", sup.log);
    }

    /* Several commands on one connection, an unknown one in the middle. */
    fd = connect_to(control);
    ok(fd >= 0, "connect to the control socket");
    (void)!write(fd, "budget\nfrobnicate\nworkers\n", 26);
    ok(read_line(fd, line, sizeof line) && strstr(line, "\"budget\":{"), "budget answers");
    ok(read_line(fd, line, sizeof line) &&
           strcmp(line, "{\"error\":\"unknown command 'frobnicate'\"}") == 0,
       "an unknown command gets {\"error\":\"unknown command 'frobnicate'\"}");
    ok(read_line(fd, line, sizeof line) && strstr(line, "\"workers\":["),
       "the same connection still answers the next command");
    (void)!write(fd, "slow abc\n", 9);
    ok(read_line(fd, line, sizeof line) && strstr(line, "slow takes a count"),
       "a malformed argument is named in the error");
    (void)!write(fd, "stats\n", 6);
    ok(read_line(fd, line, sizeof line) && strstr(line, "\"totals\":{") &&
           strstr(line, "\"histograms\":{"),
       "stats answers with totals and histograms");
    (void)!write(fd, "pools\n", 6);
    ok(read_line(fd, line, sizeof line) && strstr(line, "\"pools\":{\"total\":{"),
       "pools answers with a total block");

    /* A line longer than the limit: an error, then the connection is closed. */
    static char big[10000];
    memset(big, 'x', sizeof big);
    (void)!write(fd, big, sizeof big);
    ok(read_line(fd, line, sizeof line) && strstr(line, "command too long"),
       "an oversized command is refused");
    close(fd);
    json_t *doc = pgt_ctl(control, "help");
    ok(doc && json_object_get(json_object_get(doc, "commands"), "workers"),
       "the socket still serves after an oversized command");
    json_decref(doc);

    /* The ctl client: table for people, JSON with --json, errors as exit status. */
    code = ctl(&p, control, (char *[]){"workers", NULL});
    ok(code == 0 && strstr(p.log, "ROLE") && strstr(p.log, "web") && strstr(p.log, "ready"),
       "pgcorral ctl workers prints a table");
    pgt_proc_cleanup(&p);
    code = ctl(&p, control, (char *[]){"--json", "budget", NULL});
    doc = json_loads(p.log ? p.log : "", JSON_DISABLE_EOF_CHECK, NULL);
    ok(code == 0 &&
           json_integer_value(json_object_get(json_object_get(doc, "budget"), "slots")) == 21,
       "pgcorral ctl --json budget prints the JSON document (slots = 2 x 10 + 1)");
    json_decref(doc);
    pgt_proc_cleanup(&p);
    code = ctl(&p, control, (char *[]){"top", "--count", "2", "--interval", "200", NULL});
    ok(code == 0 && strstr(p.log, "BUDGET") && strstr(p.log, "RATES") &&
           strstr(strstr(p.log, "BUDGET") + 1, "BUDGET") && strstr(p.log, "ready"),
       "pgcorral ctl top --count 2 prints two frames with budget, rates and workers");
    pgt_proc_cleanup(&p);
    code = ctl(&p, control, (char *[]){"nonsense", NULL});
    ok(code == 1 && strstr(p.log, "unknown command 'nonsense'"),
       "pgcorral ctl reports an unknown command and exits 1");
    pgt_proc_cleanup(&p);

    /* Another user is refused: by the 0600 mode, and by SO_PEERCRED behind it. As a user
     * would try it: `runuser -u nobody -- pgcorral ctl ...`. */
    struct passwd *nobody = getpwnam("nobody");
    struct ot_output o;
    char uid_field[32];
    if (!nobody)
        bail("no user nobody");
    snprintf(uid_field, sizeof uid_field, "\"uid\":%d", (int)nobody->pw_uid);
    char *as_nobody_help[] = {"/usr/sbin/runuser",         "-u",   "nobody", "--",
                              (char *)pgt_binary_public(), "help", NULL};
    code = ot_run(as_nobody_help, NULL, 10000, &o);
    ok(code == 0 && strstr(o.out, "usage: pgcorral"),
       "user nobody can run %s (so what follows is the socket's doing)", pgt_binary_public());
    if (code != 0)
        diag("runuser: exit %d: %s", code, o.err);
    ot_output_free(&o);

    char *as_nobody[] = {"/usr/sbin/runuser",
                         "-u",
                         "nobody",
                         "--",
                         (char *)pgt_binary_public(),
                         "ctl",
                         "--control",
                         (char *)control,
                         "workers",
                         NULL};
    char want[256];
    snprintf(want, sizeof want, "pgcorral ctl: cannot connect to %s: Permission denied", control);
    code = ot_run(as_nobody, NULL, 10000, &o);
    ok(code != 0 && strstr(o.err, want) && !strstr(o.out, "ready"),
       "runuser -u nobody: ctl workers exits %d with '%s' on stderr (socket mode 0600)", code,
       want);
    if (!strstr(o.err, want))
        diag("stdout '%s', stderr '%s'", o.out, o.err);
    ot_output_free(&o);

    /* With the mode opened up, the peer's uid check still says no. */
    ok(chmod(control, 0666) == 0, "chmod 0666 the control socket (as an admin might, by mistake)");
    /* Three tries: the refusal races with the client's write of its command. */
    bool refused = true;
    for (int i = 0; i < 3 && refused; i++) {
        code = ot_run(as_nobody, NULL, 10000, &o);
        refused = code == 1 &&
                  strstr(o.err, "pgcorral ctl: permission denied: not the same user") &&
                  !strstr(o.out, "ready");
        if (!refused)
            diag("exit %d, stdout '%s', stderr '%s'", code, o.out, o.err);
        ot_output_free(&o);
    }
    ok(refused, "runuser -u nobody: refused by the supervisor's peer check: exit 1 and "
                "'pgcorral ctl: permission denied: not the same user' (no SIGPIPE), 3 times");
    ok(pgt_proc_wait_log(&sup, uid_field, 5000) &&
           strstr(sup.log, "\"msg\":\"control connection refused: other user\""),
       "the supervisor logs the refusal with the peer's uid (%s)", uid_field);
    chmod(control, 0600);

    code = ctl(&p, control, (char *[]){"workers", NULL});
    ok(code == 0 && strstr(p.log, "ROLE") && strstr(p.log, "ready"),
       "root still gets an answer afterwards");
    pgt_proc_cleanup(&p);

    /* A second supervisor on the same control socket is refused. */
    pgt_spawn(&second, argv, env);
    ok(pgt_proc_wait_exit(&second, 15000) && WIFEXITED(second.status) &&
           WEXITSTATUS(second.status) != 0 && strstr(second.log, "another pgcorral is running"),
       "a second supervisor on the same control socket refuses to start");
    pgt_proc_cleanup(&second);
    ok(ready((void *)control), "and the first one keeps serving");

    kill(sup.pid, SIGTERM);
    ok(pgt_proc_wait_exit(&sup, 20000) && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "supervisor exits 0 on SIGTERM");
    pgt_proc_cleanup(&sup);
    return done_testing();
}
