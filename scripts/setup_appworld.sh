#!/usr/bin/env bash
# AppWorld for trl-sgcd: install it in its own virtualenv, and run a pool of `appworld serve environment` servers.
#
#   scripts/setup_appworld.sh [install] [VENV_DIR]   create VENV_DIR (default .appworld-venv), pip install appworld,
#                                                    `appworld install`, `appworld download data --root $APPWORLD_ROOT`
#   scripts/setup_appworld.sh start N [BASE_PORT]    start N servers on ports BASE_PORT.. (default 8100), wait until
#                                                    they answer, print the SGCD_APPWORLD_URLS line for training
#   scripts/setup_appworld.sh stop                   stop the servers started by `start`
#   scripts/setup_appworld.sh status                 show each server's pid, port and health
#
# AppWorld pins pydantic<2 (TRL needs pydantic 2), hence the separate venv; the trainer only talks HTTP to it.
# AppWorld's data may not be redistributed unencrypted: it lives in APPWORLD_ROOT, outside this repository.
#
# Environment variables:
#   APPWORLD_ROOT      AppWorld root holding data/ (default: ${XDG_DATA_HOME:-~/.local/share}/appworld)
#   APPWORLD_VENV      the venv (default: .appworld-venv, or the install argument)
#   APPWORLD_VERSION   pip version spec (default: 0.1.3.post1)
#   APPWORLD_BIN       server executable (default: $APPWORLD_VENV/bin/appworld)
#   APPWORLD_RUN_DIR   pid and log files of the servers (default: $APPWORLD_ROOT/servers)
#   APPWORLD_HOST      host written into the URLs (default: 127.0.0.1)
#   STARTUP_TIMEOUT    seconds to wait for the servers to answer, a positive integer (default: 300)
#   APPWORLD_ALLOW_PUBLIC  1 to accept a server listening on a non-loopback interface (default: refused)
#
# Security: an AppWorld server runs any code it is sent, unauthenticated. AppWorld 0.1.3 binds 0.0.0.0, so `start` runs
# it through trl_sgcd/envs/appworld/loopback.py (binds on all interfaces become 127.0.0.1), then checks the listening
# address of every port and stops and refuses the servers if one listens elsewhere, unless APPWORLD_ALLOW_PUBLIC=1.
# N, BASE_PORT and STARTUP_TIMEOUT must be plain decimal integers: they are checked before any arithmetic.
#   PYTHON             interpreter used to create the venv, Python >= 3.11 (default: python3)
set -euo pipefail

APPWORLD_ROOT="${APPWORLD_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/appworld}"
APPWORLD_VENV="${APPWORLD_VENV:-.appworld-venv}"
APPWORLD_VERSION="${APPWORLD_VERSION:-0.1.3.post1}"
APPWORLD_HOST="${APPWORLD_HOST:-127.0.0.1}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-300}"

LOOPBACK_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/trl_sgcd/envs/appworld/loopback.py"

die() { echo "error: $*" >&2; exit 1; }

# Bash arithmetic evaluates variable contents as expressions (`a[$(cmd)]` runs cmd): only plain integers get there.
is_count() { [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]; }
is_pid() { [[ "$1" =~ ^[1-9][0-9]{0,9}$ ]] && [[ "$1" != 1 ]]; }

# The argv prefix running the Python script $1 under the loopback wrapper, with the script's own interpreter.
loopback_prefix() {
    local first=""
    read -r first <"$1" || true
    if [[ "$first" =~ ^\#\!([^[:space:]]*python[^[:space:]]*) ]] && [[ -f "$LOOPBACK_PY" ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}" "$LOOPBACK_PY"
    fi
}

data_missing() {
    cat >&2 <<EOF
error: AppWorld data not found: '$APPWORLD_ROOT/data' does not exist.
The AppWorld server needs the task data, which trl-sgcd does not ship (AppWorld's licence forbids redistributing
it unencrypted). Download it once, in the AppWorld venv:
    $APPWORLD_VENV/bin/appworld download data --root $APPWORLD_ROOT
If this machine cannot reach the download server (s3.us-west-2.amazonaws.com), run that command on a machine that can
and copy the resulting data/ folder to '$APPWORLD_ROOT/data' (keep it private), or set APPWORLD_ROOT to a root that
already has it.
EOF
    exit 2
}

health_python() {
    if [[ -x "$APPWORLD_VENV/bin/python" ]]; then echo "$APPWORLD_VENV/bin/python"; else echo "${PYTHON:-python3}"; fi
}

answers() {  # answers URL -> exit 0 if the server's index page answers
    "$(health_python)" -c 'import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
opener.open(sys.argv[1] + "/", timeout=2).read()' "$1" >/dev/null 2>&1
}

alive() { is_pid "$1" && kill -0 "$1" 2>/dev/null; }

cmd_install() {
    local python="${PYTHON:-python3}"
    [[ $# -ge 1 ]] && APPWORLD_VENV="$1"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "AppWorld needs Python >= 3.11 ($python is older); set PYTHON."
    if [[ ! -x "$APPWORLD_VENV/bin/python" ]]; then
        echo ">> creating the AppWorld venv in $APPWORLD_VENV"
        "$python" -m venv "$APPWORLD_VENV"
    fi
    echo ">> pip install appworld==$APPWORLD_VERSION"
    "$APPWORLD_VENV/bin/python" -m pip install --quiet "appworld==$APPWORLD_VERSION"
    echo ">> appworld install (unpacks the encrypted app code into the venv; no network needed)"
    "$APPWORLD_VENV/bin/appworld" install
    mkdir -p "$APPWORLD_ROOT"
    if [[ -d "$APPWORLD_ROOT/data" ]]; then
        echo ">> AppWorld data already present in $APPWORLD_ROOT/data"
    else
        echo ">> appworld download data --root $APPWORLD_ROOT"
        if ! "$APPWORLD_VENV/bin/appworld" download data --root "$APPWORLD_ROOT"; then
            echo "error: 'appworld download data' failed (no access to the AppWorld download server?)." >&2
            data_missing
        fi
    fi
    cat <<EOF
>> done. Next:
    export APPWORLD_ROOT=$APPWORLD_ROOT
    scripts/setup_appworld.sh start 8          # or let training launch its own pool with --num-servers
EOF
}

run_dir() { echo "${APPWORLD_RUN_DIR:-$APPWORLD_ROOT/servers}"; }

cmd_start() {
    [[ $# -ge 1 ]] || die "usage: $0 start N [BASE_PORT]"
    local count="$1" base_port="${2:-8100}" dir bin
    is_count "$count" || die "N must be a positive integer, got '$count'"
    is_count "$base_port" || die "BASE_PORT must be a port number, got '$base_port'"
    ((base_port + count - 1 <= 65535)) || die "ports $base_port..$((base_port + count - 1)) exceed 65535"
    is_count "$STARTUP_TIMEOUT" || die "STARTUP_TIMEOUT must be a positive integer of seconds, got '$STARTUP_TIMEOUT'"
    [[ -d "$APPWORLD_ROOT/data" ]] || data_missing
    bin="${APPWORLD_BIN:-$APPWORLD_VENV/bin/appworld}"
    [[ -x "$bin" ]] || die "no AppWorld executable at '$bin': run '$0 install' first or set APPWORLD_BIN"
    dir="$(run_dir)"
    mkdir -p "$dir"
    local urls=() port pid launcher=()
    mapfile -t launcher < <(loopback_prefix "$bin")
    [[ ${#launcher[@]} -gt 0 ]] || echo "warning: '$bin' is not a Python script: it runs unwrapped (listening address checked)" >&2
    for ((i = 0; i < count; i++)); do
        port=$((base_port + i))
        if [[ -f "$dir/server-$port.pid" ]] && alive "$(cat "$dir/server-$port.pid")"; then
            echo "server on port $port already running (pid $(cat "$dir/server-$port.pid"))"
        else
            # setsid: each server leads its own process group, so `stop` also ends whatever it spawned.
            setsid "${launcher[@]}" "$bin" serve environment --port "$port" --root "$APPWORLD_ROOT" --no-show-usage \
                >"$dir/server-$port.log" 2>&1 </dev/null &
            echo $! >"$dir/server-$port.pid"
        fi
        urls+=("http://$APPWORLD_HOST:$port")
    done
    local deadline=$((SECONDS + STARTUP_TIMEOUT)) pending
    while :; do
        pending=0
        for ((i = 0; i < count; i++)); do
            port=$((base_port + i))
            pid="$(cat "$dir/server-$port.pid")"
            if ! alive "$pid"; then
                echo "error: the server on port $port exited during startup; last lines of $dir/server-$port.log:" >&2
                tail -n 20 "$dir/server-$port.log" >&2 || true
                if grep -q -E '\./data|appworld download data' "$dir/server-$port.log"; then data_missing; fi
                exit 1
            fi
            answers "http://127.0.0.1:$port" || pending=$((pending + 1))
        done
        [[ $pending -eq 0 ]] && break
        ((SECONDS < deadline)) || die "$pending server(s) did not answer within ${STARTUP_TIMEOUT}s; logs in $dir"
        sleep 0.5
    done
    check_loopback "$dir" "$base_port" "$count"
    local joined
    joined="$(IFS=,; echo "${urls[*]}")"
    echo "$joined" >"$dir/urls"
    echo "$count AppWorld server(s) ready. For training:"
    echo "export SGCD_APPWORLD_URLS=$joined"
}

check_loopback() {  # check_loopback DIR BASE_PORT COUNT: refuse servers listening beyond the loopback interface
    local dir="$1" public=() port addresses
    for ((i = 0; i < $3; i++)); do
        port=$(($2 + i))
        addresses="$("$(health_python)" "$LOOPBACK_PY" --check "$port")" || public+=("$port ($addresses)")
    done
    [[ ${#public[@]} -eq 0 ]] && return 0
    if [[ "${APPWORLD_ALLOW_PUBLIC:-0}" == 1 ]]; then
        echo "warning: AppWorld server(s) listening beyond loopback on ${public[*]} (APPWORLD_ALLOW_PUBLIC=1)" >&2
        return 0
    fi
    echo "error: AppWorld server(s) listen on a non-loopback interface on port(s) ${public[*]}: anyone who reaches" >&2
    echo "them can run code on this machine. Stopped them. Run 'appworld' from its venv's Python script so the loopback" >&2
    echo "wrapper applies, or set APPWORLD_ALLOW_PUBLIC=1 on a trusted network." >&2
    cmd_stop >/dev/null
    exit 3
}

cmd_stop() {
    local dir pid stopped=0
    dir="$(run_dir)"
    shopt -s nullglob
    for pidfile in "$dir"/server-*.pid; do
        pid="$(cat "$pidfile")"
        if alive "$pid"; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
            alive "$pid" && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
            stopped=$((stopped + 1))
        fi
        rm -f "$pidfile"
    done
    rm -f "$dir/urls"
    echo "stopped $stopped AppWorld server(s)"
}

cmd_status() {
    local dir pid port state running=0 total=0
    dir="$(run_dir)"
    shopt -s nullglob
    for pidfile in "$dir"/server-*.pid; do
        pid="$(cat "$pidfile")"
        port="${pidfile##*/server-}"
        port="${port%.pid}"
        is_count "$port" || continue
        total=$((total + 1))
        if ! alive "$pid"; then
            state="dead"
        elif answers "http://127.0.0.1:$port"; then
            state="healthy"
            running=$((running + 1))
        else
            state="running, not answering"
        fi
        echo "port $port  pid $pid  $state"
    done
    echo "$running/$total server(s) healthy (run dir: $dir)"
    [[ $running -eq $total ]]
}

case "${1:-install}" in
    install) shift || true; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) sed -n '2,24p' "$0" ;;
    *) cmd_install "$@" ;;
esac
