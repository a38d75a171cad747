#!/usr/bin/env bash
# Builds release binaries and installs them under their real names in PREFIX (default /usr/local).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-/usr/local}
cargo build --workspace --release --locked
install -d "$prefix/sbin" "$prefix/bin"
install -m 755 target/release/mkfs-o2fs "$prefix/sbin/mkfs.o2fs"
install -m 755 target/release/fsck-o2fs "$prefix/sbin/fsck.o2fs"
install -m 755 target/release/o2fs "$prefix/bin/o2fs"
echo "installed mkfs.o2fs, fsck.o2fs and o2fs into $prefix"
