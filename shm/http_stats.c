/*
 * HTTP answers by route, method and status in the segment (struct shm_http): claiming
 * route names and series in a worker's block, folding a dead worker's block into
 * retired_http by route name, and the totals /metrics renders.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "shm/shm.h"
#include "shm/shm_int.h"

/* Times a totals reader retries a sum overlapped by a retire (see stats.c). */
#define HTTP_TOTAL_MAX_TRIES 10000

/* Method labels, by enum shm_http_method. */
static const char *const method_names[SHM_HTTP_METHODS] = {
    "OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
};

enum shm_http_method shm_http_method_of(const char *name)
{
    for (unsigned m = 1; name && m < SHM_HTTP_METHODS; m++)
        if (strcmp(name, method_names[m]) == 0)
            return (enum shm_http_method)m;
    return SHM_HTTP_OTHER;
}

const char *shm_http_method_name(unsigned method)
{
    return method < SHM_HTTP_METHODS ? method_names[method] : method_names[0];
}

/* The route number of name among the first n entries of routes, or 0. */
static uint32_t route_find(const struct shm_http_route *routes, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        /* Acquire: the name written before `used` is complete. */
        if (!atomic_load_explicit(&routes[i].used, memory_order_acquire))
            return 0;
        if (strncmp(routes[i].name, name, SHM_LABEL_LEN - 1) == 0)
            return (uint32_t)i + 1;
    }
    return 0;
}

uint32_t shm_http_route(struct shm_http *h, const char *name)
{
    uint32_t r = route_find(h->routes, SHM_HTTP_ROUTES, name);
    size_t len;

    if (r || strcmp(name, "other") == 0)
        return r;
    for (int i = 0; i < SHM_HTTP_ROUTES; i++) {
        /* Relaxed: only this process writes the block. */
        if (atomic_load_explicit(&h->routes[i].used, memory_order_relaxed))
            continue;
        len = strnlen(name, SHM_LABEL_LEN - 1);
        memcpy(h->routes[i].name, name, len);
        h->routes[i].name[len] = '\0';
        /* Release: readers that see `used` see the name. */
        atomic_store_explicit(&h->routes[i].used, 1, memory_order_release);
        return (uint32_t)i + 1;
    }
    return 0;
}

/* The series with key among n, claiming a free one; NULL when full. One writer. */
static struct shm_http_series *series_get(struct shm_http_series *series, int n, uint32_t key)
{
    for (int i = 0; i < n; i++) {
        /* Relaxed: keys of this block are written by the caller only. */
        uint32_t k = atomic_load_explicit(&series[i].key, memory_order_relaxed);
        if (k == key)
            return &series[i];
        if (k == 0) {
            /* Release: the count (0) is there before the key is seen. */
            atomic_store_explicit(&series[i].key, key, memory_order_release);
            return &series[i];
        }
    }
    return NULL;
}

_Atomic uint64_t *shm_http_counter(struct shm_http *h, uint32_t route, unsigned method,
                                   unsigned status)
{
    struct shm_http_series *s;

    if (route > SHM_HTTP_ROUTES)
        route = 0;
    s = series_get(h->series, SHM_HTTP_SERIES, SHM_HTTP_KEY(route, method, status));
    if (!s && route != 0)
        s = series_get(h->series, SHM_HTTP_SERIES, SHM_HTTP_KEY(0, method, status));
    return s ? &s->count : &h->dropped;
}

struct shm_hist *shm_http_hist(struct shm_http *h, uint32_t route)
{
    return route >= 1 && route <= SHM_HTTP_ROUTES ? &h->routes[route - 1].duration
                                                  : &h->other_duration;
}

/* dst += src, word by word (histograms are arrays of uint64). dst: one writer. */
static void hist_fold(struct shm_hist *dst, const struct shm_hist *src)
{
    const _Atomic uint64_t *s = &src->buckets[0];
    _Atomic uint64_t *d = &dst->buckets[0];

    for (size_t i = 0; i < sizeof(struct shm_hist) / sizeof(uint64_t); i++) {
        /* Relaxed: statistics; the retire seqlock orders them for readers. */
        uint64_t v = atomic_load_explicit(&s[i], memory_order_relaxed);
        if (v)
            atomic_store_explicit(&d[i], atomic_load_explicit(&d[i], memory_order_relaxed) + v,
                                  memory_order_relaxed);
    }
}

void shm__http_retire(struct shm_http *retired, struct shm_http *w)
{
    uint32_t map[SHM_HTTP_ROUTES + 1] = {0};

    for (int i = 0; i < SHM_HTTP_ROUTES; i++) {
        if (!atomic_load_explicit(&w->routes[i].used, memory_order_acquire))
            break;
        map[i + 1] = shm_http_route(retired, w->routes[i].name);
        hist_fold(shm_http_hist(retired, map[i + 1]), &w->routes[i].duration);
    }
    hist_fold(&retired->other_duration, &w->other_duration);
    for (int i = 0; i < SHM_HTTP_SERIES; i++) {
        uint32_t key = atomic_load_explicit(&w->series[i].key, memory_order_acquire);
        uint64_t n = atomic_load_explicit(&w->series[i].count, memory_order_relaxed);
        _Atomic uint64_t *to;
        if (!key)
            break;
        if (!n)
            continue;
        to = shm_http_counter(retired, map[SHM_HTTP_KEY_ROUTE(key) % (SHM_HTTP_ROUTES + 1)],
                              SHM_HTTP_KEY_METHOD(key), SHM_HTTP_KEY_STATUS(key));
        atomic_store_explicit(to, atomic_load_explicit(to, memory_order_relaxed) + n,
                              memory_order_relaxed);
    }
    atomic_store_explicit(&retired->dropped,
                          atomic_load_explicit(&retired->dropped, memory_order_relaxed) +
                              atomic_load_explicit(&w->dropped, memory_order_relaxed),
                          memory_order_relaxed);
    /* The dead worker's block starts empty for its successor. Relaxed: the seqlock around
     * the retire orders readers; the new incarnation is forked after this. */
    memset((void *)w, 0, sizeof *w);
}

/* The index of name in out's routes, adding it; 0 ("other") when out is full. */
static int total_route(struct shm_http_totals *out, const char *name)
{
    for (int i = 1; i < out->nroutes; i++)
        if (strcmp(out->routes[i].name, name) == 0)
            return i;
    if (out->nroutes == SHM_HTTP_TOTAL_ROUTES)
        return 0;
    snprintf(out->routes[out->nroutes].name, SHM_LABEL_LEN, "%s", name);
    return out->nroutes++;
}

/* Adds a histogram of shared memory to a private one. */
static void hist_add(struct shm_hist *dst, const struct shm_hist *src)
{
    const _Atomic uint64_t *s = &src->buckets[0];
    _Atomic uint64_t *d = &dst->buckets[0];

    for (size_t i = 0; i < sizeof(struct shm_hist) / sizeof(uint64_t); i++)
        /* Relaxed load of shared stats; dst is private to the caller. */
        atomic_init(&d[i], atomic_load_explicit(&d[i], memory_order_relaxed) +
                               atomic_load_explicit(&s[i], memory_order_relaxed));
}

/* Adds n answers of key (route an index of out) to out. */
static void total_count(struct shm_http_totals *out, uint32_t key, uint64_t n)
{
    for (int i = 0; i < out->nseries; i++) {
        if (out->series[i].key == key) {
            out->series[i].count += n;
            return;
        }
    }
    if (out->nseries == SHM_HTTP_TOTAL_SERIES) {
        out->dropped += n;
        return;
    }
    out->series[out->nseries].key = key;
    out->series[out->nseries++].count = n;
}

/* Adds one block (a worker's or retired_http) to out. */
static void total_block(struct shm_http_totals *out, const struct shm_http *h)
{
    int map[SHM_HTTP_ROUTES + 1] = {0};
    char name[SHM_LABEL_LEN];

    for (int i = 0; i < SHM_HTTP_ROUTES; i++) {
        /* Acquire: the name is complete. */
        if (!atomic_load_explicit(&h->routes[i].used, memory_order_acquire))
            break;
        memcpy(name, h->routes[i].name, sizeof name);
        name[sizeof name - 1] = '\0';
        map[i + 1] = total_route(out, name);
        hist_add(&out->routes[map[i + 1]].duration, &h->routes[i].duration);
    }
    hist_add(&out->routes[0].duration, &h->other_duration);
    for (int i = 0; i < SHM_HTTP_SERIES; i++) {
        /* Acquire: a claimed series' count is there. */
        uint32_t key = atomic_load_explicit(&h->series[i].key, memory_order_acquire);
        uint64_t n = atomic_load_explicit(&h->series[i].count, memory_order_relaxed);
        if (!key)
            break;
        if (n)
            total_count(out,
                        SHM_HTTP_KEY((uint32_t)map[SHM_HTTP_KEY_ROUTE(key) % (SHM_HTTP_ROUTES + 1)],
                                     SHM_HTTP_KEY_METHOD(key), SHM_HTTP_KEY_STATUS(key)),
                        n);
    }
    out->dropped += atomic_load_explicit(&h->dropped, memory_order_relaxed);
}

void shm_http_total(const struct shm_segment *seg, struct shm_http_totals *out)
{
    for (int tries = 0;; tries++) {
        /* Acquire: the move of a retire that finished before is visible below. */
        uint64_t before = atomic_load_explicit(&seg->retire_seq, memory_order_acquire);
        if ((before & 1) && tries < HTTP_TOTAL_MAX_TRIES) {
            sched_yield();
            continue;
        }
        memset(out, 0, sizeof *out);
        snprintf(out->routes[0].name, SHM_LABEL_LEN, "other");
        out->nroutes = 1;
        total_block(out, &seg->retired_http);
        for (int w = 0; w < SHM_MAX_WORKERS; w++)
            total_block(out, &seg->workers[w].http);
        /* Acquire fence, then a relaxed load (as total_words in stats.c). */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&seg->retire_seq, memory_order_relaxed) == before ||
            tries >= HTTP_TOTAL_MAX_TRIES)
            return;
    }
}
