/*
 * The TTL cache behind pgc_cache_get/set (runtime/ttl_cache.c): values come back as copies,
 * expire after their TTL, are replaced by a second set, and the least recently used ones
 * are evicted beyond the entry and byte bounds; threads can share it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/rt_cache.h"
#include "tests/tap.h"

static struct rt_cache *shared;

/* Hammers the shared cache with sets and gets of its own keys; returns failures. */
static void *worker(void *arg)
{
    long id = (long)arg, bad = 0;
    char key[32], val[32], *got;
    size_t len;
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "k%ld-%d", id, i % 50);
        snprintf(val, sizeof val, "v%ld-%d", id, i);
        if (rt_cache_set(shared, key, val, strlen(val), 60000) != 0)
            bad++;
        if (rt_cache_get(shared, key, &got, &len) == 0) {
            bad += strncmp(got, "v", 1) != 0 || len != strlen(got);
            free(got);
        }
    }
    return (void *)bad;
}

int main(void)
{
    struct rt_cache *c;
    char *v = NULL;
    size_t len = 0, entries, bytes;
    pthread_t th[4];
    long bad = 0;

    tap_timeout(30);
    ok(rt_cache_create(&c, 3, 1 << 20) == 0, "create a cache of 3 entries");
    ok(rt_cache_get(c, "a", &v, &len) == -ENOENT, "a miss is -ENOENT");
    ok(rt_cache_set(c, "a", "one", 3, 60000) == 0 && rt_cache_get(c, "a", &v, &len) == 0 &&
           len == 3 && strcmp(v, "one") == 0,
       "set then get returns a NUL-terminated copy");
    free(v);
    ok(rt_cache_set(c, "a", "uno", 3, 60000) == 0 && rt_cache_get(c, "a", &v, &len) == 0 &&
           strcmp(v, "uno") == 0,
       "a second set replaces the value");
    free(v);
    rt_cache_usage(c, &entries, NULL);
    is_int(entries, 1, "and keeps one entry");
    ok(rt_cache_set(c, "b", "", 0, 60000) == 0 && rt_cache_get(c, "b", &v, &len) == 0 && len == 0 &&
           v[0] == '\0',
       "an empty value is a value");
    free(v);
    ok(rt_cache_set(c, "c", "3", 1, 60000) == 0, "third entry");
    /* Touch a: b is now the least recently used. */
    ok(rt_cache_get(c, "a", &v, &len) == 0, "touch a");
    free(v);
    ok(rt_cache_set(c, "d", "4", 1, 60000) == 0, "a fourth entry");
    ok(rt_cache_get(c, "b", &v, &len) == -ENOENT, "evicts the least recently used (b)");
    ok(rt_cache_get(c, "a", &v, &len) == 0, "not the recently used (a)");
    free(v);
    ok(rt_cache_set(c, "short", "x", 1, 50) == 0, "an entry with a 50 ms TTL");
    struct timespec ts = {0, 120 * 1000000};
    nanosleep(&ts, NULL);
    ok(rt_cache_get(c, "short", &v, &len) == -ENOENT, "is gone after its TTL");
    ok(rt_cache_set(c, "z", "x", 1, 0) == -EINVAL, "TTL 0 is refused");
    ok(rt_cache_delete(c, "a") == 0 && rt_cache_delete(c, "a") == -ENOENT, "delete");
    rt_cache_destroy(c);

    ok(rt_cache_create(&c, 1000, 600) == 0, "a cache of 600 bytes");
    char big[200];
    memset(big, 'x', sizeof big);
    for (int i = 0; i < 10; i++) {
        char key[8];
        snprintf(key, sizeof key, "b%d", i);
        if (rt_cache_set(c, key, big, sizeof big, 60000) != 0)
            bad++;
    }
    rt_cache_usage(c, &entries, &bytes);
    ok(bad == 0 && bytes <= 600 && entries >= 1 && entries < 10,
       "stays within its byte bound (%zu entries, %zu bytes)", entries, bytes);
    char huge[700];
    memset(huge, 'y', sizeof huge);
    is_int(rt_cache_set(c, "huge", huge, sizeof huge, 60000), -EINVAL,
           "an entry larger than the whole cache is refused");
    rt_cache_destroy(c);
    rt_cache_destroy(NULL);

    if (rt_cache_create(&shared, 100, 1 << 20) != 0)
        bail("create");
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, worker, (void *)i);
    bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += (long)r;
    }
    rt_cache_usage(shared, &entries, NULL);
    ok(bad == 0 && entries <= 100, "4 threads share it safely (%zu entries)", entries);
    rt_cache_destroy(shared);
    return done_testing();
}
