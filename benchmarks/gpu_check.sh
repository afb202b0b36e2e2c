#!/usr/bin/env bash
# One command for a lent GPU (docs/gpu_check.md): install this checkout offline, then benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh [--dry-run] [--out DIR]     # out: $OUT if set, else ./gpu_check_out
#
# Wheels carried in .whl/ (the kvscope dependencies the device image lacks) go to /tmp/site first, on
# PYTHONPATH; then `pip install --no-deps --no-build-isolation -e .`. With --dry-run (a CPU machine with the
# project's .venv) nothing is installed: the checkout's own environment runs the CPU steps.
set -u
cd "$(dirname "$0")/.."
dry=0
out="${OUT:-gpu_check_out}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; args+=(--dry-run) ;;
    --out) out="$2"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
mkdir -p "$out"
if [ "$dry" = 1 ]; then
  py="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
else
  py="${PYTHON:-python3}"
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || echo "gpu_check.sh: carried wheels did not install" >&2
  fi
  if ! "$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
    # the installed layout without pip: kvscope/<sub> -> <folder> as pyproject's package-dir maps them
    echo "gpu_check.sh: pip install -e . failed (see $out/install.log); using an import view of the checkout" >&2
    view=/tmp/kvscope_view
    rm -rf "$view" && mkdir -p "$view/kvscope" && cp kvscope/*.py "$view/kvscope/"
    "$py" - <<'PY' |
import tomllib
for name, folder in tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"].items():
    if "." in name:
        print(name.split(".", 1)[1], folder)
PY
      while read -r sub dir; do ln -s "$PWD/$dir" "$view/kvscope/$sub"; done
    export PYTHONPATH="$view${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py --out "$out" ${args[@]+"${args[@]}"}
