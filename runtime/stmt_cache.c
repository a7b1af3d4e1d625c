/*
 * The per-connection LRU of prepared statements. A statement is named after the 64-bit
 * FNV-1a hash of its SQL ("pgc_<16 hex>"), so the same SQL gets the same name on every
 * connection. Used by whoever holds the connection (the loop, or one handler thread).
 *
 *   buckets[h & mask] -> e[i] -> e[i.hnext] -> ...     (hash chains)
 *   lru_head (newest) <-> ... <-> lru_tail (evicted next)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_int.h"

static uint64_t stmt_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

void rt__stmt_init(struct rt_stmt_cache *sc, int cap)
{
    memset(sc, 0, sizeof *sc);
    sc->cap = cap > 0 ? cap : 0;
    sc->lru_head = sc->lru_tail = -1;
}

void rt__stmt_clear(struct rt_stmt_cache *sc)
{
    if (!sc->e)
        return;
    for (int i = 0; i < sc->cap; i++) {
        free(sc->e[i].sql);
        sc->e[i].sql = NULL;
        sc->e[i].used = false;
    }
    for (int i = 0; i < sc->nbuckets; i++)
        sc->buckets[i] = -1;
    sc->n = 0;
    sc->lru_head = sc->lru_tail = -1;
}

void rt__stmt_free(struct rt_stmt_cache *sc)
{
    rt__stmt_clear(sc);
    free(sc->e);
    free(sc->buckets);
    sc->e = NULL;
    sc->buckets = NULL;
}

/* Allocates the arrays on first use. Returns false when out of memory. */
static bool stmt_alloc(struct rt_stmt_cache *sc)
{
    int nb = 16;
    while (nb < 2 * sc->cap)
        nb *= 2;
    sc->e = calloc((size_t)sc->cap, sizeof *sc->e);
    sc->buckets = malloc((size_t)nb * sizeof *sc->buckets);
    if (!sc->e || !sc->buckets) {
        free(sc->e);
        free(sc->buckets);
        sc->e = NULL;
        sc->buckets = NULL;
        return false;
    }
    sc->nbuckets = nb;
    for (int i = 0; i < nb; i++)
        sc->buckets[i] = -1;
    return true;
}

static void stmt_lru_unlink(struct rt_stmt_cache *sc, int i)
{
    struct rt_stmt_entry *e = &sc->e[i];
    if (e->lru_prev >= 0)
        sc->e[e->lru_prev].lru_next = e->lru_next;
    else
        sc->lru_head = e->lru_next;
    if (e->lru_next >= 0)
        sc->e[e->lru_next].lru_prev = e->lru_prev;
    else
        sc->lru_tail = e->lru_prev;
}

static void stmt_lru_push(struct rt_stmt_cache *sc, int i)
{
    struct rt_stmt_entry *e = &sc->e[i];
    e->lru_prev = -1;
    e->lru_next = sc->lru_head;
    if (sc->lru_head >= 0)
        sc->e[sc->lru_head].lru_prev = i;
    sc->lru_head = i;
    if (sc->lru_tail < 0)
        sc->lru_tail = i;
}

/* Removes entry i from its chain and the LRU, and frees its SQL. */
static void stmt_remove(struct rt_stmt_cache *sc, int i)
{
    struct rt_stmt_entry *e = &sc->e[i];
    int *pp = &sc->buckets[e->hash & (uint64_t)(sc->nbuckets - 1)];
    while (*pp != i)
        pp = &sc->e[*pp].hnext;
    *pp = e->hnext;
    stmt_lru_unlink(sc, i);
    free(e->sql);
    e->sql = NULL;
    e->used = false;
    sc->n--;
}

/* Index of sql's entry (hash h), -1 when absent, -2 when another SQL has the same hash. */
static int stmt_find(const struct rt_stmt_cache *sc, uint64_t h, const char *sql)
{
    for (int i = sc->buckets[h & (uint64_t)(sc->nbuckets - 1)]; i >= 0; i = sc->e[i].hnext)
        if (sc->e[i].hash == h)
            return strcmp(sc->e[i].sql, sql) == 0 ? i : -2;
    return -1;
}

enum rt_stmt_lookup rt__stmt_lookup(struct rt_stmt_cache *sc, const char *sql, char *name,
                                    char *evicted)
{
    evicted[0] = 0;
    if (sc->cap == 0 || (!sc->e && !stmt_alloc(sc)))
        return RT_STMT_UNNAMED;
    uint64_t h = stmt_hash(sql);
    int i = stmt_find(sc, h, sql);
    if (i == -2)
        return RT_STMT_UNNAMED;
    if (i >= 0) {
        if (sc->lru_head != i) {
            stmt_lru_unlink(sc, i);
            stmt_lru_push(sc, i);
        }
        memcpy(name, sc->e[i].name, sizeof sc->e[i].name);
        return RT_STMT_HIT;
    }
    char *copy = strdup(sql);
    if (!copy)
        return RT_STMT_UNNAMED;
    if (sc->n == sc->cap) {
        i = sc->lru_tail;
        memcpy(evicted, sc->e[i].name, sizeof sc->e[i].name);
        stmt_remove(sc, i);
    } else {
        for (i = 0; sc->e[i].used; i++)
            ;
    }
    struct rt_stmt_entry *e = &sc->e[i];
    e->hash = h;
    e->sql = copy;
    e->used = true;
    snprintf(e->name, sizeof e->name, "pgc_%016" PRIx64, h);
    int *head = &sc->buckets[h & (uint64_t)(sc->nbuckets - 1)];
    e->hnext = *head;
    *head = i;
    stmt_lru_push(sc, i);
    sc->n++;
    memcpy(name, e->name, sizeof e->name);
    return RT_STMT_MISS;
}

void rt__stmt_forget(struct rt_stmt_cache *sc, const char *sql)
{
    if (!sc->e)
        return;
    int i = stmt_find(sc, stmt_hash(sql), sql);
    if (i >= 0)
        stmt_remove(sc, i);
}
