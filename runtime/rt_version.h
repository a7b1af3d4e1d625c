/*
 * pgcorral's version: the release number, kept here and nowhere else, and the git commit
 * the binary was built from, which the Makefile passes to runtime/version.c alone.
 */
#ifndef PGCORRAL_RT_VERSION_H
#define PGCORRAL_RT_VERSION_H

/* The release, MAJOR.MINOR.PATCH. `pgcorral --version`, `stats` and /metrics show it. */
#define PGCORRAL_VERSION "0.3.0"

/* The short git commit of the build ("1a2b3c4"), or "unknown" when it was not built from
 * a git checkout. A static string; any thread, any process. */
const char *rt_version_git(void);

/* "pgcorral 0.3.0 (git 1a2b3c4)": what `pgcorral --version` prints. A static string; any
 * thread, any process. */
const char *rt_version_string(void);

#endif
