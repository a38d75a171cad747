#!/usr/bin/env bash
# Installs the system packages o2fs's programs and tests use, when they are missing:
# ocfs2-tools (the independent judge of the format), kmod (mkfs/fsck.ocfs2 fork modprobe),
# fuse3 (mounting), fio and bc (benchmarks), nftables and iproute2 (network-split tests);
# for bench/run.sh: fuse2fs and e2fsprogs (the ext4-image peer), libfuse3-dev, gcc and pkg-config
# (passthrough_ll, compiled from libfuse's example at run time), postmark, jq (fio's JSON), python3.
set -euo pipefail
pkgs=(ocfs2-tools kmod fuse3 fio nftables iproute2 bc
  fuse2fs e2fsprogs libfuse3-dev gcc pkg-config postmark jq python3 util-linux)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }
