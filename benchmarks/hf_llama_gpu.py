"""The hf: paths of `icl`, `patch` and `cache` on a ~1B-parameter random-init Llama on CUDA (bf16).

Builds the model locally (TinyLlama-1.1B's shape: 22 layers, width 2048, MLP 5632, 32 heads,
4 key-value heads) with a small byte-level BPE tokenizer trained on the fly, saves it with
``save_pretrained`` (safetensors) and runs the three commands on it, timing each. A random
model knows no rule, so P(correct) stays at chance; the point is that the CUDA bf16 paths run
end to end at this size and what they cost. Needs a CUDA device (no network).

    python benchmarks/hf_llama_gpu.py --out /tmp/llama1b
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def build(out: Path, layers: int, width: int, device: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.hf_models import tokenizer

    tok = tokenizer(bos=True)
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=width, intermediate_size=width * 11 // 4,
                      num_attention_heads=width // 64, num_key_value_heads=max(1, width // 512), vocab_size=len(tok), max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def run(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"probekit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return secs, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/llama1b"))
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--device", default="cuda", help="cpu only to smoke-test this script with a small --width")
    args = ap.parse_args()
    t0 = time.perf_counter()
    n = build(args.out / "model", args.layers, args.width, args.device)
    print(f"built and saved a random Llama: {n / 1e9:.2f}B parameters in {time.perf_counter() - t0:.1f} s")
    spec = f"hf:{args.out / 'model'}"
    gpu = ["--device", args.device, "--model-dtype", "bfloat16"]
    secs, out = run(["icl", "--model", spec, *gpu, "--count", "50", "--plot", str(args.out / "icl.png"), "--json"])
    curve = json.loads(out)
    print(f"icl: {secs:.1f} s (load included) for n = 0..{max(curve['n_examples'])} x 50 prompts; mean logit of "
          f"the answer {curve['mean_logit'][0]:.2f} at n = 0, {curve['mean_logit'][-1]:.2f} at n = "
          f"{curve['n_examples'][-1]} (a random model: no rule; ideal observer {curve['ideal_mean_logit'][-1]:.2f})")
    secs, out = run(["patch", "--model", spec, "--task", "affine-prompts", "-n", "20", *gpu, "--json",
                     "--plot", str(args.out / "patch.png")])
    res = json.loads(out)
    print(f"patch: {secs:.1f} s (load included) for 20 pairs x every layer x prompt position; JSON keys "
          f"{sorted(res)[:6]}")
    lines = [f"({i}, {3 * i + 2})\n({i + 1}, {3 * i + 5})\n({i + 2}," for i in range(256)]
    (args.out / "prompts.txt").write_text("\n".join(x.replace("\n", " ") for x in lines) + "\n")
    secs, out = run(["cache", "--model", spec, "--text", str(args.out / "prompts.txt"), "-n", "256", *gpu,
                     "--out", str(args.out / "store.zarr"), "--json"])
    print(f"cache: {secs:.1f} s (load included) for 256 prompts, every layer's resid: {out.strip()[:600]}")


if __name__ == "__main__":
    main()
