"""Activation patching and ablation: where does the answer form, and what takes over when a part goes?

**Runs.** A *pair* is a prompt ``a`` (with context, e.g. n solved examples then a query), a prompt
``b`` (without: the query alone) and an ``answer``, all as token ids (:func:`probekit.lenses.interventions.pairs.
encode_pairs` tokenises text). A prompt is scored with the answer appended (teacher forcing):
``logp = log p(ans_1 | prompt) + log p(ans_2 | prompt, ans_1) + ...``, the log-probability of the
whole answer.

**Residual-stream patching** (:func:`patch_residual`). For each resid layer l (0 = embeddings,
l = after block l, i.e. TransformerLens' ``blocks.{l}.hook_resid_pre``) and each prompt position
of run B, run B with ``resid[l, p]`` replaced by run A's at the aligned position and score the
answer. Positions are aligned from the *end* of the prompts, since A is the longer one: B's last
prompt token <-> A's last prompt token (``pos = -1``), the one before <-> the one before
(``pos = -2``), ... except for a pair's ``prefix``: its first tokens (e.g. a BOS both prompts
start with), which are aligned with A's first tokens. A B position with no counterpart in A gives NaN. Only prompt positions are
patched (the answer tokens are the same in both runs). The metric is the recovered fraction::

    recovered = (logp_patched - logp_b) / (logp_a - logp_b)

1: this one vector carries everything run A has that run B lacks for the answer; 0: nothing.
Kept per pair (``recovered_pair``; NaN where ``|logp_a - logp_b| < min_gap``), averaged over pairs
(``recovered``), and pooled as a ratio of means over pairs (``recovered_pooled``), which small
gaps cannot blow up.

**Ablation** (:class:`Ablation`). Applied to run A, the source of the patches, so patching after
an ablation shows where backup components re-form the answer. A head's output is its slice of
the input of the attention output projection (before W_O); a block's output is the residual
stream it writes (ablated: block output := block input, so the block adds nothing). ``zero``
sets it to 0; ``mean`` to its mean *at that position* over the run's own prompts (every pair's
A prompt + answer, aligned at the start; each position averaged over the prompts that reach it),
computed from unablated runs. Blocks and heads are numbered from 0 as in TransformerLens and
``probekit heads``: ablating block L changes resid layers L + 1 and later.

Works on adapters that declare the ``patching`` capability (toy transformers with token inputs,
``hf:`` causal LMs, ``torch:`` modules with a ``resid`` site); head ablation also needs ``heads``.
Everything runs batched on the adapter's device under ``torch.no_grad``, through the one hook
runner of :mod:`probekit.models.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from probekit.errors import DataError, UsageError
from probekit.models.hooks import (  # noqa: F401  (re-exported: the intervention API names them)
    MODES,
    Ablation,
    ComponentMeans,
    Forward,
    Hooked,
    Patch,
    first_output,
    hooked_model,
    parse_blocks,
    parse_heads,
    run_hooked,
    run_with_hooks,
)

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- what to do

@dataclass(frozen=True)
class TokenPair:
    """Token ids of a prompt with context (``a``), one without (``b``) and the answer to both.

    ``prefix``: how many leading tokens of ``b`` are aligned with the same first tokens of ``a``
    (e.g. 1 for a BOS); the rest of ``b`` is aligned with the end of ``a``.
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    answer: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False)  # e.g. the texts, recorded in the results
    prefix: int = 0

    def source(self, p: int) -> int | None:
        """The position of ``a`` aligned with position ``p`` of ``b`` (None: there is none)."""
        if p < self.prefix:
            return p
        q = len(self.a) - len(self.b) + p
        return q if q >= self.prefix else None


# --------------------------------------------------------------------------- batches and scores

def _pad(seqs: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        valid[i, :len(s)] = True
    return ids.to(device), valid.to(device)


def _scored_inputs(prompts, answers):
    """Prompt + answer minus its last token (the positions whose next-token logits score the answer)."""
    return [tuple(p) + tuple(a[:-1]) for p, a in zip(prompts, answers)]


def _answer_positions(prompt_lens, answers, device):
    import torch

    rows, pos, tok = [], [], []
    for r, (n, a) in enumerate(zip(prompt_lens, answers)):
        rows += [r] * len(a)
        pos += range(n - 1, n - 1 + len(a))
        tok += list(a)
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=device)
    rows, pos, tok = t(rows), t(pos), t(tok)
    keep = torch.unique(pos)  # sorted
    return rows, torch.searchsorted(keep, pos), tok, keep


def _score(hooked, prompts, answers, **kw) -> np.ndarray:
    """log p(answer | prompt) of each row of one batch (float64 ``[batch]``) and the :class:`Forward`."""
    import torch

    rows, col, tok, keep = _answer_positions([len(p) for p in prompts], answers, hooked.device)
    ids, valid = _pad(_scored_inputs(prompts, answers), hooked.pad_id, hooked.device)
    fwd = run_hooked(hooked, ids, valid, keep=keep, **kw)
    lp = fwd.logits[rows, col].float().log_softmax(-1).gather(1, tok[:, None])[:, 0].double()
    out = torch.zeros(len(prompts), dtype=torch.float64, device=lp.device).index_add_(0, rows, lp)
    return out.cpu().numpy(), fwd


def component_means(hooked: Hooked, seqs: Sequence[Sequence[int]], ablation: Ablation, *, batch_size: int = 32,
                    on_progress: Progress | None = None) -> dict:
    """Per-position means of the ablated components over ``seqs`` (aligned at the start, padding
    excluded): ``{("head", b): [T, head, d_head], ("block", b): [T, d_model]}``."""
    import torch

    hooked = hooked_model(hooked)
    acc = ComponentMeans(hooked.anatomy, ablation, max(len(s) for s in seqs), dtype=torch.float32,
                         device=hooked.device)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        ids, valid = _pad(chunk, hooked.pad_id, hooked.device)
        keep = torch.zeros(1, dtype=torch.long, device=ids.device)
        run_with_hooks(lambda: hooked.logits(ids, valid, keep), acc.hooks())
        acc.add(valid)
        if on_progress:
            on_progress("means", start + len(chunk), len(seqs))
    return acc.result()


def answer_logprobs(adapter, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
                    ablation: Ablation | None = None, batch_size: int = 32,
                    on_progress: Progress | None = None) -> np.ndarray:
    """log p(answer_i | prompt_i) for each prompt (summed over the answer's tokens, teacher-forced),
    optionally with ``ablation`` (``mean``: over these prompts + answers). float64 ``[n]``."""
    hooked = hooked_model(adapter)
    prompts, answers = [tuple(p) for p in prompts], [tuple(a) for a in answers]
    _check_rows(prompts, answers)
    hooked.check(ablation)
    means = (component_means(hooked, _scored_inputs(prompts, answers), ablation, batch_size=batch_size)
             if ablation and ablation.mode == "mean" else None)
    out = []
    for start in range(0, len(prompts), batch_size):
        sl = slice(start, start + batch_size)
        out.append(_score(hooked, prompts[sl], answers[sl], ablation=ablation, means=means)[0])
        if on_progress:
            on_progress("score", min(start + batch_size, len(prompts)), len(prompts))
    return np.concatenate(out) if out else np.zeros(0)


def _check_rows(prompts, answers):
    if len(prompts) != len(answers):
        raise DataError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise DataError("no prompts to score")
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if not p:
            raise DataError(f"prompt {i} has no tokens (the answer's first token is predicted from the prompt)")
        if not a:
            raise DataError(f"the answer of prompt {i} has no tokens")


# --------------------------------------------------------------------------- patching

def patch_residual(adapter, pairs: Sequence[TokenPair], *, layers: Sequence[int] | None = None,
                   ablation: Ablation | None = None, batch_size: int = 32, min_gap: float = 1e-6,
                   on_progress: Progress | None = None):
    """Patch run A's residual stream into run B at every (layer, position); see the module docstring.

    Returns an xarray Dataset with dims ``pair``, ``layer`` (resid layers), ``pos`` (offset from
    the end of the B prompt: -1 is its last token): ``logp_patched``, ``recovered_pair``
    ``(pair, layer, pos)``; ``recovered``, ``recovered_pooled`` ``(layer, pos)``; ``logp_a``
    (with ``ablation``), ``logp_a_clean``, ``logp_b``, ``n_answer``, ``len_a``, ``len_b``
    ``(pair)``; ``token_b`` ``(pair, pos)`` (token ids, -1 where none).
    """
    hooked = hooked_model(adapter)
    pairs = list(pairs)
    if not pairs:
        raise DataError("no prompt pairs to patch")
    _check_rows([p.a for p in pairs] + [p.b for p in pairs], [p.answer for p in pairs] * 2)
    layers = list(range(hooked.n_resid)) if layers is None else sorted({int(x) for x in layers})
    if not layers or any(not 0 <= x < hooked.n_resid for x in layers):
        raise UsageError(f"resid layers must be in 0-{hooked.n_resid - 1}, got {layers}")
    hooked.check(ablation)
    n, answers = len(pairs), [p.answer for p in pairs]
    report = on_progress or (lambda *_: None)
    means = None
    if ablation and ablation.mode == "mean":
        means = component_means(hooked, _scored_inputs([p.a for p in pairs], answers), ablation,
                                batch_size=batch_size, on_progress=report)
    logp_b = np.concatenate([_score(hooked, [p.b for p in pairs[s:s + batch_size]], answers[s:s + batch_size])[0]
                             for s in range(0, n, batch_size)])
    report("run b", n, n)
    logp_a_clean, logp_a, resid_a = _run_a(hooked, pairs, layers, ablation, means, batch_size, report)
    patched = _patch_each(hooked, pairs, layers, resid_a, batch_size, report)
    return _patch_dataset(pairs, layers, patched, logp_a, logp_a_clean, logp_b, ablation, min_gap)


def _run_a(hooked, pairs, layers, ablation, means, batch_size, report):
    """Run A of every pair (with ``ablation``; without it too when there is one): the answer's
    log-probs and each pair's resid ``[layer, len_b, d]`` at the A positions aligned with B's."""
    import torch

    n, answers = len(pairs), [p.answer for p in pairs]
    logp_a_clean, logp_a, resid_a = [], [], []
    for s in range(0, n, batch_size):
        chunk = pairs[s:s + batch_size]
        if ablation:
            logp_a_clean.append(_score(hooked, [p.a for p in chunk], answers[s:s + batch_size])[0])
        lp, fwd = _score(hooked, [p.a for p in chunk], answers[s:s + batch_size], ablation=ablation, means=means,
                         capture=True)
        logp_a.append(lp)
        for r, p in enumerate(chunk):
            src = torch.as_tensor([max(p.source(q) or 0, 0) for q in range(len(p.b))], device=hooked.device)
            resid_a.append(torch.stack([fwd.resid[layer][r, src] for layer in layers]))
        report("run a", min(s + batch_size, n), n)
    logp_a = np.concatenate(logp_a)
    return (np.concatenate(logp_a_clean) if ablation else logp_a), logp_a, resid_a


def _patch_each(hooked, pairs, layers, resid_a, batch_size, report) -> np.ndarray:
    """log p(answer) of run B with one (layer, position) from run A, for every B position that has
    a counterpart in A: ``[pair, layer, pos]`` aligned from the end (NaN elsewhere)."""
    import torch

    n, P, answers = len(pairs), max(len(p.b) for p in pairs), [p.answer for p in pairs]
    jobs = [(i, li, p) for i, pair in enumerate(pairs) for li in range(len(layers))
            for p in range(len(pair.b)) if pair.source(p) is not None]
    patched = np.full((n, len(layers), P), np.nan)
    t = lambda v: torch.as_tensor(v, dtype=torch.long, device=hooked.device)  # noqa: E731
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        patches = []
        for li in sorted({j[1] for j in chunk}):
            rows = [r for r, j in enumerate(chunk) if j[1] == li]
            pos = [chunk[r][2] for r in rows]
            vals = torch.stack([resid_a[chunk[r][0]][li, chunk[r][2]] for r in rows])
            patches.append(Patch(layers[li], t(rows), t(pos), vals))
        lp, _ = _score(hooked, [pairs[i].b for i, _, _ in chunk], [answers[i] for i, _, _ in chunk],
                       patches=patches)
        for (i, li, p), v in zip(chunk, lp):
            patched[i, li, P - len(pairs[i].b) + p] = v
        report("patch", s + len(chunk), len(jobs))
    return patched


def _patch_dataset(pairs, layers, patched, logp_a, logp_a_clean, logp_b, ablation, min_gap):
    import xarray as xr

    n, P, answers = len(pairs), patched.shape[-1], [p.answer for p in pairs]
    gap = logp_a - logp_b
    with np.errstate(invalid="ignore", divide="ignore"):
        rec_pair = (patched - logp_b[:, None, None]) / np.where(np.abs(gap) < min_gap, np.nan, gap)[:, None, None]
        have = ~np.isnan(patched)
        pooled = (_nanmean0(patched) - _masked_mean(logp_b, have)) / (_masked_mean(logp_a, have)
                                                                         - _masked_mean(logp_b, have))
    recovered = _nanmean0(rec_pair)
    tokens_b = np.full((n, P), -1, dtype=np.int64)
    for i, p in enumerate(pairs):
        tokens_b[i, P - len(p.b):] = p.b
    pair_dim, grid = ("pair",), ("pair", "layer", "pos")
    data = {
        "logp_patched": (grid, patched, {"description": "log p(answer) of run B with resid[layer, pos] from run A"}),
        "recovered_pair": (grid, rec_pair, {"description": "(logp_patched - logp_b) / (logp_a - logp_b) per pair"}),
        "recovered": (grid[1:], recovered, {"description": "recovered_pair averaged over pairs"}),
        "recovered_pooled": (grid[1:], pooled, {"description": "(mean logp_patched - mean logp_b) / "
                                                               "(mean logp_a - mean logp_b) over pairs"}),
        "logp_a": (pair_dim, logp_a, {"description": "log p(answer) of run A (with the ablation, if any)"}),
        "logp_a_clean": (pair_dim, logp_a_clean, {"description": "log p(answer) of run A without ablation"}),
        "logp_b": (pair_dim, logp_b, {"description": "log p(answer) of run B"}),
        "n_answer": (pair_dim, np.array([len(a) for a in answers]), {}),
        "len_a": (pair_dim, np.array([len(p.a) for p in pairs]), {}),
        "len_b": (pair_dim, np.array([len(p.b) for p in pairs]), {}),
        "prefix": (pair_dim, np.array([p.prefix for p in pairs]), {"description": "leading B tokens aligned with "
                                                                                 "A's first tokens (e.g. a BOS)"}),
        "token_b": (("pair", "pos"), tokens_b, {"description": "B prompt token ids, aligned from the end (-1: none)"}),
    }
    coords = {"pair": np.arange(n), "layer": np.array(layers), "pos": np.arange(-P, 0)}
    return xr.Dataset(data, coords=coords, attrs={
        "ablation": (ablation or Ablation()).label, "ablation_spec": _json((ablation or Ablation()).to_dict()),
        "alignment": "end: B's last prompt token <-> A's last prompt token (pos -1); a pair's prefix "
                     "(e.g. BOS) <-> A's first tokens",
        "metric": "recovered = (logp_patched - logp_b) / (logp_a - logp_b); logp = summed answer log-prob",
        "min_gap": min_gap})


def ablate(adapter, pairs: Sequence[TokenPair], ablation: Ablation, *, batch_size: int = 32,
           on_progress: Progress | None = None):
    """log p(answer) of every pair's A run with and without ``ablation``, and of its B run
    (a Dataset over ``pair``: ``logp_a_clean``, ``logp_a``, ``delta = logp_a - logp_a_clean``, ``logp_b``)."""
    import xarray as xr

    hooked = hooked_model(adapter)
    a, b, ans = [p.a for p in pairs], [p.b for p in pairs], [p.answer for p in pairs]
    clean = answer_logprobs(hooked, a, ans, batch_size=batch_size)
    abl = answer_logprobs(hooked, a, ans, ablation=ablation, batch_size=batch_size, on_progress=on_progress)
    lb = answer_logprobs(hooked, b, ans, batch_size=batch_size)
    return xr.Dataset({"logp_a_clean": ("pair", clean), "logp_a": ("pair", abl), "delta": ("pair", abl - clean),
                       "logp_b": ("pair", lb)}, coords={"pair": np.arange(len(pairs))},
                      attrs={"ablation": ablation.label, "ablation_spec": _json(ablation.to_dict())})


def _masked_mean(v: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Mean of per-pair ``v`` over the pairs that have each (layer, pos)."""
    w = have.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * v[:, None, None]).sum(0) / w.sum(0)


def _nanmean0(a: np.ndarray) -> np.ndarray:
    finite = np.isfinite(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, a, 0).sum(0) / finite.sum(0)


def _json(obj) -> str:
    import json

    return json.dumps(obj)
