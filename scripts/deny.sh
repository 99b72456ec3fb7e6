#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, bans, sources, and advisories when the RustSec
# database can be fetched. Installs the pinned cargo-deny when it is missing.
#
#   scripts/deny.sh            # what .ci/run runs
#
# Advisories need https://github.com/rustsec/advisory-db. Machines that reach only the package
# registries (CI here) cannot fetch it: the check is then skipped and the reason printed. A
# database already on disk (`$CARGO_HOME/advisory-dbs`, e.g. fetched on a connected machine) is
# used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2

installed=$(cargo deny --version 2>/dev/null || true)
if [ "$installed" != "cargo-deny ${CARGO_DENY_VERSION}" ]; then
  echo "installing cargo-deny ${CARGO_DENY_VERSION} (found: ${installed:-none})"
  cargo install --locked "cargo-deny@${CARGO_DENY_VERSION}"
fi

# The policy checks need nothing but the lock file and the registry's metadata.
cargo deny --log-level warn check licenses bans sources

export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
if timeout 120 cargo deny --log-level error fetch db >/tmp/ghl-sync-deny-fetch.log 2>&1; then
  cargo deny --offline --log-level warn check advisories
elif ls "$CARGO_HOME"/advisory-dbs/*/crates >/dev/null 2>&1; then
  echo "advisory database could not be refreshed; checking against the copy on disk"
  cargo deny --offline --log-level warn check advisories
else
  echo "advisories: SKIPPED — the RustSec advisory database (github.com/rustsec/advisory-db) is not"
  echo "reachable from this machine and no copy is on disk. Reason from cargo-deny:"
  tail -n 3 /tmp/ghl-sync-deny-fetch.log | sed 's/^/  /'
fi
