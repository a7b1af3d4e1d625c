/*
 * `pgcorral ctl`: sends one command to a running supervisor's control socket and prints
 * the answer as a table for people, or as the raw JSON line with --json.
 */
#include <ctype.h>
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

    printf("%-5s %5s %8s %-9s %8s %10s\n", "ROLE", "INDEX", "PID", "STATE", "RESTARTS", "UPTIME_S");
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
            char *text = rt_json_dumps(v, JSON_ENCODE_ANY);
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

/* `ctl cluster`: this node's lease, its fence, then the nodes its last renewal saw. */
static void print_cluster(json_t *doc)
{
    json_t *c = json_object_get(doc, "cluster");

    printf("node %s leases %lld of the cluster budget %lld (target %lld), %lld in use; local "
           "budget %lld\n",
           json_string_value(json_object_get(c, "node")),
           (long long)json_integer_value(json_object_get(c, "slots_leased")),
           (long long)json_integer_value(json_object_get(c, "cluster_budget")),
           (long long)json_integer_value(json_object_get(c, "slots_target")),
           (long long)json_integer_value(json_object_get(c, "slots_in_use")),
           (long long)json_integer_value(json_object_get(c, "budget")));
    if (json_is_true(json_object_get(c, "fenced")))
        printf("FENCED: the lease was not renewed in time; no new database connection until "
               "it is");
    else
        printf("lease trusted for %.1f s more",
               (double)json_integer_value(json_object_get(c, "trusted_for_ms")) / 1000);
    printf(" (--lease-ttl %lld s, --lease-heartbeat %lld s)\n",
           (long long)json_integer_value(json_object_get(c, "lease_ttl_s")),
           (long long)json_integer_value(json_object_get(c, "lease_heartbeat_s")));
    sup_cluster_print_nodes(json_object_get(c, "nodes"));
}

/* The commands the supervisor answers, then the client's own, to f. */
static void print_commands(FILE *f, json_t *doc)
{
    const char *word;
    json_t *summary;

    json_object_foreach(json_object_get(doc, "commands"), word, summary)
    {
        fprintf(f, "  %-10s %s\n", word, json_string_value(summary));
    }
    fprintf(f,
            "commands of the client itself:\n"
            "  %-10s live view, refreshed every second: top [--count N] [--interval MS]\n"
            "  %-10s the database's view, from DATABASE_URL directly: db [N]\n",
            "top", "db");
}

static void print_answer(const char *cmd, json_t *doc)
{
    if (json_object_get(doc, "workers") && strcmp(cmd, "workers") == 0)
        print_workers(doc);
    else if (json_object_get(doc, "commands") && strcmp(cmd, "help") == 0)
        print_commands(stdout, doc);
    else if (strcmp(cmd, "slow") == 0)
        print_slow(doc);
    else if (json_object_get(doc, "cluster") && strcmp(cmd, "cluster") == 0)
        print_cluster(doc);
    else
        print_object(doc, 0);
}

/* ctl's usage, to f: stdout for --help, stderr after a usage error. */
static void usage(FILE *f)
{
    json_t *doc = ctl_commands_json();
    char path[SUP_SOCKET_PATH_MAX];

    if (sup_default_control_path(path, sizeof path) < 0)
        snprintf(path, sizeof path, "(too long for a socket)");
    fprintf(f,
            "usage: pgcorral ctl [--control PATH] [--json] COMMAND [ARGS]\n"
            "Flags may come before or after COMMAND. --control defaults to $PGCORRAL_CONTROL,\n"
            "else %s\n(RUNTIME_DIRECTORY, XDG_RUNTIME_DIR/pgcorral, /run/pgcorral for root,\n"
            "else /tmp/pgcorral-UID). --json prints the supervisor's JSON answer as it is.\n"
            "commands (answered by the supervisor):\n",
            path);
    print_commands(f, doc);
    json_decref(doc);
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
        snprintf(msg, sizeof msg, "cannot connect to %s: %s (is pgcorral running? --control)", path,
                 strerror(-fd));
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

/* Whether a is a flag: "-x" or "--x", not "-" alone or a negative number. */
static bool is_flag(const char *a)
{
    return a[0] == '-' && a[1] && !isdigit((unsigned char)a[1]);
}

/* What the command line says, flags taken from any position. */
struct ctl_args {
    const char *path;
    bool json, help;
    int nwords; /* the command and its arguments, in order */
    char **words;
    int ntop; /* top's flags with their values, for ctl_top */
    char **top;
};

/*
 * Splits argv into flags and words. Returns 0, or 2 (the exit status of a usage error)
 * after printing the error once to stderr. a's arrays are allocated (caller frees).
 */
static int parse_args(int argc, char **argv, struct ctl_args *a)
{
    bool only_words = false;

    a->words = calloc((size_t)argc + 2, sizeof *a->words);
    a->top = calloc((size_t)argc + 2, sizeof *a->top);
    if (!a->words || !a->top) {
        fprintf(stderr, "pgcorral ctl: out of memory\n");
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        size_t n = strcspn(arg, "=");
        const char *value = arg[n] == '=' ? arg + n + 1 : NULL;
        bool top_flag =
            (n == 7 && !strncmp(arg, "--count", n)) || (n == 10 && !strncmp(arg, "--interval", n));

        if (only_words || !is_flag(arg)) {
            a->words[a->nwords++] = argv[i];
        } else if (!strcmp(arg, "--")) {
            only_words = true;
        } else if (!strcmp(arg, "--json")) {
            a->json = true;
        } else if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            a->help = true;
        } else if ((n == 9 && !strncmp(arg, "--control", n)) || top_flag) {
            if (!value && i + 1 < argc)
                value = argv[++i];
            if (!value || !*value) {
                fprintf(stderr, "pgcorral ctl: %.*s needs a value\n", (int)n, arg);
                return 2;
            }
            if (top_flag) {
                a->top[a->ntop++] = (char *)(n == 7 ? "--count" : "--interval");
                a->top[a->ntop++] = (char *)value;
            } else {
                a->path = value;
            }
        } else {
            fprintf(stderr, "pgcorral ctl: unknown flag '%s' (try 'pgcorral ctl --help')\n", arg);
            return 2;
        }
    }
    return 0;
}

/* Joins the command's words into one line, newline included. Returns 0 or 2 (too long). */
static int build_line(const struct ctl_args *a, char *line, size_t size)
{
    size_t len = 0;

    for (int i = 0; i < a->nwords; i++) {
        int n = snprintf(line + len, size - len, "%s%s", len ? " " : "", a->words[i]);
        if (n < 0 || (size_t)n >= size - len - 1) {
            fprintf(stderr, "pgcorral ctl: command too long\n");
            return 2;
        }
        len += (size_t)n;
    }
    line[len++] = '\n';
    line[len] = '\0';
    return 0;
}

/*
 * `ctl help` when no supervisor answers: the list this client knows (the same table the
 * supervisor's `help` comes from), and one line on stderr that says why it is local.
 * Exit status 0: help was asked for, and given.
 */
static int local_help(const struct ctl_args *a, const char *why)
{
    json_t *doc = ctl_commands_json();
    char *text = a->json ? rt_json_dumps(doc, JSON_COMPACT) : NULL;

    if (text)
        printf("%s\n", text);
    else
        print_commands(stdout, doc);
    fprintf(stderr,
            "pgcorral ctl: the supervisor is not reachable (%s); listed are this "
            "client's commands\n",
            why);
    free(text);
    json_decref(doc);
    return 0;
}

int ctl_main(int argc, char **argv)
{
    char default_path[SUP_SOCKET_PATH_MAX], line[4096];
    const char *why = NULL, *cmd;
    struct ctl_args a;
    int status;
    char *answer = NULL;
    json_t *doc = NULL;
    json_error_t jerr;

    memset(&a, 0, sizeof a);
    a.path = getenv("PGCORRAL_CONTROL");
    if ((!a.path || !*a.path) && sup_default_control_path(default_path, sizeof default_path) == 0)
        a.path = default_path;
    status = parse_args(argc, argv, &a);
    if (status)
        goto out;
    cmd = a.nwords > 0 ? a.words[0] : NULL;

    /* top and db are the client's own; they take --help themselves. */
    if (cmd && strcmp(cmd, "top") == 0) {
        for (int i = 1; i < a.nwords; i++)
            a.top[a.ntop++] = a.words[i];
        if (a.help)
            a.top[a.ntop++] = "--help";
        status = ctl_top(a.path ? a.path : "", a.ntop, a.top);
        goto out;
    }
    if (a.ntop > 0) {
        fprintf(stderr, "pgcorral ctl: %s is a flag of 'ctl top'\n", a.top[0]);
        status = 2;
        goto out;
    }
    if (cmd && strcmp(cmd, "db") == 0) {
        /* `db` asks the database itself (DATABASE_URL), not the supervisor. */
        if (a.help)
            a.words[a.nwords++] = "--help";
        status = ctl_db_main(a.json, a.nwords - 1, a.words + 1);
        goto out;
    }
    if (a.help) {
        usage(stdout);
        status = 0;
        goto out;
    }
    if (!cmd) {
        fprintf(stderr, "pgcorral ctl: no command given\n");
        usage(stderr);
        status = 2;
        goto out;
    }
    status = build_line(&a, line, sizeof line);
    if (status)
        goto out;
    if (!a.path || !*a.path) {
        fprintf(stderr, "pgcorral ctl: the default control socket path (from RUNTIME_DIRECTORY "
                        "or XDG_RUNTIME_DIR) is too long for a socket: use --control\n");
        status = 2;
        goto out;
    }

    status = 1;
    answer = ctl_request(a.path, line, &why);
    if (!answer) {
        if (strcmp(cmd, "help") == 0 && a.nwords == 1)
            status = local_help(&a, why);
        else
            fprintf(stderr, "pgcorral ctl: %s\n", why);
        goto out;
    }
    doc = json_loads(answer, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "pgcorral ctl: the answer is not JSON: %s\n", jerr.text);
        goto out;
    }
    if (json_object_get(doc, "error")) {
        /* Scripts get the document on stdout; people, the message on stderr. */
        fprintf(stderr, "pgcorral ctl: %s\n", json_string_value(json_object_get(doc, "error")));
        if (a.json)
            printf("%s\n", answer);
        goto out;
    }
    if (a.json)
        printf("%s\n", answer);
    else
        print_answer(cmd, doc);
    status = 0;

out:
    json_decref(doc);
    free(answer);
    free(a.words);
    free(a.top);
    return status;
}
