/*
 * A TCP proxy for tests that must cut one process off its database without closing its
 * connections, like a network partition that drops packets. The proxy runs in a forked child;
 * the test drives it with synchronous commands.
 */
#ifndef PGCORRAL_TCPPROXY_H
#define PGCORRAL_TCPPROXY_H

/* A running proxy: its child process and control socket. Opaque. */
struct tcpproxy;

/*
 * Starts a proxy listening on 127.0.0.1:<ephemeral port> that forwards every accepted
 * connection to target_host:target_port. target_host is a host name or address or, as in
 * libpq, a socket folder when it starts with '/' (the proxy then connects to
 * FOLDER/.s.PGSQL.PORT: the test cluster listens only on its unix socket). The proxy is a
 * forked child holding none of the caller's descriptors. It exits when its control socket
 * closes and is killed when the calling thread ends (PR_SET_PDEATHSIG), so a killed test
 * leaves no proxy behind; call this from the test's main thread. Bails out on error. Caller
 * ends it with tcpproxy_stop().
 */
struct tcpproxy *tcpproxy_start(const char *target_host, int target_port);

/* The port the proxy listens on (127.0.0.1). */
int tcpproxy_port(const struct tcpproxy *p);

/*
 * From now on the proxy forwards no byte in either direction and passes on no end of a
 * connection, but keeps every TCP connection open. New connections are accepted (and their
 * target connection opened) but get no bytes forwarded. Returns once the proxy has confirmed;
 * bails out if it does not within 5 s.
 */
void tcpproxy_stall(struct tcpproxy *p);

/* Forwards again, the bytes held during the stall first. Synchronous like tcpproxy_stall. */
void tcpproxy_resume(struct tcpproxy *p);

/* Closes both sides of every connection; keeps listening, stalled or not as before.
 * Synchronous like tcpproxy_stall. */
void tcpproxy_cut(struct tcpproxy *p);

/* Stops the proxy (closing every connection), reaps it and frees p. Bails out if the proxy
 * had failed (for instance a sanitizer report). tcpproxy_stop(NULL) does nothing. */
void tcpproxy_stop(struct tcpproxy *p);

#endif
