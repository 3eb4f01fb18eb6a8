#!/usr/bin/env bash
# Runs every test, as root: unit and property tests, the integration tests (they drive the real
# binary and mount the real filesystem, also as other users), then pjdfstest and fsx against a
# mount (scripts/posix-suite.sh). Needs fuse3 (fusermount3).
set -euo pipefail
cd "$(dirname "$0")/.."
# The long differential run (20,000 random operations against a plain directory).
export KMSFS_DIFF_OPS=${KMSFS_DIFF_OPS:-20000}
cargo test --all-targets "$@"
# pjdfstest, and fsx with 100,000 operations for each of two seeds.
FSX_OPS=${FSX_OPS:-100000} FSX_SEEDS=${FSX_SEEDS:-"1 2"} bash scripts/posix-suite.sh
