/*
 * libFuzzer target: DATABASE_URL parsing and redaction. Any input must parse or fail with
 * a message; neither the message nor the redacted form may hold the URL's password.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The raw userinfo password of url ("u:PASS@h"), or "" when it has none. */
static void raw_password(const char *url, char *out, size_t size)
{
    const char *start = strstr(url, "://"), *colon, *at;
    out[0] = '\0';
    if (!start)
        return;
    start += 3;
    at = strrchr(start, '@');
    colon = strchr(start, ':');
    if (!at || !colon || colon > at || (size_t)(at - colon - 1) >= size)
        return;
    memcpy(out, colon + 1, (size_t)(at - colon - 1));
    out[at - colon - 1] = '\0';
}

/* Whether needle occurs exactly once in hay: only then is every sighting a leak. */
static int occurs_once(const char *hay, const char *needle)
{
    const char *first = strstr(hay, needle);
    return first && !strstr(first + 1, needle);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = malloc(size + 1), err[512], redacted[1024], pw[256];
    struct rt_dburl *u = NULL;

    if (!url)
        return 0;
    memcpy(url, data, size);
    url[size] = '\0';
    raw_password(url, pw, sizeof pw);
    /*
     * Only a password that stands nowhere else in the URL can be looked for, and only one
     * without '*': the redaction mask is "***", so "postgres://~u:***" holds the
     * "password" "//~u:*" of "postgres://~u://~u:*@h" without leaking anything.
     */
    int checkable = strlen(pw) >= 6 && !strchr(pw, '*') && occurs_once(url, pw);

    if (rt_dburl_parse(url, &u, err, sizeof err) == 0) {
        if (checkable && strstr(u->redacted, pw))
            abort();
        rt_dburl_destroy(u);
    } else if (checkable && strstr(err, pw)) {
        abort();
    }
    rt_dburl_redact(url, redacted, sizeof redacted);
    if (checkable && strstr(redacted, pw))
        abort();
    free(url);
    return 0;
}
