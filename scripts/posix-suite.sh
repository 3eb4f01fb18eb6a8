#!/usr/bin/env bash
# Runs the POSIX suites against a real kmsfs mount: pjdfstest (Rust port) and fsx (Rust port),
# each with a bounded amount of work. Installs them (cargo install) if missing. Run as root:
# pjdfstest switches users. Prints a summary line per suite; exits non-zero on any failure.
#   FSX_OPS (default 10000) operations per fsx seed, FSX_SEEDS (default "1 2 3"),
#   IO_URING (default auto): the mount's --io-uring (on: per-CPU rings, off: /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rustflags.sh
export PATH="$HOME/.cargo/bin:$PATH"
for tool in pjdfstest fsx; do
    command -v "$tool" >/dev/null || cargo install --locked --quiet "$tool"
done
cargo build --release --quiet
kmsfs=$PWD/target/release/kmsfs

work=$(mktemp -d)
chmod 755 "$work"
mnt=$work/mnt
cleanup() {
    cd /
    if grep -qs " $mnt fuse" /proc/mounts; then
        fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The second unprivileged user pjdfstest switches to.
getent passwd kmsfstest1 >/dev/null || {
    groupadd --gid 4242 kmsfstest1 2>/dev/null || true
    useradd --uid 4242 --gid 4242 --no-create-home --shell /usr/sbin/nologin kmsfstest1
}
nogroup=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)

export KMSFS_KEYSTORE=$work/ks KMSFS_ROOT_KEY_FILE=$work/root.key
head -c 32 /dev/urandom > "$KMSFS_ROOT_KEY_FILE"
"$kmsfs" keystore init >/dev/null
# pjdfstest acts as several users; the key policy must let them use the files' keys (the mount
# checks each request's caller against it).
cat > "$work/policy.json" <<'JSON'
{"Version": "2012-10-17", "Statement": [
  {"Sid": "root", "Effect": "Allow", "Principal": {"Local": "uid:0"}, "Action": "kms:*", "Resource": "*"},
  {"Sid": "everyone", "Effect": "Allow", "Principal": "*",
   "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:Encrypt", "kms:DescribeKey"], "Resource": "*"}]}
JSON
"$kmsfs" key create --alias posix --policy-file "$work/policy.json" >/dev/null
"$kmsfs" init "$work/cipher" --key alias/posix >/dev/null
mkdir "$mnt"
"$kmsfs" mount "$work/cipher" "$mnt" --allow-other --io-uring "${IO_URING:-auto}" \
    --log-file "$work/kmsfs.log" >/dev/null
echo "posix suites over $(python3 -c 'import json,os,sys; print(json.loads(os.getxattr(sys.argv[1], "user.kmsfs.status"))["Transport"]["Kind"])' "$mnt")"

cat > "$work/pjdfstest.toml" <<TOML
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false
expected_failures = []

[dummy_auth]
entries = [["nobody", "$nogroup"], ["kmsfstest1", "kmsfstest1"]]
TOML

status=0
mkdir "$mnt/pjdfstest"
chmod 755 "$mnt/pjdfstest"
(cd "$mnt/pjdfstest" && pjdfstest -c "$work/pjdfstest.toml" -p "$mnt/pjdfstest") > "$work/pjdfstest.out" 2>&1 || status=1
grep -E "FAILED" "$work/pjdfstest.out" || true
echo "pjdfstest: $(grep '^Summary' "$work/pjdfstest.out" || echo 'no summary')"

ops=${FSX_OPS:-10000}
fails=0
for seed in ${FSX_SEEDS:-1 2 3}; do
    if ! (cd "$work" && fsx -q -N "$ops" -S "$seed" -P "$work" "$mnt/fsx-$seed.bin") > "$work/fsx-$seed.out" 2>&1; then
        fails=$((fails + 1))
        tail -20 "$work/fsx-$seed.out"
    fi
done
seeds=$(echo ${FSX_SEEDS:-1 2 3} | wc -w)
echo "fsx: $seeds seeds of $ops operations each"
echo "fsx: $((seeds - fails)) passed, $fails failed"
[ "$fails" = 0 ] || status=1
if [ "$status" != 0 ]; then
    echo "--- kmsfs log"; tail -50 "$work/kmsfs.log"
fi
exit $status
