#!/usr/bin/env bash
# Rebuilds deploy/models/example-model.txt: the example model shipped with
# fraudline, trained on GENERATED history only (fraudline gen). It shows the
# format and the workflow; it knows nothing of a real bank's customers and
# must be retrained on the bank's own labels before it is trusted.
#
#   deploy/models/train_example.sh            (needs python3 with lightgbm, numpy:
#                                              deploy/ci/install-tools.sh installs them)
#
# Training seed 101; the figures in deploy/models/README.md are on seed 9001,
# which the model never saw.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
tools="${FRAUDLINE_TOOLS_DIR:-$HOME/.cache/fraudline-tools}"
export PYTHONPATH="$tools/py-lgbm${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
cargo build --release --quiet --bin fraudline
bin="${CARGO_TARGET_DIR:-$repo/target}/release/fraudline"
"$bin" gen --count 600000 --accounts 20000 --events-per-sec 1.2 --fraud-rate 0.01 \
  --seed 101 --blocklist-out "$work/bl.jsonl" > "$work/history.jsonl"
"$bin" backtest --rules deploy/rules/default.toml --events "$work/history.jsonl" \
  --blocklist "$work/bl.jsonl" --features-out "$work/features.csv" > /dev/null
python3 deploy/models/train_lightgbm.py "$work/features.csv" "$here/example-model.txt" \
  --trees 200 --depth 6 --seed 1
echo "wrote $here/example-model.txt ($(wc -c < "$here/example-model.txt") bytes)"
