"""A hand-built two-block attention-only toy transformer that implements induction exactly.

The residual stream has four one-hot subspaces: ``tok`` (the current token), ``pos`` (the
position), ``prev`` (the previous token, written by head 0.0) and ``out`` (the copied token,
written by head 1.0 and read by the unembedding):

* head 0.0, a previous-token head: its query reads position i, its key position j + 1, so it
  attends to q - 1; its OV circuit copies ``tok`` into ``prev``;
* head 1.0, an induction head: its query reads ``tok``, its key reads ``prev`` (K-composition
  with 0.0), so it attends to the token after the previous occurrence; its OV circuit copies
  ``tok`` into ``out``, which the unembedding reads: a pure copying circuit.

Every other weight is 0. ``scale`` multiplies the two heads' QK and OV weights (0 gives a
model that predicts uniformly), for fake training runs.
"""

from __future__ import annotations

from pathlib import Path

VOCAB, SEGMENT, MAX_LEN = 24, 6, 16
TASK_PARAMS = {"vocab": VOCAB, "segment": SEGMENT, "repeats": 2, "bos": True}


def _layout(vocab: int, max_len: int) -> dict[str, int]:
    return {"tok": 0, "pos": vocab, "prev": vocab + max_len, "out": 2 * vocab + max_len}


def build(scale: float = 1.0, *, vocab: int = VOCAB, max_len: int = MAX_LEN, sharp: float = 60.0,
          logit: float = 12.0):
    """The model (a ``ToyTransformer``) and its ``ToyConfig``."""
    import torch

    from probekit.models.toy.model import ToyConfig, ToyTransformer

    d = 3 * vocab + max_len
    d += d % 2  # two heads
    cfg = ToyConfig(d_in=vocab, d_out=vocab, input_kind="tokens", n_layers=2, d_model=d, n_heads=2,
                    attention="softmax", mlp=False, layernorm=False, max_len=max_len)
    model = ToyTransformer(cfg)
    at = _layout(vocab, max_len)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, at["tok"]: at["tok"] + vocab] = torch.eye(vocab)
        model.pos[:, at["pos"]: at["pos"] + max_len] = torch.eye(max_len)
        qkv0, o0 = model.blocks[0].attn.W_qkv.weight, model.blocks[0].attn.W_o.weight
        for i in range(max_len):  # head 0.0: query = position i, key = position j + 1
            qkv0[i, at["pos"] + i] = sharp * scale
            if i >= 1:
                qkv0[d + i, at["pos"] + i - 1] = 1.0
        for t in range(vocab):  # OV: tok -> prev
            qkv0[2 * d + t, at["tok"] + t] = scale
            o0[at["prev"] + t, t] = 1.0
        qkv1, o1 = model.blocks[1].attn.W_qkv.weight, model.blocks[1].attn.W_o.weight
        for t in range(vocab):  # head 1.0: query = tok, key = prev; OV: tok -> out
            qkv1[t, at["tok"] + t] = sharp * scale
            qkv1[d + t, at["prev"] + t] = 1.0
            qkv1[2 * d + t, at["tok"] + t] = scale
            o1[at["out"] + t, t] = 1.0
            model.unembed.weight[t, at["out"] + t] = logit
    return model.eval(), cfg


def save(path: str | Path, scale: float = 1.0, step: int | None = None) -> Path:
    """Save the constructed model as a toy checkpoint (task ``repeated-tokens``)."""
    from probekit.models.toy import checkpoint
    model, cfg = build(scale)
    training = {} if step is None else {"step": step, "history": [[step, 0.0]] if step else []}
    return checkpoint.save(model, checkpoint.Checkpoint(cfg, "repeated-tokens", dict(TASK_PARAMS), training), path)
