/* Helpers of the tests that run the supervisor (suptest.h). */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include "tests/lib/opstest.h"
#include "tests/lib/pgtest.h"
#include "tests/lib/webtest.h"
#include "tests/lib/suptest.h"

bool ts_web_ready(void *arg)
{
    struct ts_sup *s = arg;
    json_t *doc = pgt_ctl(s->control, "workers"), *w;
    size_t i;
    int ready = 0;

    json_array_foreach(json_object_get(doc, "workers"), i, w)
    {
        const char *role = json_string_value(json_object_get(w, "role"));
        const char *state = json_string_value(json_object_get(w, "state"));
        ready += role && state && strcmp(role, "web") == 0 && strcmp(state, "ready") == 0;
    }
    json_decref(doc);
    return ready == s->web;
}

bool ts_start(struct ts_sup *s, const char *name, int web, char *const args[], char *const env[])
{
    char *argv[64], webn[16];
    int n = 0;

    memset(s, 0, sizeof *s);
    s->control = pgt_tmp_path(name);
    s->web = web;
    snprintf(webn, sizeof webn, "%d", web);
    argv[n++] = (char *)pgt_binary();
    argv[n++] = "run";
    argv[n++] = "--web";
    argv[n++] = webn;
    argv[n++] = "--control";
    argv[n++] = (char *)s->control;
    for (int i = 0; args && args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pgt_spawn(&s->p, argv, env);
    if (!pgt_wait_until(ts_web_ready, s, 20000)) {
        pgt_proc_drain(&s->p);
        diag("the web workers did not come up:\n%s", s->p.log ? s->p.log : "");
        pgt_proc_cleanup(&s->p);
        return false;
    }
    s->port = (int)ot_config_int(s->control, "listen_port");
    s->admin_port = (int)ot_config_int(s->control, "admin_port");
    return s->port > 0;
}

bool ts_stop(struct ts_sup *s)
{
    kill(s->p.pid, SIGTERM);
    bool clean =
        pgt_proc_wait_exit(&s->p, 20000) && WIFEXITED(s->p.status) && WEXITSTATUS(s->p.status) == 0;
    if (!clean)
        diag("the supervisor did not stop cleanly:\n%s", s->p.log ? s->p.log : "");
    return clean;
}

int ts_req(int port, const char *method, const char *path, const char *headers, const char *body,
           struct wt_resp *r)
{
    char req[8192];
    /* A body is JSON (bodies must say so: 415 otherwise), unless headers name a type. */
    bool typed = headers && strcasestr(headers, "content-type:");
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: t\r\n%s%sContent-Length: %zu\r\n\r\n%s",
             method, path, headers ? headers : "",
             body && !typed ? "Content-Type: application/json\r\n" : "", body ? strlen(body) : 0,
             body ? body : "");
    return wt_request(port, req, r);
}

int ts_count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay ? strstr(hay, needle) : NULL; p; p = strstr(p + 1, needle))
        n++;
    return n;
}

bool ts_is_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}
