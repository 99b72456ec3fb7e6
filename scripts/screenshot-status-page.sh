#!/usr/bin/env bash
# Takes a screenshot of the status page during a sandbox demo run: docs/status-page.png.
#
# Run by hand (CI does not need Chromium):
#   apt-get install -y chromium      # Debian's package
#   scripts/screenshot-status-page.sh
#
# It builds the binary, starts `ghl-sync demo` (the real daemon against the built-in sandbox,
# nothing leaves the machine), waits until the sync has produced real numbers, screenshots
# http://127.0.0.1:PORT/ with headless Chromium and stops the demo.
# Environment: CHROMIUM (default: chromium), WAIT (seconds into the run, default 25),
# OUT (default docs/status-page.png), CARGO_TARGET_DIR as usual.
set -euo pipefail

cd "$(dirname "$0")/.."
CHROMIUM="${CHROMIUM:-chromium}"
WAIT="${WAIT:-25}"
OUT="${OUT:-docs/status-page.png}"
command -v "$CHROMIUM" >/dev/null || { echo "needs $CHROMIUM (apt-get install -y chromium)" >&2; exit 1; }

cargo build --quiet --bin ghl-sync
BIN="${CARGO_TARGET_DIR:-target}/debug/ghl-sync"
[[ "$BIN" = /* ]] || BIN="$PWD/$BIN"

WORK="$(mktemp -d)"
DEMO_PID=""
cleanup() {
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -INT "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.2; done
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The demo keeps its database in its own temporary directory; run it from WORK anyway.
(cd "$WORK" && exec "$BIN" demo --contacts 300 --seconds 40) >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!

URL=""
for _ in $(seq 1 100); do
    URL="$(grep -o 'status page http://127\.0\.0\.1:[0-9]*/' "$WORK/demo.out" 2>/dev/null | head -1 | sed 's/^status page //')" || true
    [[ -n "$URL" ]] && break
    kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.out" "$WORK/demo.err" >&2; echo "the demo exited" >&2; exit 1; }
    sleep 0.2
done
[[ -n "$URL" ]] || { echo "no status page URL in the demo's output" >&2; exit 1; }
echo "status page: $URL (waiting ${WAIT}s for real numbers)"
sleep "$WAIT"

mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$WORK/chromium" \
    --screenshot="$PWD/$OUT" --window-size=1280,1000 "$URL" 2>"$WORK/chromium.err" \
    || { cat "$WORK/chromium.err" >&2; exit 1; }
echo "wrote $OUT ($(stat -c %s "$OUT") bytes)"
