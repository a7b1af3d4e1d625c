/*
 * Identifiers and secrets: random hex ids that tie a request or an error to its log lines
 * (request ids, error ids), and the constant-time comparison of a bearer token.
 */
#ifndef PGCORRAL_RT_ID_H
#define PGCORRAL_RT_ID_H

#include <stdbool.h>
#include <stddef.h>

/* Hex digits of an error id ({"error":"internal error","error_id":"a1b2c3d4e5f6"}). */
#define RT_ERROR_ID_LEN 12
/* Hex digits of a request id pgcorral makes up (X-Request-Id when the client sent none). */
#define RT_REQUEST_ID_LEN 16
/* The longest X-Request-Id taken from a client. */
#define RT_REQUEST_ID_MAX 128

/*
 * Writes n random-looking hex digits and a NUL into out (n + 1 bytes; n at most 32): a
 * per-process counter mixed with a seed read from getrandom(2) on first use in this process
 * (again after fork), so that ids of different workers do not collide. Not for secrets.
 * Any thread, lock-free.
 */
void rt_id_hex(char *out, size_t n);

/*
 * Whether a client's request id can be used as is: 1 to RT_REQUEST_ID_MAX characters of
 * [A-Za-z0-9._-] (so that it is safe in a header, a log line and a label). len bytes at s.
 */
bool rt_request_id_valid(const char *s, size_t len);

/*
 * Whether given (given_len bytes, from a client) equals secret (secret_len bytes), in time
 * that depends only on given_len: every byte of given is compared (with a byte of secret,
 * cycling), the differences are OR-ed together with the length difference, and nothing
 * branches on the data. So the time tells neither where the first difference is nor the
 * secret's length. Any thread.
 */
bool rt_secret_equal(const char *given, size_t given_len, const char *secret, size_t secret_len);

#endif
