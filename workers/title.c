/*
 * Process titles ("pgcorral: web 0") for ps and top: the kernel's comm name through
 * prctl, and the command line by overwriting the argv strings in place.
 */
#include <string.h>
#include <sys/prctl.h>

#include "workers/workers.h"

/* The contiguous argv strings of this process, which ps shows as the command line. */
static char *title_area;
static size_t title_area_len;

void worker_title_init(int argc, char **argv)
{
    if (argc <= 0)
        return;
    title_area = argv[0];
    /* The strings are laid out back to back; stop where they are not. */
    char *end = argv[0] + strlen(argv[0]);
    for (int i = 1; i < argc; i++) {
        if (argv[i] != end + 1)
            break;
        end = argv[i] + strlen(argv[i]);
    }
    title_area_len = (size_t)(end - title_area);
}

void worker_title_set(const char *title)
{
    prctl(PR_SET_NAME, title);
    if (!title_area || title_area_len == 0)
        return;
    size_t n = strlen(title);
    if (n > title_area_len)
        n = title_area_len;
    memcpy(title_area, title, n);
    memset(title_area + n, 0, title_area_len - n + 1);
}
