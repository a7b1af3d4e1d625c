/*
 * Adopting the segment, as the new supervisor of a binary upgrade does: another process
 * maps the same memfd and sees (and changes) the same budget slots and worker entries;
 * a memfd that is not a segment of this layout is refused with -EPROTO.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "tests/tap.h"

#define B 8
#define TOKEN_OLD 0x101 /* shm_token(0, 1) */

int main(void)
{
    struct shm_segment *seg, *other = NULL;
    int slot, status, fd, flags;
    pid_t pid;

    tap_timeout(20);
    plan(9);

    if (shm_create(&seg, B) < 0)
        bail("shm_create failed");
    is_int(shm_token(0, 1), TOKEN_OLD, "the old generation's token");
    flags = fcntl(seg->fd, F_GETFD);
    ok(seg->fd >= 0 && flags >= 0 && (flags & FD_CLOEXEC),
       "the segment is a memfd, close-on-exec until an upgrade hands it on");
    slot = shm_budget_reserve(seg, TOKEN_OLD);
    atomic_store(&seg->workers[0].state, SHM_STATE_READY);

    /* Another process maps it from the fd alone: what it sees and what it changes. */
    pid = fork();
    if (pid == 0) {
        int code = 0;
        if (shm_adopt(&other, seg->fd) < 0)
            _exit(10);
        if (other == seg || other->nslots != B || other->slots[slot] != TOKEN_OLD ||
            atomic_load(&other->workers[0].state) != SHM_STATE_READY)
            code = 11;
        /* A slot of its own, with another entry's token: the old one's stays. */
        else if (shm_budget_reserve(other, shm_token(1, 7)) < 0)
            code = 12;
        else if (shm_budget_reclaim(other, shm_token(1, 7)) != 1 ||
                 shm_budget_reserve(other, shm_token(1, 7)) < 0)
            code = 13;
        _exit(code);
    }
    waitpid(pid, &status, 0);
    is_int(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0,
           "another process adopts the segment from its fd and sees its slots and entries");
    is_int((int)shm_budget_in_use(seg), 2, "its reservation is seen here: 2 slots in use");
    is_int(shm_budget_reclaim(seg, shm_token(1, 7)), 1, "reclaiming its token frees its slot only");
    is_int(seg->slots[slot], TOKEN_OLD, "the old generation's slot is untouched");

    /* Not a segment of ours: a memfd of another size, and one of the size but zeroed. */
    fd = memfd_create("t104", MFD_CLOEXEC);
    ftruncate(fd, 4096);
    is_int(shm_adopt(&other, fd), -EPROTO, "a memfd of another size is refused: -EPROTO");
    ftruncate(fd, (off_t)seg->size);
    is_int(shm_adopt(&other, fd), -EPROTO, "a memfd without the header is refused: -EPROTO");
    close(fd);
    is_int(shm_adopt(&other, -1), -EINVAL, "no fd: -EINVAL");

    shm_destroy(seg);
    return done_testing();
}
