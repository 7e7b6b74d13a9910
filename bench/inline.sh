#!/usr/bin/env bash
# In-line API latency at fixed request rates, from real external load tools on
# 127.0.0.1: ghz (gRPC, schema from server reflection) and vegeta (HTTP, open loop). Each rate runs twice:
# against fraudline scoring with the default rule pack ("engine"), and against
# the same server answering a constant ALLOW without calling the engine
# (inline.constant_verdict = true: the framework's floor). Every request is a
# new payment (unique event_id, payer and payee drawn from 100,000 accounts),
# so no answer comes from the idempotency cache. Prints a markdown table.
#
#   bench/inline.sh                       rates 1000 2000 4000 8000 /s, 10 s each
#   RATES="500 1000" SECS=5 bench/inline.sh
#
# Tools are installed when missing: ghz and vegeta with `go install` (Go
# module proxy) into $GOBIN (default ~/go/bin). The audit trail is off (no
# Kafka in this benchmark); the server and the load tool share the machine.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
RATES="${RATES:-1000 2000 4000 8000}"
SECS="${SECS:-10}"
export GOBIN="${GOBIN:-$HOME/go/bin}"
export PATH="$GOBIN:$PATH"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v ghz >/dev/null || { echo "inline.sh: installing ghz" >&2; go install github.com/bojand/ghz/cmd/ghz@latest; }
command -v vegeta >/dev/null || { echo "inline.sh: installing vegeta" >&2; go install github.com/tsenart/vegeta/v12@latest; }
# The floor (inline.constant_verdict) is a test-only setting: this build has it.
cargo build -q --release --features test-knobs --bin fraudline >&2
bin="${CARGO_TARGET_DIR:-$repo/target}/release/fraudline"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

start_server() { # $1 = constant_verdict (true/false)
  grpc_port="$(free_port)"; http_port="$(free_port)"; metrics_port="$(free_port)"
  # constant_verdict goes in a config file, not an environment override: an
  # override takes the type of the shipped default it replaces, and this
  # test-only key has none (FRAUDLINE_INLINE__CONSTANT_VERDICT=true is read
  # as a string and refused).
  printf '[inline]\nconstant_verdict = %s\n' "$1" >"$work/inline.toml"
  # No Kafka in this benchmark: no stream, no state layer, no audit trail.
  FRAUDLINE_CONFIG="$work/inline.toml" \
  FRAUDLINE_KAFKA__PAYMENTS_TOPIC="" \
  FRAUDLINE_KAFKA__STATE_TOPIC="" \
  FRAUDLINE_HTTP__LISTEN="127.0.0.1:$metrics_port" \
  FRAUDLINE_RULES__FILE="$repo/deploy/rules/default.toml" \
  FRAUDLINE_INLINE__ENABLED=true \
  FRAUDLINE_INLINE__GRPC_LISTEN="127.0.0.1:$grpc_port" \
  FRAUDLINE_INLINE__HTTP_LISTEN="127.0.0.1:$http_port" \
  FRAUDLINE_INLINE__AUDIT=false \
  FRAUDLINE_LOG__LEVEL=warn \
    "$bin" run >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "inline.sh: the server did not become ready:" >&2; cat "$work/server.log" >&2; exit 1
}

stop_server() {
  kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

now_ms="$(python3 -c 'import time; print(int(time.time()*1000))')"

# HTTP targets: one unique payment per request, for vegeta's JSON target format.
http_targets() { # $1 = count, $2 = tag
  python3 - "$1" "$2" "$http_port" "$now_ms" <<'PY'
import base64, json, random, sys
n, tag, port, now = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
rnd = random.Random(tag)
for i in range(n):
    ev = {"event_id": f"h-{tag}-{i}", "event_time_ms": now + i // 10,
          "payer": {"account": str(1000000 + rnd.randrange(100000)), "bank_code": "MBB", "kind": "ACCOUNT"},
          "payee": {"account": str(1000000 + rnd.randrange(100000)), "bank_code": "TPB", "kind": "ACCOUNT"},
          "amount_minor": rnd.randrange(10000, 5000000), "currency": "VND", "channel": "MOBILE",
          "payment_type": "TRANSFER", "device_id": f"dev-{rnd.randrange(100000)}", "ip": "10.1.2.3",
          "phone": "+84900001234", "country": "VN"}
    print(json.dumps({"method": "POST", "url": f"http://127.0.0.1:{port}/v1/score",
                      "header": {"Content-Type": ["application/json"]},
                      "body": base64.b64encode(json.dumps(ev).encode()).decode()}))
PY
}

# Percentiles (ms) from a list of latencies in ns on stdin: "p50 p99 p999 errors".
percentiles() {
  python3 -c '
import sys
lat = []; err = 0
for line in sys.stdin:
    v, ok = line.split()
    if ok == "1": lat.append(int(v))
    else: err += 1
lat.sort()
def p(q):
    return lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6 if lat else float("nan")
print(f"{p(0.50):.3f} {p(0.99):.3f} {p(0.999):.3f} {err} {len(lat)}")
'
}

# The server's own view: fraudline_inline_request_duration_seconds buckets for
# one protocol, as "le count" lines.
buckets() { # $1 = protocol
  curl -s "http://127.0.0.1:$metrics_port/metrics" \
    | sed -n "s/^fraudline_inline_request_duration_seconds_bucket{protocol=\"$1\",le=\"\([^\"]*\)\"} \([0-9]*\)$/\1 \2/p"
}

# The bucket bound (ms) under which 99 % of the calls between two bucket
# snapshots finished, inside the server: "<= X".
server_p99() { # $1 = before file, $2 = after file
  python3 - "$1" "$2" <<'PY'
import sys
def load(f):
    return {le: int(c) for le, c in (l.split() for l in open(f) if l.strip())}
a, b = load(sys.argv[1]), load(sys.argv[2])
rows = sorted(((float("inf") if le == "+Inf" else float(le)), b[le] - a.get(le, 0)) for le in b)
total = rows[-1][1] if rows else 0
for le, c in rows:
    if total and c >= 0.99 * total:
        print("<=%g" % (le * 1000) if le != float("inf") else ">1000")
        break
else:
    print("n/a")
PY
}

run_grpc() { # $1 = rate, $2 = tag
  local n=$(( $1 * SECS ))
  ghz --insecure \
      --call fraudline.v1.Scoring/Score --rps "$1" -n "$n" -c 64 --connections 4 \
      --format json --output "$work/ghz.json" \
      -d "{\"event_id\":\"g-$2-{{.RequestNumber}}\",\"event_time_ms\":$now_ms,
           \"payer\":{\"account\":\"{{randomInt 1000000 1100000}}\",\"bank_code\":\"MBB\",\"kind\":\"ACCOUNT_KIND_ACCOUNT\"},
           \"payee\":{\"account\":\"{{randomInt 1000000 1100000}}\",\"bank_code\":\"TPB\",\"kind\":\"ACCOUNT_KIND_ACCOUNT\"},
           \"amount_minor\":\"{{randomInt 10000 5000000}}\",\"currency\":\"VND\",\"channel\":\"CHANNEL_MOBILE\",
           \"payment_type\":\"PAYMENT_TYPE_TRANSFER\",\"device_id\":\"dev-{{randomInt 0 100000}}\",
           \"ip\":\"10.1.2.3\",\"phone\":\"+84900001234\",\"country\":\"VN\"}" \
      "127.0.0.1:$grpc_port" >/dev/null 2>"$work/ghz.err" || true
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
for d in r.get("details", []):
    print(d["latency"], 1 if d.get("status") == "OK" else 0)
' "$work/ghz.json" | percentiles
}

run_http() { # $1 = rate, $2 = tag
  local n=$(( $1 * SECS ))
  http_targets "$n" "$2" > "$work/targets.json"
  vegeta attack -format=json -targets="$work/targets.json" -rate="$1/s" -duration="${SECS}s" \
      -max-workers 256 -keepalive=true > "$work/vegeta.bin"
  vegeta encode --to csv < "$work/vegeta.bin" \
    | awk -F, '{ print $3, ($2 == 200 ? 1 : 0) }' | percentiles
}

echo "## In-line API latency at fixed rates"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')) shared by the server and the load tool; ${SECS} s per rate; latencies in ms as the load tool measures them (client send to response read)."
echo
echo "| protocol | rate /s | engine p50 | engine p99 | engine p99.9 | floor p50 | floor p99 | floor p99.9 | server-side p99, engine / floor | errors (engine/floor) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
declare -A res srv
for mode in false true; do
  start_server "$mode"
  # Warm-up: connections, allocator, feature maps.
  run_grpc 1000 "warm-$mode" >/dev/null
  for rate in $RATES; do
    for proto in grpc http; do
      buckets "$proto" > "$work/before"
      res["$proto,$rate,$mode"]="$(run_$proto "$rate" "$rate-$mode")"
      buckets "$proto" > "$work/after"
      srv["$proto,$rate,$mode"]="$(server_p99 "$work/before" "$work/after")"
    done
  done
  stop_server
done
best_grpc=0; best_http=0
for proto in grpc http; do
  for rate in $RATES; do
    read -r ep50 ep99 ep999 eerr eok <<<"${res[$proto,$rate,false]}"
    read -r fp50 fp99 fp999 ferr fok <<<"${res[$proto,$rate,true]}"
    echo "| $proto | $rate | $ep50 | $ep99 | $ep999 | $fp50 | $fp99 | $fp999 | ${srv[$proto,$rate,false]} / ${srv[$proto,$rate,true]} | $eerr/$ferr |"
    if python3 -c "import sys; sys.exit(0 if float('$ep99') < 1.0 and int('$eerr') == 0 else 1)"; then
      if [ "$proto" = grpc ]; then best_grpc=$rate; else best_http=$rate; fi
    fi
  done
done
echo
echo "Highest tested rate with engine p99 under 1 ms at the load tool: gRPC ${best_grpc}/s, HTTP ${best_http}/s (0: none)."
echo "Server-side p99: the fraudline_inline_request_duration_seconds bucket bound (ms) holding 99 % of the calls (request decoded to response ready, inside the server)."
