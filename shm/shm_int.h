/* Functions shared between the files of shm/ only; nothing outside shm/ includes this. */
#ifndef PGCORRAL_SHM_INT_H
#define PGCORRAL_SHM_INT_H

#include <sys/types.h>

#include "shm/shm.h"

/*
 * Frees the slow-ring entries that process pid left half-written (odd seq naming pid).
 * Supervisor only, after waitpid() of pid, so that pid can no longer write. Returns how
 * many entries it freed.
 */
int shm__slow_abandon(struct shm_segment *seg, pid_t pid);

/*
 * Folds a dead worker's HTTP block w into retired (by route name) and empties w. The
 * supervisor, inside the retire seqlock (shm_worker_retire).
 */
void shm__http_retire(struct shm_http *retired, struct shm_http *w);

#endif
