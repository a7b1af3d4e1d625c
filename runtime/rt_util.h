/*
 * Small helpers shared by runtime/, workers/ and coordinator/: container_of, a growable
 * string, checked integer parsing, UTF-8-safe cutting and cleaning, and the PostgreSQL
 * array literal. One copy of each, so that a fix (a cut inside a character, an integer that
 * overflows) is made once. Any thread; nothing here keeps state.
 */
#ifndef PGCORRAL_RT_UTIL_H
#define PGCORRAL_RT_UTIL_H

#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>

/* The struct of type `type` whose member `member` is at ptr. */
#define rt_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/*
 * A growable NUL-terminated string. Zero-initialise it; an allocation failure sets
 * `failed` and makes later appends do nothing, so callers check once at the end.
 */
struct rt_buf {
    char *data; /* NULL until the first append */
    size_t len;
    size_t cap;
    bool failed;
};

/* Makes room for n more bytes (the first allocation at least `first` bytes, then doubling).
 * Returns 0, or -ENOMEM with b unchanged (failed is not set: for byte buffers that report
 * errors themselves, such as a connection's input and output). */
int rt_buf_reserve(struct rt_buf *b, size_t n, size_t first);
void rt_buf_put(struct rt_buf *b, const char *s, size_t n);
void rt_buf_puts(struct rt_buf *b, const char *s);
__attribute__((format(printf, 2, 3))) void rt_buf_printf(struct rt_buf *b, const char *fmt, ...);
/* Appends a text[] literal of n elements ("{\"a\",NULL}"); a NULL element is SQL NULL. */
void rt_buf_text_array(struct rt_buf *b, const char *const *items, size_t n);
/* The string ("" when nothing was appended), or NULL after a failure. Still owned by b. */
const char *rt_buf_str(struct rt_buf *b);
void rt_buf_free(struct rt_buf *b);

/*
 * Parses text as a whole decimal integer (optional sign, no spaces, nothing after it) in
 * [min, max]. Returns 0 and writes *out; -EINVAL when it is not an integer, -ERANGE when it
 * is one outside [min, max] (also one too large for any integer type: "99999999999999999999"
 * is out of range, not -1). *out is written only on success.
 */
__attribute__((warn_unused_result)) int rt_parse_ll(const char *text, long long min, long long max,
                                                    long long *out);
/* rt_parse_ll for an int. */
__attribute__((warn_unused_result)) int rt_parse_int(const char *text, int min, int max, int *out);

/* This machine's host name, cut to fit size; "localhost" when it has none. */
void rt_host_name(char *buf, size_t size);

/* Copies a libpq message (NULL = "") into dst without its trailing newline and spaces. */
void rt_copy_message(char *dst, size_t size, const char *msg);

/* The length of s[0..len) cut to at most max bytes without splitting a UTF-8 sequence. */
size_t rt_utf8_cut(const char *s, size_t len, size_t max);
/* Makes s valid UTF-8 in place: every byte of a malformed or cut sequence becomes '?'. */
void rt_utf8_clean(char *s);
/* vsnprintf that never leaves half a character at the end when it truncates. */
__attribute__((format(printf, 3, 0))) void rt_vformat(char *buf, size_t size, const char *fmt,
                                                      va_list ap);

#endif
