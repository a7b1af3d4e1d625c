/*
 * Test plugin of the adversarial input tests (t964): a route that reads a body, and one
 * that calls pgc_enqueue with one field as long as asked, answering what it returned.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgcorral.h"

/* POST /adv/echo: {"len":N}, the body's length. */
static int echo(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char out[64];
    size_t len = 0;
    pgc_req_body(req, &len);
    snprintf(out, sizeof out, "{\"len\":%zu}", len);
    return pgc_res_json(res, 200, out);
}

/* GET /adv/enqueue?field=task|queue|key|payload&len=N: pgc_enqueue with that field N bytes
 * long (the payload a JSON string of N bytes in all); answers {"rc":RC,"msg":"..."}. */
static int enqueue(struct pgc_ctx *ctx, const struct pgc_request *req, struct pgc_response *res)
{
    char field[16] = "", lentext[16] = "", out[1024], msg[512];
    struct pgc_enqueue_opts o = {0};
    const char *task = "adv.task", *payload = NULL;
    size_t n;
    int rc;

    if (pgc_req_query_param(req, "field", field, sizeof field) < 0 ||
        pgc_req_query_param(req, "len", lentext, sizeof lentext) < 0)
        return pgc_res_json(res, 400, "{\"error\":\"field and len are required\"}");
    n = (size_t)strtoul(lentext, NULL, 10);
    char *v = malloc(n + 1);
    if (!v)
        return PGC_ENOMEM;
    memset(v, 'x', n);
    v[n] = '\0';
    if (strcmp(field, "task") == 0)
        task = v;
    else if (strcmp(field, "queue") == 0)
        o.queue = v;
    else if (strcmp(field, "key") == 0)
        o.key = v;
    else if (n >= 2) {
        v[0] = v[n - 1] = '"';
        payload = v;
    }
    rc = pgc_enqueue(ctx, task, payload, &o, NULL);
    /* The message goes into a JSON string: no quotes or backslashes in it. */
    snprintf(msg, sizeof msg, "%s", rc ? pgc_error_message(ctx) : "");
    for (char *p = msg; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '\'';
    snprintf(out, sizeof out, "{\"rc\":%d,\"msg\":\"%s\"}", rc, msg);
    free(v);
    return pgc_res_json(res, 200, out);
}

int pgc_plugin_init(struct pgc_registry *reg)
{
    int rc = pgc_register_route(reg, "POST", "/adv/echo", echo, 0);
    return rc ? rc : pgc_register_route(reg, "GET", "/adv/enqueue", enqueue, 0);
}
