#!/usr/bin/env bash
# What the bench runners (run.sh, cluster.sh) share; sourced from the repository's root after
# their arguments are read. It builds the release binaries (sets `bin` and `build_note`), makes the
# scratch folder `work` (with logs/) and removes it at exit after unmounting the `mounts` and
# stopping the `pids` the runner recorded (by PID, never by name), and has the small helpers below.
# Environment: BENCH_WORK (where the scratch folder goes), KEEP=1 (keep it), BUILD_MIRROR.

# --- build -------------------------------------------------------------------------------
# The tree's own build first. If it fails (someone's edit in progress, or a stale Cargo.lock),
# build the committed HEAD in a mirror (BUILD_MIRROR, default /work/bbuild) instead and say so.
build_note="working tree $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
git diff --quiet HEAD 2>/dev/null || build_note+=" (with uncommitted changes)"
bin=$root/target/release
if ! timeout 1800 cargo build --release --locked -p o2fs -p mkfs-o2fs >/tmp/o2fs-bench-build.$$ 2>&1; then
  tail -3 /tmp/o2fs-bench-build.$$ >&2
  mirror=${BUILD_MIRROR:-/work/bbuild}
  head=$(git rev-parse --short HEAD)
  echo "$(basename "$0"): the tree's release build failed; building HEAD $head in $mirror" >&2
  mkdir -p "$mirror"
  find "$mirror" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
  git archive HEAD | tar -xmf - -C "$mirror"
  build_note="HEAD $head built in a mirror (the working tree's build failed)"
  if ! (cd "$mirror" && timeout 1800 cargo build --release --locked -p o2fs -p mkfs-o2fs) >/tmp/o2fs-bench-build.$$ 2>&1; then
    if grep -q 'cannot update the lock file' /tmp/o2fs-bench-build.$$; then
      echo "$(basename "$0"): Cargo.lock at HEAD is stale; building the mirror without --locked" >&2
      build_note+="; Cargo.lock at HEAD is stale, so built without --locked"
      (cd "$mirror" && timeout 1800 cargo build --release -p o2fs -p mkfs-o2fs) >/tmp/o2fs-bench-build.$$ 2>&1 ||
        { tail -20 /tmp/o2fs-bench-build.$$ >&2; exit 1; }
    else
      tail -20 /tmp/o2fs-bench-build.$$ >&2; exit 1
    fi
  fi
  bin=$mirror/target/release
fi
rm -f /tmp/o2fs-bench-build.$$
echo "build: $build_note"

# --- scratch space, mounts and their cleanup -------------------------------------------------
work=$(mktemp -d "${BENCH_WORK:-/var/tmp}/o2fs-bench.XXXXXX")
mkdir -p "$work/logs"
mounts=() # mount points we made, unmounted at exit
pids=()   # daemons we started, stopped at exit

logtail() { # FILE N: its last N lines on one line, colour codes removed
  tail -"$2" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' '
}
why_rc() { # RC TIMEOUT: what an exit status from `timeout -k` means
  case $1 in 124 | 137) echo "timed out after $2 s (killed)" ;; *) echo "exit $1" ;; esac
}

is_mounted() { awk -v d="$1" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo; }

unmount() { # DIR: unmount, forcing (aborts the FUSE connection) or detaching if refused
  local d=$1
  is_mounted "$d" || return 0
  timeout 20 fusermount3 -u "$d" 2>/dev/null || timeout 20 umount "$d" 2>/dev/null ||
    timeout 20 umount -f "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true
}

stop_daemon() { # PID: wait for it to leave after its unmount, then TERM, then KILL
  local p=$1 i
  [ -n "$p" ] || return 0
  for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null && sleep 2
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null || true
  forget_pid "$p"
}

forget_pid() { # PID: reaped, so cleanup must never signal it (the number may be reused)
  local keep=() q
  for q in "${pids[@]}"; do [ "$q" = "$1" ] || keep+=("$q"); done
  pids=("${keep[@]}")
}

record_results() { # HEADING [LINE...]: appends to bench/RESULTS.md the heading, the lines, $table and $notes
  local heading=$1
  shift
  {
    echo
    echo "## $heading"
    echo
    if [ $# -gt 0 ]; then printf '%s\n' "$@"; echo; fi
    echo "$table"
    echo
    echo "$notes"
  } >>bench/RESULTS.md
  echo "recorded in bench/RESULTS.md"
}

cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do unmount "${mounts[i]}"; done
  for p in "${pids[@]}"; do stop_daemon "$p"; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_mounted() { # DIR PID NAME: until DIR is a mount, or the daemon dies, or 30 s pass
  local i
  for i in $(seq 300); do
    is_mounted "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited before mounting: $(logtail "$work/logs/$3.log" 3)" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not mount within 30 s" >&2
  return 1
}

div() { # A B: A/B with two decimals, or "-" unless both are numbers and B is not 0
  [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && [ "$(echo "$2 > 0" | bc)" = 1 ] || { echo "-"; return; }
  printf '%.2f' "$(echo "$1 / $2" | bc -l)"
}

drop_caches() { # the host's page cache goes (unless DROP_CACHES=0), so the next read comes from the target
  [ "${DROP_CACHES:-1}" = 1 ] || return 0
  timeout 60 sync || true
  echo 3 >/proc/sys/vm/drop_caches
}

# postmark_in DIR FILES TRANSACTIONS TIMEOUT OUT: postmark's fixed configuration (small files,
# as a mail server's) in DIR, its report in OUT. Prints the file operations it counts (created,
# read, appended, deleted) per second of wall time; returns timeout's status, or 1 if postmark
# did not finish.
postmark_in() {
  local dir=$1 out=$5 rc=0 t0 t1
  mkdir -p "$dir"
  cat >"$out.cfg" <<EOF
set location $dir
set number $2
set transactions $3
set size 500 10000
set read 512
set write 512
set buffering true
set bias read 5
set bias create 5
set subdirectories 0
set seed 42
set report verbose
run
quit
EOF
  t0=$(date +%s.%N)
  timeout -k 10 "$4" postmark "$out.cfg" >"$out" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  [ "$rc" -eq 0 ] || return "$rc"
  grep -q 'Deleting files...Done' "$out" || return 1
  awk -v s="$(echo "$t1 - $t0" | bc -l)" '
    /^\t[0-9]+ (created|read|appended|deleted) \(/ { n += $1 } END { printf "%.1f", n / s }' "$out"
}

# Rounds (bench/run.sh, bench/cluster.sh): the whole sequence runs `rounds` times with the
# targets' order rotated; each round's figures go from res[] into rounds_of[], and the table
# shows their medians. Uses the caller's res, rows and targets.
declare -A rounds_of # rounds_of[target,row] = the figures of every round, space-separated

median() { # VALUES...: the median of the numbers among them, else the first value (FAIL, n/a)
  local nums n
  nums=$(printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g) || true
  [ -n "$nums" ] || { echo "${1:-}"; return; }
  n=$(echo "$nums" | wc -l)
  if [ $((n % 2)) = 1 ]; then echo "$nums" | sed -n "$(((n + 1) / 2))p"
  else echo "$nums" | sed -n "$((n / 2)),$((n / 2 + 1))p" | awk '{ s += $1 } END { printf "%.1f", s / 2 }'; fi
}

run_rounds() { # FUNCTION: runs FUNCTION TARGET for every target, `rounds` times, order rotated
  local round i
  for ((round = 0; round < rounds; round++)); do
    [ "$rounds" = 1 ] || echo "= round $((round + 1)) of $rounds"
    for ((i = 0; i < ${#targets[@]}; i++)); do
      t=${targets[(i + round) % ${#targets[@]}]} # global: the jobs read it
      "$1" "$t"
      keep_round "$t"
    done
  done
  take_medians
}

keep_round() { # TARGET: its figures of this round move from res[] to rounds_of[]
  local r
  for r in "${rows[@]}"; do
    [ -z "${res[$1,$r]:-}" ] || rounds_of[$1,$r]+="${rounds_of[$1,$r]:+ }${res[$1,$r]}"
    unset "res[$1,$r]"
  done
}

take_medians() { # res[] gets every figure's median over the rounds
  local t r
  for t in "${targets[@]}"; do
    for r in "${rows[@]}"; do
      # shellcheck disable=SC2086 # the figures are words
      [ -z "${rounds_of[$t,$r]:-}" ] || res[$t,$r]=$(median ${rounds_of[$t,$r]})
    done
  done
}

rounds_note() { # ROW...: how the figures were taken, and each target's figures per round in ROWs
  local t r line
  [ "$rounds" = 1 ] && return 0
  echo "Each figure is the median of $rounds rounds (fresh instances, order of the targets rotated each round); per round:"
  for t in "${targets[@]}"; do
    line=$(for r in "$@"; do [ -z "${rounds_of[$t,$r]:-}" ] || printf '%s [%s]; ' "$r" "${rounds_of[$t,$r]}"; done | sed 's/; $//')
    [ -z "$line" ] || echo "- $t: $line"
  done
}
