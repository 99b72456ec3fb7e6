#!/bin/sh
# Installs ghl-sync as a systemd service: the binary, the unit, the config, an environment file
# for the location and its token, and a master key. Existing config, environment and key files are
# kept (run it again to upgrade the binary and the unit).
#
#   cargo build --release --locked
#   sudo deploy/systemd/install.sh                  # or: install.sh path/to/ghl-sync
#
# ROOT=/some/dir installs below that directory and skips systemctl (tests, packaging).
set -eu
cd "$(dirname "$0")/../.."
root="${ROOT:-}"
binary="${1:-${CARGO_TARGET_DIR:-target}/release/ghl-sync}"
if [ ! -x "$binary" ]; then
  echo "no ghl-sync binary at $binary: run \`cargo build --release --locked\` first, or pass its path" >&2
  exit 1
fi
etc="$root/etc/ghl-sync"

install -D -m 0755 "$binary" "$root/usr/local/bin/ghl-sync"
install -d -m 0755 "$etc"
install -d -m 0700 "$etc/credentials"
[ -e "$etc/ghl-sync.toml" ] || install -m 0644 config/ghl-sync.toml "$etc/ghl-sync.toml"
install -m 0644 config/ghl-sync.example.toml "$etc/ghl-sync.example.toml"
if [ ! -e "$etc/ghl-sync.env" ]; then
  (
    umask 077
    cat > "$etc/ghl-sync.env" <<'ENV'
# Read by systemd (EnvironmentFile=) as root before ghl-sync starts; keep this file mode 0600.
# One location (sub-account) and its private integration token (docs/getting-started.md):
#GHL_SYNC_LOCATION_ID=ve9EPM428h8vShlRW1KT
#GHL_SYNC_PIT=pit-...
ENV
  )
fi
[ -e "$etc/credentials/master_key" ] || "$root/usr/local/bin/ghl-sync" auth init-key --output "$etc/credentials/master_key"
install -D -m 0644 deploy/systemd/ghl-sync.service "$root/etc/systemd/system/ghl-sync.service"

if [ -z "$root" ]; then
  systemctl daemon-reload
fi
cat <<NEXT
Installed. Next:
  1. put the location id and its token in $etc/ghl-sync.env (sudoedit), or edit $etc/ghl-sync.toml
     (every key: $etc/ghl-sync.example.toml); add a connector there
  2. systemctl enable --now ghl-sync && journalctl -u ghl-sync -f
NEXT
