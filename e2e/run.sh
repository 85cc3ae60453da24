#!/usr/bin/env bash
# End-to-end tests of the chat page in headless Chromium against the process
# cluster (scripts/cluster.sh: Redis, three nodes, nginx in front).
#
# Builds nothing: it runs the banter-node binary at BANTER_BIN
# [${CARGO_TARGET_DIR:-target}/debug/banter-node, which `cargo test` leaves].
# Needs /usr/bin/chromium (Debian's chromium), node and npm, and what
# scripts/cluster.sh needs (redis-server, nginx, prometheus).
#
# Usage: e2e/run.sh [node --test options, e.g. --test-name-pattern=REGEX]
# (E2E_ONLY=chat or E2E_ONLY=pusher runs only the chat page's tests, or only
# those of the Pusher front door.)
#
# Environment: BANTER_BIN, CHROMIUM [/usr/bin/chromium],
# E2E_ARTIFACTS [<repo>/test-artifacts]: screenshots, and the cluster's state
# and logs (in e2e-cluster/).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$E2E")
export BANTER_BIN=${BANTER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/banter-node}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$ROOT/test-artifacts}

die() {
  echo "e2e/run.sh: $*" >&2
  exit 1
}
[ -x "$BANTER_BIN" ] || die "no banter-node binary at $BANTER_BIN: run 'cargo build -p banter-node' (or set BANTER_BIN)"
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM: apt-get install chromium"
command -v node >/dev/null || die "node not found: apt-get install nodejs npm"

if [ ! -d "$E2E/node_modules/playwright-core" ]; then
  (cd "$E2E" && npm ci --no-audit --no-fund)
fi

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Six free ports in a row (nginx, three nodes, Redis, Prometheus), away from
# the defaults that a developer's own cluster uses.
pick_ports() {
  local base p ok
  for _ in $(seq 1 50); do
    base=$((20000 + (RANDOM % 400) * 20))
    ok=1
    for p in $(seq "$base" $((base + 5))); do
      if port_busy "$p"; then
        ok=0
        break
      fi
    done
    if [ "$ok" = 1 ]; then
      echo "$base"
      return 0
    fi
  done
  return 1
}

# Small presence pages, so that a handful of users shows what 20,000 would:
# the first page of who is online holds 3 users, and rooms over 8 members get
# diffs with the count only (chat.test.js reads the E2E_ copies). Set only
# when the binary knows these keys: a node refuses unknown ones.
if "$BANTER_BIN" --print-config 2>/dev/null | grep -q '^list_limit'; then
  export BANTER__PRESENCE__LIST_LIMIT=${BANTER__PRESENCE__LIST_LIMIT:-3}
  export BANTER__PRESENCE__EVENTS_MAX_MEMBERS=${BANTER__PRESENCE__EVENTS_MAX_MEMBERS:-8}
  export E2E_LIST_LIMIT=$BANTER__PRESENCE__LIST_LIMIT
  export E2E_EVENTS_MAX_MEMBERS=$BANTER__PRESENCE__EVENTS_MAX_MEMBERS
else
  echo "e2e/run.sh: $BANTER_BIN has no presence.list_limit: the paging test will fail" >&2
fi

# Tokens for the users of the direct-message test (guests cannot be written
# to once offline): the nodes and chat.test.js share this secret.
export BANTER__AUTH__JWT_SECRET=${BANTER__AUTH__JWT_SECRET:-e2e-secret}
export E2E_JWT_SECRET=$BANTER__AUTH__JWT_SECRET

mkdir -p "$E2E_ARTIFACTS"
export CLUSTER_DIR=$E2E_ARTIFACTS/e2e-cluster
rm -rf "$CLUSTER_DIR"

cluster() {
  "$ROOT/scripts/cluster.sh" "$@"
}
teardown() {
  cluster down || true
}

# The Pusher front door, for pusher.test.js and the `pusher` SDK's own
# remote tests (its URL form needs a numeric app id).
export BANTER__PUSHER__APP_ID=${BANTER__PUSHER__APP_ID:-12345}
export BANTER__PUSHER__KEY=${BANTER__PUSHER__KEY:-e2e-key}
export BANTER__PUSHER__SECRET=${BANTER__PUSHER__SECRET:-e2e-pusher-secret}

# Starts a fresh cluster (scripts/cluster.sh) on free ports.
start_cluster() {
  local started=0 attempt
  rm -rf "$CLUSTER_DIR"
  for attempt in 1 2; do
    base=$(pick_ports) || die "no free ports found"
    export NGINX_PORT=$base
    export NODE_PORTS="$((base + 1)) $((base + 2)) $((base + 3))"
    export REDIS_PORT=$((base + 4))
    export PROMETHEUS_PORT=$((base + 5))
    trap teardown EXIT
    # A port may be taken between the check and the start: try once more elsewhere.
    if cluster up; then
      started=1
      break
    fi
    echo "e2e/run.sh: cluster start failed (attempt $attempt)" >&2
  done
  [ "$started" = 1 ] || die "the cluster did not start; logs in $CLUSTER_DIR/logs"
  export BANTER_URL=http://127.0.0.1:$NGINX_PORT/
  export E2E_NODE_PORTS=$NODE_PORTS
}

cd "$E2E"
# The chat page. Arguments go to node's test runner, e.g. --test-name-pattern=bidi.
# E2E_ONLY=chat or E2E_ONLY=pusher runs one of the two parts.
if [ "${E2E_ONLY:-chat}" = chat ] || [ -z "${E2E_ONLY:-}" ]; then
  start_cluster
  node --test "$@" chat.test.js
  cluster down
fi
[ "${E2E_ONLY:-}" = chat ] && exit 0

# pusher-js and the `pusher` server SDK, on a fresh cluster (the chat tests
# kill a node).
start_cluster
# The SDK's own remote tests (from its npm tarball), pointed at one node;
# proxy.js needs port 8321 free for its CONNECT proxy.
read -r -a ports <<<"$NODE_PORTS"
PUSHER_URL="http://$BANTER__PUSHER__KEY:$BANTER__PUSHER__SECRET@127.0.0.1:${ports[1]}/apps/$BANTER__PUSHER__APP_ID" \
  npx --no-install mocha --timeout 10000 'node_modules/pusher/tests/remote/**/*.js'
# Last: it stops a node.
node --test "$@" pusher.test.js
