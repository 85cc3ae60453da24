#!/usr/bin/env bash
# The cluster of docker-compose.yml as local processes, without Docker:
# redis-server, three banter-node processes, nginx in front of them and
# Prometheus scraping them, all on 127.0.0.1. nginx and Prometheus use the
# repository's own files: nginx/banter.conf (only its `listen` port and
# `proxy_read_timeout` changed) and deploy/prometheus/{prometheus,alerts}.yml
# (unchanged); only the node addresses are generated.
#
#   scripts/cluster.sh up            start everything, print the URLs
#   scripts/cluster.sh up --redis-cluster
#                                    the same on a Redis Cluster instead of one
#                                    redis-server: six redis-server instances with
#                                    --cluster-enabled yes (3 primaries, 3 replicas)
#                                    joined by redis-cli --cluster create; the nodes
#                                    run with --redis-cluster and all six as seeds
#   scripts/cluster.sh status        what runs, and whether it answers (a Redis
#                                    Cluster: each instance's role, the cluster's state)
#   scripts/cluster.sh stop-node N   SIGTERM node N (1-based) and wait for its drain
#   scripts/cluster.sh restart-redis SIGTERM the one Redis and start it again on the
#                                    same files (history and dialogs survive: appendonly)
#   scripts/cluster.sh down          SIGTERM everything and wait
#   scripts/cluster.sh render        only write the generated configs
#
# Environment (defaults in brackets):
#   CLUSTER_DIR        state: configs, pids, logs, Prometheus data [<repo>/.cluster]
#   NGINX_PORT         the public port [8080]
#   NODE_PORTS         one port per node, space or comma separated [8081 8082 8083]
#   REDIS_PORT         [6390]
#   REDIS_CLUSTER_PORTS
#                      --redis-cluster: six ports, space or comma separated; each
#                      instance's cluster bus is on its port + 10000
#                      [7000 7001 7002 7003 7004 7005]
#   REDIS_CLUSTER_NODE_TIMEOUT
#                      --redis-cluster: cluster-node-timeout in ms, how long a
#                      primary may be unreachable before its replica takes over [2000]
#   PROMETHEUS_PORT    [9090]
#   NGINX_READ_TIMEOUT nginx proxy_read_timeout [3600s]
#   BANTER_BIN         the banter-node binary [built with cargo build --release]
#   BANTER__*          passed on to every node (e.g. BANTER__HEARTBEAT__PING_INTERVAL_MS)
#
# Needs the Debian packages redis-server, nginx and prometheus; --redis-cluster
# also needs redis-tools (redis-cli) and Redis 7.0 or later (sharded pub/sub).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CLUSTER_DIR:-$ROOT/.cluster}
NGINX_PORT=${NGINX_PORT:-8080}
NODE_PORTS=${NODE_PORTS:-8081 8082 8083}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_CLUSTER_PORTS=${REDIS_CLUSTER_PORTS:-7000 7001 7002 7003 7004 7005}
REDIS_CLUSTER_NODE_TIMEOUT=${REDIS_CLUSTER_NODE_TIMEOUT:-2000}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
NGINX_READ_TIMEOUT=${NGINX_READ_TIMEOUT:-3600s}
read -r -a PORTS <<<"${NODE_PORTS//,/ }"
read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS//,/ }"
# Debian puts nginx in /usr/sbin, which is not on a normal user's PATH.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

PIDS=$STATE/pids
LOGS=$STATE/logs
# How long a drain may take (server.drain_timeout_ms, 10 s by default) plus margin.
STOP_WAIT_SECS=20

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 2
}

# The HTTP status of GET http://127.0.0.1:PORT/PATH, or 000: plain bash, no curl.
http_code() {
  (
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
    read -r -t 3 _ code _ <&3 || exit 1
    printf '%s' "$code"
  ) || printf '000'
}

port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Whether the process PID runs the program COMM: not gone, not a zombie left
# unreaped, not another program that got the pid since.
alive() {
  local pid=$1 comm=$2 state
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${comm:0:15}" ] || return 1
  state=$(sed -e 's/^.*) //' -e 's/ .*//' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

# Whether the service NAME (its pid file: "PID COMM") runs.
running() {
  local pid comm
  [ -f "$PIDS/$1.pid" ] || return 1
  read -r pid comm <"$PIDS/$1.pid" || return 1
  alive "$pid" "$comm"
}

pid_of() {
  local pid _comm
  [ -f "$PIDS/$1.pid" ] || return 1
  read -r pid _comm <"$PIDS/$1.pid" && echo "$pid"
}

# Every service with a pid file, in start order.
services() {
  local name
  for name in redis $(cluster_names) $(node_names) nginx prometheus; do
    [ -f "$PIDS/$name.pid" ] && echo "$name"
  done
  return 0
}

# The Redis Cluster instances (up --redis-cluster) with a pid file: redis-PORT.
cluster_names() {
  local f
  for f in "$PIDS"/redis-*.pid; do
    if [ -e "$f" ]; then basename "$f" .pid; fi
  done | sort -V
}

node_names() {
  local f
  for f in "$PIDS"/node*.pid; do
    if [ -e "$f" ]; then basename "$f" .pid; fi
  done | sort -V
}

# Waits until a command succeeds, within SECS; fails at once if the service's
# process exits first.
wait_until() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    running "$name" || die "$name exited while starting: see $LOGS/$name.log"
    [ "$SECONDS" -lt "$deadline" ] || die "$name not ready within ${secs}s: see $LOGS/$name.log"
    sleep 0.1
  done
}

answers() { # PORT PATH: 200
  [ "$(http_code "$1" "$2")" = 200 ]
}

redis_pong() { # [PORT]
  local reply port=${1:-$REDIS_PORT}
  reply=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'PING\r\n' >&3
    read -r -t 2 line <&3 || exit 1
    printf '%s' "$line"
  ) || return 1
  [[ $reply == +PONG* ]]
}

# redis-cli on the instance at PORT, given 2 s: a stopped instance must not
# hang the script.
cli() { # PORT ARGS...
  local port=$1
  shift
  timeout 2 redis-cli -p "$port" "$@" 2>/dev/null
}

# A field of CLUSTER INFO on the instance at PORT (cluster_state: ok or
# fail), or nothing when it does not answer.
cluster_info() { # PORT FIELD
  { cli "$1" cluster info || true; } | tr -d '\r' | sed -n "s/^$2://p"
}

# A field of INFO replication on the instance at PORT (role: master or
# slave; master_link_status: up or down), or nothing when it does not answer.
replication() { # PORT FIELD
  { cli "$1" info replication || true; } | tr -d '\r' | sed -n "s/^$2://p"
}

# The role of the instance at PORT now: primary, replica (with the state of
# its link to its primary), or "no answer".
role_of() { # PORT
  case $(replication "$1" role) in
    master) echo primary ;;
    slave) echo "replica (link $(replication "$1" master_link_status))" ;;
    *) echo "no answer" ;;
  esac
}

# Whether every instance of the Redis Cluster reports cluster_state:ok and
# every replica has its primary's data: a replica that never synced cannot
# take over, so until then the cluster would not survive losing a primary.
cluster_ok() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    [ "$(cluster_info "$p" cluster_state)" = ok ] || return 1
    case $(replication "$p" role) in
      master) ;;
      slave) [ "$(replication "$p" master_link_status)" = up ] || return 1 ;;
      *) return 1 ;;
    esac
  done
}

# Starts the Redis Cluster: six empty instances, joined by redis-cli into
# three primaries with a replica each, and waits until every instance
# reports cluster_state:ok and every replica has synced. The seeds the
# nodes get are in CLUSTER_SEEDS.
start_redis_cluster() {
  local p dir addrs=() seeds=()
  rm -rf "$STATE/redis-cluster"
  for p in "${CLUSTER_PORTS[@]}"; do
    dir=$STATE/redis-cluster/$p
    mkdir -p "$dir"
    # As the single Redis: no persistence, the same pub/sub buffer limit
    # (shard channels are pub/sub clients too). A primary sends its replica
    # the first copy at once, not after Redis's default 5 s wait for more
    # replicas.
    start "redis-$p" redis-server --port "$p" --bind 127.0.0.1 --protected-mode no \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
      --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT" \
      --repl-diskless-sync-delay 0 \
      --save '' --appendonly no --dir "$dir" \
      --client-output-buffer-limit 'pubsub 64mb 16mb 60'
    addrs+=("127.0.0.1:$p")
    seeds+=("redis://127.0.0.1:$p/")
  done
  for p in "${CLUSTER_PORTS[@]}"; do
    wait_until "redis-$p" 10 redis_pong "$p"
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >>"$LOGS/redis-cluster-create.log" 2>&1 </dev/null ||
    die "redis-cli --cluster create failed: see $LOGS/redis-cluster-create.log"
  wait_until "redis-${CLUSTER_PORTS[0]}" 30 cluster_ok
  CLUSTER_SEEDS=$(IFS=,; echo "${seeds[*]}")
}

# Writes the configs nginx and Prometheus run with into $STATE.
render() {
  mkdir -p "$STATE/nginx/tmp" "$STATE/prometheus/targets" "$PIDS" "$LOGS"
  local n=$STATE/nginx user_line=""
  # Workers of a root master would run as `nobody`, who may not reach a state
  # directory under /root: keep them as the invoking user.
  if [ "$(id -u)" -eq 0 ]; then
    user_line="user $(id -un) $(id -gn);"
  fi
  cat >"$n/nginx.conf" <<EOF
# Generated by scripts/cluster.sh: the process around nginx/banter.conf.
$user_line
daemon off;
worker_processes 2;
pid "$n/nginx.pid";
error_log "$LOGS/nginx.error.log" warn;

events {
    worker_connections 4096;
}

http {
    access_log "$LOGS/nginx.access.log";
    client_body_temp_path "$n/tmp/client_body";
    proxy_temp_path "$n/tmp/proxy";
    fastcgi_temp_path "$n/tmp/fastcgi";
    uwsgi_temp_path "$n/tmp/uwsgi";
    scgi_temp_path "$n/tmp/scgi";

    include banter.conf;
}
EOF
  # The repository's file, with two lines changed; each must match once.
  local src=$ROOT/nginx/banter.conf line
  for line in '^ *listen 8080;$' '^ *proxy_read_timeout 3600s;$'; do
    [ "$(grep -c -- "$line" "$src")" -eq 1 ] ||
      die "nginx/banter.conf must have exactly one line matching '$line'"
  done
  sed -e "s|^\( *\)listen 8080;\$|\1listen 127.0.0.1:$NGINX_PORT;|" \
    -e "s|^\( *\)proxy_read_timeout 3600s;\$|\1proxy_read_timeout $NGINX_READ_TIMEOUT;|" \
    "$src" >"$n/banter.conf"
  {
    echo "# Generated by scripts/cluster.sh: the local nodes."
    local p
    for p in "${PORTS[@]}"; do
      echo "server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"
    done
  } >"$n/banter-upstream.conf"

  cp "$ROOT/deploy/prometheus/prometheus.yml" "$ROOT/deploy/prometheus/alerts.yml" "$STATE/prometheus/"
  {
    echo "# Generated by scripts/cluster.sh: the local nodes."
    echo "- targets:"
    for p in "${PORTS[@]}"; do
      echo "    - 127.0.0.1:$p"
    done
  } >"$STATE/prometheus/targets/nodes.yml"
}

# Starts NAME in the background with its output in $LOGS/NAME.log, and
# records "PID COMM" in $PIDS/NAME.pid.
start() {
  local name=$1
  shift
  "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo "$! $(basename "$1")" >"$PIDS/$name.pid"
}

# The services that run now.
running_services() {
  local name
  for name in $(services); do
    running "$name" && echo "$name"
  done
  return 0
}

on_failed_start() {
  echo "cluster.sh: start failed; stopping what started. Last log lines:" >&2
  local f
  for f in "$LOGS"/*.log; do
    [ -s "$f" ] || continue
    echo "--- $f" >&2
    tail -n 15 "$f" >&2
  done
  down >&2
}

up() {
  local redis_cluster=false
  case $#:${1:-} in
    0:) ;;
    1:--redis-cluster) redis_cluster=true ;;
    *) usage ;;
  esac
  local already
  already=$(running_services | tr '\n' ' ')
  [ -z "$already" ] || die "already running (${already% }): run '$0 down' first"
  command -v redis-server >/dev/null || die "redis-server not found: apt-get install redis-server"
  [ -x "$NGINX" ] || die "nginx not found: apt-get install nginx"
  command -v prometheus >/dev/null || die "prometheus not found: apt-get install prometheus"
  [ "${#PORTS[@]}" -ge 1 ] || die "NODE_PORTS is empty"
  local p redis_ports=("$REDIS_PORT")
  if $redis_cluster; then
    command -v redis-cli >/dev/null || die "redis-cli not found: apt-get install redis-tools"
    local version
    version=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
    [ "${version:-0}" -ge 7 ] ||
      die "--redis-cluster needs Redis 7.0 or later (sharded pub/sub): $(redis-server --version)"
    [ "${#CLUSTER_PORTS[@]}" -eq 6 ] ||
      die "REDIS_CLUSTER_PORTS must hold six ports (3 primaries, 3 replicas)"
    redis_ports=()
    for p in "${CLUSTER_PORTS[@]}"; do
      [[ $p =~ ^[0-9]+$ ]] && [ "$p" -le 55535 ] ||
        die "REDIS_CLUSTER_PORTS: $p is not a port below 55536 (its cluster bus is on port + 10000)"
      redis_ports+=("$p" "$((p + 10000))")
    done
  fi
  for p in "${redis_ports[@]}" "${PORTS[@]}" "$NGINX_PORT" "$PROMETHEUS_PORT"; do
    ! port_busy "$p" || die "port $p is in use"
  done

  local bin=${BANTER_BIN:-}
  if [ -z "$bin" ]; then
    (cd "$ROOT" && cargo build --release -p banter-node)
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/banter-node
  fi
  [ -x "$bin" ] || die "no banter-node binary at $bin"

  render
  rm -f "$PIDS"/*.pid "$LOGS"/*.log
  # Whatever fails from here on, leave nothing running.
  trap on_failed_start EXIT

  local redis_flag=(--redis "redis://127.0.0.1:$REDIS_PORT/")
  if $redis_cluster; then
    start_redis_cluster
    redis_flag=(--redis-cluster "$CLUSTER_SEEDS")
  else
    start_redis
  fi

  local i
  # Plain log lines in the log files (tracing colours them otherwise), and
  # nginx (on 127.0.0.1) trusted to name the client in X-Forwarded-For.
  export NO_COLOR=${NO_COLOR-1}
  export BANTER__SERVER__TRUSTED_PROXIES=${BANTER__SERVER__TRUSTED_PROXIES-127.0.0.1}
  for i in "${!PORTS[@]}"; do
    start "node$((i + 1))" "$bin" "${redis_flag[@]}" \
      --node-id "node$((i + 1))" --listen "127.0.0.1:${PORTS[$i]}"
  done
  for i in "${!PORTS[@]}"; do
    wait_until "node$((i + 1))" 20 answers "${PORTS[$i]}" /readyz
  done

  start nginx "$NGINX" -p "$STATE/nginx/" -c "$STATE/nginx/nginx.conf" -e "$LOGS/nginx.error.log"
  wait_until nginx 10 answers "$NGINX_PORT" /healthz

  mkdir -p "$STATE/prometheus/data"
  start prometheus prometheus --config.file="$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus/data" --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --log.level=warn
  wait_until prometheus 20 answers "$PROMETHEUS_PORT" /-/ready

  trap - EXIT
  echo "Banter cluster up (state in $STATE)"
  echo "  chat        http://127.0.0.1:$NGINX_PORT/"
  for i in "${!PORTS[@]}"; do
    echo "  node$((i + 1))       http://127.0.0.1:${PORTS[$i]}/  (metrics: /metrics)"
  done
  if $redis_cluster; then
    echo "  redis       a Redis Cluster of 3 primaries and 3 replicas: $CLUSTER_SEEDS"
  else
    echo "  redis       redis://127.0.0.1:$REDIS_PORT/"
  fi
  echo "  prometheus  http://127.0.0.1:$PROMETHEUS_PORT/"
  echo "  logs        $LOGS/"
}

# SIGTERMs the named services together and waits for all of them.
stop() {
  local name pid comm stopping=()
  for name in "$@"; do
    [ -f "$PIDS/$name.pid" ] || continue
    read -r pid comm <"$PIDS/$name.pid" || true
    if alive "$pid" "$comm"; then
      kill -TERM "$pid" 2>/dev/null || true
      stopping+=("$name")
    fi
  done
  local deadline=$((SECONDS + STOP_WAIT_SECS)) left
  while :; do
    left=()
    for name in ${stopping[@]+"${stopping[@]}"}; do
      running "$name" && left+=("$name")
    done
    [ "${#left[@]}" -gt 0 ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for name in "${left[@]}"; do
        echo "cluster.sh: $name did not stop within ${STOP_WAIT_SECS}s: SIGKILL" >&2
        kill -KILL "$(pid_of "$name")" 2>/dev/null || true
      done
      break
    fi
    sleep 0.1
  done
  for name in "$@"; do
    rm -f "$PIDS/$name.pid"
  done
}

down() {
  [ -d "$PIDS" ] || return 0
  # The nodes drain while Redis is still there (presence is cleaned up).
  # shellcheck disable=SC2046 # node names are single words
  stop prometheus nginx $(node_names)
  # shellcheck disable=SC2046 # instance names are single words
  stop redis $(cluster_names)
  echo "Banter cluster down"
}

status() {
  local name health port
  for name in redis $(cluster_names) $(node_names) nginx prometheus; do
    if running "$name"; then
      case $name in
        redis) redis_pong && health="PONG" || health="no answer" ;;
        redis-*)
          port=${name#redis-}
          health="127.0.0.1:$port $(role_of "$port") cluster_state:$(cluster_info "$port" cluster_state)"
          ;;
        node*)
          port=${PORTS[$((${name#node} - 1))]:-?}
          health="127.0.0.1:$port /readyz $(http_code "$port" /readyz)"
          ;;
        nginx) health="127.0.0.1:$NGINX_PORT /healthz $(http_code "$NGINX_PORT" /healthz)" ;;
        prometheus) health="127.0.0.1:$PROMETHEUS_PORT /-/ready $(http_code "$PROMETHEUS_PORT" /-/ready)" ;;
      esac
      printf '%-11s running (pid %s)  %s\n' "$name" "$(pid_of "$name")" "$health"
    elif [ -f "$PIDS/$name.pid" ]; then
      printf '%-11s exited: see %s\n' "$name" "$LOGS/$name.log"
    fi
  done
  for name in $(cluster_names); do
    running "$name" || continue
    port=${name#redis-}
    printf '%-11s cluster_state:%s, %s primaries serving slots, %s instances known (as 127.0.0.1:%s sees it)\n' \
      "redis-cluster" "$(cluster_info "$port" cluster_state)" "$(cluster_info "$port" cluster_size)" \
      "$(cluster_info "$port" cluster_known_nodes)" "$port"
    break
  done
  [ -n "$(running_services)" ] || echo "Banter cluster not running"
}

# The one Redis, as docker-compose.yml runs it: history and dialogs kept
# in an append-only file (fsync every second), so a restart keeps them.
start_redis() {
  mkdir -p "$STATE/redis"
  start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode no \
    --save '' --appendonly yes --appendfsync everysec --dir "$STATE/redis" \
    --client-output-buffer-limit 'pubsub 64mb 16mb 60'
  wait_until redis 10 redis_pong
}

restart_redis() {
  running redis || die "restart-redis: the one Redis is not running (not on --redis-cluster)"
  stop redis
  start_redis
  echo "redis restarted with its files in $STATE/redis"
}

stop_node() {
  local n=${1:-}
  [[ $n =~ ^[0-9]+$ ]] || die "stop-node: N is a node number (1, 2, ...)"
  running "node$n" || die "node$n is not running"
  stop "node$n"
  echo "node$n stopped"
}

case ${1:-} in
  up) up "${@:2}" ;;
  down) down ;;
  status) status ;;
  stop-node) stop_node "${2:-}" ;;
  restart-redis) restart_redis ;;
  render)
    render
    echo "configs in $STATE/nginx and $STATE/prometheus"
    ;;
  *) usage ;;
esac
