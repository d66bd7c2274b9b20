#!/usr/bin/env bash
# Run the whole cryptbucket test suite (README command 2):
#   bash scripts/test.sh [--long]
#
# On a fresh Debian 12 machine with only Rust installed it:
#   1. installs what is missing (fuse3, python3-venv, gnome-keyring, dbus, rsync; rustfmt/clippy via rustup; pjdfstest and
#      fsx via cargo install; the users nobody and tests for pjdfstest), only when missing, and
#      makes sure /dev/fuse is usable;
#   2. checks formatting (cargo fmt --check) and lints (cargo clippy --all-targets -D warnings);
#   3. installs and starts the S3 test server (scripts/s3-server.sh) on 127.0.0.1, stops it on exit;
#   4. runs every test (cargo nextest if installed, else cargo test) on a debug build;
#   5. on exit unmounts any FUSE mount the tests left behind and prints a summary.
#
# Environment:
#   CARGO_TARGET_DIR                default $HOME/.cache/cryptbucket/target
#   CRYPTBUCKET_TEST_S3_ENDPOINT    if already set, use that S3 server instead of starting one
#   --long                          also run the long soak tests (CRYPTBUCKET_LONG_TESTS=1:
#                                   300 crash cycles, fsx x10, 1M-file mount) under the
#                                   nextest profile `long` (hours-long caps, .config/nextest.toml)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD

LONG=0
for arg in "$@"; do
    case "$arg" in
        --long) LONG=1 ;;
        -h | --help)
            sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "error: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Bookkeeping for the summary printed on exit (success or failure).
STEPS=()
STEP_START=0
CURRENT_STEP=""
RESULT_LINE=""
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cryptbucket-test.XXXXXX")
export CRYPTBUCKET_TEST_SKIP_LOG="$WORK/skipped.txt"
: >"$CRYPTBUCKET_TEST_SKIP_LOG"

step() {
    CURRENT_STEP=$1
    STEP_START=$SECONDS
    printf '\n==> %s\n' "$1"
}
step_done() {
    STEPS+=("ok    $(printf '%4ss' $((SECONDS - STEP_START)))  $CURRENT_STEP")
    CURRENT_STEP=""
}

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

# FUSE mounts our tests create live under temporary directories named cryptbucket-e2e-*.
cleanup_mounts() {
    local mnt
    [ -r /proc/mounts ] || return 0
    awk '$3 ~ /^fuse/ && $2 ~ /cryptbucket-e2e-/ { print $2 }' /proc/mounts | while read -r mnt; do
        mnt=$(printf '%b' "${mnt//\\/\\0}") # undo /proc/mounts octal escapes (\040 ...)
        echo "cleaning up stale FUSE mount $mnt" >&2
        fusermount3 -uz "$mnt" 2>/dev/null || as_root umount -l "$mnt" 2>/dev/null || true
    done
}

S3_STARTED=0
on_exit() {
    local rc=$?
    set +e
    if [ "$S3_STARTED" -eq 1 ]; then
        bash "$REPO_ROOT/scripts/s3-server.sh" stop >/dev/null 2>&1 ||
            echo "warning: could not stop the S3 test server" >&2
    fi
    cleanup_mounts
    echo
    echo "=================== cryptbucket test summary ==================="
    local s
    for s in "${STEPS[@]}"; do echo "  $s"; done
    if [ -n "$CURRENT_STEP" ]; then
        echo "  FAIL  $(printf '%4ss' $((SECONDS - STEP_START)))  $CURRENT_STEP"
    fi
    [ -n "$RESULT_LINE" ] && echo "  tests: $RESULT_LINE"
    if [ -s "$CRYPTBUCKET_TEST_SKIP_LOG" ]; then
        echo "  skipped at run time:"
        sed 's/^/    /' "$CRYPTBUCKET_TEST_SKIP_LOG" | sort | uniq
    fi
    if [ "$rc" -eq 0 ]; then
        echo "  RESULT: PASS (${SECONDS}s)"
    else
        echo "  RESULT: FAIL (exit $rc, ${SECONDS}s)"
    fi
    echo "================================================================"
    rm -rf "$WORK"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
step "system dependencies"
PKGS=()
command -v fusermount3 >/dev/null 2>&1 || PKGS+=(fuse3)
# A real Secret Service for the desktop-keyring test (run in its own dbus-run-session).
command -v gnome-keyring-daemon >/dev/null 2>&1 || PKGS+=(gnome-keyring)
command -v dbus-run-session >/dev/null 2>&1 || PKGS+=(dbus)
# rsync -a through a mount is part of the round-trip test (backup tools use it).
command -v rsync >/dev/null 2>&1 || PKGS+=(rsync)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    PKGS+=(python3-venv)
fi
if [ ${#PKGS[@]} -gt 0 ]; then
    echo "installing missing packages: ${PKGS[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PKGS[@]}"
else
    echo "fuse3, python3-venv, gnome-keyring, dbus and rsync already present"
fi
if [ ! -e /dev/fuse ]; then
    as_root modprobe fuse 2>/dev/null || true
fi
if [ ! -e /dev/fuse ]; then
    echo "warning: /dev/fuse does not exist (container without FUSE?): mount tests will be skipped" >&2
elif [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
    echo "making /dev/fuse usable by $(id -un)"
    as_root chmod 0666 /dev/fuse || echo "warning: /dev/fuse is not usable: mount tests will be skipped" >&2
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    else
        echo "error: cargo fmt / cargo clippy missing and no rustup to install them" >&2
        exit 1
    fi
fi
cleanup_mounts
step_done

# ---------------------------------------------------------------------------------------------
# External POSIX suites for tests/posix_suites.rs (versions measured in /work/shared/TESTING.md).
step "external POSIX suites (pjdfstest, fsx)"
CARGO_BIN_DIR="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in *":$CARGO_BIN_DIR:"*) ;; *) export PATH="$PATH:$CARGO_BIN_DIR" ;; esac
install_tool() { # install_tool BINARY CRATE VERSION
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing $2 $3 (cargo install, a few minutes)"
    # --locked: build with the dependency versions the release was tested with.
    cargo install --quiet --locked "$2" --version "$3"
}
install_tool pjdfstest pjdfstest 0.2.2
install_tool fsx fsx 0.3.2
# pjdfstest switches to the users `nobody` and `tests` (each with its own group).
if ! getent passwd nobody >/dev/null; then
    as_root useradd -M -r -s /usr/sbin/nologin nobody ||
        echo "warning: could not create user nobody: pjdfstest will fail" >&2
fi
if ! getent group tests >/dev/null; then
    as_root groupadd tests || echo "warning: could not create group tests" >&2
fi
if ! getent passwd tests >/dev/null; then
    as_root useradd -M -g tests tests ||
        echo "warning: could not create user tests: pjdfstest will fail" >&2
fi
echo "pjdfstest: $(command -v pjdfstest), fsx: $(command -v fsx)"
step_done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cryptbucket/target}"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

step "cargo fmt --check"
cargo fmt --all -- --check
step_done

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step_done

# ---------------------------------------------------------------------------------------------
step "S3 test server"
if [ -n "${CRYPTBUCKET_TEST_S3_ENDPOINT:-}" ]; then
    echo "using the S3 server already given: $CRYPTBUCKET_TEST_S3_ENDPOINT"
else
    bash scripts/s3-server.sh install
    S3_STARTED=1
    s3_env=$(bash scripts/s3-server.sh start)
    eval "$s3_env"
    if [ -z "${CRYPTBUCKET_TEST_S3_ENDPOINT:-}" ]; then
        echo "error: scripts/s3-server.sh start did not set CRYPTBUCKET_TEST_S3_ENDPOINT" >&2
        exit 1
    fi
    echo "S3 test server at $CRYPTBUCKET_TEST_S3_ENDPOINT"
fi
export CRYPTBUCKET_TEST_S3_ENDPOINT
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
step_done

# ---------------------------------------------------------------------------------------------
export CRYPTBUCKET_TEST_FAST_KDF=1 # tests use minimal Argon2 parameters
if [ "$LONG" -eq 1 ]; then
    export CRYPTBUCKET_LONG_TESTS=1
fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

TEST_LOG="$WORK/test-output.txt"
if cargo nextest --version >/dev/null 2>&1; then
    NEXTEST_PROFILE=default
    [ "$LONG" -eq 1 ] && NEXTEST_PROFILE=long
    step "cargo nextest run --profile $NEXTEST_PROFILE (debug build)"
    set +e
    cargo nextest run --profile "$NEXTEST_PROFILE" --no-fail-fast 2>&1 | tee "$TEST_LOG"
    rc=${PIPESTATUS[0]}
    set -e
    RESULT_LINE=$(grep -E '^ *Summary ' "$TEST_LOG" | tail -n1 | sed 's/^ *//' || true)
    [ "$rc" -eq 0 ] || exit "$rc"
    step_done
    # nextest does not run doctests.
    step "cargo test --doc"
    cargo test --doc
    step_done
else
    step "cargo test (debug build)"
    set +e
    cargo test --no-fail-fast 2>&1 | tee "$TEST_LOG"
    rc=${PIPESTATUS[0]}
    set -e
    RESULT_LINE=$(awk '/^test result:/ { p += $4; f += $6; i += $8 }
        END { printf "%d passed, %d failed, %d ignored", p, f, i }' "$TEST_LOG")
    [ "$rc" -eq 0 ] || exit "$rc"
    step_done
fi
