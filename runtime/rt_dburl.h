/*
 * DATABASE_URL: a postgresql:// (or postgres://) URI. pgcorral takes its own query
 * parameters out, validates them, and hands everything else to libpq as keyword/value
 * arrays for PQconnectStartParams().
 */
#ifndef PGCORRAL_RT_DBURL_H
#define PGCORRAL_RT_DBURL_H

#include <stdbool.h>
#include <stddef.h>

/* Error codes shared by the runtime: negative, beside negative errno values. */
#define RT_EINVAL_URL (-1001) /* malformed DATABASE_URL or setting */

struct rt_dburl {
    /* pgcorral's settings, defaults applied (DESIGN "Configuration"). Read-only. */
    int connection_limit;     /* 1..10000, default 10 */
    int pool_timeout_s;       /* 0..86400, default 10; 0 = wait forever */
    int connect_timeout_s;    /* 1..3600, default 5; also passed to libpq */
    bool pgbouncer;           /* default false */
    int statement_cache_size; /* 0..10000, default 100 (0 when pgbouncer and not given) */
    int max_idle_time_s;      /* 0..86400, default 300; 0 = never reap */
    int max_lifetime_s;       /* 0..604800, default 1800; 0 = never recycle */
    /* Auto-pipelining (DESIGN "Pool": Pipelining): statements queued per busy connection
     * when the pool is at its limit. 0..64, default 8; 0 = off. With pgbouncer=true it is
     * 0, and a pipeline_depth above 0 is refused (tests/t222). */
    int pipeline_depth;

    /*
     * For PQconnectStartParams(keywords, values, 0): NULL-terminated arrays of the libpq
     * options that are set, after percent-decoding. Always contains connect_timeout, and
     * application_name ("pgcorral" unless the URL sets one). Read-only; owned by the struct.
     */
    const char *const *keywords;
    const char *const *values;

    /* The URL with the password (userinfo or password= parameter) replaced by "***",
     * i.e. rt_dburl_redact(url). Safe for logs, stats and errors. Owned by the struct. */
    const char *redacted;
};

/*
 * Parses url. Returns 0 and writes *out (caller frees with rt_dburl_destroy), or
 * RT_EINVAL_URL with a message in err (errlen bytes, always NUL-terminated) that names the
 * problem and the offending parameter or value, and never contains the password, or
 * -ENOMEM. Any thread.
 *
 * Besides libpq's own rules: pgcorral's parameters may appear once each; a raw '@' after
 * the user name and password is refused (it means an unencoded '@' or '/' in the
 * password); ports must be 1..65535 and either one or one per host.
 */
__attribute__((warn_unused_result)) int rt_dburl_parse(const char *url, struct rt_dburl **out,
                                                       char *err, size_t errlen);

/*
 * Same as rt_dburl_parse, for a URL that comes from another setting: its messages start
 * with name (e.g. "DATABASE_REPLICA_URL") instead of "DATABASE_URL". name is borrowed.
 */
__attribute__((warn_unused_result)) int rt_dburl_parse_as(const char *name, const char *url,
                                                          struct rt_dburl **out, char *err,
                                                          size_t errlen);

/* rt_dburl_destroy(NULL) does nothing. */
void rt_dburl_destroy(struct rt_dburl *u);

/*
 * Writes a copy of url with its password replaced by "***" into buf (size bytes, always
 * NUL-terminated, truncated if needed). Works on malformed URLs too, so errors about them
 * can quote them. Returns buf.
 */
char *rt_dburl_redact(const char *url, char *buf, size_t size);

/* The value of libpq keyword kw in u (e.g. "dbname"), or NULL when not set. Borrowed. */
const char *rt_dburl_get(const struct rt_dburl *u, const char *kw);

/*
 * Overrides (or adds) libpq keyword kw with value, e.g. application_name per worker; a NULL
 * value removes kw. Both strings are copied. Returns 0 or -ENOMEM (u unchanged). Does not
 * change the pgcorral settings above. Not thread-safe against readers of the same struct.
 */
__attribute__((warn_unused_result)) int rt_dburl_set(struct rt_dburl *u, const char *kw,
                                                     const char *value);

#endif
