#!/usr/bin/env bash
# kmsfs against gocryptfs (and the plain backing directory as the ceiling), side by side in one
# run, every cipher dir on tmpfs so the disk does not dominate. The workload measures what
# ../shared/bench/fsbench.sh measures:
#   1. sequential write of 1 GiB (1 MiB blocks, fsync at end), then a cold sequential read and
#      a warm one right after it;
#   2. random 4 KiB reads and writes (fio, 256 MiB file, bounded runtime), IOPS;
#   3. 10,000 files of 1-8 KiB in nested directories: create, stat all, read all, delete;
#   4. extracting a tarball of ~4,000 source files, then rm -rf of the tree;
#   5. kmsfs only: rewrap after a rotation of 10,000 files, and of 1 GiB in 4 files;
#   6. peak RSS of each daemon through 1-4.
# Each filesystem runs the workload RUNS times (interleaved); the table shows medians and the
# ratio kmsfs/gocryptfs. Run as root (it drops the page cache).
#
#   scripts/bench.sh [--runs N] [--quick] [--plot [FILE.png]] [--out FILE.tsv] [--io-uring MODE]
#                    [--dir DIR]
#
# --io-uring: how kmsfs mounts (default on: FUSE over io_uring, turning on the fuse module's
# enable_uring; off: /dev/fuse like gocryptfs, whose go-fuse has no io_uring transport).
# --dir: put the key store, cipher dirs and plain directory under DIR instead of /dev/shm (a disk,
# to see what syncs and the backing filesystem cost; the ratios then include the disk).
# --quick: small sizes (smoke test of the script). --plot: a PNG bar chart (gnuplot) of every
# metric relative to gocryptfs (default docs/bench.png). Installs gocryptfs, fio, python3 and
# gnuplot with apt-get if missing; unmounts everything it mounted, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rustflags.sh
export LC_ALL=C
runs=3 quick=0 plot= out= io_uring=on base=/dev/shm
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --plot) plot=docs/bench.png; if [ $# -gt 1 ] && [[ "$2" == *.png ]]; then plot=$2; shift; fi; shift ;;
        --out) out=$2; shift 2 ;;
        --io-uring) io_uring=$2; shift 2 ;;
        --dir) base=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (it drops caches)" >&2; exit 2; }

need=()
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fio >/dev/null || need+=(fio)
command -v python3 >/dev/null || need+=(python3)
command -v fusermount3 >/dev/null || need+=(fuse3)
[ -z "$plot" ] || command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
kmsfs=$PWD/target/release/kmsfs

if [ "$quick" = 1 ]; then
    SEQ_MB=64 RAND_SIZE=32M FIO_RUNTIME=3 NSMALL=500 TREE_FILES=300 REWRAP_FILES=500 BIG_MB=16
else
    SEQ_MB=1024 RAND_SIZE=256M FIO_RUNTIME=${FIO_RUNTIME:-15} NSMALL=10000 TREE_FILES=4000
    REWRAP_FILES=10000 BIG_MB=256
fi
work=$(mktemp -d "$base/kmsfs-bench.XXXXXX")
results=$work/results.tsv
: >"$results"
pids=()
cleanup() {
    for m in "$work"/mnt-*; do
        [ -d "$m" ] && { fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

export KMSFS_KEYSTORE=$work/ks KMSFS_ROOT_KEY_FILE=$work/root.key
head -c 32 /dev/urandom >"$KMSFS_ROOT_KEY_FILE"
"$kmsfs" keystore init >/dev/null
"$kmsfs" key create --alias bench >/dev/null
printf 'bench-only-password\n' >"$work/pass"

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; } # fs run metric value
fio_field() { python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0]; print($2)" "$1"; }

# The same deterministic source tree for every filesystem (as fsbench.sh makes it).
tarball=$work/tree.tar
python3 - "$work/tree-src" "$TREE_FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20240601)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz_') for _ in range(rng.randint(2, 10)))
         for _ in range(2000)]
base, ln = [], 0
while ln < (1 << 20):
    line = ' '.join(rng.choice(words) for _ in range(rng.randint(1, 12))) + ';\n'
    base.append(line); ln += len(line)
base = ''.join(base).encode()
dirs = [root]
for a in range(12):
    da = os.path.join(root, 'mod%02d' % a); dirs.append(da)
    for b in range(rng.randint(3, 8)):
        db = os.path.join(da, 'sub%02d' % b); dirs.append(db)
        for c in range(rng.randint(0, 4)):
            dirs.append(os.path.join(db, 'leaf%02d' % c))
for d in dirs:
    os.makedirs(d, exist_ok=True)
files = []
for i in range(n):
    d = rng.choice(dirs)
    size = min(int(rng.lognormvariate(8.3, 1.3)), 256 << 10)
    off = rng.randrange(0, len(base) - size - 1)
    p = os.path.join(d, 'f%05d.%s' % (i, rng.choice(['c', 'h', 'rs', 'py', 'txt', 'md'])))
    with open(p, 'wb') as f:
        f.write(base[off:off + size])
    files.append(p)
for i in range(20):
    t = rng.choice(files)
    os.symlink(os.path.relpath(t, os.path.dirname(t)), t + '.lnk%d' % i)
PY
tar -C "$work/tree-src" -cf "$tarball" . && rm -rf "$work/tree-src"

# mount FS RUN -> prints the plaintext dir; the daemon pid goes to $work/pid-FS
mount_fs() {
    local fs=$1 c=$work/data-$1 m=$work/mnt-$1
    rm -rf "$c"; mkdir -p "$c" "$m"
    case "$fs" in
        plain) echo "$c"; return ;;
        kmsfs)
            "$kmsfs" init "$c" --key alias/bench >/dev/null
            "$kmsfs" mount "$c" "$m" --io-uring "$io_uring" >/dev/null
            pgrep -f -- "--daemon-child" | while read -r p; do
                grep -qF "$c" "/proc/$p/cmdline" 2>/dev/null && echo "$p"
            done | head -1 >"$work/pid-$fs" ;;
        gocryptfs)
            gocryptfs -init -q -passfile "$work/pass" "$c" >/dev/null
            gocryptfs -q -nosyslog -passfile "$work/pass" "$c" "$m" >"$work/gocryptfs.log" 2>&1 </dev/null
            pgrep -f "gocryptfs.*$c" | head -1 >"$work/pid-$fs" ;;
    esac
    echo "$m"
}
umount_fs() {
    local fs=$1 m=$work/mnt-$1
    [ "$fs" = plain ] && { rm -rf "$work/data-$1"; return; }
    fusermount3 -u "$m"
    local p; p=$(cat "$work/pid-$fs" 2>/dev/null || true)
    for _ in $(seq 100); do [ -n "$p" ] && kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    rm -rf "$work/data-$1"
}
peak_rss() { # fs -> MiB (VmHWM of the daemon)
    local p; p=$(cat "$work/pid-$1" 2>/dev/null || true)
    [ -n "$p" ] && awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$p/status" 2>/dev/null || echo ""
}

workload() { # fs run dir
    local fs=$1 r=$2 d=$3/w t0
    mkdir "$d"
    drop
    fio --name=seqwrite --filename="$d/seq.bin" --rw=write --bs=1M --size="${SEQ_MB}M" \
        --ioengine=psync --direct=0 --fallocate=none --end_fsync=1 \
        --output-format=json --output="$work/fio.json" >/dev/null
    record "$fs" "$r" seq_write "$(fio_field "$work/fio.json" "'%.1f' % (j['write']['bw_bytes']/2**20)")"
    drop
    t0=$(now); dd if="$d/seq.bin" of=/dev/null bs=1M status=none
    record "$fs" "$r" seq_read_cold "$(awk -v m="$SEQ_MB" -v s="$(since "$t0")" 'BEGIN{printf "%.1f", m/s}')"
    t0=$(now); dd if="$d/seq.bin" of=/dev/null bs=1M status=none
    record "$fs" "$r" seq_read_warm "$(awk -v m="$SEQ_MB" -v s="$(since "$t0")" 'BEGIN{printf "%.1f", m/s}')"
    rm -f "$d/seq.bin"
    local common=(--filename="$d/rand.bin" --size="$RAND_SIZE" --bs=4k --ioengine=psync
                  --direct=0 --fallocate=none --output-format=json --output="$work/fio.json")
    fio --name=layout "${common[@]}" --rw=write --bs=1M --end_fsync=1 >/dev/null
    drop
    fio --name=randread "${common[@]}" --rw=randread --time_based --runtime="$FIO_RUNTIME" >/dev/null
    record "$fs" "$r" rand_read_4k "$(fio_field "$work/fio.json" "round(j['read']['iops'])")"
    drop
    fio --name=randwrite "${common[@]}" --rw=randwrite --time_based --runtime="$FIO_RUNTIME" \
        --end_fsync=1 >/dev/null
    record "$fs" "$r" rand_write_4k "$(fio_field "$work/fio.json" "round(j['write']['iops'])")"
    rm -f "$d/rand.bin"
    mkdir "$d/small"
    t0=$(now)
    python3 - "$d/small" "$NSMALL" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
buf = bytes(rng.getrandbits(8) for _ in range(8192))
for a in range(10):
    for b in range(10):
        os.makedirs(os.path.join(root, 'd%d' % a, 'e%d' % b))
for i in range(n):
    p = os.path.join(root, 'd%d' % (i % 10), 'e%d' % ((i // 10) % 10), 'f%05d' % i)
    with open(p, 'wb') as f:
        f.write(buf[:rng.randint(1024, 8192)])
PY
    record "$fs" "$r" small_create "$(since "$t0")"
    drop; t0=$(now)
    find "$d/small" -type f -print0 | xargs -0 stat -c %s >/dev/null
    record "$fs" "$r" small_stat "$(since "$t0")"
    drop; t0=$(now)
    find "$d/small" -type f -print0 | xargs -0 cat >/dev/null
    record "$fs" "$r" small_read "$(since "$t0")"
    drop; t0=$(now)
    find "$d/small" -type f -delete
    record "$fs" "$r" small_delete "$(since "$t0")"
    rm -rf "$d/small"
    drop; mkdir "$d/tree"; t0=$(now)
    tar -xf "$tarball" -C "$d/tree"; sync -f "$d/tree"
    record "$fs" "$r" tar_extract "$(since "$t0")"
    t0=$(now); rm -rf "$d/tree"
    record "$fs" "$r" rm_rf_tree "$(since "$t0")"
    rm -rf "$d"
}

rewrap_bench() { # run
    local r=$1 t0 i
    for n in small big; do
        rm -rf "$work/data-rw-$n"; mkdir -p "$work/mnt-rw-$n"
        "$kmsfs" init "$work/data-rw-$n" --key alias/bench >/dev/null
        "$kmsfs" mount "$work/data-rw-$n" "$work/mnt-rw-$n" --io-uring "$io_uring" >/dev/null
    done
    python3 - "$work/mnt-rw-small" "$REWRAP_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(100):
    os.makedirs(os.path.join(root, 'd%d' % d))
for i in range(n):
    with open(os.path.join(root, 'd%d' % (i % 100), 'f%d' % i), 'wb') as f:
        f.write(b'x' * (i % 7 + 1))
PY
    for i in 1 2 3 4; do
        dd if=/dev/zero of="$work/mnt-rw-big/f$i" bs=1M count="$BIG_MB" status=none
    done
    "$kmsfs" key rotate alias/bench >/dev/null
    t0=$(now); "$kmsfs" rewrap -q "$work/mnt-rw-small" >/dev/null
    record kmsfs "$r" rewrap_10k_files "$(since "$t0")"
    t0=$(now); "$kmsfs" rewrap -q "$work/mnt-rw-big" >/dev/null
    record kmsfs "$r" rewrap_1gib_4_files "$(since "$t0")"
    for n in small big; do
        fusermount3 -u "$work/mnt-rw-$n"; sleep 0.2; rm -rf "$work/data-rw-$n"
    done
}

for r in $(seq 1 "$runs"); do
    for fs in plain kmsfs gocryptfs; do
        echo "run $r/$runs: $fs" >&2
        dir=$(mount_fs "$fs")
        workload "$fs" "$r" "$dir"
        [ "$fs" = plain ] || record "$fs" "$r" peak_rss_mib "$(peak_rss "$fs")"
        umount_fs "$fs"
    done
    echo "run $r/$runs: rewrap" >&2
    rewrap_bench "$r"
done
[ -z "$out" ] || cp "$results" "$out"

python3 - "$results" "$work/table.tsv" <<'PY'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    fs, run, metric, value = line.rstrip('\n').split('\t')
    if value:
        rows[(metric, fs)].append(float(value))
metrics = ['seq_write', 'seq_read_cold', 'seq_read_warm', 'rand_read_4k', 'rand_write_4k', 'small_create',
           'small_stat', 'small_read', 'small_delete', 'tar_extract', 'rm_rf_tree',
           'peak_rss_mib', 'rewrap_10k_files', 'rewrap_1gib_4_files']
unit = {'seq_write': 'MiB/s', 'seq_read_cold': 'MiB/s', 'seq_read_warm': 'MiB/s',
        'rand_read_4k': 'IOPS',
        'rand_write_4k': 'IOPS', 'peak_rss_mib': 'MiB'}
higher = {'seq_write', 'seq_read_cold', 'seq_read_warm', 'rand_read_4k', 'rand_write_4k'}
target = {'seq_write': '>= 2.0', 'seq_read_cold': '>= 1.5', 'seq_read_warm': '>= 1.5',
          'rand_read_4k': '>= 2.0',
          'rand_write_4k': '>= 2.0', 'small_create': '<= 0.5', 'small_stat': '<= 0.5',
          'small_read': '<= 0.5', 'small_delete': '<= 0.5', 'tar_extract': '<= 0.5',
          'rm_rf_tree': '<= 0.5', 'peak_rss_mib': 'kmsfs <= 64 MiB',
          'rewrap_10k_files': 'kmsfs <= 2 s', 'rewrap_1gib_4_files': 'kmsfs <= 0.1 s'}
med = lambda m, fs: statistics.median(rows[(m, fs)]) if rows.get((m, fs)) else None
fmt = lambda v: '-' if v is None else ('%.0f' % v if v >= 100 else '%.3g' % v)
print('%-20s %-6s %10s %10s %10s %9s  %s' % ('metric', 'unit', 'plain', 'kmsfs', 'gocryptfs',
                                             'k/g', 'target (k/g)'))
with open(sys.argv[2], 'w') as t:
    for m in metrics:
        p, k, g = med(m, 'plain'), med(m, 'kmsfs'), med(m, 'gocryptfs')
        ratio = k / g if k is not None and g else None
        n = len(rows.get((m, 'kmsfs'), []))
        print('%-20s %-6s %10s %10s %10s %9s  %s (n=%d)' % (
            m, unit.get(m, 's'), fmt(p), fmt(k), fmt(g),
            '-' if ratio is None else '%.2f' % ratio, target[m], n))
        if k is not None and g is not None and m != 'peak_rss_mib':
            # Speed relative to gocryptfs: above 1 is faster.
            rel = (lambda x: x / g) if m in higher else (lambda x: g / x)
            t.write('%s\t%.3f\t%.3f\t%.3f\n' % (m, rel(p) if p else 0, rel(k), 1.0))
PY

if [ -n "$plot" ]; then
    mkdir -p "$(dirname "$plot")"
    gnuplot <<EOF
set terminal pngcairo size 1200,560 font "sans,10" noenhanced
set output "$plot"
set logscale y 10
set title "kmsfs vs gocryptfs, speed relative to gocryptfs (higher is better; median of $runs runs, ciphertext on tmpfs)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -30
set ylabel "relative speed (gocryptfs = 1, log scale)"
set yrange [0.2:*]
set grid ytics
set key top left
plot "$work/table.tsv" using 3:xtic(1) title "kmsfs" lc rgb "#2b7bba", \
     "" using 4 title "gocryptfs" lc rgb "#d95f02", \
     "" using 2 title "plain tmpfs (ceiling)" lc rgb "#999999"
EOF
    echo "plot written to $plot" >&2
fi
