#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on
# 127.0.0.1 for tests and local development. No Docker, no tarball: the broker
# jars come from Maven Central through deploy/kafka/pom.xml and are cached.
#
#   deploy/kafka/broker.sh start     fetch (once), format, start; prints the bootstrap address
#   deploy/kafka/broker.sh stop      stop the broker (SIGTERM, then SIGKILL after 30 s)
#   deploy/kafka/broker.sh kill      SIGKILL the broker (fault injection)
#   deploy/kafka/broker.sh restart   start again on the same port and data (after stop/kill)
#   deploy/kafka/broker.sh status    exit 0 and print the address if it answers
#   deploy/kafka/broker.sh fetch     only fetch the jars
#   deploy/kafka/broker.sh clean     stop and remove the data directory
#   deploy/kafka/broker.sh lease PID...
#                                    the test harness's start: start (or reuse) the
#                                    broker on behalf of the processes PID..., which
#                                    hold it; prints the bootstrap address
#   deploy/kafka/broker.sh reap      (run by `lease`) the reaper loop, see below
#   deploy/kafka/broker.sh held      exit 0 if a live process holds a lease on the broker
#
# Leases (why: `cargo test` must not leave a 768 MB JVM and its port behind, and
# several `cargo test` runs on one machine share /tmp/fraudline-kafka-it):
#   - `lease` writes leases/PID (the process's start time, so a reused pid does
#     not count) for each holder under the state directory and marks a broker it
#     started itself as harness-owned (the file `leased`). A broker that was
#     already running without that mark (started by hand, by a bench script, by
#     an older harness) is used and never stopped, and no lease is written.
#   - `lease` makes sure one reaper runs per harness-owned state directory, in
#     a session of its own (Ctrl-C in the terminal or a killed test does not
#     take it down). It checks the leases every second; once no holder is
#     alive, it waits FRAUDLINE_KAFKA_LEASE_GRACE seconds (so a holder that
#     comes right after can take over the warm broker), then stops the
#     broker and removes the state directory, or only stops it when a holder
#     asked to keep the data (FRAUDLINE_KEEP_TEST_BROKER=1: the file `keep`).
#   - `lease` and the reaper's check-then-stop take an exclusive flock on
#     $(dirname state)/.$(basename state).lock, so a broker is never stopped
#     between a new holder finding it alive and writing its lease.
#
# Environment:
#   FRAUDLINE_KAFKA_CACHE   where jars are cached   (default ~/.cache/fraudline/kafka)
#   FRAUDLINE_KAFKA_STATE   pid, port, data, logs   (default /tmp/fraudline-kafka)
#   FRAUDLINE_KAFKA_PORT    broker port             (default: a free port)
#   FRAUDLINE_KAFKA_LEASE_GRACE  seconds a leased broker outlives its last holder (default 5)
#   FRAUDLINE_KEEP_TEST_BROKER   1: `lease` asks the reaper to keep the data it stops
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FRAUDLINE_KAFKA_CACHE:-$HOME/.cache/fraudline/kafka}"
state="${FRAUDLINE_KAFKA_STATE:-/tmp/fraudline-kafka}"
libs="$cache/libs"
lockfile="$(dirname "$state")/.$(basename "$state").lock"
grace="${FRAUDLINE_KAFKA_LEASE_GRACE:-5}"

log() { echo "broker.sh: $*" >&2; }

free_port() {
  # A port the kernel has free now and that no other broker.sh state dir under
  # the same parent has written down (two brokers started at once would
  # otherwise be able to pick the same port before either binds it).
  local taken
  taken="$(cat "$(dirname "$state")"/fraudline-kafka*/port "$(dirname "$state")"/fraudline-kafka*/cport 2>/dev/null | tr '\n' ' ')"
  python3 -c '
import socket, sys
taken = set(sys.argv[1].split())
for _ in range(50):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if str(p) not in taken:
        print(p); break
' "$taken"
}

fetch() {
  if [ -f "$libs/.complete" ] && [ "$(cat "$libs/.complete")" = "$(sha256sum "$here/pom.xml" | cut -d' ' -f1)" ]; then
    return 0
  fi
  command -v java >/dev/null || { log "java not found (Java 17+ is needed)"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found (Maven is needed to fetch the broker jars)"; exit 1; }
  log "fetching Kafka broker jars from Maven Central into $libs"
  rm -rf "$libs"; mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  sha256sum "$here/pom.xml" | cut -d' ' -f1 > "$libs/.complete"
}

pid_alive() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

answers() {
  local port="$1"
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || return 1
  # A TCP accept is not enough: the controller may not have elected itself yet.
  grep -q "Kafka Server started" "$state/logs/server.log" 2>/dev/null \
    || grep -q "\[KafkaRaftServer nodeId=1\] Kafka Server started" "$state/logs/server.log" 2>/dev/null
}

java_cmd() {
  local main="$1"; shift
  java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$state/log4j.properties" -Dkafka.logs.dir="$state/logs" \
    -cp "$libs/*" "$main" "$@"
}

write_config() {
  local port="$1" cport="$2"
  mkdir -p "$state/data" "$state/logs"
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$state/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.cleaner.enable=true
log.cleaner.backoff.ms=1000
log.segment.bytes=67108864
PROPS
  cat > "$state/log4j.properties" <<PROPS
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$state/logs/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
PROPS
}

launch() {
  : > "$state/logs/server.log"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$state/log4j.properties" -Dkafka.logs.dir="$state/logs" \
    -cp "$libs/*" kafka.Kafka "$state/server.properties" \
    > "$state/logs/stdout.log" 2>&1 < /dev/null 9>&- &
  echo $! > "$state/pid"
  local port; port="$(cat "$state/port")"
  for _ in $(seq 1 240); do
    if answers "$port"; then echo "127.0.0.1:$port"; return 0; fi
    if ! pid_alive; then log "broker exited; see $state/logs"; tail -20 "$state/logs/stdout.log" >&2; exit 1; fi
    sleep 0.5
  done
  log "broker did not answer within 120 s; see $state/logs"; exit 1
}

start() {
  if pid_alive; then echo "127.0.0.1:$(cat "$state/port")"; return 0; fi
  fetch
  rm -rf "$state"; mkdir -p "$state"
  local port="${FRAUDLINE_KAFKA_PORT:-$(free_port)}" cport; cport="$(free_port)"
  echo "$port" > "$state/port"; echo "$cport" > "$state/cport"
  write_config "$port" "$cport"
  local cluster; cluster="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
  java_cmd kafka.tools.StorageTool format -t "$cluster" -c "$state/server.properties" >/dev/null
  launch
}

restart() {
  [ -f "$state/port" ] || { start; return; }
  if pid_alive; then echo "127.0.0.1:$(cat "$state/port")"; return 0; fi
  launch
}

stop() {
  pid_alive || return 0
  local pid; pid="$(cat "$state/pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
}

# --- leases -----------------------------------------------------------------

# Takes the exclusive lock on fd 9. The reaper deletes the lock file with the
# state it removes; a process that was already waiting then holds a lock on
# the deleted file, so it checks that the path still names the file it locked
# and otherwise locks again.
lock() {
  while true; do
    exec 9>>"$lockfile"
    flock 9
    if [ "$(stat -c %d:%i "$lockfile" 2>/dev/null)" = "$(stat -L -c %d:%i /proc/$$/fd/9)" ]; then
      return 0
    fi
    exec 9>&-
  done
}

unlock() { exec 9>&-; }

# The start time (clock ticks since boot) of a live, non-zombie process, or
# nothing. Fields after the command name, which may contain spaces.
started_at() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }"
  set -- $stat
  [ "$1" != Z ] && [ "$1" != X ] && echo "${20}"
  return 0
}

# Whether the holder named by leases/PID (holding its start time) is alive.
holder_alive() {
  local pid="$1" recorded="$2" now
  now="$(started_at "$pid")"
  [ -n "$now" ] && [ "$now" = "$recorded" ]
}

reaper_alive() {
  [ -f "$state/reaper.pid" ] || return 1
  local pid; pid="$(cat "$state/reaper.pid")"
  [ -n "$pid" ] && [ -n "$(started_at "$pid")" ] \
    && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "broker.sh reap"
}

lease() {
  [ "$#" -gt 0 ] || { log "lease: name the holding pids"; exit 2; }
  lock
  if pid_alive; then
    if [ ! -f "$state/leased" ]; then
      # Not the harness's: use it, never stop it.
      unlock
      echo "127.0.0.1:$(cat "$state/port")"
      return 0
    fi
  else
    start >/dev/null
    : > "$state/leased"
  fi
  mkdir -p "$state/leases"
  local pid at
  for pid in "$@"; do
    at="$(started_at "$pid")"
    [ -n "$at" ] || { log "lease: no live process $pid"; continue; }
    echo "$at" > "$state/leases/$pid"
  done
  if [ "${FRAUDLINE_KEEP_TEST_BROKER:-}" = 1 ]; then : > "$state/keep"; fi
  if ! reaper_alive; then
    rm -f "$state/reaper.pid"
    local detach=""
    command -v setsid >/dev/null && detach=setsid
    # No lock fd, no stdout: `lease`'s caller reads stdout to its end.
    FRAUDLINE_KAFKA_STATE="$state" FRAUDLINE_KAFKA_LEASE_GRACE="$grace" \
      $detach nohup "$here/broker.sh" reap >> "$state/logs/reaper.log" 2>&1 < /dev/null 9>&- &
    # Still under the lock, so no second reaper starts: wait for this one to
    # say who it is.
    for _ in $(seq 1 100); do [ -s "$state/reaper.pid" ] && break; sleep 0.05; done
    reaper_alive || { log "lease: the reaper did not start; see $state/logs/reaper.log"; exit 1; }
  fi
  unlock
  echo "127.0.0.1:$(cat "$state/port")"
}

held() {
  local f
  for f in "$state"/leases/*; do
    [ -e "$f" ] || continue
    holder_alive "$(basename "$f")" "$(cat "$f")" && return 0
  done
  return 1
}

reap() {
  # `lease` runs this holding the lock and waits for the pid file.
  echo $$ > "$state/reaper.pid"
  log "reaper $$: watching the leases of $state"
  local empty_since="" now f live
  while true; do
    sleep 1
    lock
    # The state was removed or started afresh by hand (`start` wipes it): not ours any more.
    if [ ! -f "$state/leased" ] || [ "$(cat "$state/reaper.pid" 2>/dev/null)" != $$ ]; then
      [ -d "$state" ] || rm -f "$lockfile"
      exit 0
    fi
    live=0
    for f in "$state"/leases/*; do
      [ -e "$f" ] || continue
      if holder_alive "$(basename "$f")" "$(cat "$f")"; then live=1; else rm -f "$f"; fi
    done
    if [ "$live" = 1 ]; then
      empty_since=""
    else
      now="$(date +%s)"
      [ -n "$empty_since" ] || empty_since="$now"
      if [ $((now - empty_since)) -ge "$grace" ]; then
        log "reaper $$: no holder left for ${grace} s: stopping the broker"
        stop
        if [ -f "$state/keep" ]; then
          rm -f "$state/reaper.pid" "$state/leased"
          log "reaper $$: data kept in $state (FRAUDLINE_KEEP_TEST_BROKER=1)"
        else
          rm -rf "$state"
          rm -f "$lockfile"
        fi
        exit 0
      fi
    fi
    unlock
  done
}

case "${1:-}" in
  start) start ;;
  restart) restart ;;
  stop) stop ;;
  kill) if pid_alive; then kill -KILL "$(cat "$state/pid")"; sleep 0.5; fi ;;
  status) if pid_alive && answers "$(cat "$state/port")"; then echo "127.0.0.1:$(cat "$state/port")"; else exit 1; fi ;;
  fetch) fetch ;;
  clean) stop; rm -rf "$state" ;;
  lease) shift; lease "$@" ;;
  reap) reap ;;
  held) held ;;
  *) sed -n '2,43p' "$0"; exit 2 ;;
esac
