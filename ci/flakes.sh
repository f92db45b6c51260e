#!/usr/bin/env bash
# Runs the README's test command N times in a row against the real engines,
# with a second `go test` (the embedded pass, in a loop) beside it for CPU
# contention. Stops at the first failure and keeps its output; a failed
# embedded pass beside it fails the loop too.
#
#   ci/flakes.sh [N]      (default 20; needs ci/services.sh up)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${1:-20}
OUT=${EVENTFN_FLAKES_DIR:-$(mktemp -d)}
mkdir -p "$OUT"
eval "$(ci/services.sh env)"
: "${EVENTFN_TEST_KAFKA_BROKERS:?ci/services.sh up first}"

# The hog is the embedded pass of the same suite: a failure there is a flake
# too, so its log is kept and reported at the end.
hog() {
  local n=0
  while :; do
    n=$((n + 1))
    if ! env -u EVENTFN_TEST_KAFKA_BROKERS -u EVENTFN_TEST_DATABASE_URL EVENTFN_TEST_ENGINES=embedded \
      go test -race -count=1 ./... >"$OUT/hog.log" 2>&1; then
      mv "$OUT/hog.log" "$OUT/hog-failed-$n.log"
    fi
  done
}
hog_failures() {
  local f
  for f in "$OUT"/hog-failed-*.log; do
    [ -e "$f" ] || continue
    # Only a run that ended on a test's failure (not one still running).
    grep -qE '^(--- FAIL|FAIL|panic)' "$f" || continue
    echo "the embedded pass beside the loop FAILED; output in $f"
    grep -E '^(--- FAIL|FAIL|panic)' "$f" | head -20
  done
}
hog &
HOG=$!
# Its go test first: once the hog is gone, its child belongs to init and
# pkill -P no longer finds it (it kept running after the loop ended).
trap 'pkill -P $HOG 2>/dev/null; kill $HOG 2>/dev/null || true' EXIT

for i in $(seq 1 "$N"); do
  start=$SECONDS
  if go test -race -count=1 ./... >"$OUT/run-$i.log" 2>&1; then
    echo "run $i/$N: ok in $((SECONDS - start))s"
  else
    echo "run $i/$N: FAILED in $((SECONDS - start))s; output in $OUT/run-$i.log"
    grep -E '^(--- FAIL|FAIL|panic)' "$OUT/run-$i.log" | head -20
    exit 1
  fi
done
failed=$(hog_failures)
if [ -n "$failed" ]; then
  echo "$N of $N runs passed, but not the embedded pass beside them:"
  echo "$failed"
  exit 1
fi
echo "$N of $N runs passed beside a CPU-heavy go test; logs in $OUT"
