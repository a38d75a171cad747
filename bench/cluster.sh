#!/usr/bin/env bash
# Two-node figures (issue 6, "Speed"), in one run, beside the single-node figure of the same run:
#   single  one node mounting an image alone (`o2fs mount IMAGE DIR`, no cluster),
#   shared  two nodes (n0 on 127.0.20.1, n1 on 127.0.20.2) mounting one shared image at once,
#   mirror  two nodes (127.0.21.1/.2), each mounting its own replica of the mirror (`-r`); the
#           jobs start once n1's fresh replica is resynced from n0's.
# Jobs: (a) one node creates NFILES files of 1 KiB in a directory while the other idles;
# (b) both nodes create NFILES files each, in a directory of their own, at once; (c) both create
# NFILES each in one directory at once; (d) fio sequential 1 MiB write (bench/fio/seq-write.fio)
# of one file by one node, then of a file each by both nodes at once. (b), (c) and the two-node
# (d) are aggregates of both nodes (creates: all files over the wall time; fio: the sum of both
# jobs' bandwidth); (e) fio sequential read (bench/fio/seq-read.fio) by one node of the file it
# wrote in (d), after the host's page cache was dropped, then (f) the same read again (a new
# open: without FOPEN_KEEP_CACHE the kernel drops a file's pages at open, on both kinds of
# mount, so this is the daemon's path with the host's cache warm); (g) postmark (the configuration of bench/run.sh) on one node; maildir
# delivery (bench/maildir.py: write, fsync, rename into new/, and now and then a reader moving
# new/ to cur/) of NMAILS messages into 20 mailboxes by (h) one node, (i) both nodes into the
# same mailboxes at once (aggregate, and every message must be there afterwards). The single
# column of (b) and (c) is one node creating NFILES files alone, of the two-node (d) one node
# writing alone and of (i) one node delivering alone, as the issue's targets compare them. Images are made
# by mkfs.o2fs with 4 slots (4K blocks and clusters); after each target the volume is unmounted
# and judged by fsck.ocfs2 -fnF (on the mirror, the replica of the node that unmounted last).
# Prints a table of figures and ratios to the single-node figure; with --record appends it, with
# the machine's facts, to bench/RESULTS.md. A step that fails or times out is reported as FAIL.
# Needs root (mounts). QUICK=1: tiny sizes for a smoke run. As bench/run.sh, the whole sequence
# runs ROUNDS times (default 3; 1 with QUICK) with the targets' order rotated, and the table
# shows medians.
# Usage: bench/cluster.sh [--record]   Environment: QUICK, ROUNDS, TARGETS (default: single
# shared mirror), NFILES, NMAILS, DROP_CACHES, BENCH_WORK, KEEP, BENCH_NOTE.
set -euo pipefail
source "$(dirname "$0")/args.sh" 20 "$@"

if [ "${QUICK:-0}" = 1 ]; then
  file_size=16M runtime=2 nfiles=${NFILES:-200} nmails=${NMAILS:-100} pm_files=200 pm_tx=1000
  image_size=512M rounds=${ROUNDS:-1}
else
  file_size=256M runtime=10 nfiles=${NFILES:-3000} nmails=${NMAILS:-1500} pm_files=5000 pm_tx=20000
  image_size=1G rounds=${ROUNDS:-3}
fi
mailboxes=20
targets=(${TARGETS:-single shared mirror})
fio_timeout=$((runtime + 60))
slow_timeout=${SLOW_TIMEOUT:-600}
# The cluster mounts' timings: quick enough to join in a second or two.
timing=(--keepalive-ms 500 --idle-timeout-ms 5000 --reconnect-ms 200 --hb-interval-ms 200)

scripts/install-deps.sh

# The release build, the scratch folder `work`, its cleanup at exit and the shared helpers.
source bench/lib.sh

cat >"$work/create.py" <<'EOF'
import os, sys
d, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = b"x" * 1024
for i in range(n):
    fd = os.open(os.path.join(d, "%s%06d" % (prefix, i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, payload)
    os.close(fd)
EOF

# --- results -----------------------------------------------------------------------------
declare -A res # res[target,row] = figure or FAIL
failures=()
rows=(one separate onedir seqw1 seqw2 seqr reread postmark mail1 mail2)
declare -A row_label=(
  [one]="(a) create $nfiles files, one node active, files/s"
  [separate]="(b) create 2 × $nfiles files, both nodes, separate directories, files/s"
  [onedir]="(c) create 2 × $nfiles files, both nodes, one directory, files/s"
  [seqw1]="(d) seq write 1 MiB, one node, MiB/s"
  [seqw2]="(d) seq write 1 MiB, both nodes (a file each), MiB/s"
  [seqr]="(e) seq read 1 MiB, one node, host cache dropped, MiB/s"
  [reread]="(f) the same read again (new open), MiB/s"
  [postmark]="(g) postmark $pm_files files / $pm_tx tx, one node, file ops/s"
  [mail1]="(h) maildir delivery of $nmails messages, one node, messages/s"
  [mail2]="(i) maildir delivery of 2 × $nmails messages into the same mailboxes, both nodes, messages/s")
# The single-node figure each row is compared with, and the issue's target for the ratio (one
# active node on the mirror: 0.7; (i) is held to (c)'s, both nodes changing shared directories).
declare -A baseline=([one]=one [separate]=one [onedir]=one [seqw1]=seqw1 [seqw2]=seqw1 [seqr]=seqr [reread]=reread
  [postmark]=postmark [mail1]=mail1 [mail2]=mail1)
one_node="≥ 0.7 on the mirror"
declare -A target=([one]=$one_node [separate]="≥ 1.5" [onedir]="≥ 0.5" [seqw1]=$one_node [seqw2]="≥ 1.0"
  [seqr]=$one_node [reread]=$one_node [postmark]=$one_node [mail1]=$one_node [mail2]="≥ 0.5")

fail() { # TARGET ROW MESSAGE
  failures+=("$1, ${row_label[$2]:-$2}: $3")
  [ -z "${row_label[$2]:-}" ] || res[$1,$2]=FAIL
  echo "  FAIL $1 $2: $3" >&2
}

# at_once ROW SCRIPT N [ARG…] -- DIR:TAG…: `python3 SCRIPT DIR TAG N ARG…` for each pair at once;
# the figure is all N × pairs items over the wall time. Returns 1 if one failed (reported).
at_once() {
  local row=$1 script=$2 n=$3 args=() spec rc=0 p t0 t1 ps=()
  shift 3
  while [ "$1" != -- ]; do args+=("$1"); shift; done
  shift
  for spec in "$@"; do mkdir -p "${spec%%:*}"; done
  t0=$(date +%s.%N)
  for spec in "$@"; do
    timeout -k 10 "$slow_timeout" python3 "$script" "${spec%%:*}" "${spec##*:}" "$n" "${args[@]}" \
      >>"$work/logs/$t-$row.out" 2>>"$work/logs/$t-$row.err" &
    ps+=($!)
  done
  for p in "${ps[@]}"; do wait "$p" || rc=$?; done
  t1=$(date +%s.%N)
  if [ "$rc" -ne 0 ]; then
    fail "$t" "$row" "$(why_rc "$rc" "$slow_timeout"): $(logtail "$work/logs/$t-$row.err" 2)"
    return 1
  fi
  res[$t,$row]=$(printf '%.1f' "$(echo "$# * $n / ($t1 - $t0)" | bc -l)")
}

# creates ROW DIR:PREFIX…: each pair creates NFILES files of 1 KiB at once.
creates() { at_once "$1" "$work/create.py" "$nfiles" -- "${@:2}" || true; }

# fio_rows ROW JOB RW DIR…: fio's bench/fio/JOB.fio on the file bench.dat in each DIR at once
# (RW: write or read, what the figure counts); the figure is the sum of the jobs' bandwidths.
fio_rows() {
  local row=$1 job=$2 rw=$3 d i=0 rc=0 p sum=0 bw err ps=()
  shift 3
  for d in "$@"; do
    mkdir -p "$d"
    BENCH_DIR=$d BENCH_SIZE=$file_size BENCH_RUNTIME=$runtime timeout -k 10 "$fio_timeout" \
      fio --output-format=json --output="$work/logs/$t-$row-$i.json" "bench/fio/$job.fio" \
      2>>"$work/logs/$t-$row.err" &
    ps+=($!)
    i=$((i + 1))
  done
  for p in "${ps[@]}"; do wait "$p" || rc=$?; done
  for ((i = 0; i < $#; i++)); do
    err=$(jq -r '.jobs[0].error // 0' "$work/logs/$t-$row-$i.json" 2>/dev/null || echo "no JSON")
    [ "$err" = 0 ] || rc=1
    bw=$(jq -r ".jobs[0].$rw.bw_bytes / 1048576" "$work/logs/$t-$row-$i.json" 2>/dev/null || echo 0)
    sum=$(echo "$sum + $bw" | bc -l)
  done
  if [ "$rc" -ne 0 ]; then
    fail "$t" "$row" "fio $(why_rc "$rc" "$fio_timeout"): $(logtail "$work/logs/$t-$row.err" 2)"
    return 0
  fi
  res[$t,$row]=$(printf '%.1f' "$sum")
}

# postmark ROW DIR: bench/run.sh's postmark in DIR.
postmark() {
  local row=$1 out=$work/logs/$t-$1.out rc=0 rate
  rate=$(postmark_in "$2" "$pm_files" "$pm_tx" "$slow_timeout" "$out") || rc=$?
  if [ "$rc" -ne 0 ]; then
    fail "$t" "$row" "postmark $(why_rc "$rc" "$slow_timeout"): $(grep -v '^$' "$out" | tail -2 | tr '\n' ' ')"
    return 0
  fi
  res[$t,$row]=$rate
}

# mails ROW ROOT DIR:TAG…: each pair delivers NMAILS messages into the mailboxes under DIR at
# once (the DIRs are one ROOT seen from each node). Every message must then be in ROOT (new/ or
# cur/), none left in tmp/.
mails() {
  local row=$1 root=$2 n
  at_once "$row" bench/maildir.py "$nmails" "$mailboxes" -- "${@:3}" || return 0
  n=$(find "$root" \( -path "$root/*/new/*" -o -path "$root/*/cur/*" \) -type f | wc -l)
  if [ "$n" -ne $((($# - 2) * nmails)) ] || [ -n "$(find "$root" -path "$root/*/tmp/*" -type f)" ]; then
    fail "$t" "$row" "$n messages in new/ and cur/ after delivering $((($# - 2) * nmails)) (or some left in tmp/)"
  fi
}

# --- the volumes ---------------------------------------------------------------------------
new_image() { # PATH: a fresh volume of image_size
  rm -f "$1"; truncate -s "$image_size" "$1"
  timeout 60 "$bin/mkfs-o2fs" -q -N 4 -b 4K -C 4K -F "$1" >>"$work/logs/mkfs.log" 2>&1
}

# cluster_conf NET: cluster.conf of n0 on NET.1 and n1 on NET.2, with a port of the run's own.
cluster_conf() {
  local port=$2 i
  printf 'cluster:\n\tnode_count = 2\n\tname = bench\n\tsecret_file = %s/secret\n\n' "$work"
  for i in 0 1; do
    printf 'node:\n\tip_port = %s\n\tip_address = %s.%s\n\tnumber = %s\n\tname = n%s\n\tcluster = bench\n\n' \
      "$port" "$1" $((i + 1)) "$i" "$i"
  done
}

# mirror_resource NET PORT: both nodes' replicas in the scratch folder, protocol C.
mirror_resource() {
  local i
  printf 'resource r0 {\n\tprotocol C;\n\tsyncer { verify-alg sha1; rate 1G; }\n'
  printf '\tstartup { wfc-timeout 60; degr-wfc-timeout 60; become-primary-on both; }\n'
  printf '\tnet { cram-hmac-alg sha1; shared-secret "m1rr0r"; allow-two-primaries; }\n'
  for i in 0 1; do
    printf '\ton n%s {\n\t\tdevice /dev/o2fs0;\n\t\tdisk %s/n%s.img;\n\t\taddress %s.%s:%s;\n\t\tmeta-disk %s/n%s.meta[0];\n\t}\n' \
      "$i" "$work" "$i" "$1" $((i + 1)) "$2" "$work" "$i"
  done
  printf '}\n'
}

# mount_node I ARGS…: `o2fs mount -f` as node nI (ARGS: the image, or -r RESOURCE) on
# $work/mnt-$t-I, in the background; sets node_pid[I] and mnt[I].
declare -a node_pid mnt
mount_node() {
  local i=$1
  shift
  mnt[i]=$work/mnt-$t-$i
  mkdir -p "${mnt[i]}"
  "$bin/o2fs" mount -f --node "n$i" -c "$work/cluster.conf" --socket "$work/n$i.sock" "${timing[@]}" \
    "$@" "${mnt[i]}" >>"$work/logs/$t-n$i.log" 2>&1 &
  node_pid[i]=$!
  pids+=("${node_pid[i]}") mounts+=("${mnt[i]}")
}

# mount_target: the target's nodes mounted (node 0 alone for single); returns 1 if one fails.
mount_target() {
  local i port=$((17000 + RANDOM % 3000))
  echo "s3cret" >"$work/secret"
  case $t in
    single)
      new_image "$work/single.img"
      mnt[0]=$work/mnt-single-0; mkdir -p "${mnt[0]}"
      "$bin/o2fs" mount -f "$work/single.img" "${mnt[0]}" >>"$work/logs/single-n0.log" 2>&1 &
      node_pid[0]=$! pids+=("$!") mounts+=("${mnt[0]}")
      wait_mounted "${mnt[0]}" "${node_pid[0]}" single-n0
      return ;;
    shared)
      cluster_conf 127.0.20 "$port" >"$work/cluster.conf"
      new_image "$work/shared.img"
      for i in 0 1; do mount_node "$i" "$work/shared.img"; done ;;
    mirror)
      cluster_conf 127.0.21 "$port" >"$work/cluster.conf"
      mirror_resource 127.0.21 $((port + 1)) >"$work/r0.res"
      new_image "$work/n0.img"; rm -f "$work/n1.img"; truncate -s "$image_size" "$work/n1.img"
      # n1's replica holds nothing yet: invalidated, the first handshake resyncs all of it.
      "$bin/o2fs" mirror up -f --node n1 -r "$work/r0.res" --socket "$work/m1.sock" >>"$work/logs/mirror-n1.log" 2>&1 &
      local m=$!
      pids+=("$m")
      for _ in $(seq 100); do "$bin/o2fs" invalidate --node n1 --socket "$work/m1.sock" >/dev/null 2>&1 && break; sleep 0.1; done
      kill -TERM "$m"; wait "$m" || true; forget_pid "$m"
      for i in 0 1; do mount_node "$i" -r "$work/r0.res"; done ;;
  esac
  for i in 0 1; do wait_mounted "${mnt[i]}" "${node_pid[i]}" "$t-n$i" || return 1; done
  [ "$t" != mirror ] || wait_in_sync
}

# wait_in_sync: on the mirror, n1's fresh replica is fully resynced from n0's once both are up;
# the jobs start when that is over (else they measure the resync too).
wait_in_sync() {
  local _
  for _ in $(seq 1200); do
    "$bin/o2fs" status --node n0 --socket "$work/n0.sock" --json 2>/dev/null |
      jq -e '.mirror.replication == "Established" and .mirror.out_of_sync_bytes == 0' >/dev/null && return 0
    sleep 0.5
  done
  echo "  the replicas were not in sync after 600 s" >&2
  return 1
}

# umount_target: unmounts n1 and n0, then waits for both daemons (on the mirror a node's
# replica stays connected while its peer writes), and judges the volume with fsck.ocfs2.
umount_target() {
  local i rc img=$work/$t.img log=$work/logs/$t-fsck.out
  for i in 1 0; do
    [ -n "${node_pid[i]:-}" ] || continue
    timeout 60 fusermount3 -u "${mnt[i]}" 2>>"$work/logs/$t-n$i.log" || fail "$t" unmount "fusermount3 -u n$i failed"
  done
  for i in 1 0; do
    [ -n "${node_pid[i]:-}" ] || continue
    rc=0; wait "${node_pid[i]}" || rc=$?
    forget_pid "${node_pid[i]}"; node_pid[i]=""
    [ "$rc" -eq 0 ] || fail "$t" unmount "n$i exited with status $rc: $(logtail "$work/logs/$t-n$i.log" 2)"
  done
  [ "$t" != mirror ] || img=$work/n0.img
  yes y 2>/dev/null | timeout 300 fsck.ocfs2 -fnF "$img" >"$log" 2>&1 || true
  if grep -q '^\[' "$log" || ! grep -q '^All passes succeeded' "$log"; then
    fail "$t" fsck "fsck.ocfs2 -fnF after the run: $(grep -v '^$' "$log" | tail -3 | tr '\n' ' ')"
  fi
}

run_target() { # the jobs of target $t on fresh volumes
  echo "== $t"
  if ! mount_target; then
    fail "$t" mount "could not mount"
    return 0
  fi
  echo "  (a) create, one node active";           creates one "${mnt[0]}/one:f"
  if [ "$t" != single ]; then
    echo "  (b) create, separate directories";    creates separate "${mnt[0]}/sep0:f" "${mnt[1]}/sep1:f"
    echo "  (c) create, one directory";           creates onedir "${mnt[0]}/c:n0-" "${mnt[1]}/c:n1-"
  fi
  echo "  (d) seq write, one node";               fio_rows seqw1 seq-write write "${mnt[0]}/w0"
  drop_caches
  echo "  (e) seq read, one node";                fio_rows seqr seq-read read "${mnt[0]}/w0"
  echo "  (f) the same read again, new open";               fio_rows reread seq-read read "${mnt[0]}/w0"
  rm -f "${mnt[0]}/w0/bench.dat"
  if [ "$t" != single ]; then
    echo "  (d) seq write, both nodes";           fio_rows seqw2 seq-write write "${mnt[0]}/w0" "${mnt[1]}/w1"
    rm -f "${mnt[0]}/w0/bench.dat" "${mnt[1]}/w1/bench.dat"
  fi
  echo "  (g) postmark, one node";                postmark postmark "${mnt[0]}/pm"
  echo "  (h) maildir delivery, one node";        mails mail1 "${mnt[0]}/mail1" "${mnt[0]}/mail1:n0"
  if [ "$t" != single ]; then
    echo "  (i) maildir delivery, both nodes";    mails mail2 "${mnt[0]}/mail2" "${mnt[0]}/mail2:n0" "${mnt[1]}/mail2:n1"
  fi
  umount_target
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
run_rounds run_target
elapsed=$(($(date +%s) - start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- table ---------------------------------------------------------------------------------
pairs=()
for t in "${targets[@]}"; do [ "$t" = single ] || pairs+=("$t"); done
table=$(
  printf '| workload | single |'; for p in "${pairs[@]}"; do printf ' %s | %s/single |' "$p" "$p"; done
  echo ' target (ratio) |'
  printf '|---|---|'; for _ in "${pairs[@]}"; do printf -- '---|---|'; done; echo '---|'
  for r in "${rows[@]}"; do
    printf '| %s | %s |' "${row_label[$r]}" "${res[single,${baseline[$r]}]:--}"
    for p in "${pairs[@]}"; do
      printf ' %s | %s |' "${res[$p,$r]:--}" "$(div "${res[$p,$r]:-}" "${res[single,${baseline[$r]}]:-}")"
    done
    echo " ${target[$r]} |"
  done
)
notes=$(
  echo "$nfiles files of 1 KiB per node and job; fio files of $file_size (runtime bound ${runtime}s); $nmails messages per node into $mailboxes mailboxes; images of $image_size."
  echo "The single column of (b) and (c) is (a)'s single-node figure, and of the two-node (d) the one-node (d)."
  rounds_note "${rows[@]}"
  echo "Build: $build_note. Run took ${elapsed}s; load average at start $load_start, at end $load_end."
  [ -z "${BENCH_NOTE:-}" ] || echo "$BENCH_NOTE"
  if [ ${#failures[@]} -gt 0 ]; then
    echo; echo "Failures:"; for f in "${failures[@]}"; do echo "- $f"; done
  else
    echo "No step failed; fsck.ocfs2 -fnF found every volume clean after its target's run."
  fi
)
echo
echo "$table"
echo
echo "$notes"

if [ "$record" = 1 ]; then
  record_results "Two nodes, $(date -u +%Y-%m-%d), $(nproc) cores (\`bench/cluster.sh\`$([ "${QUICK:-0}" = 1 ] && echo ', QUICK=1'))"
fi
