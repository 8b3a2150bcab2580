#!/usr/bin/env bash
# Gallop's test command: starts (installing if needed) NATS JetStream and ClickHouse, then
# runs every test of the workspace. Tests that need a service fail loudly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh up
cargo test --workspace --locked "$@"
