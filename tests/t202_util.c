/*
 * The shared helpers of runtime/rt_util.h. The text[] literal is checked by the server
 * itself (array_in parses it back), so the expectation does not come from our encoder.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runtime/rt_util.h"
#include "tests/lib/pgtest.h"
#include "tests/tap.h"

struct holder {
    int before;
    double member;
};

static void format(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    rt_vformat(buf, size, fmt, ap);
    va_end(ap);
}

static void test_container_of(void)
{
    struct holder h;
    ok(rt_container_of(&h.member, struct holder, member) == &h,
       "rt_container_of finds the struct from a member");
}

static void test_integers(void)
{
    long long v = 7;
    int i = 7;

    ok(rt_parse_ll("42", 0, 100, &v) == 0 && v == 42, "42 parses");
    ok(rt_parse_ll("-5", -10, 10, &v) == 0 && v == -5, "a negative number parses");
    is_int(rt_parse_ll(" 1", 0, 10, &v), -EINVAL, "a leading space is refused");
    is_int(rt_parse_ll("1 ", 0, 10, &v), -EINVAL, "a trailing space is refused");
    is_int(rt_parse_ll("", 0, 10, &v), -EINVAL, "an empty string is refused");
    is_int(rt_parse_ll("0x10", 0, 100, &v), -EINVAL, "hex is refused");
    is_int(rt_parse_ll("11", 0, 10, &v), -ERANGE, "above max is out of range");
    is_int(rt_parse_ll("99999999999999999999", 0, LLONG_MAX, &v), -ERANGE,
           "a number too large for any integer is out of range, not clamped");
    is_int(v, -5, "a failed parse leaves *out alone");
    ok(rt_parse_int("2147483647", 0, INT_MAX, &i) == 0 && i == INT_MAX, "INT_MAX parses as int");
    is_int(rt_parse_int("2147483648", 0, INT_MAX, &i), -ERANGE, "INT_MAX + 1 does not");
}

static void test_utf8(void)
{
    char buf[8], dirty[] = "ok \xc3\xa9 \xc3 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf end";
    const char *e3 = "ab\xe2\x82\xac"; /* "ab€": the euro sign is 3 bytes */

    is_int(rt_utf8_cut(e3, 5, 10), 5, "a string under the limit is kept whole");
    is_int(rt_utf8_cut(e3, 5, 4), 2, "a cut inside a 3-byte character drops the character");
    is_int(rt_utf8_cut(e3, 5, 2), 2, "a cut just before a character keeps what precedes it");
    is_int(rt_utf8_cut("abcdef", 6, 3), 3, "ASCII is cut at the limit");

    format(buf, sizeof buf, "%s%s", "abcde", "\xe2\x82\xac");
    is_str(buf, "abcde", "rt_vformat drops a character the truncation split");
    format(buf, sizeof buf, "%s", "abcd\xc3\xa9z");
    is_str(buf, "abcd\xc3\xa9z", "a 2-byte character that fits whole is kept (7 bytes)");
    format(buf, sizeof buf, "%s", "abcdef\xc3\xa9");
    is_str(buf, "abcdef", "a 2-byte character across the end is dropped");
    format(buf, sizeof buf, "%d", 42);
    is_str(buf, "42", "a short text is untouched");

    rt_utf8_clean(dirty);
    is_str(dirty, "ok \xc3\xa9 ? ??? ???? ?? end",
           "rt_utf8_clean keeps valid characters and replaces each byte of a cut, surrogate, "
           "too-large or overlong sequence with '?'");
}

static void test_buf(void)
{
    struct rt_buf b = {0};
    char big[2000];

    is_str(rt_buf_str(&b), "", "an empty buffer is the empty string");
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    rt_buf_puts(&b, "a");
    rt_buf_printf(&b, "%s|%d", big, 7);
    ok(rt_buf_str(&b) && b.len == 1 + 1999 + 2 && strcmp(b.data + b.len - 2, "|7") == 0,
       "puts and a printf longer than the first allocation grow the buffer");
    rt_buf_free(&b);
    ok(b.data == NULL && b.len == 0, "rt_buf_free empties it");
}

static void test_text_array(void)
{
    const char *items[] = {"plain", "with \"quotes\"", "back\\slash", NULL,
                           "",      "{braces},comma",  "caf\xc3\xa9"};
    struct rt_buf b = {0};
    PGconn *c = pgt_connect();

    rt_buf_text_array(&b, items, 7);
    const char *lit = rt_buf_str(&b);
    const char *values[] = {lit};
    PGresult *r = PQexecParams(c,
                               "SELECT cardinality(a), a[1], a[2], a[3], a[4] IS NULL, a[5],"
                               " a[6], a[7] FROM (SELECT $1::text[] AS a) x",
                               1, NULL, values, NULL, NULL, 0);
    bool good = PQresultStatus(r) == PGRES_TUPLES_OK;
    ok(good, "the server accepts the literal %s", lit ? lit : "(null)");
    if (good) {
        is_str(PQgetvalue(r, 0, 0), "7", "it has every element");
        ok(strcmp(PQgetvalue(r, 0, 1), items[0]) == 0 &&
               strcmp(PQgetvalue(r, 0, 2), items[1]) == 0 &&
               strcmp(PQgetvalue(r, 0, 3), items[2]) == 0 &&
               strcmp(PQgetvalue(r, 0, 6), items[5]) == 0 &&
               strcmp(PQgetvalue(r, 0, 7), items[6]) == 0,
           "quotes, backslashes, braces, commas and UTF-8 come back as they were");
        is_str(PQgetvalue(r, 0, 4), "t", "a NULL element is SQL NULL");
        is_str(PQgetvalue(r, 0, 5), "", "an empty string stays an empty string, not NULL");
    }
    PQclear(r);
    rt_buf_free(&b);
    rt_buf_text_array(&b, items, 0);
    is_str(rt_buf_str(&b), "{}", "no elements is the empty array");
    rt_buf_free(&b);
    PQfinish(c);
}

int main(void)
{
    tap_timeout(20);
    test_container_of();
    test_integers();
    test_utf8();
    test_buf();
    test_text_array();
    return done_testing();
}
