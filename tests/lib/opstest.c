/*
 * Helpers of the operations tests: commands with stdout and stderr apart, wrk, a
 * pg_stat_activity sampler, the worker table and JSON log lines. See opstest.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

/* A growing NUL-terminated buffer filled from a pipe. */
struct ot_buf {
    char *data;
    size_t len, cap;
};

/* Reads what fd has now into b. Returns false once fd is at EOF (or failed). */
static bool buf_read(struct ot_buf *b, int fd)
{
    for (;;) {
        if (b->cap - b->len < 4096) {
            size_t cap = b->cap ? b->cap * 2 : 8192;
            char *p = realloc(b->data, cap);
            if (!p)
                bail("out of memory");
            b->data = p;
            b->cap = cap;
            b->data[b->len] = '\0'; /* NUL-terminated also when nothing comes */
        }
        ssize_t n = read(fd, b->data + b->len, b->cap - b->len - 1);
        if (n > 0) {
            b->len += (size_t)n;
            b->data[b->len] = '\0';
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return true;
        return false;
    }
}

int ot_run(char *const argv[], char *const env[], int timeout_ms, struct ot_output *o)
{
    struct ot_buf bo = {0}, be = {0};
    int po[2], pe[2], status;
    long long deadline = pgt_now_ms() + timeout_ms;
    bool open_o = true, open_e = true;
    pid_t pid;

    memset(o, 0, sizeof *o);
    o->code = -1;
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        bail("fork: %s", strerror(errno));
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, STDIN_FILENO);
        dup2(po[1], STDOUT_FILENO);
        dup2(pe[1], STDERR_FILENO);
        pgt_exec_child(argv, env);
    }
    close(po[1]);
    close(pe[1]);
    fcntl(po[0], F_SETFL, O_NONBLOCK);
    fcntl(pe[0], F_SETFL, O_NONBLOCK);
    buf_read(&bo, po[0]);
    buf_read(&be, pe[0]);
    while (open_o || open_e) {
        struct pollfd p[2] = {{.fd = open_o ? po[0] : -1, .events = POLLIN},
                              {.fd = open_e ? pe[0] : -1, .events = POLLIN}};
        long long left = deadline - pgt_now_ms();
        if (left <= 0)
            break;
        poll(p, 2, left > 100 ? 100 : (int)left);
        if (open_o && !buf_read(&bo, po[0]))
            open_o = false;
        if (open_e && !buf_read(&be, pe[0]))
            open_e = false;
    }
    if (open_o || open_e)
        kill(pid, SIGKILL);
    close(po[0]);
    close(pe[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    o->out = bo.data ? bo.data : strdup("");
    o->err = be.data ? be.data : strdup("");
    if (!open_o && !open_e && WIFEXITED(status))
        o->code = WEXITSTATUS(status);
    return o->code;
}

void ot_output_free(struct ot_output *o)
{
    free(o->out);
    free(o->err);
    o->out = o->err = NULL;
}

char *ot_read_file(const char *path)
{
    struct ot_buf b = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    while (buf_read(&b, fd))
        ;
    close(fd);
    return b.data ? b.data : strdup("");
}

int ot_count(const char *text, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = text ? strstr(text, needle) : NULL; p; p = strstr(p + len, needle))
        n++;
    return n;
}

int ot_http_get(int port, const char *path, char **resp)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct ot_buf b = {0};
    char req[512];
    long long deadline = pgt_now_ms() + 5000;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), len;
    bool eof = false;

    *resp = NULL;
    if (fd < 0)
        return 0;
    len =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 || write(fd, req, (size_t)len) != len) {
        close(fd);
        return 0;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (!eof) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - pgt_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        eof = !buf_read(&b, fd);
    }
    close(fd);
    if (!eof || !b.data || strncmp(b.data, "HTTP/1.", 7) != 0) {
        free(b.data);
        return 0;
    }
    *resp = b.data;
    return atoi(b.data + 9);
}

void ot_wrk_start(struct ot_wrk *w, int port, const char *path, int conns, int max_secs)
{
    char url[256], c[16], d[16];
    int p[2];

    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    snprintf(c, sizeof c, "%d", conns);
    snprintf(d, sizeof d, "%ds", max_secs);
    if (pipe2(p, O_CLOEXEC) < 0)
        bail("pipe: %s", strerror(errno));
    fflush(NULL);
    w->pid = fork();
    if (w->pid < 0)
        bail("fork: %s", strerror(errno));
    if (w->pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        dup2(p[1], STDERR_FILENO);
        alarm(0);
        signal(SIGALRM, SIG_DFL);
        execlp("wrk", "wrk", "-t1", "-c", c, "-d", d, "--timeout", "5s", url, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    w->fd = p[0];
}

/* The number just before or after marker in text, or 0. */
static long number_after(const char *text, const char *marker)
{
    const char *e = strstr(text, marker);
    return e ? atol(e + strlen(marker)) : 0;
}

void ot_wrk_stop(struct ot_wrk *w, struct ot_wrk_result *r)
{
    struct ot_buf b = {0};
    const char *e;
    int status = 0;

    memset(r, 0, sizeof *r);
    kill(w->pid, SIGINT);
    while (buf_read(&b, w->fd))
        ;
    close(w->fd);
    while (waitpid(w->pid, &status, 0) < 0 && errno == EINTR)
        ;
    snprintf(r->out, sizeof r->out, "%s", b.data ? b.data : "");
    free(b.data);
    r->ran = WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(r->out, " requests in");
    if ((e = strstr(r->out, " requests in"))) {
        while (e > r->out && e[-1] >= '0' && e[-1] <= '9')
            e--;
        r->requests = atol(e);
    }
    r->non2xx = number_after(r->out, "Non-2xx or 3xx responses:");
    if ((e = strstr(r->out, "Socket errors:")) &&
        sscanf(e, "Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &r->err_connect,
               &r->err_read, &r->err_write, &r->err_timeout) != 4)
        r->err_connect = -1; /* unparseable: count as an error */
}

/* The sampler thread's body. */
static void *sampler_main(void *arg)
{
    struct ot_sampler *s = arg;
    PGconn *c = NULL;

    while (atomic_load(&s->running)) {
        long long next = pgt_now_ms() + s->period_ms;
        if (!c || PQstatus(c) != CONNECTION_OK) {
            PQfinish(c);
            c = PQconnectdb(s->url);
        }
        if (PQstatus(c) == CONNECTION_OK) {
            PGresult *r = PQexec(c, s->sql);
            int i = atomic_load(&s->nsamples);
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && i < OT_MAX_SAMPLES) {
                s->samples[i].t_ms = pgt_now_ms();
                s->samples[i].n = atoi(PQgetvalue(r, 0, 0));
                atomic_store(&s->nsamples, i + 1);
            } else {
                atomic_fetch_add(&s->errors, 1);
            }
            PQclear(r);
        } else {
            atomic_fetch_add(&s->errors, 1);
        }
        long long left = next - pgt_now_ms();
        if (left > 0) {
            struct timespec ts = {(time_t)(left / 1000), (long)(left % 1000) * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    PQfinish(c);
    return NULL;
}

void ot_sampler_start(struct ot_sampler *s, const char *url, const char *sql, int period_ms)
{
    memset(s, 0, sizeof *s);
    snprintf(s->url, sizeof s->url, "%s", url);
    snprintf(s->sql, sizeof s->sql, "%s", sql);
    s->period_ms = period_ms;
    s->samples = calloc(OT_MAX_SAMPLES, sizeof *s->samples);
    if (!s->samples)
        bail("out of memory");
    atomic_store(&s->running, true);
    if (pthread_create(&s->thread, NULL, sampler_main, s) != 0)
        bail("cannot start the sampler thread");
}

void ot_sampler_stop(struct ot_sampler *s)
{
    if (!atomic_load(&s->running))
        return;
    atomic_store(&s->running, false);
    pthread_join(s->thread, NULL);
}

void ot_sampler_free(struct ot_sampler *s)
{
    ot_sampler_stop(s);
    free(s->samples);
    s->samples = NULL;
}

int ot_workers(const char *control, struct ot_worker *out, int max)
{
    json_t *doc = pgt_ctl(control, "workers"), *w;
    size_t i;
    int n = 0;

    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        const char *role = json_string_value(json_object_get(w, "role"));
        const char *state = json_string_value(json_object_get(w, "state"));
        if (n >= max)
            break;
        out[n].pid = (pid_t)json_integer_value(json_object_get(w, "pid"));
        out[n].index = (int)json_integer_value(json_object_get(w, "index"));
        snprintf(out[n].role, sizeof out[n].role, "%s", role ? role : "?");
        snprintf(out[n].state, sizeof out[n].state, "%s", state ? state : "?");
        n++;
    }
    json_decref(doc);
    return n;
}

bool ot_all_ready(const char *control, int web, int jobs)
{
    struct ot_worker w[64];
    int n = ot_workers(control, w, 64), nweb = 0, njobs = 0;

    for (int i = 0; i < n; i++) {
        if (strcmp(w[i].state, "ready") != 0)
            return false;
        nweb += strcmp(w[i].role, "web") == 0;
        njobs += strcmp(w[i].role, "job") == 0;
    }
    return n == web + jobs && nweb == web && njobs == jobs;
}

long long ot_config_int(const char *control, const char *key)
{
    json_t *doc = pgt_ctl(control, "config");
    json_t *v = json_object_get(json_object_get(doc, "config"), key);
    long long n = json_is_integer(v) ? json_integer_value(v) : -1;
    json_decref(doc);
    return n;
}

json_t *ot_log_lines(const char *text, const char *msg)
{
    json_t *arr = json_array();
    const char *line = text;

    while (line && *line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        json_t *doc = json_loadb(line, len, 0, NULL);
        const char *m = json_string_value(json_object_get(doc, "msg"));
        if (json_is_object(doc) && m && (!msg || strcmp(m, msg) == 0))
            json_array_append(arr, doc);
        json_decref(doc);
        line = end ? end + 1 : NULL;
    }
    return arr;
}
