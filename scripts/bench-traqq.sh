#!/usr/bin/env bash
# traqq's TCP protocol: Gallop's listener against traqq 0.2.0's own server, in one run.
# Starts NATS and ClickHouse (scripts/services.sh), converts bench/traqq/mapping.json with
# `gallop traqq-config`, runs `gallop run` (release) on a stream and database of its own,
# then `gallop-bench traqq-tcp`, which serves traqq's own server in-process and sends the
# same lines to both. Extra arguments go to gallop-bench (e.g. --events 400000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up >/dev/null
cargo build --release -q -p gallop -p gallop-bench
tag=$(date +%s)
dir=$(mktemp -d)
port=19876
target/release/gallop traqq-config --site traqq.bench --listen "127.0.0.1:$port" \
  < bench/traqq/mapping.json > "$dir/gallop.toml"
export GALLOP_NATS__STREAM="GALLOP_TRAQQ_BENCH_$tag" GALLOP_NATS__SUBJECT_PREFIX="gallop-traqq-bench-$tag" \
  GALLOP_NATS__SALT_BUCKET="gallop_traqq_bench_$tag" GALLOP_NATS__MAX_AGE="10m" \
  GALLOP_CLICKHOUSE__DATABASE="gallop_traqq_bench_$tag" GALLOP_INGEST__LISTEN="127.0.0.1:0" \
  GALLOP_CONSUMER__LISTEN="127.0.0.1:0" GALLOP_LOG__FILTER="warn"
target/release/gallop --config "$dir/gallop.toml" run &
run=$!
cleanup() {
  kill $run 2>/dev/null; wait $run 2>/dev/null || true
  curl -fs http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS gallop_traqq_bench_$tag" || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{printf "%.1f", ($14+$15)/100}' "/proc/$1/stat"; }
g0=$(cpu $run)
target/release/gallop-bench traqq-tcp --gallop "127.0.0.1:$port" --mapping bench/traqq/mapping.json "$@"
echo "CPU seconds of gallop run (gateway + processor) during the bench: $(echo "$(cpu $run) - $g0" | bc)"
