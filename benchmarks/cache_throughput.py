"""Cache throughput against its two bounds, side by side in one run (issue 15, item 6).

On the same prompts, batch size and model:

* **bare forward**: the model with ``output_hidden_states``, the residual stream of every layer
  stacked, cast to the storage dtype (float16) and copied to the host: tokens/s;
* **disk**: sequential write + fsync of a file as large as the cache's activations, in the
  target folder: MB/s, and the tokens/s it would bound the cache at;
* **probekit cache** (``run_cache``, ``--text`` prompts, ``resid``, ``--logits skip``): tokens/s
  with the model load, tokenisation and preflight excluded (reported separately);
* the ratio of the cache's tokens/s to min(bare, disk).

    python benchmarks/cache_throughput.py                       # CPU: random Llama 4 x 256, 256 prompts
    python benchmarks/cache_throughput.py --device cuda         # ~1B random Llama (2048 x 16) in bfloat16

The models are random (LlamaConfig, no network) with the tests' small byte-level BPE tokenizer,
saved with ``save_pretrained`` into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the cat sat on a mat while seven small dogs ran past old red houses near "
         "every river and quiet hill under bright cold stars").split()


def build_model(out: Path, layers: int, width: int, dtype: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.hf_models import tokenizer

    tok = tokenizer(bos=True)
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=width, intermediate_size=width * 4,
                      num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 256),
                      vocab_size=len(tok), max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype=dtype)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def prompts(path: Path, n: int, words: int) -> None:
    import random

    rng = random.Random(0)
    path.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(words)) + "\n" for _ in range(n)))


def bare_forward(model_dir: Path, ids, valid, batch: int, device: str, dtype: str) -> float:
    """Seconds for the forward passes with every layer's hidden states cast to float16 on the
    device and copied to the host (pinned, non-blocking, one sync per batch on CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    ids, valid = torch.as_tensor(ids), torch.as_tensor(valid).long()

    def one(i: int):
        x, m = ids[i:i + batch].to(device), valid[i:i + batch].to(device)
        hs = model(input_ids=x, attention_mask=m, output_hidden_states=True, use_cache=False).hidden_states
        h = torch.stack(hs, 1).to(torch.float16)
        host = torch.empty(h.shape, dtype=torch.float16, pin_memory=device.startswith("cuda"))
        host.copy_(h, non_blocking=device.startswith("cuda"))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return host

    with torch.no_grad():
        one(0)  # warm
        t0 = time.perf_counter()
        for i in range(0, len(ids), batch):
            one(i)
        return time.perf_counter() - t0


def disk_write(folder: Path, nbytes: int) -> float:
    """Seconds to write ``nbytes`` sequentially (8 MiB writes) and fsync, in ``folder``."""
    chunk = os.urandom(8 << 20)
    path = folder / "raw-write.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            left -= f.write(chunk[: min(left, len(chunk))])
        f.flush()
        os.fsync(f.fileno())
    secs = time.perf_counter() - t0
    path.unlink()
    return secs


def cache(model_dir: Path, text: Path, out: Path, args) -> dict:
    from probekit.cache.run import CacheRequest, run_cache
    from probekit.plugin.host import PluginHost

    host, marks = PluginHost.default(), {}
    req = CacheRequest(model=f"hf:{model_dir}", out=str(out), text=str(text), max_len=args.max_len,
                       n_samples=args.n, sites=("resid",), batch_size=args.batch, device=args.device,
                       model_dtype=args.dtype, logits="skip", inflight=args.inflight, shard=args.shard)

    def started(plan):
        marks["start"], marks["plan"] = time.perf_counter(), plan

    t0 = time.perf_counter()
    store = run_cache(host, req, on_start=started)
    t1 = time.perf_counter()
    ds = store.dataset()
    acts = sum(f.stat().st_size for f in (store.path / "resid").rglob("*") if f.is_file())
    return dict(load=marks["start"] - t0, secs=t1 - marks["start"], tokens=int(ds["valid"].values.sum()),
                ids=ds["tokens"].values, valid=ds["valid"].values, raw=int(ds["resid"].nbytes), on_disk=acts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, help="prompts (default: 256 on cpu, 1024 on cuda)")
    ap.add_argument("--max-len", type=int, help="tokens per prompt (default: 64 on cpu, 256 on cuda)")
    ap.add_argument("--batch", type=int, help="batch size (default: 32 on cpu, 64 on cuda)")
    ap.add_argument("--layers", type=int, help="default: 4 on cpu, 16 on cuda")
    ap.add_argument("--width", type=int, help="default: 256 on cpu, 2048 on cuda")
    ap.add_argument("--dtype", help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--inflight", type=int, default=2)
    ap.add_argument("--shard", default=None)
    ap.add_argument("--dir", help="target folder (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    for name, cpu, cuda in (("n", 256, 1024), ("max_len", 64, 256), ("batch", 32, 64), ("layers", 4, 16),
                            ("width", 256, 2048), ("dtype", "float32", "bfloat16")):
        if getattr(args, name) is None:
            setattr(args, name, cuda if gpu else cpu)
    import torch

    torch.set_num_threads(args.threads)
    threads = dict(torch=torch.get_num_threads(), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"),
                   OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"),
                   MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        params = build_model(tmp / "model", args.layers, args.width, args.dtype)
        prompts(tmp / "prompts.txt", args.n, args.max_len)  # each longer than max_len: every prompt truncated
        cache(tmp / "model", tmp / "prompts.txt", tmp / "warm.zarr", argparse.Namespace(**{**vars(args), "n": 8}))
        c = cache(tmp / "model", tmp / "prompts.txt", tmp / "run.zarr", args)
        bare = bare_forward(tmp / "model", c["ids"], c["valid"], args.batch, args.device, args.dtype)
        disk = disk_write(tmp, c["raw"])
    per_token = c["raw"] / c["tokens"]
    rates = dict(bare=c["tokens"] / bare, disk=c["raw"] / disk / per_token, cache=c["tokens"] / c["secs"])
    row = dict(device=args.device, params=params, layers=args.layers, width=args.width, dtype=args.dtype,
               prompts=args.n, tokens=c["tokens"], bytes_per_token=per_token, threads=threads,
               bare_tok_s=rates["bare"], disk_MB_s=c["raw"] / disk / 1e6, disk_tok_s=rates["disk"],
               cache_tok_s=rates["cache"], cache_load_s=c["load"], cache_s=c["secs"],
               ratio=rates["cache"] / min(rates["bare"], rates["disk"]),
               gpu=torch.cuda.get_device_name() if gpu else None)
    if args.json:
        print(json.dumps(row))
        return
    print(f"{params / 1e6:.1f}M-parameter random Llama ({args.layers} x {args.width}, {args.dtype}) on {args.device}; "
          f"{args.n} prompts, {c['tokens']} tokens, resid at {args.layers + 1} layers in float16 = "
          f"{per_token / 1e3:.1f} KB/token; threads {threads}")
    print(f"| | tokens/s |\n|---|---|\n| bare forward, hidden states to host as float16 | {rates['bare']:,.0f} |")
    print(f"| disk bound (sequential write {row['disk_MB_s']:,.0f} MB/s / {per_token / 1e3:.1f} KB/token) | "
          f"{rates['disk']:,.0f} |")
    print(f"| probekit cache (load excluded: {c['load']:.2f} s) | **{rates['cache']:,.0f} = {row['ratio']:.2f} "
          f"of min(bare, disk)** |")


if __name__ == "__main__":
    main()
