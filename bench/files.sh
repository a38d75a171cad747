#!/usr/bin/env bash
# Small-file metadata workload: creates N files (default 20000) of 1 KiB in one fresh directory
# under DIR, then stats each, then unlinks each, timing each phase. With DROP_CACHES=1 (run.sh's
# default; needs root) the page, dentry and inode caches are dropped before the stat phase, so its
# lookups go to the filesystem rather than the kernel's caches; unlink follows with them warm.
# Prints one line per phase: "create|stat|unlink <ops per second> <seconds>".
# Usage: bench/files.sh DIR [N]
set -euo pipefail
dir=${1:?usage: files.sh DIR [N]}
n=${2:-20000}
drop=${DROP_CACHES:-0}
work="$dir/files.$$"
mkdir "$work"
python3 - "$work" "$n" "$drop" <<'EOF'
import os, sys, time
work, n, drop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
names = [os.path.join(work, "f%06d" % i) for i in range(n)]
payload = b"x" * 1024

def drop_caches():
    if drop:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

def phase(label, fn):
    t0 = time.monotonic()
    for p in names:
        fn(p)
    dt = time.monotonic() - t0
    print("%s %.1f %.3f" % (label, n / dt, dt), flush=True)

def create(p):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, payload)
    os.close(fd)

def stat(p):
    if os.stat(p).st_size != len(payload):
        raise SystemExit("%s: wrong size after create" % p)

phase("create", create)
drop_caches()
phase("stat", stat)
phase("unlink", os.unlink)
EOF
rmdir "$work"
