#!/usr/bin/env bash
# Start/stop a local S3 test server (moto) on 127.0.0.1 for cryptbucket's tests.
#
#   scripts/s3-server.sh install   # venv at ${CRYPTBUCKET_VENV:-~/.cache/cryptbucket/venv} + moto[server]
#   eval "$(scripts/s3-server.sh start)"   # exports CRYPTBUCKET_TEST_S3_ENDPOINT
#   scripts/s3-server.sh stop
#   scripts/s3-server.sh status
#
# moto keeps everything in memory and checks no credentials (any key pair works).
# `start` prints only shell assignments on stdout; diagnostics go to stderr.
set -euo pipefail

VENV="${CRYPTBUCKET_VENV:-$HOME/.cache/cryptbucket/venv}"
STATE_DIR="${CRYPTBUCKET_S3_STATE:-$HOME/.cache/cryptbucket/s3-server}"
PID_FILE="$STATE_DIR/moto.pid"
PORT_FILE="$STATE_DIR/moto.port"
LOG_FILE="$STATE_DIR/moto.log"
MOTO="$VENV/bin/moto_server"
PY="$VENV/bin/python"

log() { echo "s3-server: $*" >&2; }

running_pid() {
    # Prints the pid of our running server, or nothing.
    [[ -f "$PID_FILE" ]] || return 0
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

answers() {
    # True when something speaks HTTP on 127.0.0.1:$1.
    "$PY" - "$1" <<'PYEOF' 2>/dev/null
import sys, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=1).read()
except urllib.error.HTTPError:
    pass  # any HTTP answer means it is up
sys.exit(0)
PYEOF
}

cmd_install() {
    if [[ -x "$MOTO" ]]; then
        log "moto already installed in $VENV"
        return 0
    fi
    if ! python3 -m venv --help >/dev/null 2>&1; then
        log "python3 venv module missing; installing python3-venv"
        apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    fi
    if [[ ! -x "$PY" ]]; then
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV" >&2
    fi
    "$PY" -m pip install --quiet --upgrade pip >&2 || true
    "$PY" -m pip install --quiet 'moto[server]' >&2
    [[ -x "$MOTO" ]] || { log "moto_server not found in $VENV after install"; exit 1; }
    log "installed moto into $VENV"
}

print_env() {
    echo "export CRYPTBUCKET_TEST_S3_ENDPOINT=http://127.0.0.1:$1"
    echo "# pid file: $PID_FILE (log: $LOG_FILE)"
}

cmd_start() {
    [[ -x "$MOTO" ]] || { log "moto not installed; run: $0 install"; exit 1; }
    mkdir -p "$STATE_DIR"
    local pid port
    pid="$(running_pid)"
    if [[ -n "$pid" && -f "$PORT_FILE" ]]; then
        port="$(cat "$PORT_FILE")"
        if answers "$port"; then
            log "already running (pid $pid, port $port)"
            print_env "$port"
            return 0
        fi
        log "stale server (pid $pid) does not answer; restarting"
        cmd_stop
    fi
    port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
    # setsid: detach from the caller's process group so the server outlives `eval "$(...)"`.
    # AWS_CA_BUNDLE etc. are irrelevant to a plain-http server; unset to keep it simple.
    env -u AWS_CA_BUNDLE setsid "$MOTO" -H 127.0.0.1 -p "$port" >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$port" >"$PORT_FILE"
    local i
    for i in $(seq 1 100); do
        if answers "$port"; then
            log "moto up on 127.0.0.1:$port (pid $pid)"
            print_env "$port"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "moto exited during startup; log follows"
            cat "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE" "$PORT_FILE"
            exit 1
        fi
        sleep 0.1
    done
    log "moto did not answer on port $port within 10 s; see $LOG_FILE"
    kill "$pid" 2>/dev/null || true
    rm -f "$PID_FILE" "$PORT_FILE"
    exit 1
}

cmd_stop() {
    local pid
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        log "not running"
        rm -f "$PID_FILE" "$PORT_FILE"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
    log "stopped (pid $pid)"
}

cmd_status() {
    local pid
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        echo "running: pid $pid port $(cat "$PORT_FILE" 2>/dev/null || echo '?')"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
