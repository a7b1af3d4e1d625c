/*
 * pgcorral's entry point: dispatches the first word of the command line (run, ctl, ...)
 * through one table, and answers --help and --version itself.
 */
#include <stdio.h>
#include <string.h>

#include "coordinator/cmds_int.h"
#include "coordinator/coordinator.h"
#include "coordinator/jobs_int.h"
#include "workers/workers.h"

static int cmd_help(int argc, char **argv);
static int cmd_version(int argc, char **argv);

/* The subcommands, in the order `pgcorral help` lists them. */
static const struct {
    const char *word;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"run", sup_main, "start the supervisor and its web and job workers"},
    {"check", sup_check_main, "check a configuration against the database without starting it"},
    {"tune", sup_tune_main, "print recommended PostgreSQL settings as ALTER SYSTEM lines"},
    {"enqueue", sup_enqueue_main, "add a job: enqueue TASK JSON [--queue Q] [--run-at T] ..."},
    {"jobs", sup_jobs_main, "list, show, retry, cancel or delete jobs; jobs cron: the schedules"},
    {"cluster", sup_cluster_main,
     "the cluster budget and every node's lease; cluster set-budget N"},
    {"migrate", sup_migrate_main, "create or upgrade the pgcorral schema, then exit"},
    {"ctl", ctl_main, "ask a running supervisor over its control socket (ctl help)"},
    {"version", cmd_version, "print the version and the git commit (also --version, -V)"},
    {"help", cmd_help, "this list; help COMMAND = COMMAND --help"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* The command list, to f: stdout when asked for, stderr after a usage error. */
static void usage(FILE *f)
{
    fprintf(f, "usage: pgcorral COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-8s %s\n", commands[i].word, commands[i].summary);
    fprintf(f, "\nEvery command takes -h/--help; flags may come before or after its other "
               "words.\n`pgcorral run --help` lists the supervisor's flags.\n");
}

static int find_command(const char *word)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(word, commands[i].word) == 0)
            return (int)i;
    return -1;
}

/* `pgcorral help [COMMAND]`: the list, or that command's own --help. */
static int cmd_help(int argc, char **argv)
{
    int k;

    if (argc == 0 || sup_wants_help(argc, argv)) {
        usage(stdout);
        return 0;
    }
    k = find_command(argv[0]);
    if (argc > 1 || k < 0) {
        fprintf(stderr, "pgcorral help: %s '%s' (try 'pgcorral help')\n",
                k < 0 ? "unknown command" : "unexpected argument", argv[k < 0 ? 0 : 1]);
        return 2;
    }
    if (commands[k].run == cmd_help) {
        usage(stdout);
        return 0;
    }
    char *help_argv[] = {"--help", NULL};
    return commands[k].run(1, help_argv);
}

static int cmd_version(int argc, char **argv)
{
    if (sup_wants_help(argc, argv)) {
        printf("usage: pgcorral version   (or pgcorral --version, pgcorral -V)\n"
               "Prints `pgcorral X.Y.Z (git COMMIT)`.\n");
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr, "pgcorral version: unexpected argument '%s'\n", argv[0]);
        return 2;
    }
    printf("%s\n", rt_version_string());
    return 0;
}

int main(int argc, char **argv)
{
    int k;

    worker_title_init(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(0, NULL);
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)
        return cmd_version(argc - 2, argv + 2);
    k = find_command(argv[1]);
    if (k >= 0)
        return commands[k].run(argc - 2, argv + 2);
    fprintf(stderr, "pgcorral: unknown %s '%s' (try 'pgcorral help')\n",
            argv[1][0] == '-' ? "flag" : "command", argv[1]);
    return 2;
}
