/*
 * The shared helpers of rt_util.h: growable strings, the text[] literal, checked integers
 * and UTF-8-safe cutting.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rt_util.h"

/* ---- growable strings ---------------------------------------------------------------- */

int rt_buf_reserve(struct rt_buf *b, size_t n, size_t first)
{
    size_t cap;
    char *p;

    if (b->len + n <= b->cap)
        return 0;
    cap = b->cap ? b->cap * 2 : (first ? first : 256);
    while (cap < b->len + n)
        cap *= 2;
    p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

void rt_buf_put(struct rt_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (rt_buf_reserve(b, n + 1, 0) < 0) { /* + its NUL */
        b->failed = true;
        return;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void rt_buf_puts(struct rt_buf *b, const char *s)
{
    rt_buf_put(b, s, strlen(s));
}

void rt_buf_printf(struct rt_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        rt_buf_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    rt_buf_put(b, big, (size_t)n);
    free(big);
}

/* One element: NULL, or double-quoted with '"' and '\' escaped (array_in's rules). */
static void put_element(struct rt_buf *b, const char *s)
{
    const char *run = s;

    if (!s) {
        rt_buf_puts(b, "NULL");
        return;
    }
    rt_buf_puts(b, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            rt_buf_put(b, run, (size_t)(p - run));
            rt_buf_puts(b, "\\");
            run = p;
        }
    }
    rt_buf_puts(b, run);
    rt_buf_puts(b, "\"");
}

void rt_buf_text_array(struct rt_buf *b, const char *const *items, size_t n)
{
    rt_buf_puts(b, "{");
    for (size_t i = 0; i < n; i++) {
        if (i)
            rt_buf_puts(b, ",");
        put_element(b, items[i]);
    }
    rt_buf_puts(b, "}");
}

const char *rt_buf_str(struct rt_buf *b)
{
    if (b->failed)
        return NULL;
    return b->data ? b->data : "";
}

void rt_buf_free(struct rt_buf *b)
{
    free(b->data);
    *b = (struct rt_buf){0};
}

/* ---- integers ------------------------------------------------------------------------ */

int rt_parse_ll(const char *text, long long min, long long max, long long *out)
{
    const char *p = text;
    char *end;
    long long v;

    /* strtoll skips leading spaces; an integer here starts with its sign or a digit. */
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return -EINVAL;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (*end != '\0')
        return -EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

int rt_parse_int(const char *text, int min, int max, int *out)
{
    long long v;
    int rc = rt_parse_ll(text, min, max, &v);
    if (rc == 0)
        *out = (int)v;
    return rc;
}

/* ---- text from the system and from libpq --------------------------------------------- */

void rt_host_name(char *buf, size_t size)
{
    if (gethostname(buf, size) < 0 || !buf[0])
        snprintf(buf, size, "localhost");
    buf[size - 1] = '\0';
}

void rt_copy_message(char *dst, size_t size, const char *msg)
{
    snprintf(dst, size, "%s", msg ? msg : "");
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' '))
        dst[--n] = '\0';
}

/* ---- UTF-8 --------------------------------------------------------------------------- */

size_t rt_utf8_cut(const char *s, size_t len, size_t max)
{
    size_t n;

    if (len <= max)
        return len;
    /* s[max] starts the first byte left out; back up over continuation bytes (10xxxxxx)
     * so the cut falls before the character that s[max] belongs to. */
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

void rt_utf8_clean(char *s)
{
    unsigned char *p = (unsigned char *)s;

    while (*p) {
        unsigned char b = p[0], lo = 0x80, hi = 0xbf;
        size_t n = 0, i;
        if (b < 0x80)
            n = 1;
        else if (b >= 0xc2 && b <= 0xdf)
            n = 2;
        else if (b >= 0xe0 && b <= 0xef)
            n = 3;
        else if (b >= 0xf0 && b <= 0xf4)
            n = 4;
        /* The second byte rules out overlong forms, surrogates and code points over
         * U+10FFFF. */
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f;
        else if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f;
        for (i = 1; i < n; i++)
            if (p[i] < (i == 1 ? lo : 0x80) || p[i] > (i == 1 ? hi : 0xbf))
                break;
        if (n == 0 || i < n) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

/* Bytes of the UTF-8 sequence that lead byte b starts (1 for ASCII and stray bytes). */
static size_t utf8_seq_len(unsigned char b)
{
    return b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
}

void rt_vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
    int n;
    size_t keep, start;

    if (size == 0)
        return;
    n = vsnprintf(buf, size, fmt, ap);
    if (n < 0 || (size_t)n < size)
        return;
    /* Truncated to size-1 bytes: drop the last character when part of it was cut off. */
    keep = size - 1;
    start = keep;
    while (start > 0 && ((unsigned char)buf[start - 1] & 0xc0) == 0x80)
        start--;
    if (start > 0 && start - 1 + utf8_seq_len((unsigned char)buf[start - 1]) > keep)
        buf[start - 1] = '\0';
}
