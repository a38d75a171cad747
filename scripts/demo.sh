#!/usr/bin/env bash
# The main job, as far as o2fs goes today: build, make a volume with mkfs.o2fs, check it with
# both fsck.o2fs and Debian's fsck.ocfs2, mount it on one node, write and read through the
# mount, show `o2fs mounted`, unmount, and check again with both fscks.
# (The two-node mount on the mirror replaces the single-node part when the cluster stack lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --release --locked
bin=target/release
work=$(mktemp -d /tmp/o2fs-demo.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  if grep -qs " $mnt " /proc/mounts; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  rm -rf "$work"
}
trap cleanup EXIT
img=$work/mail_data.img

echo "== mkfs.o2fs: 1 GiB, 4K blocks, 64K clusters, 2 slots, o2cb cluster 'mailclu'"
$bin/mkfs-o2fs -b 4K -C 64K -N 2 -L mail_data -T mail \
  --cluster-stack=o2cb --cluster-name=mailclu --size 1G "$img"
echo "== fsck.o2fs -fn"
$bin/fsck-o2fs -fn "$img"
check_ocfs2() {
  echo "== fsck.ocfs2 -fnF (Debian's ocfs2-tools)"
  local log=$work/fsck.log
  yes y | fsck.ocfs2 -fnF "$img" >"$log" 2>&1 || true
  cat "$log"
  if grep -q '^\[' "$log" || ! grep -q '^All passes succeeded' "$log"; then
    echo "fsck.ocfs2 found problems"; exit 1
  fi
}
check_ocfs2
echo "== debugfs.ocfs2 -R stats"
debugfs.ocfs2 -R "stats -h" "$img"
echo "== debugfs.ocfs2 -R 'ls -l //'"
debugfs.ocfs2 -R "ls -l //" "$img"
echo "== mounted.ocfs2 -d"
mounted.ocfs2 -d "$img"
echo "== o2fs mount (single node; daemonises once mounted)"
$bin/o2fs mount -o commit=2 "$img" "$mnt"
mkdir -p "$mnt/Maildir/new"
for i in $(seq 1 200); do printf 'From: user%d@example.org\nSubject: mail %d\n\nhello\n' "$i" "$i" > "$mnt/Maildir/new/$i.mail"; done
head -c 3000000 /dev/urandom > "$work/blob"; cp "$work/blob" "$mnt/blob"
cmp "$work/blob" "$mnt/blob" && echo "read back 3 MB: identical"
ls "$mnt/Maildir/new" | wc -l | sed 's/^/mails: /'
df -h "$mnt"
echo "== o2fs mounted"
$bin/o2fs mounted "$img"
fusermount3 -u "$mnt"
sleep 1
echo "== after unmount: fsck.o2fs -fn and fsck.ocfs2 again"
$bin/fsck-o2fs -fn "$img"
check_ocfs2
debugfs.ocfs2 -R "ls -l /Maildir/new" "$img" | tail -3
echo "demo: OK"
