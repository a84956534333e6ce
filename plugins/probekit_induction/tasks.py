"""Tasks ``repeated-tokens`` and ``repeated-segments``: token sequences that reward copying.

* ``repeated-tokens`` (TransformerLens / ARENA): ``[BOS, t_1..t_R, t_1..t_R, ...]`` with the
  segment repeated ``repeats`` times and t_i uniform over the non-BOS tokens. The score
  sequences of ``probekit heads`` (the core builds the same ones with
  :func:`probekit.repeated_tokens`).
* ``repeated-segments``: a training distribution that rewards induction: each sequence is
  uniform random tokens after a BOS; with probability ``p_repeat`` a random segment occurs
  twice, the second copy starting anywhere after the first ends. Its length is ``segment``,
  or (``segment = 0``, the default) uniform in ``[min_segment, (length - bos) // 2]``, so the
  distance between the copies varies and no head can find the earlier copy by position alone
  (trained on a fixed half-length segment -- the repeated random tokens on which Olsson et al.
  2022, "In-context Learning and Induction Heads", *score* induction heads -- block-0 heads learn
  to attend a fixed distance back instead, in this plugin's first prototype). The defaults (every
  sequence holds a repeat, segments of 8 to 31 tokens) make the induction phase change come within
  about 1,000 Adam steps.

Token 0 is BOS when ``bos`` is true (it never occurs elsewhere). Both tasks train next-token
prediction: ``next[s, t]`` is the token after position t (for ``repeated-tokens`` the
periodic continuation, so the last position predicts t_1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit import ModelIO, Task, UsageError, repeated_tokens

BOS = 0


@dataclass(frozen=True)
class RepeatedTokensParams:
    vocab: int = 128  # token ids 0..vocab-1 (0 is BOS when bos)
    segment: int = 31  # R: tokens in the repeated segment
    repeats: int = 2  # copies of the segment
    bos: bool = True  # start every sequence with BOS (token 0)

    def __post_init__(self):
        if self.vocab < 2 + self.bos or self.segment < 1 or self.repeats < 1:
            raise UsageError(f"repeated-tokens needs vocab >= {2 + self.bos}, segment >= 1 and repeats >= 1, "
                             f"got vocab={self.vocab}, segment={self.segment}, repeats={self.repeats}")


@dataclass(frozen=True)
class RepeatedSegmentsParams:
    vocab: int = 128  # token ids 0..vocab-1 (0 is BOS when bos)
    length: int = 64  # positions the model sees (BOS included)
    segment: int = 0  # R: length of the repeated segment; 0: uniform in [min_segment, (length - bos) // 2]
    min_segment: int = 8
    p_repeat: float = 1.0  # fraction of sequences that hold a repeated segment
    bos: bool = True

    @property
    def max_segment(self) -> int:
        return (self.length - self.bos) // 2

    def __post_init__(self):
        if self.vocab < 2 + self.bos or self.length < 2 + self.bos:
            raise UsageError(f"repeated-segments needs vocab >= {2 + self.bos} and length >= {2 + self.bos}")
        for name, value in (("segment", self.segment or 1), ("min_segment", self.min_segment)):
            if not 1 <= value <= self.max_segment:
                raise UsageError(f"{name} must be between 1 and (length - bos) // 2 = {self.max_segment}, got {value}")
        if not 0.0 <= self.p_repeat <= 1.0:
            raise UsageError(f"p_repeat must be in [0, 1], got {self.p_repeat}")


def _dataset(tokens: np.ndarray, attrs: dict, extra: dict):
    """Inputs ``tokens[:, :-1]`` and next-token targets ``tokens[:, 1:]`` as a task Dataset."""
    import xarray as xr

    T = tokens.shape[1] - 1
    data = {
        "tokens": (("sample", "pos"), tokens[:, :-1].astype(np.int64), {"description": "token ids (0: BOS)"}),
        "next": (("sample", "pos"), tokens[:, 1:].astype(np.int64), {"description": "the next token"}),
        **extra,
    }
    return xr.Dataset(data, coords={"pos": np.arange(T)}, attrs=attrs)


class RepeatedTokensTask(Task):
    """``[BOS, t_1..t_R] + [t_1..t_R] * (repeats - 1)``, t_i uniform over the non-BOS tokens."""

    name = "repeated-tokens"
    Params = RepeatedTokensParams

    @property
    def seq_len(self) -> int:
        p = self.params
        return int(p.bos) + p.segment * p.repeats

    @property
    def io(self) -> ModelIO:
        p = self.params
        return ModelIO("tokens", "next", "tokens", p.vocab, p.vocab, self.seq_len)

    def generate(self, n: int, seed: int):
        p = self.params
        rng = np.random.default_rng(seed)
        body = repeated_tokens(n, p.segment, p.vocab, repeats=p.repeats + 1, bos_id=BOS if p.bos else None,
                               low=1 if p.bos else 0, rng=rng)
        tokens = body[:, : self.seq_len + 1]  # one token of the next copy: the last position's target
        return _dataset(tokens, self.provenance(seed), {})


class RepeatedSegmentsTask(Task):
    """Random tokens after BOS; with probability ``p_repeat`` a random segment occurs twice."""

    name = "repeated-segments"
    Params = RepeatedSegmentsParams

    @property
    def io(self) -> ModelIO:
        p = self.params
        return ModelIO("tokens", "next", "tokens", p.vocab, p.vocab, p.length)

    def generate(self, n: int, seed: int):
        p = self.params
        rng = np.random.default_rng(seed)
        low = 1 if p.bos else 0
        tokens = rng.integers(low, p.vocab, (n, p.length + 1))
        if p.bos:
            tokens[:, 0] = BOS
        start = int(p.bos)
        repeated = rng.random(n) < p.p_repeat
        R = np.full(n, p.segment) if p.segment else rng.integers(p.min_segment, p.max_segment + 1, n)
        # first copy at a in [start, length - 2R], second at b in [a + R, length - R]
        a = start + (rng.random(n) * (p.length - 2 * R - start + 1)).astype(np.int64)
        b = a + R + (rng.random(n) * (p.length - R - (a + R) + 1)).astype(np.int64)
        for i in np.flatnonzero(repeated):
            tokens[i, b[i] : b[i] + R[i]] = tokens[i, a[i] : a[i] + R[i]]
        none = np.full(n, -1)
        first, second, seg = (np.where(repeated, v, none) for v in (a, b, R))
        extra = {
            "segment": (("sample",), seg, {"description": "length of the repeated segment (-1: none)"}),
            "repeated": (("sample",), repeated, {"description": "the sequence holds a repeated segment"}),
            "first_copy": (("sample",), first, {"description": "start of the segment's first copy (-1: none)"}),
            "second_copy": (("sample",), second, {"description": "start of the segment's second copy (-1: none)"}),
        }
        return _dataset(tokens, self.provenance(seed), extra)
