#!/usr/bin/env bash
# The main job, end to end on the embedded SQLite queue: build the host and the plugins, then play
# the seed's daily workflow. The orchestrator adds tasks, one worker per role drains them in its
# own process, the orchestrator watches and finally shows the results.
#
# Phase 1: the writer creates a small Rust project from the task's payload.
# Phase 2: the inspector analyses it, the tester runs its tests (`cargo test`, detected from
#          Cargo.toml) and the deployer (the custom role in examples/) copies it to a release
#          folder.
#
# Everything it writes stays under target/demo, but for a private copy of the plugins it runs
# (see below); running it again starts afresh.
# `./demo.sh --postgres` plays the many-machine set-up instead (see demo-postgres.sh).
set -euo pipefail

cd "$(dirname "$0")"
# DEMO_HOST and DEMO_DIR let the test suite play the demo with its own build, in its own folder.
if [ -n "${DEMO_HOST:-}" ]; then
    host="$DEMO_HOST"
else
    cargo build --release
    host="$PWD/target/release/host"
fi

# The host refuses plugins in a folder that others could write to, or under one (a clone in
# /tmp): the demo's roles run from a copy in a folder of the user's own, made private (umask
# 077, so that neither the folders made nor the copies are writable by the group).
demo="${DEMO_DIR:-$PWD/target/demo}"
demo="${demo%/}"
if [ -n "${DEMO_DIR:-}" ]; then
    plugins="$demo-plugins"
else
    plugins="${XDG_DATA_HOME:-$HOME/.local/share}/host/demo-plugins"
fi
case "$(uname -s)" in
    Darwin) suffix=dylib ;;
    *) suffix=so ;;
esac
rm -rf "$plugins"
(
    umask 077
    mkdir -p "$plugins"
    for library in builtin_roles deployer; do
        cp "$(dirname "$host")/lib$library.$suffix" "$plugins/"
    done
)
export HOST_PLUGIN_PATH="$plugins"
export DEMO_HOST="$host"

if [ "${1:-}" = "--postgres" ]; then
    exec ./demo-postgres.sh
fi

rm -rf "$demo"
mkdir -p "$demo"
export HOST_QUEUE_DIR="$demo/copilot-orchestration"
app="$demo/app"

# Bold headings on a terminal only: a log of the demo stays plain text.
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

# `host add` prints the new task's id alone, for scripts; the demo says what it is.
add() {
    local id
    id=$("$host" add "$@")
    echo "added task $id ($2)" >&2
    echo "$id"
}

# Runs one worker per role, each in its own process as each would run in its own terminal, and
# watches them until none has work left.
run_workers() {
    local pids=() role
    for role in "$@"; do
        "$host" --role "$role" --drain 2>"$demo/$role.log" &
        pids+=("$!")
    done
    if [ -t 1 ]; then "$host" watch; fi
    for pid in "${pids[@]}"; do wait "$pid"; done
    for role in "$@"; do sed "s/^/  [$role] /" "$demo/$role.log"; done
}

say "Plugins (copied to $plugins)"
"$host" plugins

say "Orchestrator: init and phase 1 (write the project)"
"$host" init
add --type write --target "$app" --priority 1 \
    --description "Create the demo crate" \
    --payload "$(cat <<'JSON'
{"files": [
  {"path": "Cargo.toml", "content": "[package]\nname = \"demo-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n"},
  {"path": "src/lib.rs", "content": "/// Adds two numbers.\npub fn add(a: u64, b: u64) -> u64 {\n    a + b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n"},
  {"path": ".gitignore", "content": "/target\n"},
  {"path": "README.md", "content": "# demo-app\n\nWritten by the writer role.\n"}
]}
JSON
)" >/dev/null
run_workers writer

say "Orchestrator: phase 2 (inspect, test, deploy)"
# The tester's `cargo test` builds outside the project, so the deployer copies only the sources.
export CARGO_TARGET_DIR="$demo/app-target"
# The deployer writes only inside its deploy root.
export DEPLOY_ROOT="$demo/release"
mkdir -p "$DEPLOY_ROOT"
inspect=$(add --type inspect --target "$app" --priority 2 --description "Survey the crate")
add --type test --target "$app" --priority 1 --timeout 5m --description "Run its tests" >/dev/null
add --type deploy --target "$app" --priority 3 --description "Release it" \
    --payload '{"destination": "demo-app"}' >/dev/null
run_workers inspector tester deployer

say "Status"
"$host" status

say "Results"
"$host" results

say "What the inspector found"
"$host" show "$inspect"

say "Deployed"
find "$demo/release" -type f | sort
