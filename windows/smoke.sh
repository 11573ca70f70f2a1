#!/usr/bin/env bash
# The Windows build, tried under Wine: cross-builds host.exe and the plugins it needs for
# x86_64-pc-windows-gnu (Debian's mingw-w64 for the C parts, Rust's standard library for the
# target through rustup), then runs as a Windows user would: init, add, a noop worker --drain,
# status --json, a plugin that aborts, a task that times out, a handler that prints; then that
# what a task starts ends with it when it times out, at Ctrl+C and when its worker is killed.
# Exits non-zero, saying what, on the first thing that goes wrong; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
# Apart from the Linux build, whose profile it changes (below).
target_dir="${CARGO_TARGET_DIR:-target}/windows"
built="$target_dir/$target/debug"

# What it needs from Debian: mingw-w64's C compiler and Wine (wine64 lives in /usr/lib/wine).
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
[ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! grep -qx "$target" < <(rustup target list --installed); then
    rustup target add "$target" || {
        echo "BLOCKED: the Rust standard library for $target cannot be installed here (rustup target add failed)" >&2
        exit 1
    }
fi

# No debug information (the debug host.exe would be 300 MB, and linking it slow), and the
# dependencies unoptimised (the workspace gives them -O1 for the test suite's speed): the build
# takes 3 minutes rather than 7. Warnings in code only Windows compiles fail the build, as
# clippy's do on Linux.
CARGO_PROFILE_DEV_DEBUG=0 RUSTFLAGS="-D warnings" CARGO_TARGET_DIR="$target_dir" \
    cargo build --quiet --config 'profile.dev.package."*".opt-level=0' \
    --target "$target" -p host -p noop -p test-roles

work=$(mktemp -d)
worker=""
trap '[ -z "$worker" ] || kill -KILL "$worker" 2>/dev/null; /usr/lib/wine/wineserver64 -k 2>/dev/null; rm -rf "$work"' EXIT
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wine=/usr/lib/wine/wine64
mkdir -p "$work/bin"
cp "$built/host.exe" "$work/bin/"
# Wine 8.0 lacks ProcessPrng, which Rust's standard library takes from bcryptprimitives.dll on
# Windows 10 and later: a stand-in beside host.exe gives it (see bcryptprimitives.c).
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bin/bcryptprimitives.dll" windows/bcryptprimitives.c -ladvapi32
"$wine" wineboot --init >/dev/null 2>&1 || true

# Plugins are opened only from the user's profile on Windows (see the README).
profile="$WINEPREFIX/drive_c/users/$(whoami)"
mkdir -p "$profile/AppData/Local/host/plugins"
cp "$built/noop.dll" "$built/test_roles.dll" "$profile/AppData/Local/host/plugins/"
export HOST_PLUGIN_PATH="C:\\users\\$(whoami)\\AppData\\Local\\host\\plugins"
export HOST_QUEUE_DIR="C:\\users\\$(whoami)\\queue"

host() { timeout 120 "$wine" "$work/bin/host.exe" "$@"; }
fail() { echo "windows smoke test FAILED: $*" >&2; exit 1; }

host --version | grep -q '^host ' || fail "host.exe --version"
host init >/dev/null || fail "host init"
noop=$(host add --type noop | tr -d '\r')
crash=$(host add --type crash --payload '{"how":"abort"}' --max-attempts 1 | tr -d '\r')
sleep=$(host add --type sleep --payload '{"ms":60000,"ignoreStop":true}' --timeout 2s --max-attempts 1 | tr -d '\r')
host --role noop --drain 2>"$work/noop.log" || fail "noop worker: $(cat "$work/noop.log")"
host --role crasher --drain 2>"$work/crash.log" || fail "crasher worker: $(cat "$work/crash.log")"
host --role sleeper --drain 2>"$work/sleep.log" || fail "sleeper worker: $(cat "$work/sleep.log")"
host status --json >"$work/status.json" || fail "host status --json"
python3 - "$work/status.json" <<'PY' || fail "status --json: $(cat "$work/status.json")"
import json, sys
counts = json.load(open(sys.argv[1]))["counts"]
assert counts["completed"] == 1 and counts["failed"] == 2, counts
PY
state() { host show "$1" --json | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["status"], "|", t.get("error",""))'; }
[[ "$(state "$noop")" == "completed |"* ]] || fail "task $noop: $(state "$noop")"
[[ "$(state "$crash")" == *"the handler process aborted"* ]] || fail "task $crash: $(state "$crash")"
[[ "$(state "$sleep")" == *"timed out after 2s"*"was killed"* ]] || fail "task $sleep: $(state "$sleep")"
# What a handler prints goes to the worker's log, never into its protocol with the worker.
printed=$(host add --type announce --payload '{"print":true}' | tr -d '\r')
host --role announcer --drain 2>"$work/announce.log" || fail "announcer worker: $(cat "$work/announce.log")"
grep -q 'no line end' "$work/announce.log" || fail "what the handler printed: $(cat "$work/announce.log")"
said=$(host show "$printed" --json | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["status"], t.get("result"))')
[ "$said" = "completed {'said': 'hello'}" ] || fail "task $printed, whose handler printed: $said"

# What a task starts ends with it, also when the worker is stopped or killed: a spawner task
# starts `ping -n 120` twice (one detached in a group of its own, one through `cmd /c start`).
pings() { pgrep -u "$(id -u)" -fc -- '-n 120 127.0.0.1' || true; }
handlers() { pgrep -u "$(id -u)" -fc 'host.exe handler-process' || true; }
until_gone() { # what, seconds, how many handler processes stay (a live worker keeps one)
    for _ in $(seq "$2"); do [ "$(pings)" = 0 ] && [ "$(handlers)" = "$3" ] && return 0; sleep 1; done
    fail "$1: $(pings) ping.exe and $(handlers) handler processes are running (expected 0 and $3)"
}
spawning() { # task id: waits until its two commands run
    for _ in $(seq 60); do
        [ "$(pings)" -ge 2 ] && return 0
        sleep 1
    done
    fail "task $1 did not start its two ping.exe (ping.exe running: $(pings))"
}
start_worker() { # log file; the worker's pid is the Windows process itself (wine execs it)
    "$wine" "$work/bin/host.exe" --role spawner --grace 1s 2>"$1" &
    worker=$!
}
worker_exits() { # within 30 seconds, with status 0
    for _ in $(seq 30); do
        if ! kill -0 "$worker" 2>/dev/null; then
            local pid=$worker
            worker=""
            wait "$pid"
            return
        fi
        sleep 1
    done
    return 1
}
spawn='["ping","-n","120","127.0.0.1"]'

# A task that times out: its handler returns, and what it started is ended with it.
timed=$(host add --type spawn --payload "{\"command\":$spawn}" --timeout 5s --max-attempts 1 | tr -d '\r')
start_worker "$work/timed.log"
spawning "$timed"
until_gone "after task $timed timed out" 30 1
[[ "$(state "$timed")" == "failed |"*"timed out after 5s"* ]] || fail "task $timed: $(state "$timed")"

# Ctrl+C (Wine turns SIGINT into CTRL_C_EVENT): the worker returns its task to the queue and
# exits; nothing it started is left.
stopped=$(host add --type spawn --payload "{\"command\":$spawn}" | tr -d '\r')
spawning "$stopped"
kill -INT "$worker"
worker_exits || fail "the worker did not stop cleanly within 30s of Ctrl+C: $(cat "$work/timed.log")"
grep -q "task $stopped returned to the queue" "$work/timed.log" || fail "Ctrl+C: $(cat "$work/timed.log")"
until_gone "after Ctrl+C" 30 0
[[ "$(state "$stopped")" == "pending |"* ]] || fail "task $stopped after Ctrl+C: $(state "$stopped")"

# A worker killed outright: its job ends the handler and everything below it.
start_worker "$work/killed.log"
spawning "$stopped"
kill -KILL "$worker"
wait "$worker" 2>/dev/null || true
worker=""
until_gone "after the worker was killed" 30 0

echo "windows smoke test passed: host.exe under $("$wine" --version): init, add, a noop worker, status --json, a plugin that aborts, a handler that prints, tasks that time out, Ctrl+C, a killed worker, nothing left running"
