#!/usr/bin/env bash
# Benchmark cryptbucket against its peers in ONE run and print one table (issue 6).
# Not part of the default test run (scripts/test.sh never calls it).
#
#   bash scripts/bench.sh [--quick] [--only local|s3] [--size SIZE] [--files N] [options]
#
# Filesystems, each on the same disk / the same local S3 server (moto, scripts/s3-server.sh):
#   local: cryptbucket (local directory backend), gocryptfs, the bare disk (reference)
#   s3:    cryptbucket (S3 backend), rclone mount of an rclone crypt remote
#          (--vfs-cache-mode full), s3fs (no encryption)
# Workloads on each (all timed with wall clocks):
#   seq write   dd bs=1M of a random file (conv=fsync)                     MB/s
#               (local side: after one unmeasured warm-up write of the same size)
#   +flush      the same plus the flush/unmount that makes it durable       MB/s
#   cold read   dd bs=1M after unmount, drop_caches, remount (fresh cache)  MB/s
#   untar       tar -x of N files of 1-64 KiB (plus: incl. flush/unmount)   files/s
#   stat        find | xargs stat after unmount, drop_caches, remount       s
#   grep -r     grep -r over every file                                     s
#   rm -rf      delete the whole tree                                       s
#   stat again  the same find | xargs stat once more (kernel caches warm)     s
#   plus mount and final unmount times, peak daemon RSS (VmHWM, max over every daemon
#   process of that filesystem) and the total wall time per filesystem.
# cryptbucket only: backend requests (its `status --json` counters) for untar incl. flush and
# for the cold and warm stat passes (both must be 0: cached metadata makes no request); on S3,
# a 16-thread boto3 download of the same chunk objects its cold read fetched, the reference
# for the cold-read target (printed under the table as a percentage).
# Ratios are cryptbucket's advantage over the peer: >1 means cryptbucket is better
# (faster, or less memory). The table is also written to bench/results/<timestamp>.md.
#
# Options:
#   --quick            smoke test: 64 MiB big file and 500 small files (local and S3)
#   --only local|s3    run only one side
#   --size SIZE        big-file size for both sides (e.g. 2G, 256M, 512 = MiB);
#                      default 2G local, 1G S3 (the cold-read target names 1 GiB;
#                      moto keeps all data in RAM: ~4 GiB for the three filesystems)
#   --local-size SIZE, --s3-size SIZE    the same, one side only
#   --files N          number of small files for both sides; default 20000 local, 2000 S3
#   --local-files N, --s3-files N        the same, one side only
#   --dir DIR          work directory (stores, mountpoints, caches); default /var/tmp.
#                      It must be on the disk you want to measure.
#   --keep             keep the work directory (logs) after the run
#   --no-build         use an existing release binary (CRYPTBUCKET_BIN or the target dir)
#   --crypto [--quick] only the crypto benchmarks: seal/open GB/s per core for both ciphers
#                      next to `openssl speed` (scripts/bench-crypto.sh)
#
# Setup done by the script: installs gocryptfs, rclone, s3fs, fio and fuse3 with apt-get when
# missing (sudo if not root), installs/starts a private moto server (own state dir, stopped on
# exit), builds cryptbucket --release (CARGO_TARGET_DIR, default ~/.cache/cryptbucket/target).
# Needs root (or sudo) for `echo 3 > /proc/sys/vm/drop_caches`. Every mount it makes is
# unmounted on exit, also on failure or Ctrl-C. A filesystem that fails is reported as FAIL
# in the table (and the script exits 1); the others still run.
#
# rclone: run with --vfs-write-back 0s (upload as soon as a file is closed, its best case)
# and --rc, so "+flush" waits until its upload queue is empty; its durable time is then the
# time until the data is in the bucket, as for the others. AWS_CA_BUNDLE is unset for rclone
# and s3fs (rclone fails to load it for a plain-http endpoint).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD

# ---------------------------------------------------------------------------------------------
# Arguments
QUICK=0
ONLY=""
LOCAL_SIZE="" S3_SIZE="" LOCAL_FILES="" S3_FILES=""
BASE_DIR=/var/tmp
KEEP=0
BUILD=1

die() { echo "bench: error: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (try --help)"; }
# SIZE -> MiB: 2G, 256M, 512 (MiB), 1024K
to_mib() {
    local v=$1 n
    case "$v" in
        *[gG] | *[gG]i[bB] | *[gG][bB]) n=${v%%[gG]*}; echo $((n * 1024)) ;;
        *[mM] | *[mM]i[bB] | *[mM][bB]) n=${v%%[mM]*}; echo $((n)) ;;
        *[kK] | *[kK]i[bB] | *[kK][bB]) n=${v%%[kK]*}; echo $((n / 1024)) ;;
        *) echo $((v)) ;;
    esac
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while [ $# -gt 0 ]; do
    case "$1" in
        # Only the crypto micro-benchmarks (Criterion) next to `openssl speed`.
        --crypto) shift; exec bash "$(dirname "$0")/bench-crypto.sh" "$@" ;;
        --quick) QUICK=1 ;;
        --only) need_arg "$@"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --size) need_arg "$@"; LOCAL_SIZE=$2; S3_SIZE=$2; shift ;;
        --local-size) need_arg "$@"; LOCAL_SIZE=$2; shift ;;
        --s3-size) need_arg "$@"; S3_SIZE=$2; shift ;;
        --files) need_arg "$@"; LOCAL_FILES=$2; S3_FILES=$2; shift ;;
        --local-files) need_arg "$@"; LOCAL_FILES=$2; shift ;;
        --s3-files) need_arg "$@"; S3_FILES=$2; shift ;;
        --dir) need_arg "$@"; BASE_DIR=$2; shift ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
case "$ONLY" in "" | local | s3) ;; *) die "--only takes local or s3, not '$ONLY'" ;; esac

if [ "$QUICK" = 1 ]; then
    DEF_LOCAL_SIZE=64 DEF_S3_SIZE=64 DEF_LOCAL_FILES=500 DEF_S3_FILES=500
else
    DEF_LOCAL_SIZE=2048 DEF_S3_SIZE=1024 DEF_LOCAL_FILES=20000 DEF_S3_FILES=2000
fi
LOCAL_MIB=$([ -n "$LOCAL_SIZE" ] && to_mib "$LOCAL_SIZE" || echo "$DEF_LOCAL_SIZE")
S3_MIB=$([ -n "$S3_SIZE" ] && to_mib "$S3_SIZE" || echo "$DEF_S3_SIZE")
LOCAL_N=${LOCAL_FILES:-$DEF_LOCAL_FILES}
S3_N=${S3_FILES:-$DEF_S3_FILES}
for v in "$LOCAL_MIB" "$S3_MIB" "$LOCAL_N" "$S3_N"; do
    is_uint "$v" && [ "$v" -gt 0 ] || die "sizes and file counts must be positive integers (got '$v')"
done
RUN_LOCAL=1 RUN_S3=1
[ "$ONLY" = local ] && RUN_S3=0
[ "$ONLY" = s3 ] && RUN_LOCAL=0

# ---------------------------------------------------------------------------------------------
# Helpers
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root or sudo (apt-get, drop_caches)"
    SUDO=(sudo)
fi
as_root() { "${SUDO[@]}" "$@"; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# timed CMD...: runs CMD, sets T to its wall time in seconds (fails if CMD fails).
T=0
timed() {
    local s=$EPOCHREALTIME
    "$@"
    T=$(awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
}
# rec FS KEY VALUE: one measurement into the results file.
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/results.tsv"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "" }'; }
mbs() { awk -v m="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.3f", m * 1048576 / 1e6 / t; else print "" }'; } # MiB s -> MB/s
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }

drop_caches() {
    sync
    echo 3 | as_root tee /proc/sys/vm/drop_caches >/dev/null
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_mounted() { # MNT PID
    local i
    for i in $(seq 1 300); do
        mountpoint -q "$1" && return 0
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            log "daemon for $1 exited before mounting"
            return 1
        fi
        sleep 0.1
    done
    log "$1 not mounted after 30 s"
    return 1
}
wait_gone() { # PID [seconds]
    local i
    for i in $(seq 1 $((${2:-300} * 10))); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}
# Peak RSS sampler: VmHWM of PID (kB), rewritten every 0.2 s while it lives.
watch_rss() { # FS PID
    local fs=$1 pid=$2 out="$WORK/rss.$1.$2"
    (
        while [ -r "/proc/$pid/status" ]; do
            v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$v" ] && echo "$v" >"$out"
            sleep 0.2
        done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >>"$WORK/pids"
}
peak_rss_mib() { # FS (prints nothing when no daemon ran, e.g. the bare disk)
    local f
    for f in "$WORK"/rss."$1".*; do if [ -f "$f" ]; then cat "$f"; fi; done | awk 'BEGIN { m = 0 } { if ($1 > m) m = $1 } END { if (m > 0) printf "%.1f", m / 1024 }'
}

# ---------------------------------------------------------------------------------------------
# Cleanup: every mount made by this run, every daemon started, the S3 server.
WORK=""
CB=""
RUN_PID=""
S3_STARTED=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
        # Interrupted mid-run: stop the workload (dd, tar, ...) but not the FUSE daemons,
        # which the unmounts below stop cleanly.
        local child
        for child in $(pgrep -P "$RUN_PID"); do
            grep -qx "$child" "$WORK/pids" 2>/dev/null || kill "$child" 2>/dev/null
        done
        kill "$RUN_PID" 2>/dev/null
        wait "$RUN_PID" 2>/dev/null
    fi
    if [ -n "$WORK" ] && [ -f "$WORK/mounts" ]; then
        local kind mnt
        while read -r kind mnt; do
            mountpoint -q "$mnt" 2>/dev/null || continue
            log "cleanup: unmounting $mnt ($kind)"
            if [ "$kind" = cryptbucket ]; then
                [ -n "$CB" ] && timeout 300 "$CB" unmount "$mnt" >/dev/null 2>&1
            else
                fusermount3 -u "$mnt" 2>/dev/null
            fi
            mountpoint -q "$mnt" 2>/dev/null && { fusermount3 -uz "$mnt" 2>/dev/null || as_root umount -l "$mnt"; }
        done < <(tac "$WORK/mounts")
    fi
    if [ -n "$WORK" ] && [ -f "$WORK/pids" ]; then
        local pid
        while read -r pid; do
            kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null
        done <"$WORK/pids"
    fi
    if [ "$S3_STARTED" = 1 ]; then
        scripts/s3-server.sh stop >/dev/null 2>&1
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if grep -qF " $WORK/" /proc/mounts; then
            log "cleanup: something is still mounted under $WORK; leaving it in place"
        elif [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Setup
T_START=$EPOCHREALTIME
mkdir -p "$BASE_DIR"
WORK=$(mktemp -d "$BASE_DIR/cryptbucket-bench.XXXXXX")
: >"$WORK/mounts"
: >"$WORK/pids"
: >"$WORK/results.tsv"
mkdir -p "$WORK/logs"
log "work directory $WORK (on $(df --output=source "$WORK" | tail -1))"

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v gocryptfs >/dev/null || missing+=(gocryptfs)
command -v rclone >/dev/null || missing+=(rclone)
command -v s3fs >/dev/null || missing+=(s3fs)
command -v fio >/dev/null || missing+=(fio)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2
fi

if [ "$BUILD" = 1 ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cryptbucket/target}
    log "building cryptbucket --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --quiet --bin cryptbucket >&2
    CB=$CARGO_TARGET_DIR/release/cryptbucket
else
    CB=${CRYPTBUCKET_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/cryptbucket/target}/release/cryptbucket}
fi
[ -x "$CB" ] || die "cryptbucket binary not found at $CB"

PASS=bench-passphrase
echo "$PASS" >"$WORK/passfile"
chmod 600 "$WORK/passfile"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1

if [ "$RUN_S3" = 1 ]; then
    export CRYPTBUCKET_S3_STATE="$WORK/s3-server" # a private server: never stop someone else's
    scripts/s3-server.sh install
    S3_STARTED=1
    eval "$(scripts/s3-server.sh start)"
    EP=$CRYPTBUCKET_TEST_S3_ENDPOINT
    MOTO_PID=$(cat "$CRYPTBUCKET_S3_STATE/moto.pid")
    for b in cb-bench rclone-bench s3fs-bench; do
        curl -sf -X PUT "$EP/$b" >/dev/null || die "cannot create bucket $b on $EP"
    done
    log "S3 server $EP (moto pid $MOTO_PID)"
fi

# Random (incompressible) source for the big file, kept hot in the page cache before writes.
make_source() { # MiB -> path
    local f="$WORK/src.$1.bin"
    [ -f "$f" ] || head -c $(($1 * 1048576)) /dev/urandom >"$f"
    echo "$f"
}
# Tarball of N files of 1-64 KiB (base64 text; every 10th file holds a needle for grep).
NEEDLE=CRYPTBUCKET_BENCH_NEEDLE
make_tarball() { # N -> path
    local f="$WORK/files.$1.tar"
    [ -f "$f" ] || python3 - "$1" "$f" "$NEEDLE" <<'PYEOF'
import base64, io, random, sys, tarfile, time
n, out, needle = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = random.Random(6)
now = int(time.time())
def add_dir(tf, name):
    ti = tarfile.TarInfo(name); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = now
    tf.addfile(ti)
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tf:
    add_dir(tf, "tree")
    made = set()
    for i in range(n):
        d1, d2 = "d%02d" % (i // 1000), "e%02d" % (i // 100 % 10)
        for d in ("tree/" + d1, "tree/%s/%s" % (d1, d2)):
            if d not in made:
                add_dir(tf, d); made.add(d)
        size = rng.randint(1024, 65536)
        raw = base64.encodebytes(rng.randbytes(size * 3 // 4 + 3))
        data = raw[:size]
        if i % 10 == 0:
            data = (needle + "\n").encode() + data[len(needle) + 1:]
        ti = tarfile.TarInfo("tree/%s/%s/f%06d.txt" % (d1, d2, i))
        ti.size = len(data); ti.mode = 0o644; ti.mtime = now
        tf.addfile(ti, io.BytesIO(data))
PYEOF
    echo "$f"
}

# ---------------------------------------------------------------------------------------------
# Filesystems: setup_FS, mount_FS MNT (fresh caches every time), unmount_FS MNT (returns once
# everything is durable), flush_FS MNT (wait for background uploads; most have none).
NMOUNT=0
# A fresh cache dir per mount. It is called as $(next_cache ...), a subshell, so a counter
# variable would never advance: every remount got the same dir and found the data it had
# cached before (rclone's "cold" reads and grep were served from its cache).
next_cache() { mkdir -p "$WORK/cache" && mktemp -d "$WORK/cache/$1.XXXXXX"; }
register_mount() { echo "$1 $2" >>"$WORK/mounts"; }
flush_none() { :; }

# bare disk: a plain directory; "unmount" = sync
setup_disk() { mkdir -p "$WORK/disk-plain"; }
mount_disk() { :; }
unmount_disk() { sync; }
mnt_disk() { echo "$WORK/disk-plain"; }

# cryptbucket, local directory backend / S3 backend
cb_pid() { # MNT -> daemon pid
    local real h pf
    real=$(realpath "$1")
    h=$(printf '%s' "$real" | sha256sum | cut -c1-32)
    pf="${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/cryptbucket}"
    pf="${pf:-${TMPDIR:-/tmp}/cryptbucket-$(id -u)}/$h.pid"
    if [ -s "$pf" ]; then cat "$pf"; else pgrep -f -n -- "mount .*$real.*--daemon-child"; fi
}
cb_mount() { # FS STORE MNT [extra args]
    local fs=$1 store=$2 mnt=$3 cache pid
    shift 3
    cache=$(next_cache "$fs")
    register_mount cryptbucket "$mnt"
    CRYPTBUCKET_PASSPHRASE=$PASS "$CB" mount "$store" "$mnt" --cache-dir "$cache" "$@" \
        >>"$WORK/logs/$fs.log" 2>&1
    wait_mounted "$mnt"
    pid=$(cb_pid "$mnt")
    [ -n "$pid" ] || { log "cannot find the cryptbucket daemon for $mnt"; return 1; }
    watch_rss "$fs" "$pid"
}
cb_unmount() { "$CB" unmount "$1" >>"$WORK/logs/cryptbucket.log" 2>&1; }

setup_cb_local() {
    CRYPTBUCKET_PASSPHRASE=$PASS "$CB" init "$WORK/cb-store" >>"$WORK/logs/cb_local.log" 2>&1
}
# "flush" = everything written is in the store and committed (the request counts after it
# then cover the whole untar).
flush_cb() { "$CB" sync "$1" >/dev/null; }
flush_cb_local() { flush_cb "$1"; }
flush_cb_s3() { flush_cb "$1"; }
mount_cb_local() { cb_mount cb_local "$WORK/cb-store" "$1"; }
unmount_cb_local() { cb_unmount "$1"; }

setup_cb_s3() {
    CRYPTBUCKET_PASSPHRASE=$PASS "$CB" init s3://cb-bench/vol --endpoint "$EP" \
        >>"$WORK/logs/cb_s3.log" 2>&1
}
mount_cb_s3() { cb_mount cb_s3 s3://cb-bench/vol "$1" --endpoint "$EP"; }
unmount_cb_s3() { cb_unmount "$1"; }

# FUSE daemons run in the foreground (background job), so we know their pid.
DAEMON_PID=""
fg_daemon() { # FS MNT CMD... : start, wait until mounted, watch RSS
    local fs=$1 mnt=$2
    shift 2
    register_mount "$fs" "$mnt"
    "$@" </dev/null >>"$WORK/logs/$fs.log" 2>&1 &
    DAEMON_PID=$!
    echo "$DAEMON_PID" >>"$WORK/pids"
    echo "$DAEMON_PID" >"$WORK/daemon.$fs"
    wait_mounted "$mnt" "$DAEMON_PID"
    watch_rss "$fs" "$DAEMON_PID"
}
fg_unmount() { # FS MNT
    local pid
    pid=$(cat "$WORK/daemon.$1")
    fusermount3 -u "$2"
    wait_gone "$pid" 300 || { log "$1 daemon $pid still running 300 s after unmount"; return 1; }
}

setup_gocryptfs() {
    mkdir -p "$WORK/gocryptfs-cipher"
    gocryptfs -init -q -passfile "$WORK/passfile" "$WORK/gocryptfs-cipher" >>"$WORK/logs/gocryptfs.log" 2>&1
}
mount_gocryptfs() { fg_daemon gocryptfs "$1" gocryptfs -fg -q -passfile "$WORK/passfile" "$WORK/gocryptfs-cipher" "$1"; }
unmount_gocryptfs() { fg_unmount gocryptfs "$1"; }

RCLONE_CONF=""
RC_PORT=""
setup_rclone() {
    RCLONE_CONF="$WORK/rclone.conf"
    cat >"$RCLONE_CONF" <<EOF
[bs3]
type = s3
provider = Other
env_auth = false
access_key_id = test
secret_access_key = test
region = us-east-1
endpoint = $EP
force_path_style = true
# rclone 1.60's multipart uploads get "400 Bad Request" from moto: single PUTs up to 5 GiB.
upload_cutoff = 5G

[bcrypt]
type = crypt
remote = bs3:rclone-bench/vol
password = $(rclone obscure "$PASS")
EOF
}
rclone_env() { env -u AWS_CA_BUNDLE "$@"; }
mount_rclone() {
    local cache
    cache=$(next_cache rclone)
    RC_PORT=$(free_port)
    fg_daemon rclone "$1" env -u AWS_CA_BUNDLE rclone mount bcrypt: "$1" --config "$RCLONE_CONF" \
        --vfs-cache-mode full --cache-dir "$cache" --vfs-write-back 0s \
        --rc --rc-addr "127.0.0.1:$RC_PORT" --rc-no-auth
}
flush_rclone() { # wait until rclone's VFS has nothing left to upload
    # Zero for 2 s in a row: a file closed a moment ago is not in rclone's queue yet (with a
    # single zero reading, rclone lost files at unmount).
    local i out zero=0
    for i in $(seq 1 6000); do
        out=$(rclone_env rclone rc --url "http://127.0.0.1:$RC_PORT/" vfs/stats 2>/dev/null) || out=""
        if [ -n "$out" ] && python3 -c '
import json, sys
d = json.load(sys.stdin).get("diskCache", {})
sys.exit(0 if d.get("uploadsInProgress", 1) == 0 and d.get("uploadsQueued", 1) == 0 else 1)' <<<"$out"; then
            zero=$((zero + 1))
            [ "$zero" -ge 20 ] && return 0
        else
            zero=0
        fi
        sleep 0.1
    done
    log "rclone uploads did not finish within 600 s"
    return 1
}
unmount_rclone() { flush_rclone && fg_unmount rclone "$1"; }

setup_s3fs() {
    echo "test:test" >"$WORK/s3fs.passwd"
    chmod 600 "$WORK/s3fs.passwd"
}
mount_s3fs() {
    fg_daemon s3fs "$1" env -u AWS_CA_BUNDLE s3fs s3fs-bench "$1" -f \
        -o url="$EP" -o use_path_request_style -o passwd_file="$WORK/s3fs.passwd" \
        -o endpoint=us-east-1
}
unmount_s3fs() { fg_unmount s3fs "$1"; }

# Backend requests a cryptbucket daemon made since it started (`status --json`); "" for peers.
cb_requests() { # FS MNT
    case "$1" in cb_*) "$CB" status --json "$2" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["backend"]["requests"])' ||
        true ;;
    esac
}

# The same chunk objects cryptbucket just read, downloaded straight from the server by 16
# threads (boto3 from the moto venv): the reference for the cold-read target (issue 6).
direct_download() {
    "$HOME/.cache/cryptbucket/venv/bin/python" - "$EP" cb-bench vol/d/ <<'PYEOF'
import sys, time, concurrent.futures as cf
import boto3
from botocore.config import Config
ep, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="test",
                  aws_secret_access_key="test", config=Config(max_pool_connections=32))
keys, tok = [], None
while True:
    kw = dict(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": tok} if tok else {}))
    r = s3.list_objects_v2(**kw)
    keys += [o["Key"] for o in r.get("Contents", [])]
    if not r.get("IsTruncated"):
        break
    tok = r["NextContinuationToken"]
t = time.time()
with cf.ThreadPoolExecutor(16) as ex:
    n = sum(ex.map(lambda k: len(s3.get_object(Bucket=bucket, Key=k)["Body"].read()), keys))
print("%.1f" % (n / 1e6 / (time.time() - t)))
PYEOF
}

# ---------------------------------------------------------------------------------------------
# One filesystem through every workload.
bench_fs() { # FS MiB N
    local fs=$1 mib=$2 n=$3 mnt src tar t_w t_f t0 cnt nf
    local t_fs=$EPOCHREALTIME
    src=$(make_source "$mib")
    tar=$(make_tarball "$n")
    if [ "$fs" = disk ]; then mnt=$(mnt_disk); else mnt="$WORK/mnt/$fs"; mkdir -p "$mnt"; fi
    local flush=flush_none
    declare -F "flush_$fs" >/dev/null && flush="flush_$fs"

    log "$fs: setup and mount"
    "setup_$fs"
    timed "mount_$fs" "$mnt"
    rec "$fs" mount_s "$T"

    cat "$src" >/dev/null
    case $fs in
    cb_local | gocryptfs | disk)
        # Warm-up write, not measured: on a VM that hands freed memory back to its host,
        # whichever filesystem runs first after a quiet spell pays for touching fresh
        # pages, and the order of the runs decided the write ratio (0.55x-1.40x).
        log "$fs: warm-up write of $mib MiB (not measured)"
        dd if="$src" of="$mnt/warmup" bs=1M conv=fsync status=none
        rm -f "$mnt/warmup"
        ;;
    esac
    log "$fs: sequential write of $mib MiB"
    timed dd if="$src" of="$mnt/big" bs=1M conv=fsync status=none
    t_w=$T
    rec "$fs" write_mbs "$(mbs "$mib" "$t_w")"
    timed "unmount_$fs" "$mnt"
    t_f=$T
    rec "$fs" write_durable_mbs "$(mbs "$mib" "$(add "$t_w" "$t_f")")"

    log "$fs: cold sequential read"
    drop_caches
    "mount_$fs" "$mnt"
    timed dd if="$mnt/big" of=/dev/null bs=1M status=none
    rec "$fs" read_mbs "$(mbs "$mib" "$T")"
    cmp -s "$src" "$mnt/big" || { log "$fs: big file read back differs from what was written"; return 1; }
    if [ "$fs" = cb_s3 ]; then
        log "$fs: direct parallel download of the same objects"
        rec "$fs" direct_mbs "$(direct_download)"
    fi
    rm -f "$mnt/big"
    # The big file's deletion reaches the store before the untar's requests are counted.
    "$flush" "$mnt" >/dev/null
    local r_untar
    r_untar=$(cb_requests "$fs" "$mnt")

    log "$fs: untar $n files"
    cat "$tar" >/dev/null
    timed tar -xf "$tar" -C "$mnt"
    t_w=$T
    rec "$fs" untar_fps "$(div "$n" "$t_w")"
    timed "$flush" "$mnt"
    t_f=$T
    # Counted from just before the untar (until 2026-12-01 from the mount, so the cold read's
    # GETs of the big file were in it: 64 with 256 MiB, 256 with 1 GiB).
    [ -n "$r_untar" ] && rec "$fs" req_untar "$(($(cb_requests "$fs" "$mnt") - r_untar))"
    timed "unmount_$fs" "$mnt"
    rec "$fs" untar_durable_fps "$(div "$n" "$(add "$t_w" "$(add "$t_f" "$T")")")"

    log "$fs: find | xargs stat, grep -r, rm -rf"
    drop_caches
    "mount_$fs" "$mnt"
    local r0
    r0=$(cb_requests "$fs" "$mnt")
    timed bash -c 'cd "$1" && find . -print0 | xargs -0 stat >/dev/null' _ "$mnt"
    rec "$fs" stat_s "$T"
    [ -n "$r0" ] && rec "$fs" req_stat "$(($(cb_requests "$fs" "$mnt") - r0))"
    timed bash -c 'cd "$1" && find . -print0 | xargs -0 stat >/dev/null' _ "$mnt"
    rec "$fs" stat2_s "$T"
    [ -n "$r0" ] && rec "$fs" req_stat2 "$(($(cb_requests "$fs" "$mnt") - r0))"
    t0=$EPOCHREALTIME
    cnt=$(grep -r -l -F "$NEEDLE" "$mnt/tree" | wc -l)
    T=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    rec "$fs" grep_s "$T"
    [ "$cnt" -eq $(((n + 9) / 10)) ] || { log "$fs: grep found $cnt needle files, expected $(((n + 9) / 10))"; return 1; }
    nf=$(find "$mnt/tree" -type f | wc -l)
    [ "$nf" -eq "$n" ] || { log "$fs: $nf files after untar, expected $n"; return 1; }
    timed rm -rf "$mnt/tree"
    rec "$fs" rm_s "$T"
    timed "$flush" "$mnt"
    t_f=$T
    timed "unmount_$fs" "$mnt"
    rec "$fs" unmount_s "$(add "$t_f" "$T")"

    rec "$fs" rss_mib "$(peak_rss_mib "$fs")"
    rec "$fs" wall_s "$(awk -v a="$t_fs" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    log "$fs: done"
}

FAILED=()
run_fs() { # FS MiB N
    log "==> $1"
    local rc
    set +e
    # In the background so that a signal to this script interrupts `wait` at once (a trap
    # would otherwise wait for the whole filesystem run to finish); cleanup stops it.
    (
        set -eE
        trap 'log "$1: command failed (line $LINENO): $BASH_COMMAND"' ERR
        bench_fs "$@"
    ) &
    RUN_PID=$!
    wait "$RUN_PID"
    rc=$?
    RUN_PID=""
    set -e
    if [ "$rc" -ne 0 ]; then
        log "$1: FAILED (exit $rc); see $WORK/logs/"
        tail -n 5 "$WORK/logs/$1.log" 2>/dev/null | sed "s/^/    $1.log: /" >&2 || true
        rec "$1" failed 1
        FAILED+=("$1")
        # leave nothing mounted for the next filesystem
        local mnt="$WORK/mnt/$1"
        if mountpoint -q "$mnt" 2>/dev/null; then
            if [ "$1" = cb_local ] || [ "$1" = cb_s3 ]; then timeout 300 "$CB" unmount "$mnt" >/dev/null 2>&1 || true; fi
            fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
        fi
    fi
}

if [ "$RUN_LOCAL" = 1 ]; then
    for fs in cb_local gocryptfs disk; do run_fs "$fs" "$LOCAL_MIB" "$LOCAL_N"; done
fi
if [ "$RUN_S3" = 1 ]; then
    for fs in cb_s3 rclone s3fs; do run_fs "$fs" "$S3_MIB" "$S3_N"; done
fi

# ---------------------------------------------------------------------------------------------
# The table
TS=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$REPO_ROOT/bench/results"
OUT="$REPO_ROOT/bench/results/$TS.md"
python3 - "$WORK/results.tsv" "$RUN_LOCAL" "$RUN_S3" >"$OUT.tmp" <<'PYEOF'
import sys
path, run_local, run_s3 = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
res = {}
for line in open(path):
    fs, k, v = line.rstrip("\n").split("\t")
    res.setdefault(fs, {})[k] = v
rows = [  # key, label, higher is better
    ("write_mbs", "seq write, dd bs=1M conv=fsync (MB/s)", True),
    ("write_durable_mbs", "seq write incl. flush+unmount (MB/s)", True),
    ("read_mbs", "cold seq read after remount (MB/s)", True),
    ("untar_fps", "untar (files/s)", True),
    ("untar_durable_fps", "untar incl. flush+unmount (files/s)", True),
    ("stat_s", "find \\| xargs stat, cold (s)", False),
    ("grep_s", "grep -r (s)", False),
    ("rm_s", "rm -rf (s)", False),
    ("mount_s", "mount (s)", False),
    ("unmount_s", "final unmount (s)", False),
    ("rss_mib", "peak daemon RSS (MiB)", False),
    ("direct_mbs", "direct 16-thread download of the same objects (MB/s)", True),
    ("req_untar", "backend requests: untar incl. flush", False),
    ("req_stat", "backend requests: cold find \\| xargs stat (after mount)", False),
    ("req_stat2", "backend requests: + the same stat again (cached)", False),
    ("stat2_s", "find \\| xargs stat again, warm (s)", False),
    ("wall_s", "total wall time (s)", False),
]
cols, ratios = [], []
if run_local:
    cols += [("cb_local", "cryptbucket local"), ("gocryptfs", "gocryptfs"), ("disk", "bare disk")]
    ratios += [("cb_local", "gocryptfs", "cb/gocryptfs"), ("cb_local", "disk", "cb/disk")]
if run_s3:
    cols += [("cb_s3", "cryptbucket S3"), ("rclone", "rclone crypt"), ("s3fs", "s3fs")]
    ratios += [("cb_s3", "rclone", "cb/rclone"), ("cb_s3", "s3fs", "cb/s3fs")]
def val(fs, k):
    d = res.get(fs, {})
    if d.get("failed") and k not in d:
        return "FAIL"
    v = d.get(k, "")
    return v if v != "" else "n/a"
def num(fs, k):
    try:
        return float(res.get(fs, {}).get(k, ""))
    except ValueError:
        return None
def fmt(s):
    try:
        x = float(s)
    except ValueError:
        return s
    return "%.0f" % x if x >= 100 else "%.1f" % x if x >= 10 else "%.2f" % x
head = ["workload"] + [c[1] for c in cols] + [r[2] for r in ratios]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
for k, label, hib in rows:
    if not any(res.get(fs, {}).get(k, "") for fs, _ in cols):
        continue
    line = [label] + [fmt(val(fs, k)) if not k.startswith("req_") else val(fs, k) for fs, _ in cols]
    for a, b, _ in ratios:
        x, y = num(a, k), num(b, k)
        if x is None or y is None or x <= 0 or y <= 0:
            line.append("")
        else:
            line.append("%.2f×" % ((x / y) if hib else (y / x)))
    print("| " + " | ".join(line) + " |")
r, d = num("cb_s3", "read_mbs"), num("cb_s3", "direct_mbs")
if run_s3 and r and d:
    print("\nS3 cold read after remount vs a 16-thread direct download of the same objects: "
          "%.0f / %.0f MB/s = %.0f %% (target 80 %%)" % (r, d, 100 * r / d))
PYEOF

{
    echo "# cryptbucket benchmark $TS"
    echo
    echo "- commit $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (+ uncommitted changes)'), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
    echo "- $([ "$QUICK" = 1 ] && echo 'QUICK smoke run; ')work dir on $(df --output=source "$WORK" | tail -1) ($BASE_DIR)"
    [ "$RUN_LOCAL" = 1 ] && echo "- local: big file $LOCAL_MIB MiB, $LOCAL_N small files (1-64 KiB)"
    [ "$RUN_S3" = 1 ] && echo "- S3 (moto on 127.0.0.1): big file $S3_MIB MiB, $S3_N small files (1-64 KiB)"
    echo "- $(gocryptfs -version 2>/dev/null | cut -d';' -f1); $(rclone version 2>/dev/null | head -1); s3fs $(s3fs --version 2>/dev/null | head -1 | grep -o 'V[0-9.]*')"
    echo "- ratios: cryptbucket's advantage over the peer (>1 = cryptbucket faster / smaller);"
    echo "  remounts use fresh cache dirs (cryptbucket --cache-dir, rclone --cache-dir); rclone runs"
    echo "  with --vfs-write-back 0s and its flush waits for its upload queue to drain"
    [ ${#FAILED[@]} -gt 0 ] && echo "- FAILED: ${FAILED[*]} (logs were in $WORK/logs)"
    echo
    cat "$OUT.tmp"
} >"$OUT"
rm -f "$OUT.tmp"
echo
cat "$OUT"
echo
log "written to ${OUT#"$REPO_ROOT"/} (total $(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s)"
if [ ${#FAILED[@]} -gt 0 ]; then
    KEEP=1
    exit 1
fi
