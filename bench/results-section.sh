#!/bin/sh
# bench/results-section.sh NAME FILE: puts FILE (which begins with "<!-- NAME:begin" and
# ends with "<!-- NAME:end -->") into bench/RESULTS.md in place of section NAME, or adds
# it: before the "## jobs" heading when there is one (bench/jobs/bench.sh rewrites from that
# heading up to the next "## ", which would swallow a section placed right after it), else
# at the end. The benchmarks own one section each and rewrite only theirs.
set -eu
name=$1
section=$2
results=$(cd "$(dirname "$0")" && pwd)/RESULTS.md
new=$(mktemp "${TMPDIR:-/tmp}/pgcorral-results.XXXXXX")
trap 'rm -f "$new"' EXIT

if [ ! -f "$results" ]; then
    cat >"$results" <<'HEAD'
# Benchmark results

Written by the benchmarks (`make bench`); each owns one section between its markers and
rewrites only that. Absolute numbers on a shared machine are noise: the ratios between
peers measured side by side in the same run are the result.
HEAD
fi
if grep -q "^<!-- $name:begin" "$results"; then
    awk -v sec="$section" -v name="$name" '
        index($0, "<!-- " name ":begin") == 1 { while ((getline l < sec) > 0) print l; skip = 1; next }
        index($0, "<!-- " name ":end") == 1 { skip = 0; next }
        !skip { print }' "$results" >"$new"
elif grep -q '^## jobs ' "$results"; then
    awk -v sec="$section" '
        /^## jobs / && !done { print ""; while ((getline l < sec) > 0) print l; print ""; done = 1 }
        { print }' "$results" >"$new"
else
    { cat "$results"; echo; cat "$section"; } >"$new"
fi
cat "$new" >"$results"
