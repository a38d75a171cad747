#!/usr/bin/env bash
# The main job, as far as o2fs goes today: build, make a volume with mkfs.o2fs, check it with
# both fsck.o2fs and Debian's fsck.ocfs2, and show what debugfs.ocfs2 and mounted.ocfs2 read.
# (The two-node mount joins this script when the mounted filesystem and the cluster stack land.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --release --locked
bin=target/release
work=$(mktemp -d /tmp/o2fs-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
img=$work/mail_data.img

echo "== mkfs.o2fs: 1 GiB, 4K blocks, 64K clusters, 2 slots, o2cb cluster 'mailclu'"
$bin/mkfs-o2fs -b 4K -C 64K -N 2 -L mail_data -T mail \
  --cluster-stack=o2cb --cluster-name=mailclu --size 1G "$img"
echo "== fsck.o2fs -fn"
$bin/fsck-o2fs -fn "$img"
echo "== fsck.ocfs2 -fnF (Debian's ocfs2-tools)"
log=$work/fsck.log
yes y | fsck.ocfs2 -fnF "$img" >"$log" 2>&1 || true
cat "$log"
if grep -q '^\[' "$log" || ! grep -q '^All passes succeeded' "$log"; then
  echo "fsck.ocfs2 found problems"; exit 1
fi
echo "== debugfs.ocfs2 -R stats"
debugfs.ocfs2 -R "stats -h" "$img"
echo "== debugfs.ocfs2 -R 'ls -l //'"
debugfs.ocfs2 -R "ls -l //" "$img"
echo "== mounted.ocfs2 -d"
mounted.ocfs2 -d "$img"
echo "demo: OK"
