/*
 * Fibers on a libuv loop (runtime/fiber.c), on a real loop: a spawned function runs on a
 * fiber after rt_fiber_spawn returns and its done callback on the loop's stack; a fiber
 * that suspends is resumed by rt_fiber_wake from a loop callback; rt_fiber_sleep lets the
 * loop go on (a 10 ms timer fires before a 300 ms sleep ends); a thousand fibers suspended
 * at once all finish, on reused stacks; a fiber may use 150 KiB of its 256 KiB stack.
 */
#include <stdio.h>
#include <string.h>

#include "runtime/rt_fiber.h"
#include "tests/tap.h"

static uv_loop_t loop;
static struct rt_fibers *sched;
static char order[64]; /* what ran, in order: one letter each */

static void mark(char c)
{
    size_t n = strlen(order);
    if (n + 1 < sizeof order)
        order[n] = c;
}

/* ---- spawn, done --------------------------------------------------------------------- */

static int on_fiber, done_on_loop;

static void simple(void *arg)
{
    on_fiber = rt_fiber_current() != NULL;
    mark('f');
}

static void simple_done(void *arg)
{
    done_on_loop = rt_fiber_current() == NULL;
    mark('d');
}

/* ---- suspend and wake ---------------------------------------------------------------- */

static struct rt_fiber *waiting;

static void waiter(void *arg)
{
    waiting = rt_fiber_current();
    mark('s');
    rt_fiber_suspend();
    mark('r');
}

/* Repeats until the fiber waits. */
static void on_wake_timer(uv_timer_t *t)
{
    if (!waiting)
        return;
    uv_timer_stop(t);
    mark('w');
    rt_fiber_wake(waiting);
}

static void nothing(void *arg)
{
}

/* ---- sleep --------------------------------------------------------------------------- */

static void on_short_timer(uv_timer_t *t)
{
    mark('T');
}

/* Starts a 10 ms timer, then sleeps 300 ms: if the sleep held the loop, S came first. */
static void sleeper(void *arg)
{
    uv_timer_start(arg, on_short_timer, 10, 0);
    rt_fiber_sleep(300);
    mark('S');
}

/* ---- many ---------------------------------------------------------------------------- */

enum { MANY = 1000 };
static struct rt_fiber *many[MANY];
static int nmany, finished;

static void parked(void *arg)
{
    many[(long)arg] = rt_fiber_current();
    nmany++;
    rt_fiber_suspend();
    finished++;
}

/* Repeats until all of them wait. */
static void on_release_timer(uv_timer_t *t)
{
    if (nmany < MANY)
        return;
    uv_timer_stop(t);
    for (int i = 0; i < MANY; i++)
        rt_fiber_wake(many[i]);
}

/* ---- stack --------------------------------------------------------------------------- */

static int deep_ok;

/* Touches about depth KiB of stack. */
static int recurse(int depth)
{
    volatile unsigned char buf[1024];
    memset((unsigned char *)buf, depth, sizeof buf);
    return depth == 0 ? buf[0] : recurse(depth - 1) + buf[1] - depth;
}

static void deep(void *arg)
{
    deep_ok = recurse(150) == 0;
}

int main(void)
{
    uv_timer_t t1, t2;

    tap_timeout(30);
    plan(12);
    uv_loop_init(&loop);
    if (rt_fibers_create(&sched, &loop) != 0)
        bail("rt_fibers_create");

    is_int(rt_fiber_spawn(sched, simple, simple_done, NULL), 0, "spawn");
    is_str(order, "", "nothing runs before rt_fiber_spawn returns");
    uv_run(&loop, UV_RUN_DEFAULT);
    ok(on_fiber && done_on_loop && strcmp(order, "fd") == 0,
       "the function ran on a fiber, then done on the loop's stack (%s)", order);

    memset(order, 0, sizeof order);
    rt_fiber_spawn(sched, waiter, nothing, NULL);
    uv_timer_init(&loop, &t1);
    uv_timer_start(&t1, on_wake_timer, 20, 20);
    uv_run(&loop, UV_RUN_DEFAULT);
    is_str(order, "swr", "a suspended fiber runs on after the loop wakes it");
    is_int(rt_fibers_live(sched), 0, "... and is finished");

    memset(order, 0, sizeof order);
    uv_timer_init(&loop, &t2);
    rt_fiber_spawn(sched, sleeper, nothing, &t2);
    uint64_t t0 = uv_now(&loop);
    uv_run(&loop, UV_RUN_DEFAULT);
    is_str(order, "TS", "a 10 ms timer fires while a fiber sleeps 300 ms");
    ok(uv_now(&loop) - t0 >= 300, "the sleep lasted 300 ms (%llu)",
       (unsigned long long)(uv_now(&loop) - t0));

    for (long i = 0; i < MANY; i++)
        if (rt_fiber_spawn(sched, parked, nothing, (void *)i) != 0)
            bail("spawn %ld", i);
    uv_timer_start(&t1, on_release_timer, 10, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    is_int(nmany, MANY, "%d fibers suspended at once", MANY);
    is_int(finished, MANY, "... and all finished");
    is_int(rt_fibers_live(sched), 0, "none is left");

    rt_fiber_spawn(sched, deep, nothing, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ok(deep_ok, "a fiber uses 150 KiB of its stack");

    rt_fibers_close(sched);
    uv_close((uv_handle_t *)&t1, NULL);
    uv_close((uv_handle_t *)&t2, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    is_int(uv_loop_close(&loop), 0, "the loop closes: the scheduler let go of its handle");
    return done_testing();
}
