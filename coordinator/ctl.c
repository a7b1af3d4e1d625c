/*
 * `pgcorral ctl`: sends one command to a running supervisor's control socket and prints
 * the answer as a table for people, or as the raw JSON line with --json.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "coordinator/cmds_int.h"
#include "coordinator/ctl_int.h"

#define CTL_TIMEOUT_MS 10000
#define CTL_ANSWER_MAX (4 * 1024 * 1024)

static void print_workers(json_t *doc)
{
    json_t *arr = json_object_get(doc, "workers"), *w;
    size_t i;

    printf("%-5s %5s %8s %-9s %8s %10s\n", "ROLE", "INDEX", "PID", "STATE", "RESTARTS",
           "UPTIME_S");
    json_array_foreach(arr, i, w)
    {
        printf("%-5s %5lld %8lld %-9s %8lld %10.1f\n",
               json_string_value(json_object_get(w, "role")),
               (long long)json_integer_value(json_object_get(w, "index")),
               (long long)json_integer_value(json_object_get(w, "pid")),
               json_string_value(json_object_get(w, "state")),
               (long long)json_integer_value(json_object_get(w, "restarts")),
               json_number_value(json_object_get(w, "uptime_s")));
    }
}

/* Prints an object's scalar members as "key  value" lines, nested objects indented. */
static void print_object(json_t *obj, int indent)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v)
    {
        if (json_is_object(v)) {
            printf("%*s%s:\n", indent, "", key);
            print_object(v, indent + 2);
        } else if (json_is_array(v)) {
            printf("%*s%s: (%zu entries; --json shows them)\n", indent, "", key,
                   json_array_size(v));
        } else {
            char *text = json_dumps(v, JSON_ENCODE_ANY);
            printf("%*s%-24s %s\n", indent, "", key, text ? text : "?");
            free(text);
        }
    }
}

static void print_slow(json_t *doc)
{
    json_t *arr = json_object_get(doc, "slow"), *e;
    size_t i;

    printf("%10s %-5s %6s %8s  %s\n", "MS", "ROLE", "WORKER", "PID", "QUERY");
    json_array_foreach(arr, i, e)
    {
        printf("%10.1f %-5s %6lld %8lld  %s\n",
               json_number_value(json_object_get(e, "duration_ms")),
               json_string_value(json_object_get(e, "role")),
               (long long)json_integer_value(json_object_get(e, "worker")),
               (long long)json_integer_value(json_object_get(e, "pid")),
               json_string_value(json_object_get(e, "query")));
    }
}

static void print_answer(const char *cmd, json_t *doc)
{
    if (json_object_get(doc, "workers") && strcmp(cmd, "workers") == 0)
        print_workers(doc);
    else if (strcmp(cmd, "slow") == 0)
        print_slow(doc);
    else
        print_object(doc, 0);
}

static void usage(void)
{
    fprintf(stderr, "usage: pgcorral ctl [--control PATH] [--json] COMMAND [ARGS]\n"
                    "commands: pgcorral ctl help (the supervisor's), plus:\n"
                    "  top [--count N]   live view, refreshed every second\n"
                    "  db                database-side view, from DATABASE_URL directly\n");
}

/* Connects to path. Returns the socket or -errno. */
static int ctl_connect(const char *path)
{
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/*
 * Whoever serves the socket must be us or root: a socket path can be taken by another user
 * (a stale /tmp path, a folder they can write to), who would then read our commands and
 * feed us answers. Checked before anything is sent or read. Returns 0, or -EPERM with the
 * reason, naming the server's user, in msg.
 */
static int ctl_check_peer(int fd, const char *path, char *msg, size_t size)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    char who[96];

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        snprintf(msg, size, "cannot tell who serves %s: %s", path, strerror(errno));
        return -EPERM;
    }
    if (cred.uid == geteuid() || cred.uid == 0)
        return 0;
    snprintf(msg, size,
             "refusing to talk to %s: it is served by %s, not by you (uid %u) or root; "
             "nothing was sent (another user's socket? use --control)",
             path, sup_uid_describe(cred.uid, who, sizeof who), (unsigned)geteuid());
    return -EPERM;
}

/* Reads one line (the answer) into a new string. Returns NULL with a message on error. */
static char *read_answer(int fd, const char **why)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    struct pollfd p = {.fd = fd, .events = POLLIN};

    while (buf) {
        if (poll(&p, 1, CTL_TIMEOUT_MS) <= 0) {
            *why = "no answer within 10 s";
            break;
        }
        if (len + 1 >= cap) {
            char *bigger = cap < CTL_ANSWER_MAX ? realloc(buf, cap * 2) : NULL;
            if (!bigger) {
                *why = "answer too large";
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0) {
            *why = "the supervisor closed the connection";
            break;
        }
        len += (size_t)n;
        buf[len] = '\0';
        char *nl = strchr(buf, '\n');
        if (nl) {
            *nl = '\0';
            return buf;
        }
    }
    free(buf);
    return NULL;
}

char *ctl_request(const char *path, const char *line, const char **why)
{
    char *answer;
    size_t len = strlen(line);
    int fd = ctl_connect(path);

    static char msg[512];

    if (fd < 0) {
        snprintf(msg, sizeof msg, "cannot connect to %s: %s (is pgcorral running? --control)",
                 path, strerror(-fd));
        *why = msg;
        return NULL;
    }
    if (ctl_check_peer(fd, path, msg, sizeof msg) < 0) {
        close(fd);
        *why = msg;
        return NULL;
    }
    /* The supervisor may answer and hang up before it reads (another user is refused at
     * once): no SIGPIPE then, and its answer, already sent, is still read. */
    if (send(fd, line, len, MSG_NOSIGNAL) != (ssize_t)len) {
        answer = read_answer(fd, why);
        if (!answer)
            *why = "cannot send the command";
        close(fd);
        return answer;
    }
    answer = read_answer(fd, why);
    close(fd);
    return answer;
}

int ctl_main(int argc, char **argv)
{
    char default_path[SUP_SOCKET_PATH_MAX], line[4096];
    const char *path = getenv("PGCORRAL_CONTROL");
    const char *why = NULL;
    bool raw = false;
    int i, status = 0;
    size_t len = 0;
    char *answer;
    json_t *doc;
    json_error_t jerr;

    if ((!path || !*path) && sup_default_control_path(default_path, sizeof default_path) == 0)
        path = default_path;
    for (i = 0; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            raw = true;
        } else if (strcmp(argv[i], "--control") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(argv[i], "--control=", 10) == 0) {
            path = argv[i] + 10;
        } else {
            fprintf(stderr, "pgcorral ctl: unknown flag '%s'\n", argv[i]);
            usage();
            return 2;
        }
    }
    if (i >= argc) {
        usage();
        return 2;
    }
    /* The command and its arguments; --json may also follow the command. */
    line[0] = '\0';
    const char *cmd = argv[i];
    int i0 = i + 1;
    /* `db` asks the database itself (DATABASE_URL), not the supervisor. */
    if (strcmp(cmd, "db") == 0)
        return ctl_db_main(raw, argc - i0, argv + i0);
    if (!path || !*path) {
        fprintf(stderr, "pgcorral ctl: the default control socket path (from RUNTIME_DIRECTORY "
                        "or XDG_RUNTIME_DIR) is too long for a socket: use --control\n");
        return 2;
    }
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            raw = true;
            continue;
        }
        int n = snprintf(line + len, sizeof line - len, "%s%s", len ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof line - len - 1) {
            fprintf(stderr, "pgcorral ctl: command too long\n");
            return 2;
        }
        len += (size_t)n;
    }
    line[len++] = '\n';
    line[len] = '\0';

    if (strcmp(cmd, "top") == 0)
        return ctl_top(path, argc - i0, argv + i0);
    answer = ctl_request(path, line, &why);
    if (!answer) {
        fprintf(stderr, "pgcorral ctl: %s\n", why);
        return 1;
    }
    doc = json_loads(answer, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "pgcorral ctl: the answer is not JSON: %s\n", jerr.text);
        free(answer);
        return 1;
    }
    if (json_object_get(doc, "error")) {
        fprintf(stderr, "pgcorral ctl: %s\n", json_string_value(json_object_get(doc, "error")));
        status = 1;
        if (raw)
            printf("%s\n", answer);
    } else if (raw) {
        printf("%s\n", answer);
    } else {
        print_answer(cmd, doc);
    }
    json_decref(doc);
    free(answer);
    return status;
}
