/*
 * Queue depths as the job-queue connection's sweep last read them: kept for the control
 * socket's stats (sup_jobq_json) and published to the shared segment, where the web
 * workers' /metrics reads them.
 */
#include <string.h>

#include "coordinator/jobs_int.h"

/* The count of one state in a queue's object of the sweep's answer; 0 if missing. */
static uint64_t depth_count(json_t *queue, const char *state)
{
    json_int_t v = json_integer_value(json_object_get(queue, state));
    return v > 0 ? (uint64_t)v : 0;
}

/* Publishes the depths to the segment, for /metrics in the web workers. */
static void publish_depths(struct shm_segment *seg, json_t *queues, uint64_t at_us)
{
    struct shm_queue_depths d;
    const char *name;
    json_t *q;

    memset(&d, 0, sizeof d);
    d.at_us = at_us;
    json_object_foreach(queues, name, q)
    {
        if (d.nqueues == SHM_MAX_QUEUES) {
            d.omitted++;
            continue;
        }
        struct shm_queue_depth *e = &d.queues[d.nqueues++];
        size_t len = strlen(name);
        if (len >= sizeof e->name) {
            /* Cut before a continuation byte (10xxxxxx), so that the label stays UTF-8. */
            len = sizeof e->name - 1;
            while (len > 0 && ((unsigned char)name[len] & 0xc0) == 0x80)
                len--;
        }
        memcpy(e->name, name, len);
        e->ready = depth_count(q, "ready");
        e->scheduled = depth_count(q, "scheduled");
        e->running = depth_count(q, "running");
        e->failed = depth_count(q, "failed");
    }
    shm_depths_publish(seg, &d);
}

void sup_jobq_set_depth(struct sup_jobq *j, json_t *queues, long long dead_rows)
{
    json_decref(j->depth);
    j->depth = queues;
    j->dead_rows = dead_rows;
    j->depth_at_us = shm_now_us();
    if (queues)
        publish_depths(j->o.seg, queues, j->depth_at_us);
}

json_t *sup_jobq_json(const struct sup_jobq *j)
{
    json_t *doc;
    if (!j || !j->depth)
        return json_pack("{s:{},s:n}", "queues", "age_ms");
    doc = json_pack("{s:O,s:I,s:I}", "queues", j->depth, "age_ms",
                    (json_int_t)((shm_now_us() - j->depth_at_us) / 1000), "dead_rows",
                    (json_int_t)j->dead_rows);
    return doc;
}
