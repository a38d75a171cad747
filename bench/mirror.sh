#!/usr/bin/env bash
# Mirror figures (issue 4, "Speed"), measured in one run by examples/mirror_bench.rs: a
# protocol-C mirror of two nodes on 127.0.0.1/127.0.0.2 in one process against the unmirrored
# image file on the same machine — sequential 1 MiB writes (ratio, and ratio to two unmirrored
# images written at once: both replicas share this machine's disk), 4 KiB write latency (extra
# loopback round trips, median; thread sleeps per request, which the machine's load hardly
# moves) and resync rate (achieved / configured). The load average is recorded with the
# figures: other work on the machine weighs on every timing.
# Usage: bench/mirror.sh [MiB] [--record]   (--record appends the output to bench/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=64
record=
for a in "$@"; do
  case $a in
    --record) record=1 ;;
    *) mib=$a ;;
  esac
done
cargo build --release --locked --example mirror_bench -p o2fs >/dev/null 2>&1
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
out=$(target/release/examples/mirror_bench "$mib")
out="$out
load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
echo "$out"
if [ -n "$record" ]; then
  {
    echo
    echo "## Mirror ($(date -u +%Y-%m-%d), \`bench/mirror.sh $mib --record\`)"
    echo
    echo '```'
    echo "$out"
    echo '```'
  } >> bench/RESULTS.md
fi
