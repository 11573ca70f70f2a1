#!/usr/bin/env bash
# The many-machine set-up, played on one machine (run through `./demo.sh --postgres`, which
# builds first): a throwaway PostgreSQL cluster stands in for the shared server, three worker
# processes with names of their own stand in for three machines, and the orchestrator adds
# and watches from a fourth. The queue's configuration lives in the database, as every
# machine must read the same. (The integration suite plays it with real network namespaces.)
#
# Needs PostgreSQL's server programs (Debian: apt-get install postgresql); the cluster lives
# in a temporary folder and is stopped and removed at the end.
set -euo pipefail

cd "$(dirname "$0")"
# demo.sh names its host and the private copy of the plugins it made; run alone, both are
# the release build's own.
host="${DEMO_HOST:-$PWD/target/release/host}"
export HOST_PLUGIN_PATH="${HOST_PLUGIN_PATH:-$PWD/target/release}"

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ]; then
    echo "demo-postgres.sh: PostgreSQL's server programs are missing (apt-get install postgresql)" >&2
    exit 1
fi
# The server refuses to run as root: run it as `postgres` then.
as_server=()
cluster=$(mktemp -d /tmp/host-demo-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then
    as_server=(runuser -u postgres --)
    chown postgres "$cluster"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
    "${as_server[@]}" "$pgbin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$cluster"
}
trap stop EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "A throwaway PostgreSQL cluster on 127.0.0.1:$port"
"${as_server[@]}" "$pgbin/initdb" -D "$cluster/data" -U demo --auth=trust >/dev/null
"${as_server[@]}" "$pgbin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" \
    -o "-k $cluster -p $port -c listen_addresses=127.0.0.1" -w start >/dev/null
export HOST_QUEUE_DIR="postgres://demo@127.0.0.1:$port/postgres?sslmode=disable"

say "Orchestrator: init, and the configuration every machine reads"
"$host" init
cat >"$cluster/host.toml" <<'TOML'
# Kept in the database: every machine reads the same.
[roles.checker]
handler = "noop"
types = ["check"]

[limits]
check = 2      # at most two `check` tasks running at once, across all machines
TOML
"$host" config set "$cluster/host.toml"
"$host" config show

say "Orchestrator: 300 tasks (200 noop, 100 check)"
for i in $(seq 1 200); do echo '{"type":"noop"}'; done >"$cluster/tasks.jsonl"
for i in $(seq 1 100); do echo '{"type":"check"}'; done >>"$cluster/tasks.jsonl"
"$host" add --file "$cluster/tasks.jsonl" | tail -1 | sed 's/^/last id: /'

say "Three machines start their workers"
pids=()
for machine in alpha beta gamma; do
    "$host" --role noop --drain --name "$machine-noop" 2>"$cluster/$machine-noop.log" &
    pids+=("$!")
    "$host" --role checker --drain --name "$machine-checker" 2>"$cluster/$machine-checker.log" &
    pids+=("$!")
done
sleep 0.3
"$host" status
for pid in "${pids[@]}"; do wait "$pid"; done

say "Who ran what"
"$host" results --json | python3 -c '
import collections, json, sys
tasks = json.load(sys.stdin)
by = collections.Counter((t["worker"].split("-")[0], t["type"]) for t in tasks)
for (machine, kind), n in sorted(by.items()):
    print(f"  {machine:6} {kind:6} {n}")
done = all(t["status"] == "completed" for t in tasks)
print(f"  {len(tasks)} tasks finished, all completed: {done}")
'

say "Status"
"$host" status
