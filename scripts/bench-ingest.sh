#!/usr/bin/env bash
# Ingest benchmark: gateway + NATS JetStream on this machine, load from wrk.
#   1. single-event POST /api/event (Plausible form), distinct visitors
#   2. POST /v1/events NDJSON batches of 100 events
# Usage: scripts/bench-ingest.sh [seconds per run, default 15]
# Prints wrk's numbers and the CPU seconds each process used (gateway, NATS; wrk and the
# kernel's loopback work take the rest of the machine's two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
scripts/services.sh nats
cargo build --release -p gallop -q
tag=$(date +%s)
export GALLOP_NATS__STREAM="GALLOP_BENCH_$tag" GALLOP_NATS__SUBJECT_PREFIX="gallop-bench-$tag" \
  GALLOP_NATS__SALT_BUCKET="gallop_bench_$tag" GALLOP_NATS__MAX_AGE="10m" \
  GALLOP_INGEST__LISTEN="127.0.0.1:18080" GALLOP_INGEST__TRUSTED_PROXIES='["127.0.0.1/32"]' \
  GALLOP_LOG__FILTER="warn"
target/release/gallop ingest &
gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs localhost:18080/ready >/dev/null && break; sleep 0.1; done
nats=$(pgrep -x nats-server | head -1)
cpu() { awk '{printf "%.1f", ($14+$15)/100}' "/proc/$1/stat"; }
run() { # name connections script
  local g0 n0
  g0=$(cpu $gw); n0=$(cpu "$nats")
  echo "== $1 ($2 connections, ${secs}s)"
  wrk -t1 -c"$2" -d"${secs}s" --latency -s "$3" http://127.0.0.1:18080
  echo "CPU seconds: gateway $(echo "$(cpu $gw) - $g0" | bc), nats-server $(echo "$(cpu "$nats") - $n0" | bc)"
}
echo "== warm-up"
wrk -t1 -c16 -d3s -s scripts/bench/plausible.lua http://127.0.0.1:18080 >/dev/null
run "single-event POST /api/event" 256 scripts/bench/plausible.lua
run "/v1/events NDJSON batches of 100" 64 scripts/bench/batch.lua
echo "== gateway metrics"
curl -s localhost:18080/metrics | grep -E '^gallop_(events_accepted_total|http_requests_total|publish_duration_seconds_(sum|count)|broker_message_events_(sum|count)|publish_failures_total|publish_retries_total)'
