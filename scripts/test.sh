#!/usr/bin/env bash
# Gallop's test command: starts (installing if needed) NATS JetStream, ClickHouse, Kafka (Tansu),
# chDB, Prometheus/promtool and docker-compose,
# runs every test of the workspace against them, then runs the sink's integration tests a
# second time against a current ClickHouse (26.9, chDB behind sink/tests/chdb_server.py), so
# the same DDL, inserts and documented queries are proven on 18.16 and on a current release.
# Tests that need a service fail loudly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
scripts/services.sh chdb
scripts/services.sh tools
cargo test --workspace --locked "$@"

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
TEST_GALLOP_CLICKHOUSE_URL="$(cat "$url_file")" cargo test -p gallop-sink --test it --locked "$@"
