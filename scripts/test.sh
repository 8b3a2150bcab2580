#!/usr/bin/env bash
# Gallop's test command: starts (installing if needed) NATS JetStream, ClickHouse, Kafka
# (Tansu), chDB, Prometheus/promtool, docker-compose and Grafana's dashboard types, runs every
# test of the workspace against them, then runs the sink's integration tests and the
# processor's uniqHLL12 tests a second time against a current ClickHouse (26.9, chDB behind
# sink/tests/chdb_server.py), so the same DDL, inserts, documented queries and byte-identical
# visitor sketches are proven on 18.16 and on a current release. Tests that need a service fail
# loudly without it. The cluster's tests (2 shards × 2 replicas of 18.16 with ZooKeeper,
# `scripts/services.sh cluster`) run in the first pass only: chDB is one server.
#
# One build serves both passes: the second runs test binaries of the first (with
# cargo-nextest, which is on the machine, or else straight from `cargo test`'s build), so
# no crate is compiled twice. Arguments go to the first pass's test runner. (The workspace
# has no doc tests, which nextest does not run; add `cargo test --doc` here with the first.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
scripts/services.sh cluster
scripts/services.sh chdb
scripts/services.sh tools

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked "$@"
  again() {
    cargo nextest run --workspace --locked \
      -E 'binary(it) & ((package(gallop-sink) & !test(/cluster/)) | (package(gallop-processor) & test(/^hll::/)))'
  }
else
  cargo test --workspace --locked "$@"
  # The integration test binary of `$1` (a folder) as `cargo test` just built it (no rebuild).
  it_binary() {
    local package="$1"
    shift
    cargo test --workspace --locked --no-run --message-format=json "$@" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and t.get("name") == "it" \
            and "test" in t.get("kind", []) and m["package_id"].split("#")[0].endswith("/" + sys.argv[1]):
        print(m["executable"])
' "$package"
  }
  sink_it="$(it_binary sink "$@")" processor_it="$(it_binary processor "$@")"
  [ -x "$sink_it" ] && [ -x "$processor_it" ] || { echo "FATAL: the test binaries were not found" >&2; exit 1; }
  again() { (cd sink && "$sink_it" --skip cluster) && (cd processor && "$processor_it" hll::); }
fi

echo "== the sink's integration tests and the processor's uniqHLL12 tests against a current ClickHouse (chDB)"
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
TEST_GALLOP_CLICKHOUSE_URL="$(cat "$url_file")" again
