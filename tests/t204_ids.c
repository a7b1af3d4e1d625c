/*
 * Request and error ids (runtime/id.c): 16 hex digits, different every time, and a forked
 * child never repeats its parent's: it seeds itself again (its first id after the fork
 * differs from the parent's next one, which a shared seed and counter would repeat).
 */
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/rt_id.h"
#include "tests/tap.h"

int main(void)
{
    char a[33], b[33], child[33] = "";
    int fds[2];
    pid_t pid;

    plan(4);
    rt_id_hex(a, 16);
    rt_id_hex(b, 16);
    ok(strlen(a) == 16 && strspn(a, "0123456789abcdef") == 16, "16 hex digits (%s)", a);
    ok(strcmp(a, b) != 0, "two ids differ (%s, %s)", a, b);

    if (pipe(fds) != 0)
        bail("pipe");
    pid = fork();
    if (pid == 0) {
        rt_id_hex(child, 16);
        _exit(write(fds[1], child, 16) == 16 ? 0 : 1);
    }
    close(fds[1]);
    ok(read(fds[0], child, 16) == 16, "the child made an id");
    child[16] = '\0';
    waitpid(pid, NULL, 0);
    rt_id_hex(a, 16);
    ok(strcmp(a, child) != 0, "the child's first id is not the parent's next (%s, %s)", child, a);
    return done_testing();
}
