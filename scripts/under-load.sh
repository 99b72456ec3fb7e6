#!/usr/bin/env bash
# Runs a command N times in a row while another process keeps writing to the same disk (dd with
# O_DIRECT and fsync, 1 GiB files in a loop) and one core busy (LOAD_CPU=0: the disk only), the way a user's machine is
# rather than an idle CI box. Prints one line per run (exit code, seconds) and a summary.
#
#   scripts/under-load.sh 5 cargo test --locked --all-targets
#
# The load runs in the repository's own directory, so it hits the disk the tests' temporary
# stores are on when TMPDIR is on the same filesystem (it is by default on one-disk machines).
set -uo pipefail
runs="${1:?usage: under-load.sh RUNS COMMAND...}"
shift
cd "$(dirname "$0")/.."
load_dir=$(mktemp -d "${TMPDIR:-/tmp}/ghl-sync-load.XXXXXX")
(
  while true; do
    dd if=/dev/zero of="$load_dir/fill" bs=1M count=1024 oflag=direct conv=fsync status=none || true
    rm -f "$load_dir/fill"
  done
) &
disk=$!
cpu=""
if [ "${LOAD_CPU:-1}" = 1 ]; then
  ( while true; do :; done ) &
  cpu=$!
fi
trap 'kill $disk $cpu 2>/dev/null; wait 2>/dev/null; rm -rf "$load_dir"' EXIT

failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  "$@" > "$load_dir/run-$i.log" 2>&1
  code=$?
  end=$(date +%s)
  echo "run $i: exit $code in $((end - start)) s"
  if [ "$code" -ne 0 ]; then
    failed=$((failed + 1))
    grep -E "^test .* FAILED|panicked at|^failures:" "$load_dir/run-$i.log" | head -20
    cp "$load_dir/run-$i.log" "${TMPDIR:-/tmp}/under-load-run-$i.log"
  fi
done
echo "$((runs - failed)) of $runs runs passed under disk and CPU load"
[ "$failed" -eq 0 ]
