#!/usr/bin/env bash
# Coverage-guided fuzzing of the daemon's parsers of outside input (a benchmark, not a test):
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]     # default 60 s, every target
#
# Targets (fuzz/fuzz_targets/): config, ghl_contact, ghl_webhook, template, rule_condition.
# Needs the nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz, installed here
# when missing. Each target starts from fuzz/seeds/<target>; the corpus it grows is kept in
# target/fuzz-corpus/<target> (not committed). A crash stops the script with its input under
# fuzz/artifacts/<target>/. Prints one summary line per target (runs, corpus, result).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(config ghl_contact ghl_webhook template rule_condition)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]; then
  cargo install --locked "cargo-fuzz@${CARGO_FUZZ_VERSION}"
fi

summary=()
for target in "${targets[@]}"; do
  corpus="target/fuzz-corpus/${target}"
  mkdir -p "$corpus"
  log="target/fuzz-${target}.log"
  echo "== fuzz ${target} for ${seconds} s"
  status=ok
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/${target}" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    status="CRASH (see $log and fuzz/artifacts/${target}/)"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  files=$(find "$corpus" -type f | wc -l)
  summary+=("| ${target} | ${seconds} s | ${runs:-?} | ${files} | ${status} |")
  if [ "$status" != ok ]; then
    tail -n 40 "$log"
    break
  fi
done

echo
echo "| Target | Time | Inputs run | Corpus | Result |"
echo "|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
[ "${summary[-1]##*| }" = "ok |" ]
