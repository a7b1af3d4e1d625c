/*
 * Adversarial, HTTP: a web worker whose loop turns (its heartbeat stays fresh) but that has
 * stopped accepting is hung for its clients. The test hook PGCORRAL_TEST_STOP_ACCEPT=1
 * makes the first web worker (generation 1) never accept. With --worker-timeout 2: while
 * nothing waits on its socket it is left alone; once a client connects, the supervisor
 * logs it and replaces it within the timeout and a few seconds (new pid, restarts 1), and
 * the replacement answers the client that waited. The replacement, which accepts, is not
 * taken for hung under steady traffic.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

#define TIMEOUT_S 2

static const char *control;

/* The web worker's pid and restarts, when it is ready (else pid 0). */
static void web_worker(pid_t *pid, long long *restarts)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    *pid = 0;
    *restarts = -1;
    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        if (strcmp(json_string_value(json_object_get(w, "role")), "web") == 0 &&
            strcmp(json_string_value(json_object_get(w, "state")), "ready") == 0) {
            *pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
            *restarts = json_integer_value(json_object_get(w, "restarts"));
        }
    }
    json_decref(doc);
}

static bool web_ready(void *arg)
{
    pid_t pid;
    long long restarts;
    web_worker(&pid, &restarts);
    return pid > 0;
}

/* Ready with another pid than *arg. */
static bool web_replaced(void *arg)
{
    pid_t pid;
    long long restarts;
    web_worker(&pid, &restarts);
    return pid > 0 && pid != *(pid_t *)arg;
}

/* Log lines with msg in the supervisor's log file. */
static int log_count(const char *logfile, const char *msg, json_t **first)
{
    char *text = ot_read_file(logfile);
    json_t *lines = ot_log_lines(text, msg);
    int n = (int)json_array_size(lines);
    if (first)
        *first = json_incref(json_array_get(lines, 0));
    json_decref(lines);
    free(text);
    return n;
}

/* A client that connects and sends its request, then waits for the answer. */
static int client_connect(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const char req[] = "GET /api/v1/ping HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1))
        bail("cannot connect to the web port %d", port);
    return fd;
}

/* The status of the answer on fd, within timeout_ms (0: none). */
static int client_status(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[256];
    ssize_t n;
    if (poll(&p, 1, timeout_ms) != 1 || (n = read(fd, buf, sizeof buf - 1)) < 12)
        return 0;
    buf[n] = '\0';
    return strncmp(buf, "HTTP/1.1 ", 9) == 0 ? atoi(buf + 9) : 0;
}

int main(void)
{
    struct pgt_proc sup;
    struct rlimit no_core = {0, 0};
    char env_url[1200], logfile[128];
    const char *db = pgt_db_url();
    pid_t pid0, pid1, pid;
    long long restarts, t0, dt;
    json_t *line = NULL;
    int port, fd;

    tap_timeout(90);
    plan(11);
    /* The hung worker gets SIGABRT: no core file from it. */
    setrlimit(RLIMIT_CORE, &no_core);
    control = pgt_tmp_path("t960.sock");
    snprintf(logfile, sizeof logfile, "%s", pgt_tmp_path("t960.log"));
    unlink(logfile);
    snprintf(env_url, sizeof env_url, "DATABASE_URL=%s&connection_limit=2", db);
    char *argv[] = {(char *)pgt_binary(),
                    "run",
                    "--web",
                    "1",
                    "--jobs",
                    "0",
                    "--control",
                    (char *)control,
                    "--listen",
                    "127.0.0.1:0",
                    "--worker-timeout",
                    "2",
                    "--log-file",
                    logfile,
                    "--shutdown-timeout",
                    "5",
                    NULL};
    char *env[] = {env_url, "PGCORRAL_TEST_STOP_ACCEPT=1", NULL};
    pgt_spawn(&sup, argv, env);
    if (!pgt_wait_until(web_ready, NULL, 20000)) {
        pgt_proc_drain(&sup);
        bail("the supervisor did not come up:\n%s", sup.log);
    }
    port = (int)ot_config_int(control, "listen_port");
    web_worker(&pid0, &restarts);

    /* Not accepting, but nobody waits: an idle worker is not hung. Watched for 2.5 x the
     * timeout. */
    t0 = pgt_now_ms();
    while (pgt_now_ms() - t0 < TIMEOUT_S * 2500 && !web_replaced(&pid0))
        usleep(100000);
    web_worker(&pid, &restarts);
    ok(pid == pid0 && restarts == 0,
       "a worker that does not accept, with no connection waiting, is left alone (pid %d -> "
       "%d, restarts %lld)",
       (int)pid0, (int)pid, restarts);
    is_int(log_count(logfile, "web worker stopped accepting; aborting it", NULL), 0,
           "and nothing is logged about it");

    /* A client connects: its connection waits in the worker's accept queue. */
    fd = client_connect(port);
    t0 = pgt_now_ms();
    ok(pgt_wait_until(web_replaced, &pid0, (TIMEOUT_S + 8) * 1000),
       "a worker that stopped accepting while a connection waits is replaced");
    dt = pgt_now_ms() - t0;
    ok(dt <= (TIMEOUT_S + 3) * 1000, "within --worker-timeout + 3 s (%lld ms)", dt);
    web_worker(&pid1, &restarts);
    is_int(restarts, 1, "ctl workers counts the restart (new pid %d)", (int)pid1);
    ok(!pgt_pid_alive(pid0), "the hung process is gone");
    is_int(log_count(logfile, "web worker stopped accepting; aborting it", &line), 1,
           "the supervisor logs it once");
    const char *role = line ? json_string_value(json_object_get(line, "worker_role")) : NULL;
    ok(line && json_integer_value(json_object_get(line, "worker_pid")) == pid0 && role &&
           strcmp(role, "web") == 0 &&
           json_integer_value(json_object_get(line, "worker_index")) == 0 &&
           json_integer_value(json_object_get(line, "queued")) >= 1,
       "naming the worker (web 0, its pid) and the connections waiting");
    if (line) {
        char *text = json_dumps(line, JSON_COMPACT);
        diag("%s", text ? text : "?");
        free(text);
    }
    json_decref(line);
    is_int(client_status(fd, 5000), 200, "the client that waited is answered by the replacement");
    close(fd);

    /* The replacement accepts: steady traffic for 2.5 x the timeout replaces nothing. */
    int answered = 0, requests = 0;
    t0 = pgt_now_ms();
    while (pgt_now_ms() - t0 < TIMEOUT_S * 2500) {
        char *resp = NULL;
        answered += ot_http_get(port, "/api/v1/ping", &resp) == 200;
        requests++;
        free(resp);
    }
    web_worker(&pid, &restarts);
    ok(pid == pid1 && restarts == 1 && answered == requests,
       "a worker that accepts is not taken for hung (%d of %d answered, restarts %lld)", answered,
       requests, restarts);
    is_int(log_count(logfile, "web worker stopped accepting; aborting it", NULL), 1,
           "no other such line");

    json_decref(pgt_ctl(control, "shutdown"));
    pgt_proc_wait_exit(&sup, 15000);
    pgt_proc_cleanup(&sup);
    unlink(logfile);
    return done_testing();
}
