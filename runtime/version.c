/*
 * The build's identity. The Makefile compiles this file alone with PGCORRAL_GIT_SHA and
 * rebuilds it whenever HEAD moves, so that no other object depends on the commit.
 */
#include "runtime/rt_version.h"

#ifndef PGCORRAL_GIT_SHA
#define PGCORRAL_GIT_SHA "unknown"
#endif

const char *rt_version_git(void)
{
    return PGCORRAL_GIT_SHA;
}

const char *rt_version_string(void)
{
    return "pgcorral " PGCORRAL_VERSION " (git " PGCORRAL_GIT_SHA ")";
}
