#!/usr/bin/env bash
# Set up probekit in ./.venv from a fresh clone: the CPU build of torch first (pinned), then
# probekit itself (editable) with its test extras. Safe to rerun: it only installs what is missing.
#   TORCH_SPEC  torch requirement to install (default: torch==2.13.0, the CPU build on this machine;
#               elsewhere use e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu")
#   PYTHON      interpreter to build the venv from (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
fi
pip_install() {  # quiet unless it fails; then show pip's log
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >.venv/pip.log 2>&1; then
    cat .venv/pip.log; echo "set-up failed: pip install $*" >&2; exit 1
  fi
}
# shellcheck disable=SC2086
.venv/bin/python -c "import torch" 2>/dev/null || pip_install ${TORCH_SPEC:-torch==2.13.0}
pip_install -e ".[test]"
.venv/bin/python -c "import probekit, torch, zarr; print(f'probekit {probekit.__version__} ready (torch {torch.__version__}, zarr {zarr.__version__})')"
