/*
 * Binary upgrade without dropping a connection (SIGUSR2). The supervisor runs from a copy
 * of the binary; a changed build (the same binary with its version string patched) is
 * renamed over it, as a package manager does, and SIGUSR2 makes the supervisor exec it.
 * Under wrk, with our backends in pg_stat_activity sampled every 100 ms: no socket error,
 * no non-2xx answer, never more than B connections, `ctl stats` reports the new version and
 * the new supervisor's pid, and the old supervisor exits 0; a NOTIFY_SOCKET standing in for
 * systemd hears MAINPID= from the old supervisor and READY=1 from the new one. Then a broken
 * build (a script that exits 1), and a good build whose configuration changed B, are
 * installed: SIGUSR2 logs each failure with its reason, and the running generation keeps
 * serving. SIGTERM stops the new supervisor and every worker.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/rt_version.h"
#include "tests/lib/jobtest.h"
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define DB "pgct412"
#define WEB 2
#define JOBS 1
#define LIMIT 2
#define BUDGET ((WEB + JOBS) * LIMIT + 1)

static const char *control;
static const char *cfg;
static const char *logfile;
static struct ot_sampler sampler;
static char new_version[32];

/* Copies the file at from to to (mode 0755), replacing every occurrence of old with rep
 * (the same length) when old is not NULL. Returns the number of replacements, -1 on error. */
static int copy_patched(const char *from, const char *to, const char *old, const char *rep)
{
    char *data = ot_read_file(from);
    struct stat st;
    int n = 0, fd;

    if (!data || stat(from, &st) < 0)
        return -1;
    if (old) {
        size_t len = strlen(old);
        for (char *p = data; (p = memmem(p, (size_t)st.st_size - (size_t)(p - data), old, len));
             p += len) {
            memcpy(p, rep, len);
            n++;
        }
    }
    fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd < 0 || write(fd, data, (size_t)st.st_size) != st.st_size) {
        free(data);
        return -1;
    }
    close(fd);
    free(data);
    return n;
}

/*
 * systemd's part: NOTIFY_SOCKET, with the senders' pids, judged as NotifyAccess=main does.
 * The main pid starts as the first supervisor's; MAINPID= from the main pid moves it. A
 * datagram from any other pid would be dropped by systemd: counted as foreign.
 */
struct manager {
    int fd;
    pid_t main;
    int foreign;
    bool mainpid_moved; /* MAINPID= from the old main pid */
    bool ready_new;     /* READY=1 from the moved main pid */
};

static void manager_open(struct manager *m, const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int one = 1;

    memset(m, 0, sizeof *m);
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    unlink(path);
    m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (m->fd < 0 || bind(m->fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        setsockopt(m->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) < 0)
        bail("notify socket %s: %s", path, strerror(errno));
}

/* Reads every datagram that arrives within timeout_ms (until READY=1 from a moved main
 * pid, when until_ready). */
static void manager_read(struct manager *m, int timeout_ms, bool until_ready)
{
    long long deadline = pgt_now_ms() + timeout_ms;
    char buf[512];

    while (!(until_ready && m->ready_new)) {
        struct pollfd pf = {.fd = m->fd, .events = POLLIN};
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
            return;
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(struct ucred))];
        } ctl;
        struct iovec iov = {buf, sizeof buf - 1};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(m->fd, &mh, MSG_DONTWAIT);
        pid_t from = 0;
        if (n < 0)
            continue;
        buf[n] = '\0';
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cr;
                memcpy(&cr, CMSG_DATA(c), sizeof cr);
                from = cr.pid;
            }
        if (from != m->main) {
            m->foreign++;
            diag("notify datagram from pid %d, not the main pid %d: %s", (int)from, (int)m->main,
                 buf);
            continue;
        }
        const char *mp = strstr(buf, "MAINPID=");
        if (mp && (mp == buf || mp[-1] == '\n')) {
            m->main = (pid_t)atoi(mp + 8);
            m->mainpid_moved = true;
        }
        if (m->mainpid_moved && strstr(buf, "READY=1"))
            m->ready_new = true;
    }
}

/* The config file: only B. */
static void write_config(int budget)
{
    FILE *f = fopen(cfg, "w");
    if (!f)
        bail("cannot write %s", cfg);
    fprintf(f, "max_db_connections = %d\n", budget);
    fclose(f);
}

static json_t *stats(void)
{
    json_t *doc = pgt_ctl(control, "stats");
    json_t *st = json_incref(json_object_get(doc, "stats"));
    json_decref(doc);
    return st;
}

/* The version and supervisor pid `ctl stats` reports (version "" and pid 0 when none). */
static void stats_identity(char *version, size_t size, pid_t *pid)
{
    json_t *st = stats();
    const char *v = json_string_value(json_object_get(st, "version"));
    snprintf(version, size, "%s", v ? v : "");
    *pid = (pid_t)json_integer_value(json_object_get(st, "supervisor_pid"));
    json_decref(st);
}

static long long stat_total(const char *name)
{
    json_t *st = stats();
    long long v = json_integer_value(json_object_get(json_object_get(st, "totals"), name));
    json_decref(st);
    return v;
}

static bool ready(void *arg)
{
    return ot_all_ready(control, WEB, JOBS);
}

/* The new supervisor answers: new version, another pid, all its workers ready. */
static bool upgraded(void *arg)
{
    pid_t old = *(pid_t *)arg, pid;
    char v[32];

    stats_identity(v, sizeof v, &pid);
    return strcmp(v, new_version) == 0 && pid > 0 && pid != old && ot_all_ready(control, WEB, JOBS);
}

struct progress {
    long long requests;
    int samples;
};

static bool reached(void *arg)
{
    struct progress *p = arg;
    return stat_total("http_requests") >= p->requests &&
           atomic_load(&sampler.nsamples) >= p->samples;
}

static bool log_has(void *arg)
{
    char *log = ot_read_file(logfile);
    bool has = ot_count(log, arg) > 0;
    free(log);
    return has;
}

/* A process that is not our child (the new supervisor, reparented to us: we are a
 * subreaper) exited; its status in *status. */
struct reaped {
    pid_t pid;
    int status;
};

static bool exited(void *arg)
{
    struct reaped *r = arg;
    return waitpid(r->pid, &r->status, WNOHANG) == r->pid;
}

static bool all_gone(void *arg)
{
    const struct ot_worker *w = arg;
    for (int i = 0; i < WEB + JOBS; i++)
        if (kill(w[i].pid, 0) == 0)
            return false;
    return true;
}

int main(void)
{
    char env_url[1200], bindir[512], bin[600], next[600], v[32];
    struct pgt_proc sup;
    struct ot_wrk wrk;
    struct ot_wrk_result wr;
    struct ot_output o;
    pid_t new_pid = 0, pid;
    long long window[2];

    tap_timeout(150);
    /* The new supervisor is the old one's child; once the old one exits it is ours. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    control = pgt_tmp_path("t412.sock");
    logfile = pgt_tmp_path("t412.log");
    cfg = pgt_tmp_path("t412.conf");
    unlink(logfile);
    const char *url = jt_create_db(DB);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=%d", url, LIMIT);
    plan(31);

    /* The installed binary, and the changed build that will replace it. */
    snprintf(bindir, sizeof bindir, "%s", pgt_tmp_path("t412-bin"));
    mkdir(bindir, 0700);
    snprintf(bin, sizeof bin, "%s/pgcorral", bindir);
    snprintf(next, sizeof next, "%s/pgcorral.new", bindir);
    snprintf(new_version, sizeof new_version, "%s", PGCORRAL_VERSION);
    new_version[strlen(new_version) - 1] = new_version[strlen(new_version) - 1] == '9' ? '8' : '9';
    ok(copy_patched(pgt_binary(), bin, NULL, NULL) == 0, "the binary is installed as %s", bin);
    int patched = copy_patched(pgt_binary(), next, PGCORRAL_VERSION, new_version);
    char *vargv[] = {next, "--version", NULL};
    ot_run(vargv, NULL, 10000, &o);
    ok(patched >= 2 && o.code == 0 && strstr(o.out, new_version) &&
           !strstr(o.out, PGCORRAL_VERSION),
       "a changed build reports version %s (%d strings patched)", new_version, patched);
    ot_output_free(&o);

    /* B in a config file, which a new supervisor reads again (the last case changes it). */
    write_config(BUDGET);
    char *argv[] = {bin,
                    "run",
                    "--web",
                    "2",
                    "--jobs",
                    "1",
                    "--config",
                    (char *)cfg,
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--log-file",
                    (char *)logfile,
                    "--shutdown-timeout",
                    "20",
                    NULL};
    const char *notify_path = pgt_tmp_path("t412.notify");
    char env_notify[600];
    struct manager mgr;
    manager_open(&mgr, notify_path);
    snprintf(env_notify, sizeof env_notify, "NOTIFY_SOCKET=%s", notify_path);
    char *env[] = {env_url, env_notify, NULL};
    pgt_spawn(&sup, argv, env);
    mgr.main = sup.pid;
    if (!pgt_wait_until(ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        char *log = ot_read_file(logfile);
        bail("supervisor did not come up:\n%s\n%s", sup.log, log ? log : "");
    }
    int port = (int)ot_config_int(control, "listen_port");
    stats_identity(v, sizeof v, &pid);
    ok(strcmp(v, PGCORRAL_VERSION) == 0 && pid == sup.pid,
       "ctl stats: version %s, supervisor pid %d", v, (int)pid);

    ot_sampler_start(&sampler, url,
                     "SELECT count(*) FROM pg_stat_activity WHERE datname = '" DB "'"
                     " AND application_name LIKE 'pgcorral%' AND pid <> pg_backend_pid()",
                     100);
    ot_wrk_start(&wrk, port, "/api/v1/health", 8, 90);
    struct progress want = {1000, 10};
    bool loaded = pgt_wait_until(reached, &want, 15000);
    long long requests_before = stat_total("http_requests");
    ok(loaded, "under load: %lld requests answered", requests_before);

    /* Install the changed build the way a package manager does, then SIGUSR2. */
    ok(rename(next, bin) == 0, "the changed build is renamed over the running binary");
    struct ot_worker old_workers[8];
    int nold = ot_workers(control, old_workers, 8);
    window[0] = pgt_now_ms();
    int admin_port_before = (int)ot_config_int(control, "admin_port");
    kill(sup.pid, SIGUSR2);
    pid_t old_pid = sup.pid;
    bool up = pgt_wait_until(upgraded, &old_pid, 40000);
    stats_identity(v, sizeof v, &new_pid);
    ok(up, "SIGUSR2: ctl stats reports version %s and a new supervisor pid (%d -> %d)", v,
       (int)old_pid, (int)new_pid);
    bool old_exit = pgt_proc_wait_exit(&sup, 40000);
    window[1] = pgt_now_ms();
    ok(old_exit && WIFEXITED(sup.status) && WEXITSTATUS(sup.status) == 0,
       "the old supervisor drained its workers and exited 0 (%lld ms after SIGUSR2)",
       window[1] - window[0]);
    ok(nold == WEB + JOBS && all_gone(old_workers), "the old workers are gone");
    manager_read(&mgr, 5000, true);
    ok(mgr.mainpid_moved && mgr.main == new_pid && mgr.ready_new && mgr.foreign == 0,
       "systemd hears MAINPID=%d from the old supervisor, then READY=1 from the new one, and "
       "nothing from a pid that is not the main one (%d foreign)",
       (int)mgr.main, mgr.foreign);
    ok(new_pid > 0 && kill(new_pid, 0) == 0, "the new supervisor runs on");
    {
        /* The old supervisor handed the node over: it neither removed the node's row when
         * it stopped nor renewed it since; the new one holds the row and its lease. */
        PGconn *c = jt_connect(url);
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM pgcorral.nodes WHERE pid = %d AND slots_leased > 0"
                 " AND lease_expires_at > now()",
                 (int)new_pid);
        ok(pgt_wait_at_least(c, sql, 1, 5000) == 1,
           "the node's row and its lease are the new supervisor's (pid %d)", (int)new_pid);
        PQfinish(c);
    }

    if (!up || new_pid <= 0 || new_pid == old_pid) {
        char *log = ot_read_file(logfile);
        bail("no new supervisor answers on the control socket; log:\n%.6000s", log ? log : "");
    }
    want =
        (struct progress){stat_total("http_requests") + 1000, atomic_load(&sampler.nsamples) + 10};
    ok(pgt_wait_until(reached, &want, 15000), "the new workers serve requests");
    {
        /* The admin sockets were handed over too: the admin routes stay off the public
         * listener and on the admin one. */
        int pub = (int)ot_config_int(control, "listen_port");
        int adm = (int)ot_config_int(control, "admin_port");
        char *r1 = NULL, *r2 = NULL;
        int s1 = ot_http_get(pub, "/metrics", &r1), s2 = ot_http_get(adm, "/metrics", &r2);
        ok(s1 == 404 && s2 == 200 && adm == admin_port_before,
           "after the upgrade /metrics is still 404 on the public listener (%d) and 200 on the "
           "admin one (%d), whose socket was handed over (port %d, before %d)",
           s1, s2, adm, admin_port_before);
        free(r1);
        free(r2);
    }
    ot_wrk_stop(&wrk, &wr);
    ot_sampler_stop(&sampler);

    ok(wr.ran && wr.requests > requests_before,
       "wrk ran through the upgrade (%ld requests, %lld before it)", wr.requests, requests_before);
    is_int(wr.err_connect + wr.err_read + wr.err_write + wr.err_timeout, 0,
           "wrk: 0 socket errors through the binary upgrade");
    is_int(wr.non2xx, 0, "wrk: 0 non-2xx answers through the binary upgrade");
    if (!wr.ran || wr.err_connect + wr.err_read + wr.err_write + wr.err_timeout + wr.non2xx)
        diag("wrk: %s", wr.out);

    int n = atomic_load(&sampler.nsamples), max = 0, in_window = 0, max_window = 0;
    for (int i = 0; i < n; i++) {
        const struct ot_sample *s = &sampler.samples[i];
        max = s->n > max ? s->n : max;
        if (s->t_ms >= window[0] && s->t_ms <= window[1]) {
            in_window++;
            max_window = s->n > max_window ? s->n : max_window;
        }
    }
    ok(n >= 20 && in_window >= 3,
       "pg_stat_activity sampled throughout: %d samples, %d during the upgrade (%d failed)", n,
       in_window, atomic_load(&sampler.errors));
    ok(max <= BUDGET, "never more than B = %d of our connections open (max %d, %d in the upgrade)",
       BUDGET, max, max_window);
    /* Not vacuous: the web pools were in full use while the generations overlapped. */
    ok(max_window >= WEB * LIMIT, "the budget was in use during the upgrade (max %d)", max_window);

    /* --version of the installed binary is what the running supervisor reports. */
    char *iargv[] = {bin, "--version", NULL};
    ot_run(iargv, NULL, 10000, &o);
    stats_identity(v, sizeof v, &pid);
    ok(o.code == 0 && strstr(o.out, v) && strcmp(v, new_version) == 0,
       "`%s --version` and ctl stats agree: %s", bin, v);
    ot_output_free(&o);
    ok(log_has("\"msg\":\"binary upgrade: the new supervisor serves\""),
       "the log says the new supervisor took over");

    /* A broken build: the new supervisor fails; the running one keeps serving. */
    struct ot_worker before[8], after[8];
    int nbefore = ot_workers(control, before, 8);
    snprintf(next, sizeof next, "%s/pgcorral.broken", bindir);
    FILE *f = fopen(next, "w");
    fprintf(f, "#!/bin/sh\necho 'pgcorral: preflight: broken build' >&2\nexit 1\n");
    fclose(f);
    chmod(next, 0755);
    rename(next, bin);
    kill(new_pid, SIGUSR2);
    ok(pgt_wait_until(log_has,
                      "\"msg\":\"binary upgrade failed; the old generation keeps serving\"", 20000),
       "SIGUSR2 with a broken build: the failure is logged");
    ok(log_has("the new supervisor exited with status 1"), "the log says why: exit status 1");
    char *resp = NULL;
    int st = ot_http_get(port, "/api/v1/health", &resp);
    free(resp);
    stats_identity(v, sizeof v, &pid);
    ok(st == 200 && strcmp(v, new_version) == 0 && pid == new_pid,
       "still serving: health %d, ctl stats version %s, supervisor pid %d", st, v, (int)pid);
    int nafter = ot_workers(control, after, 8);
    bool same = nafter == nbefore && nafter == WEB + JOBS;
    for (int i = 0; same && i < nafter; i++)
        same = after[i].pid == before[i].pid && strcmp(after[i].state, "ready") == 0;
    ok(same, "the same %d workers serve, all ready", nafter);

    /* A good build whose preflight refuses: B changed in the config file, which cannot
     * change in an upgrade. The new supervisor says why before it exits. */
    write_config(BUDGET + 1);
    snprintf(next, sizeof next, "%s/pgcorral.good", bindir);
    copy_patched(pgt_binary(), next, NULL, NULL);
    rename(next, bin);
    kill(new_pid, SIGUSR2);
    ok(pgt_wait_until(log_has, "the budget cannot change in a binary upgrade", 20000),
       "SIGUSR2 with a changed B: the new supervisor's reason is in the old one's log");
    ok(pgt_wait_until(log_has, "\"reason\":\"upgrade: the budget cannot change", 5000),
       "logged as the failure's reason by the supervisor that keeps serving");
    st = ot_http_get(port, "/api/v1/health", &resp);
    free(resp);
    stats_identity(v, sizeof v, &pid);
    nafter = ot_workers(control, after, 8);
    ok(st == 200 && pid == new_pid && nafter == WEB + JOBS && after[0].pid == before[0].pid,
       "still serving with the same supervisor and workers: health %d, pid %d", st, (int)pid);

    /* The failed upgrades said nothing to systemd on their own. */
    manager_read(&mgr, 300, false);
    ok(mgr.foreign == 0 && mgr.main == new_pid,
       "the failed new supervisors sent no notification (main pid still %d)", (int)mgr.main);

    /* SIGTERM: the new supervisor stops like any other, and nothing is left. */
    struct reaped r = {new_pid, 0};
    kill(new_pid, SIGTERM);
    bool gone = pgt_wait_until(exited, &r, 30000);
    ok(gone && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
       "SIGTERM: the new supervisor exits 0");
    ok(pgt_wait_until(all_gone, after, 10000), "no worker is left");

    if (!gone)
        kill(new_pid, SIGKILL);
    pgt_proc_cleanup(&sup);
    ot_sampler_free(&sampler);
    unlink(bin);
    unlink(cfg);
    close(mgr.fd);
    unlink(notify_path);
    rmdir(bindir);
    unlink(logfile);
    return done_testing();
}
