"""Plain torch modules for the ``torch:`` adapter tests (importable as ``support.custom_models``)."""

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU())

    def forward(self, x):
        return x + self.mlp(x)


class SeqModel(nn.Module):
    def __init__(self, d_in=5, d=16, n=3):
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(Residual(d) for _ in range(n))
        self.head = nn.Linear(d, d_in)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def make_model():
    torch.manual_seed(0)
    return SeqModel()


def not_a_module():
    return 42
