#!/usr/bin/env bash
# The chaos suite (examples/chaos.rs, docs/CHAOS.md): broker SIGKILL and
# restart, fraudline SIGKILL loops, poison and oversize records, partitions
# added at run time, a full disk under the audit spill file; each in both
# delivery modes, counting events in, verdicts out, dead letters, missing and
# duplicated. Prints a markdown table; exits non-zero when a case fails.
#
#   bench/chaos.sh --short            every case, both modes, small (CI; about 5 min after the build)
#   bench/chaos.sh                    more events, longer outages, a kill loop of 10 (about 15 min)
#   bench/chaos.sh --cases poison,oversize --modes exactly-once
#                                     any chaos argument (--help lists them)
#
# Environment:
#   FRAUDLINE_KAFKA_STATE   broker state directory (default /tmp/fraudline-kafka-chaos,
#                           apart from the tests' and benches' brokers); the suite kills
#                           and restarts this broker
#   CARGO_TARGET_DIR        as for cargo
# A broker this script starts is stopped on exit; one already running is reused and left.
# spill-full mounts a 256 KiB tmpfs (needs root / CAP_SYS_ADMIN; SKIPPED otherwise).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export FRAUDLINE_KAFKA_STATE="${FRAUDLINE_KAFKA_STATE:-/tmp/fraudline-kafka-chaos}"
target="${CARGO_TARGET_DIR:-$repo/target}"

cargo build --release --bin fraudline --example chaos >&2

if ! deploy/kafka/broker.sh status >/dev/null 2>&1; then
  trap 'deploy/kafka/broker.sh stop' EXIT
fi
brokers="$(deploy/kafka/broker.sh start)"

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
"$target/release/examples/chaos" --brokers "$brokers" --broker-state "$FRAUDLINE_KAFKA_STATE" \
  --bin "$target/release/fraudline" "$@"
