#!/usr/bin/env bash
# Builds kmsfs and runs its main job on an embedded local key store in your home directory:
# creates the key store (unlocked by a generated root key file) and a CMK on first use, then
# encrypts and decrypts a message through the KMS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
kmsfs=$PWD/target/release/kmsfs

config_dir=${XDG_CONFIG_HOME:-$HOME/.config}/kmsfs
export KMSFS_ROOT_KEY_FILE=${KMSFS_ROOT_KEY_FILE:-$config_dir/root.key}
if [ ! -f "$KMSFS_ROOT_KEY_FILE" ]; then
    mkdir -p "$(dirname "$KMSFS_ROOT_KEY_FILE")"
    (umask 077 && head -c 32 /dev/urandom > "$KMSFS_ROOT_KEY_FILE")
    echo "generated root key file $KMSFS_ROOT_KEY_FILE (keep it safe: it unlocks every key)"
fi
if ! "$kmsfs" keystore info >/dev/null 2>&1; then
    "$kmsfs" keystore init
fi
if ! "$kmsfs" key describe alias/quickstart >/dev/null 2>&1; then
    "$kmsfs" key create --alias quickstart --description "created by scripts/quickstart.sh" >/dev/null
fi
"$kmsfs" key describe alias/quickstart
msg="hello from kmsfs at $(date -u +%FT%TZ)"
blob=$(printf '%s' "$msg" | "$kmsfs" encrypt --key alias/quickstart --context app=quickstart --base64)
echo "ciphertext blob: $blob"
back=$(printf '%s' "$blob" | "$kmsfs" decrypt --context app=quickstart)
echo "decrypted:       $back"
[ "$back" = "$msg" ] && echo "round trip OK. Try: $kmsfs audit show --key alias/quickstart"
