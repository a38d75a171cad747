#!/usr/bin/env bash
# The main job: build; make a mirrored volume (each node keeps its own replica, as DRBD
# dual-primary protocol C in the original mail cluster); check it with fsck.o2fs and Debian's
# fsck.ocfs2; start two nodes on 127.0.0.1 and 127.0.0.2 that mount it at once, each on its own
# replica; write on each node and read on the other; show `o2fs status`, `o2fs mounted` and
# `o2fs locks`; unmount both; check both replicas with both fscks and compare them byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --release --locked
bin=target/release
work=$(mktemp -d /tmp/o2fs-demo.XXXXXX)
mkdir -p "$work/mnt1" "$work/mnt2" "$work/mail1" "$work/mail2"
pids=()
mounted() { grep -qs " $1 " /proc/mounts; }
cleanup() {
  for m in "$work/mnt1" "$work/mnt2"; do
    if mounted "$m"; then fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; fi
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
check_ocfs2() {
  echo "== fsck.ocfs2 -fnF $1 (Debian's ocfs2-tools)"
  local log=$work/fsck.log
  yes y | fsck.ocfs2 -fnF "$1" >"$log" 2>&1 || true
  cat "$log"
  if grep -q '^\[' "$log" || ! grep -q '^All passes succeeded' "$log"; then
    echo "fsck.ocfs2 found problems"; exit 1
  fi
}

# The o2cb cluster.conf of shared/examples (mail1 on 127.0.0.1, mail2 on 127.0.0.2) and the
# DRBD-format resource of shared/examples/mail_data.res, with ports and paths of the demo's own
# and a cluster secret (`secret_file`, an o2fs extension of the syntax).
port=$((17000 + RANDOM % 2000))
head -c 32 /dev/urandom | base64 > "$work/secret"
cat > "$work/cluster.conf" <<EOF
cluster:
	node_count = 2
	name = mailclu
	secret_file = $work/secret

node:
	ip_port = $port
	ip_address = 127.0.0.1
	number = 0
	name = mail1
	cluster = mailclu

node:
	ip_port = $port
	ip_address = 127.0.0.2
	number = 1
	name = mail2
	cluster = mailclu
EOF
res=$work/mail_data.res
cat > "$res" <<EOF
resource mail_data {
	protocol C;
	syncer { verify-alg sha1; rate 200M; }
	startup { wfc-timeout 60; degr-wfc-timeout 10; become-primary-on both; }
	net { cram-hmac-alg sha1; shared-secret "$(head -c 12 /dev/urandom | base64)"; allow-two-primaries; }
	on mail1 {
		device /dev/o2fs0;
		disk $work/mail1/disk.img;
		address 127.0.0.1:$((port + 1));
		meta-disk $work/mail1/meta.img[0];
	}
	on mail2 {
		device /dev/o2fs0;
		disk $work/mail2/disk.img;
		address 127.0.0.2:$((port + 1));
		meta-disk $work/mail2/meta.img[0];
	}
}
EOF
echo "== cluster.conf"; cat "$work/cluster.conf"
echo "== mail_data.res"; cat "$res"
img1=$work/mail1/disk.img
img2=$work/mail2/disk.img
truncate -s 1G "$img2"

echo "== mkfs.o2fs on mail1's replica: 1 GiB, 4K blocks, 64K clusters, 2 slots, o2cb cluster 'mailclu'"
$bin/mkfs-o2fs -b 4K -C 64K -N 2 -L mail_data -T mail \
  --cluster-stack=o2cb --cluster-name=mailclu --size 1G "$img1"
echo "== fsck.o2fs -fn"
$bin/fsck-o2fs -fn "$img1"
check_ocfs2 "$img1"
echo "== debugfs.ocfs2 -R stats"
debugfs.ocfs2 -R "stats -h" "$img1"
echo "== mounted.ocfs2 -d"
mounted.ocfs2 -d "$img1"

echo "== mail2's replica is empty: mark it invalid, so that the first connection fully syncs it"
echo "   from mail1 (as 'drbdadm invalidate' on the node without the data)"
$bin/o2fs mirror up --node mail2 -r "$res" --socket "$work/mail2.sock" -f 2>"$work/mirror2.log" &
pids+=($!)
until $bin/o2fs status --node mail2 --socket "$work/mail2.sock" >/dev/null 2>&1; do sleep 0.1; done
$bin/o2fs invalidate --node mail2 --socket "$work/mail2.sock"
kill "${pids[0]}"; wait "${pids[0]}" || true
pids=()

# Both nodes start at once: a node on the mirror waits for its peer (wfc-timeout) before it
# mounts. They run in the foreground (`-f`) in the background of this script, so that it knows
# their PIDs and can wait for their end; without -f `o2fs mount` daemonises once mounted.
for n in 1 2; do
  echo "== o2fs mount --node mail$n -c cluster.conf -r mail_data.res mnt$n"
  RUST_LOG=warn $bin/o2fs mount -f --node "mail$n" -c "$work/cluster.conf" -r "$res" \
    --socket "$work/mail$n.sock" --keepalive-ms 500 --idle-timeout-ms 5000 --hb-interval-ms 500 \
    -o commit=2 "$work/mnt$n" 2>"$work/mount$n.log" &
  pids+=($!)
done
for n in 1 2; do
  for _ in $(seq 600); do mounted "$work/mnt$n" && break; sleep 0.1; done
  mounted "$work/mnt$n" || { echo "mail$n did not mount:"; cat "$work/mount$n.log"; exit 1; }
done
echo "== o2fs status --node mail1 (cluster and mirror)"
$bin/o2fs status --node mail1 --socket "$work/mail1.sock"

echo "== mail1 delivers 200 mails; mail2 reads them"
mkdir -p "$work/mnt1/Maildir/new"
for i in $(seq 1 200); do
  printf 'From: user%d@example.org\nSubject: mail %d\n\nhello\n' "$i" "$i" > "$work/mnt1/Maildir/new/$i.mail"
done
ls "$work/mnt2/Maildir/new" | wc -l | sed 's/^/mails seen on mail2: /'
grep -q "Subject: mail 200" "$work/mnt2/Maildir/new/200.mail" && echo "mail2 reads mail 200: ok"
echo "== mail2 writes 3 MB; mail1 reads it back"
head -c 3000000 /dev/urandom > "$work/blob"; cp "$work/blob" "$work/mnt2/blob"
cmp "$work/blob" "$work/mnt1/blob" && echo "mail1 reads mail2's 3 MB: identical"
mv "$work/mnt1/blob" "$work/mnt1/Maildir/blob"
[ ! -e "$work/mnt2/blob" ] && [ -e "$work/mnt2/Maildir/blob" ] && echo "rename on mail1 seen on mail2: ok"
df -h "$work/mnt1" "$work/mnt2"
echo "== o2fs status --node mail2"
$bin/o2fs status --node mail2 --socket "$work/mail2.sock"
echo "== o2fs mounted on each replica (both nodes heartbeat on the volume, through the mirror)"
$bin/o2fs mounted -c "$work/cluster.conf" "$img1"
$bin/o2fs mounted -c "$work/cluster.conf" "$img2"
echo "== o2fs locks --node mail2"
$bin/o2fs locks --node mail2 --socket "$work/mail2.sock"

echo "== unmount both (a node's replica stays connected until its peer stops writing)"
fusermount3 -u "$work/mnt2"
fusermount3 -u "$work/mnt1"
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for img in "$img1" "$img2"; do
  echo "== after unmount: fsck.o2fs -fn and fsck.ocfs2 on $img"
  $bin/fsck-o2fs -fn "$img"
  check_ocfs2 "$img"
done
debugfs.ocfs2 -R "ls -l /Maildir/new" "$img2" | tail -3
cmp "$img1" "$img2" && echo "the two replicas are identical"
echo "demo: OK"
