#!/usr/bin/env bash
# Reproduce the induction-head phase change (Olsson et al. 2022) on CPU: a 2-layer attention-only toy
# transformer trained on repeated random segments (checkpoints every 100 steps) and a 1-layer control
# trained the same way; then the ICL score and head scores through training (the phase change), the
# final model's heads (OV / QK eigen-scores, ablation of its induction heads) and per-layer probes for
# prev_token and induction_next with control-task selectivity. Prints a summary with the acceptance
# criteria of issue 7; everything is also in OUT/*.json and OUT/**/*.png.
# Usage: bash scripts/reproduce_induction.sh [OUT_DIR]   (5-10 minutes on 2 CPU cores, 2-4 of them training the
# 2-layer model; STEPS=... overrides the 4,000 steps; a rerun skips what is done)
set -euo pipefail
OUT=${1:-store/induction}
PK=${PROBEKIT:-.venv/bin/probekit}
PY=${PYTHON:-.venv/bin/python}
STEPS=${STEPS:-4000}
TASK=(--task repeated-segments -p p_repeat=1.0 -p min_segment=8)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one torch thread per process: faster than two on a busy machine
mkdir -p "$OUT"
run() {  # output.json command...: run once (a rerun skips what is done), writing the JSON atomically
  local out=$OUT/$1; shift
  [ -s "$out" ] || { "$@" > "$out.tmp" && mv "$out.tmp" "$out"; }
}
train() {  # name layers
  [ -f "$OUT/$1/model.safetensors" ] && [ -s "$OUT/$1.train.json" ] || \
    run "$1.train.json" $PK train "${TASK[@]}" --model attn-only --layers "$2" --out "$OUT/$1" --steps "$STEPS" \
      --batch-size 64 --lr 1e-3 --warmup 0.02 --weight-decay 0 --checkpoint-every 100 --threads 1 --json
}
train attn2 2
train attn1 1
for m in attn2 attn1; do
  run "$m.dynamics.json" $PK heads --checkpoints "$OUT/$m/checkpoints" --json
done
run attn2.heads.json $PK heads --model "toy:$OUT/attn2" --ablate induction --json
run attn2.heads-mean.json $PK heads --model "toy:$OUT/attn2" --ablate induction --ablation mean \
  --plot "$OUT/attn2/heads-mean.png" --json
run attn1.heads.json $PK heads --model "toy:$OUT/attn1" --json
run attn2.cache.json $PK cache --model "toy:$OUT/attn2" --out "$OUT/attn2.zarr" -n 500 --seed 7 --random-init --json
# categorical targets: logistic probes and their control task (--no-baselines skips the shuffled-label and
# random-init refits, five times the cost for 127 classes); the unembedding directions: ridge with baselines
run attn2.probe.json $PK probe "$OUT/attn2.zarr" -H induction --folds 3 -t prev_token -t duplicate \
  -t induction_next --no-baselines --json
run attn2.probe-directions.json $PK probe "$OUT/attn2.zarr" -H induction --folds 3 -t prev_token_unembed \
  -t induction_next_unembed --json

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
load = lambda name: json.loads((out / name).read_text())  # noqa: E731
train2, train1 = load("attn2.train.json"), load("attn1.train.json")
dyn2, dyn1 = load("attn2.dynamics.json"), load("attn1.dynamics.json")
heads2, heads2m, heads1 = load("attn2.heads.json"), load("attn2.heads-mean.json"), load("attn1.heads.json")
probe = load("attn2.probe.json")["records"] + load("attn2.probe-directions.json")["records"]

print(f"training: 2-layer {train2['seconds']:.0f} s (final loss {train2['final_loss']:.3f}), "
      f"1-layer {train1['seconds']:.0f} s (final loss {train1['final_loss']:.3f})")
layer1 = [h for h in heads2["heads"] if h["layer"] == 1]
ind_heads = [h for h in layer1 if h["induction"] >= 0.5]
best = max(layer1, key=lambda h: h["induction"])
pi, pd = dyn2["attrs"]["phase_icl"], dyn2["attrs"]["phase_induction"]
ab, abm = heads2["attrs"]["ablation"], heads2m["attrs"]["ablation"]
icl = heads2["attrs"]["icl"]
one = max(h["induction"] for h in heads1["heads"])
one_any = max(max(h[k] for k in ("prev_token", "duplicate")) for h in heads1["heads"])
p1i, p1d = dyn1["attrs"]["phase_icl"], dyn1["attrs"]["phase_induction"]
print(f"ICL score ({icl['label']}): 2-layer {icl['score']:+.3f}, 1-layer {heads1['attrs']['icl']['score']:+.3f}")
print("2-layer heads (block 1): " + ", ".join(
    f"{h['head']} ind {h['induction']:.2f} OV {h['ov_copying']:+.2f} QK {h['qk_prefix']:+.2f}" for h in layer1))
print(f"phase change, 2-layer: ICL knee {pi['knee']} (steepest {pi['jump_from']}->{pi['jump_to']}: "
      f"{pi['jump']:+.3f} of {pi['total']:+.3f}); induction knee {pd['knee']} (steepest {pd['jump_from']}->"
      f"{pd['jump_to']}: {pd['jump']:+.3f} of {pd['total']:+.3f})")
print(f"phase change, 1-layer: ICL steepest {p1i['jump_from']}->{p1i['jump_to']}: {p1i['jump']:+.3f} of "
      f"{p1i['total']:+.3f}; max induction score {one:.3f} (prev-token / duplicate: {one_any:.3f})")
print(f"ablating {', '.join(ab['heads'])}: zero {ab['icl_clean']:+.3f} -> {ab['icl_ablated']:+.3f} "
      f"({100 * ab['removed']:.0f}% removed); mean -> {abm['icl_ablated']:+.3f} ({100 * abm['removed']:.0f}% removed)")
print("probes (resid, layer 0 = embeddings): accuracy / control accuracy / selectivity; R² for directions")
rows = {}
for r in probe:
    if r["site"] == "resid":
        rows.setdefault((r["target"], r["condition"]), {})[r["layer"]] = r
for (target, cond), by_layer in sorted(rows.items()):
    cells = []
    for layer, r in sorted(by_layer.items()):
        if r.get("accuracy") is not None and r["accuracy"] == r["accuracy"]:
            c = f"L{layer} {r['accuracy']:.3f}"
            if cond == "model" and r.get("selectivity") is not None:
                c += f" / {r['control_accuracy']:.3f} / {r['selectivity']:+.3f}"
        else:
            c = f"L{layer} R² {r['r2']:.3f}"
        cells.append(c)
    print(f"  {target:24s} {cond:12s} " + " | ".join(cells))
checks = [
    ("a block-1 head has induction score >= 0.5", best["induction"] >= 0.5, f"{best['head']}: {best['induction']:.3f}"),
    ("the ICL and induction curves jump together (knees within one checkpoint)", abs(pi["knee"] - pd["knee"]) <= 100,
     f"ICL knee {pi['knee']}, induction knee {pd['knee']}"),
    ("block-1 induction heads have OV copying >= 0.7", bool(ind_heads) and min(h["ov_copying"] for h in ind_heads) >= 0.7,
     ", ".join(f"{h['head']} {h['ov_copying']:+.3f}" for h in ind_heads) or "no induction head"),
    ("ablating them removes >= 50% of the ICL score", ab["removed"] >= 0.5, f"{100 * ab['removed']:.1f}%"),
    ("1-layer control: no head's induction score above 0.2", one <= 0.2, f"{one:.3f}"),
    ("1-layer control: no ICL jump", abs(p1i["jump"]) < 0.5 * abs(pi["jump"]),
     f"steepest ICL step {p1i['jump']:+.3f} vs {pi['jump']:+.3f} (2-layer)"),
]
for name, ok, value in checks:
    print(f"[{'PASS' if ok else 'MISS'}] {name}: {value}")
EOF
