#!/bin/sh
# The layer rule of DESIGN "Layers", checked on the sources: shm <- runtime <- workers <-
# coordinator (a module includes only its own headers and those of the layers below), and
# coordinator reaches workers only through workers/workers.h. Prints every include against
# it and exits 1; silent and 0 when there is none. `make` runs it before compiling.
cd "$(dirname "$0")/.." || exit 2

bad=$(
    grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\(runtime\|workers\|coordinator\)/' shm/*.[ch]
    grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\(workers\|coordinator\)/' runtime/*.[ch]
    grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"coordinator/' workers/*.[ch]
    grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"workers/' coordinator/*.[ch] |
        grep -v '"workers/workers\.h"'
)
if [ -n "$bad" ]; then
    printf '%s\n' "$bad" >&2
    echo "layers: the includes above point up a layer (DESIGN \"Layers\": shm <- runtime <-" \
        "workers <- coordinator; coordinator includes only workers/workers.h of workers/)" >&2
    exit 1
fi
exit 0
