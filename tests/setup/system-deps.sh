#!/usr/bin/env bash
# Installs the Debian packages the tests use when they are missing: kubectl renders the
# kustomize overlays (they need kustomize >= v4, kubectl >= 1.21: Debian 12's kubernetes-client
# 1.20 is older, and the manifest tests skip with it, saying so), chromium loads the HTML report headless. Needs root (or sudo) and apt.
set -euo pipefail
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: please install ${missing[*]} (no apt-get here); the tests that need them are skipped" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]} from Debian's packages"
# A failed install does not stop `make test`: the tests that need the tool skip and say why.
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "system-deps: could not install ${missing[*]}; the tests that need them are skipped (see pytest's summary)" >&2
fi
