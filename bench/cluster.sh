#!/usr/bin/env bash
# Two-node cluster mount figures (issue 6, "Speed"), all measured in this run: two `o2fs mount`
# daemons on one shared image (127.0.38.1 and .2, the test timings), and
#  (a) creates: N files of 1 KiB in a directory of its own, one node alone, then both nodes at
#      once each in its own directory (aggregate files/s, and its ratio to one node; issue
#      target >= 1.5);
#  (b) the same with both nodes creating in one directory (issue target >= 0.5);
#  (c) sequential write: 1 MiB blocks of a file of its own (fsync at the end), one node alone,
#      then both at once (aggregate MB/s, and its ratio to one node; issue target >= 1).
# O2FS (default target/release/o2fs) and MKFS (default target/release/mkfs-o2fs) name the
# binaries, so two builds can be compared by hand. N (default 2000), SIZE_MB (default 256),
# OPTS (mount options for both nodes, e.g. localalloc=64).
# Needs root (FUSE mounts). Prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
o2fs=${O2FS:-$PWD/target/release/o2fs}
mkfs=${MKFS:-$PWD/target/release/mkfs-o2fs}
n=${N:-2000}
size_mb=${SIZE_MB:-256}
work=$(mktemp -d /tmp/o2fs-cluster-bench.XXXXXX)
pids=()
cleanup() {
  for i in 0 1; do fusermount3 -u "$work/mnt$i" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$((30000 + RANDOM % 20000))
{
  printf 'cluster:\n\tnode_count = 2\n\tname = b%s\n\n' "$port"
  for i in 0 1; do
    printf 'node:\n\tip_port = %s\n\tip_address = 127.0.38.%s\n\tnumber = %s\n\tname = n%s\n\tcluster = b%s\n\n' \
      "$port" $((i + 1)) "$i" "$i" "$port"
  done
} >"$work/cluster.conf"
echo s3cret >"$work/secret"
truncate -s 4G "$work/vol.img"
"$mkfs" -q -N 4 -F "$work/vol.img" >/dev/null
timing=(--keepalive-ms 100 --idle-timeout-ms 1000 --reconnect-ms 100 --hb-interval-ms 100 --hb-dead-beats 10)
for i in 0 1; do
  mkdir -p "$work/mnt$i"
  "$o2fs" mount -f ${OPTS:+-o "$OPTS"} --node "n$i" -c "$work/cluster.conf" --secret-file "$work/secret" \
    --socket "$work/n$i.sock" "${timing[@]}" "$work/vol.img" "$work/mnt$i" 2>"$work/n$i.log" &
  pids+=($!)
  for _ in $(seq 600); do mountpoint -q "$work/mnt$i" && break; sleep 0.1; done
  mountpoint -q "$work/mnt$i" || { cat "$work/n$i.log" >&2; exit 1; }
done

creates() { # DIR: prints seconds to create N files in DIR (made if missing)
  python3 - "$1" "$n" <<'EOF'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
t0 = time.monotonic()
for i in range(n):
    fd = os.open(os.path.join(d, "f%d-%06d" % (os.getpid(), i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"x" * 1024)
    os.close(fd)
print("%.3f" % (time.monotonic() - t0))
EOF
}
seqwrite() { # FILE: prints seconds to write SIZE_MB MiB and fsync
  python3 - "$1" "$size_mb" <<'EOF'
import os, sys, time
p, mb = sys.argv[1], int(sys.argv[2])
block = b"y" * (1 << 20)
t0 = time.monotonic()
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for _ in range(mb):
    os.write(fd, block)
os.fsync(fd)
os.close(fd)
print("%.3f" % (time.monotonic() - t0))
EOF
}
both() { # FUNCTION ARG0 ARG1: runs FUNCTION on both nodes at once, prints the longer time
  "$1" "$2" >"$work/t0" &
  local p=$!
  "$1" "$3" >"$work/t1"
  wait $p
  python3 -c "print(max(float(open('$work/t0').read()), float(open('$work/t1').read())))"
}

report() { # LABEL UNIT AMOUNT SECONDS_ONE SECONDS_BOTH: rates of one node and of both, and their ratio
  python3 - "$@" <<'EOF'
import sys
label, unit, amount, one, two = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print("%-8s one node %8.1f %s   both nodes at once, each its own %8.1f %s   ratio %.2f" % (label, amount / one, unit, 2 * amount / two, unit, (2 * amount / two) / (amount / one)))
EOF
}
report creates files/s "$n" "$(creates "$work/mnt0/alone")" "$(both creates "$work/mnt0/d0" "$work/mnt1/d1")"
mkdir "$work/mnt0/shared"
report samedir files/s "$n" "$(creates "$work/mnt0/alone2")" "$(both creates "$work/mnt0/shared" "$work/mnt1/shared")"
report seqwrite MB/s "$size_mb" "$(seqwrite "$work/mnt0/alone.dat")" "$(both seqwrite "$work/mnt0/w0.dat" "$work/mnt1/w1.dat")"
