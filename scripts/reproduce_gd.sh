#!/usr/bin/env bash
# Reproduce von Oswald et al. (2023) on CPU: LSA models with 1-3 layers (stacked and recurrent) and
# softmax controls, trained on `linreg`, each compared with GD and GD++ on 10,000 held-out tasks.
# Usage: bash scripts/reproduce_gd.sh [OUT_DIR]   (about 10 minutes on 2 cores)
set -euo pipefail
OUT=${1:-store/gd}
PK=${PROBEKIT:-.venv/bin/probekit}
mkdir -p "$OUT"
train() {  # name preset layers [extra train args...]
  local name=$1 preset=$2 layers=$3; shift 3
  [ -f "$OUT/$name/model.safetensors" ] || \
    $PK train --task linreg --model "$preset" --layers "$layers" --out "$OUT/$name" --steps 5000 \
      --batch-size 2048 --lr 1e-3 --weight-decay 0 --json "$@" > "$OUT/$name.train.json"
  $PK compare --model "toy:$OUT/$name" -H gd -H gdpp --json > "$OUT/$name.compare.json"
  $PK compare --model "toy:$OUT/$name" -H gd -H gdpp --ood "" 2>/dev/null | sed -n '1,12p'
}
train lsa-1 lsa 1
train lsa-2 lsa 2
train lsa-3 lsa 3
train lsa-rec-2 lsa-recurrent 2
train lsa-rec-3 lsa-recurrent 3
train softmax-attn-1 attn-only 1
train softmax-mlp-1 softmax 1

# one markdown table of everything above
PY=${PYTHON:-.venv/bin/python}
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model | loss model | K-step GD: loss, model cos | GD++: loss, model cos |")
print("|---|---|---|---|")
for f in sorted(out.glob("*.compare.json")):
    res = json.loads(f.read_text())
    h = {r["hypothesis"]: r for r in res["hypotheses"]}
    fmt = lambda r, k: f"{r[k][0]:.4f} ± {(r[k][2] - r[k][1]) / 2:.4f}"
    print(f"| {f.name.removesuffix('.compare.json')} | {fmt(h['gd'], 'loss_model')} | "
          f"{fmt(h['gd'], 'loss_alg')}, {fmt(h['gd'], 'model_cos')} | "
          f"{fmt(h['gdpp'], 'loss_alg')}, {fmt(h['gdpp'], 'model_cos')} |")
PYEOF
