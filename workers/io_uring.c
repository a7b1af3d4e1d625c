/*
 * The web server's io_uring backend: one multishot accept on the inherited listening
 * socket, one multishot recv per connection that picks its buffers from a provided-buffer
 * ring (registered by hand: liburing 2.3 has no io_uring_setup_buf_ring), sends that are
 * submitted together at the end of each batch of completions, and the ring's eventfd
 * watched by a uv_poll_t, so that the ring runs inside the worker's libuv loop.
 *
 *   eventfd readable -> ur_on_event -> reap every CQE (accept, recv, send, close)
 *                    -> the core queues answers -> one io_uring_submit for all of them
 *
 * Every CQE carries a struct web_uring_op * (or NULL for cancels, which are ignored). A
 * connection is only freed after its recv has ended, its send is done and its
 * IORING_OP_CLOSE has completed, so no CQE can point at freed memory.
 *
 * Where the kernel signals the eventfd for deferred task work (6.2 and later; probed), the
 * ring is IORING_SETUP_DEFER_TASKRUN | SINGLE_ISSUER: completion work runs when the loop
 * asks for it (io_uring_get_events), in batches, instead of interrupting the worker for
 * every packet. Measured: about 1.5x the ping throughput. Only the loop thread may touch
 * the ring then (and it is the only one that does).
 */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workers/web.h"

#define UR_ENTRIES 512     /* submission queue */
#define UR_CQ_ENTRIES 4096 /* completion queue: multishot ops post many */
#define UR_NBUFS 256       /* provided buffers (a power of two) */
#define UR_BUF_SIZE 4096   /* bytes per provided buffer */
#define UR_BGID 7          /* our buffer group id */
#define UR_BATCH 64        /* CQEs taken from the ring at a time */
#define UR_ACCEPT_RETRY_MS 100
#define UR_ROUNDS 8 /* reap rounds per wake-up before the loop serves its other handles */

/* The backend's state, in web_server.io_state. */
struct web_uring {
    struct web_server *srv;
    struct io_uring ring;
    int efd;
    uv_poll_t *poll;          /* on efd; heap, freed in its close callback */
    uv_timer_t *accept_retry; /* re-arms accept after EMFILE and the like; heap */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    char *bufs;
    struct web_uring_op accept_op;
    bool accept_armed; /* a multishot accept is active */
    bool accepting;    /* we want it active (false once draining) */
    bool in_batch;     /* reaping: submissions wait for the end of the batch */
    bool unsubmitted;  /* SQEs prepared and not yet submitted */
    bool defer;        /* IORING_SETUP_DEFER_TASKRUN: run task work with get_events */
};

/* Probe results, per process: whether io_uring works for us at all, and whether the
 * eventfd is signalled for deferred task work (so DEFER_TASKRUN can be used). */
static int probe_result = 1; /* 1 = not probed yet; else 0 or a negative error */
static const char *probe_reason;
static bool probe_defer;
static const char *probe_defer_reason = "DEFER_TASKRUN rings are not available";

/* The backend state of a server. */
static struct web_uring *ur_of(struct web_server *s)
{
    return s->io_state;
}

/* ---- submission ---------------------------------------------------------------------- */

/* A free SQE; submits the queue first when it is full. */
static struct io_uring_sqe *ur_sqe(struct web_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

    if (!sqe) {
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    if (!sqe) {
        /* The kernel would not take the queue (completions backed up): reap them first. */
        io_uring_get_events(&u->ring);
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    if (!sqe) {
        /* Only a broken ring gets here; serving on without it would lose requests. */
        rt_log(RT_LOG_ERROR, "web: io_uring submission queue stuck", NULL);
        abort();
    }
    u->unsubmitted = true;
    return sqe;
}

/* Submits what was prepared, unless a batch is being reaped (it submits at its end). */
static void ur_kick(struct web_uring *u)
{
    if (u->in_batch || !u->unsubmitted)
        return;
    u->unsubmitted = false;
    io_uring_submit(&u->ring);
}

/* Cancels the request whose user_data is op; the cancel's own CQE is skipped or, on
 * failure, carries NULL and is ignored. */
static void ur_cancel(struct web_uring *u, struct web_uring_op *op)
{
    struct io_uring_sqe *sqe = ur_sqe(u);
    io_uring_prep_cancel(sqe, op, 0);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data(sqe, NULL);
}

/* One multishot accept on the listening socket: a CQE per accepted connection. */
static void ur_arm_accept(struct web_uring *u)
{
    struct io_uring_sqe *sqe = ur_sqe(u);
    io_uring_prep_multishot_accept(sqe, u->srv->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &u->accept_op);
    u->accept_armed = true;
}

/* One multishot recv on c: a CQE per read, in a buffer the kernel picks from our ring. */
static void ur_arm_recv(struct web_uring *u, struct web_conn *c)
{
    struct io_uring_sqe *sqe = ur_sqe(u);
    io_uring_prep_recv_multishot(sqe, c->io.ur.fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = UR_BGID;
    io_uring_sqe_set_data(sqe, &c->io.ur.recv_op);
    c->io.ur.recv_armed = true;
}

/* Sends what is left of c->wout (a send may be partial). */
static void ur_send_rest(struct web_uring *u, struct web_conn *c)
{
    struct io_uring_sqe *sqe = ur_sqe(u);
    io_uring_prep_send(sqe, c->io.ur.fd, c->io.ur.send_ptr, c->io.ur.send_left, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, &c->io.ur.send_op);
    c->io.ur.send_busy = true;
}

/* Once a closing connection has no recv and no send left: IORING_OP_CLOSE; its CQE
 * hands the connection back to the core. */
static void ur_conn_maybe_closed(struct web_uring *u, struct web_conn *c)
{
    struct io_uring_sqe *sqe;

    if (!c->io.ur.closing || c->io.ur.recv_armed || c->io.ur.send_busy || c->io.ur.close_queued)
        return;
    sqe = ur_sqe(u);
    io_uring_prep_close(sqe, c->io.ur.fd);
    io_uring_sqe_set_data(sqe, &c->io.ur.close_op);
    c->io.ur.close_queued = true;
}

/* Gives a provided buffer back to the kernel. */
static void ur_recycle(struct web_uring *u, unsigned bid)
{
    io_uring_buf_ring_add(u->br, u->bufs + (size_t)bid * UR_BUF_SIZE, UR_BUF_SIZE,
                          (unsigned short)bid, io_uring_buf_ring_mask(UR_NBUFS), 0);
    io_uring_buf_ring_advance(u->br, 1);
}

/* ---- completions --------------------------------------------------------------------- */

static void ur_on_accept_retry(uv_timer_t *t)
{
    struct web_uring *u = t->data;
    if (u->accepting && !u->accept_armed) {
        ur_arm_accept(u);
        ur_kick(u);
    }
}

/* The accept has ended for good (draining): close our copy of the listening socket. */
static void ur_listener_gone(struct web_uring *u)
{
    close(u->srv->listen_fd);
    u->srv->listen_fd = -1;
    web_server_listener_closed(u->srv);
}

/* An accept completion: a new connection, or the accept ended (re-armed unless draining). */
static void ur_on_accept(struct web_uring *u, const struct io_uring_cqe *cqe)
{
    struct web_server *s = u->srv;
    struct web_conn *c;
    int one = 1;

    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->accept_armed = false;
    if (cqe->res >= 0) {
        /* Also while draining (accepted before the cancel took effect): it is served, and
         * its answer says Connection: close. */
        int fd = cqe->res;
        c = web_conn_new(s);
        if (!c) {
            close(fd);
        } else {
            memset(&c->io.ur, 0, sizeof c->io.ur);
            c->io.ur.fd = fd;
            c->io.ur.recv_op = (struct web_uring_op){WEB_UOP_RECV, c};
            c->io.ur.send_op = (struct web_uring_op){WEB_UOP_SEND, c};
            c->io.ur.close_op = (struct web_uring_op){WEB_UOP_CLOSE, c};
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            web_conn_start(c);
        }
    } else if (cqe->res != -ECANCELED) {
        rt_log(RT_LOG_WARN, "web: accept failed", json_pack("{s:s}", "error", strerror(-cqe->res)));
    }
    if (u->accept_armed)
        return;
    if (!u->accepting) {
        ur_listener_gone(u);
    } else if (cqe->res == -EMFILE || cqe->res == -ENFILE || cqe->res == -ENOMEM ||
               cqe->res == -ENOBUFS) {
        uv_timer_start(u->accept_retry, ur_on_accept_retry, UR_ACCEPT_RETRY_MS, 0);
    } else {
        ur_arm_accept(u);
    }
}

/* A recv completion: data (copied to the core, buffer recycled at once), EOF or an error;
 * re-armed when the multishot ended and the core still wants to read. */
static void ur_on_recv(struct web_uring *u, struct web_conn *c, const struct io_uring_cqe *cqe)
{
    bool eof = false;

    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->io.ur.recv_armed = false;
    if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (!c->io.ur.closing)
            web_conn_on_data(c, u->bufs + (size_t)bid * UR_BUF_SIZE, (size_t)cqe->res);
        ur_recycle(u, bid);
    } else if (cqe->res == 0) {
        eof = true;
        if (!c->io.ur.closing)
            web_conn_on_eof(c);
    } else if (cqe->res < 0 && cqe->res != -ENOBUFS && cqe->res != -ECANCELED) {
        if (!c->io.ur.closing)
            web_conn_on_error(c, cqe->res);
    }
    /* -ENOBUFS: the buffer ring ran dry and the recv ended; it is re-armed below, after
     * this batch has given buffers back. */
    if (c->io.ur.recv_armed)
        return;
    if (c->io.ur.closing)
        ur_conn_maybe_closed(u, c);
    else if (c->io.ur.want_read && !eof)
        ur_arm_recv(u, c);
}

/* A send completion: the rest is sent, or the core hears the write is done. */
static void ur_on_send(struct web_uring *u, struct web_conn *c, const struct io_uring_cqe *cqe)
{
    c->io.ur.send_busy = false;
    if (c->io.ur.closing) {
        ur_conn_maybe_closed(u, c);
        return;
    }
    if (cqe->res < 0) {
        web_conn_on_write_done(c, cqe->res);
        return;
    }
    c->io.ur.send_ptr += cqe->res;
    c->io.ur.send_left -= (size_t)cqe->res;
    if (c->io.ur.send_left > 0)
        ur_send_rest(u, c);
    else
        web_conn_on_write_done(c, 0);
}

/* Dispatches one CQE by its operation kind. */
static void ur_handle(struct web_uring *u, const struct io_uring_cqe *cqe)
{
    struct web_uring_op *op = io_uring_cqe_get_data(cqe);

    if (!op)
        return; /* a cancel that found nothing */
    switch (op->kind) {
    case WEB_UOP_ACCEPT:
        ur_on_accept(u, cqe);
        break;
    case WEB_UOP_RECV:
        ur_on_recv(u, op->owner, cqe);
        break;
    case WEB_UOP_SEND:
        ur_on_send(u, op->owner, cqe);
        break;
    case WEB_UOP_CLOSE:
        web_conn_on_closed(op->owner);
        break;
    }
}

/* Whether the kernel holds deferred task work it has not run yet (DEFER_TASKRUN rings).
 * Since 6.10 one io_uring_get_events runs at most 20 items of task work and keeps the
 * rest on a retry list; the eventfd is only signalled when new work arrives on an empty
 * list, so work left over is never announced again. IORING_SETUP_TASKRUN_FLAG makes the
 * kernel say so in the SQ flags instead. Acquire: pairs with the kernel's atomic_or. */
static bool ur_work_pending(struct web_uring *u)
{
    return u->defer &&
           (__atomic_load_n(u->ring.sq.kflags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN) != 0;
}

/*
 * Handles every completion that is ready, submits what that produced, and goes round
 * again while it submitted something (sends usually complete inline, during the submit)
 * or the kernel still holds task work (see ur_work_pending). Each round first clears the
 * eventfd: a completion posted after that read signals it again, so none is missed when
 * the loop stops; and the completions of our own inline sends, reaped in the next round,
 * do not wake the libuv loop a second time for nothing. When the rounds run out with work
 * still pending, the eventfd is signalled by hand, so the loop comes back after it has
 * served its other handles (timers, the pool) instead of never.
 */
static void ur_reap(struct web_uring *u)
{
    struct io_uring_cqe *cqes[UR_BATCH];
    uint64_t v;
    unsigned n;

    if (u->in_batch)
        return;
    u->in_batch = true;
    for (int round = 0; round < UR_ROUNDS; round++) {
        ssize_t got = read(u->efd, &v, sizeof v);
        if (got < 0 && errno != EAGAIN)
            rt_log(RT_LOG_ERROR, "web: reading the io_uring eventfd failed",
                   json_pack("{s:s}", "error", strerror(errno)));
        if (u->defer && (round == 0 || got > 0 || ur_work_pending(u)))
            io_uring_get_events(&u->ring);
        while ((n = io_uring_peek_batch_cqe(&u->ring, cqes, UR_BATCH)) > 0) {
            for (unsigned i = 0; i < n; i++)
                ur_handle(u, cqes[i]);
            io_uring_cq_advance(&u->ring, n);
        }
        if (u->unsubmitted) {
            u->unsubmitted = false;
            if (u->defer)
                io_uring_submit_and_get_events(&u->ring);
            else
                io_uring_submit(&u->ring);
        } else if (!ur_work_pending(u)) {
            break;
        }
    }
    u->in_batch = false;
    ur_kick(u);
    if (ur_work_pending(u) || io_uring_cq_ready(&u->ring) > 0) {
        v = 1;
        if (write(u->efd, &v, sizeof v) < 0 && errno != EAGAIN)
            rt_log(RT_LOG_ERROR, "web: signalling the io_uring eventfd failed",
                   json_pack("{s:s}", "error", strerror(errno)));
    }
}

/* The ring's eventfd is readable: completions are waiting. */
static void ur_on_event(uv_poll_t *p, int status, int events)
{
    ur_reap(p->data);
}

/* ---- ring setup ---------------------------------------------------------------------- */

/* Registers a provided-buffer ring of nbufs entries at group bgid by hand, as liburing
 * 2.3 lacks io_uring_setup_buf_ring. Returns the ring (mmap'd, br_bytes long) or NULL
 * with *err set. */
static struct io_uring_buf_ring *ur_buf_ring_register(struct io_uring *ring, unsigned nbufs,
                                                      int bgid, size_t *br_bytes, int *err)
{
    struct io_uring_buf_reg reg;
    size_t bytes = nbufs * sizeof(struct io_uring_buf);
    long page = sysconf(_SC_PAGESIZE);
    void *mem;
    int rc;

    bytes = (bytes + (size_t)page - 1) & ~((size_t)page - 1);
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (unsigned long)mem;
    reg.ring_entries = nbufs;
    reg.bgid = (unsigned short)bgid;
    rc = io_uring_register_buf_ring(ring, &reg, 0);
    if (rc < 0) {
        munmap(mem, bytes);
        *err = rc;
        return NULL;
    }
    io_uring_buf_ring_init(mem);
    *br_bytes = bytes;
    return mem;
}

/* Sets up ring, eventfd, buffers and handles. Returns 0 or a negative error. */
static int ur_setup(struct web_uring *u, uv_loop_t *loop)
{
    struct io_uring_params params;
    const char *errpos = NULL;
    int rc;

    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    u->defer = web_uring_defer_taskrun();
    if (u->defer)
        params.flags |=
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    params.cq_entries = UR_CQ_ENTRIES;
    u->efd = -1;
    rc = io_uring_queue_init_params(UR_ENTRIES, &u->ring, &params);
    if (rc < 0) {
        errpos = "io_uring_queue_init";
        goto fail;
    }
    u->br = ur_buf_ring_register(&u->ring, UR_NBUFS, UR_BGID, &u->br_bytes, &rc);
    if (!u->br) {
        errpos = "register_buf_ring";
        goto fail_ring;
    }
    u->bufs = malloc((size_t)UR_NBUFS * UR_BUF_SIZE);
    if (!u->bufs) {
        rc = -ENOMEM;
        errpos = "buffers";
        goto fail_br;
    }
    for (unsigned i = 0; i < UR_NBUFS; i++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t)i * UR_BUF_SIZE, UR_BUF_SIZE,
                              (unsigned short)i, io_uring_buf_ring_mask(UR_NBUFS), (int)i);
    io_uring_buf_ring_advance(u->br, UR_NBUFS);
    u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->efd < 0) {
        rc = -errno;
        errpos = "eventfd";
        goto fail_bufs;
    }
    rc = io_uring_register_eventfd(&u->ring, u->efd);
    if (rc < 0) {
        errpos = "register_eventfd";
        goto fail_efd;
    }
    u->poll = malloc(sizeof *u->poll);
    u->accept_retry = malloc(sizeof *u->accept_retry);
    if (!u->poll || !u->accept_retry) {
        rc = -ENOMEM;
        errpos = "handles";
        goto fail_handles;
    }
    rc = uv_poll_init(loop, u->poll, u->efd);
    if (rc < 0) {
        errpos = "uv_poll_init";
        goto fail_handles;
    }
    u->poll->data = u;
    uv_timer_init(loop, u->accept_retry);
    u->accept_retry->data = u;
    uv_poll_start(u->poll, UV_READABLE, ur_on_event);
    return 0;

fail_handles:
    free(u->poll);
    free(u->accept_retry);
    u->poll = NULL;
    u->accept_retry = NULL;
fail_efd:
    close(u->efd);
fail_bufs:
    free(u->bufs);
fail_br:
    munmap(u->br, u->br_bytes);
fail_ring:
    io_uring_queue_exit(&u->ring);
fail:
    rt_log(RT_LOG_ERROR, "web: io_uring setup failed",
           json_pack("{s:s,s:s}", "step", errpos, "error", strerror(-rc)));
    return rc;
}

/* Tries what the backend needs on a socketpair: a multishot recv with a provided buffer
 * must deliver data and stay armed. Returns 0 or a negative error with *why. */
static int ur_probe_once(const char **why)
{
    struct io_uring ring;
    struct io_uring_probe *probe;
    struct io_uring_buf_ring *br = NULL;
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    size_t br_bytes = 0;
    static char buf[64];
    int sv[2] = {-1, -1}, rc;

    rc = io_uring_queue_init(8, &ring, 0);
    if (rc < 0) {
        *why = "io_uring_setup failed (kernel without io_uring, or disabled)";
        return rc;
    }
    probe = io_uring_get_probe_ring(&ring);
    if (!probe || !io_uring_opcode_supported(probe, IORING_OP_ACCEPT) ||
        !io_uring_opcode_supported(probe, IORING_OP_RECV) ||
        !io_uring_opcode_supported(probe, IORING_OP_SEND) ||
        !io_uring_opcode_supported(probe, IORING_OP_ASYNC_CANCEL) ||
        !io_uring_opcode_supported(probe, IORING_OP_CLOSE)) {
        *why = "io_uring lacks accept/recv/send/cancel/close";
        rc = -ENOSYS;
        goto out;
    }
    br = ur_buf_ring_register(&ring, 1, 1, &br_bytes, &rc);
    if (!br) {
        *why = "no provided-buffer rings (kernel older than 5.19)";
        goto out;
    }
    io_uring_buf_ring_add(br, buf, sizeof buf, 0, io_uring_buf_ring_mask(1), 0);
    io_uring_buf_ring_advance(br, 1);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        rc = -errno;
        *why = "socketpair failed";
        goto out;
    }
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 1;
    io_uring_submit(&ring);
    if (write(sv[1], "x", 1) != 1) {
        rc = -EIO;
        *why = "socketpair write failed";
        goto out;
    }
    rc = io_uring_wait_cqe(&ring, &cqe);
    if (rc < 0) {
        *why = "waiting for the probe's completion failed";
        goto out;
    }
    if (cqe->res != 1 || !(cqe->flags & IORING_CQE_F_MORE)) {
        *why = "no multishot recv (kernel older than 6.0)";
        rc = cqe->res < 0 ? cqe->res : -ENOSYS;
    }
    io_uring_cqe_seen(&ring, cqe);
out:
    if (sv[0] >= 0) {
        close(sv[0]);
        close(sv[1]);
    }
    io_uring_free_probe(probe);
    io_uring_queue_exit(&ring);
    if (br)
        munmap(br, br_bytes);
    return rc;
}

/* Whether a DEFER_TASKRUN ring works the way ur_reap relies on, tried on the running
 * kernel rather than assumed from its version: data on PROBE_SOCKS sockets at once (more
 * than the 20 items of task work one io_uring_get_events runs on 6.10 and later) must
 * signal the eventfd, and every completion must arrive by calling io_uring_get_events
 * while IORING_SQ_TASKRUN says work is pending. A kernel that signals nothing (before
 * 6.2) or leaves work behind without the flag would stall the loop: no DEFER_TASKRUN. */
#define PROBE_SOCKS 48
static bool ur_probe_defer(void)
{
    struct io_uring ring;
    struct io_uring_params params;
    struct io_uring_buf_ring *br = NULL;
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    struct pollfd pfd;
    static char buf[PROBE_SOCKS][64];
    size_t br_bytes = 0;
    int sv[PROBE_SOCKS][2], efd = -1, rc, got = 0, opened = 0;
    bool good = false;

    memset(&params, 0, sizeof params);
    params.flags =
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    if (io_uring_queue_init_params(2 * PROBE_SOCKS, &ring, &params) < 0)
        return false;
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0 || io_uring_register_eventfd(&ring, efd) < 0)
        goto out;
    br = ur_buf_ring_register(&ring, 64, 1, &br_bytes, &rc);
    if (!br)
        goto out;
    for (int i = 0; i < PROBE_SOCKS; i++)
        io_uring_buf_ring_add(br, buf[i], sizeof buf[i], (unsigned short)i,
                              io_uring_buf_ring_mask(64), i);
    io_uring_buf_ring_advance(br, PROBE_SOCKS);
    for (; opened < PROBE_SOCKS; opened++) {
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[opened]) < 0)
            goto out;
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recv_multishot(sqe, sv[opened][0], NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = 1;
    }
    io_uring_submit(&ring);
    for (int i = 0; i < PROBE_SOCKS; i++)
        if (write(sv[i][1], "x", 1) != 1)
            goto out;
    /* The writes above woke the recvs synchronously, in this thread: the eventfd must be
     * readable now. Kernels that post this signal through an RCU callback (seen on 6.18)
     * announce it one grace period later, 16 ms and more, and a loop that sleeps on the
     * eventfd then answers every request that late (5k instead of 80k requests/s). */
    pfd.fd = efd;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, 0) != 1) {
        probe_defer_reason = "the kernel signals the eventfd for deferred task work late";
        goto out;
    }
    /* As ur_reap does: run task work while the kernel says some is pending. The bound only
     * guards against a kernel that sets the flag forever. */
    for (int round = 0; round < 100 && got < PROBE_SOCKS; round++) {
        io_uring_get_events(&ring);
        while (io_uring_peek_cqe(&ring, &cqe) == 0) {
            if (cqe->res == 1 && (cqe->flags & IORING_CQE_F_MORE))
                got++;
            io_uring_cqe_seen(&ring, cqe);
        }
        if (!(__atomic_load_n(ring.sq.kflags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN))
            break;
    }
    good = got == PROBE_SOCKS;
    if (!good)
        probe_defer_reason = "deferred task work left behind without IORING_SQ_TASKRUN";
out:
    for (int i = 0; i < opened; i++) {
        close(sv[i][0]);
        close(sv[i][1]);
    }
    io_uring_queue_exit(&ring);
    if (efd >= 0)
        close(efd);
    if (br)
        munmap(br, br_bytes);
    return good;
}

int web_uring_probe(const char **why)
{
    /* The answer does not change while the process runs. */
    if (probe_result == 1) {
        probe_result = ur_probe_once(&probe_reason);
        if (probe_result == 0)
            probe_defer = ur_probe_defer();
    }
    *why = probe_reason;
    return probe_result;
}

const char *web_uring_defer_reason(void)
{
    return probe_defer ? NULL : probe_defer_reason;
}

bool web_uring_defer_taskrun(void)
{
    /* PGCORRAL_URING_DEFER=0 turns deferred task work off (tests run both ring modes). */
    const char *env = getenv("PGCORRAL_URING_DEFER");
    return probe_result == 0 && probe_defer && !(env && strcmp(env, "0") == 0);
}

/* ---- backend operations -------------------------------------------------------------- */

static int ur_listen_start(struct web_server *s)
{
    struct web_uring *u = calloc(1, sizeof *u);
    int rc;

    if (!u)
        return -ENOMEM;
    u->srv = s;
    u->accept_op = (struct web_uring_op){WEB_UOP_ACCEPT, s};
    rc = ur_setup(u, s->loop);
    if (rc < 0) {
        free(u);
        return rc;
    }
    s->io_state = u;
    u->accepting = true;
    ur_arm_accept(u);
    ur_kick(u);
    return 0;
}

/* Draining: cancel the multishot accept; its last CQE closes the listener. */
static void ur_listen_stop(struct web_server *s)
{
    struct web_uring *u = ur_of(s);

    u->accepting = false;
    uv_timer_stop(u->accept_retry);
    if (u->accept_armed) {
        ur_cancel(u, &u->accept_op); /* its last CQE closes the listener */
        ur_kick(u);
    } else {
        ur_listener_gone(u);
    }
}

/* The core wants input: arm a recv unless one is active. */
static void ur_read_start(struct web_conn *c)
{
    struct web_uring *u = ur_of(c->srv);

    c->io.ur.want_read = true;
    if (!c->io.ur.recv_armed && !c->io.ur.closing) {
        ur_arm_recv(u, c);
        ur_kick(u);
    }
}

/* The core has no room for input: cancel the recv (data in flight still arrives). */
static void ur_read_stop(struct web_conn *c)
{
    struct web_uring *u = ur_of(c->srv);

    c->io.ur.want_read = false;
    if (c->io.ur.recv_armed) {
        ur_cancel(u, &c->io.ur.recv_op);
        ur_kick(u);
    }
}

/* Sends c->wout; submitted now, or with the batch being reaped. */
static void ur_write(struct web_conn *c)
{
    struct web_uring *u = ur_of(c->srv);

    c->io.ur.send_ptr = c->wout.data;
    c->io.ur.send_left = c->wout.len;
    ur_send_rest(u, c);
    ur_kick(u);
}

/* Half-close for the lingering close: a plain shutdown(2), nothing is in flight. */
static void ur_shutdown(struct web_conn *c)
{
    /* The core only lingers once nothing is being sent. */
    if (shutdown(c->io.ur.fd, SHUT_WR) < 0)
        web_conn_on_error(c, -errno);
}

/* Closes c: cancel its recv, wait for its send, then IORING_OP_CLOSE. */
static void ur_close(struct web_conn *c)
{
    struct web_uring *u = ur_of(c->srv);

    c->io.ur.closing = true;
    c->io.ur.want_read = false;
    if (c->io.ur.recv_armed)
        ur_cancel(u, &c->io.ur.recv_op);
    ur_conn_maybe_closed(u, c);
    ur_kick(u);
}

/* Handles what has arrived (the drain looks at connections right after). */
static void ur_poll_now(struct web_server *s)
{
    struct web_uring *u = ur_of(s);

    /* Entering the kernel runs the ring's pending work (data that arrived becomes CQEs). */
    io_uring_get_events(&u->ring);
    ur_reap(u);
}

/* Last step of the backend's teardown: the ring, eventfd and buffers go. */
static void ur_on_poll_closed(uv_handle_t *h)
{
    struct web_uring *u = h->data;
    struct web_server *s = u->srv;

    free(h);
    io_uring_queue_exit(&u->ring);
    close(u->efd);
    munmap(u->br, u->br_bytes);
    free(u->bufs);
    free(u);
    s->io_state = NULL;
    web_server_backend_closed(s);
}

/* Close callback of the accept-retry timer. */
static void ur_on_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* Releases the ring once the drain has closed every connection and the listener. */
static void ur_close_backend(struct web_server *s)
{
    struct web_uring *u = ur_of(s);

    uv_close((uv_handle_t *)u->accept_retry, ur_on_timer_closed);
    uv_close((uv_handle_t *)u->poll, ur_on_poll_closed);
}

const struct web_io_ops web_io_uring = {
    .name = "uring",
    .listen_start = ur_listen_start,
    .listen_stop = ur_listen_stop,
    .read_start = ur_read_start,
    .read_stop = ur_read_stop,
    .write = ur_write,
    .shutdown = ur_shutdown,
    .close = ur_close,
    .poll_now = ur_poll_now,
    .close_backend = ur_close_backend,
};
