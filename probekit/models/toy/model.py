"""A small configurable transformer for toy in-context-learning tasks.

Attention is ``softmax`` or ``linear`` (no normalisation, as in von Oswald et al.);
MLP and LayerNorm are optional; inputs are continuous vectors or token ids.
Every interesting activation passes through a named :class:`HookPoint`, so an
adapter can capture any site with a forward hook:

=============================  ==========================================
module name                    activation (shape)
=============================  ==========================================
``hook_embed``                 embeddings + positions ``[batch, pos, d_model]``
``blocks.{l}.hook_attn_out``   attention output of block l ``[batch, pos, d_model]``
``blocks.{l}.hook_mlp_out``    MLP output of block l ``[batch, pos, d_model]``
``blocks.{l}.hook_resid_post`` residual stream after block l ``[batch, pos, d_model]``
``blocks.{l}.attn.hook_pattern`` attention pattern ``[batch, head, query, key]``
``hook_out``                   model output ``[batch, pos, d_out]``
=============================  ==========================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from probekit.errors import UsageError

ATTENTION_KINDS = ("softmax", "linear")
INPUT_KINDS = ("continuous", "tokens")
ARCHS = ("transformer", "lsa")


@dataclass(frozen=True)
class ToyConfig:
    """Architecture of a :class:`ToyTransformer` (saved as JSON next to its weights)."""

    d_in: int  # input features, or vocabulary size for token inputs
    d_out: int  # output features, or vocabulary size
    input_kind: str = "continuous"
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    attention: str = "softmax"
    mlp: bool = True
    layernorm: bool = True
    d_mlp: int = 0  # 0 means 4 * d_model
    max_len: int = 128
    positional: bool = True  # learned positional embeddings
    causal: bool = True
    arch: str = "transformer"  # or "lsa": von Oswald's linear self-attention on raw tokens (probekit.models.toy.lsa)
    shared: bool = False  # lsa: every layer uses the same weights (a recurrent / looped model)
    init_std: float = 0.0  # std of the initial weights; 0 means the arch's default

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UsageError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "lsa" and (self.input_kind != "continuous" or self.d_model != self.d_in
                                   or self.d_out > self.d_in):
            raise UsageError("an lsa model reads continuous tokens as its residual stream: it needs "
                             f"d_model == d_in and d_out <= d_in (got d_in={self.d_in}, d_model={self.d_model}, "
                             f"d_out={self.d_out}, input_kind={self.input_kind!r})")
        if self.attention not in ATTENTION_KINDS:
            raise UsageError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {self.attention!r}")
        if self.input_kind not in INPUT_KINDS:
            raise UsageError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {self.input_kind!r}")
        for name in ("d_in", "d_out", "n_layers", "d_model", "n_heads", "max_len"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise UsageError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown toy-model options {sorted(unknown)}; choose from: {', '.join(sorted(known))}")
        return cls(**d)


class HookPoint(nn.Identity):
    """An identity module marking a site; forward hooks on it read or replace the activation."""


class Attention(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.d_head = cfg.d_model // cfg.n_heads
        self.W_qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.attention == "softmax")
        self.W_o = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attention == "softmax")
        self.hook_pattern = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.W_qkv(x).view(B, T, 3, self.cfg.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2)  # [B, head, query, key]
        if self.cfg.attention == "softmax":
            scores = scores / math.sqrt(self.d_head)
            if self.cfg.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            pattern = scores.softmax(-1)
        else:
            pattern = scores.tril() if self.cfg.causal else scores
        pattern = self.hook_pattern(pattern)
        out = (pattern @ v).transpose(1, 2).reshape(B, T, self.cfg.d_model)
        return self.W_o(out)


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.layernorm else nn.Identity
        self.ln1 = norm()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        if cfg.mlp:
            d_mlp = cfg.d_mlp or 4 * cfg.d_model
            self.ln2 = norm()
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, cfg.d_model))
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.hook_attn_out(self.attn(self.ln1(x)))
        if hasattr(self, "mlp"):
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class ToyTransformer(nn.Module):
    """Decoder-only transformer over continuous vectors or tokens; see the module docstring for sites."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.input_kind == "tokens":
            self.embed = nn.Embedding(cfg.d_in, cfg.d_model)
        else:
            self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        if cfg.positional:
            self.pos = nn.Parameter(torch.zeros(cfg.max_len, cfg.d_model))
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_out)
        self.hook_out = HookPoint()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=self.cfg.init_std or 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.cfg.max_len:
            raise UsageError(f"sequence length {T} exceeds the model's max_len {self.cfg.max_len}")
        h = self.embed(x)
        if self.cfg.positional:
            h = h + self.pos[:T]
        h = self.hook_embed(h)
        for block in self.blocks:
            h = block(h)
        return self.hook_out(self.unembed(self.ln_f(h)))


def build_model(cfg: ToyConfig) -> nn.Module:
    """The toy model a config describes: a :class:`ToyTransformer` or, for ``arch="lsa"``, an
    :class:`~probekit.models.toy.lsa.LSATransformer` (same hook names)."""
    if cfg.arch == "lsa":
        from probekit.models.toy.lsa import LSATransformer

        return LSATransformer(cfg)
    return ToyTransformer(cfg)
