#!/usr/bin/env bash
# Builds the fraudline container image from deploy/docker/Dockerfile and runs
# it, on a machine with no image registry and no Docker engine: only Debian's
# apt archive and crates.io. Prints each step and its time; exits non-zero on
# the first failure.
#
#   1. installs podman, buildah, mmdebstrap, runc, crun, uidmap (apt) if missing;
#   2. builds a Debian bookworm base with mmdebstrap (variant minbase, slimmed
#      like debian:bookworm-slim: no docs, man pages or locales) from Debian's
#      packages and imports it as $FRAUDLINE_BASE_IMAGE (kept and reused;
#      --rebuild-base makes it again);
#   3. builds the release binary on the host (cargo build --release --locked
#      --bin fraudline; honours CARGO_TARGET_DIR and CARGO_BUILD_JOBS) and
#      checks with ldd what it links;
#   4. podman build -f deploy/docker/Dockerfile with RUNTIME_IMAGE=<that base>
#      and --target prebuilt (no Rust image is pulled; the runtime stage's
#      apt-get install runs for real inside the build);
#   5. checks the image: every library the binary needs is in it, user 10001,
#      `fraudline check-config` accepts the baked config;
#   6. runs `fraudline demo` in the image with /metrics published on a free
#      host port, scrapes it from the host with curl: fraudline_ready 1,
#      fraudline_build_info, verdict counters moving between two scrapes;
#   7. stops it with SIGINT (the demo's stop signal), checks it exited 0,
#      removes the container and dangling layers.
#
# With --build-in-image, steps 3 and 4 are instead the Dockerfile's own
# multi-stage build (the default target): stage "build" runs `cargo build` inside
# the container, from BUILD_IMAGE = a local Rust image made like the base
# (mmdebstrap, plus build-essential, pkg-config, libssl-dev) with the host's
# Rust toolchain copied in (`rustc --print sysroot`: no Rust image and no
# rustup download site needed; crates come from crates.io). Slow (a full
# release build, 13 min on 2 busy cores), so not the default.
#
# With --kafka, a last step runs the image's default command, `fraudline run`,
# against a real broker on the host (deploy/kafka/broker.sh, state in
# /tmp/fraudline-kafka-img, stopped and removed at the end): `fraudline gen` from the
# image produces 20,000 payments, the container scores them (host network),
# /metrics must count 20,000 verdicts; SIGTERM must drain it to exit 0.
#
# Usage (as root: podman runs rootful; apt-get installs the tools):
#   deploy/docker/build-image.sh [--rebuild-base] [--build-in-image] [--kafka] [--no-run] [--remove-image]
#   deploy/docker/build-image.sh --no-build [--kafka]   # only check and run $FRAUDLINE_IMAGE
# Environment:
#   FRAUDLINE_IMAGE       image to build (localhost/fraudline:dev)
#   FRAUDLINE_BASE_IMAGE  local base image (localhost/debian-bookworm-slim:mmdebstrap)
#   FRAUDLINE_BINARY      use this fraudline binary instead of building one
#   FRAUDLINE_OCI_RUNTIME crun or runc (default: the first that runs a container)
#   FRAUDLINE_IMAGE_NETWORK  "host" to run the demo on the host's network
#                         (default: podman's bridge with the port published)
# What was found on the machine this was first run on (no registry, a VM
# with cgroup v1 in hybrid mode, rlimits that root cannot raise) is in
# deploy/docker/README.md.
# mmdebstrap hooks get the chroot as "$1": single quotes on purpose.
# shellcheck disable=SC2016,SC2001
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)

IMAGE=${FRAUDLINE_IMAGE:-localhost/fraudline:dev}
BASE=${FRAUDLINE_BASE_IMAGE:-localhost/debian-bookworm-slim:mmdebstrap}
REBUILD_BASE=0 RUN=1 REMOVE_IMAGE=0 IN_IMAGE=0 KAFKA=0 BUILD=1
for a in "$@"; do
  case $a in
    --rebuild-base) REBUILD_BASE=1 ;;
    --no-run) RUN=0 ;;
    --build-in-image) IN_IMAGE=1 ;;
    --kafka) KAFKA=1 ;;
    --no-build) BUILD=0 ;;
    --remove-image) REMOVE_IMAGE=1 ;;
    -h | --help) sed -n '2,/^# mmdebstrap hooks/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

T0=$(date +%s)
step_t=$T0
step() {
  local now; now=$(date +%s)
  echo
  echo "== [$((now - T0))s] $*"
  step_t=$now
}
done_step() { echo "   ($(($(date +%s) - step_t)) s)"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
run() { echo "+ $*"; "$@"; }

[ "$(id -u)" = 0 ] || fail "run as root (rootful podman; apt-get installs the tools)"

# ---------------------------------------------------------------------------
step "1. tools: podman, buildah, mmdebstrap, runc, crun, uidmap (apt)"
need=()
for t in podman buildah mmdebstrap runc crun newuidmap curl; do have "$t" || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "missing: ${need[*]}; installing with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman buildah mmdebstrap runc crun uidmap fuse-overlayfs slirp4netns \
    containernetworking-plugins catatonit iptables curl ca-certificates >/dev/null
fi
podman --version
buildah --version
mmdebstrap --version
done_step

# Containers may not raise rlimits above the host's hard limits here (root
# included: the VM refuses), and podman's rootful defaults ask for more
# (nofile 1048576): every podman run / build gets the host's values. nproc is
# capped at kernel.pid_max (higher values were refused too).
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
[ "$nofile" = unlimited ] && nofile=1048576
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

# make_base TAG DESCRIPTION [mmdebstrap options...]: a Debian bookworm image
# from Debian's packages, imported into podman as TAG.
IMPORT_CHANGES=()
make_base() {
  local tag=$1 what=$2 work
  shift 2
  work=$(mktemp -d /var/tmp/fraudline-base.XXXXXX)
  # minbase = Essential packages + apt, what debian:bookworm-slim is built
  # from (debuerreotype). As there: /usr merged by a hook (not the usrmerge
  # package, which pulls in all of perl: 47 MB); dpkg excludes keep docs, man
  # pages and locales out, now and for every later apt-get install in the
  # image; apt keeps no package caches (pkgcache.bin and srcpkgcache.bin
  # made an `apt-get update` layer 80 MB), gzipped indexes, no translations.
  run mmdebstrap --variant=minbase --mode=root --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Dir::Cache::pkgcache ""' \
    --aptopt='Dir::Cache::srcpkgcache ""' \
    --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
    --aptopt='Acquire::GzipIndexes "true"' \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='Apt::AutoRemove::SuggestsImportant "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$@" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    bookworm "$work/rootfs.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  ls -l "$work/rootfs.tar"
  run podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "${IMPORT_CHANGES[@]}" \
    --change "LABEL org.opencontainers.image.description=\"$what, built $(date -u +%F)\"" \
    "$work/rootfs.tar" "$tag"
  rm -rf "$work"
}

# ---------------------------------------------------------------------------
step "2. base image $BASE (mmdebstrap, Debian bookworm from Debian's packages)"
if [ "$REBUILD_BASE" = 1 ] || ! podman image exists "$BASE"; then
  make_base "$BASE" "Debian bookworm minbase (mmdebstrap, slimmed like debian:bookworm-slim)"
else
  echo "reusing $BASE (created $(podman image inspect -f '{{.Created}}' "$BASE")); --rebuild-base to make it again"
fi
podman image ls "$BASE"
done_step

# ---------------------------------------------------------------------------
step "OCI runtime: the first of crun (podman's default) / runc that runs a container here"
RUNTIME=${FRAUDLINE_OCI_RUNTIME:-}
if [ -z "$RUNTIME" ]; then
  for rt in crun runc; do
    if out=$(podman run --rm --runtime "$rt" "${ULIMITS[@]}" "$BASE" true 2>&1); then
      RUNTIME=$rt
      break
    fi
    echo "  $rt: $out"
  done
fi
[ -n "$RUNTIME" ] || fail "no OCI runtime can run a container here (errors above)"
echo "using $RUNTIME, ${ULIMITS[*]}"
done_step

if [ "$BUILD" = 0 ]; then
  podman image exists "$IMAGE" || fail "--no-build: no image $IMAGE"
  echo "--no-build: checking and running the existing $IMAGE"
elif [ "$IN_IMAGE" = 1 ]; then
# ---------------------------------------------------------------------------
sysroot=$(rustc --print sysroot)
rust_version=$(rustc --version | awk '{print $2}')
BUILDER=${FRAUDLINE_BUILDER_IMAGE:-localhost/rust-bookworm:$rust_version-host}
step "3. builder image $BUILDER (mmdebstrap + build-essential, pkg-config, libssl-dev + the host's Rust $rust_version from $sysroot)"
if [ "$REBUILD_BASE" = 1 ] || ! podman image exists "$BUILDER"; then
  # The toolchain's bin, lib and libexec (its docs are 800 MB) go to
  # /usr/local/rust; CARGO_HOME is /usr/local/cargo as in the rust images
  # (the Dockerfile's cache mount). CARGO_BUILD_JOBS, if set here, is kept.
  # The host's own CAs (/usr/local/share/ca-certificates) are trusted in
  # the builder too: behind a TLS-inspecting proxy (as here) cargo cannot
  # reach crates.io without its CA. The runtime image has Debian's CAs only.
  IMPORT_CHANGES=(
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV CARGO_HOME=/usr/local/cargo'
  )
  [ -n "${CARGO_BUILD_JOBS:-}" ] && IMPORT_CHANGES+=(--change "ENV CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS")
  make_base "$BUILDER" "Rust $rust_version (the host's toolchain) on Debian bookworm (mmdebstrap)" \
    --include=build-essential,pkg-config,libssl-dev,ca-certificates \
    --customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates; fi' \
    --customize-hook="mkdir -p \"\$1/usr/local/rust\" \"\$1/usr/local/cargo/bin\" && cp -a '$sysroot/bin' '$sysroot/lib' '$sysroot/libexec' \"\$1/usr/local/rust/\""
  IMPORT_CHANGES=()
else
  echo "reusing $BUILDER; --rebuild-base to make it again"
fi
podman image ls "$BUILDER"
done_step

# ---------------------------------------------------------------------------
step "4. podman build -f deploy/docker/Dockerfile (BUILD_IMAGE=$BUILDER, RUNTIME_IMAGE=$BASE, default target: cargo build in the container)"
run podman build --runtime "$RUNTIME" "${ULIMITS[@]}" --network=host \
  -f deploy/docker/Dockerfile \
  --build-arg "BUILD_IMAGE=$BUILDER" \
  --build-arg "RUNTIME_IMAGE=$BASE" \
  --build-arg "FRAUDLINE_GIT_HASH=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" .
else
# ---------------------------------------------------------------------------
step "3. release binary"
mkdir -p deploy/docker/prebuilt
if [ -n "${FRAUDLINE_BINARY:-}" ]; then
  bin=$FRAUDLINE_BINARY
  echo "using FRAUDLINE_BINARY=$bin"
else
  run cargo build --release --locked --bin fraudline
  bin=${CARGO_TARGET_DIR:-$REPO/target}/release/fraudline
fi
[ -x "$bin" ] || fail "no binary at $bin"
run install -s -m 0755 "$bin" deploy/docker/prebuilt/fraudline
ls -l deploy/docker/prebuilt/fraudline
echo "ldd (host):"
ldd deploy/docker/prebuilt/fraudline | sed 's/^/  /'
done_step

# ---------------------------------------------------------------------------
step "4. podman build -f deploy/docker/Dockerfile (RUNTIME_IMAGE=$BASE, --target prebuilt)"
run podman build --runtime "$RUNTIME" "${ULIMITS[@]}" --network=host \
  -f deploy/docker/Dockerfile \
  --build-arg "RUNTIME_IMAGE=$BASE" \
  --target prebuilt \
  --build-arg "FRAUDLINE_GIT_HASH=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" .
rm -f deploy/docker/prebuilt/fraudline
fi
podman image ls "$IMAGE"
echo "image size: $(podman image inspect -f '{{.Size}}' "$IMAGE") bytes"
done_step

# ---------------------------------------------------------------------------
step "5. the image: libraries, user, config"
prun() { podman run --rm --runtime "$RUNTIME" "${ULIMITS[@]}" "$@"; }
libs=$(prun --entrypoint /usr/bin/ldd "$IMAGE" /usr/local/bin/fraudline)
echo "$libs" | sed 's/^/  /'
if echo "$libs" | grep -q 'not found'; then fail "the image lacks a library the binary links"; fi
user=$(prun --entrypoint /usr/bin/id "$IMAGE")
echo "  runs as: $user"
case $user in uid=10001*) ;; *) fail "image does not run as uid 10001" ;; esac
prun "$IMAGE" --version
prun "$IMAGE" check-config | grep -qx 'config ok' || fail "check-config refused the baked config"
echo "  fraudline check-config: config ok"
done_step

if [ "$RUN" = 0 ]; then
  echo "(--no-run: not running the demo)"
  exit 0
fi

# ---------------------------------------------------------------------------
step "6. podman run $IMAGE demo, /metrics scraped from the host"
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
name=fraudline-img-$$
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
if [ "${FRAUDLINE_IMAGE_NETWORK:-bridge}" = host ]; then
  net=(--network=host)
  listen=127.0.0.1:$port
else
  net=(-p "127.0.0.1:$port:9464")
  listen=0.0.0.0:9464
fi
# The demo stops on SIGINT (ctrl-c), then prints its summary.
run podman run -d --name "$name" --runtime "$RUNTIME" "${ULIMITS[@]}" "${net[@]}" \
  --stop-signal SIGINT "$IMAGE" demo --listen "$listen" --rate 2000 --history 100000
url=http://127.0.0.1:$port/metrics
echo "scraping $url"
ok=0
for _ in $(seq 1 120); do
  if m1=$(curl -fsS --max-time 2 "$url" 2>/dev/null) && echo "$m1" | grep -q '^fraudline_verdicts_total'; then
    ok=1
    break
  fi
  [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || break
  sleep 0.5
done
if [ "$ok" != 1 ]; then
  podman logs "$name" 2>&1 | tail -20
  fail "no fraudline metrics at $url"
fi
verdicts() { echo "$1" | awk '/^fraudline_verdicts_total/ { n += $NF } END { printf "%d", n }'; }
sleep 3
m2=$(curl -fsS --max-time 2 "$url")
v1=$(verdicts "$m1")
v2=$(verdicts "$m2")
echo "$m2" | grep -E '^fraudline_(ready|ready_path|build_info|verdicts_total)[{ ]' | sed 's/^/  /'
echo "$m2" | grep -E '^fraudline_rule_hits_total.*mode="active"' | grep -v ' 0$' | sed 's/^/  /'
echo "  metric families: $(echo "$m2" | grep -c '^# TYPE fraudline_')"
echo "  fraudline_verdicts_total: $v1 -> $v2 in 3 s"
echo "$m2" | grep -qx 'fraudline_ready 1' || fail "fraudline_ready is not 1"
echo "$m2" | grep -q '^fraudline_build_info' || fail "no fraudline_build_info"
[ "$v2" -gt "$v1" ] || fail "verdict counters did not move"
curl -fsS --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null || fail "/healthz"
echo "  /healthz: 200"
done_step

# ---------------------------------------------------------------------------
step "7. stop (SIGINT) and clean up"
run podman stop -t 20 "$name" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
podman logs "$name" 2>&1 | tail -14 | sed 's/^/  /'
echo "  exit code: $code"
[ "$code" = 0 ] || fail "the demo exited $code"
run podman rm "$name" >/dev/null
trap - EXIT
done_step

if [ "$KAFKA" = 1 ]; then
# ---------------------------------------------------------------------------
step "8. podman run $IMAGE (fraudline run) against a Kafka broker on the host"
export FRAUDLINE_KAFKA_STATE=/tmp/fraudline-kafka-img
kname=fraudline-img-run-$$
kcleanup() {
  podman rm -f -t 0 "$kname" >/dev/null 2>&1 || true
  deploy/kafka/broker.sh clean >/dev/null 2>&1 || true
}
trap kcleanup EXIT
broker=$(deploy/kafka/broker.sh start)
echo "broker $broker (state $FRAUDLINE_KAFKA_STATE)"
count=20000
run podman run --rm --runtime "$RUNTIME" "${ULIMITS[@]}" --network=host "$IMAGE" \
  gen --count $count --format protobuf --brokers "$broker" --topic payments
port=$(free_port)
run podman run -d --name "$kname" --runtime "$RUNTIME" "${ULIMITS[@]}" --network=host \
  -e FRAUDLINE_KAFKA__BROKERS="$broker" -e FRAUDLINE_HTTP__LISTEN="127.0.0.1:$port" \
  "$IMAGE"
url=http://127.0.0.1:$port/metrics
n=0
for _ in $(seq 1 240); do
  m=$(curl -fsS --max-time 2 "$url" 2>/dev/null) || m=
  n=$(verdicts "$m")
  [ "$n" -ge $count ] && break
  [ "$(podman inspect -f '{{.State.Running}}' "$kname")" = true ] || break
  sleep 0.5
done
echo "$m" | grep -E '^fraudline_(ready|verdicts_total|kafka_connected|events_consumed_total)[{ ]' | sed 's/^/  /'
if [ "$n" -lt $count ]; then
  podman logs "$kname" 2>&1 | tail -20
  fail "fraudline run in the image scored $n of $count payments"
fi
echo "$m" | grep -qx 'fraudline_ready 1' || fail "fraudline_ready is not 1"
echo "  $n verdicts for $count payments"
run podman stop -t 60 "$kname" >/dev/null
code=$(podman inspect -f '{{.State.ExitCode}}' "$kname")
echo "  exit code after SIGTERM: $code"
[ "$code" = 0 ] || { podman logs "$kname" 2>&1 | tail -20; fail "fraudline run exited $code"; }
podman rm "$kname" >/dev/null
deploy/kafka/broker.sh clean >/dev/null
trap - EXIT
done_step
fi

podman image prune -f >/dev/null
if [ "$REMOVE_IMAGE" = 1 ]; then run podman rmi "$IMAGE" >/dev/null; fi

echo
what="demo scored, /metrics scraped from the host"
[ "$KAFKA" = 1 ] && what="$what; fraudline run scored $count payments from Kafka"
built="built from deploy/docker/Dockerfile"
[ "$BUILD" = 0 ] && built="checked"
echo "image $IMAGE $built and run: $what ($(($(date +%s) - T0)) s in all)"
