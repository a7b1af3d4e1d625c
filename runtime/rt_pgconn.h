/*
 * The one asynchronous libpq connection driver: a budget slot reserved before the
 * connection is opened, PQconnectStartParams and PQconnectPoll driven by a uv_poll on the
 * socket, the connect deadline, a socket watch for the owner once connected, server
 * notices to the debug log, and on close the budget slot kept until the server has hung
 * up. The pool's connections and the supervisor's job-queue connection are both one of
 * these. Loop thread only (the notice receiver: any thread).
 */
#ifndef PGCORRAL_RT_PGCONN_H
#define PGCORRAL_RT_PGCONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "rt_dburl.h"
#include "shm/shm.h"

struct rt_pgconn_poll;     /* private: the socket's uv_poll_t */
struct rt_pgconn_deadline; /* private: the connect deadline's uv_timer_t */

/*
 * Embedded in its owner. The owner sets the first group after rt_pgconn_init() and before
 * rt_pgconn_connect(); the driver writes the rest.
 */
struct rt_pgconn {
    /* Set by the owner; read-only afterwards. */
    uv_loop_t *loop;
    struct shm_segment *seg; /* budget slots; NULL: no slot is reserved */
    uint32_t token;          /* budget owner token (shm_token) */
    const char *name;        /* names the connection in log lines; borrowed */
    void *owner;             /* passed to on_handle */
    /*
     * The handshake's outcome: 0 (connected, non-blocking; the socket is not watched until
     * the owner calls rt_pgconn_watch), RT_ECONNECT (PQerrorMessage(pg) says why),
     * RT_ECONNECT_TIMEOUT (the deadline passed before rt_pgconn_ready(), so this may follow
     * a 0), or a negative libuv error (the socket could not be watched). After a failure
     * the owner calls rt_pgconn_close(), from the callback or later.
     */
    void (*on_connect)(struct rt_pgconn *pc, int status);
    /* The watched socket is ready once connected (status and events as uv_poll_cb's; after
     * status < 0 libuv has stopped the watch and events is 0 again). */
    void (*on_socket)(struct rt_pgconn *pc, int status, int events);
    /* A libuv handle of the driver was opened (+1) or has closed (-1), so that the owner
     * knows when all are gone; -1 may free the owner. Handles outlive rt_pgconn_close()
     * (the slot is held until the server hangs up): they must all be closed before the
     * owner's loop goes. */
    void (*on_handle)(void *owner, int delta);

    /* Written by the driver; read-only for the owner. */
    PGconn *pg; /* NULL when not open */
    int slot;   /* the budget slot held, -1 when none */
    int events; /* UV_READABLE / UV_WRITABLE currently watched; 0 = none */

    struct rt_pgconn_poll *poll; /* non-NULL while the socket is watched */

    /* Private. */
    int poll_fd;
    struct rt_pgconn_deadline *deadline;
    bool handshaking; /* PQconnectPoll drives the socket */
};

/* Zeroes pc: closed, no slot. */
void rt_pgconn_init(struct rt_pgconn *pc);

/*
 * Reserves a budget slot (when pc->seg is set), starts connecting to url, updates the
 * loop's clock (uv_now is then the start) and arms the deadline (timeout_ms; 0 = none).
 * Returns 0 (pc->on_connect reports the outcome later, never from this call), -EAGAIN (no
 * budget slot free), -ENOMEM, RT_ECONNECT (libpq gave up at once; PQerrorMessage(pc->pg)
 * says why), or a libuv error. On failure the owner calls rt_pgconn_close(), which frees
 * whatever was taken.
 */
__attribute__((warn_unused_result)) int
rt_pgconn_connect(struct rt_pgconn *pc, const struct rt_dburl *url, uint64_t timeout_ms);

/* The owner's start-up on the new connection is done: the deadline no longer applies. */
void rt_pgconn_ready(struct rt_pgconn *pc);

/* Watches the socket for events (UV_READABLE, UV_WRITABLE), re-creating the watch when
 * libpq changed sockets. Returns 0 or a libuv error. */
__attribute__((warn_unused_result)) int rt_pgconn_watch(struct rt_pgconn *pc, int events);

/* Stops watching the socket (it goes to another thread, or is closing). */
void rt_pgconn_unwatch(struct rt_pgconn *pc);

/* Whether the socket watch keeps the loop alive (an operation in flight), or not (idle).
 * Does nothing when the socket is not watched. */
void rt_pgconn_ref(struct rt_pgconn *pc, bool ref);

/*
 * Closes the connection: the watch and the deadline go, PQfinish, and the budget slot is
 * freed once the server has closed its end (at most 2 s later), since the server process
 * counts against max_connections until it exits: freeing the slot at PQfinish lets another
 * process open connection B+1 meanwhile. A connection that never got up frees its slot at
 * once. pc is closed afterwards (it may be connected again, or freed: nothing refers to
 * it). Closing a closed pc does nothing.
 */
void rt_pgconn_close(struct rt_pgconn *pc);

#endif
