/*
 * Fibers on a libuv loop: code that is written as blocking C (a plugin route handler) runs
 * on the loop thread on a stack of its own, and where it would wait for the loop (a
 * statement's result, a retry delay) it suspends instead, and the loop goes on. Switching
 * costs no thread wake-up: a route handler on a fiber is as cheap as the loop's own routes.
 * Only code that waits through these calls may run on a fiber: a fiber that blocks (sleep,
 * file or network I/O of its own) blocks the whole loop.
 *
 * Everything here runs on the loop's thread.
 */
#ifndef PGCORRAL_RT_FIBER_H
#define PGCORRAL_RT_FIBER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Each fiber's stack (plus a guard page below it: an overflow is a SIGSEGV of the
 * worker, never a silent write into other memory). */
#define RT_FIBER_STACK_SIZE (256 * 1024)

struct rt_fibers; /* a loop's scheduler; opaque */
struct rt_fiber;  /* opaque */

typedef void (*rt_fiber_fn)(void *arg);

/* A scheduler on loop. Returns 0 and *out, or -ENOMEM / a libuv error. */
int rt_fibers_create(struct rt_fibers **out, uv_loop_t *loop);

/* Closes the scheduler: its handle closes, stacks kept for reuse are unmapped. Fibers that
 * still wait are never resumed (their stacks stay mapped: call it once they are done). */
void rt_fibers_close(struct rt_fibers *s);

/*
 * Runs fn(arg) on a new fiber, from the loop's next idle phase (never before this returns),
 * then done(arg) on the loop's own stack once fn has returned. Returns 0, or -ENOMEM (no
 * stack could be mapped) or -ESHUTDOWN (the scheduler is closing): then nothing runs.
 */
int rt_fiber_spawn(struct rt_fibers *s, rt_fiber_fn fn, rt_fiber_fn done, void *arg);

/* The fiber running on this thread, or NULL (the loop's own stack, or another thread). */
struct rt_fiber *rt_fiber_current(void);

/* Suspends the running fiber until rt_fiber_wake. A fiber must be running. */
void rt_fiber_suspend(void);

/* Makes f run again from the loop's next idle phase (f must be suspended, or be the fiber
 * that calls it: then it is a no-op). */
void rt_fiber_wake(struct rt_fiber *f);

/* Suspends the running fiber for ms milliseconds; the loop goes on meanwhile. */
void rt_fiber_sleep(uint64_t ms);

/* Fibers of s that have started and not yet finished (for drains and tests). */
int rt_fibers_live(const struct rt_fibers *s);

#endif
