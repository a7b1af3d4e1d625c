/*
 * Fibers on a libuv loop (rt_fiber.h): stacks of their own, a ready list run from a uv_idle
 * handle (so that a ready fiber keeps the loop from blocking in poll), and stacks kept for
 * reuse. A fiber's entry never returns: a finished fiber waits on its own stack for the
 * next function, so starting one costs a context switch, not a new context.
 *
 * The switch: on x86-64 a few instructions that save what the ABI says a call preserves
 * (six registers, the SSE and x87 control words) and swap stack pointers. glibc's
 * swapcontext also saves the signal mask, which is a system call each way: 12 % of a web
 * worker's time under load with it. Elsewhere, ucontext.
 *
 * Under AddressSanitizer and ThreadSanitizer every switch is announced to the sanitizer
 * (their documented fiber interfaces); without that both report nonsense about the
 * foreign stacks.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runtime/rt_fiber.h"

#if defined(__x86_64__)
/* A suspended context: its stack pointer; the saved registers are on that stack. */
struct fiber_ctx {
    void *sp;
};

/* Saves the caller's context in *from and continues the one to_sp names. */
void pgc_fiber_switch(void **from_sp, void *to_sp);
__asm__(".text\n"
        ".globl pgc_fiber_switch\n"
        ".type pgc_fiber_switch, @function\n"
        "pgc_fiber_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size pgc_fiber_switch, .-pgc_fiber_switch\n");

/* A context that starts entry on the stack [base, base + size). */
static int ctx_make(struct fiber_ctx *c, void *base, size_t size, void (*entry)(void))
{
    uintptr_t top = ((uintptr_t)base + size) & ~(uintptr_t)15;
    void **sp = (void **)top;

    *--sp = NULL;          /* entry's return address: never used; keeps the ABI alignment */
    *--sp = (void *)entry; /* where pgc_fiber_switch's ret goes */
    for (int i = 0; i < 6; i++)
        *--sp = NULL; /* rbp, rbx, r12-r15 */
    sp--;             /* MXCSR and the x87 control word: their defaults */
    ((uint32_t *)sp)[0] = 0x1F80;
    ((uint16_t *)sp)[2] = 0x037F;
    c->sp = sp;
    return 0;
}

static void ctx_switch(struct fiber_ctx *from, struct fiber_ctx *to)
{
    pgc_fiber_switch(&from->sp, to->sp);
}
#else
#include <ucontext.h>

struct fiber_ctx {
    ucontext_t uc;
};

static int ctx_make(struct fiber_ctx *c, void *base, size_t size, void (*entry)(void))
{
    if (getcontext(&c->uc) != 0)
        return -1;
    c->uc.uc_stack.ss_sp = base;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = NULL; /* entry never returns */
    makecontext(&c->uc, entry, 0);
    return 0;
}

static void ctx_switch(struct fiber_ctx *from, struct fiber_ctx *to)
{
    swapcontext(&from->uc, &to->uc);
}
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FIBER_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define FIBER_TSAN 1
#endif

/* Stacks kept for reuse beyond the fibers alive: a burst maps more, and these stay. */
#define FIBERS_KEPT 64

struct rt_fiber {
    struct rt_fibers *sched;
    struct fiber_ctx ctx;
    void *map; /* guard page + stack */
    size_t map_size;
    rt_fiber_fn fn, done;
    void *arg;
    struct rt_fiber *next; /* ready list or kept list */
    bool ready;            /* on the ready list */
#ifdef FIBER_ASAN
    void *fake_stack;
#endif
#ifdef FIBER_TSAN
    void *tsan;
#endif
};

struct rt_fibers {
    uv_loop_t *loop;
    uv_idle_t idle;
    struct fiber_ctx loop_ctx; /* the loop's stack while a fiber runs */
    struct rt_fiber *ready_head, *ready_tail;
    struct rt_fiber *kept;
    int nkept, live;
    bool closing;
#ifdef FIBER_ASAN
    const void *loop_stack_bottom;
    size_t loop_stack_size;
#endif
#ifdef FIBER_TSAN
    void *tsan_loop;
#endif
};

/* The fiber running on this thread. Set and cleared by run_fiber only. */
static __thread struct rt_fiber *current;

struct rt_fiber *rt_fiber_current(void)
{
    return current;
}

int rt_fibers_live(const struct rt_fibers *s)
{
    return s->live;
}

/* ---- switching ----------------------------------------------------------------------- */

/* Fiber → loop stack. Returns once the fiber runs again. */
static void switch_to_loop(struct rt_fiber *f)
{
    struct rt_fibers *s = f->sched;
#ifdef FIBER_ASAN
    __sanitizer_start_switch_fiber(&f->fake_stack, s->loop_stack_bottom, s->loop_stack_size);
#endif
#ifdef FIBER_TSAN
    __tsan_switch_to_fiber(s->tsan_loop, 0);
#endif
    ctx_switch(&f->ctx, &s->loop_ctx);
#ifdef FIBER_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &s->loop_stack_bottom, &s->loop_stack_size);
#endif
}

/* The first frame of every fiber: runs functions until the process ends. */
static void fiber_main(void)
{
    struct rt_fiber *f = current;
#ifdef FIBER_ASAN
    __sanitizer_finish_switch_fiber(NULL, &f->sched->loop_stack_bottom, &f->sched->loop_stack_size);
#endif
    for (;;) {
        f->fn(f->arg);
        f->fn = NULL;
        switch_to_loop(f); /* run_fiber sees fn == NULL: finished */
    }
}

/* Loop stack → f, until f suspends or finishes. */
static void run_fiber(struct rt_fibers *s, struct rt_fiber *f)
{
#ifdef FIBER_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, (char *)f->map + getpagesize(),
                                   f->map_size - (size_t)getpagesize());
#endif
#ifdef FIBER_TSAN
    s->tsan_loop = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(f->tsan, 0);
#endif
    current = f;
    ctx_switch(&s->loop_ctx, &f->ctx);
    current = NULL;
#ifdef FIBER_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    if (f->fn == NULL) {
        s->live--;
        f->done(f->arg);
        if (s->nkept < FIBERS_KEPT && !s->closing) {
            f->next = s->kept;
            s->kept = f;
            s->nkept++;
        } else {
#ifdef FIBER_TSAN
            __tsan_destroy_fiber(f->tsan);
#endif
            munmap(f->map, f->map_size);
            free(f);
        }
    }
}

/* The idle phase: runs the fibers that were ready when it began (ones they wake run on
 * the next pass, so that I/O is polled in between). */
static void on_idle(uv_idle_t *h)
{
    struct rt_fibers *s = h->data;
    struct rt_fiber *list = s->ready_head, *f;

    s->ready_head = s->ready_tail = NULL;
    while ((f = list) != NULL) {
        list = f->next;
        f->next = NULL;
        f->ready = false;
        run_fiber(s, f);
    }
    if (!s->ready_head)
        uv_idle_stop(h);
}

static void make_ready(struct rt_fibers *s, struct rt_fiber *f)
{
    f->ready = true;
    f->next = NULL;
    if (s->ready_tail)
        s->ready_tail->next = f;
    else
        s->ready_head = f;
    s->ready_tail = f;
    /* Closed: what waits is never resumed (rt_fibers_close says when to close). */
    if (!s->closing)
        uv_idle_start(&s->idle, on_idle);
}

/* ---- fibers -------------------------------------------------------------------------- */

/* A fiber with a stack: a kept one, or a new mapping. NULL when none can be mapped. */
static struct rt_fiber *fiber_get(struct rt_fibers *s)
{
    struct rt_fiber *f = s->kept;
    long page = getpagesize();

    if (f) {
        s->kept = f->next;
        s->nkept--;
        return f;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->sched = s;
    f->map_size = RT_FIBER_STACK_SIZE + (size_t)page;
    f->map = mmap(NULL, f->map_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (f->map == MAP_FAILED || mprotect(f->map, (size_t)page, PROT_NONE) != 0) {
        if (f->map != MAP_FAILED)
            munmap(f->map, f->map_size);
        free(f);
        return NULL;
    }
    if (ctx_make(&f->ctx, (char *)f->map + page, RT_FIBER_STACK_SIZE, fiber_main) != 0) {
        munmap(f->map, f->map_size);
        free(f);
        return NULL;
    }
#ifdef FIBER_TSAN
    f->tsan = __tsan_create_fiber(0);
#endif
    return f;
}

int rt_fiber_spawn(struct rt_fibers *s, rt_fiber_fn fn, rt_fiber_fn done, void *arg)
{
    struct rt_fiber *f;

    if (s->closing)
        return -ESHUTDOWN;
    f = fiber_get(s);
    if (!f)
        return -ENOMEM;
    f->fn = fn;
    f->done = done;
    f->arg = arg;
    s->live++;
    make_ready(s, f);
    return 0;
}

void rt_fiber_suspend(void)
{
    switch_to_loop(current);
}

void rt_fiber_wake(struct rt_fiber *f)
{
    if (f == current || f->ready)
        return;
    make_ready(f->sched, f);
}

static void on_sleep_timer(uv_timer_t *t)
{
    rt_fiber_wake(t->data);
}

static void on_sleep_closed(uv_handle_t *h)
{
    rt_fiber_wake(h->data);
}

void rt_fiber_sleep(uint64_t ms)
{
    struct rt_fiber *f = current;
    uv_timer_t t;

    uv_timer_init(f->sched->loop, &t);
    t.data = f;
    uv_timer_start(&t, on_sleep_timer, ms, 0);
    rt_fiber_suspend();
    /* The handle lives on this stack: wait until the loop has let go of it. */
    uv_close((uv_handle_t *)&t, on_sleep_closed);
    rt_fiber_suspend();
}

/* ---- the scheduler ------------------------------------------------------------------- */

int rt_fibers_create(struct rt_fibers **out, uv_loop_t *loop)
{
    struct rt_fibers *s = calloc(1, sizeof *s);
    int rc;

    if (!s)
        return -ENOMEM;
    s->loop = loop;
    rc = uv_idle_init(loop, &s->idle);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->idle.data = s;
    *out = s;
    return 0;
}

/* Fibers still suspended keep pointing at s: then it stays (the process is ending). */
static void on_sched_closed(uv_handle_t *h)
{
    struct rt_fibers *s = h->data;
    if (s->live == 0)
        free(s);
}

void rt_fibers_close(struct rt_fibers *s)
{
    struct rt_fiber *f;

    if (!s || s->closing)
        return;
    s->closing = true;
    while ((f = s->kept) != NULL) {
        s->kept = f->next;
#ifdef FIBER_TSAN
        __tsan_destroy_fiber(f->tsan);
#endif
        munmap(f->map, f->map_size);
        free(f);
    }
    s->nkept = 0;
    uv_close((uv_handle_t *)&s->idle, on_sched_closed);
}
