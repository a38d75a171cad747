#!/usr/bin/env bash
# FUSE workloads (DESIGN.md "Performance method"): the same jobs, in one run, against
#   host         a directory on the host filesystem (the physical limit),
#   passthrough  libfuse's passthrough_ll example over a host directory (the FUSE ceiling),
#   fuse2fs      fuse2fs on an ext4 image (the closest userspace peer),
#   o2fs         o2fs on an image of the same size (2 GiB) made by mkfs.o2fs -b 4K -C 4K -M local.
# Jobs: fio sequential write and read (1 MiB blocks, buffered, fsync at the end of the write),
# fio random 4 KiB write and read (2 jobs at iodepth 1, time-bounded), bench/files.sh
# (create/stat/unlink of small files), postmark (fixed config), then the daemons' RSS.
# The page, dentry and inode caches are dropped before each read phase (DROP_CACHES=0 to skip),
# so reads come from storage on every target. Prints a table of figures and o2fs/peer ratios;
# with --record appends it, with the machine's facts, to bench/RESULTS.md. A step that fails or
# times out is reported as FAIL (with its error under the table), never hidden; a FUSE target
# whose mount stops answering is torn down and remounted on a fresh image for the next step.
# Needs root (mounts, drop_caches). QUICK=1: tiny sizes for a smoke run.
# The whole sequence runs ROUNDS times (default 3; 1 with QUICK), each on fresh instances, with
# the order of the targets rotated every round; the table shows each figure's median. One round
# of a shared machine can be several times off (the host disk and other work vary from minute
# to minute), and the target measured last would always pay for what the others left behind.
# Usage: bench/run.sh [--record]   Environment: QUICK, ROUNDS, DROP_CACHES, TARGETS, BENCH_WORK,
# KEEP, BENCH_NOTE (a sentence added to the notes, e.g. about other load on the machine).
set -euo pipefail
source "$(dirname "$0")/args.sh" 18 "$@"

if [ "${QUICK:-0}" = 1 ]; then
  file_size=16M runtime=2 nfiles=500 pm_files=200 pm_tx=1000 image_size=512M rounds=${ROUNDS:-1}
else
  file_size=256M runtime=10 nfiles=20000 pm_files=5000 pm_tx=20000 image_size=2G rounds=${ROUNDS:-3}
fi
drop=${DROP_CACHES:-1}
targets=(${TARGETS:-host passthrough fuse2fs o2fs})
fio_timeout=$((runtime + 60))  # fio's own runtime bound plus layout and the final fsync
slow_timeout=${SLOW_TIMEOUT:-300} # files.sh and postmark

scripts/install-deps.sh

# The release build, the scratch folder `work`, its cleanup at exit and the shared helpers.
source bench/lib.sh

# passthrough_ll, compiled from the example libfuse3-dev installs (never kept in the tree).
pt_src=$(dpkg -L libfuse3-dev | grep '/passthrough_ll\.c$' | head -1)
[ -n "$pt_src" ] || { echo "run.sh: passthrough_ll.c not found in libfuse3-dev" >&2; exit 1; }
# shellcheck disable=SC2046
gcc -O2 -Wall -o "$work/passthrough_ll" "$pt_src" -I"$(dirname "$pt_src")" $(pkg-config fuse3 --cflags --libs)


# mount_target NAME: makes a fresh instance; sets mnt (where jobs run) and pid (daemon or "").
mount_target() {
  local t=$1 log=$work/logs/$1.log
  mnt=$work/mnt-$t pid=""
  rm -rf "$mnt"; mkdir -p "$mnt"
  case $t in
    host) return 0 ;;
    passthrough)
      rm -rf "$work/pt-src"; mkdir "$work/pt-src"
      # passthrough_ll keeps a descriptor open per inode it knows: lift its limit (root may).
      (ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$work/passthrough_ll" -f -o source="$work/pt-src" "$mnt") >>"$log" 2>&1 &
      pid=$! ;;
    fuse2fs)
      rm -f "$work/ext4.img"; truncate -s "$image_size" "$work/ext4.img"
      timeout 60 mkfs.ext4 -q -F "$work/ext4.img" >>"$log" 2>&1
      fuse2fs "$work/ext4.img" "$mnt" -f >>"$log" 2>&1 &
      pid=$! ;;
    o2fs)
      rm -f "$work/o2fs.img"; truncate -s "$image_size" "$work/o2fs.img"
      timeout 60 "$bin/mkfs-o2fs" -q -b 4K -C 4K -M local -F "$work/o2fs.img" >>"$log" 2>&1
      "$bin/o2fs" mount -f "$work/o2fs.img" "$mnt" >>"$log" 2>&1 &
      pid=$! ;;
  esac
  pids+=("$pid"); mounts+=("$mnt")
  wait_mounted "$mnt" "$pid" "$t"
}

# umount_target NAME: unmounts cleanly and waits for the daemon; a failure is recorded.
umount_target() {
  local t=$1 rc=0
  [ -n "$pid" ] || return 0
  if is_mounted "$mnt" && ! timeout 30 fusermount3 -u "$mnt" 2>>"$work/logs/$t.log"; then
    fail "$t" unmount "fusermount3 -u failed or timed out; forced"
    unmount "$mnt"
  fi
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$t" unmount "daemon still running 30 s after unmount; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  forget_pid "$pid"
  [ "$rc" -eq 0 ] || [ "$t" != o2fs ] || fail "$t" unmount "daemon exited with status $rc: $(logtail "$work/logs/$t.log" 2)"
  pid=""
}

# --- results -----------------------------------------------------------------------------
declare -A res      # res[target,row] = figure or FAIL
failures=()         # "target, row: what happened"
remarks=()          # facts a reader of the table needs that are not failures
rows=(seqw seqr randw randr create stat unlink postmark rss hwm)
declare -A row_label=(
  [seqw]="seq write 1 MiB, MiB/s" [seqr]="seq read 1 MiB, MiB/s"
  [randw]="rand write 4 KiB (2 jobs, QD1), IOPS" [randr]="rand read 4 KiB (2 jobs, QD1), IOPS"
  [create]="create $nfiles files, ops/s" [stat]="stat $nfiles files, ops/s" [unlink]="unlink $nfiles files, ops/s"
  [postmark]="postmark $pm_files files / $pm_tx tx, file ops/s"
  [rss]="daemon VmRSS at end, MiB (lower is better)" [hwm]="daemon VmHWM (peak RSS), MiB (lower is better)")

fail() { # TARGET ROW MESSAGE
  failures+=("$1, ${row_label[$2]:-$2}: $3")
  [ -z "${row_label[$2]:-}" ] || res[$1,$2]=FAIL
  echo "  FAIL $1 $2: $3" >&2
}

healthy() { # is the current target still answering?
  [ -z "$pid" ] && return 0
  kill -0 "$pid" 2>/dev/null && is_mounted "$mnt" && timeout 10 stat -f "$mnt" >/dev/null 2>&1
}

# after_failure TARGET: a mount that stopped answering is replaced by a fresh one.
after_failure() {
  local t=$1
  healthy && return 0
  fail "$t" mount "mount stopped answering (daemon $(kill -0 "$pid" 2>/dev/null && echo alive || echo dead)); log: $(logtail "$work/logs/$t.log" 3)"
  unmount "$mnt"; stop_daemon "$pid"
  remounted[$t]=1
  mount_target "$t" || { fail "$t" mount "remount failed"; return 1; }
}
declare -A remounted

run_fio() { # TARGET ROW JOB DIRECTION FIELD DIVISOR
  local t=$1 row=$2 job=$3 dir=$4 field=$5 div=$6 out=$work/logs/$1-$3.json rc=0
  BENCH_DIR=$mnt BENCH_SIZE=$file_size BENCH_RUNTIME=$runtime \
    timeout -k 10 "$fio_timeout" fio --output-format=json --output="$out" "bench/fio/$job.fio" \
    2>"$work/logs/$t-$job.err" || rc=$?
  local err; err=$(jq -r '.jobs[0].error // 0' "$out" 2>/dev/null || echo "no JSON")
  if [ "$rc" -ne 0 ] || [ "$err" != 0 ]; then
    local why; why="fio $(why_rc "$rc" "$fio_timeout")"
    fail "$t" "$row" "$why, job error $err: $(logtail "$work/logs/$t-$job.err" 2)"
    after_failure "$t"; return 0
  fi
  res[$t,$row]=$(jq -r ".jobs[0].$dir.$field / $div | . * 10 | round / 10" "$out")
}

run_files() { # TARGET
  local t=$1 out=$work/logs/$1-files.out rc=0 ph
  if [ "$t" = passthrough ] && [ "$(ulimit -Hn)" -lt $((nfiles + 1000)) ]; then
    # passthrough_ll holds a descriptor per inode the kernel caches; short of that it fails.
    for ph in create stat unlink; do res[$t,$ph]=n/a; done
    [[ " ${remarks[*]} " == *"passthrough_ll skips"* ]] || remarks+=("passthrough_ll skips the $nfiles-file workload: it keeps one descriptor open per cached inode and the open-file hard limit here is $(ulimit -Hn), which root may not raise in this container.")
    return 0
  fi
  DROP_CACHES=$drop timeout -k 10 "$slow_timeout" bench/files.sh "$mnt" "$nfiles" >"$out" 2>"$work/logs/$t-files.err" || rc=$?
  for ph in create stat unlink; do
    res[$t,$ph]=$(awk -v p="$ph" '$1 == p { print $2 }' "$out")
  done
  if [ "$rc" -ne 0 ]; then
    local why; why=$(why_rc "$rc" "$slow_timeout")
    for ph in create stat unlink; do
      [ -n "${res[$t,$ph]}" ] || { fail "$t" "$ph" "$why: $(logtail "$work/logs/$t-files.err" 2)"; why="not reached"; }
    done
    after_failure "$t" && timeout 120 rm -rf "$mnt"/files.* 2>/dev/null
    drop_caches
  fi
}

run_postmark() { # TARGET
  local t=$1 out=$work/logs/$1-postmark.out rc=0 rate
  rate=$(postmark_in "$mnt/pm" "$pm_files" "$pm_tx" "$slow_timeout" "$out") || rc=$?
  if [ "$rc" -ne 0 ]; then
    fail "$t" postmark "$(why_rc "$rc" "$slow_timeout"): $(grep -v '^$' "$out" | tail -2 | tr '\n' ' ')"
    after_failure "$t"; return 0
  fi
  res[$t,postmark]=$rate
}

rss() { # TARGET: VmRSS and VmHWM of the daemon, MiB
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 0
  res[$1,rss]=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
  res[$1,hwm]=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
}

declare -A trail # trail[target] = the daemon's VmRSS after each step, to show where it grows
mark() { # TARGET STEP
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 0
  trail[$1]+="${trail[$1]:+, }$2 $(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")"
}

# one_target TARGET: the whole sequence on a fresh instance; figures go to res[TARGET,row].
one_target() {
  local t=$1
  echo "== $t"
  trail[$t]="" remounted[$t]=""
  if ! mount_target "$t"; then
    fail "$t" mount "could not mount: $(logtail "$work/logs/$t.log" 3)"
    return 0
  fi
  mark "$t" mounted
  echo "  seq write";  run_fio "$t" seqw seq-write write bw_bytes 1048576; mark "$t" "seq write"
  drop_caches
  echo "  seq read";   run_fio "$t" seqr seq-read read bw_bytes 1048576; mark "$t" "seq read"
  echo "  rand write"; run_fio "$t" randw rand-write write iops 1; mark "$t" "rand write"
  drop_caches
  echo "  rand read";  run_fio "$t" randr rand-read read iops 1; mark "$t" "rand read"
  timeout 60 rm -f "$mnt/bench.dat" || fail "$t" cleanup "rm of the fio file failed or timed out"
  echo "  files";      run_files "$t"; mark "$t" files
  echo "  postmark";   run_postmark "$t"; mark "$t" postmark
  rss "$t"
  [ -z "${remounted[$t]:-}" ] || { [ -z "$pid" ] || failures+=("$t: RSS is of the daemon remounted after a failure, not of the first one"); }
  umount_target "$t"
  if [ "$t" = o2fs ] && [ -f "$work/o2fs.img" ]; then
    # The figures mean little if the volume was damaged: the independent checker judges it.
    if ! timeout 300 fsck.ocfs2 -fn "$work/o2fs.img" >"$work/logs/o2fs-fsck.out" 2>&1; then
      fail o2fs fsck "fsck.ocfs2 -fn after the run: $(grep -v '^$' "$work/logs/o2fs-fsck.out" | tail -3 | tr '\n' ' ')"
    fi
  fi
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
run_rounds one_target
elapsed=$(($(date +%s) - start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- table ---------------------------------------------------------------------------------
peers=()
for t in "${targets[@]}"; do [ "$t" = o2fs ] || peers+=("$t"); done
ratio() { # o2fs/peer for one row, or "-"
  div "${res[o2fs,$1]:-}" "${res[$2,$1]:-}"
}
table=$(
  printf '| workload |'; for t in "${targets[@]}"; do printf ' %s |' "$t"; done
  for p in "${peers[@]}"; do printf ' o2fs/%s |' "$p"; done; echo
  printf '|---|'; for _ in "${targets[@]}" "${peers[@]}"; do printf -- '---|'; done; echo
  for r in "${rows[@]}"; do
    printf '| %s |' "${row_label[$r]}"
    for t in "${targets[@]}"; do
      v=${res[$t,$r]:-}; { [ "$t" = host ] && [[ $r == rss || $r == hwm ]]; } && v="n/a"
      printf ' %s |' "${v:--}"
    done
    for p in "${peers[@]}"; do printf ' %s |' "$( { [ "$p" = host ] && [[ $r == rss || $r == hwm ]]; } && echo n/a || ratio "$r" "$p")"; done
    echo
  done
)
notes=$(
  echo "Files of $file_size, fio runtime bound ${runtime}s, images of $image_size; caches dropped before reads: $([ "$drop" = 1 ] && echo yes || echo no)."
  rounds_note seqw seqr randw randr
  echo "Ratios are o2fs / peer: above 1 means o2fs is faster, except the RSS rows (above 1: o2fs uses more)."
  echo "Build: $build_note. Run took ${elapsed}s; load average at start $load_start, at end $load_end."
  for r in "${remarks[@]}"; do echo "$r"; done
  for t in "${targets[@]}"; do
    [ -z "${trail[$t]:-}" ] || echo "$t daemon VmRSS (MiB) after each step: ${trail[$t]}."
  done
  hostfs=$(findmnt -no FSTYPE,OPTIONS -T "$work" | tr -s " ")
  [[ $hostfs != *discard* ]] || echo "The host filesystem is mounted with online discard ($hostfs), which slows the host's own unlinks."
  [ -z "${BENCH_NOTE:-}" ] || echo "$BENCH_NOTE"
  if [ ${#failures[@]} -gt 0 ]; then
    echo; echo "Failures:"; for f in "${failures[@]}"; do echo "- $f"; done
  else
    echo "No step failed$([[ " ${targets[*]} " == *" o2fs "* ]] && echo '; fsck.ocfs2 -fn found the o2fs volume clean after the run')."
  fi
)
echo
echo "$table"
echo
echo "$notes"

if [ "$record" = 1 ]; then
  mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  fs=$(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$work" | tr -s " ")
  record_results "FUSE workloads, $(date -u +%Y-%m-%d), $(nproc) cores (\`bench/run.sh\`$([ "${QUICK:-0}" = 1 ] && echo ', QUICK=1'))" \
    "Machine: $cpu, $(nproc) cores, $mem RAM, kernel $(uname -r); images and the host directory on $fs." \
    "$(fio --version), $(dpkg-query -W -f '${Package} ${Version}' fuse2fs), libfuse3 $(pkg-config --modversion fuse3)."
fi
