#!/usr/bin/env bash
# A ClickHouse cluster on loopback for the cluster sink (issue 31): ZooKeeper (Debian
# `zookeeper`, standalone on 127.0.0.1:12181) and four Debian clickhouse-server 18.16
# processes forming cluster `gallop_test`, 2 shards × 2 replicas:
#   chN: HTTP 1812N, TCP 1900N, interserver 1901N; ch1/ch2 shard 01, ch3/ch4 shard 02
# with macros {cluster}, {shard}, {replica} and the distributed DDL queue, so `ON CLUSTER`
# DDL and Replicated*MergeTree tables work. State under $TEST_GALLOP_CLUSTER_DIR (default
# /tmp/gallop-cluster). The daemon on 8123 (scripts/services.sh) is not touched.
#
#   scripts/cluster.sh up            install ZooKeeper when missing, start what is not running
#   scripts/cluster.sh down [--wipe] stop what `up` started (by pid file); --wipe deletes data
#
# Found while prototyping (2026-12-07): Debian's zkServer.sh hard-codes /etc/zookeeper and
# /var/log/zookeeper, so the JVM is started directly; ZooKeeper answers `ruok` before it
# accepts sessions, and a ClickHouse server started in that window exits ("Cannot create
# table from metadata"), so readiness is `srvr` reporting `Mode: standalone`.
set -euo pipefail

BASE=${TEST_GALLOP_CLUSTER_DIR:-/tmp/gallop-cluster}
ZK_PORT=12181
log() { printf '[cluster] %s\n' "$*" >&2; }

zk_ready() { (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && cat <&3) 2>/dev/null | grep -q '^Mode: standalone'; }
# Whether the pid in chN's pid file is (still) a live process.
exiting_pid() { local f="$BASE/ch$1/clickhouse.pid"; [ -s "$f" ] && kill -0 "$(tr -d '[:space:]' <"$f")" 2>/dev/null; }
ch_ready() { curl -sf "http://127.0.0.1:1812$1/ping" >/dev/null 2>&1; }

configure() {
  mkdir -p "$BASE/zk/conf" "$BASE/zk/data" "$BASE/zk/logs"
  cat > "$BASE/zk/conf/zoo.cfg" <<CFG
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$BASE/zk/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr,conf
maxClientCnxns=0
CFG
  cat > "$BASE/zk/conf/log4j.properties" <<CFG
log4j.rootLogger=INFO, FILE
log4j.appender.FILE=org.apache.log4j.FileAppender
log4j.appender.FILE.File=$BASE/zk/logs/zookeeper.log
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} - %-5p [%t] - %m%n
CFG
  cat > "$BASE/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  local i shard replica dir
  for i in 1 2 3 4; do
    dir="$BASE/ch$i"
    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
    shard=$(printf '%02d' $(((i + 1) / 2)))
    replica=$(printf 'replica%02d' $(((i + 1) % 2 + 1)))
    cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$dir/log/clickhouse-server.log</log>
        <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>1812$i</http_port>
    <tcp_port>1900$i</tcp_port>
    <interserver_http_port>1901$i</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>50</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$BASE/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <remote_servers>
        <gallop_test>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>19001</port></replica>
                <replica><host>127.0.0.1</host><port>19002</port></replica>
            </shard>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>19003</port></replica>
                <replica><host>127.0.0.1</host><port>19004</port></replica>
            </shard>
        </gallop_test>
    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
        <operation_timeout_ms>10000</operation_timeout_ms>
    </zookeeper>
    <macros>
        <cluster>gallop_test</cluster>
        <shard>$shard</shard>
        <replica>$replica</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
XML
  done
}

up() {
  command -v clickhouse-server >/dev/null || { log "clickhouse-server is missing: run scripts/services.sh clickhouse"; exit 1; }
  if [ ! -f /usr/share/java/zookeeper.jar ]; then
    log "apt-get install zookeeper"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; }
  fi
  configure
  if ! zk_ready; then
    local cp="$BASE/zk/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
    nohup java -Xms64m -Xmx256m -cp "$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain "$BASE/zk/conf/zoo.cfg" \
      >>"$BASE/zk/logs/stdout.log" 2>&1 </dev/null &
    echo $! >"$BASE/zk/zk.pid"
    for _ in $(seq 1 300); do zk_ready && break; sleep 0.1; done
    zk_ready || { log "FATAL: ZooKeeper did not serve on 127.0.0.1:$ZK_PORT within 30 s; see $BASE/zk/logs"; exit 1; }
  fi
  log "ZooKeeper serving on 127.0.0.1:$ZK_PORT"
  local i
  for i in 1 2 3 4; do
    ch_ready "$i" && continue
    # A server just SIGKILLed takes a second or two to exit; started meanwhile, the new one
    # finds its pid alive, exits at once and removes the pid file.
    exiting_pid "$i" && for _ in $(seq 1 100); do exiting_pid "$i" || break; sleep 0.1; done
    clickhouse-server --config-file="$BASE/ch$i/config.xml" --pid-file="$BASE/ch$i/clickhouse.pid" --daemon
  done
  for i in 1 2 3 4; do
    for _ in $(seq 1 300); do ch_ready "$i" && break; sleep 0.1; done
    ch_ready "$i" || { log "FATAL: ch$i did not answer on 127.0.0.1:1812$i within 30 s; see $BASE/ch$i/log"; exit 1; }
  done
  log "cluster gallop_test up: HTTP 18121-18124 (shard 01: ch1, ch2; shard 02: ch3, ch4)"
}

stop_pid() { # pidfile name
  [ -f "$1" ] || return 0
  local pid
  pid=$(tr -d '[:space:]' <"$1")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$2 ($pid) still running after 15 s: SIGKILL"; kill -KILL "$pid"; fi
  fi
  rm -f "$1"
}

down() {
  local i
  for i in 1 2 3 4; do stop_pid "$BASE/ch$i/clickhouse.pid" "ch$i" & done
  wait
  stop_pid "$BASE/zk/zk.pid" zookeeper
  if [ "${1:-}" = "--wipe" ]; then rm -rf "$BASE"; fi
  log "cluster down"
}

case "${1:-up}" in
  up) up ;;
  down) down "${2:-}" ;;
  *) echo "usage: $0 up | down [--wipe]" >&2; exit 2 ;;
esac
