#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders, the rule language, the blocklist
# parsers and the HTTP scoring endpoint (fuzz/, cargo-fuzz + libFuzzer; what
# each target asserts: docs/FUZZING.md). Builds every target, runs them one
# after another on one core each (nice 19), and prints a markdown table:
# inputs executed, exec/s, coverage, and the crashes, timeouts and OOMs found.
# Exits non-zero if any target found one, or did not run.
#
#   bench/fuzz.sh                  long: up to 10,000,000 inputs per target
#   bench/fuzz.sh --short          CI: every target for SHORT_SECS (20) seconds
#   bench/fuzz.sh --runs 2000000 --max-time 300 rules blocklist
#
# Options: --short, --runs N (default 10000000), --max-time S (per target; 0 =
# no limit, default), then target names (default: all).
# Environment:
#   FRAUDLINE_FUZZ_TOOLCHAIN  rustup toolchain (default: stable; see below)
#   FRAUDLINE_FUZZ_SANITIZER  none (default) or address (needs nightly)
#   FRAUDLINE_TOOLS_DIR       where cargo-fuzz is installed when missing
#                             (default ~/.cache/fraudline-tools)
#   SHORT_SECS                seconds per target in --short mode (20)
#
# Stable Rust runs libFuzzer through cargo-fuzz when no sanitizer is asked
# for: the coverage instrumentation (-Cpasses=sancov-module ...) is stable,
# only -Zsanitizer is not. fraudline forbids unsafe code, so AddressSanitizer
# would mostly watch dependencies; the targets are built with debug
# assertions (integer overflow checks) instead. FRAUDLINE_FUZZ_TOOLCHAIN=nightly
# FRAUDLINE_FUZZ_SANITIZER=address runs the same targets under ASan.
#
# Found inputs land in fuzz/artifacts/<target>/ (crash-*, timeout-*, oom-*);
# replay one with `fuzz/target/x86_64-unknown-linux-gnu/release/<target> FILE`.
# The long mode keeps its grown corpus in fuzz/corpus-run/<target> (ignored
# by git) and resumes from it; --short uses a scratch one.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

ALL_TARGETS=(decode_json decode_protobuf decode_iso20022 rules rule_expr blocklist http_score)
short=0
runs=10000000
max_time=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --runs) runs="$2"; shift ;;
    --max-time) max_time="$2"; shift ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
if [ "$short" = 1 ]; then
  runs=0
  max_time="${SHORT_SECS:-20}"
fi

toolchain="${FRAUDLINE_FUZZ_TOOLCHAIN:-stable}"
sanitizer="${FRAUDLINE_FUZZ_SANITIZER:-none}"
tools="${FRAUDLINE_TOOLS_DIR:-$HOME/.cache/fraudline-tools}"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"
started=$(date +%s)

# cargo-fuzz from crates.io when missing; a tool that still cannot be found
# fails the run (a fuzz step that silently passes proves nothing).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz into $tools (cargo install --locked)" >&2
  cargo install --locked --root "$tools" cargo-fuzz >&2
fi
cargo fuzz --version >/dev/null 2>&1 || { echo "fuzz.sh: cargo-fuzz is not available" >&2; exit 1; }
rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
  || { echo "fuzz.sh: rust toolchain '$toolchain' is not installed" >&2; exit 1; }

echo "fuzz.sh: building ${#targets[@]} target(s) ($toolchain, sanitizer $sanitizer, debug assertions)" >&2
build_started=$(date +%s)
cargo "+$toolchain" fuzz build --sanitizer "$sanitizer" --debug-assertions >&2
build_secs=$(( $(date +%s) - build_started ))
# cargo fuzz builds into CARGO_TARGET_DIR when it is set, else fuzz/target.
bindir="${CARGO_TARGET_DIR:-$repo/fuzz/target}/x86_64-unknown-linux-gnu/release"

dict_for() {
  case "$1" in
    decode_json|http_score) echo fuzz/dict/json.dict ;;
    rules) echo fuzz/dict/rules.dict ;;
    rule_expr) echo fuzz/dict/rule_expr.dict ;;
    blocklist) echo fuzz/dict/blocklist.dict ;;
    *) echo "" ;;
  esac
}

# Inputs up to the code's own bounds: a condition may be 16 KiB (just past
# it, the size refusal), a rule file has none (32 KiB: a large pack).
# Others: libFuzzer's default (4 KiB, or the largest seed).
maxlen_for() {
  case "$1" in
    rule_expr) echo 16640 ;;
    rules) echo 32768 ;;
    *) echo 0 ;;
  esac
}

scratch=""
if [ "$short" = 1 ]; then scratch="$(mktemp -d)"; fi
logs="$repo/fuzz/logs"
mkdir -p "$logs"
cleanup() { if [ -n "$scratch" ]; then rm -rf "$scratch"; fi; }
trap cleanup EXIT

rows=()
failed=0
for t in "${targets[@]}"; do
  bin="$bindir/$t"
  [ -x "$bin" ] || { echo "fuzz.sh: $bin was not built" >&2; exit 1; }
  if [ "$short" = 1 ]; then work="$scratch/$t"; else work="$repo/fuzz/corpus-run/$t"; fi
  art="$repo/fuzz/artifacts/$t"
  mkdir -p "$work" "$art"
  before=$(ls "$art" | sort)
  args=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "-artifact_prefix=$art/")
  [ "$runs" != 0 ] && args+=("-runs=$runs")
  [ "$max_time" != 0 ] && args+=("-max_total_time=$max_time")
  m="$(maxlen_for "$t")"
  [ "$m" != 0 ] && args+=("-max_len=$m")
  d="$(dict_for "$t")"
  [ -n "$d" ] && args+=("-dict=$repo/$d")
  log="$logs/$t.log"
  echo "fuzz.sh: $t: ${args[*]}" >&2
  t0=$(date +%s)
  set +e
  # A 2 MiB stack, as on the tokio worker and blocking threads where
  # production parses events, rule files and lists (a main thread has 8).
  ( ulimit -s 2048 && exec nice -n 19 "$bin" "${args[@]}" "$work" "$repo/fuzz/corpus/$t" ) >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - t0 ))
  new=$(comm -13 <(echo "$before") <(ls "$art" | sort) || true)
  crashes=$(grep -c '^crash-' <<<"$new" || true)
  timeouts=$(grep -c '^timeout-' <<<"$new" || true)
  ooms=$(grep -c '^oom-' <<<"$new" || true)
  leaks=$(grep -c '^leak-' <<<"$new" || true)
  crashes=$(( crashes + leaks ))
  inputs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n + 0 }' "$log")
  eps=$(awk '/^stat::average_exec_per_sec:/ { n = $2 } END { print n + 0 }' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | awk '{ print $2 " / " $4 }')
  corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1 | awk '{ print $2 }')
  result=ok
  if [ $(( crashes + timeouts + ooms )) -gt 0 ]; then
    result="FOUND: $(tr '\n' ' ' <<<"$new")"
    failed=1
  elif [ "$rc" != 0 ] || ! grep -q '^Done [0-9]* runs' "$log"; then
    result="did not finish (exit $rc; see fuzz/logs/$t.log)"
    failed=1
  fi
  rows+=("| $t | $inputs | $eps | $secs | ${cov:--} | ${corp:--} | $crashes | $timeouts | $ooms | $result |")
  echo "fuzz.sh: $t: $inputs inputs in ${secs} s, $result" >&2
done

total=$(( $(date +%s) - started ))
mode=long; [ "$short" = 1 ] && mode=short
echo
echo "fuzz.sh ($mode) $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(rustup run "$toolchain" rustc --version), sanitizer $sanitizer; build ${build_secs} s, whole run ${total} s"
echo
echo "| target | inputs executed | exec/s | time (s) | cov / ft | corpus | crashes | timeouts | OOMs | result |"
echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit "$failed"
