/*
 * Validation at the edge, shared by every way in: the length limits of a job's fields
 * (POST /api/v1/jobs, `pgcorral enqueue`, pgc_enqueue) and checked integer parsing (the
 * control protocol and the command line). Checked before any SQL, so that a bad value is
 * a 400, an exit status 2 or PGC_EINVAL that names it, never a database error.
 */
#ifndef PGCORRAL_RT_INPUT_H
#define PGCORRAL_RT_INPUT_H

#include <stddef.h>

/*
 * The limits, in bytes. The database would take longer values but then fail obscurely: a
 * key over about 2.7 kB does not fit a btree index entry, a queue name is a NOTIFY payload
 * (at most 8000 bytes). A payload (its compact JSON text) is an argument, not a store for
 * documents: 256 KiB, well inside the HTTP body limit of 1 MiB, so that over HTTP the
 * answer is this 400 and not a 413.
 */
#define RT_JOB_TASK_MAX 128
#define RT_JOB_QUEUE_MAX 128
#define RT_JOB_KEY_MAX 512
#define RT_JOB_PAYLOAD_MAX (256 * 1024)

/*
 * Checks the lengths of a job's fields (NULL = absent; payload_len is the payload text's
 * length, 0 when absent). Returns NULL when they fit, or the name of the first field over
 * its limit ("task", "queue", "key", "payload") with its length in *len and the limit in
 * *limit. Any thread.
 */
const char *rt_job_field_too_long(const char *task, const char *queue, const char *key,
                                  size_t payload_len, size_t *len, size_t *limit);

#endif
