#!/usr/bin/env bash
# Banter's reliability run: builds release binaries, runs `banter-load chaos`
# with every fault (each on a fresh Redis, or a fresh Redis Cluster, and fresh
# nodes that banter-load starts and stops itself on 127.0.0.1), and writes
# RELIABILITY.md (machine, exact commands, one table row per fault, a legend
# of the columns).
#
#   loadtest/reliability.sh            # the full run (about 10 minutes)
#   QUICK=1 loadtest/reliability.sh    # short rounds, to check the script itself
#
# Needs redis-server, redis-cli (Debian: redis-tools), jq and procps (kill).
# All traffic stays on 127.0.0.0/8;
# every round is bounded in time by banter-load, every run by `timeout` here.
# The exit status is non-zero when a run found an acked message silently
# lost, duplicated or reordered (RELIABILITY.md is written either way).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=${QUICK:-0}
OUT=${OUT:-$ROOT/RELIABILITY.md}

for tool in redis-server:redis-server redis-cli:redis-tools jq:jq kill:procps timeout:coreutils; do
  command -v "${tool%%:*}" >/dev/null ||
    { echo "reliability.sh needs ${tool%%:*} (Debian package ${tool#*:})" >&2; exit 1; }
done

cargo build --release -p banter-node -p banter-load
# Private copies: other builds in this target dir must not swap them mid-run.
BIN=$(mktemp -d)
trap 'rm -rf "$BIN"' EXIT
cp target/release/banter-node target/release/banter-load "$BIN/"
LOAD="$BIN/banter-load"

if [ "$QUICK" = 1 ]; then
  ROUND=(--fault-at 1500ms --duration 4s --after 1500ms --drain 4s --hold 2s)
  WIDE_FAULTS=kill-pubsub,node-kill
  OVERLOAD=overload:readers=1000:for=6s
  CLUSTER_FAULTS=primary-kill,reshard
else
  ROUND=(--fault-at 5s --duration 15s --after 5s --drain 10s --hold 3s)
  WIDE_FAULTS=kill-pubsub,sigstop,restart,node-kill,rolling
  OVERLOAD=overload
  CLUSTER_FAULTS=kill-pubsub,sigstop,restart,oom,debug-sleep,node-kill,primary-kill,reshard
fi
# The Redis Cluster rounds: three primaries with a replica each.
CLUSTER=(--redis-cluster --shards 3 --replicas 1 --node-timeout 1500ms)
ALL=kill-pubsub,sigstop,restart,restart+aof,oom,debug-sleep,node-kill,rolling,$OVERLOAD

STATUS=0
# Runs one chaos configuration: its command and tables into $OUT.
run() {
  local name=$1; shift
  local shown="banter-load chaos $*"
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
  timeout 1800 "$LOAD" chaos --node-bin "$BIN/banter-node" "$@" --json "$BIN/$name.json" \
    >"$BIN/$name.md" 2>"$BIN/$name.log" || status=$?
  if [ ! -s "$BIN/$name.json" ]; then
    { echo "The run did not finish (exit status $status):"; echo; echo '```'; tail -n 20 "$BIN/$name.log"; echo '```'; } >>"$OUT"
    STATUS=1
    return 0
  fi
  # The per-fault table (the tables that follow it are left out).
  awk '/^\|/{print; started = 1; next} started && /^### /{exit}' "$BIN/$name.md" >>"$OUT"
  {
    echo
    echo "What each fault did, and how the clients' sockets ended (from the JSON result):"
    echo
    echo "| fault | what it did | longest silence | reconnects | sessions ended by | refusals | not answered | read though not acked (of them refused) |"
    echo "| --- | --- | ---: | ---: | --- | --- | ---: | ---: |"
    jq -r '.rounds[] | "| \(.fault) | \(.error // (.fault_notes | join("; "))) | \(.longest_silence_ms | round) ms | \(.reconnects) | \(.session_ends | to_entries | map("\(.key): \(.value)") | join("; ")) | \(.refused_by_code | to_entries | map("\(.key): \(.value)") | join("; ")) | \(.unanswered) | \(.totals.unacked_read) (\(.totals.refused_read)) |"' "$BIN/$name.json"
    if jq -e '[.rounds[] | select(.memory != null)] | length > 0' "$BIN/$name.json" >/dev/null; then
      echo
      echo "The flooded node's memory (\`overload\`: RSS every 250 ms, its \`/metrics\` and Redis's \`CLIENT LIST\` every 250 ms):"
      echo
      echo "| fault | node | readers (cut by the node) | flood sent / acked | RSS at start | flood start (readers in) | flood end | growth during the flood | max (s after the fault's start) | end | bus lag max | bus reconnects | gaps announced by the node | Redis: largest subscriber output buffer |"
      echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
      jq -r 'def mib: . / 1024 * 10 | round / 10 | "\(.) MiB";
        .rounds[] | select(.memory != null) | .memory as $m | (.flood // {}) as $f |
        "| \(.fault) | \($m.node) | \($f.readers // 0) (\($f.readers_cut // {} | [.[]] | add // 0)) | \($f.sent // 0) / \($f.acked // 0) | \($m.rss_start_kib | mib) | \($m.rss_readers_kib | mib) | \($m.rss_flood_end_kib | mib) | \($m.rss_growth_kib_per_sec / 1024 * 100 | round / 100) MiB/s | \($m.rss_max_kib | mib) (\((($m.rss_max_at_ms - .fault_start_ms) / 100 | round) / 10) s) | \($m.rss_end_kib | mib) | \($m.lag_max_seconds // null | if . == null then "n/a" else "\(. * 10 | round / 10) s" end) | \(if $m.last.reconnects == null then "n/a" else $m.last.reconnects - ($m.first.reconnects // 0) end) | \(if $m.last.gaps_unrepaired == null then "n/a" else $m.last.gaps_unrepaired - ($m.first.gaps_unrepaired // 0) end) | \($m.redis_omem_max / 1024 | mib) |"' "$BIN/$name.json"
      # What the figures say, in words, whatever they are.
      echo
      jq -r 'def mib: . / 1024 * 10 | round / 10 | "\(.) MiB";
        .rounds[] | select(.memory != null) | .memory as $m | (.flood // {}) as $f |
        (($m.rss_flood_end_kib - $m.rss_readers_kib)) as $grew |
        (($m.last.reconnects // 0) - ($m.first.reconnects // 0)) as $rc |
        (($f.flood_end_us // 0) / 1000) as $fe |
        [$m.rss_kib[] | select(.[0] >= $fe - 5000 and .[0] <= $fe)] as $tail |
        (if ($tail | length) > 1 then ($tail[-1][1] - $tail[0][1]) / (($tail[-1][0] - $tail[0][0]) / 1000) else 0 end) as $tail_rate |
        "- \(.fault): while flooded for \($f.flood_secs // 0 | round) s, node \($m.node)'"'"'s RSS " +
        (if $grew <= ([8192, $m.rss_readers_kib / 10] | max) then "stayed flat (\($grew | mib) more at the end of the flood than at its start)"
         else "grew by \($grew | mib) (\($m.rss_growth_kib_per_sec / 1024 * 100 | round / 100) MiB/s; still \($tail_rate / 1024 * 100 | round / 100) MiB/s over the flood'"'"'s last 5 s)" end) +
        "; its bus lag reached \($m.lag_max_seconds // 0 | . * 10 | round / 10) s" +
        (if ($m.lag_max_seconds // 0) > 5.5 and $rc == 0 then ", past the 5 s bound, and the node never dropped its subscriber connection (0 bus reconnects)"
         elif $rc > 0 then " and the node reconnected its subscriber \($rc) time(s)" else "" end) +
        (if $m.redis_omem_max < 1048576 then "; Redis held none of the backlog (largest subscriber output buffer \($m.redis_omem_max / 1024 | mib)): what the node had not delivered waited in the node." else "; Redis held up to \($m.redis_omem_max / 1024 | mib) of it in the subscriber'"'"'s output buffer." end)' "$BIN/$name.json"
    fi
    if jq -e '.node_timeout_ms != null' "$BIN/$name.json" >/dev/null; then
      echo
      echo "From the fault's first action (the first room's primary struck) to delivery back, against the promise of \`cluster-node-timeout\` + 5 s:"
      echo
      jq -r '.node_timeout_ms as $t | .rounds[] | select(.error == null and .resume_ms != null) |
        (.fault_end_ms - .fault_start_ms) as $f | ($f + .resume_ms) as $all |
        "- \(.fault): the fault over (the cluster whole again) after \($f | round) ms, delivery back \(.resume_ms | round) ms later: \($all / 100 | round / 10) s in all (limit \(($t + 5000) / 1000) s)\(if $all > $t + 5000 then ": **over**" else "" end)"' "$BIN/$name.json"
    fi
    local losses
    losses=$(jq -r '.rounds[] | select((.lost_examples | length) > 0) | "- \(.fault): \(.lost_messages) distinct message(s), of them still in the room'"'"'s history at the end of the round: \(.lost_in_history // "unknown"); first: \(.lost_examples[:3] | join("; "))"' "$BIN/$name.json")
    if [ -n "$losses" ]; then
      echo
      echo "First silent losses of each failing round:"
      echo
      echo "$losses"
    fi
    echo
    if [ "$status" = 0 ]; then
      echo "Verdict: **ok**: no acked message was silently lost, duplicated or reordered."
    else
      echo "Verdict: **FAIL** (exit status $status): $(jq -r '[.rounds[] | select(.error != null or .totals.lost > 0 or .totals.duplicated > 0 or .totals.reordered > 0) | .fault] | join(", ")' "$BIN/$name.json")."
    fi
  } >>"$OUT"
  [ "$status" = 0 ] || STATUS=$status
  return 0
}

DIRTY=""
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then DIRTY=" plus uncommitted changes"; fi
{
  echo "# Banter reliability"
  echo
  echo "Generated by \`loadtest/reliability.sh\` on $(date -u +%Y-%m-%d) at commit \`$(git rev-parse --short HEAD)\`$DIRTY$( [ "$QUICK" = 1 ] && echo ' (QUICK=1: short rounds)')."
  echo "\`banter-load chaos\` proves that no acked message is silently lost, duplicated"
  echo "or reordered through faults. Each fault gets its own round on a fresh cluster"
  echo "that the tool starts itself: one \`redis-server\` (a Redis Cluster in the last"
  echo "section) and \`--nodes\` release \`banter-node\`s on free 127.0.0.1 ports, with"
  echo "the rate limit lifted and \`presence.ttl_ms = 3000\`, everything else default."
  echo "Publishers are on the first node and send open-loop; subscribers are on the"
  echo "other nodes and join every room."
  echo "The fault strikes \`--fault-at\` into the round; publishing goes on until"
  echo "\`--duration\`, and at least \`--after\` past the fault's end; then a bounded drain."
  echo "Clients that lose their socket reconnect (to the next node) and re-join every"
  echo "room with \`since\` = the last id they read there."
  echo
  echo "## Machine"
  echo
  echo '```'
  echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "memory: $(free -h | awk '/^Mem:/{print $2}') total"
  echo "kernel: $(uname -r)"
  echo "redis:  $(redis-server --version | cut -d' ' -f3 | cut -d= -f2)"
  echo '```'
  echo
  echo "The tool, Redis and the nodes share these cores."
  echo
  echo "## The faults"
  echo
  echo "- \`kill-pubsub\`: \`CLIENT KILL TYPE pubsub\` twice, a second apart (every node's bus subscription is cut)."
  echo "- \`sigstop\`: SIGSTOP Redis for \`--hold\`, then SIGCONT."
  echo "- \`restart\`: SIGKILL Redis and start it again on its port with no persistence: its history is gone, so holes must be announced (\`gap\`, or \`recovered: false\`)."
  echo "- \`restart+aof\`: the same with \`appendonly yes\`, \`appendfsync always\`: must be lossless."
  echo "- \`oom\`: \`maxmemory\` 1 KiB above \`used_memory\` with \`noeviction\` for \`--hold\` (cut to half of it whenever Redis has refused nothing for 250 ms: its memory saws up and down): sends are refused (\`unavailable\`), then the limit is lifted."
  echo "- \`debug-sleep\`: \`DEBUG SLEEP 2\` (Redis blocked for 2 s)."
  echo "- \`node-kill\`: SIGKILL the last node (not the publishers') and start it again; its clients reconnect elsewhere."
  echo "- \`rolling\`: SIGTERM every node in turn (each drains, closing its sockets with 1001) and start it again once it has exited, waiting for every client to be back before the next."
  echo "- \`overload\`: a fan-out the last node cannot keep up with. $( [ "$QUICK" = 1 ] && echo '1,000' || echo '3,000' ) more sockets that read (and discard) everything join the first room on the last node, the subscribers' node; four flood publishers on the first node send 2,000 messages/s of 200 B into that room, open loop, for $( [ "$QUICK" = 1 ] && echo 6 || echo 15 ) s: 6 million deliveries a second asked of that node. The fault ends when the node's \`banter_bus_lag_seconds\` is back under 0.25 s. The node's RSS is read every 250 ms for the whole round, its \`/metrics\` and Redis's pub/sub output buffers too (the table after the second one)."
  echo
  echo "On a Redis Cluster (\`--redis-cluster\`: six \`redis-server --cluster-enabled yes\`"
  echo "processes joined by \`redis-cli --cluster create\`, three primaries with a replica"
  echo "each, \`cluster-node-timeout\` 1500 ms, no persistence; the nodes get every"
  echo "instance as a seed of \`--redis-cluster\`), the room's channel is"
  echo "\`banter:room:{chaos-0}\` and lives on the one primary that serves its hash slot"
  echo "(asked of Redis with \`CLUSTER KEYSLOT\` and \`CLUSTER NODES\`). The faults that"
  echo "strike \"Redis\" strike that primary, and each ends once every instance says"
  echo "\`cluster_state:ok\` and names the same primary for the slot:"
  echo
  echo "- \`kill-pubsub\`: \`CLIENT KILL TYPE pubsub\` on every primary at once, twice, a second apart. On Redis 7.0 this does cut the nodes' RESP3 \`SSUBSCRIBE\` connections (they carry the pub/sub flag \`P\`; checked by hand with \`CLIENT LIST\`). A node that loses one shard's connection drops its others itself, so a count can be lower than two per primary."
  echo "- \`sigstop\`: SIGSTOP the room's primary for \`--hold\` (3 s, longer than \`cluster-node-timeout\`): its replica takes over while it is frozen, and when SIGCONT wakes it, it may still run what was waiting on its sockets before it learns that it was replaced. Whatever it stores then goes when it turns into a replica of the new primary, so a message it acked then is lost unless a node notices."
  echo "- \`restart\`: SIGKILL the room's primary and start it again at once on its port (its \`nodes.conf\` kept, no persistence): it is back within \`cluster-node-timeout\`, so no failover happens, it is primary again with an empty dataset, and its replica resyncs from it. The room's history is gone, so holes must be announced."
  echo "- \`oom\`: as above, on the room's primary."
  echo "- \`debug-sleep\`: \`DEBUG SLEEP 2\` on the room's primary: 2 s is longer than \`cluster-node-timeout\`, so its replica may take over while it sleeps (the hazard of \`sigstop\`)."
  echo "- \`node-kill\`: as above."
  echo "- \`primary-kill\`: SIGKILL the room's primary and leave it dead: its replica takes over after \`cluster-node-timeout\` and an election; the nodes' subscribers rebuild their links to the new set of primaries and repair the room from its history."
  echo "- \`reshard\`: move the room's slot to another primary under traffic, as \`redis-cli --cluster reshard\` does for each slot: \`CLUSTER SETSLOT IMPORTING\` on the target, \`MIGRATING\` on the source, the slot's keys (the room's stream, its epoch, its presence keys) \`MIGRATE\`d one at a time, 100 ms apart (commands meanwhile get \`ASK\` or \`TRYAGAIN\`), then \`SETSLOT NODE\` on the target, the source and the other primaries (the source then unsubscribes the room's channel from its subscribers)."
  echo
  echo "After each cluster fault the tool also waits (up to 15 s) for every node's \`banter_bus_shards_up\` to be 3 again and notes when it was."
} >"$OUT"

echo -e "\n## The canonical case: one publisher at 250 msg/s on node A, three subscribers on node B\n" >>"$OUT"
run canonical --nodes 2 --publishers 1 --subscribers 3 --rooms 1 --rate 250 --size 64 \
  --faults "$ALL" "${ROUND[@]}"

echo -e "\n## Wider: three nodes, four rooms, four publishers on node A, 24 subscribers on nodes B and C\n" >>"$OUT"
run wide --nodes 3 --publishers 4 --subscribers 24 --rooms 4 --rate 400 --size 100 \
  --faults "$WIDE_FAULTS" "${ROUND[@]}"

echo -e "\n## On a Redis Cluster: one publisher at 250 msg/s on node A, three subscribers on node B\n" >>"$OUT"
echo "The room's history holds 2,000 messages here (\`--history-size 2000\`, 8 s at this rate), so that a failover's hole, a few seconds of traffic, can be repaired from it and what is left over is what repair cannot fix. The same failover at the default \`history.size\` (200) follows." >>"$OUT"
run cluster "${CLUSTER[@]}" --nodes 2 --publishers 1 --subscribers 3 --rooms 1 --rate 250 --size 64 \
  --history-size 2000 --faults "$CLUSTER_FAULTS" "${ROUND[@]}"

echo -e "\n### The same failover at the default history.size (200)\n" >>"$OUT"
echo "At 250 msg/s, 200 messages are 0.8 s of the room: a failover's hole is longer, so the nodes announce it (\`gap\`) instead of repairing it." >>"$OUT"
run cluster-default "${CLUSTER[@]}" --nodes 2 --publishers 1 --subscribers 3 --rooms 1 --rate 250 --size 64 \
  --faults primary-kill "${ROUND[@]}"

cat >>"$OUT" <<'EOF'

## The columns

Each acked message is counted once per subscriber that could have read it
(it was acked after the subscriber first joined its room), so
*delivered live + recovered + announced + lost* = *acked* × subscribers of its room.

- **acked**: messages the publishers saw acked (`ack` with an id).
- **delivered live**: (subscriber, message) pairs first read as a live `message` frame.
- **repaired**: messages the nodes' gap repair re-read from history
  (`banter_bus_gap_messages_total`, summed over every node and every restart of
  it); they reach clients as live messages, so they are inside *delivered live*
  too. `n/a`: the nodes do not export the metric.
- **recovered (since)**: pairs first read in the `history` of a `joined` after
  a re-join with `since`.
- **announced (gap)**: pairs never read, but covered by a `gap` frame for the
  room or a `joined` with `recovered: false` that this subscriber read after the
  message was acked and before reading any message of the room acked later.
  An honest hole: it does not fail the run.
- **refused**: sends answered with an `error` (`unavailable`: the message was
  not stored). Honest: it does not fail the run.
- **lost**: pairs never read and not announced: silent losses. Any fails the run.
- **duplicated**: extra reads of a message a subscriber had already read (live
  or from history). Any fails the run.
- **reordered**: messages a subscriber read after one that comes later in the
  room's order (a publisher's own sequence, and the order every other
  subscriber of the room read them in). Any fails the run.
- **time to resume**: from the fault's end (Redis answering again, the
  restarted node ready, or on a Redis Cluster every instance `cluster_state:ok`)
  to the first moment a message sent after it had reached every subscriber of
  its room (the slowest room counts).
- **verdict**: `ok` when lost, duplicated and reordered are all 0.

In the second table, **longest silence** is the longest any subscriber went
without reading a new message of a room (normal spacing is 1 / rate); **not
answered** counts sends whose socket ended before their `ack` (not acked, so
not expected); **read though not acked** counts distinct messages subscribers
read that their publisher never saw acked, and in brackets those the node had
refused with an `error` (a refusal that was not one).

In the memory table (`overload` rounds), **RSS at start** is the flooded
node's RSS when publishing began, **flood start** with the readers joined,
**flood end** when the flood stopped (the readers still there), **growth
during the flood** the difference over the flood's length, **max** the
largest of all samples (with when), **end** the last sample (after the drain,
the readers gone). **bus lag max** is the largest `banter_bus_lag_seconds`
read (how long the newest batch the fan-out took had waited since Redis
sent it, in the client library's buffer and the node's inbox),
**bus reconnects** and **gaps announced by the node** are the changes of
`banter_bus_reconnects_total` and `banter_bus_gaps_total{outcome="unrepaired"}`
over the round, and **Redis: largest subscriber output buffer** the largest
`omem` of a pub/sub client in `CLIENT LIST`: where what a node does not read
waits when the node applies backpressure to Redis. What the node's design
promises (docs/operations.md) is bounded memory, not flat: a reconnect once
messages wait more than 5 s to be read from Redis, the lag beyond that only
what the node's inbox holds, and no backlog in Redis.
EOF

echo "wrote $OUT" >&2
exit "$STATUS"
