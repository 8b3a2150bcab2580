#!/usr/bin/env bash
# Gallop's test command: starts (installing if needed) NATS JetStream, ClickHouse, Kafka
# (Tansu), chDB, Prometheus/promtool, docker-compose and Grafana's dashboard types, runs every
# test of the workspace against them, then runs the sink's integration tests a second time
# against a current ClickHouse (26.9, chDB behind sink/tests/chdb_server.py), so the same DDL,
# inserts and documented queries are proven on 18.16 and on a current release. Tests that need
# a service fail loudly without it.
#
# One build serves both passes: the second runs the sink's test binary of the first (with
# cargo-nextest, which is on the machine, or else straight from `cargo test`'s build), so
# no crate is compiled twice. Arguments go to the first pass's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
scripts/services.sh chdb
scripts/services.sh tools

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked "$@"
  sink_again() { cargo nextest run --workspace --locked -E 'package(gallop-sink) & binary(it)'; }
else
  cargo test --workspace --locked "$@"
  # The sink's integration test binary as `cargo test` just built it (no rebuild).
  sink_it="$(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == "it" \
            and "test" in t.get("kind", []) and m["package_id"].split("#")[0].endswith("/sink"):
        print(m["executable"])
')"
  [ -x "$sink_it" ] || { echo "FATAL: the sink's test binary was not found" >&2; exit 1; }
  sink_again() { (cd sink && "$sink_it"); }
fi

echo "== sink integration tests against a current ClickHouse (chDB)"
url_file="$(mktemp -u)"
python3 sink/tests/chdb_server.py --port-file "$url_file" &
chdb_pid=$!
trap 'kill "$chdb_pid" 2>/dev/null || true; rm -f "$url_file"' EXIT
for _ in $(seq 1 300); do
  [ -s "$url_file" ] && break
  kill -0 "$chdb_pid" 2>/dev/null || { echo "FATAL: sink/tests/chdb_server.py exited" >&2; exit 1; }
  sleep 0.1
done
[ -s "$url_file" ] || { echo "FATAL: chDB server did not start within 30 s" >&2; exit 1; }
echo "chDB ClickHouse $(curl -fsS --data-binary 'SELECT version()' "$(cat "$url_file")") at $(cat "$url_file")"
TEST_GALLOP_CLICKHOUSE_URL="$(cat "$url_file")" sink_again
