/*
 * Shared by the files of the `pgcorral ctl` client: one request to the control socket, and
 * the live `top` view built on it.
 */
#ifndef PGCORRAL_CTL_INT_H
#define PGCORRAL_CTL_INT_H

#include <jansson.h>

#include "coordinator/coordinator.h"

/*
 * Sends line (with its newline) to the control socket at path and returns the answer
 * line (caller frees), or NULL with the reason in *why (a static string).
 */
char *ctl_request(const char *path, const char *line, const char **why);

/*
 * {"commands":{word:summary,...}}: the control socket's `help` answer, built from the
 * command table in control_cmds.c, so that `ctl help` can print it without a supervisor.
 * Returns a new reference, NULL on ENOMEM.
 */
json_t *ctl_commands_json(void);

/* `pgcorral ctl top [--count N] [--interval MS]`: refreshes every second. Returns the exit
 * status. */
int ctl_top(const char *path, int argc, char **argv);

#endif
