# ghl-sync container image. No Docker engine runs on our build machines: `.ci/run` replays the
# build stage without Docker (scripts/check-dockerfile.py), and tests/it/docker.rs runs the binary
# with this file's ENV and the README's `docker run` arguments.
# Build: docker build -t ghl-sync .
# Run:   see README.md "Running in Docker" and deploy/docker-compose.yml.

FROM rust:1-slim-bookworm AS builder
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. Cargo reads every manifest of the
# workspace and checks every declared target path before it builds anything, so this stage needs
# the sandbox crate's manifest and the bench files (benches are not compiled by `cargo build`),
# plus empty stand-ins for the library and binary sources.
COPY Cargo.toml Cargo.lock ./
COPY crates/sandbox/Cargo.toml crates/sandbox/
COPY benches benches
RUN mkdir -p src crates/sandbox/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/sandbox/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src crates/sandbox/src
COPY . .
# COPY keeps the sources' old mtimes: touch them so cargo rebuilds over the stand-ins.
RUN touch src/main.rs src/lib.rs crates/sandbox/src/lib.rs && cargo build --release --locked --bin ghl-sync

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/ghl-sync --shell /usr/sbin/nologin ghl-sync \
    && mkdir -p /var/lib/ghl-sync /etc/ghl-sync \
    && chown ghl-sync:ghl-sync /var/lib/ghl-sync
COPY --from=builder /src/target/release/ghl-sync /usr/local/bin/ghl-sync
COPY config/ghl-sync.example.toml /usr/local/share/ghl-sync/ghl-sync.example.toml
# The shipped default config, so the image runs without a mounted one; mounting a directory on
# /etc/ghl-sync (README: -v "$PWD/config:/etc/ghl-sync:ro") replaces it.
COPY config/ghl-sync.toml /etc/ghl-sync/ghl-sync.toml
USER ghl-sync
# GHL_SYNC_LOCATION_ID and GHL_SYNC_PIT (docker run -e) add one location without editing the file.
ENV GHL_SYNC_CONFIG=/etc/ghl-sync/ghl-sync.toml \
    GHL_SYNC__STORE__PATH=/var/lib/ghl-sync/ghl-sync.db \
    GHL_SYNC__LOG__FORMAT=json \
    GHL_SYNC__SERVER__LISTEN=0.0.0.0:8089
VOLUME ["/var/lib/ghl-sync"]
EXPOSE 8089
STOPSIGNAL SIGTERM
# No curl in this image: the binary checks its own /healthz (server.listen, loopback for 0.0.0.0).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/ghl-sync", "health"]
ENTRYPOINT ["/usr/local/bin/ghl-sync"]
CMD ["run"]
