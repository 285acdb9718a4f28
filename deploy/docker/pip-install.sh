#!/bin/sh
# The one pip install of both images, in two steps so the dependencies get a layer of their own:
#   pip-install.sh deps SRC       the dependencies of SRC's pyproject.toml [server] and [observability] (SRC: pyproject only)
#   pip-install.sh package SRC    the package itself from the source tree SRC (`SRC[server,observability]`)
# Both steps take the same constraints: Ray exactly RAY_VERSION (client and cluster must match;
# pip refuses extras in a constraint, so `ray==`, never `ray[default]==`) and the torch pair the
# image already holds, so no step swaps torch for another build. PIP_ARGS adds pip options
# (tests/deploy/test_deploy_images.py passes --dry-run --report to resolve the same install).
set -eu
step=$1
src=$2
: "${RAY_VERSION:?}" "${TORCH_VERSION:?}" "${TORCHVISION_VERSION:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'ray==%s\ntorch==%s\ntorchvision==%s\n' "$RAY_VERSION" "$TORCH_VERSION" "$TORCHVISION_VERSION" \
    > "$work/constraints.txt"
case $step in
  deps)
    # The requirements pyproject.toml names (the package's own and its `server` extra).
    python - "$src/pyproject.toml" > "$work/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["server"] + extras["observability"]))
PY
    # shellcheck disable=SC2086
    python -m pip install ${PIP_ARGS:-} --constraint "$work/constraints.txt" --requirement "$work/requirements.txt"
    ;;
  package)
    # shellcheck disable=SC2086
    python -m pip install ${PIP_ARGS:-} --constraint "$work/constraints.txt" "$src[server,observability]"
    ;;
  *)
    echo "pip-install.sh: the step is 'deps' or 'package', got '$step'" >&2
    exit 2
    ;;
esac
