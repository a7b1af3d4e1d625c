/*
 * How pgcorral prints JSON: every document the control socket, the HTTP routes and the
 * logs write goes through here, so that real numbers come out at one sensible precision
 * ("uptime_s":10.448206, never 10.448206000000001).
 */
#ifndef PGCORRAL_RT_JSON_H
#define PGCORRAL_RT_JSON_H

#include <stdio.h>

#include <jansson.h>

/* Decimal places a real keeps: microseconds for seconds, the resolution of every clock
 * pgcorral reads. */
#define RT_JSON_DECIMALS 6

/*
 * Rounds every real in doc (objects and arrays, recursively) to RT_JSON_DECIMALS places,
 * in place: values shared with the caller change too, which only drops digits below a
 * microsecond. NULL does nothing. Not for data that passes through (job payloads).
 */
void rt_json_round(json_t *doc);

/*
 * json_dumps(doc, flags) after rt_json_round(doc), with reals printed to 15 significant
 * digits (enough for any rounded value, too few to show binary noise). Returns a new
 * string (caller frees), or NULL on ENOMEM or a NULL doc.
 */
char *rt_json_dumps(json_t *doc, size_t flags);

/* The same, written to f. Returns 0, or -1 when writing fails. */
int rt_json_dumpf(json_t *doc, FILE *f, size_t flags);

#endif
