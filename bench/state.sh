#!/usr/bin/env bash
# The state layer's costs on a real local Kafka broker (examples/state_bench.rs):
# stream throughput with the state log and snapshots vs without, memory per
# instance, start-to-ready from the snapshot vs replaying the whole state
# log, and propagation lag between two instances. Prints a markdown table.
#
#   bench/state.sh                 1,000,000 accounts, 2,000,000 payments (about 15 min)
#   bench/state.sh --short         50,000 accounts, 100,000 payments (about 2 min)
#   bench/state.sh --rate 5000     any state_bench argument (--help lists them)
#
# Environment:
#   FRAUDLINE_KAFKA_STATE   broker state directory (default /tmp/fraudline-kafka-bench,
#                           apart from the integration tests' broker)
#   CARGO_TARGET_DIR        as for cargo
# A broker this script starts is stopped on exit; one already running is reused and left.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export FRAUDLINE_KAFKA_STATE="${FRAUDLINE_KAFKA_STATE:-/tmp/fraudline-kafka-bench}"
target="${CARGO_TARGET_DIR:-$repo/target}"

cargo build --release --bin fraudline --example state_bench >&2

if ! deploy/kafka/broker.sh status >/dev/null 2>&1; then
  trap 'deploy/kafka/broker.sh stop' EXIT
fi
brokers="$(deploy/kafka/broker.sh start)"
broker_pid="$(cat "$FRAUDLINE_KAFKA_STATE/pid")"

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
"$target/release/examples/state_bench" --brokers "$brokers" --bin "$target/release/fraudline" --broker-pid "$broker_pid" "$@"
