#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run everything CI checks: the docs build with warnings as errors,
# the example plugin installed from its folder (one pip install) and tested, then the test suite.
# Extra arguments go to the test suite's pytest, e.g. `bash scripts/test.sh -m slow` for the
# full-size reproductions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
pip_install() {  # quiet unless it fails; then show pip's log
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >.venv/pip.log 2>&1; then
    cat .venv/pip.log; echo "set-up failed: pip install $*" >&2; exit 1
  fi
}
pip_install -e ".[docs,tlens]"  # tlens: the tlens: adapter is tested when TransformerLens is installed

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
