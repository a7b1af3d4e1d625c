/* Validation at the edge: job field length limits (see rt_input.h). */
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_input.h"

const char *rt_job_field_too_long(const char *task, const char *queue, const char *key,
                                  size_t payload_len, size_t *len, size_t *limit)
{
    const struct {
        const char *name;
        size_t len, max;
    } fields[] = {
        {"task", task ? strlen(task) : 0, RT_JOB_TASK_MAX},
        {"queue", queue ? strlen(queue) : 0, RT_JOB_QUEUE_MAX},
        {"key", key ? strlen(key) : 0, RT_JOB_KEY_MAX},
        {"payload", payload_len, RT_JOB_PAYLOAD_MAX},
    };

    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (fields[i].len > fields[i].max) {
            *len = fields[i].len;
            *limit = fields[i].max;
            return fields[i].name;
        }
    }
    return NULL;
}
