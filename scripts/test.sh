#!/usr/bin/env bash
# Runs every test, as root: unit and property tests, the integration tests (they drive the real
# binary and mount the real filesystem, also as other users), then pjdfstest and fsx against a
# mount (scripts/posix-suite.sh) on each transport. Needs fuse3 (fusermount3) and, for
# tests/cpu_check.rs, qemu-user 7.2 or later (qemu-x86_64, emulating AVX2).
#
# Where the kernel has FUSE over io_uring (Linux 6.14+), its switch is turned on for the run
# (and restored after), so mounts use their default, `--io-uring auto`, over the rings; the
# POSIX suites then run once over the rings and once over /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rustflags.sh
param=/sys/module/fuse/parameters/enable_uring
if [ -w "$param" ]; then
    was=$(cat "$param")
    trap 'echo "$was" > "$param"' EXIT
    echo Y > "$param"
fi
# The long differential run (20,000 random operations against a plain directory).
export KMSFS_DIFF_OPS=${KMSFS_DIFF_OPS:-20000}
cargo test --all-targets "$@"
# pjdfstest, and fsx with 100,000 operations for each of two seeds; on /dev/fuse fewer.
FSX_OPS=${FSX_OPS:-100000} FSX_SEEDS=${FSX_SEEDS:-"1 2"} IO_URING=auto bash scripts/posix-suite.sh
if [ -e "$param" ]; then
    FSX_OPS=${FSX_OPS:-50000} FSX_SEEDS=${FSX_SEEDS:-"3"} IO_URING=off bash scripts/posix-suite.sh
fi
