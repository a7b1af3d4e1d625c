/*
 * pgcorral's entry point: dispatches the first word of the command line (run, ctl, ...)
 * through one table.
 */
#include <stdio.h>
#include <string.h>

#include "coordinator/cmds_int.h"
#include "coordinator/coordinator.h"
#include "coordinator/jobs_int.h"
#include "workers/workers.h"

static int cmd_help(int argc, char **argv);

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
    {"migrate", sup_migrate_main, "create or upgrade the pgcorral schema, then exit"},
    {"ctl", ctl_main, "ask a running supervisor over its control socket (ctl help)"},
    {"help", cmd_help, "this list"},
};

static int cmd_help(int argc, char **argv)
{
    printf("usage: pgcorral COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-8s %s\n", commands[i].word, commands[i].summary);
    printf("\n`pgcorral run --help` lists the supervisor's flags.\n");
    return 0;
}

int main(int argc, char **argv)
{
    worker_title_init(argc, argv);
    if (argc < 2) {
        cmd_help(0, NULL);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(0, NULL);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].word) == 0)
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "pgcorral: unknown command '%s' (try 'pgcorral help')\n", argv[1]);
    return 2;
}
