/*
 * The job queue's contract on this side of the SQL: job descriptions from outside (POST
 * /api/v1/jobs, `pgcorral enqueue`) validated strictly with messages fit for a 400 answer
 * (field lengths from runtime/rt_input.h), the one builder of JOB_ADD_SQL's parameters, and
 * the locked_by name of a worker incarnation.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "runtime/rt_input.h"
#include "runtime/rt_time.h"
#include "runtime/rt_jobq.h"
#include "runtime/rt_util.h"

/* The fields a job description may have; anything else is an error. */
static const char *const spec_fields[] = {"task",         "payload", "queue", "run_at", "priority",
                                          "max_attempts", "key",     "force", NULL};

/* A JSON number that is an integer within [min, max], into *out. */
static bool json_int_in(json_t *v, long long min, long long max, int *out)
{
    double d;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < min || i > max)
            return false;
        *out = (int)i;
        return true;
    }
    if (!json_is_real(v))
        return false;
    d = json_real_value(v);
    if (d != floor(d) || d < (double)min || d > (double)max)
        return false;
    *out = (int)d;
    return true;
}

/* A non-empty string field into *out (copied); JSON null leaves *out NULL. */
static int take_string(json_t *obj, const char *name, const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0) {
        snprintf(err, errlen, "\"%s\" must be a non-empty string", name);
        return -EINVAL;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        snprintf(err, errlen, "\"%s\" must not contain NUL characters", name);
        return -EINVAL;
    }
    char *copy = strdup(json_string_value(v));
    if (!copy)
        return -ENOMEM;
    *out = copy;
    return 0;
}

int rt_job_spec_parse(struct rt_job_spec *out, const char *body, size_t len, char *err,
                      size_t errlen)
{
    struct rt_job_spec s;
    json_error_t jerr;
    json_t *doc, *v;
    const char *name, *field;
    size_t flen, fmax;
    int rc = -EINVAL;

    memset(&s, 0, sizeof s);
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        snprintf(err, errlen, "malformed JSON at line %d, column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        if (errlen)
            rt_utf8_clean(err); /* see fail: */
        return -EINVAL;
    }
    if (!json_is_object(doc)) {
        snprintf(err, errlen, "the body must be a JSON object with at least \"task\"");
        goto fail;
    }
    json_object_foreach(doc, name, v)
    {
        bool known = false;
        for (int i = 0; spec_fields[i] && !known; i++)
            known = strcmp(name, spec_fields[i]) == 0;
        if (!known) {
            snprintf(err, errlen,
                     "unknown field \"%.64s\" (fields: task, payload, queue, run_at, priority, "
                     "max_attempts, key, force)",
                     name);
            goto fail;
        }
    }
    v = json_object_get(doc, "task");
    if (!v || json_is_null(v)) {
        snprintf(err, errlen, "\"task\" is required");
        goto fail;
    }
    if ((rc = take_string(doc, "task", &s.task, err, errlen)) < 0 ||
        (rc = take_string(doc, "queue", &s.queue, err, errlen)) < 0 ||
        (rc = take_string(doc, "run_at", &s.run_at, err, errlen)) < 0 ||
        (rc = take_string(doc, "key", &s.key, err, errlen)) < 0)
        goto fail;
    rc = -EINVAL;
    if (s.run_at) {
        char when[64];
        if (rt_run_at_parse(s.run_at, when, sizeof when) < 0) {
            snprintf(err, errlen, "\"run_at\" must be " RT_RUN_AT_FORMS ", got \"%.64s\"",
                     s.run_at);
            goto fail;
        }
        /* A relative run_at becomes its timestamp here, with this machine's clock. */
        if (s.run_at[0] == '+') {
            char *abs = strdup(when);
            if (!abs) {
                rc = -ENOMEM;
                goto fail;
            }
            free((char *)s.run_at);
            s.run_at = abs;
        }
    }
    v = json_object_get(doc, "priority");
    if (v && !json_is_null(v)) {
        if (!json_int_in(v, -2147483647LL - 1, 2147483647LL, &s.priority)) {
            snprintf(err, errlen, "\"priority\" must be an integer");
            goto fail;
        }
        s.has_priority = true;
    }
    v = json_object_get(doc, "max_attempts");
    if (v && !json_is_null(v)) {
        if (!json_int_in(v, 1, 2147483647LL, &s.max_attempts)) {
            snprintf(err, errlen, "\"max_attempts\" must be an integer of at least 1");
            goto fail;
        }
        s.has_max_attempts = true;
    }
    v = json_object_get(doc, "force");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "\"force\" must be true or false");
            goto fail;
        }
        s.force = json_is_true(v);
    }
    v = json_object_get(doc, "payload");
    if (v && !json_is_null(v)) {
        if (!(s.payload = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY))) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    /* Before any SQL: the database's own limits fail later, with its text, as a 500. */
    field = rt_job_field_too_long(s.task, s.queue, s.key, s.payload ? strlen(s.payload) : 0, &flen,
                                  &fmax);
    if (field) {
        snprintf(err, errlen, "\"%s\" is %zu bytes; the limit is %zu bytes", field, flen, fmax);
        goto fail;
    }
    json_decref(doc);
    *out = s;
    return 0;

fail:
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    /* Messages quote the input (jansson's "near '...'", a field name cut to 64 bytes) and go
     * into a JSON answer, which json_pack refuses unless they are UTF-8. */
    if (errlen)
        rt_utf8_clean(err);
    json_decref(doc);
    rt_job_spec_free(&s);
    return rc;
}

void rt_job_spec_free(struct rt_job_spec *s)
{
    free((char *)s->task);
    free((char *)s->payload);
    free((char *)s->queue);
    free((char *)s->run_at);
    free((char *)s->key);
    memset(s, 0, sizeof *s);
}

void rt_job_spec_params(struct rt_job_spec *s, const char *values[7])
{
    values[0] = s->task;
    values[1] = s->payload;
    values[2] = s->queue;
    values[3] = s->run_at;
    values[4] = NULL;
    values[5] = NULL;
    if (s->has_priority) {
        snprintf(s->num[0], sizeof s->num[0], "%d", s->priority);
        values[4] = s->num[0];
    }
    if (s->has_max_attempts) {
        snprintf(s->num[1], sizeof s->num[1], "%d", s->max_attempts);
        values[5] = s->num[1];
    }
    values[6] = s->key;
}

char *rt_job_locked_by(char *buf, size_t size, pid_t pid, uint32_t generation)
{
    char host[64];
    rt_host_name(host, sizeof host);
    snprintf(buf, size, "%s:%d:%u", host, (int)pid, generation);
    return buf;
}
