"""The hf: path on CUDA in bfloat16 and float16: store checks and throughput (needs a GPU).

Builds a randomly initialised GPT-2-small-sized model and a word-level tokenizer locally
(no network), caches the same prompts on CPU in float32 and on CUDA in bf16/fp16, checks each
store (schema, valid mask, padding zeroed, resid close to the float32 reference) and prints
tokens/s.
    python benchmarks/hf_gpu_check.py --prompts 512 --words 96
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build(root: Path, layers: int, width: int, heads: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(2000)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=len(vocab), n_positions=512,
                     pad_token_id=0, eos_token_id=2, bos_token_id=2)
    path = root / "gpt2"
    GPT2LMHeadModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--words", type=int, default=96, help="longest prompt, in words")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    args = ap.parse_args()
    from probekit.store import schema
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.plugin.host import PluginHost

    rng = np.random.default_rng(0)
    host = PluginHost.default()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build(root, args.layers, args.width, 12)
        lines = [" ".join(f"w{i}" for i in rng.integers(0, 2000, rng.integers(8, args.words)))
                 for _ in range(args.prompts)]
        (root / "p.txt").write_text("\n".join(lines) + "\n")
        stores = {}
        for name, device, mdtype, n in (("cpu-float32", "cpu", "float32", 32), ("cuda-bfloat16", "cuda", "bfloat16", None),
                                        ("cuda-float16", "cuda", "float16", None)):
            req = CacheRequest(model=f"hf:{model}", out=str(root / f"{name}.zarr"), text=str(root / "p.txt"),
                               n_samples=n or args.prompts, device=device, model_dtype=mdtype, dtype="float32",
                               batch_size=64)
            t0 = time.perf_counter()
            store = run_cache(host, req)
            secs = time.perf_counter() - t0
            ds = store.dataset()
            valid = ds.valid.values
            assert schema.validate_store(ds) == [], schema.validate_store(ds)
            assert np.all(ds.resid.values.transpose(0, 2, 1, 3)[~valid] == 0)
            stores[name] = ds
            print(f"{name:14s} {ds.sizes['sample']:5d} prompts, {int(valid.sum()):7d} tokens in {secs:6.2f} s "
                  f"= {valid.sum() / secs:9.0f} tokens/s (store checks pass)")
        ref = stores["cpu-float32"].resid.values
        for name in ("cuda-bfloat16", "cuda-float16"):
            got = stores[name].resid.values[: ref.shape[0]]
            rel = np.abs(got - ref).max() / np.abs(ref).max()
            print(f"{name}: max |resid - cpu float32| / max |resid| = {rel:.2e} on the first {ref.shape[0]} prompts")


if __name__ == "__main__":
    main()
