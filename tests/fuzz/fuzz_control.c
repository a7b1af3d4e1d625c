/*
 * libFuzzer target: the control socket's command parser and dispatch, with a supervisor
 * state that has a real shared segment but is stopping, so that no input can fork.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/sup_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The configured password: no answer may contain it unless the input itself did. */
#define SECRET "Zq8vK2mXw9"

/* One supervisor state for the whole run: stopping, no workers. */
static struct sup sup;
static struct sup_config cfg;

static void setup(void)
{
    static char url[] = "postgresql://u:" SECRET "@localhost/db?connection_limit=2";
    char err[256];

    cfg.web_workers = 1;
    cfg.job_workers = 1;
    cfg.control_path = strdup("/nonexistent/fuzz.sock");
    cfg.listen_addr = strdup("127.0.0.1:0");
    cfg.io_mode = strdup("auto");
    cfg.log_format = strdup("json");
    if (rt_dburl_parse(url, &cfg.db, err, sizeof err) < 0 || shm_create(&sup.seg, 5) < 0)
        abort();
    sup.cfg = &cfg;
    sup.budget = 5;
    sup.phase = SUP_DRAINING;
    sup.reload_new = sup.reload_old = -1;
    uv_loop_init(&sup.loop);
    sup.loop.data = &sup;
    uv_timer_init(&sup.loop, &sup.deadline);
    sup.deadline.data = &sup;
    rt_log_set_level(RT_LOG_ERROR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *line;
    json_t *answer;

    if (!sup.seg)
        setup();
    /* The socket layer hands over one line without its newline, at most 4095 bytes. */
    if (size > 4095)
        size = 4095;
    line = malloc(size + 1);
    if (!line)
        return 0;
    memcpy(line, data, size);
    line[size] = '\0';
    line[strcspn(line, "\n")] = '\0';
    answer = sup_control_dispatch(&sup, line);
    if (!answer || !json_is_object(answer))
        abort();
    char *text = json_dumps(answer, JSON_COMPACT);
    if (!text || (strstr(text, SECRET) && !memmem(data, size, SECRET, strlen(SECRET))))
        abort();
    free(text);
    json_decref(answer);
    free(line);
    return 0;
}
