#!/usr/bin/env bash
# Runs every test, as root: unit and property tests, the integration tests (they drive the real
# binary and mount the real filesystem, also as other users), then pjdfstest and fsx against a
# mount (scripts/posix-suite.sh). Needs fuse3 (fusermount3).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
bash scripts/posix-suite.sh
