#!/usr/bin/env bash
# Heap allocations per record on a scoring lane's path, stage by stage
# (examples/alloc_count.rs): decode into the lane's buffers, score, encode
# the verdict record. Counted with perf uprobes on mimalloc's allocation
# entry points (malloc, zalloc, realloc), 100,000 records after 100,000 of
# warm-up; each stage's count is the run's minus a run that stops after
# the set-up. Prints a markdown table. About 6 minutes (uprobes are slow).
#
#   bench/allocs.sh
#
# Needs perf and the right to place uprobes (root); without them it says
# SKIPPED and exits 2. Environment: CARGO_TARGET_DIR as for cargo.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
cargo build -q --release --example alloc_count >&2
bin="$target/release/examples/alloc_count"
records=100000

if ! command -v perf >/dev/null 2>&1; then
  echo "SKIPPED: perf is not installed (Debian: linux-perf)"
  exit 2
fi
group=fraudline_allocs
perf probe -q -d "$group:*" >/dev/null 2>&1 || true
trap 'perf probe -q -d "$group:*" >/dev/null 2>&1 || true' EXIT
for f in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  if ! perf probe -q -x "$bin" -a "$group:$f=$f" >/dev/null 2>&1; then
    echo "SKIPPED: cannot place a uprobe on $f in $bin (root and uprobes needed)"
    exit 2
  fi
done

# Allocation calls of one run: STAGE and FORMAT as examples/alloc_count.rs reads them.
count() {
  STAGE="$1" FORMAT="$2" perf stat -x, -e "$group:*" "$bin" 2>&1 >/dev/null |
    awk -F, -v g="$group" 'index($3, g) == 1 { n += $1 } END { print n + 0 }'
}
per() { awk -v a="$1" -v b="$2" -v n="$records" 'BEGIN { printf "%.2f", (a - b) / n }'; }

echo "| format | decode | score | encode | a lane's whole path |"
echo "| --- | ---: | ---: | ---: | ---: |"
for format in protobuf json; do
  none=$(count none "$format")
  decode=$(count decode "$format")
  score=$(count score "$format")
  all=$(count all "$format")
  echo "| $format | $(per "$decode" "$none") | $(per "$score" "$decode") | $(per "$all" "$score") | $(per "$all" "$none") |"
done
echo
echo "Allocations per record (mimalloc calls; realloc counts as one). The set-up's own"
echo "count varies by about 0.02 per record from run to run. 'score' includes the feature"
echo "store's growth (new entities, spilled buckets)."
