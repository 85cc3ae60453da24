# syntax=docker/dockerfile:1
# banter-node in a container: build with the Rust toolchain, run on slim Debian
# as an unprivileged user.
#
#   docker build -t banter-node .
#   docker run --rm -p 8080:8080 banter-node            # one node, in-memory bus
#   docker compose up                                   # the cluster (docker-compose.yml)

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the build reads: a change to nginx/ or deploy/ does not rebuild.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY loadtest loadtest
# The registry and target caches survive between builds (BuildKit); the binary
# is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p banter-node \
    && cp target/release/banter-node /usr/local/bin/banter-node

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl only for the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 banter \
    && useradd --system --uid 10001 --gid banter --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin banter
COPY --from=build /usr/local/bin/banter-node /usr/local/bin/banter-node

# Listen on every interface inside the container; flags and BANTER__* variables
# override it (README: Configuration).
ENV BANTER__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
USER banter:banter

# /healthz answers 200 while the process serves. (/readyz is for load
# balancers: it is 503 while Redis is away or while draining.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS --max-time 2 http://127.0.0.1:8080/healthz || exit 1

# SIGTERM starts the drain: readiness 503, every client closed with 1001, exit 0
# within server.drain_timeout_ms (10 s). Give `docker stop` longer than that
# (`stop_grace_period` in compose, `docker stop -t 15`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/banter-node"]
