#!/usr/bin/env bash
# mkfs speed: mkfs.o2fs against mkfs.ocfs2 with the same options on a sparse image of SIZE
# (default 128G), both timed in the same run (best of RUNS, default 3). Prints a table and the
# ratio; with --record appends it to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${SIZE:-128G}
runs=${RUNS:-3}
record=${1:-}
scripts/install-deps.sh
cargo build --release --locked -p mkfs-o2fs >/dev/null 2>&1
ours=$PWD/target/release/mkfs-o2fs
work=$(mktemp -d /tmp/o2fs-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
opts=(-b 4K -C 4K -N 8 -L bench --fs-feature-level=max-compat)
feats=--fs-features=sparse,unwritten,inline-data,extended-slotmap

best() { # best wall time in seconds of "$@", image recreated sparse each run
  local best=999999 t0 t1 t
  for _ in $(seq "$runs"); do
    rm -f "$work/img"; truncate -s "$size" "$work/img"
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc -l); (( $(echo "$t < $best" | bc -l) )) && best=$t
  done
  printf '%.3f' "$best"
}
theirs_t=$(best sh -c "yes y | mkfs.ocfs2 -q ${opts[*]} $feats -F $work/img")
ours_t=$(best "$ours" -q "${opts[@]}" "$feats" -F "$work/img")
ratio=$(echo "$theirs_t / $ours_t" | bc -l)
table=$(printf '| mkfs on a %s sparse image (%s) | seconds (best of %s) |\n|---|---|\n| mkfs.ocfs2 | %s |\n| mkfs.o2fs | %s |\n| speed-up (mkfs.ocfs2 / mkfs.o2fs) | %.2fx |\n' \
  "$size" "${opts[*]}" "$runs" "$theirs_t" "$ours_t" "$ratio")
echo "$table"
if [ "$record" = "--record" ]; then
  { echo; echo "## mkfs, $(date -u +%Y-%m-%d), $(nproc) cores"; echo; echo "$table"; } >> bench/RESULTS.md
fi
