/*
 * DATABASE_URL parsing: takes pgcorral's own query parameters out of a postgresql:// URI,
 * validates them, and hands the rest to libpq's PQconninfoParse() to build the keyword/value
 * arrays for PQconnectStartParams(). Every error message is scrubbed of the password.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>

#include "runtime/rt_dburl.h"
#include "runtime/rt_util.h"

/*
 * The allocation behind a struct rt_dburl. The public part comes first, so a
 * struct rt_dburl * is a struct dburl_impl * and back. kw and val are parallel arrays of n
 * owned strings followed by a NULL; pub.keywords and pub.values point at them.
 */
struct dburl_impl {
    struct rt_dburl pub;
    char **kw;      /* libpq keywords, kw[n] == NULL */
    char **val;     /* their values, val[n] == NULL */
    size_t n;       /* keyword/value pairs */
    size_t cap;     /* entries allocated in kw and in val, the NULL included */
    char *redacted; /* pub.redacted */
};

/* How the value of one of pgcorral's own parameters is read. */
enum dburl_kind { DBURL_INT, DBURL_BOOL };

/* One of pgcorral's own query parameters. */
struct dburl_param {
    const char *name;
    enum dburl_kind kind;
    int min, max;  /* accepted range, for DBURL_INT */
    size_t off;    /* offset of the int or bool in struct rt_dburl */
    bool to_libpq; /* also left in the URL for libpq (connect_timeout) */
};

#define DBURL_INT(name, field, lo, hi, lp)                                                         \
    {                                                                                              \
        name, DBURL_INT, lo, hi, offsetof(struct rt_dburl, field), lp                              \
    }

/* pgcorral's own query parameters and their ranges (DESIGN "Configuration", rt_dburl.h). */
static const struct dburl_param dburl_params[] = {
    DBURL_INT("connection_limit", connection_limit, 1, 10000, false),
    DBURL_INT("pool_timeout", pool_timeout_s, 0, 86400, false),
    DBURL_INT("connect_timeout", connect_timeout_s, 1, 3600, true),
    {"pgbouncer", DBURL_BOOL, 0, 1, offsetof(struct rt_dburl, pgbouncer), false},
    DBURL_INT("statement_cache_size", statement_cache_size, 0, 10000, false),
    DBURL_INT("max_idle_time", max_idle_time_s, 0, 86400, false),
    DBURL_INT("max_lifetime", max_lifetime_s, 0, 604800, false),
    DBURL_INT("pipeline_depth", pipeline_depth, 0, 64, false),
};

#define DBURL_NPARAMS (sizeof dburl_params / sizeof dburl_params[0])
#define DBURL_CONNECT_TIMEOUT 2      /* index of connect_timeout in dburl_params */
#define DBURL_STATEMENT_CACHE_SIZE 4 /* index of statement_cache_size in dburl_params */
#define DBURL_PIPELINE_DEPTH 7       /* index of pipeline_depth in dburl_params */

/* What replaces a password in redacted URLs and scrubbed messages. */
static const char dburl_mask[] = "***";

/*
 * Every form of the password found in a URL (raw and percent-decoded, in the user info and
 * in password= parameters): strings that no error message may contain. Longest first.
 */
struct dburl_secrets {
    char **s;
    size_t n, cap;
};

/* The value of hex digit c, or -1. */
static int dburl_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Percent-decodes s[0..n) into dst (at least n + 1 bytes). Strict: returns -EINVAL on a
 * bad escape or %00, as libpq does. Lenient: keeps bad escapes as they are. Returns 0.
 */
static int dburl_decode_into(const char *s, size_t n, bool strict, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = dburl_hex(s[i + 1])) >= 0 &&
            (lo = dburl_hex(s[i + 2])) >= 0 && (hi || lo)) {
            dst[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (s[i] == '%' && strict) {
            return -EINVAL;
        } else {
            dst[o++] = s[i];
        }
    }
    dst[o] = '\0';
    return 0;
}

/* dburl_decode_into into a new string: 0 and *out (caller frees), -EINVAL or -ENOMEM. */
static int dburl_decode(const char *s, size_t n, bool strict, char **out)
{
    char *d = malloc(n + 1);
    int rc;

    if (!d)
        return -ENOMEM;
    rc = dburl_decode_into(s, n, strict, d);
    if (rc < 0) {
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

/* Frees s after wiping it: it may hold a password. */
static void dburl_free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Adds s[0..n) and its percent-decoded form to sec. Returns 0 or -ENOMEM. */
static int secrets_add(struct dburl_secrets *sec, const char *s, size_t n)
{
    char *forms[2] = {NULL, NULL};
    int rc = -ENOMEM;

    if (!sec || n == 0)
        return 0;
    if (sec->n + 2 > sec->cap) {
        size_t cap = sec->cap ? sec->cap * 2 : 8;
        char **grown = realloc(sec->s, cap * sizeof *grown);
        if (!grown)
            goto fail;
        sec->s = grown;
        sec->cap = cap;
    }
    if (!(forms[0] = strndup(s, n)))
        goto fail;
    if (dburl_decode(s, n, false, &forms[1]) < 0)
        goto fail;
    sec->s[sec->n++] = forms[0];
    if (forms[1][0] && strcmp(forms[1], forms[0]) != 0)
        sec->s[sec->n++] = forms[1];
    else
        dburl_free_secret(forms[1]);
    return 0;

fail:
    dburl_free_secret(forms[0]);
    dburl_free_secret(forms[1]);
    return rc;
}

/* Wipes and frees every secret. */
static void secrets_free(struct dburl_secrets *sec)
{
    for (size_t i = 0; i < sec->n; i++)
        dburl_free_secret(sec->s[i]);
    free(sec->s);
    memset(sec, 0, sizeof *sec);
}

/* qsort order for secrets: longest first, so a secret is masked before its parts. */
static int secrets_longest_first(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

/* Whether key[0..n), percent-decoded, is "password" in any case. No allocation. */
static bool dburl_is_password_key(const char *key, size_t n)
{
    char dec[32];

    if (n >= sizeof dec)
        return false;
    dburl_decode_into(key, n, false, dec);
    return strcasecmp(dec, "password") == 0;
}

/*
 * Where the user info ends (its '@'), the way libpq reads a URI: the first '@' before any
 * '/'. NULL when there is none. auth points just after "://".
 */
static const char *dburl_libpq_at(const char *auth)
{
    const char *p = auth + strcspn(auth, "@/");
    return *p == '@' ? p : NULL;
}

/* Appends s[0..n) to b, unless b is NULL (a walk that only collects the secrets). */
static void dburl_put(struct rt_buf *b, const char *s, size_t n)
{
    if (b)
        rt_buf_put(b, s, n);
}

/*
 * Walks url as rt_dburl_redact sees it, writing the redacted copy to b (if not NULL) and
 * adding every password it finds to sec (if not NULL). Errs on the side of hiding: the
 * user info ends at the LAST '@', so an unencoded '@' or '/' in a password stays hidden;
 * password= values are found after '?', '&' or white space, in URIs and in key=value
 * strings ("host=h password='x y'"), also with a percent-encoded key. Returns 0 or -ENOMEM
 * (only from sec: an allocation failure in b sets b->failed).
 */
static int dburl_walk(const char *url, struct rt_buf *b, struct dburl_secrets *sec)
{
    const char *p = url, *auth = strstr(url, "://"), *at;
    bool uri = auth != NULL, start = !uri;
    int rc;

    auth = uri ? auth + 3 : url;
    dburl_put(b, url, (size_t)(auth - url));
    p = auth;
    at = strrchr(auth, '@');
    if (at && (uri || strcspn(auth, "= \t\r\n") >= (size_t)(at - auth))) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon) {
            dburl_put(b, auth, (size_t)(colon + 1 - auth));
            dburl_put(b, dburl_mask, strlen(dburl_mask));
            if ((rc = secrets_add(sec, colon + 1, (size_t)(at - colon - 1))) < 0)
                return rc;
            p = at;
        }
    }
    while (*p) {
        if (start) {
            size_t klen = strcspn(p, "=&? \t\r\n");
            const char *r = p + klen;
            while (*r == ' ' || *r == '\t')
                r++;
            if (klen > 0 && *r == '=' && dburl_is_password_key(p, klen)) {
                const char *v = r + 1, *vend;
                if (!uri)
                    while (*v == ' ' || *v == '\t')
                        v++;
                if (uri) {
                    vend = v + strcspn(v, "&");
                } else if (*v == '\'') {
                    for (vend = v + 1; *vend && *vend != '\''; vend++)
                        if (*vend == '\\' && vend[1])
                            vend++;
                    if (*vend)
                        vend++;
                    if ((rc = secrets_add(sec, v + 1, (size_t)(vend - v - 1))) < 0)
                        return rc;
                    if (vend - v >= 2 && vend[-1] == '\'' &&
                        (rc = secrets_add(sec, v + 1, (size_t)(vend - v - 2))) < 0)
                        return rc;
                } else {
                    vend = v + strcspn(v, "& \t\r\n");
                }
                dburl_put(b, p, (size_t)(v - p));
                dburl_put(b, dburl_mask, strlen(dburl_mask));
                if ((rc = secrets_add(sec, v, (size_t)(vend - v))) < 0)
                    return rc;
                p = vend;
                start = false;
                continue;
            }
        }
        start = strchr("?& \t\r\n", *p) != NULL;
        dburl_put(b, p, 1);
        p++;
    }
    return 0;
}

char *rt_dburl_redact(const char *url, char *buf, size_t size)
{
    struct rt_buf b = {0};
    const char *text;
    size_t n;

    (void)dburl_walk(url ? url : "", &b, NULL); /* cannot fail without secrets */
    /* Out of memory: an empty string, which cannot show a password. */
    text = rt_buf_str(&b) ? rt_buf_str(&b) : "";
    if (size > 0) {
        n = strlen(text) < size - 1 ? strlen(text) : size - 1;
        memcpy(buf, text, n);
        buf[n] = '\0';
    }
    rt_buf_free(&b);
    return buf;
}

/*
 * Collects every form of the password in url: what the redaction hides, plus the password
 * as libpq reads it. Returns 0 or -ENOMEM.
 */
static int secrets_collect(const char *url, struct dburl_secrets *sec)
{
    const char *auth = strstr(url, "://"), *at;
    int rc = dburl_walk(url, NULL, sec);

    if (rc < 0)
        return rc;
    if (auth && (at = dburl_libpq_at(auth + 3))) {
        const char *colon = memchr(auth + 3, ':', (size_t)(at - auth - 3));
        if (colon && (rc = secrets_add(sec, colon + 1, (size_t)(at - colon - 1))) < 0)
            return rc;
    }
    if (sec->n > 1)
        qsort(sec->s, sec->n, sizeof *sec->s, secrets_longest_first);
    return 0;
}

/*
 * Returns msg with every secret replaced: secrets of 4 bytes or more wherever they occur,
 * and any quoted span ('...' or "...") that contains any secret becomes "***", so that
 * short passwords do not turn whole messages into asterisks. NULL when out of memory.
 */
static char *dburl_scrub(const char *msg, const struct dburl_secrets *sec)
{
    char *s = strdup(msg), *out;
    size_t o = 0;

    if (!s)
        return NULL;
    for (size_t i = 0; i < sec->n; i++) {
        size_t sl = strlen(sec->s[i]), ml = strlen(dburl_mask);
        char *hit, *next;
        if (sl < 4)
            continue;
        while ((hit = strstr(s, sec->s[i]))) {
            next = malloc(strlen(s) - sl + ml + 1);
            if (!next) {
                free(s);
                return NULL;
            }
            memcpy(next, s, (size_t)(hit - s));
            memcpy(next + (hit - s), dburl_mask, ml);
            strcpy(next + (hit - s) + ml, hit + sl);
            explicit_bzero(s, strlen(s));
            free(s);
            s = next;
        }
    }
    out = malloc(3 * strlen(s) + 1); /* a span of one byte grows to "***" */
    if (!out) {
        free(s);
        return NULL;
    }
    for (const char *p = s; *p;) {
        const char *close = (*p == '\'' || *p == '"') ? strchr(p + 1, *p) : NULL;
        bool secret = false;
        if (!close) {
            out[o++] = *p++;
            continue;
        }
        for (size_t i = 0; i < sec->n && !secret; i++)
            secret = memmem(p + 1, (size_t)(close - p - 1), sec->s[i], strlen(sec->s[i])) != NULL;
        if (secret) {
            out[o++] = *p;
            memcpy(out + o, dburl_mask, strlen(dburl_mask));
            o += strlen(dburl_mask);
            out[o++] = *close;
        } else {
            memcpy(out + o, p, (size_t)(close - p + 1));
            o += (size_t)(close - p + 1);
        }
        p = close + 1;
    }
    out[o] = '\0';
    explicit_bzero(s, strlen(s));
    free(s);
    return out;
}

/* Writes the scrubbed message into err. Returns RT_EINVAL_URL, or -ENOMEM. */
__attribute__((format(printf, 4, 5))) static int
dburl_error(char *err, size_t errlen, const struct dburl_secrets *sec, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL, *clean;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    clean = dburl_scrub(msg, sec);
    explicit_bzero(msg, strlen(msg));
    free(msg);
    if (!clean)
        return -ENOMEM;
    if (err && errlen)
        snprintf(err, errlen, "%s", clean);
    free(clean);
    return RT_EINVAL_URL;
}

/* Parses s as a boolean: true/false, 1/0, yes/no, on/off in any case. */
static bool dburl_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/*
 * Looks at one query parameter tok[0..len). When it is one of pgcorral's, validates it,
 * stores it in u and marks it seen. *keep says whether it stays in the URL for libpq.
 * Returns 0, RT_EINVAL_URL (message in err) or -ENOMEM.
 */
static int dburl_take_param(const char *name, const char *tok, size_t len, struct rt_dburl *u,
                            bool *seen, const struct dburl_secrets *sec, char *err, size_t errlen,
                            bool *keep)
{
    const char *eq = memchr(tok, '=', len);
    size_t klen = eq ? (size_t)(eq - tok) : len;
    const struct dburl_param *prm = NULL;
    char *key = NULL, *val = NULL;
    int rc;

    *keep = true;
    rc = dburl_decode(tok, klen, true, &key);
    if (rc == -EINVAL)
        return 0; /* not ours; libpq reports the bad escape */
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < DBURL_NPARAMS; i++)
        if (strcmp(key, dburl_params[i].name) == 0)
            prm = &dburl_params[i];
    free(key);
    if (!prm)
        return 0;

    *keep = prm->to_libpq;
    if (seen[prm - dburl_params])
        return dburl_error(err, errlen, sec, "%s: %s is given twice", name, prm->name);
    seen[prm - dburl_params] = true;
    rc = eq ? dburl_decode(eq + 1, len - klen - 1, true, &val) : dburl_decode("", 0, true, &val);
    if (rc == -EINVAL)
        return dburl_error(err, errlen, sec, "%s: %s has an invalid percent-encoding, got '%.*s'",
                           name, prm->name, (int)(len - klen - 1), eq + 1);
    if (rc < 0)
        return rc;
    if (prm->kind == DBURL_INT) {
        if (rt_parse_int(val, prm->min, prm->max, (int *)(void *)((char *)u + prm->off)) != 0)
            rc = dburl_error(err, errlen, sec, "%s: %s must be an integer from %d to %d, got '%s'",
                             name, prm->name, prm->min, prm->max, val);
    } else if (!dburl_bool(val, (bool *)(void *)((char *)u + prm->off))) {
        rc = dburl_error(err, errlen, sec,
                         "%s: %s must be true or false (or 1/0, yes/no, on/off), got '%s'", name,
                         prm->name, val);
    }
    free(val);
    return rc;
}

/* Counts the comma-separated entries of s (1 for ""). */
static int dburl_count_list(const char *s)
{
    int n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/*
 * Checks libpq's port option: each comma-separated entry empty (default port) or 1..65535,
 * and one port or one per host. Returns 0, RT_EINVAL_URL or -ENOMEM.
 */
static int dburl_check_ports(const char *name, const PQconninfoOption *opts,
                             const struct dburl_secrets *sec, char *err, size_t errlen)
{
    const char *host = NULL, *hostaddr = NULL, *port = NULL;
    int nhosts, nports;

    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
        else if (strcmp(o->keyword, "port") == 0)
            port = o->val;
    }
    if (!port)
        return 0;
    for (const char *p = port; *p;) {
        size_t n = strcspn(p, ",");
        char one[16];
        int v;
        bool good = n < sizeof one;
        if (good) {
            memcpy(one, p, n);
            one[n] = '\0';
            good = n == 0 || rt_parse_int(one, 1, 65535, &v) == 0;
        }
        if (!good)
            return dburl_error(err, errlen, sec,
                               "%s: port must be an integer from 1 to 65535, got '%.*s'", name,
                               (int)n, p);
        p += n + (p[n] == ',');
    }
    nhosts = host ? dburl_count_list(host) : hostaddr ? dburl_count_list(hostaddr) : 1;
    nports = dburl_count_list(port);
    if (nports > 1 && nports != nhosts)
        return dburl_error(err, errlen, sec,
                           "%s: %d ports for %d hosts (give one port, or one per host)", name,
                           nports, nhosts);
    return 0;
}

/* Appends a copy of kw = value to d. Returns 0 or -ENOMEM (d unchanged). */
static int dburl_append(struct dburl_impl *d, const char *kw, const char *value)
{
    char *k, *v;

    if (d->n + 1 >= d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        char **nk = realloc(d->kw, cap * sizeof *nk), **nv;
        if (!nk)
            return -ENOMEM;
        d->kw = nk;
        d->pub.keywords = (const char *const *)nk;
        nv = realloc(d->val, cap * sizeof *nv);
        if (!nv)
            return -ENOMEM;
        d->val = nv;
        d->pub.values = (const char *const *)nv;
        d->cap = cap;
    }
    k = strdup(kw);
    v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    d->kw[d->n] = k;
    d->val[d->n] = v;
    d->n++;
    d->kw[d->n] = NULL;
    d->val[d->n] = NULL;
    return 0;
}

void rt_dburl_destroy(struct rt_dburl *u)
{
    struct dburl_impl *d = (struct dburl_impl *)u;

    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->kw[i]);
        dburl_free_secret(d->val[i]);
    }
    free(d->kw);
    free(d->val);
    free(d->redacted);
    free(d);
}

/* Whether url is one of the two schemes libpq accepts; *auth is then just after "://". */
static bool dburl_scheme_ok(const char *url, const char **auth)
{
    static const char *const schemes[] = {"postgresql://", "postgres://"};

    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        if (strncmp(url, schemes[i], strlen(schemes[i])) == 0) {
            *auth = url + strlen(schemes[i]);
            return true;
        }
    }
    return false;
}

/* Length of the scheme that url starts with ("mysql" in "mysql://"), or 0 if none. */
static size_t dburl_scheme_len(const char *url)
{
    size_t n = strspn(url, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    return n > 0 && n <= 32 && strncmp(url + n, "://", 3) == 0 ? n : 0;
}

int rt_dburl_parse_as(const char *name, const char *url, struct rt_dburl **out, char *err,
                      size_t errlen)
{
    struct dburl_secrets sec = {0};
    struct dburl_impl *d = NULL;
    PQconninfoOption *opts = NULL;
    char *rebuilt = NULL, *pqerr = NULL, *pw = NULL;
    bool seen[DBURL_NPARAMS] = {false};
    const char *auth, *at, *after, *q, *hit, *errpos = "";
    size_t rlen = 0, need = 0;
    bool first = true;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    name = name ? name : "DATABASE_URL";
    url = url ? url : "";
    if ((rc = secrets_collect(url, &sec)) < 0)
        goto fail;

    if (!*url) {
        rc =
            dburl_error(err, errlen, &sec,
                        "%s is empty (expected postgresql://user:password@host:5432/dbname)", name);
        goto fail;
    }
    if (!dburl_scheme_ok(url, &auth)) {
        size_t n = dburl_scheme_len(url);
        if (n)
            rc = dburl_error(err, errlen, &sec,
                             "%s: unsupported scheme '%.*s' (expected postgresql:// or "
                             "postgres://)",
                             name, (int)n, url);
        else
            rc =
                dburl_error(err, errlen, &sec,
                            "%s must be a URL that starts with postgresql:// or postgres://", name);
        goto fail;
    }

    /*
     * libpq ends the user info at the first '@' before any '/'. Another '@' later means a
     * password with an unencoded '@' or '/', which libpq would read as part of the host,
     * port or database name, and quote in its messages: refuse it without quoting.
     */
    at = dburl_libpq_at(auth);
    after = at ? at + 1 : auth;
    if (strchr(after, '@')) {
        rc = dburl_error(err, errlen, &sec,
                         "%s: unexpected '@' after the user name and password: percent-encode "
                         "'@' as %%40 and '/' as %%2F in the password, and '@' as %%40 in "
                         "parameter values",
                         name);
        goto fail;
    }
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        rc = colon ? dburl_decode(colon + 1, (size_t)(at - colon - 1), true, &pw) : 0;
        dburl_free_secret(pw);
        pw = NULL;
        if (rc == -EINVAL) {
            rc = dburl_error(err, errlen, &sec,
                             "%s: invalid percent-encoding in the password (write '%%' as %%25; "
                             "%%00 is not allowed)",
                             name);
            goto fail;
        }
        if (rc < 0)
            goto fail;
    }

    rc = -ENOMEM;
    errpos = "calloc";
    if (!(d = calloc(1, sizeof *d)))
        goto fail;
    d->pub.connection_limit = 10;
    d->pub.pool_timeout_s = 10;
    d->pub.connect_timeout_s = 5;
    d->pub.pgbouncer = false;
    d->pub.statement_cache_size = 100;
    d->pub.max_idle_time_s = 300;
    d->pub.max_lifetime_s = 1800;
    d->pub.pipeline_depth = 8;

    /* The URL for libpq: everything but our parameters, with connect_timeout. */
    need = strlen(url) + 32;
    if (!(rebuilt = malloc(need)))
        goto fail;
    q = strchr(after, '?');
    rlen = q ? (size_t)(q - url) : strlen(url);
    memcpy(rebuilt, url, rlen);
    if (q && q[1]) {
        for (const char *t = q + 1;;) {
            size_t tlen = strcspn(t, "&");
            bool keep;
            rc = dburl_take_param(name, t, tlen, &d->pub, seen, &sec, err, errlen, &keep);
            if (rc < 0)
                goto fail;
            if (keep) {
                rebuilt[rlen++] = first ? '?' : '&';
                memcpy(rebuilt + rlen, t, tlen);
                rlen += tlen;
                first = false;
            }
            if (!t[tlen])
                break;
            t += tlen + 1;
        }
    }
    if (!seen[DBURL_CONNECT_TIMEOUT])
        rlen += (size_t)snprintf(rebuilt + rlen, need - rlen, "%cconnect_timeout=%d",
                                 first ? '?' : '&', d->pub.connect_timeout_s);
    rebuilt[rlen] = '\0';
    if (d->pub.pgbouncer && !seen[DBURL_STATEMENT_CACHE_SIZE])
        d->pub.statement_cache_size = 0;
    if (d->pub.pgbouncer && !seen[DBURL_PIPELINE_DEPTH])
        d->pub.pipeline_depth = 0;
    /* Through PgBouncer 1.18 in transaction mode, a pipelined statement once came back
     * without its result and the connection was dropped (t222 in CI, not reproduced
     * since): until that is understood, pipelining there is refused, not offered. */
    if (d->pub.pgbouncer && d->pub.pipeline_depth > 0) {
        rc = dburl_error(err, errlen, &sec,
                         "%s: pipeline_depth=%d cannot be used with pgbouncer=true: pipelined "
                         "statements through PgBouncer in transaction mode are not supported; "
                         "leave pipeline_depth out (it is 0 with pgbouncer=true)",
                         name, d->pub.pipeline_depth);
        goto fail;
    }

    opts = PQconninfoParse(rebuilt, &pqerr);
    if (!opts) {
        if (!pqerr) {
            rc = -ENOMEM;
            errpos = "PQconninfoParse";
            goto fail;
        }
        for (size_t n = strlen(pqerr); n > 0 && strchr(" \t\r\n", pqerr[n - 1]); n--)
            pqerr[n - 1] = '\0';
        /* Some messages quote the whole URL: show the user's, not the rebuilt one. */
        if ((hit = strstr(pqerr, rebuilt)))
            rc = dburl_error(err, errlen, &sec, "%s: %.*s%s%s", name, (int)(hit - pqerr), pqerr,
                             url, hit + strlen(rebuilt));
        else
            rc = dburl_error(err, errlen, &sec, "%s: %s", name, pqerr);
        goto fail;
    }
    if ((rc = dburl_check_ports(name, opts, &sec, err, errlen)) < 0)
        goto fail;

    errpos = "keywords";
    for (const PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val && (rc = dburl_append(d, o->keyword, o->val)) < 0)
            goto fail;
    if (!rt_dburl_get(&d->pub, "application_name") &&
        (rc = dburl_append(d, "application_name", "pgcorral")) < 0)
        goto fail;

    rc = -ENOMEM;
    errpos = "redact";
    {
        struct rt_buf b = {0};
        (void)dburl_walk(url, &b, NULL); /* cannot fail without secrets */
        if (!rt_buf_str(&b)) {
            rt_buf_free(&b);
            goto fail;
        }
        d->redacted = b.data ? b.data : strdup("");
        if (!d->redacted)
            goto fail;
        d->pub.redacted = d->redacted;
    }

    PQconninfoFree(opts);
    dburl_free_secret(rebuilt);
    secrets_free(&sec);
    *out = &d->pub;
    return 0;

fail:
    if (rc == -ENOMEM && err && errlen)
        snprintf(err, errlen, "%s: out of memory (%s)", name, errpos);
    if (opts)
        PQconninfoFree(opts);
    if (pqerr)
        PQfreemem(pqerr);
    if (rebuilt) {
        explicit_bzero(rebuilt, need);
        free(rebuilt);
    }
    rt_dburl_destroy(d ? &d->pub : NULL);
    secrets_free(&sec);
    return rc;
}

int rt_dburl_parse(const char *url, struct rt_dburl **out, char *err, size_t errlen)
{
    return rt_dburl_parse_as("DATABASE_URL", url, out, err, errlen);
}

const char *rt_dburl_get(const struct rt_dburl *u, const char *kw)
{
    const struct dburl_impl *d = (const struct dburl_impl *)u;

    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->kw[i], kw) == 0)
            return d->val[i];
    return NULL;
}

int rt_dburl_set(struct rt_dburl *u, const char *kw, const char *value)
{
    struct dburl_impl *d = (struct dburl_impl *)u;

    for (size_t i = 0; i < d->n; i++) {
        char *v;
        if (strcmp(d->kw[i], kw) != 0)
            continue;
        if (!value) {
            free(d->kw[i]);
            dburl_free_secret(d->val[i]);
            memmove(d->kw + i, d->kw + i + 1, (d->n - i) * sizeof *d->kw);
            memmove(d->val + i, d->val + i + 1, (d->n - i) * sizeof *d->val);
            d->n--;
            return 0;
        }
        if (!(v = strdup(value)))
            return -ENOMEM;
        dburl_free_secret(d->val[i]);
        d->val[i] = v;
        return 0;
    }
    return value ? dburl_append(d, kw, value) : 0;
}
