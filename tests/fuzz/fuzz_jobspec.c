/*
 * libFuzzer target: job descriptions (POST /api/v1/jobs, `pgcorral enqueue`) through
 * rt_job_spec_parse, rt_job_spec_params and rt_job_spec_free, and the input as a run_at timestamp
 * through rt_timestamp_valid. A rejection must carry a message the 400 answer can hold; an
 * acceptance must hold exactly what the JSON said, in parameters the database can take.
 */
#include <errno.h>
#include <regex.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/rt_time.h"
#include "runtime/rt_jobq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The size of the message buffer job_http_enqueue gives rt_job_spec_parse. */
#define ERR_LEN 512

/* What rt_timestamp_valid's contract allows: date, then optionally time, seconds,
 * fraction and zone (Z, +HH, +HH:MM, +HHMM). Compiled once. */
static regex_t ts_re;
static bool ts_re_ready;

/* The string field name of doc, or NULL (absent, null or not a string). */
static const char *doc_string(json_t *doc, const char *name)
{
    json_t *v = json_object_get(doc, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Whether a and b are both NULL or equal strings. */
static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Whether text is the decimal form of n, as the database will read it. */
static bool is_decimal_of(const char *text, int n)
{
    char *end;
    long v;

    if (!text || !*text)
        return false;
    errno = 0;
    v = strtol(text, &end, 10);
    return errno == 0 && *end == '\0' && v == n;
}

/* Checks an accepted spec against the document the input decodes to. */
static void check_spec(struct rt_job_spec *s, const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    const char *values[7];

    if (!json_is_object(doc))
        abort();
    if (!s->task || !*s->task || (s->queue && !*s->queue) || (s->key && !*s->key) ||
        (s->run_at && !rt_timestamp_valid(s->run_at)))
        abort();
    /* A relative run_at ("+5m") is converted to its timestamp; any other is kept as it is. */
    const char *run_at = doc_string(doc, "run_at");
    if (!same(s->task, doc_string(doc, "task")) || !same(s->queue, doc_string(doc, "queue")) ||
        !same(s->key, doc_string(doc, "key")) ||
        (run_at && run_at[0] == '+' ? !s->run_at : !same(s->run_at, run_at)))
        abort();
    if (s->has_max_attempts && s->max_attempts < 1)
        abort();
    if (s->payload) {
        /* Valid JSON text the database can cast to jsonb, and never JSON null. */
        json_t *p = json_loads(s->payload, JSON_DECODE_ANY, NULL);
        if (!p || json_is_null(p) || !json_equal(p, json_object_get(doc, "payload")))
            abort();
        json_decref(p);
    } else if (json_object_get(doc, "payload") && !json_is_null(json_object_get(doc, "payload"))) {
        abort();
    }
    rt_job_spec_params(s, values);
    if (values[0] != s->task || values[1] != s->payload || values[2] != s->queue ||
        values[3] != s->run_at || values[6] != s->key)
        abort();
    if (s->has_priority ? !is_decimal_of(values[4], s->priority) : values[4] != NULL)
        abort();
    if (s->has_max_attempts ? !is_decimal_of(values[5], s->max_attempts) : values[5] != NULL)
        abort();
    json_decref(doc);
}

/* The 400 answer is {"error": msg}, built by json_pack, which takes UTF-8 only. */
static void check_message(const char *msg)
{
    json_t *answer = json_pack("{s:s}", "error", msg);
    if (!answer)
        abort();
    json_decref(answer);
}

/* Parses the input with an errlen-byte message buffer; checks the contract. Returns rc. */
static int parse_once(const uint8_t *data, size_t size, char *err, size_t errlen)
{
    struct rt_job_spec s, untouched;
    int rc;

    memset(&s, 0xa5, sizeof s);
    untouched = s;
    memset(err, 0x5a, errlen);
    rc = rt_job_spec_parse(&s, (const char *)data, size, err, errlen);
    if (rc == 0) {
        check_spec(&s, data, size);
        rt_job_spec_free(&s);
        if (s.task || s.payload || s.queue || s.run_at || s.key)
            abort();
        rt_job_spec_free(&s); /* on a zeroed spec: nothing */
        return 0;
    }
    if (rc != -EINVAL && rc != -ENOMEM)
        abort();
    /* Out parameter untouched; a message, NUL-terminated inside the buffer. */
    if (memcmp(&s, &untouched, sizeof s) != 0 || !memchr(err, '\0', errlen) || err[0] == '\0')
        abort();
    return rc;
}

/* The input as a C string to rt_timestamp_valid: true only for the contract's forms. */
static void check_timestamp(const uint8_t *data, size_t size)
{
    char *ts = malloc(size + 1);
    bool valid;

    if (!ts)
        return;
    memcpy(ts, data, size);
    ts[size] = '\0';
    valid = rt_timestamp_valid(ts);
    if (valid && regexec(&ts_re, ts, 0, NULL, 0) != 0)
        abort();
    if (valid) {
        int mo = (ts[5] - '0') * 10 + (ts[6] - '0'), d = (ts[8] - '0') * 10 + (ts[9] - '0');
        if (mo < 1 || mo > 12 || d < 1 || d > 31)
            abort();
    }
    free(ts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERR_LEN], small[64];
    /* An exact-size copy, not NUL-terminated: the parser must stay inside len. */
    uint8_t *body = malloc(size ? size : 1);
    size_t small_len = 2 + size % (sizeof small - 2);
    int rc;

    if (!ts_re_ready) {
        if (regcomp(&ts_re,
                    "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
                    "([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]+)?)?"
                    "([Zz]|[-+][0-9]{2}(:?[0-9]{2}|:)?)?)?$",
                    REG_EXTENDED | REG_NOSUB) != 0)
            abort();
        ts_re_ready = true;
    }
    if (!body)
        return 0;
    memcpy(body, data, size);
    rc = parse_once(body, size, err, sizeof err);
    /* A short buffer: same verdict, the message cut (a character cut in two shows as '?')
     * but still terminated. */
    if (parse_once(body, size, small, small_len) != rc)
        abort();
    if (rc < 0) {
        check_message(err);
        check_message(small);
        for (size_t i = 0; small[i]; i++)
            if (small[i] != err[i] && small[i] != '?')
                abort();
    }
    check_timestamp(body, size);
    free(body);
    return 0;
}
