#!/usr/bin/env python3
"""Writes docs/capacity.md: how far a Banter cluster goes, computed from the
figures measured in BENCHMARKS.md and from the assumptions stated below.

    python3 scripts/capacity.py > docs/capacity.md

Python 3 standard library only. The whole document comes from this script:
change a figure or an assumption here and regenerate, never edit the .md.

Every measured input below names where it comes from. Unless a comment says
otherwise, the machine is the one in BENCHMARKS.md's "Machine" section: a
shared 2-core VM with 23 GiB of memory (that section names the CPU as AMD
EPYC), on which the load tool, Redis and both nodes share the two cores.
"""

import math

# ---------------------------------------------------------------------------
# Measured inputs
# ---------------------------------------------------------------------------
# Machine, for every figure from BENCHMARKS.md: its "Machine" section (shared
# 2-core VM, 23 GiB, CPU named AMD EPYC; load tool, Redis, nodes on it alike).

# Deliveries per node CPU-second (node CPU = both nodes' utime + stime over the
# window, from /proc; a delivery = one frame written to one socket), the
# fan-out shape: one room of 1,000 subscribers over two nodes, one publisher,
# 100-byte texts, 50 msg/s. BENCHMARKS.md, "The floor: loopback TCP with no
# server", the three reference runs:
#   banter-load fanout --nodes A,B --pids PID_A,PID_B --subscribers 1000
#     --publishers 1 --rate 50 --size 100 --warmup 5s --duration 15s --room ref-N
# (bench.sh at 70a118a). Each delivery is its own write here: a subscriber
# gets one message every 20 ms, nothing waits, nothing is batched.
FANOUT_REFERENCE_DELIVERIES_PER_CPU_S = (82_418, 85_911, 83_037)

# The same shape at higher rates, BENCHMARKS.md "Fan-out: 1000 subscribers in
# one room over two nodes ..." (`... --rate R --size 100 --warmup 5s
# --duration 20s --room bench-R`). From 200 msg/s the nodes fall behind and
# batch: consecutive messages of a room go to each socket in one vectored write.
FANOUT_SWEEP_DELIVERIES_PER_CPU_S = {
    25: 89_767,
    50: 99_010,
    100: 105_794,
    200: 199_878,
    400: 418_267,  # p99 87.61 ms, 0 lost / duplicated / reordered
}
FANOUT_SWEEP_P99_MS = {25: 17.01, 50: 15.25, 100: 41.92, 200: 54.43, 400: 87.61}

# BENCHMARKS.md "Big room: 20000 members in one room over two nodes"
# (ONLY=idle,bigroom loadtest/bench.sh, 2026-12-03, 15e68c1;
# "the machine is the one described above"):
#   banter-load bigroom --nodes A,B --pids PID_A,PID_B --redis-port REDIS_PORT
#     -m 20000 --sources 4 --hold 10s --chatter 2 --chatters 4
# While the room was held: 20 messages x 20,000 members = 400,000 deliveries,
# and the nodes' CPU for the whole 10 s hold (presence refresh included).
BIGROOM_HOLD_DELIVERIES = 400_000
BIGROOM_HOLD_NODE_CPU_S = 1.62 + 1.45
BIGROOM_HOLD_S = 10.0
BIGROOM_MEMBERS = 20_000
BIGROOM_HOLD_REDIS_CPU_S = 0.19  # Redis INFO cpu over the hold
# Per join while the room filled (connect, `join`, `joined`, its share of
# the presence diffs), same run:
NODE_US_PER_JOIN = 190  # node CPU ("node CPU: fill / hold" row)
REDIS_US_PER_JOIN = 61  # Redis CPU ("Redis CPU: fill / hold / baseline")
REDIS_COMMANDS_PER_JOIN = {  # "Redis commands per join (fill)": calls, µs
    "evalsha": (3.00, 85),
    "zadd": (2.00, 11),
    "hset": (3.00, 5),
    "hmget": (2.03, 4),
    "subscribe": (0.04, 4),
    "hincrby": (1.00, 3),
}
# The same 20,000 connections joining no room (the run's baseline):
NODE_US_PER_CONNECTION = 88
# The baseline's connect rate: 20,000 connections over the two nodes in
# 1.84 s ("baseline: the same connections, no room"), each with its user's
# topic subscribed by the node's subscriber task before `welcome`.
BASELINE_CONNECTIONS = 20_000
BASELINE_S = 1.84
REDIS_US_PER_CONNECTION = 15  # one SUBSCRIBE: the user's own topic
# Node RSS per joined member, worst node, at the end of the hold (7.17 KiB
# with every member joined, before the chatter).
RSS_KIB_PER_MEMBER = 7.66
LARGEST_JOINED_FRAME_B = 4_043
# Presence frames each member read while the room filled: 1.094 per second.
PRESENCE_FRAMES_PER_MEMBER_S_FILLING = 1.094

# BENCHMARKS.md "Idle connections":
#   banter-load idle --nodes A,B --pids PID_A,PID_B -n 20000 --sources 4 --hold 10s
RSS_KIB_PER_IDLE_CONNECTION = 5.96  # worst node (2026-12-03, 15e68c1)

# BENCHMARKS.md "Rooms: 5000 rooms of 4, every member sending one message
# every 2 s":
#   banter-load rooms --nodes A,B --pids PID_A,PID_B --rooms 5000 --members 4
#     --interval 2s --warmup 5s --duration 20s --sources 4
# 10,000 msg/s offered, 4 deliveries per message (the sender's echo counted),
# (ONLY=rooms,shards loadtest/bench.sh, 2026-12-03, 94ac3c3): the machine
# 83 % busy, p99 322 ms (hypervisor steal that run; quiet runs 15-25 ms).
ROOMS_DELIVERIES_PER_CPU_S = 47_247
ROOMS_MEMBERS = 4
ROOMS_MSG_PER_S = 10_000
ROOMS_NODES = 2
# Its /metrics after the run: bus messages received, both nodes, for 250,000
# messages sent (presence changes and probes included).
ROOMS_BUS_RECEIVED = 250_000 + 250_000
ROOMS_SENT = 250_000

# Redis CPU per stored-and-published message (the Lua script: XADD, PUBLISH
# or SPUBLISH, PEXPIRE), rooms shape at 10,000 msg/s: BENCHMARKS.md does not
# record Redis CPU for that section. This is the figure stated in the issue
# ("How far it goes"): about 45 µs of Redis CPU and 91 µs of node CPU per
# message, 4 deliveries each, in the rooms shape at 10,000 msg/s. Machine:
# the issue does not say; presumably the same 2-core VM. Measured since, in
# BENCHMARKS.md "What was tried" (A/B runs of this shape, 2026-12-03): 20-23 µs
# of Redis and 72-80 µs of node CPU per message. The issue's 45 µs is kept as
# the planning figure: it leaves room for a slower machine and a busier
# script (the shard counts below are then on the safe side).
REDIS_US_PER_MESSAGE = 45
ISSUE_NODE_US_PER_MESSAGE = 91

# Bytes of one `message` frame with 100 characters of text, WebSocket header
# included: BENCHMARKS.md "The floor" writes this frame ("one 243-byte write
# per socket per round"; 850,000 writes = 206,550,000 bytes).
FRAME_BYTES = 243

# ---------------------------------------------------------------------------
# Assumptions (not measured: change them to your hardware and traffic)
# ---------------------------------------------------------------------------

CONNECTIONS = 1_000_000
NODE_CORES = 16
NODE_RAM_GIB = 64
NODE_RSS_SHARE = 0.5  # of RAM for the node's RSS; the rest: kernel socket memory, OS
NIC_GBIT_S = 10
# Plan every single-core limit (a node's fan-out task, a Redis shard) and the
# NIC at this share of its capacity, to leave room for bursts and queueing.
UTILISATION = 0.7
# server.max_connections, the node's default (docs/configuration.md).
MAX_CONNECTIONS_PER_NODE = 100_000
# A Redis shard (one primary) runs its commands on one core.
REDIS_CORES_PER_SHARD = 1
# On the wire per delivery when each is its own TCP segment: IPv4 20 + TCP 20
# + timestamps option 12; Ethernet header 14 + FCS 4 + preamble 8 + gap 12.
TCP_IP_BYTES = 52
ETHERNET_BYTES = 38
# One copy of a message on a node's subscriber connection: the frame plus its
# position header, the channel's name and RESP framing (estimated).
BUS_COPY_BYTES = FRAME_BYTES + 80
# Presence: entries refreshed every presence.ttl_ms / 4 (defaults: 30 s / 4).
PRESENCE_REFRESH_S = 7.5
DIFF_INTERVAL_S = 1.0  # presence.diff_interval_ms
# A node this far behind the bus drops its subscription and repairs from
# history (docs/operations.md, `banter_bus_lag_seconds`).
MAX_LAG_S = 5
# Round trip between a node and a Redis shard in one data centre. The node's
# subscriber task makes new subscriptions one at a time: a user's topic is one
# round trip (SUBSCRIBE), a room's first local member two (its history's
# newest id, then SUBSCRIBE); see crates/bus/src/redis/subscriber.rs.
REDIS_RTT_MS = 0.2

# The two shapes of 1 M connections.
BIG_ROOM = 100_000
BIG_ROOM_COUNTS = (1, 10)
BIG_ROOM_RATES = (1, 10, 100)  # messages per second in each big room
SMALL_ROOMS = 100_000
SMALL_ROOM = 10
SMALL_ROOM_INTERVALS_S = (10, 60)  # one message per member every ...

# ---------------------------------------------------------------------------
# Derived figures
# ---------------------------------------------------------------------------

F_UNBATCHED = min(FANOUT_REFERENCE_DELIVERIES_PER_CPU_S)
F_BATCHED = FANOUT_SWEEP_DELIVERIES_PER_CPU_S[400]
F_BIGROOM_HOLD = BIGROOM_HOLD_DELIVERIES / BIGROOM_HOLD_NODE_CPU_S
US_PER_DELIVERY = 1e6 / F_UNBATCHED
ROOMS_NODE_US_PER_MESSAGE = 1e6 * ROOMS_MEMBERS / ROOMS_DELIVERIES_PER_CPU_S
# What a message costs a node besides its deliveries: reading the client's
# frame, the Lua script's round trip, the ack, reading the message back
# from Redis. Spread over the worker threads, except the bus read's share in
# the subscriber task (see the text).
REST_US_PER_MESSAGE = ROOMS_NODE_US_PER_MESSAGE - ROOMS_MEMBERS * US_PER_DELIVERY
WIRE_BYTES = FRAME_BYTES + TCP_IP_BYTES + ETHERNET_BYTES
NIC_BYTES_S = NIC_GBIT_S * 1e9 / 8
FANOUT_BUDGET = F_UNBATCHED * UTILISATION  # deliveries/s per node, one core
MSG_PER_SHARD_S = 1e6 / REDIS_US_PER_MESSAGE * REDIS_CORES_PER_SHARD
# Presence while nothing changes: Redis CPU per member per second, from the
# big room's hold (refresh, the 20 messages and the probes all included: an
# upper bound for a big room, where one refresh call carries many members).
REDIS_US_PER_MEMBER_S = 1e6 * BIGROOM_HOLD_REDIS_CPU_S / (BIGROOM_MEMBERS * BIGROOM_HOLD_S)
# The copies of a room's messages that reach nodes, in the rooms run: each
# message reached the distinct nodes its 4 members were on.
ROOMS_COPIES = ROOMS_NODES * (1 - (1 - 1 / ROOMS_NODES) ** ROOMS_MEMBERS)
REDIS_US_PER_JOIN_ROOM = REDIS_US_PER_JOIN - REDIS_US_PER_CONNECTION
JOINS_PER_SHARD_S = 1e6 / REDIS_US_PER_JOIN_ROOM
EVALSHA_US = REDIS_COMMANDS_PER_JOIN["evalsha"][1] / REDIS_COMMANDS_PER_JOIN["evalsha"][0]


def distinct_nodes(members, nodes):
    """Expected nodes a room's members are on, members spread at random."""
    return nodes * (1 - (1 - 1 / nodes) ** members)


def ceil(x):
    return max(1, math.ceil(x - 1e-9))


def n(x, digits=0):
    """A number with thousands separators."""
    if digits == 0:
        return f"{round(x):,}"
    return f"{x:,.{digits}f}"


def pct(x):
    return f"{x * 100:.0f} %" if x >= 0.01 else f"{x * 100:.1f} %"


def pc(x):
    return f"{x * 100:.0f} %"


def gbit(bytes_s):
    g = bytes_s * 8 / 1e9
    return f"{g:.2f}" if g < 10 else f"{g:,.0f}"


def gib(kib):
    return kib / (1024 * 1024)


def table(head, rows, right=()):
    out = ["| " + " | ".join(head) + " |"]
    out.append("| " + " | ".join("---:" if i in right else "---" for i in range(len(head))) + " |")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def nodes_for(connections, deliveries_s, rss_kib, messages_s):
    """Nodes needed, and the binding limit, with today's one fan-out task."""
    limits = {
        "connections per node": connections / MAX_CONNECTIONS_PER_NODE,
        "fan-out core": deliveries_s / FANOUT_BUDGET,
        "memory": gib(rss_kib) / (NODE_RAM_GIB * NODE_RSS_SHARE),
        "NIC": deliveries_s * WIRE_BYTES / (NIC_BYTES_S * UTILISATION),
        "other cores": messages_s * REST_US_PER_MESSAGE / 1e6
        / ((NODE_CORES - 1) * UTILISATION),
    }
    name = max(limits, key=limits.get)
    return ceil(limits[name]), name, limits


def nodes_if_all_cores(connections, deliveries_s, rss_kib, messages_s):
    """The same if the fan-out used every core but one (an estimate)."""
    cores = NODE_CORES - 1
    limits = {
        "connections per node": connections / MAX_CONNECTIONS_PER_NODE,
        "fan-out cores": deliveries_s / (FANOUT_BUDGET * cores)
        + messages_s * REST_US_PER_MESSAGE / 1e6 / (cores * UTILISATION),
        "memory": gib(rss_kib) / (NODE_RAM_GIB * NODE_RSS_SHARE),
        "NIC": deliveries_s * WIRE_BYTES / (NIC_BYTES_S * UTILISATION),
    }
    name = max(limits, key=limits.get)
    return ceil(limits[name]), name


# ---------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------


def big_rooms():
    rows, notes = [], {}
    for count in BIG_ROOM_COUNTS:
        members = count * BIG_ROOM
        quiet = CONNECTIONS - members
        rss = members * RSS_KIB_PER_MEMBER + quiet * RSS_KIB_PER_IDLE_CONNECTION
        for rate in BIG_ROOM_RATES:
            deliveries = count * rate * BIG_ROOM
            msgs = count * rate
            nodes, limit, _ = nodes_for(CONNECTIONS, deliveries, rss, msgs)
            # Batching joins consecutive messages of one room: it helps one
            # hot room, not several whose messages interleave in the inbox.
            batched = max(ceil(deliveries / (F_BATCHED * UTILISATION)),
                          ceil(CONNECTIONS / MAX_CONNECTIONS_PER_NODE)) if count == 1 else None
            all_cores, _ = nodes_if_all_cores(CONNECTIONS, deliveries, rss, msgs)
            local = BIG_ROOM / nodes
            pass_ms = local * US_PER_DELIVERY / 1e3
            # The room's shard: its messages, its members' presence refresh,
            # and one copy of each message to every node (each has members).
            copies = rate * nodes
            egress = deliveries * WIRE_BYTES
            rows.append([
                f"{count} × 100,000" + (f" (+ {n(quiet)} quiet)" if quiet else ""),
                n(rate),
                n(deliveries),
                f"**{n(nodes)}** ({limit})",
                n(batched) if batched else "– (rooms interleave)",
                n(all_cores),
                pct(deliveries / nodes / F_UNBATCHED),
                n(pass_ms),
                f"{n(copies)} /s = {copies * BUS_COPY_BYTES / 1e6:.2f} MB/s",
                gbit(egress / nodes),
                gbit(egress),
            ])
            notes[(count, rate)] = dict(nodes=nodes, batched=batched, all_cores=all_cores,
                                        pass_ms=pass_ms, egress=egress, deliveries=deliveries)
    head = ["big rooms", "msg/s per room", "deliveries/s", "nodes needed today (what limits)",
            "nodes if the fan-out batches (when behind)", "nodes if the fan-out used 15 cores (estimate)",
            "fan-out core busy per node", "one message's pass over a node's members, ms",
            "each room's shard: pub/sub output", "egress per node, Gbit/s",
            "cluster egress, Gbit/s"]
    return table(head, rows, right=set(range(1, 11))), notes


def small_rooms():
    rows, redis_rows, notes = [], [], {}
    rss = CONNECTIONS * RSS_KIB_PER_MEMBER
    for interval in SMALL_ROOM_INTERVALS_S:
        msgs = CONNECTIONS / interval
        deliveries = msgs * SMALL_ROOM
        nodes, limit, limits = nodes_for(CONNECTIONS, deliveries, rss, msgs)
        all_cores, _ = nodes_if_all_cores(CONNECTIONS, deliveries, rss, msgs)
        copies = distinct_nodes(SMALL_ROOM, nodes)
        bus_reads = msgs * copies / nodes
        rest_cores = msgs / nodes * REST_US_PER_MESSAGE / 1e6
        sub_break_even = 1e6 * UTILISATION / bus_reads
        rows.append([
            f"1 every {interval} s",
            n(msgs),
            n(deliveries),
            f"**{n(nodes)}** ({limit})",
            n(all_cores),
            pct(deliveries / nodes / F_UNBATCHED),
            f"{rest_cores:.2f}",
            f"{copies:.1f}",
            n(bus_reads),
            n(sub_break_even),
            gbit(deliveries * WIRE_BYTES / nodes),
        ])
        msg_cores = msgs * REDIS_US_PER_MESSAGE / 1e6
        presence_cores = CONNECTIONS * REDIS_US_PER_MEMBER_S / 1e6
        refresh_calls = SMALL_ROOMS * copies / PRESENCE_REFRESH_S
        shards = ceil((msg_cores + presence_cores) / (REDIS_CORES_PER_SHARD * UTILISATION))
        redis_rows.append([
            f"1 every {interval} s",
            f"{msg_cores:.2f}",
            f"{presence_cores:.2f}",
            f"**{shards}**",
            f"{n(msgs * copies)} /s ({copies / ROOMS_COPIES:.1f}× the rooms run's {ROOMS_COPIES:.2f} per message)",
            f"{n(refresh_calls)} /s = {refresh_calls / 1e6:.2f} cores per µs a call costs",
            n(MSG_PER_SHARD_S * UTILISATION),
        ])
        notes[interval] = dict(nodes=nodes, msgs=msgs, deliveries=deliveries, shards=shards,
                               copies=copies, refresh_calls=refresh_calls, bus_reads=bus_reads,
                               sub_break_even=sub_break_even, all_cores=all_cores,
                               msg_cores=msg_cores, rest_cores=rest_cores)
    head = ["messages per member", "msg/s", "deliveries/s", "nodes needed today (what limits)",
            "nodes if the fan-out used 15 cores (estimate)", "fan-out core busy per node",
            "other node work per node, cores", "nodes each message reaches",
            "bus messages per node /s", "subscriber task must stay under, µs per bus message",
            "egress per node, Gbit/s"]
    redis_head = ["messages per member", "Redis cores: messages", "Redis cores: presence, per-member part",
                  "shards (at the planning share)", "pub/sub copies to nodes", "presence refresh calls",
                  "msg/s one shard takes at the planning share (one room's ceiling)"]
    return (table(head, rows, right=set(range(1, 11))),
            table(redis_head, redis_rows, right={1, 2, 3, 6}), notes)


def memory():
    rows = []
    for label, joined, quiet in (
        ("1 room of 100,000 + 900,000 quiet", BIG_ROOM, CONNECTIONS - BIG_ROOM),
        ("10 rooms of 100,000", 10 * BIG_ROOM, 0),
        ("100,000 rooms of 10", CONNECTIONS, 0),
    ):
        rss = joined * RSS_KIB_PER_MEMBER + quiet * RSS_KIB_PER_IDLE_CONNECTION
        per_node = rss / ceil(CONNECTIONS / MAX_CONNECTIONS_PER_NODE)
        rows.append([label, f"{gib(rss):.1f}", f"{gib(per_node):.2f}",
                     n(NODE_RAM_GIB * NODE_RSS_SHARE * 1024 * 1024 / RSS_KIB_PER_MEMBER)])
    head = ["shape", "node RSS in all, GiB", f"per node at {MAX_CONNECTIONS_PER_NODE:,} connections, GiB",
            f"joined members one node's RSS budget holds ({pc(NODE_RSS_SHARE)} of {NODE_RAM_GIB} GiB)"]
    return table(head, rows, right={1, 2, 3})


def storm(big_notes, small_notes):
    rows = []
    cases = (
        ("1 room of 100,000 + 900,000 quiet", BIG_ROOM, CONNECTIONS - BIG_ROOM, True,
         big_notes[(1, 10)]["nodes"], 1),
        ("100,000 rooms of 10", CONNECTIONS, 0, False,
         small_notes[10]["nodes"], small_notes[10]["shards"]),
    )
    out = {}
    for label, joins, quiet, one_room, nodes, shards in cases:
        redis_total = (joins * REDIS_US_PER_JOIN + quiet * REDIS_US_PER_CONNECTION) / 1e6
        node_total = (joins * NODE_US_PER_JOIN + quiet * NODE_US_PER_CONNECTION) / 1e6
        if one_room:
            # The room's joins all run on its shard, which also takes its
            # share of the connections' own subscriptions.
            floor = joins * REDIS_US_PER_JOIN_ROOM / 1e6
            redis_s = floor + (redis_total - floor) / shards
            where = f"{shards} shard{'s' if shards > 1 else ''}; the room's joins all on its shard"
        else:
            floor = 0.0
            redis_s = redis_total / shards
            where = f"{shards} shards, rooms spread evenly"
        node_s = node_total / (nodes * (NODE_CORES - 1))
        # New subscriptions per node, one after another in its subscriber
        # task: every user's topic, and every room with local members.
        rooms_per_node = (1 if one_room else SMALL_ROOMS * distinct_nodes(SMALL_ROOM, nodes) / nodes)
        round_trips = CONNECTIONS / nodes + 2 * rooms_per_node
        sub_s = round_trips * REDIS_RTT_MS / 1e3
        rows.append([label, n(redis_total), where, f"**{n(redis_s)}**",
                     n(node_total), f"{n(nodes)} × {NODE_CORES - 1} cores: {node_s:.1f}",
                     f"{n(round_trips)} round trips: **{n(sub_s)}**"])
        out[label] = dict(redis_s=redis_s, node_s=node_s, redis_total=redis_total, floor=floor,
                          sub_s=sub_s, round_trips=round_trips, rooms_per_node=rooms_per_node)
    head = ["shape", "Redis CPU for 1 M arrivals, core-s", "where it runs",
            "Redis-bound shortest refill, s", "node CPU, core-s", "nodes' share, s",
            f"each node's subscriber task at {REDIS_RTT_MS} ms a round trip, s"]
    return table(head, rows, right={1, 3, 4}), out


def inputs_table():
    rows = [
        ["deliveries per node CPU-second, each delivery its own write (fan-out shape, 1,000 subscribers, 50 msg/s)",
         f"{', '.join(n(x) for x in FANOUT_REFERENCE_DELIVERIES_PER_CPU_S)}; planning figure: the lowest, "
         f"{n(F_UNBATCHED)} = {US_PER_DELIVERY:.1f} µs per delivery",
         "The floor (the three reference runs)"],
        ["the same, 50 / 100 / 200 / 400 msg/s (from 200 msg/s the node is behind and batches)",
         " / ".join(n(FANOUT_SWEEP_DELIVERIES_PER_CPU_S[r]) for r in (50, 100, 200, 400))
         + f"; p99 {FANOUT_SWEEP_P99_MS[400]} ms at 400 msg/s",
         "Fan-out (the sweep)"],
        ["deliveries per node CPU-second while a 20,000-member room was held (20 messages, presence refresh included)",
         f"{n(BIGROOM_HOLD_DELIVERIES)} in {BIGROOM_HOLD_NODE_CPU_S:.2f} s = {n(F_BIGROOM_HOLD)}",
         "Big room (node CPU: hold)"],
        ["deliveries per node CPU-second, rooms shape (5,000 rooms of 4, 10,000 msg/s, machine 83 % busy)",
         f"{n(ROOMS_DELIVERIES_PER_CPU_S)} = {ROOMS_NODE_US_PER_MESSAGE:.0f} µs of node CPU per message "
         f"(the issue states {ISSUE_NODE_US_PER_MESSAGE} µs); less {ROOMS_MEMBERS} deliveries at the planning "
         f"figure: {REST_US_PER_MESSAGE:.0f} µs for the rest of a message",
         "Rooms"],
        ["Redis CPU per message stored and published",
         f"{REDIS_US_PER_MESSAGE} µs = {n(MSG_PER_SHARD_S)} messages per Redis core-second",
         "**not in BENCHMARKS.md**: the figure the issue states for the rooms shape at 10,000 msg/s"],
        ["node RSS per idle connection", f"{RSS_KIB_PER_IDLE_CONNECTION} KiB", "Idle connections"],
        ["node RSS per joined member of a big room", f"{RSS_KIB_PER_MEMBER} KiB (end of hold; 7.17 all joined)",
         "Big room"],
        ["node CPU per join / per bare connection", f"{NODE_US_PER_JOIN} µs / {NODE_US_PER_CONNECTION} µs",
         "Big room (fill / baseline)"],
        ["Redis CPU per join / per bare connection", f"{REDIS_US_PER_JOIN} µs / {REDIS_US_PER_CONNECTION} µs",
         "Big room (fill / baseline)"],
        ["Redis commands per join",
         "; ".join(f"{k} {c:.2f} × = {u} µs" for k, (c, u) in REDIS_COMMANDS_PER_JOIN.items()),
         "Big room (commandstats)"],
        ["Redis CPU while 20,000 members sat in a room",
         f"{BIGROOM_HOLD_REDIS_CPU_S} s in {BIGROOM_HOLD_S:.0f} s = {REDIS_US_PER_MEMBER_S:.2f} µs per member-second",
         "Big room (Redis CPU: hold)"],
        ["presence frames per member while a room fills", f"{PRESENCE_FRAMES_PER_MEMBER_S_FILLING} per second",
         "Big room"],
        ["largest `joined` frame", f"{n(LARGEST_JOINED_FRAME_B)} B", "Big room"],
        ["bytes of one `message` frame with 100 characters of text",
         f"{FRAME_BYTES} B (WebSocket header included)", "The floor (\"one 243-byte write\")"],
    ]
    return table(["figure", "value", "BENCHMARKS.md section (or source)"], rows)


def assumptions_table():
    rows = [
        ["connections", n(CONNECTIONS), "the question"],
        ["a node's machine", f"{NODE_CORES} cores, {NODE_RAM_GIB} GiB, {NIC_GBIT_S} Gbit/s NIC; "
         f"{pc(NODE_RSS_SHARE)} of memory for the node's RSS", "the rest: the kernel's socket buffers, the OS"],
        ["a core there", "as fast as one of the benchmark VM's cores",
         "not measured: a real core without the VM's syscall mitigations is likely faster"],
        ["connections per node", f"at most {n(MAX_CONNECTIONS_PER_NODE)}",
         "`server.max_connections`' default; 10 × the 10,000 per node measured"],
        ["planning share", f"{pc(UTILISATION)} of each single-core limit and of the NIC",
         "headroom for bursts: in the fan-out sweep p99 was 15 ms with the machine 51 % busy, 42-88 ms at 98-100 %"],
        ["a Redis shard", f"{REDIS_CORES_PER_SHARD} core", "Redis runs commands on one thread"],
        ["bytes on the wire per delivery",
         f"{FRAME_BYTES} + {TCP_IP_BYTES} (IPv4, TCP, timestamps) + {ETHERNET_BYTES} (Ethernet, preamble, gap) = {WIRE_BYTES} B",
         "one delivery per segment; no TLS at the node (nginx ends TLS); batched writes carry less"],
        ["a copy of a message to a node", f"about {BUS_COPY_BYTES} B", "the frame, its position header, the channel, RESP"],
        ["members of a room", "spread at random over the nodes", "the load balancer knows nothing of rooms"],
        ["presence refresh", f"every {PRESENCE_REFRESH_S} s (`presence.ttl_ms` / 4)", "defaults"],
        ["round trip node ↔ Redis", f"{REDIS_RTT_MS} ms", "one data centre; loopback in the benchmarks"],
    ]
    return table(["what", "assumed", "why"], rows)


def main():
    big, big_notes = big_rooms()
    small, small_redis, small_notes = small_rooms()
    mem = memory()
    storm_table, storm_notes = storm(big_notes, small_notes)
    b1, b10, b100 = (big_notes[(1, r)] for r in BIG_ROOM_RATES)
    s10, s60 = small_notes[10], small_notes[60]
    big_storm = storm_notes["1 room of 100,000 + 900,000 quiet"]
    small_storm = storm_notes["100,000 rooms of 10"]
    fanout_gbit = F_UNBATCHED * WIRE_BYTES * 8 / 1e9
    nic_deliveries = NIC_BYTES_S / WIRE_BYTES
    big_refresh = BIG_ROOM * REDIS_US_PER_MEMBER_S / 1e6
    diff_storm = CONNECTIONS * SMALL_ROOM / (small_storm["redis_s"] * s10["nodes"])

    print(f"""# How far it goes: the capacity of a Banter cluster

<!-- Generated by scripts/capacity.py; do not edit. Change the script's inputs or assumptions
and run `python3 scripts/capacity.py > docs/capacity.md`. -->

How many nodes and how many Redis shards 1 million connections need, and what runs out first.
Every figure below is computed by `scripts/capacity.py` from the measurements in
[BENCHMARKS.md](../BENCHMARKS.md), which were taken on a shared 2-core VM with 23 GiB (its Machine
section names the CPU as AMD EPYC; RELIABILITY.md's runs name an Intel Xeon VM of the same size),
where the load tool, Redis and two nodes ran on the same two cores, with at most 10,000
connections per node. **Everything about 16-core machines, 1 million
connections and real networks is an extrapolation from those figures**, made by the arithmetic shown
here. It is meant to size a first deployment and to show which limit comes first; measure your own
cluster before you trust it with more (the [metrics](operations.md#metrics) to watch are named below).

## The short answer

- **The limit today is one core per node.** A node writes every message it gets from Redis to
  its local sockets from one task, the fan-out, so a node delivers about {n(F_UNBATCHED)} frames a
  second ({US_PER_DELIVERY:.1f} µs each, most of it the kernel's send path) whatever its number of
  cores; the other {NODE_CORES - 1} cores of a {NODE_CORES}-core machine are nearly idle. Planned at
  {pc(UTILISATION)} of that core, a node takes {n(FANOUT_BUDGET)} deliveries a second.
- **1 M connections with one 100,000-member room** need {b1['nodes']} nodes at 1 msg/s in the room
  (set by `server.max_connections`, not by load), {b10['nodes']} at 10 msg/s and {b100['nodes']} at
  100 msg/s (10 million deliveries a second). For steady traffic Redis is not the question there: one
  shard does it, and the room's shard could take about {n(MSG_PER_SHARD_S)} messages a second, far
  beyond what any number of nodes could fan out to 100,000 members.
- **1 M connections in 100,000 rooms of 10** need {s10['nodes']} nodes and {s10['shards']} Redis shards
  at one message per member every 10 s (100,000 msg/s, 1 million deliveries/s), and {s60['nodes']}
  nodes and {s60['shards']} shards at one every 60 s. Each message there reaches about
  {s10['copies']:.0f} nodes, so Redis sends {s10['copies']:.0f} copies of it; and presence refresh makes
  about {n(s10['refresh_calls'])} Redis script calls a second whose cost was never measured.
- **Bandwidth is far away.** One fan-out core fills {fanout_gbit:.2f} Gbit/s; a {NIC_GBIT_S} Gbit/s NIC
  would take {n(nic_deliveries)} deliveries a second, {nic_deliveries / F_UNBATCHED:.0f} cores' worth.
- **Memory is far away.** A joined member costs {RSS_KIB_PER_MEMBER} KiB of node memory: 1 M members
  are {gib(CONNECTIONS * RSS_KIB_PER_MEMBER):.1f} GiB over the whole cluster.
- **A reconnect storm is bound by Redis, and by each node making its subscriptions one at a time.**
  A join costs {REDIS_US_PER_JOIN} µs of Redis CPU, all on the room's shard: 100,000 members cannot come
  back into one room in less than about {n(big_storm['floor'])} s however many nodes and shards there
  are ({n(big_storm['redis_s'])} s on one shard). 1 M members of small rooms need about
  {n(small_storm['redis_s'])} s of Redis on {s10['shards']} shards, and about {n(small_storm['sub_s'])} s of
  one-at-a-time subscriptions per node at a {REDIS_RTT_MS} ms round trip.
- **If the fan-out used every core**, the node counts above would fall to {b10['all_cores']}
  ({b10['nodes']} today) and {b100['all_cores']} ({b100['nodes']}) for the big room at 10 and 100 msg/s,
  and to {s10['all_cores']} ({s10['nodes']}) for the small rooms: see the last section for what it takes.

## What was measured

The inputs, as the script holds them (each constant there names its section and command):

{inputs_table()}

Three things to know about these figures:

- "Node CPU" is all the node's threads (user and kernel time from /proc), divided by what was
  delivered. In the fan-out shape nearly all of it is the fan-out itself (one publisher at 50 msg/s
  costs little), so the planning figure is a slightly pessimistic cost of the fan-out task's work.
- On loopback, part of the receiver's work (its wakeup) runs in the sender's context and is charged
  to the node. On a real network that share goes and the NIC driver's comes; neither was measured.
- The planning figure is the lowest measured with each delivery its own write. The same node did
  better when writes were batched ({n(F_BATCHED)} at 400 msg/s) and during the big room's hold
  ({n(F_BIGROOM_HOLD)}, with everything else the nodes did in those 10 s included). With the hold's
  figure, every fan-out-bound node count below would be about {F_BIGROOM_HOLD / F_UNBATCHED:.1f} times
  smaller; the tables use the lowest, for planning.

## What is assumed

{assumptions_table()}

## How it is computed

- **Deliveries** a second = messages a second × members of the room (the sender's own copy counts:
  every member, the sender included, receives each message).
- **Nodes** = the largest of: connections ÷ {n(MAX_CONNECTIONS_PER_NODE)}; deliveries ÷
  ({pc(UTILISATION)} × {n(F_UNBATCHED)}), because every node's deliveries go through its one fan-out task;
  memory; the NIC; and the rest of each message's node work ({REST_US_PER_MESSAGE:.0f} µs, spread over the
  other {NODE_CORES - 1} cores). Connections spread evenly over the nodes (nginx's `least_conn`).
- **One message's pass** = a node's local members of the room × {US_PER_DELIVERY:.1f} µs: how long the
  fan-out task writes that one message before it can do anything else (the last local member gets
  the message that much after the first).
- **Redis shards** = (messages × {REDIS_US_PER_MESSAGE} µs + presence) ÷ {pc(UTILISATION)} of a core.
  A room lives on one shard (its channel, history and presence share a hash tag), so one room's
  messages are bounded by one shard's core: {n(MSG_PER_SHARD_S)} msg/s at 100 %.
- **The copies Redis sends**: every node with a member in a room subscribes to it, so each message
  goes once to each such node. With members at random over N nodes, a room of m members is on
  N × (1 − (1 − 1/N)^m) nodes on average.
- **"If the fan-out used 15 cores"** multiplies the one-core figure by {NODE_CORES - 1}, leaving a core for
  the rest. That is the best case: it assumes nothing else (locks, memory bandwidth, the kernel's
  own scaling, the NIC's queues) gets in the way, none of which has been measured.

## One room of 100,000 members among 1 M connections

One big room of 100,000, and the other 900,000 connections quiet (connected, in no room with
traffic); then ten rooms of 100,000, all 1 M connections in them. Members are spread evenly over
the nodes, so every node has members of every big room and subscribes it.

{big}

What this says:

- **At 1 msg/s** the load is small: {n(b1['deliveries'])} deliveries a second, and
  `server.max_connections` sets the node count. Even so each message is a pass of
  {n(b1['pass_ms'])} ms over a node's {n(BIG_ROOM / b1['nodes'])} local members: the member written last
  gets it that much later than the first.
- **At 10 and 100 msg/s the fan-out core is the limit.** At 100 msg/s in one room, {b100['nodes']}
  nodes each deliver {n(b100['deliveries'] / b100['nodes'])} frames a second on one core, with
  {NODE_CORES - 1} cores nearly idle beside it. With fewer nodes a node falls behind, and then it batches
  (several messages of the room to a socket in one write): the sweep reached {n(F_BATCHED)} deliveries
  per node CPU-second that way, which would need {b100['batched']} nodes, at the price of latency
  (p99 {FANOUT_SWEEP_P99_MS[400]} ms at 400 msg/s in the benchmark, and here a pass over
  {n(BIG_ROOM / b100['batched'])} local members takes {n(BIG_ROOM / b100['batched'] * US_PER_DELIVERY / 1e3)} ms before batching).
  Past {MAX_LAG_S} s behind, a node drops its Redis subscription and catches up from history
  (`banter_bus_lag_seconds`).
- **Each room's shard is nearly idle** by comparison: at 100 msg/s it spends {100 * REDIS_US_PER_MESSAGE / 1e4:.2f} %
  of a core on the messages and about {pct(big_refresh)} on its members' presence refresh (the big
  room's measured {REDIS_US_PER_MEMBER_S:.2f} µs per member-second, an upper bound). Its pub/sub output
  is one copy per message per node. A single room reaches the shard's ceiling only at about
  {n(MSG_PER_SHARD_S)} msg/s, where 100,000 members would need billions of deliveries a second.
- **Bandwidth**: {gbit(b100['egress'])} Gbit/s leave the cluster at 100 msg/s in one room, well under
  a Gbit/s per node. Each client receives 100 × {FRAME_BYTES} B = {100 * FRAME_BYTES / 1000:.1f} kB/s.
  The load balancer in front carries all of it too (nginx proxies every frame), and its CPU per
  frame has not been measured: size it like the nodes.
- **Ten such rooms** multiply the deliveries by ten, and the fan-out-bound node counts with them;
  batching helps them less, since it only joins consecutive messages of one room and ten rooms'
  messages interleave. A client's own rate limit
  (`limits.rate_per_sec`, 20 frames a second) does not bound a room's rate: a room's rate is the
  sum over its members.

## 1 M connections in 100,000 rooms of 10

Every connection in one room of 10, every member sending one message every 10 s, or every 60 s.

{small}

Redis for the same:

{small_redis}

What this says:

- **The fan-out core is again the limit** at one message per member every 10 s: {n(s10['deliveries'])}
  deliveries a second need {s10['nodes']} nodes. Batching does not help here: it only joins consecutive
  messages of one room to one socket, and a member of a room of 10 gets one message a second.
- **The rest of each message** (reading the client's frame, the Lua script's round trip, the ack) is
  spread over the worker threads and takes {s10['rest_cores']:.2f} of a node's {NODE_CORES} cores. It was
  measured on a shared 2-core machine, 83 % busy, with the load tool on it
  ({ROOMS_NODE_US_PER_MESSAGE:.0f} µs per message with 4 deliveries; the issue stated
  {ISSUE_NODE_US_PER_MESSAGE} µs), so it is not tight.
- **The subscriber task is a second single task** (see the last section): every copy a node reads
  from Redis passes through it. At {s10['nodes']} nodes it handles {n(s10['bus_reads'])} messages a
  second per node and must spend under {n(s10['sub_break_even'])} µs on each. Its work is in memory (no
  system call per message), but its cost was never measured on its own; the rooms run bounds it only
  loosely (the {REST_US_PER_MESSAGE:.0f} µs above, shared with the publish path). Watch
  `banter_bus_lag_seconds`: it grows if this task, or the fan-out, falls behind.
- **Redis**: {s10['msg_cores']:.1f} cores for the messages at one every 10 s, and
  {CONNECTIONS * REDIS_US_PER_MEMBER_S / 1e6:.2f} for presence at the big room's
  {REDIS_US_PER_MEMBER_S:.2f} µs per member-second (the per-member part of the refresh: one refresh call
  carried thousands of members there), so {s10['shards']} shards at {pc(UTILISATION)}. Two costs grow with the number of nodes and were not measured: each message goes
  to about {s10['copies']:.1f} nodes, where the issue's {REDIS_US_PER_MESSAGE} µs, from the two-node rooms
  shape, covered {ROOMS_COPIES:.2f} (4 members over 2 nodes); and each node refreshes each of its rooms' presence every
  {PRESENCE_REFRESH_S} s with one script call, {n(s10['refresh_calls'])} calls a second in all. Every µs a
  refresh call costs is {s10['refresh_calls'] / 1e6:.2f} Redis cores: if one cost what a join's script
  calls do on average ({EVALSHA_US:.0f} µs), the refresh alone would need
  {s10['refresh_calls'] * EVALSHA_US / 1e6:.1f} cores, more than the messages.
  Measure it (`INFO commandstats` on the shards) before you size Redis for many small rooms.
- **Fewer nodes mean fewer copies and fewer refresh calls**: a room of 10 on 10 nodes is on
  {distinct_nodes(SMALL_ROOM, 10):.1f} of them, on 2 nodes on {distinct_nodes(SMALL_ROOM, 2):.1f}. Putting a
  room's members on the same nodes (room affinity at the load balancer) would cut both; Banter does
  not do it today.

## Memory

{mem}

Node memory is not what limits: {NODE_RAM_GIB} GiB machines would each hold several times the
`server.max_connections` default. Two cautions: the per-member figure was measured in one big room
(a member of a small room also carries its share of the room's state in the node, not measured),
and RSS does not include the kernel's memory for each TCP socket (its buffers grow with unread
data), which is why only {pc(NODE_RSS_SHARE)} of memory is planned for RSS.

## A reconnect storm: 1 M joins

When a load balancer restarts or a network blinks, every client reconnects and joins again. A join
costs {NODE_US_PER_JOIN} µs of node CPU (spread over the worker threads) and {REDIS_US_PER_JOIN} µs of
Redis CPU, of which {REDIS_US_PER_JOIN_ROOM} µs on the room's shard ({REDIS_US_PER_CONNECTION} µs is the
connection's own subscription). With the node and shard counts from the tables above (10 msg/s for
the big room, one message per member every 10 s for the small rooms):

{storm_table}

- **One big room refills at one shard's pace**: about {n(JOINS_PER_SHARD_S)} joins a second, so
  {n(big_storm['floor'])} s for 100,000 members at the shard's full core, whatever the number of nodes
  or shards; on the one shard the steady traffic needs, the 900,000 other connections' own
  subscriptions come on top ({n(big_storm['redis_s'])} s). Nothing is lost meanwhile (members that
  rejoin with `since` get what they missed), but the room's shard is saturated for that long and
  the other rooms on it wait too.
- **Many small rooms refill in {n(small_storm['redis_s'])} s on {s10['shards']} shards** as far as Redis's
  CPU goes; more shards shorten that in proportion. The nodes' CPU ({small_storm['node_s']:.1f} s) is not
  the limit.
- **But each node's subscriber task makes new subscriptions one at a time**: one round trip for each
  connection's user topic, two for each room that gets its first local member. For the small rooms
  that is {n(small_storm['round_trips'])} round trips per node ({n(CONNECTIONS / s10['nodes'])} users,
  {n(small_storm['rooms_per_node'])} rooms), {n(small_storm['sub_s'])} s at {REDIS_RTT_MS} ms each: at
  that round trip it, not Redis's CPU, sets the refill time, and while it waits on a subscription
  the task reads no messages. More nodes shorten it. The benchmarks only bound it on loopback:
  {n(BASELINE_CONNECTIONS / BASELINE_S / 2)} new connections a second per node, each with its user's
  subscription, in the big room's baseline. Measure your round trip; it is not measured here.
- **Presence traffic during the storm**: a member gets at most one presence frame per room per
  `presence.diff_interval_ms` ({DIFF_INTERVAL_S:.0f} s; measured {PRESENCE_FRAMES_PER_MEMBER_S_FILLING}
  per second while a room filled). In the big room that is up to {n(BIG_ROOM)} deliveries a second
  over the cluster, {n(BIG_ROOM / b10['nodes'])} per node: within the fan-out's budget. In rooms of 10 a
  member gets at most one per arrival of each of the other nine; spread over the Redis-bound refill
  that is at most about {n(diff_storm)} deliveries a second per node, {pc(diff_storm / F_UNBATCHED)} of a
  fan-out core. On top of the messages ({pc(s10['deliveries'] / s10['nodes'] / F_UNBATCHED)} at one per
  member every 10 s) that is more than the planning share: while the rooms refill, the fan-out runs
  behind and messages arrive later (`banter_bus_lag_seconds`).
- Every node also reads every presence change of every room it has members in (each change is
  published on the room's channel) on its fan-out task: 100,000 changes for the big room on each
  node. That work is in memory and was not measured on its own.

## What limits one node on a {NODE_CORES}-core machine today

A node runs on tokio's multi-threaded runtime, with one worker thread per core. What runs where
(`crates/node/src/lib.rs`, `fanout.rs`, `hub/`, `outlet/`, and `crates/bus/src/redis/subscriber.rs`):

**On one core at a time** (one task each; tokio may move a task between threads, but it never
runs on two at once):

- **The fan-out task** (`fanout::run`, spawned once in `lib.rs`'s `run`). It takes every event
  the bus hands the node from one bounded inbox (8,192 events), up to 32 at a time; checks each
  message's UTF-8 once; merges presence changes into each room's diffs (the `Diffs` it owns); and,
  for each message, calls `Hub::deliver`, which, holding the hub's read lock, calls
  `Outlet::offer` for every local member of the room. `offer` **writes the frame to the socket
  itself** (`try_write`: one system call per socket, or one vectored write for a batch). So each
  frame from Redis is written to every local socket by this one task (only what the kernel does not
  take at once is left to the socket's own task): that is the {US_PER_DELIVERY:.1f} µs per delivery
  above, and the core it runs on is the node's limit.
- **The subscriber task** (`crates/bus/src/redis/subscriber.rs`): owns the subscriptions, and for
  every message read from Redis maps its channel to a room, copies it, strips its position header,
  tracks the room's position (for gap repair) and the lag, and hands it to the inbox. No system call
  per message: reading the Redis connection and parsing RESP happen in the Redis client's own
  connection tasks (one per connection: one in standalone mode, one per shard primary in cluster
  mode). It also makes every new subscription, one at a time and waiting for each (a connection's
  user topic: one round trip; a room's first local member: two), and reads no messages meanwhile.
- **Housekeeping** (presence refresh every {PRESENCE_REFRESH_S} s, stuck writes, bus metrics): one
  periodic task.
- **The accept loop** runs on the main thread; each accepted connection is served in its own task.
  It is not a limit: accepting is one system call per connection, and the upgrade and the
  `welcome` run in the connection's task (a bare connection cost the nodes
  {NODE_US_PER_CONNECTION} µs in all).

**Spread over every worker thread**: each socket's session task (reading and parsing the client's
frames, the rate limit, `send` → the Lua script on Redis → the ack, `join` and `leave`, `who` and
`history`, replies, pings), including writing whatever the kernel did not take when the fan-out
offered it (the socket's queue, drained by its own task when the socket turns writable); the Redis
client's connection tasks; gap repair's reads of history.

**Shared by all of them**: the hub, one read-write lock over every local room and connection. The
fan-out holds it for reading for a whole pass over a room's local members, and a join, a leave, a
new or closed connection takes it for writing. A pass over L local members takes L × {US_PER_DELIVERY:.1f} µs
({n(b1['pass_ms'])} ms for the {n(BIG_ROOM / b1['nodes'])} members per node of the first big-room row),
and whatever needs the write lock meanwhile waits until the pass ends, blocking the worker thread it
runs on (it is a `std::sync::RwLock`).

So on a {NODE_CORES}-core machine a node uses about one core for its deliveries and little of the
other {NODE_CORES - 1}: in the small-rooms case above, a node runs its fan-out core at
{pc(UTILISATION)} and spends {s10['rest_cores']:.2f} cores on everything else. Listening on one socket per
core (`SO_REUSEPORT`) would not change this: connections are not the bottleneck, deliveries are.
Neither is the NIC ({fanout_gbit:.2f} Gbit/s per fan-out core).

**What it would take to use every core**, in order:

1. **Several fan-out workers**, one per worker thread, each owning a slice of the node's
   connections (by connection id), with its own inbox and its own map of room → its members. The
   subscriber (or a thin dispatcher in its place) hands each message, as the one shared `Delivery`
   it already is (encoded once per wire format, behind a `OnceLock`, so it can be shared between
   threads), to every worker that has members of the room. Each socket is still written by one
   task, in the order the node received its rooms' messages, so the order each member sees stays
   what it is today. Slicing by connection rather than by room is what helps a big room: a room
   of 100,000 has members in every slice, so its pass is split over every core, where slicing by
   room would leave one room on one core.
2. **The hub's lock sliced the same way**, so joins and passes in different slices do not wait for
   each other; presence diffs stay merged once per room (in the dispatcher) and go to the workers as
   frames.
3. **The subscriber task's work kept off the critical path**: its per-message bookkeeping stays one
   task per node in this design, so measure it first; and new subscriptions pipelined (several in
   flight at once) instead of one round trip, or two, at a time, which is what bounds a reconnect
   storm per node. One subscriber per shard connection in cluster mode would split both.

With {NODE_CORES - 1} workers, a node would deliver up to about {n(FANOUT_BUDGET * (NODE_CORES - 1))}
frames a second at the planning share ({NODE_CORES - 1} × {n(FANOUT_BUDGET)}), if each core does what the
benchmark's one core did. That is the estimate behind the "15 cores" columns; nothing at that
scale has been measured, and the kernel's send path, which is most of the cost, is then what
limits, together with how the NIC spreads its queues and interrupts over the cores.

## What is not measured

- Redis CPU per message in BENCHMARKS.md (the {REDIS_US_PER_MESSAGE} µs is the issue's figure), and how it
  grows with the number of nodes a message is copied to.
- The cost of a presence refresh call for a small room ({n(s10['refresh_calls'])} calls a second for
  100,000 rooms of 10 on {s10['nodes']} nodes).
- The subscriber task's cost per message, and the fan-out's cost per presence change.
- New subscriptions per second per node over a real network (they go one at a time).
- Anything beyond 10,000 connections per node, beyond 2 cores, or over a real network; the load
  balancer's cost per frame.
- Node memory for members of many small rooms, and the kernel's memory per socket.
""".rstrip())


if __name__ == "__main__":
    main()
