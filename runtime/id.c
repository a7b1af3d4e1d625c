/*
 * Random hex ids for requests and errors (splitmix64 over a per-process seed and counter)
 * and the constant-time comparison of secrets.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "runtime/rt_id.h"

/* The seed of this process, and whether it was read in this process: a fork clears it
 * (pthread_atfork), so that a child never repeats its parent's ids. Written once per
 * process by whichever thread gets there first; a race only reads twice. Not a getpid()
 * per id: that is a system call, and every HTTP request makes an id. */
static _Atomic uint64_t id_seed;
static _Atomic bool id_seeded;
static pthread_once_t id_atfork_once = PTHREAD_ONCE_INIT;

static void id_after_fork(void)
{
    atomic_store_explicit(&id_seeded, false, memory_order_relaxed);
}

static void id_atfork_register(void)
{
    pthread_atfork(NULL, NULL, id_after_fork);
}

/* Ids made so far in this process. */
static _Atomic uint64_t id_counter;

/* splitmix64: a bijection that spreads a counter over all 64 bits. */
static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* The seed of this process, read on first use. */
static uint64_t id_seed_get(void)
{
    uint64_t seed;
    pid_t pid;

    /* Acquire: the seed stored before the flag. */
    if (atomic_load_explicit(&id_seeded, memory_order_acquire))
        return atomic_load_explicit(&id_seed, memory_order_relaxed);
    pthread_once(&id_atfork_once, id_atfork_register);
    pid = getpid();
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)pid << 40);
    }
    /* Relaxed store, then a release store of the flag that publishes it. */
    atomic_store_explicit(&id_seed, seed, memory_order_relaxed);
    atomic_store_explicit(&id_seeded, true, memory_order_release);
    return seed;
}

void rt_id_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t seed = id_seed_get();
    /* Relaxed: only uniqueness matters. */
    uint64_t k = atomic_fetch_add_explicit(&id_counter, 1, memory_order_relaxed);
    uint64_t a = mix64(seed ^ mix64(k)), b = mix64(a ^ seed);

    if (n > 32)
        n = 32;
    for (size_t i = 0; i < n; i++) {
        uint64_t *w = i < 16 ? &a : &b;
        out[i] = hex[*w & 15];
        *w >>= 4;
    }
    out[n] = '\0';
}

bool rt_request_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > RT_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool rt_secret_equal(const char *given, size_t given_len, const char *secret, size_t secret_len)
{
    /* volatile: the compiler may not turn the loop into one that stops early. */
    volatile unsigned char diff = 0;
    size_t j = 0;
    uint64_t lendiff = (uint64_t)given_len ^ (uint64_t)secret_len;

    if (secret_len == 0)
        return false; /* no secret configured: nothing matches */
    for (size_t i = 0; i < given_len; i++) {
        diff |= (unsigned char)(given[i] ^ secret[j]);
        /* j = (j + 1) % secret_len without a data-dependent branch on the secret. */
        j++;
        j &= (size_t)0 - (size_t)(j < secret_len);
    }
    for (int s = 0; s < 64; s += 8)
        diff |= (unsigned char)(lendiff >> s);
    return diff == 0 && given_len > 0;
}
