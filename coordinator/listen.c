/*
 * The HTTP listening sockets: one SO_REUSEPORT socket per web worker, opened by the
 * supervisor and kept open across respawns, so that a crashed worker's queued
 * connections wait for its replacement instead of being refused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator/coordinator.h"

/* Parses "HOST:PORT" or "[V6]:PORT" into ss. Returns 0 or -EINVAL. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *colon, *port_str;
    char *end;
    long port;

    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':' || (size_t)(close - addr - 1) >= sizeof host)
            return -EINVAL;
        memcpy(host, addr + 1, (size_t)(close - addr - 1));
        host[close - addr - 1] = '\0';
        port_str = close + 2;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof host)
            return -EINVAL;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        port_str = colon + 1;
    }
    port = strtol(port_str, &end, 10);
    if (end == port_str || *end || port < 0 || port > 65535)
        return -EINVAL;

    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, *host ? host : "0.0.0.0", &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
    } else {
        return -EINVAL;
    }
    return 0;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* One SO_REUSEPORT listening socket bound to ss. Returns the fd, or -errno (errpos says
 * which call failed). */
static int open_one(const struct sockaddr_storage *ss, socklen_t len, const char **errpos)
{
    int one = 1, fd, rc;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *errpos = "socket";
        return -errno;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        *errpos = "setsockopt";
    else if (bind(fd, (const struct sockaddr *)ss, len) < 0)
        *errpos = "bind";
    else if (listen(fd, 1024) < 0)
        *errpos = "listen";
    else
        return fd;
    rc = -errno;
    close(fd);
    return rc;
}

int sup_listen_add(const char *addr, int port, int *fd, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    const char *errpos = NULL;
    int rc;

    if (parse_addr(addr, &ss, &len) < 0) {
        snprintf(err, errlen, "--listen: '%s' is not HOST:PORT", addr);
        return -EINVAL;
    }
    set_port(&ss, port);
    rc = open_one(&ss, len, &errpos);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s port %d: %s: %s", addr, port, errpos,
                 strerror(-rc));
        return rc;
    }
    *fd = rc;
    return 0;
}

int sup_listen_open(const char *addr, int n, int *fds, int *port, char *err, size_t errlen)
{
    struct sockaddr_storage ss, bound;
    socklen_t len, blen = sizeof bound;
    int opened = 0, one = 1, rc;
    const char *errpos = NULL;

    if (parse_addr(addr, &ss, &len) < 0) {
        snprintf(err, errlen, "--listen: '%s' is not HOST:PORT (IPv6 as [::1]:PORT)", addr);
        return -EINVAL;
    }
    /* SO_REUSEPORT would let us share a port that another pgcorral (same user) already
     * serves; a plain bind first makes "port in use" an error, as users expect. */
    if (ntohs(((struct sockaddr_in *)&ss)->sin_port) != 0) {
        int probe = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0 || setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(probe, (struct sockaddr *)&ss, len) < 0) {
            errpos = "bind";
            if (probe >= 0) {
                rc = errno;
                close(probe);
                errno = rc;
            }
            goto fail;
        }
        close(probe);
    }
    for (; opened < n; opened++) {
        int fd = open_one(&ss, len, &errpos);
        if (fd < 0) {
            errno = -fd;
            goto fail;
        }
        fds[opened] = fd;
        if (opened == 0) {
            /* Port 0: the kernel chose one; bind the others to the same. */
            if (getsockname(fd, (struct sockaddr *)&bound, &blen) < 0) {
                errpos = "getsockname";
                opened++;
                goto fail;
            }
            *port = ntohs(bound.ss_family == AF_INET
                              ? ((struct sockaddr_in *)&bound)->sin_port
                              : ((struct sockaddr_in6 *)&bound)->sin6_port);
            set_port(&ss, *port);
        }
    }
    return 0;

fail:
    rc = -errno;
    snprintf(err, errlen, "cannot listen on %s: %s: %s%s", addr, errpos, strerror(errno),
             errno == EADDRINUSE ? " (another process uses that port; choose --listen)" : "");
    while (opened-- > 0)
        close(fds[opened]);
    return rc;
}
