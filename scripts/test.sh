#!/usr/bin/env bash
# The test command: installs what the tests need, builds every program, runs every test.
# Tests that need ocfs2-tools run for real (CI=true makes a missing tool a failure, not a skip).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --locked
# The issue's full figure for the two-node creates (tests/cluster_workloads.rs; quicker default).
O2FS_CREATES=10000 cargo test --workspace --locked -- --test-threads=2
