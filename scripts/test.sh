#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust installed:
# installs what the tests need with apt (redis-server and redis-tools; nginx,
# prometheus, docker-compose and openssl for the cluster tests; chromium and
# node/npm for the browser tests), checks formatting and lints, runs every workspace test
# against real processes (including a banter-load smoke run), then the
# browser tests against the process cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-cli joins the Redis Clusters of the cluster-mode tests.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# The cluster tests (crates/node/tests/process_cluster.rs and
# crates/deploy-checks): nginx in front of the
# nodes, Prometheus and promtool, `docker-compose config`, a self-signed
# certificate for the TLS config check.
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1 || need+=(nginx)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The browser tests (e2e/run.sh): Debian's Chromium, driven by playwright-core
# from npm (which never downloads a browser).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
{ command -v node && command -v npm; } >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The chat page in headless Chromium against the process cluster (it uses the
# debug banter-node that `cargo test` just built).
e2e/run.sh
