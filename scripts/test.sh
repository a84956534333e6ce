#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run everything CI checks: the docs build with warnings as errors,
# the example plugin installed from its folder (one pip install) and tested, then the test suite.
# Extra arguments go to the test suite's pytest, e.g. `bash scripts/test.sh -m slow` for the
# full-size reproductions. `bash scripts/test.sh --oldest` instead tests the lowest versions
# pyproject.toml claims (constraints/oldest.txt) in .venv-oldest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--oldest" ]; then  # the lowest versions pyproject.toml claims (constraints/oldest.txt)
  shift
  [ -x .venv-oldest/bin/python ] || "${PYTHON:-python3}" -m venv .venv-oldest
  # shellcheck disable=SC2086
  .venv-oldest/bin/python -m pip install -q --disable-pip-version-check \
    ${TORCH_OLDEST_SPEC:-torch==2.2.2 --index-url https://download.pytorch.org/whl/cpu}
  .venv-oldest/bin/python -m pip install -q --disable-pip-version-check -c constraints/oldest.txt -e ".[test]"
  .venv-oldest/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(torch|numpy|xarray|zarr|pluggy|typer|rich|matplotlib|scikit-learn|safetensors|dask|transformers) '
  exec .venv-oldest/bin/python -m pytest -q "$@"
fi
bash scripts/setup.sh
pip_install() {  # quiet unless it fails; then show pip's log
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >.venv/pip.log 2>&1; then
    cat .venv/pip.log; echo "set-up failed: pip install $*" >&2; exit 1
  fi
}
# tlens, nnsight: their adapters are tested when installed; CI tests TransformerLens's current major
# (the HookedTransformer path, 2.x-3.x, has a documented legacy command: docs/models.md)
pip_install -e ".[docs,tlens,nnsight]" "transformer-lens>=4"

echo "== docs: mkdocs build --strict"
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's end-of-life banner
site="$(mktemp -d)"
.venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"

echo "== example plugin: install, discover, test"
pip_install ./docs/examples/probekit-example-plugin
.venv/bin/probekit plugins --json | .venv/bin/python -c \
  "import json, sys; rows = {r['plugin']: r for r in json.load(sys.stdin)}; \
   assert 'running-mean' in rows['example']['hypotheses'], rows; print('probekit plugins lists example:', rows['example'])"
(cd docs/examples/probekit-example-plugin && ../../../.venv/bin/python -m pytest -q -p no:cacheprovider)

echo "== test suite"
.venv/bin/python -m pytest -q "$@"
