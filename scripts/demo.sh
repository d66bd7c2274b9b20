#!/usr/bin/env bash
# README command (1): from a fresh Debian 12 machine with Rust, build cryptbucket, create a demo
# volume on a local directory and mount it.
#   bash scripts/demo.sh
#
# Layout (DEMO_DIR defaults to ~/cryptbucket-demo):
#   $DEMO_DIR/store     the "bucket": what a cloud provider would see (ciphertext only)
#   $DEMO_DIR/demo.key  the random 32-byte keyfile (0600) that unlocks the volume: keep it safe
#   $DEMO_DIR/mnt       the decrypted view, a FUSE mount
# Running it again reuses the existing volume and key.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO_DIR="${DEMO_DIR:-$HOME/cryptbucket-demo}"
STORE="$DEMO_DIR/store"
KEY="$DEMO_DIR/demo.key"
MNT="$DEMO_DIR/mnt"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cryptbucket/target}"
BIN="$CARGO_TARGET_DIR/release/cryptbucket"

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi
as_root() {
    if [ "$(id -u)" -eq 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
        "${SUDO[@]}" "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# 1. FUSE
if ! command -v fusermount3 >/dev/null 2>&1; then
    echo "==> installing fuse3"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y fuse3
fi
if [ ! -e /dev/fuse ]; then
    as_root modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
    echo "error: /dev/fuse does not exist; FUSE is not available here (a container needs --device /dev/fuse)" >&2
    exit 1
fi

# 2. Build
echo "==> cargo build --release (target dir $CARGO_TARGET_DIR)"
cargo build --release

# 3. Volume
mkdir -p "$DEMO_DIR"
if [ -f "$STORE/cryptbucket.json" ]; then
    echo "==> reusing the demo volume in $STORE"
    if [ ! -f "$KEY" ]; then
        echo "error: $STORE holds a volume but its keyfile $KEY is missing;" >&2
        echo "       remove $DEMO_DIR to start over" >&2
        exit 1
    fi
else
    echo "==> creating a demo volume in $STORE (keyfile $KEY)"
    "$BIN" init "$STORE" --keyfile "$KEY"
fi

# 4. Mount
mkdir -p "$MNT"
if grep -qsF " $MNT " /proc/mounts; then
    if ls "$MNT" >/dev/null 2>&1; then
        echo "==> already mounted at $MNT"
    else
        echo "==> clearing a dead mount at $MNT"
        fusermount3 -uz "$MNT"
    fi
fi
if ! grep -qsF " $MNT " /proc/mounts; then
    echo "==> mounting $STORE at $MNT"
    "$BIN" mount "$STORE" "$MNT" --keyfile "$KEY"
fi

# 5. Use it
echo "Hello from cryptbucket, written $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$MNT/hello.txt"

cat <<MSG

cryptbucket demo volume is mounted.
  mounted at:   $MNT          (plain files: try  cat "$MNT/hello.txt")
  stored in:    $STORE        (what the bucket sees: only ciphertext)
  key:          $KEY          (without it the data is gone)
  binary:       $BIN

Objects in the store right now:
$(cd "$STORE" && find . -type f | sort | head -n 8 | sed 's/^/  /')

Stop it with:
  "$BIN" unmount "$MNT"
Mount it again later with:
  "$BIN" mount "$STORE" "$MNT" --keyfile "$KEY"
MSG
