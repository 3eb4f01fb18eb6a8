#!/usr/bin/env bash
# Builds kmsfs and does its main job on an embedded local key store: on first use it creates the
# key store (unlocked by a generated root key file), a CMK and a cipher directory, then mounts
# the encrypted directory and says how to unmount it.
#   KMSFS_CIPHERDIR (default ~/.local/share/kmsfs/cipher) and KMSFS_MOUNTPOINT (default ~/kmsfs)
#   choose the directories.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rustflags.sh
if ! command -v fusermount3 >/dev/null; then
    echo "installing fuse3 (needs root)"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --quiet
kmsfs=$PWD/target/release/kmsfs

data=${XDG_DATA_HOME:-$HOME/.local/share}/kmsfs
config_dir=${XDG_CONFIG_HOME:-$HOME/.config}/kmsfs
export KMSFS_ROOT_KEY_FILE=${KMSFS_ROOT_KEY_FILE:-$config_dir/root.key}
cipher=${KMSFS_CIPHERDIR:-$data/cipher}
mnt=${KMSFS_MOUNTPOINT:-$HOME/kmsfs}

if [ ! -f "$KMSFS_ROOT_KEY_FILE" ]; then
    mkdir -p "$(dirname "$KMSFS_ROOT_KEY_FILE")"
    (umask 077 && head -c 32 /dev/urandom > "$KMSFS_ROOT_KEY_FILE")
    echo "generated root key file $KMSFS_ROOT_KEY_FILE (keep it safe: it unlocks every key)"
fi
"$kmsfs" keystore info >/dev/null 2>&1 || "$kmsfs" keystore init
if ! "$kmsfs" key describe alias/quickstart >/dev/null 2>&1; then
    "$kmsfs" key create --alias quickstart --description "created by scripts/quickstart.sh" >/dev/null
    echo "created CMK alias/quickstart"
fi
[ -f "$cipher/kmsfs.conf" ] || "$kmsfs" init "$cipher" --key alias/quickstart
mkdir -p "$mnt"
if grep -qs " $mnt fuse" /proc/mounts; then
    echo "$mnt is already mounted; unmount with: $kmsfs umount $mnt"
    exit 0
fi
"$kmsfs" mount "$cipher" "$mnt"
echo "Files you put in $mnt are stored encrypted in $cipher."
echo "Unmount with: $kmsfs umount $mnt"
