#!/usr/bin/env bash
# Measures `kmsfs rewrap` after a key rotation: N small files, and a few large files (headers
# only, so the size should not matter). Prints seconds for each. Run as root; cipher dirs on tmpfs
# (/dev/shm) so the disk does not dominate.
#   FILES (default 10000), BIG_FILES (default 4), BIG_MB (default 256 each: 1 GiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rustflags.sh
cargo build --release --quiet
kmsfs=$PWD/target/release/kmsfs
work=$(mktemp -d /dev/shm/kmsfs-bench.XXXXXX)
cleanup() { for m in "$work"/m*; do fusermount3 -uz "$m" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export KMSFS_KEYSTORE=$work/ks KMSFS_ROOT_KEY_FILE=$work/root.key
head -c 32 /dev/urandom > "$KMSFS_ROOT_KEY_FILE"
"$kmsfs" keystore init >/dev/null
"$kmsfs" key create --alias bench >/dev/null

setup() { # name
    "$kmsfs" init "$work/c$1" --key alias/bench >/dev/null
    mkdir "$work/m$1"
    "$kmsfs" mount "$work/c$1" "$work/m$1" >/dev/null
}
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }

files=${FILES:-10000}
setup small
for d in $(seq 0 99); do mkdir "$work/msmall/d$d"; done
for i in $(seq 0 $((files - 1))); do printf 'x%.0s' $(seq 1 $((i % 7 + 1))) > "$work/msmall/d$((i % 100))/f$i"; done
setup big
for i in $(seq 1 "${BIG_FILES:-4}"); do
    dd if=/dev/zero of="$work/mbig/big$i" bs=1M count="${BIG_MB:-256}" status=none
done
"$kmsfs" key rotate alias/bench >/dev/null
echo "rewrap_online_${files}_files_s $(timed "$kmsfs" rewrap -q "$work/msmall")"
echo "rewrap_online_big_files_s $(timed "$kmsfs" rewrap -q "$work/mbig")"
"$kmsfs" key rotate alias/bench >/dev/null
"$kmsfs" umount "$work/msmall"; "$kmsfs" umount "$work/mbig"
echo "rewrap_offline_${files}_files_s $(timed "$kmsfs" rewrap -q "$work/csmall")"
echo "rewrap_offline_big_files_s $(timed "$kmsfs" rewrap -q "$work/cbig")"
