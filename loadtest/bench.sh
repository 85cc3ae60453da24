#!/usr/bin/env bash
# Banter's benchmark: starts Redis and two release nodes on 127.0.0.1, runs
# banter-load's scenarios at a few sizes, and writes BENCHMARKS.md (machine,
# exact commands, tables), loadtest/results/*.json and
# loadtest/results/fanout-latency.svg (latency percentiles against offered load).
#
#   loadtest/bench.sh                 # the full run (about 15 minutes)
#   QUICK=1 loadtest/bench.sh         # small sizes, to check the script itself
#   ONLY=bigroom loadtest/bench.sh    # only these sections (comma-separated:
#                                     # idle,bigroom,fanout,floor,rooms,shards,pusher,churn),
#                                     # spliced into the existing BENCHMARKS.md
#                                     # in place of their old text; the rest
#                                     # of the file is kept as it is
#
# Needs redis-server, redis-cli (the shards section), curl and jq. All traffic stays on 127.0.0.0/8; every
# run is bounded in count and time. The nodes run with the rate limit raised
# (a bench publisher sends far more than a chat user may); nothing else is tuned.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=${QUICK:-0}
ONLY=${ONLY:-}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
FINAL=$OUT
SECTIONS="idle bigroom fanout floor rooms shards pusher churn"
for s in ${ONLY//,/ }; do
  [[ " $SECTIONS " == *" $s "* ]] || { echo "ONLY: unknown section $s (one of: $SECTIONS)" >&2; exit 1; }
done
RES=$ROOT/loadtest/results
mkdir -p "$RES"

for tool in redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 1; }
done

cargo build --release -p banter-node -p banter-load
# Private copies: other builds in this target dir must not swap them mid-run.
BIN=$(mktemp -d)
cp target/release/banter-node target/release/banter-load "$BIN/"
LOAD="$BIN/banter-load"

# Nodes and the load tool each get the open-files hard limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

if [ "$QUICK" = 1 ]; then
  IDLE_N=2000; SUBS=200; RATES="50 200"; ROOMS=200; WINDOW=5s; WARM=1s; CHURN_RATE=50; CHURN_FOR=3s
  SHARD_ROOMS=200
  PAIRS=1; PAIR_WINDOW=3s; BIG_N=2000; BIG_HOLD=4s; BIG_RATE=1000
  PUSHER_RATES="50 200"
else
  IDLE_N=20000; SUBS=1000; RATES="25 50 100 200 400 800"; ROOMS=5000; WINDOW=20s; WARM=5s; CHURN_RATE=200; CHURN_FOR=20s
  SHARD_ROOMS=2000
  PAIRS=3; PAIR_WINDOW=15s; BIG_N=20000; BIG_HOLD=10s; BIG_RATE=4000
  PUSHER_RATES="100 400"
fi

# What follows this marker in an existing BENCHMARKS.md is written by hand
# (the reading of the figures) and is kept across runs.
MARKER='<!-- Everything below is written by hand and kept by bench.sh. -->'
KEPT=""
if [ -f "$OUT" ] && grep -qF "$MARKER" "$OUT"; then
  KEPT=$(sed -n "/$MARKER/,\$p" "$OUT")
fi

# The sections, in the file's order, and the start of each one's heading.
declare -A HEADING=(
  [idle]="## Idle connections"
  [bigroom]="## Big room"
  [fanout]="## Fan-out"
  [floor]="## The floor"
  [rooms]="## Rooms"
  [shards]="## Shards"
  [pusher]="## Pusher"
  [churn]="## Churn"
)
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# splice FILE PART NAME: FILE's section NAME (from its heading to the next
# `## ` heading or the marker) becomes PART; a section FILE does not have yet
# goes before the first later section it has (else before the marker).
splice() {
  local file=$1 part=$2 name=$3 before="" later=0 n
  grep -q "^${HEADING[$name]}" "$file" && later=2
  for n in $SECTIONS; do
    if [ "$later" = 1 ] && grep -q "^${HEADING[$n]}" "$file"; then before=${HEADING[$n]}; break; fi
    [ "$n" = "$name" ] && later=1
  done
  [ -n "$before" ] || [ "$later" = 2 ] || before=$MARKER
  awk -v head="${HEADING[$name]}" -v before="$before" -v marker="$MARKER" -v part="$part" '
    function emit(  l, started) {
      while ((getline l < part) > 0) { if (l != "" || started) { print l; started = 1 } }
      close(part); done = 1
    }
    skipping && (index($0, "## ") == 1 || $0 == marker) { skipping = 0 }
    !done && index($0, head) == 1 { emit(); skipping = 1; next }
    !done && before != "" && index($0, before) == 1 { emit() }
    !skipping { print }
    END { if (!done) emit() }
  ' "$file" >"$file.new"
  mv "$file.new" "$file"
}

PIDS=()
# Set by cluster_up; a section without a cluster (the floor) may come first.
NODES=no-cluster-yet; NODE_PIDS=no-cluster-yet; REDIS_PORT=no-cluster-yet; N1=""; N2=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'cleanup; rm -rf "$BIN"' EXIT

# Listening ports come from below the ephemeral range (32768+ on Linux), so
# that none is taken by a client socket of the previous scenario.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

wait_ready() {
  for _ in $(seq 1 300); do
    curl -sf "http://$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 never became ready; the logs:" >&2
  tail -n 20 "$BIN"/node-*.log "$BIN"/redis.log >&2
  exit 1
}

NODE_ENV=(BANTER__LIMITS__RATE_PER_SEC=1000000 BANTER__LIMITS__BURST=1000000 BANTER__LOG__LEVEL=warn)

# A fresh Redis without persistence on a free port: sets REDIS_PORT.
redis_up() {
  local rp; rp=$(free_port)
  redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$BIN/redis.log" 2>&1 &
  PIDS+=($!)
  REDIS_PORT=$rp
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$rp") 2>/dev/null && break; sleep 0.1; done
}

# Fresh Redis and two fresh nodes: sets NODES, NODE_PIDS, N1, N2, REDIS_PORT.
cluster_up() {
  cleanup
  redis_up
  local rp=$REDIS_PORT
  local p1 p2; p1=$(free_port); p2=$(free_port)
  while [ "$p2" = "$p1" ]; do p2=$(free_port); done
  env "${NODE_ENV[@]}" "$BIN/banter-node" --redis "redis://127.0.0.1:$rp/" --listen "127.0.0.1:$p1" --node-id a >"$BIN/node-a.log" 2>&1 &
  local a=$!; PIDS+=($a)
  env "${NODE_ENV[@]}" "$BIN/banter-node" --redis "redis://127.0.0.1:$rp/" --listen "127.0.0.1:$p2" --node-id b >"$BIN/node-b.log" 2>&1 &
  local b=$!; PIDS+=($b)
  N1="127.0.0.1:$p1"; N2="127.0.0.1:$p2"
  wait_ready "$N1"; wait_ready "$N2"
  NODES="$N1,$N2"; NODE_PIDS="$a,$b"
}

# Runs one scenario: prints the command (with generic addresses) and its
# table into $OUT, the JSON into $RES/$name.json.
run() {
  local name=$1; shift
  local shown="banter-load $*"
  shown=${shown//$NODES/127.0.0.1:A,127.0.0.1:B}
  shown=${shown//$NODE_PIDS/PID_A,PID_B}
  shown=${shown//--redis-port $REDIS_PORT/--redis-port REDIS_PORT}
  echo ">>> $shown" >&2
  {
    echo
    echo '```'
    echo "$shown"
    echo '```'
    echo
    echo "Load average before the run (other work on this shared machine included): $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
  } >>"$OUT"
  local status=0
  "$LOAD" "$@" --json "$RES/$name.json" >"$BIN/$name.md" || status=$?
  sed -n '/^|/p' "$BIN/$name.md" >>"$OUT"
  [ "$status" = 0 ] || echo "(exit status $status: the run reported problems)" >>"$OUT"
  return 0
}

metrics() {
  for n in "$N1" "$N2"; do
    curl -sf "http://$n/metrics" | grep -E '^banter_(bus_messages_received_total|messages_published_total|messages_delivered_total|slow_consumers_total|connections)[{ ]' || true
  done
}

header() {
  echo "# Banter benchmarks"
  echo
  echo "Generated by \`loadtest/bench.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`$( [ "$QUICK" = 1 ] && echo ' (QUICK=1: small sizes)')."
  echo "Redis and two \`banter-node\` release builds run on this machine with"
  echo "\`${NODE_ENV[*]}\`; everything else is the default configuration."
  echo "Each scenario gets a fresh Redis and fresh nodes. \`127.0.0.1:A,127.0.0.1:B\` and \`PID_A,PID_B\`"
  echo "stand for the nodes' addresses and process ids, \`REDIS_PORT\` for Redis's port."
  echo
  echo "## Machine"
  echo
  echo '```'
  echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "memory: $(free -h | awk '/^Mem:/{print $2}') total"
  echo "kernel: $(uname -r)"
  echo "fds:    $(ulimit -Hn) open files per process (hard limit)"
  echo '```'
  echo
  echo "The load tool, Redis and both nodes share these cores, so CPU figures are"
  echo "read from /proc (utime + stime over the measured window) beside the rates."
  echo "Other work on the machine during the run also shows in \"machine busy share\"."
}

# In a run of a few sections (ONLY=...), each says when and from what it was run.
rerun_note() {
  [ -n "$ONLY" ] || return 0
  local dirty=""
  [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || dirty=" plus uncommitted changes"
  echo "This section was run on its own (\`ONLY=$ONLY loadtest/bench.sh\`$( [ "$QUICK" = 1 ] && echo ', QUICK=1')) on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`$dirty; the machine is the one described above."
  echo
}

# --- idle ---------------------------------------------------------------------
section_idle() {
  cluster_up
  echo -e "\n## Idle connections\n" >>"$OUT"
  rerun_note >>"$OUT"
  run idle idle --nodes "$NODES" --pids "$NODE_PIDS" -n "$IDLE_N" --sources 4 --hold 10s
}

# --- the big room: one public room of BIG_N members ------------------------------
section_bigroom() {
  cluster_up
  echo -e "\n## Big room: $BIG_N members in one room over two nodes\n" >>"$OUT"
  rerun_note >>"$OUT"
  echo "\`banter-load bigroom\`: $BIG_N members, half on each node, from four source addresses, connect and \`join\` one room as fast as 128 connections at once per load-tool process allow (the run is split over processes for the fd limit, like \`idle\`), and are held for $BIG_HOLD while four of them chat, 2 messages per second in all. Every member counts every \`presence\` frame it reads. Then, on the same nodes, the same $BIG_N connections are opened again joining no room: the baseline, what \`idle\` measures. Redis's own counters (\`INFO cpu\`, \`INFO commandstats\`, read from its port, \`REDIS_PORT\` below) say what it did per join. Targets: the room fills within 1.5× of the baseline's time; ≤ 10 KiB of node RSS per joined connection; ≤ 1 presence frame per member per diff interval (1 s) while the room fills; a \`joined\` frame under 16 KiB." >>"$OUT"
  run bigroom bigroom --nodes "$NODES" --pids "$NODE_PIDS" --redis-port "$REDIS_PORT" -m "$BIG_N" --sources 4 \
    --hold "$BIG_HOLD" --chatter 2 --chatters 4
  bigroom_vs_idle >>"$OUT"
  echo -e "\n### The same room at a set join rate: $BIG_RATE joins per second\n" >>"$OUT"
  echo "The same run with the joins paced at $BIG_RATE per second, all processes together (\`--join-rate\`), as a reconnect storm arrives: whether the room fills at the rate members come, and what a join waits meanwhile. The baseline is paced the same way. It runs on the nodes of the run above, so its RSS figures are of warm allocators and say nothing about memory per member. (The issue's own figures for other servers: sockudo joined 5,000 members in 1.4 s, 3,571 per second; Socket.IO in 1.8 s.)" >>"$OUT"
  run bigroom-paced bigroom --nodes "$NODES" --pids "$NODE_PIDS" --redis-port "$REDIS_PORT" -m "$BIG_N" --sources 4 \
    --join-rate "$BIG_RATE" --hold "$BIG_HOLD" --chatter 2 --chatters 4
}

# The big room next to the idle figure.
bigroom_vs_idle() {
  local b="$RES/bigroom.json" i="$RES/idle.json"
  [ -s "$b" ] || return 0
  echo
  echo "Next to plain connecting:"
  echo
  echo "| run | connections | connections (or joins) per second | node RSS per connection |"
  echo "| --- | ---: | ---: | --- |"
  if [ -s "$i" ]; then
    jq -r '"| `idle` (the Idle connections section above) | \(.opened) | \(.connect_rate_per_sec | floor) | \(.node_kib_per_connection | map("\(. * 100 | round / 100) KiB") | join(", ")) |"' "$i"
  fi
  jq -r '(if .baseline then "| `bigroom` baseline: the same connections, no room | \(.baseline.opened) | \(.baseline.rate_per_sec | floor) | – |" else empty end),
    "| `bigroom`: joining the room | \(.joined) | \(.fill_rate_per_sec | floor) | \(.node_kib_per_member | map("\(. * 100 | round / 100) KiB") | join(", ")) |"' "$b"
}

# --- fan-out: the reference scenario, then higher rates -----------------------
section_fanout() {
  cluster_up
  echo -e "\n## Fan-out: $SUBS subscribers in one room over two nodes, one publisher on the second node, 100-byte messages\n" >>"$OUT"
  rerun_note >>"$OUT"
  local rate j
  FANOUT_JSON=()
  for rate in $RATES; do
    run "fanout-$rate" fanout --nodes "$NODES" --pids "$NODE_PIDS" --subscribers "$SUBS" --publishers 1 \
      --rate "$rate" --size 100 --warmup "$WARM" --duration "$WINDOW" --room "bench-$rate"
    FANOUT_JSON+=("$RES/fanout-$rate.json")
    j="$RES/fanout-$rate.json"
    # Past capacity (loss, sockets closed, or p99 over 2 s) there is nothing more to learn.
    if [ ! -s "$j" ] || jq -e '.latency.p99_ms > 2000 or .lost > 0 or (.closed_early | length) > 0' "$j" >/dev/null; then
      echo -e "\nStopped the sweep here: loss, sockets closed, or p99 over 2 s at $rate msg/s.\n" >>"$OUT"
      break
    fi
  done
  echo -e "\n### Latency against offered load\n" >>"$OUT"
  "$LOAD" plot --out "$RES/fanout-latency.svg" "${FANOUT_JSON[@]}" >>"$OUT"
  echo -e "\n![latency percentiles against offered load](loadtest/results/fanout-latency.svg)\n" >>"$OUT"
}

# --- the floor, and the reference scenario against it --------------------------
# The machine's own cost of a delivery (no server at all), then the reference
# fan-out scenario, alternately: this shared VM's speed drifts by tens of
# percent between minutes, so each fan-out run is set against a floor
# measured just before it.
section_floor() {
  echo -e "\n## The floor: loopback TCP with no server\n" >>"$OUT"
  rerun_note >>"$OUT"
  echo "A writer that only writes prepared frames and a reader that only reads them (\`banter-load floor\`): the least CPU any server and any client can spend per delivery on this machine when each delivery is its own TCP segment, and the latency they get with nothing else running. Then the reference fan-out scenario right after it, $PAIRS times." >>"$OUT"
  local i f r
  for i in $(seq 1 "$PAIRS"); do
    cleanup
    run "floor-$i" floor --sockets "$SUBS" --writers 2 --rate 50 --size 100 --warmup 2s --duration "$PAIR_WINDOW"
    cluster_up
    run "reference-$i" fanout --nodes "$NODES" --pids "$NODE_PIDS" --subscribers "$SUBS" --publishers 1 \
      --rate 50 --size 100 --warmup "$WARM" --duration "$PAIR_WINDOW" --room "ref-$i"
  done
  {
    echo
    echo "### Each reference run against the floor measured just before it"
    echo
    echo "| pair | floor: writes per CPU-s | node: deliveries per CPU-s | node / floor | floor: reader µs per frame | load tool µs per delivery | floor p99 ms | node p99 ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for i in $(seq 1 "$PAIRS"); do
      f="$RES/floor-$i.json"; r="$RES/reference-$i.json"
      jq -rn --slurpfile f "$f" --slurpfile r "$r" --arg i "$i" '
        ($f[0]) as $f | ($r[0]) as $r |
        "| \($i) | \($f.writes_per_cpu_sec | floor) | \($r.deliveries_per_node_cpu_sec // 0 | floor) | \((100 * ($r.deliveries_per_node_cpu_sec // 0) / $f.writes_per_cpu_sec) | floor) % | \($f.reader_us_per_frame * 100 | round / 100) | \($r.load_tool_us_per_delivery * 100 | round / 100) | \($f.latency.p99_ms) | \($r.latency.p99_ms) |"'
    done
  } >>"$OUT"
}

# --- rooms --------------------------------------------------------------------
section_rooms() {
  cluster_up
  echo -e "\n## Rooms: $ROOMS rooms of 4, every member sending one message every 2 s\n" >>"$OUT"
  rerun_note >>"$OUT"
  run rooms rooms --nodes "$NODES" --pids "$NODE_PIDS" --rooms "$ROOMS" --members 4 --interval 2s \
    --warmup "$WARM" --duration "$WINDOW" --sources 4
  echo -e "\nBus and delivery counters per node after the run (\`/metrics\`):\n\n\`\`\`" >>"$OUT"
  metrics >>"$OUT"
  echo '```' >>"$OUT"
}

# --- shards -------------------------------------------------------------------
# A Redis Cluster of $1 primaries (no replicas) from redis-server
# --cluster-enabled yes, and two nodes in cluster mode on it: sets what
# cluster_up sets, and SHARD_PORTS, SHARD_PIDS.
shards_up() {
  cleanup
  local n=$1 i p ports=() seeds=()
  SHARD_PORTS=(); SHARD_PIDS=()
  for i in $(seq 1 "$n"); do
    # The cluster bus listens on port + 10000.
    p=$(free_port)
    while [ "$p" -gt 22000 ] || (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; do p=$(free_port); done
    mkdir -p "$BIN/shard-$p"
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --cluster-enabled yes \
      --cluster-config-file "$BIN/shard-$p/nodes.conf" --dir "$BIN/shard-$p" \
      >"$BIN/shard-$p.log" 2>&1 &
    PIDS+=($!); SHARD_PIDS+=($!); SHARD_PORTS+=("$p")
    ports+=("127.0.0.1:$p"); seeds+=("redis://127.0.0.1:$p/")
  done
  for p in "${SHARD_PORTS[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 0 --cluster-yes >"$BIN/cluster-create.log" 2>&1
  for _ in $(seq 1 100); do
    local ok=1
    for p in "${SHARD_PORTS[@]}"; do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  local seed_list; seed_list=$(IFS=,; echo "${seeds[*]}")
  local p1 p2; p1=$(free_port); p2=$(free_port)
  while [ "$p2" = "$p1" ]; do p2=$(free_port); done
  env "${NODE_ENV[@]}" "$BIN/banter-node" --redis-cluster "$seed_list" --listen "127.0.0.1:$p1" --node-id a >"$BIN/node-a.log" 2>&1 &
  local a=$!; PIDS+=($a)
  env "${NODE_ENV[@]}" "$BIN/banter-node" --redis-cluster "$seed_list" --listen "127.0.0.1:$p2" --node-id b >"$BIN/node-b.log" 2>&1 &
  local b=$!; PIDS+=($b)
  N1="127.0.0.1:$p1"; N2="127.0.0.1:$p2"
  wait_ready "$N1"; wait_ready "$N2"
  NODES="$N1,$N2"; NODE_PIDS="$a,$b"; REDIS_PORT=${SHARD_PORTS[0]}
}

# CPU seconds (user + system) Redis on port $1 has used since it started.
redis_cpu() {
  redis-cli -p "$1" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.2f", s}'
}

# How many times Redis on port $1 ran command $2 (inside scripts included).
redis_calls() {
  redis-cli -p "$1" info commandstats | awk -F'[:=,]' -v c="cmdstat_$2" '$1 == c {print $3; f = 1} END {if (!f) print 0}'
}

# The rooms shape on one Redis, then on a Redis Cluster of three primaries:
# per primary, its rooms (history streams), the messages it stored (XADD
# calls) and its CPU; so messages per Redis CPU-second per shard and the
# spread of the load over the shards.
section_shards() {
  echo -e "\n## Shards: $SHARD_ROOMS rooms of 4 on one Redis and on a Redis Cluster of three primaries\n" >>"$OUT"
  rerun_note >>"$OUT"
  {
    echo "The rooms shape at $SHARD_ROOMS rooms (every member one message every 2 s), first on one"
    echo 'Redis, then on three `redis-server --cluster-enabled yes` primaries (no replicas) with both'
    echo 'nodes started with `--redis-cluster`. Redis'"'"'s CPU is read from `INFO cpu` over the'
    echo "whole run (connecting, joining and presence included), its stored messages from"
    echo '`INFO commandstats` (XADD, one per message), its rooms by scanning for history streams.'
  } >>"$OUT"
  local shards p cpu0 cpu1 calls rooms
  for shards in 1 3; do
    if [ "$shards" = 1 ]; then
      cluster_up
      SHARD_PORTS=("$REDIS_PORT")
    else
      shards_up 3
    fi
    declare -A before=()
    for p in "${SHARD_PORTS[@]}"; do before[$p]=$(redis_cpu "$p"); done
    echo -e "\n### $shards shard(s)" >>"$OUT"
    run "shards-$shards" rooms --nodes "$NODES" --pids "$NODE_PIDS" --rooms "$SHARD_ROOMS" --members 4 --interval 2s \
      --warmup "$WARM" --duration "$WINDOW" --sources 4
    {
      echo
      echo "| shard | rooms | messages stored | Redis CPU | messages per Redis CPU-second |"
      echo "| --- | ---: | ---: | ---: | ---: |"
      local i=0
      for p in "${SHARD_PORTS[@]}"; do
        i=$((i + 1))
        cpu1=$(redis_cpu "$p"); cpu0=${before[$p]}
        calls=$(redis_calls "$p" xadd)
        rooms=$(redis-cli -p "$p" --scan --pattern 'banter:history:*' | grep -vc ':epoch$' || true)
        awk -v i="$i" -v r="$rooms" -v m="$calls" -v a="$cpu0" -v b="$cpu1" \
          'BEGIN { c = b - a; printf "| %d | %d | %d | %.2f s | %d |\n", i, r, m, c, (c > 0 ? m / c : 0) }'
      done
    } >>"$OUT"
    unset before
  done
}

# --- churn --------------------------------------------------------------------
# --- the Pusher protocol: Banter's front door, and sockudo beside it ------------
# The same fan-out spoken as a Pusher app does (subscribers on /app/{key},
# triggers over the signed HTTP API), against two Banter nodes with the front
# door on, then against two sockudo instances on the same kind of Redis with
# its Redis adapter, when a sockudo binary is there (SOCKUDO_BIN, or `sockudo`
# on PATH; `cargo install sockudo --no-default-features --features redis,local`).
PUSHER_APP=(--pusher-app-id 1 --pusher-key bench-key --pusher-secret bench-secret)
PUSHER_ENV=(BANTER__PUSHER__APP_ID=1 BANTER__PUSHER__KEY=bench-key BANTER__PUSHER__SECRET=bench-secret)
SOCKUDO_BIN=${SOCKUDO_BIN:-$(command -v sockudo || true)}

# Fresh Redis and two sockudo instances on it: sets NODES, NODE_PIDS.
sockudo_up() {
  cleanup
  redis_up
  local rp=$REDIS_PORT
  local ports=() pids=() i p
  for i in 1 2; do
    p=$(free_port)
    env HOST=127.0.0.1 PORT="$p" ADAPTER_DRIVER=redis CACHE_DRIVER=redis REDIS_URL="redis://127.0.0.1:$rp/" \
      SOCKUDO_DEFAULT_APP_ID=1 SOCKUDO_DEFAULT_APP_KEY=bench-key SOCKUDO_DEFAULT_APP_SECRET=bench-secret \
      SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=100000 \
      SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=100000 RATE_LIMITER_ENABLED=false METRICS_ENABLED=false \
      "$SOCKUDO_BIN" >"$BIN/sockudo-$i.log" 2>&1 &
    pids+=($!); PIDS+=($!); ports+=("$p")
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  done
  N1="127.0.0.1:${ports[0]}"; N2="127.0.0.1:${ports[1]}"
  NODES="$N1,$N2"; NODE_PIDS="${pids[0]},${pids[1]}"
}

section_pusher() {
  echo -e "\n## Pusher: $SUBS subscribers of one channel over two servers, one HTTP publisher on the second, 100-byte events\n" >>"$OUT"
  rerun_note >>"$OUT"
  local rate server rows=()
  local saved=("${NODE_ENV[@]}")
  NODE_ENV+=("${PUSHER_ENV[@]}")
  for server in banter sockudo; do
    if [ "$server" = sockudo ] && [ ! -x "$SOCKUDO_BIN" ]; then
      echo -e "\nsockudo: not run (no sockudo binary; set SOCKUDO_BIN).\n" >>"$OUT"
      continue
    fi
    for rate in $PUSHER_RATES; do
      if [ "$server" = banter ]; then cluster_up; else sockudo_up; fi
      echo -e "\n### $server, $rate events/s\n" >>"$OUT"
      run "pusher-$server-$rate" fanout --proto pusher "${PUSHER_APP[@]}" --nodes "$NODES" --pids "$NODE_PIDS" \
        --subscribers "$SUBS" --publishers 1 --rate "$rate" --size 100 --warmup "$WARM" --duration "$WINDOW" \
        --room "bench-$rate"
      rows+=("$server $rate $RES/pusher-$server-$rate.json")
    done
  done
  NODE_ENV=("${saved[@]}")
  {
    echo
    echo "### Side by side"
    echo
    echo "| server | events/s | deliveries per server CPU-second | p50 / p99 ms | RSS per connection | lost / duplicated / out of order |"
    echo "| --- | --- | --- | --- | --- | --- |"
    local row name r j
    for row in "${rows[@]}"; do
      read -r name r j <<<"$row"
      [ -s "$j" ] || { echo "| $name | $r | (no result) | | | |"; continue; }
      jq -r --arg name "$name" --arg rate "$r" '
        def kib: ((.node_rss_kib_after | add) - (.node_rss_kib_before | add)) / ([.subscribers_connected, 1] | max);
        "| \($name) | \($rate) | \(.deliveries_per_node_cpu_sec // 0 | floor) | \(.latency.p50_ms) / \(.latency.p99_ms) | \(kib | . * 10 | round / 10) KiB | \(.lost) / \(.duplicates) / \(.out_of_order) |"' "$j"
    done
  } >>"$OUT"
}

section_churn() {
  cluster_up
  echo -e "\n## Churn: connect, join, send one message, close\n" >>"$OUT"
  rerun_note >>"$OUT"
  run churn churn --nodes "$NODES" --pids "$NODE_PIDS" --rate "$CHURN_RATE" --duration "$CHURN_FOR" --sources 4
}

if [ -z "$ONLY" ]; then
  # The full run: the whole file anew, then the hand-written part kept.
  header >"$OUT"
  for name in $SECTIONS; do "section_$name"; done
  cleanup
  if [ -n "$KEPT" ]; then
    printf '\n%s\n' "$KEPT" >>"$OUT"
  else
    printf '\n%s\n' "$MARKER" >>"$OUT"
  fi
else
  # A few sections: each written apart, then put in place of its old text.
  if [ ! -s "$FINAL" ]; then
    { header; printf '\n%s\n' "$MARKER"; } >"$FINAL"
  fi
  for name in $SECTIONS; do
    want "$name" || continue
    OUT="$BIN/section-$name.md"
    : >"$OUT"
    "section_$name"
    echo >>"$OUT"
    cleanup
    splice "$FINAL" "$OUT" "$name"
  done
  OUT=$FINAL
fi
echo "wrote $OUT and $RES/" >&2
