/*
 * The one place JSON documents are turned into text: reals rounded to microseconds and
 * printed without the binary noise of jansson's default 17 digits.
 */
#include <math.h>

#include "runtime/rt_json.h"

/* Significant digits of a printed real: a double holds 15 exactly, so a value rounded to
 * RT_JSON_DECIMALS places prints as that decimal (up to 10^9 with all six places). */
#define RT_JSON_DIGITS 15

/* From this magnitude on, RT_JSON_DIGITS leave fewer than RT_JSON_DECIMALS places anyway
 * (and v * 10^6 stays exact below it). */
#define RT_JSON_ROUND_MAX 1e9

static double round_decimals(double v)
{
    double r;

    if (!(fabs(v) < RT_JSON_ROUND_MAX))
        return v;
    r = round(v * 1e6) / 1e6;
    return r == 0.0 ? 0.0 : r; /* no "-0.0" for a tiny negative value */
}

void rt_json_round(json_t *doc)
{
    const char *key;
    json_t *v;
    size_t i;

    if (!doc)
        return;
    switch (json_typeof(doc)) {
    case JSON_OBJECT:
        json_object_foreach(doc, key, v)
        {
            rt_json_round(v);
        }
        break;
    case JSON_ARRAY:
        json_array_foreach(doc, i, v)
        {
            rt_json_round(v);
        }
        break;
    case JSON_REAL:
        json_real_set(doc, round_decimals(json_real_value(doc)));
        break;
    default:
        break;
    }
}

char *rt_json_dumps(json_t *doc, size_t flags)
{
    if (!doc)
        return NULL;
    rt_json_round(doc);
    return json_dumps(doc, flags | JSON_REAL_PRECISION(RT_JSON_DIGITS));
}

int rt_json_dumpf(json_t *doc, FILE *f, size_t flags)
{
    if (!doc)
        return -1;
    rt_json_round(doc);
    return json_dumpf(doc, f, flags | JSON_REAL_PRECISION(RT_JSON_DIGITS));
}
