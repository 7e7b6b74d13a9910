#!/usr/bin/env bash
# End-to-end throughput and latency on a real local Kafka broker: fraudline's
# stream pipeline beside a plain rdkafka consume -> produce pass-through, in
# one run (examples/e2e_bench.rs). Prints markdown tables on stdout.
#
#   bench/e2e.sh                        defaults: 500,000 events; 5,000 events/s for 10 s
#   bench/e2e.sh --repeat 3             any e2e_bench argument (--help lists them)
#   FRAUDLINE_E2E_SHORT=1 bench/e2e.sh  the main tables only (no floor, scaling or settings)
#
# In one run: (1) fraudline at-least-once and exactly-once beside the
# pass-through, with their ratios; (2) Kafka's own tools on the same broker
# (bench/kafka_perf.sh), the independent floor; (3) scaling: one scoring lane
# against one per core; (4) the latency / throughput trade-off of the
# consumer's fetch wait and the producer's linger, pass-through beside
# fraudline at each.
#
# Environment:
#   FRAUDLINE_KAFKA_STATE   broker state directory (default /tmp/fraudline-kafka-bench,
#                           apart from the integration tests' broker)
#   CARGO_TARGET_DIR        as for cargo
# A broker this script starts is stopped on exit; one already running is reused and left.
# A freshly started broker (cold JVM) is several times slower for its first minute, so
# the script first runs one untimed pass against it (FRAUDLINE_BENCH_NO_WARMUP=1 skips it).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export FRAUDLINE_KAFKA_STATE="${FRAUDLINE_KAFKA_STATE:-/tmp/fraudline-kafka-bench}"

cargo build --release --example e2e_bench >&2

fresh=0
if ! deploy/kafka/broker.sh status >/dev/null 2>&1; then
  fresh=1
  trap 'deploy/kafka/broker.sh stop' EXIT
fi
brokers="$(deploy/kafka/broker.sh start)"
broker_pid="$(cat "$FRAUDLINE_KAFKA_STATE/pid")"

if [ "$fresh" = 1 ] && [ "${FRAUDLINE_BENCH_NO_WARMUP:-0}" != 1 ]; then
  echo "e2e.sh: warming the new broker (one untimed pass)" >&2
  cargo run -q --release --example e2e_bench -- \
    --brokers "$brokers" --events 200000 --secs 5 >/dev/null 2>&1
fi

echo "## fraudline end to end"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), broker $brokers (single node, KRaft, same machine)"
echo
cargo run -q --release --example e2e_bench -- \
  --brokers "$brokers" --broker-pid "$broker_pid" --events 500000 "$@"

[ "${FRAUDLINE_E2E_SHORT:-0}" = 1 ] && exit 0

bench/kafka_perf.sh "$brokers" 500000 "$(cargo run -q --release --example e2e_bench -- --mean-bytes)" 5000

echo "### Scaling: scoring lanes (kafka.scoring_threads), at-least-once, 500,000 events"
echo
echo "| run | system | events/s | ratio to pass-through | p50 ms | p99 ms | p99.9 ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for lanes in 1 2; do
  cargo run -q --release --example e2e_bench -- --brokers "$brokers" --no-exactly-once \
    --no-latency --events 500000 --scoring-threads "$lanes" --rows "$lanes lane(s)"
done
echo

echo "### Latency against throughput: consumer fetch wait and producer linger (at-least-once; latency at 5,000 events/s)"
echo
echo "| fetch_wait_max_ms, linger_ms | system | events/s | ratio to pass-through | p50 ms | p99 ms | p99.9 ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for s in "1 0" "10 1" "100 5" "500 20"; do
  set -- $s
  cargo run -q --release --example e2e_bench -- --brokers "$brokers" --no-exactly-once \
    --events 500000 --kafka "fetch_wait_max_ms=$1" --kafka "linger_ms=$2" --rows "$1, $2$([ "$s" = "10 1" ] && echo ' (default)')"
done
echo
