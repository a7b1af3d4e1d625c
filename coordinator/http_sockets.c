/*
 * The HTTP listening sockets: one SO_REUSEPORT socket per web worker, opened by the
 * supervisor and kept open across respawns, so that a crashed worker's queued
 * connections wait for its replacement instead of being refused. Under socket activation
 * the one socket systemd passed is used instead (every web worker gets a dup of it).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "runtime/rt_util.h"

/* The host of a bare "PORT": the same as the default address, so that changing only the
 * port never exposes the service beyond this machine. */
#define LISTEN_DEFAULT_HOST "127.0.0.1"

/* Where to listen, resolved. */
struct listen_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool dual; /* ":PORT": the IPv6 wildcard with IPv4 mapped in, i.e. every address */
};

int sup_listen_parse(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *port_str, *h = NULL;
    size_t hlen = 0;
    int p;

    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':' || close == addr + 1)
            return -EINVAL;
        h = addr + 1;
        hlen = (size_t)(close - h);
        port_str = close + 2;
    } else if (strchr(addr, ':')) {
        const char *colon = strrchr(addr, ':');
        /* An IPv6 address needs its brackets: "::1:3000" is ambiguous. */
        if (memchr(addr, ':', (size_t)(colon - addr)))
            return -EINVAL;
        h = addr;
        hlen = (size_t)(colon - addr);
        port_str = colon + 1;
    } else {
        port_str = addr;
    }
    if (*port_str < '0' || *port_str > '9' || rt_parse_int(port_str, 0, 65535, &p) != 0)
        return -EINVAL;
    if (h && memchr(h, ' ', hlen))
        return -EINVAL;
    if (host) {
        if (!h) {
            h = LISTEN_DEFAULT_HOST;
            hlen = strlen(h);
        }
        if (hlen >= hostlen)
            return -EINVAL;
        memcpy(host, h, hlen);
        host[hlen] = '\0';
    }
    if (port)
        *port = p;
    return 0;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

static int get_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

/*
 * Resolves addr (see sup_listen_parse) into *out. A name is looked up once, here; of its
 * addresses the first IPv4 one is used, else the first IPv6 one (one address: every web
 * worker has exactly one socket, and every client can reach IPv4 loopback). Returns 0,
 * or -EINVAL with the reason in err.
 */
static int resolve(const char *flag, const char *addr, struct listen_addr *out, char *err,
                   size_t errlen)
{
    struct addrinfo hints, *res = NULL, *pick = NULL;
    char host[256];
    int port, rc;

    memset(out, 0, sizeof *out);
    if (sup_listen_parse(addr, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "%s: '%s' is not HOST:PORT, [IPV6]:PORT, :PORT or PORT", flag, addr);
        return -EINVAL;
    }
    if (host[0] == '\0') {
        /* Every address: IPv6 and IPv4 on one dual-stack socket, or IPv4 alone when this
         * machine has no IPv6. */
        int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
            close(probe);
            v6->sin6_family = AF_INET6;
            v6->sin6_addr = in6addr_any;
            out->len = sizeof *v6;
            out->dual = true;
        } else {
            struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
            v4->sin_family = AF_INET;
            v4->sin_addr.s_addr = htonl(INADDR_ANY);
            out->len = sizeof *v4;
        }
        set_port(&out->ss, port);
        return 0;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve '%s': %s", flag, host,
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return -EINVAL;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
        }
        if (ai->ai_family == AF_INET6 && !pick)
            pick = ai;
    }
    if (!pick || pick->ai_addrlen > sizeof out->ss) {
        snprintf(err, errlen, "%s: '%s' has no IPv4 or IPv6 address", flag, host);
        freeaddrinfo(res);
        return -EINVAL;
    }
    memcpy(&out->ss, pick->ai_addr, pick->ai_addrlen);
    out->len = (socklen_t)pick->ai_addrlen;
    freeaddrinfo(res);
    set_port(&out->ss, port);
    return 0;
}

/* A TCP socket for a, with the dual-stack option set as a asks. Returns the fd or -errno. */
static int new_socket(const struct listen_addr *a, int flags)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | flags, 0), off = 0, rc;

    if (fd < 0)
        return -errno;
    if (a->dual && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/* One SO_REUSEPORT listening socket bound to a. Returns the fd, or -errno (errpos says
 * which call failed). */
static int open_one(const struct listen_addr *a, const char **errpos)
{
    int one = 1, fd, rc;

    fd = new_socket(a, SOCK_NONBLOCK);
    if (fd < 0) {
        *errpos = "socket";
        return fd;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        *errpos = "setsockopt";
    else if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0)
        *errpos = "bind";
    else if (listen(fd, 1024) < 0)
        *errpos = "listen";
    else
        return fd;
    rc = -errno;
    close(fd);
    return rc;
}

char *sup_listen_name(int fd, char *buf, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN];
    const void *in;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        snprintf(buf, size, "?");
        return buf;
    }
    in = ss.ss_family == AF_INET ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                                 : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    if (!inet_ntop(ss.ss_family, in, host, sizeof host))
        snprintf(host, sizeof host, "?");
    snprintf(buf, size, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, get_port(&ss));
    return buf;
}

int sup_listen_add(int like_fd, int *fd, char *err, size_t errlen)
{
    struct listen_addr a;
    const char *errpos = NULL;
    char name[80];
    int v6only = 1, rc;
    socklen_t optlen = sizeof v6only;

    memset(&a, 0, sizeof a);
    a.len = sizeof a.ss;
    if (getsockname(like_fd, (struct sockaddr *)&a.ss, &a.len) < 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot read the listening address: getsockname: %s", strerror(-rc));
        return rc;
    }
    if (a.ss.ss_family == AF_INET6 &&
        getsockopt(like_fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0)
        a.dual = v6only == 0;
    rc = open_one(&a, &errpos);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s: %s",
                 sup_listen_name(like_fd, name, sizeof name), errpos, strerror(-rc));
        return rc;
    }
    *fd = rc;
    return 0;
}

int sup_listen_open(const char *addr, int n, int *fds, int *port, char *err, size_t errlen)
{
    return sup_listen_open_as("--listen", addr, n, fds, port, err, errlen);
}

int sup_listen_open_as(const char *flag, const char *addr, int n, int *fds, int *port, char *err,
                       size_t errlen)
{
    struct listen_addr a;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    int opened = 0, one = 1, rc;
    const char *errpos = NULL;

    rc = resolve(flag, addr, &a, err, errlen);
    if (rc < 0)
        return rc;
    /* SO_REUSEPORT would let us share a port that another pgcorral (same user) already
     * serves; a plain bind first makes "port in use" an error, as users expect. */
    if (get_port(&a.ss) != 0) {
        int probe = new_socket(&a, 0);
        if (probe < 0) {
            errno = -probe;
            errpos = "socket";
            goto fail;
        }
        if (setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            bind(probe, (struct sockaddr *)&a.ss, a.len) < 0) {
            errpos = "bind";
            rc = errno;
            close(probe);
            errno = rc;
            goto fail;
        }
        close(probe);
    }
    for (; opened < n; opened++) {
        int fd = open_one(&a, &errpos);
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
            *port = get_port(&bound);
            set_port(&a.ss, *port);
        }
    }
    return 0;

fail:
    rc = -errno;
    snprintf(err, errlen, "cannot listen on %s: %s: %s%s%s%s", addr, errpos, strerror(errno),
             errno == EADDRINUSE ? " (another process uses that port; choose " : "",
             errno == EADDRINUSE ? flag : "", errno == EADDRINUSE ? ")" : "");
    while (opened-- > 0)
        close(fds[opened]);
    return rc;
}

/* systemd's first passed descriptor (SD_LISTEN_FDS_START in sd-daemon.h). */
#define LISTEN_FDS_START 3

int sup_listen_inherited(int *fd, int *port, char *err, size_t errlen)
{
    const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int type = 0, listening = 0, rc = 0, flags;
    socklen_t optlen = sizeof type;
    int pid = 0, nfds = 0;

    if (pid_s && fds_s &&
        (rt_parse_int(pid_s, 1, INT_MAX, &pid) != 0 || rt_parse_int(fds_s, 0, INT_MAX, &nfds) != 0))
        pid = nfds = 0;
    /* Meant for another process (a parent's variables leaked into ours): not ours. */
    if (pid != (int)getpid() || nfds < 1)
        goto out;
    if (nfds > 1)
        rt_log(RT_LOG_WARN, "socket activation: only the first passed socket is used",
               json_pack("{s:i}", "listen_fds", (int)nfds));
    if (getsockopt(LISTEN_FDS_START, SOL_SOCKET, SO_TYPE, &type, &optlen) < 0 ||
        getsockopt(LISTEN_FDS_START, SOL_SOCKET, SO_ACCEPTCONN, &listening,
                   &(socklen_t){sizeof listening}) < 0 ||
        getsockname(LISTEN_FDS_START, (struct sockaddr *)&ss, &len) < 0) {
        rc = -errno;
        snprintf(err, errlen, "LISTEN_FDS: descriptor %d is not a socket: %s", LISTEN_FDS_START,
                 strerror(-rc));
        goto out;
    }
    if (type != SOCK_STREAM || !listening ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
        rc = -EINVAL;
        snprintf(err, errlen,
                 "LISTEN_FDS: descriptor %d is not a listening TCP socket (the HTTP listener "
                 "needs ListenStream= with an address and port)",
                 LISTEN_FDS_START);
        goto out;
    }
    /* Close-on-exec like our own sockets; non-blocking, which dups share, for the accept
     * paths (libuv's and io_uring's) that expect it. */
    flags = fcntl(LISTEN_FDS_START, F_GETFD);
    if (flags < 0 || fcntl(LISTEN_FDS_START, F_SETFD, flags | FD_CLOEXEC) < 0 ||
        (flags = fcntl(LISTEN_FDS_START, F_GETFL)) < 0 ||
        fcntl(LISTEN_FDS_START, F_SETFL, flags | O_NONBLOCK) < 0) {
        rc = -errno;
        snprintf(err, errlen, "LISTEN_FDS: fcntl: %s", strerror(-rc));
        goto out;
    }
    *fd = LISTEN_FDS_START;
    *port = get_port(&ss);
    rc = 1;
out:
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return rc;
}

int sup_listen_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    return get_port(&ss);
}

bool sup_listen_is_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return false;
    if (ss.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}
