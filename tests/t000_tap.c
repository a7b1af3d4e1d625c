/* The TAP helpers themselves: what a passing test prints and how failures are counted. */
#include "tests/tap.h"

int main(void)
{
    tap_timeout(10);
    plan(3);
    ok(1, "ok() records a passing test");
    is_int(2 + 2, 4, "is_int compares integers");
    is_str("pgcorral", "pgcorral", "is_str compares strings");
    return done_testing();
}
