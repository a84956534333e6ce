"""Linear self-attention on raw tokens: the model of von Oswald et al. (ICML 2023).

The tokens themselves are the residual stream (no embedding, positions, LayerNorm,
MLP or unembedding). With tokens ``e_j`` (``[batch, pos, d]``) and the last position
the query, every layer adds, per head,

    e_j <- e_j + W_O W_V (1/N) sum_{i<N} e_i (W_K e_i)^T (W_Q e_j)

where the sum runs over the N context positions (the query is not a key, as in
Ahn et al.'s mask M). The output is the negated last ``d_out`` features of every
token, so for linear-regression tokens ``(x_i, y_i)`` and a query ``(x_q, 0)`` the
prediction is ``-`` (the query's y-slot after the last layer). ``shared=True`` uses
one set of weights for every layer (a recurrent model).

The hook names are the toy transformer's (``hook_embed``, ``blocks.{l}.hook_attn_out``,
``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``, ``hook_out``), so the
toy adapter caches it unchanged. The pattern hook holds the attention scores
``(W_Q e_q)^T (W_K e_k) / N`` with the query's key column zero.
"""

from __future__ import annotations

import torch
from torch import nn

from probekit.models.toy.model import HookPoint, ToyConfig


class LSALayer(nn.Module):
    """The weights of one linear self-attention layer: per head W_Q, W_K (key size d) and W_V; W_O mixes heads."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        self.n_heads = h
        self.W_q = nn.Linear(d, h * d, bias=False)
        self.W_k = nn.Linear(d, h * d, bias=False)
        self.W_v = nn.Linear(d, h * d, bias=False)
        self.W_o = nn.Linear(h * d, d, bias=False)


class _PatternHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_pattern = HookPoint()


class LSABlock(nn.Module):
    """Hook points of one layer; the weights live in :attr:`LSATransformer.layers`."""

    def __init__(self):
        super().__init__()
        self.attn = _PatternHooks()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, e: torch.Tensor, w: LSALayer) -> torch.Tensor:
        B, T, d = e.shape
        h = w.n_heads
        n_ctx = T - 1
        q = w.W_q(e).view(B, T, h, d).transpose(1, 2)  # [B, head, pos, d]
        k = w.W_k(e[:, :n_ctx]).view(B, n_ctx, h, d).transpose(1, 2)
        v = w.W_v(e[:, :n_ctx]).view(B, n_ctx, h, d).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / max(n_ctx, 1)  # [B, head, query, key < N]
        pattern = self.attn.hook_pattern(torch.cat([scores, scores.new_zeros(B, h, T, 1)], -1))
        out = (pattern[..., :n_ctx] @ v).transpose(1, 2).reshape(B, T, h * d)
        return self.hook_resid_post(e + self.hook_attn_out(w.W_o(out)))


class LSATransformer(nn.Module):
    """von Oswald's linear self-attention model; ``cfg.arch == "lsa"`` (see the module docstring)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.hook_embed = HookPoint()
        self.layers = nn.ModuleList(LSALayer(cfg) for _ in range(1 if cfg.shared else cfg.n_layers))
        self.blocks = nn.ModuleList(LSABlock() for _ in range(cfg.n_layers))
        self.hook_out = HookPoint()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal weights with std ``init_std`` (default 0.002 / n_layers, as in von Oswald's code)."""
        std = self.cfg.init_std or 0.002 / self.cfg.n_layers
        for p in self.parameters():
            nn.init.normal_(p, std=std)

    def layer_weights(self, block: int) -> LSALayer:
        """The weights block ``block`` uses (the same object for every block when shared)."""
        return self.layers[0 if self.cfg.shared else block]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.hook_embed(x)
        for i, block in enumerate(self.blocks):
            e = block(e, self.layer_weights(i))
        return self.hook_out(-e[..., e.shape[-1] - self.cfg.d_out:])
