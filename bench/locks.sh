#!/usr/bin/env bash
# Cluster lock figures (issue 5, "Speed"), all measured in this run:
#  (a) re-taking a cached lock: acquire + release through LockService, and messages sent;
#  (b) uncontended new locks, master on this node or on the other: latency and messages;
#  (c) EX ping-pong between two nodes on loopback: transfers per second;
#      (a)-(c): examples/lock_bench.rs, two lock services in one process over real loopback TCP;
#  (d) death of a node: two `o2fs cluster up` daemons on 127.0.0.1/2 heartbeating on one volume,
#      node 1 holds a lock under `o2fs lock` and its daemon is killed -9; time until node 0's
#      view drops it (detection) and until node 0 gets the lock (recovery), with the test
#      timings (100 ms beats, dead after 10) and the o2cb defaults (2000 ms, 31 beats: ~62 s).
# Prints a table; with --record appends it to bench/RESULTS.md. SKIP_DEFAULT=1 skips the
# one-minute run with default timings.
set -euo pipefail
cd "$(dirname "$0")/.."
record=${1:-}
cargo build --release --locked --bin o2fs --example lock_bench -p o2fs >/dev/null 2>&1
cargo build --release --locked -p mkfs-o2fs >/dev/null 2>&1
o2fs=$PWD/target/release/o2fs
mkfs=$PWD/target/release/mkfs-o2fs
work=$(mktemp -d /tmp/o2fs-locks.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

declare -A fig
while read -r key value; do fig[$key]=$value; done < <(target/release/examples/lock_bench)

now() { date +%s.%N; }
members() { # node index -> the node numbers in its view, e.g. 0,1
  "$o2fs" status --node "n$1" --socket "$work/n$1.sock" --json 2>/dev/null |
    jq -r '.cluster.view.members // {} | keys | join(",")' 2>/dev/null || true
}
wait_for() { # seconds, command...: polls every 10 ms
  local limit=$1; shift
  local end=$(($(date +%s) + limit))
  until "$@"; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timed out: $*" >&2; cat "$work"/n*.log >&2; exit 1; }
    sleep 0.01
  done
}
view_is() { [ "$(members "$1")" = "$2" ]; }
held_elsewhere() { ! "$o2fs" lock --node n0 --socket "$work/n0.sock" --try svc -- true 2>/dev/null; }

truncate -s 256M "$work/vol.img"
"$mkfs" -q -N 4 -F "$work/vol.img" >/dev/null
echo bench-secret > "$work/secret"

# death LABEL KEEPALIVE_MS IDLE_MS RECONNECT_MS HB_MS HB_BEATS: sets fig[LABEL_detect_s], fig[LABEL_recover_s]
death() {
  local label=$1 keepalive=$2 idle=$3 reconnect=$4 hb=$5 beats=$6
  local port=$((28000 + RANDOM % 2000)) i
  {
    printf 'cluster:\n\tnode_count = 2\n\tname = bench%s\n\tsecret_file = %s/secret\n\n' "$port" "$work"
    for i in 0 1; do
      printf 'node:\n\tip_port = %s\n\tip_address = 127.0.0.%s\n\tnumber = %s\n\tname = n%s\n\tcluster = bench%s\n\n' \
        "$port" $((i + 1)) "$i" "$i" "$port"
    done
  } > "$work/cluster.conf"
  local dpid=()
  for i in 0 1; do
    "$o2fs" cluster up --node "n$i" -c "$work/cluster.conf" "$work/vol.img" -f --socket "$work/n$i.sock" \
      --keepalive-ms "$keepalive" --idle-timeout-ms "$idle" --reconnect-ms "$reconnect" \
      --hb-interval-ms "$hb" --hb-dead-beats "$beats" 2> "$work/n$i.log" &
    dpid+=($!); pids+=($!)
  done
  wait_for 60 view_is 0 0,1
  wait_for 60 view_is 1 0,1
  "$o2fs" lock --node n1 --socket "$work/n1.sock" svc -- sleep 600 2>/dev/null &
  pids+=($!)
  wait_for 20 held_elsewhere
  local t0 t1 t2
  t0=$(now)
  kill -9 "${dpid[1]}"
  wait "${dpid[1]}" 2>/dev/null || true
  "$o2fs" lock --node n0 --socket "$work/n0.sock" svc -- true &
  local waiter=$!
  wait_for 300 view_is 0 0
  t1=$(now)
  wait "$waiter"
  t2=$(now)
  fig[${label}_detect_s]=$(printf '%.2f' "$(echo "$t1 - $t0" | bc -l)")
  fig[${label}_recover_s]=$(printf '%.2f' "$(echo "$t2 - $t0" | bc -l)")
  fig[${label}_after_ms]=$(printf '%.0f' "$(echo "($t2 - $t1) * 1000" | bc -l)")
  kill "${dpid[0]}" 2>/dev/null || true
  wait "${dpid[0]}" 2>/dev/null || true
}
death test 100 1000 100 100 10
if [ "${SKIP_DEFAULT:-}" != 1 ]; then
  death default 2000 30000 2000 2000 31
else
  fig[default_detect_s]=-; fig[default_recover_s]=-; fig[default_after_ms]=-
fi

table=$(cat <<EOF
| figure | measured | target |
|---|---|---|
| re-taking a cached lock (acquire + release, LockService in-process) | ${fig[cached_retake_ns]} ns, ${fig[cached_retake_messages]} messages in 1 000 000 | < 1 µs, no message |
| new uncontended lock, master on this node | ${fig[new_lock_local_master_us]} µs, ${fig[new_lock_local_master_messages]} messages/lock | - |
| new uncontended lock, master on the other node (loopback TCP) | ${fig[new_lock_remote_master_us]} µs, ${fig[new_lock_remote_master_messages]} messages/lock | one round trip |
| EX ping-pong between two nodes (loopback TCP) | ${fig[pingpong_transfers_per_s]} transfers/s | ≥ 5000/s |
| kill -9, test timings (100 ms beats, dead after 10): death detected | ${fig[test_detect_s]} s | ~1 s |
| kill -9, test timings: lock granted to the survivor | ${fig[test_recover_s]} s (${fig[test_after_ms]} ms after detection) | ≤ one beat after detection |
| kill -9, default timings (2000 ms beats, dead after 31): death detected | ${fig[default_detect_s]} s | ~62 s |
| kill -9, default timings: lock granted to the survivor | ${fig[default_recover_s]} s (${fig[default_after_ms]} ms after detection) | ≤ one beat after detection |
EOF
)
echo "$table"
if [ "$record" = "--record" ]; then
  { echo; echo "## Cluster locks, $(date -u +%Y-%m-%d), $(nproc) cores (\`bench/locks.sh --record\`)"; echo; echo "$table"; } >> bench/RESULTS.md
fi
