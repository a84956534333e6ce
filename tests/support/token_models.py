"""A plain torch token model for the ``torch:`` adapter's patching test (``support.token_models``)."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mix = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):  # a causal running mean as the "attention", then an MLP
        steps = torch.arange(1, x.shape[1] + 1, device=x.device)[None, :, None]
        x = x + self.mix(x.cumsum(1) / steps)
        return x + self.mlp(x)


class TokenModel(nn.Module):
    def __init__(self, vocab=20, d=16, n=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def make_model():
    torch.manual_seed(0)
    return TokenModel()
