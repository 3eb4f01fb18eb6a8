#!/usr/bin/env bash
# Installs kmsfs on a Debian/Ubuntu machine: fuse3, the binary, the mount(8) helper
# (mount.fuse.kmsfs, for `mount -t fuse.kmsfs` and fstab), man pages, shell completions, the
# systemd units and a sample config.
#
#   sudo scripts/install.sh                  # build (release) and install under /usr/local
#   scripts/install.sh --destdir /tmp/stage --no-deps --bin target/release/kmsfs
#
# Options: --prefix DIR (default /usr/local), --destdir DIR (stage into DIR, for packaging),
# --bin FILE (install this binary instead of building), --no-deps (do not apt-get fuse3).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local destdir= bin= deps=1
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --no-deps) deps=0; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$deps" = 1 ] && ! command -v fusermount3 >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq fuse3 >/dev/null
fi
if [ -z "$bin" ]; then
    source scripts/rustflags.sh
    cargo build --release --quiet
    bin=target/release/kmsfs
fi

# A binary this CPU cannot run (src/cpu_check.c) says so here, before anything is installed
# (not when staging into --destdir: that binary may be for another machine).
[ -n "$destdir" ] || "$bin" --version >/dev/null
root=$destdir
install -d "$root$prefix/bin" "$root/sbin" "$root$prefix/share/man/man1" \
    "$root$prefix/share/bash-completion/completions" "$root$prefix/share/zsh/site-functions" \
    "$root$prefix/share/fish/vendor_completions.d" "$root/etc/systemd/system" \
    "$root/etc/kmsfs/mounts"
install -m 0755 "$bin" "$root$prefix/bin/kmsfs"
# mount(8) looks for /sbin/mount.<type> helpers; kmsfs answers to that name.
ln -sf "$prefix/bin/kmsfs" "$root/sbin/mount.fuse.kmsfs"
kmsfs=$root$prefix/bin/kmsfs
"$kmsfs" man --dir "$root$prefix/share/man/man1" >/dev/null
"$kmsfs" completions bash >"$root$prefix/share/bash-completion/completions/kmsfs"
"$kmsfs" completions zsh >"$root$prefix/share/zsh/site-functions/_kmsfs"
"$kmsfs" completions fish >"$root$prefix/share/fish/vendor_completions.d/kmsfs.fish"
for unit in config/systemd/*; do
    sed "s|/usr/local/bin/kmsfs|$prefix/bin/kmsfs|g" "$unit" >"$root/etc/systemd/system/$(basename "$unit")"
done
[ -e "$root/etc/kmsfs/kmsfs.toml" ] || install -m 0644 config/kmsfs.toml "$root/etc/kmsfs/kmsfs.toml"
if [ -z "$destdir" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
echo "installed kmsfs into ${destdir:-/}$prefix (helper: /sbin/mount.fuse.kmsfs; units: /etc/systemd/system)"
