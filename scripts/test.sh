#!/usr/bin/env bash
# The whole test suite, the README's test command (and what .ci/run runs):
#   1. every test target (unit, integration, sandbox, docs) with SQLite stores;
#   2. the integration suite again with every test's store on PostgreSQL
#      (GHL_SYNC_TEST_BACKEND=postgres: a fresh schema per test in a database made for the run).
# Without a PostgreSQL server the second pass is skipped with a message saying why, unless
# GHL_SYNC_REQUIRE_POSTGRES=1 (set by .ci/run), which makes a missing server a failure.
# GHL_SYNC_TEST_POSTGRES names the server (an admin URL; default postgres://postgres@127.0.0.1:5432/postgres).
# Extra arguments go to both `cargo test` runs (e.g. a test name filter after `--`).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tests, SQLite stores (cargo test --locked --all-targets)"
cargo test --locked --all-targets "$@"

admin="${GHL_SYNC_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
# host and port of the admin URL (user@host:port/database?options)
hostport="${admin#*://}"
hostport="${hostport#*@}"
hostport="${hostport%%/*}"
host="${hostport%%:*}"
port=5432
if [ "$hostport" != "$host" ]; then
  port="${hostport##*:}"
fi

if ! (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; then
  if [ "${GHL_SYNC_REQUIRE_POSTGRES:-}" = "1" ]; then
    echo "PostgreSQL is required (GHL_SYNC_REQUIRE_POSTGRES=1) but nothing answers on ${host}:${port}" >&2
    exit 1
  fi
  echo "SKIPPED: the integration suite on PostgreSQL: nothing answers on ${host}:${port}."
  echo "  Start PostgreSQL there (trust auth for user postgres) or set GHL_SYNC_TEST_POSTGRES to an admin URL."
  exit 0
fi

echo "== integration suite, PostgreSQL stores (GHL_SYNC_TEST_BACKEND=postgres cargo test --locked --test it)"
GHL_SYNC_TEST_BACKEND=postgres cargo test --locked --test it "$@"
