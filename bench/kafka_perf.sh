#!/usr/bin/env bash
# Kafka's own performance tools on a broker: the independent floor that
# bench/e2e.sh prints beside examples/e2e_bench.rs's pass-through (which is
# ours, so it could drift with the product; these cannot). Prints a markdown
# table on stdout, progress on stderr.
#
#   bench/kafka_perf.sh BROKERS [EVENTS] [RECORD_BYTES] [RATE]
#
#   - produce only: org.apache.kafka.tools.ProducerPerformance, EVENTS records
#     of RECORD_BYTES flat out (acks=all, idempotent, linger.ms=1: fraudline's
#     producer settings), and paced at RATE/s (its send -> ack percentiles);
#   - consume only: org.apache.kafka.tools.ConsumerPerformance, the same
#     EVENTS records read back from 3 partitions;
#   - one hop: org.apache.kafka.tools.EndToEndLatency, 5,000 records sent one
#     at a time, send -> consumed (acks=all).
# A consume -> produce pass-through does both halves in one process, so it
# cannot beat the slower of the two; fraudline's ratios are taken against
# e2e_bench's pass-through, which this table keeps honest.
#
# Environment: FRAUDLINE_KAFKA_CACHE (default ~/.cache/fraudline/kafka).
set -euo pipefail

brokers="${1:?usage: bench/kafka_perf.sh BROKERS [EVENTS] [RECORD_BYTES] [RATE]}"
events="${2:-200000}"
bytes="${3:-200}"
rate="${4:-5000}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FRAUDLINE_KAFKA_CACHE:-$HOME/.cache/fraudline/kafka}"
libs="$cache/tools-libs"
pom="$here/kafka-tools/pom.xml"

log() { echo "kafka_perf.sh: $*" >&2; }

if ! { [ -f "$libs/.complete" ] && [ "$(cat "$libs/.complete")" = "$(sha256sum "$pom" | cut -d' ' -f1)" ]; }; then
  command -v mvn >/dev/null || { log "mvn not found (Maven fetches Kafka's tools)"; exit 1; }
  log "fetching Kafka's tools from Maven Central into $libs"
  rm -rf "$libs"; mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  sha256sum "$pom" | cut -d' ' -f1 > "$libs/.complete"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'log4j.rootLogger=WARN, stderr\nlog4j.appender.stderr=org.apache.log4j.ConsoleAppender\nlog4j.appender.stderr.Target=System.err\nlog4j.appender.stderr.layout=org.apache.log4j.PatternLayout\nlog4j.appender.stderr.layout.ConversionPattern=%%m%%n\n' > "$work/log4j.properties"
tool() {
  local main="$1"; shift
  java -Xms256m -Xmx1g -Dlog4j.configuration="file:$work/log4j.properties" \
    -cp "$libs/*" "org.apache.kafka.tools.$main" "$@"
}

tag="perf-$(date +%s)-$$"
tool TopicCommand --bootstrap-server "$brokers" --create --topic "$tag" --partitions 3 --replication-factor 1 >&2
tool TopicCommand --bootstrap-server "$brokers" --create --topic "$tag-paced" --partitions 3 --replication-factor 1 >&2
tool TopicCommand --bootstrap-server "$brokers" --create --topic "$tag-e2e" --partitions 1 --replication-factor 1 >&2

props=(bootstrap.servers="$brokers" acks=all enable.idempotence=true linger.ms=1)

log "produce only: $events records of $bytes bytes, flat out"
# The last line: "N records sent, R records/sec (M MB/sec), A ms avg latency,
# X ms max latency, p50 ms 50th, p95 ms 95th, p99 ms 99th, p999 ms 99.9th."
produce="$(tool ProducerPerformance --topic "$tag" --num-records "$events" --record-size "$bytes" \
  --throughput -1 --producer-props "${props[@]}" | tail -1)"
log "  $produce"
p_rate="$(sed -E 's/.* records sent, ([0-9.]+) records\/sec.*/\1/' <<<"$produce")"

log "produce only: $((rate * 10)) records at $rate/s"
paced="$(tool ProducerPerformance --topic "$tag-paced" --num-records "$((rate * 10))" --record-size "$bytes" \
  --throughput "$rate" --producer-props "${props[@]}" | tail -1)"
log "  $paced"
pick() { sed -E "s/.* ([0-9.]+) ms $1.*/\1/" <<<"$paced"; }
pp50="$(pick 50th)"; pp99="$(pick 99th)"; pp999="$(pick 99.9th)"

log "consume only: the same $events records"
# CSV: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg,
# nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
consume="$(tool ConsumerPerformance --bootstrap-server "$brokers" --topic "$tag" --messages "$events" \
  --timeout 60000 --group "$tag-group" | tail -1)"
log "  $consume"
c_rate="$(cut -d, -f10 <<<"$consume" | tr -d ' ')"

log "one hop: 5000 records sent one at a time"
hop="$(tool EndToEndLatency "$brokers" "$tag-e2e" 5000 all "$bytes" 2>/dev/null | tail -2 | tr '\n' ' ')"
log "  $hop"
h_avg="$(sed -E 's/.*Avg latency: ([0-9.]+) ms.*/\1/' <<<"$hop")"
h_pct="$(sed -E 's/.*Percentiles: 50th = ([0-9]+), 99th = ([0-9]+), 99.9th = ([0-9]+).*/\1 \2 \3/' <<<"$hop")"
read -r h50 h99 h999 <<<"$h_pct"

echo "### Kafka's own tools on the same broker (independent floor; kafka-tools $(sed -n 's:.*<version>\([0-9.]*\)</version>.*:\1:p' "$pom" | sed -n 2p))"
echo
echo "| tool | what | events/s | p50 ms | p99 ms | p99.9 ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
printf '| ProducerPerformance | produce only, %s records of %s B, flat out (acks=all, idempotent, linger.ms=1) | %.0f | | | |\n' "$events" "$bytes" "$p_rate"
printf '| ConsumerPerformance | consume only, the same records, 3 partitions (fetch rate, rebalance excluded) | %.0f | | | |\n' "$c_rate"
printf '| ProducerPerformance | produce only at %s/s: send -> ack | | %s | %s | %s |\n' "$rate" "$pp50" "$pp99" "$pp999"
printf '| EndToEndLatency | one hop, one record at a time: send -> consumed (acks=all; avg %s ms) | | %s | %s | %s |\n' "$h_avg" "$h50" "$h99" "$h999"
echo
