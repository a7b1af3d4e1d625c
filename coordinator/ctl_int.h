/*
 * Shared by the files of the `pgcorral ctl` client: one request to the control socket, and
 * the live `top` view built on it.
 */
#ifndef PGCORRAL_CTL_INT_H
#define PGCORRAL_CTL_INT_H

#include "coordinator/coordinator.h"

/*
 * Sends line (with its newline) to the control socket at path and returns the answer
 * line (caller frees), or NULL with the reason in *why (a static string).
 */
char *ctl_request(const char *path, const char *line, const char **why);

/* `pgcorral ctl top [--count N] [--interval MS]`: refreshes every second. Returns the exit
 * status. */
int ctl_top(const char *path, int argc, char **argv);

#endif
