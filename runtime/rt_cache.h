/*
 * A TTL cache of byte strings by string key, shared by the threads of one process (the
 * plugin API's pgc_cache_get/set): a hash table with an LRU list, bounded in entries and
 * bytes, one mutex.
 */
#ifndef PGCORRAL_RT_CACHE_H
#define PGCORRAL_RT_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct rt_cache; /* opaque */

/*
 * Creates a cache holding at most max_entries entries and max_bytes bytes of keys and
 * values (both > 0). Returns 0 and writes *out (free with rt_cache_destroy), or -EINVAL /
 * -ENOMEM. Any thread.
 */
__attribute__((warn_unused_result)) int rt_cache_create(struct rt_cache **out, size_t max_entries,
                                                        size_t max_bytes);

/* Frees every entry and the cache. NULL does nothing. No other thread may use it. */
void rt_cache_destroy(struct rt_cache *c);

/*
 * Copies the value of key into a new buffer (len bytes plus a NUL; caller frees with
 * free()) and marks it recently used. Returns 0 and writes *value and *len (len may be
 * NULL), -ENOENT when absent or expired (an expired entry is dropped), or -ENOMEM. Any
 * thread.
 */
__attribute__((warn_unused_result)) int rt_cache_get(struct rt_cache *c, const char *key,
                                                     char **value, size_t *len);

/*
 * Stores a copy of value (len bytes) under key (copied) for ttl_ms milliseconds (> 0),
 * replacing an existing entry, then evicts expired and least recently used entries until
 * the cache is within its bounds. Returns 0, -EINVAL (ttl_ms 0, or an entry larger than
 * max_bytes) or -ENOMEM. Any thread.
 */
__attribute__((warn_unused_result)) int
rt_cache_set(struct rt_cache *c, const char *key, const void *value, size_t len, uint64_t ttl_ms);

/* Removes key. Returns 0 or -ENOENT. Any thread. */
int rt_cache_delete(struct rt_cache *c, const char *key);

/* Entries and bytes held now (expired ones included until they are dropped). */
void rt_cache_usage(struct rt_cache *c, size_t *entries, size_t *bytes);

#endif
