/*
 * The TTL cache behind pgc_cache_get/set: byte strings by string key, bounded in entries
 * and bytes, expired on read, least recently used evicted first.
 *
 *   buckets[hash % nbuckets] -> entry -> entry      (chains, singly linked)
 *   lru: head (most recent) <-> entry <-> ... <-> tail (evicted first)
 *
 * Each entry is one allocation: the struct, then the key, then the value (NUL-terminated).
 * One mutex guards everything; values are copied in and out, so no reader holds a pointer
 * into the cache after the lock is released.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rt_cache.h"

struct cache_entry {
    struct cache_entry *chain;       /* next in the bucket */
    struct cache_entry *prev, *next; /* LRU list */
    uint64_t hash;
    uint64_t expires_ms; /* CLOCK_MONOTONIC */
    size_t key_len, value_len;
    char data[]; /* key NUL value NUL */
};

struct rt_cache {
    pthread_mutex_t mu;
    struct cache_entry **buckets;
    size_t nbuckets; /* a power of two */
    struct cache_entry *head, *tail;
    size_t entries, bytes;
    size_t max_entries, max_bytes;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* FNV-1a. */
static uint64_t hash_key(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* What an entry counts against max_bytes. */
static size_t entry_cost(size_t key_len, size_t value_len)
{
    return sizeof(struct cache_entry) + key_len + value_len + 2;
}

int rt_cache_create(struct rt_cache **out, size_t max_entries, size_t max_bytes)
{
    struct rt_cache *c;
    size_t n = 16;

    if (max_entries == 0 || max_bytes == 0)
        return -EINVAL;
    while (n < max_entries && n < ((size_t)1 << 20))
        n <<= 1;
    c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->buckets = calloc(n, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return -ENOMEM;
    }
    c->nbuckets = n;
    c->max_entries = max_entries;
    c->max_bytes = max_bytes;
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void rt_cache_destroy(struct rt_cache *c)
{
    if (!c)
        return;
    for (struct cache_entry *e = c->head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c->buckets);
    free(c);
}

static void lru_unlink(struct rt_cache *c, struct cache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(struct rt_cache *c, struct cache_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

/* The link that points at key's entry (or at the NULL ending its chain). Locked. */
static struct cache_entry **find_link(struct rt_cache *c, const char *key, size_t len, uint64_t h)
{
    struct cache_entry **link = &c->buckets[h & (c->nbuckets - 1)];
    while (*link) {
        struct cache_entry *e = *link;
        if (e->hash == h && e->key_len == len && memcmp(e->data, key, len) == 0)
            break;
        link = &e->chain;
    }
    return link;
}

/* Unlinks and frees the entry *link points at. Locked. */
static void remove_at(struct rt_cache *c, struct cache_entry **link)
{
    struct cache_entry *e = *link;
    *link = e->chain;
    lru_unlink(c, e);
    c->entries--;
    c->bytes -= entry_cost(e->key_len, e->value_len);
    free(e);
}

static void remove_entry(struct rt_cache *c, struct cache_entry *e)
{
    remove_at(c, find_link(c, e->data, e->key_len, e->hash));
}

int rt_cache_get(struct rt_cache *c, const char *key, char **value, size_t *len)
{
    size_t klen = strlen(key);
    uint64_t h = hash_key(key, klen);
    struct cache_entry **link, *e;
    char *copy;
    int rc = -ENOENT;

    pthread_mutex_lock(&c->mu);
    link = find_link(c, key, klen, h);
    e = *link;
    if (e && e->expires_ms <= now_ms()) {
        remove_at(c, link);
        e = NULL;
    }
    if (e) {
        copy = malloc(e->value_len + 1);
        if (!copy) {
            rc = -ENOMEM;
        } else {
            memcpy(copy, e->data + e->key_len + 1, e->value_len + 1);
            lru_unlink(c, e);
            lru_push_head(c, e);
            *value = copy;
            if (len)
                *len = e->value_len;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int rt_cache_set(struct rt_cache *c, const char *key, const void *value, size_t len,
                 uint64_t ttl_ms)
{
    size_t klen = strlen(key);
    uint64_t h = hash_key(key, klen), now = now_ms();
    struct cache_entry **link, *e;

    if (ttl_ms == 0 || entry_cost(klen, len) > c->max_bytes)
        return -EINVAL;
    e = malloc(sizeof *e + klen + len + 2);
    if (!e)
        return -ENOMEM;
    e->hash = h;
    e->expires_ms = now + ttl_ms;
    e->key_len = klen;
    e->value_len = len;
    memcpy(e->data, key, klen + 1);
    if (len)
        memcpy(e->data + klen + 1, value, len);
    e->data[klen + 1 + len] = '\0';

    pthread_mutex_lock(&c->mu);
    link = find_link(c, key, klen, h);
    if (*link)
        remove_at(c, link);
    link = &c->buckets[h & (c->nbuckets - 1)];
    e->chain = *link;
    *link = e;
    lru_push_head(c, e);
    c->entries++;
    c->bytes += entry_cost(klen, len);
    /* Expired entries at the cold end first (a few: sets stay O(1)), then the least
     * recently used. Others expire when read or when they reach the cold end. */
    int budget = 16;
    for (struct cache_entry *x = c->tail, *prev; x && x != e && budget-- > 0; x = prev) {
        prev = x->prev;
        if (x->expires_ms <= now)
            remove_entry(c, x);
    }
    while ((c->entries > c->max_entries || c->bytes > c->max_bytes) && c->tail != e)
        remove_entry(c, c->tail);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int rt_cache_delete(struct rt_cache *c, const char *key)
{
    size_t klen = strlen(key);
    struct cache_entry **link;
    int rc = -ENOENT;

    pthread_mutex_lock(&c->mu);
    link = find_link(c, key, klen, hash_key(key, klen));
    if (*link) {
        remove_at(c, link);
        rc = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void rt_cache_usage(struct rt_cache *c, size_t *entries, size_t *bytes)
{
    pthread_mutex_lock(&c->mu);
    if (entries)
        *entries = c->entries;
    if (bytes)
        *bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}
