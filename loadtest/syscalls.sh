#!/usr/bin/env bash
# What each process asks of the kernel per member: system calls, by kind, of
# the load tool, the two nodes and Redis, while M connections open (`idle`)
# or open and join one room (`bigroom`, no chatter, no baseline). The kernel
# is where most of a loopback delivery's CPU goes on small machines, so
# these counts say what a join costs beyond a plain connection, and what no
# change in user space can take away.
#
#   loadtest/syscalls.sh idle [M]       # M plain connections (20,000)
#   loadtest/syscalls.sh bigroom [M]    # M members joining one room
#
# Needs perf (Debian: linux-perf), redis-server, curl, and root (or
# kernel.perf_event_paranoid <= -1) for the tracepoints. Traffic stays on
# 127.0.0.0/8; the run ends with the load tool (well under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-bigroom}
M=${2:-20000}
case "$MODE" in idle | bigroom) ;; *) echo "usage: $0 idle|bigroom [M]" >&2; exit 1 ;; esac
for tool in perf redis-server curl; do
  command -v "$tool" >/dev/null || {
    echo "syscalls.sh needs $tool (Debian: ${tool/perf/linux-perf}${tool/redis-server/ (redis-server)})" >&2
    exit 1
  }
done
cargo build --release -p banter-node -p banter-load
BIN=$(mktemp -d)
cp target/release/banter-node target/release/banter-load "$BIN/"
OUT=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(free_port); P1=$(free_port); P2=$(free_port)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$BIN"; }
trap cleanup EXIT

redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
R=$!; PIDS+=("$R")
export BANTER__LIMITS__RATE_PER_SEC=1000000 BANTER__LIMITS__BURST=1000000 BANTER__LOG__LEVEL=warn
"$BIN/banter-node" --redis "redis://127.0.0.1:$RP/" --listen "127.0.0.1:$P1" --node-id a >"$OUT/a.log" 2>&1 &
A=$!; PIDS+=("$A")
"$BIN/banter-node" --redis "redis://127.0.0.1:$RP/" --listen "127.0.0.1:$P2" --node-id b >"$OUT/b.log" 2>&1 &
B=$!; PIDS+=("$B")
for p in $P1 $P2; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$p/readyz" >/dev/null || { echo "node on $p never ready" >&2; exit 1; }
done

EV=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write
EV=$EV,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,context-switches
perf stat -x, -e "$EV" -p "$A,$B" -o "$OUT/nodes.txt" &
PN=$!
perf stat -x, -e "$EV" -p "$R" -o "$OUT/redis.txt" &
PR=$!
sleep 0.5
NODES=127.0.0.1:$P1,127.0.0.1:$P2
if [ "$MODE" = idle ]; then
  perf stat -x, -e "$EV" -o "$OUT/tool.txt" -- "$BIN/banter-load" idle --nodes "$NODES" --pids "$A,$B" \
    -n "$M" --sources 4 --hold 1s >"$OUT/load.log" 2>&1
else
  perf stat -x, -e "$EV" -o "$OUT/tool.txt" -- "$BIN/banter-load" bigroom --nodes "$NODES" --pids "$A,$B" \
    -m "$M" --sources 4 --hold 1s --chatter 0 --chatters 0 --no-baseline >"$OUT/load.log" 2>&1
fi
kill -INT "$PN" "$PR"
wait "$PN" "$PR" 2>/dev/null || true

echo "$MODE, $M members, $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD): system calls per member"
echo
echo "| process | all | sendto | writev | write | recvfrom | read | epoll_wait | context switches |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for g in tool nodes redis; do
  awk -F, -v g="$g" -v m="$M" '
    $1 ~ /^[0-9]+$/ { v[$3] = $1 / m }
    END {
      printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", g,
        v["raw_syscalls:sys_enter"], v["syscalls:sys_enter_sendto"], v["syscalls:sys_enter_writev"],
        v["syscalls:sys_enter_write"], v["syscalls:sys_enter_recvfrom"], v["syscalls:sys_enter_read"],
        v["syscalls:sys_enter_epoll_wait"], v["context-switches"]
    }' "$OUT/$g.txt"
done
grep -E "^\| (time to fill|connect rate) " "$OUT/load.log" || true
rm -rf "$OUT"
