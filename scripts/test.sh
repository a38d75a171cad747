#!/usr/bin/env bash
# The test command: installs what the tests need, builds every program, runs every test.
# Tests that need ocfs2-tools run for real (CI=true makes a missing tool a failure, not a skip).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads=2
