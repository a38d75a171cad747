#!/usr/bin/env bash
# The bench runners' command line, sourced first by each (run.sh, cluster.sh): goes to the
# repository's root (sets `root`), reads --record (sets `record`), prints the runner's header
# comment (its lines 2..HELP_END) for -h/--help, refuses anything else, and requires root.
# Usage: source "$(dirname "$0")/args.sh" HELP_END "$@"
help_end=$1
shift
cd "$(dirname "$0")/.."
root=$PWD
record=0
for a in "$@"; do
  case $a in
    --record) record=1 ;;
    -h | --help) sed -n "2,${help_end}s/^# \{0,1\}//p" "$0"; exit 0 ;;
    *) echo "$(basename "$0"): unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "$(basename "$0"): needs root (FUSE mounts)" >&2; exit 1; }
