"""Attention heads as circuits: pattern scores, OV copying and QK prefix-matching eigen-scores.

Heads are named ``L.H`` with ``L`` the block index from 0, as in TransformerLens (``1.4`` is
head 4 of the second block; probekit's store numbers the same block 2 in ``attn_pattern``).

**Pattern scores** (Olsson et al. 2022; TransformerLens / ARENA) on repeated random tokens
``[BOS, t_1..t_R, t_1..t_R]``: with ``A[q, k]`` a head's attention pattern, averaged over every
query ``q`` in the second (and later) copies and over sequences,

* ``prev_token``: ``A[q, q - 1]``;
* ``duplicate``: ``A[q, q - R]`` (the same token, one copy back);
* ``induction``: ``A[q, q - R + 1]`` (the token after the previous occurrence: prefix matching).

**Weight scores** (Elhage et al. 2021) from the head's matrices, with biases ignored and each
LayerNorm folded into the weights that read it (its scale ``gamma`` and its centring
``P = I - 11^T/d``; the division by the norm is a positive scalar and is dropped):

Logits matter only up to a constant per position (the softmax ignores it), so ``W_U`` is
centred over the vocabulary (TransformerLens's ``center_unembed``); that makes the scores the
same whether or not a model's weights were processed that way.

* ``ov_copying``: the OV circuit ``W_E W_V W_O W_U`` (vocab x vocab) has the same nonzero
  eigenvalues as ``W_O W_U W_E W_V`` (d_head x d_head), which is what is diagonalised;
  score = ``sum(lambda) / sum(|lambda|)`` in [-1, 1], +1 for a pure copying head;
* ``qk_prefix``: the K-composition of a head's QK circuit with a previous-token head ``p`` of
  the block before, ``W_E W_Q W_K^T (W_E W_V^p W_O^p)^T``: large where the query's token
  equals the token *before* the key, i.e. prefix matching; the same eigen-score, computed
  from its d_head x d_head form. Undefined (NaN) for block 0.

Weight scores need the model's matrices: probekit's toy transformers (token inputs),
GPT-2-family ``hf:`` models and ``tlens:`` models (``qk_prefix`` only with absolute positions:
rotary or ALiBi attention makes QK depend on the distance). Pattern scores work for any adapter
with an ``attn_pattern`` site. Behaviour (ICL score, ablation, training dynamics) is in :mod:`probekit.lenses.heads.dynamics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit.errors import DataError, UsageError

PATTERN_SCORES = ("prev_token", "duplicate", "induction")
WEIGHT_SCORES = ("ov_copying", "qk_prefix")


# ----------------------------------------------------------------------------- inputs
def repeated_tokens(n: int, segment: int, vocab: int, *, repeats: int = 2, bos_id: int | None = None,
                    low: int = 0, allowed: np.ndarray | None = None, rng=None, seed: int = 0) -> np.ndarray:
    """``[BOS] + [t_1..t_R] * repeats`` as int64 ``[n, (BOS) + R * repeats]``, t_i uniform over
    ``allowed`` token ids (default ``low .. vocab - 1``)."""
    if segment < 1 or repeats < 1 or n < 1:
        raise UsageError(f"repeated tokens need n, segment and repeats >= 1, got {n}, {segment}, {repeats}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    pool = np.arange(low, vocab) if allowed is None else np.asarray(allowed, dtype=np.int64)
    if len(pool) < 1:
        raise UsageError("no token ids to draw repeated tokens from")
    seg = pool[rng.integers(0, len(pool), (n, segment))]
    body = np.tile(seg, (1, repeats))
    if bos_id is None:
        return body.astype(np.int64)
    return np.concatenate([np.full((n, 1), bos_id, dtype=np.int64), body], 1).astype(np.int64)


# ----------------------------------------------------------------------------- pattern scores
def pattern_score_sums(pattern: np.ndarray, segment: int, prefix: int) -> tuple[dict[str, np.ndarray], int]:
    """Sums over sequences and second-copy queries of each pattern score, ``[layer, head]``, and
    how many (sequence, query) pairs they sum.

    ``pattern``: ``[batch, layer, head, query, key]`` on ``prefix`` tokens (1 for a BOS, else 0)
    followed by copies of a segment of ``segment`` tokens."""
    pattern = np.asarray(pattern)
    if pattern.ndim != 5 or pattern.shape[-1] != pattern.shape[-2]:
        raise DataError(f"attention patterns must be [batch, layer, head, query, key], got {pattern.shape}")
    T, R = pattern.shape[-1], segment
    q = np.arange(prefix + R, T)  # every query in the second and later copies
    if len(q) == 0:
        raise DataError(f"{T} positions hold no second copy of a {R}-token segment after {prefix} prefix tokens")
    offsets = {"prev_token": 1, "duplicate": R, "induction": R - 1}
    sums = {name: pattern[..., q, q - off].sum(axis=(0, -1), dtype=np.float64) for name, off in offsets.items()}
    return sums, pattern.shape[0] * len(q)


def pattern_scores(pattern: np.ndarray, segment: int, prefix: int = 1) -> dict[str, np.ndarray]:
    """Each score of :data:`PATTERN_SCORES` as ``[layer, head]``: the mean attention from
    second-copy queries to the previous token / the duplicate / the token after the duplicate."""
    sums, count = pattern_score_sums(pattern, segment, prefix)
    return {k: v / count for k, v in sums.items()}


# ----------------------------------------------------------------------------- weights
@dataclass
class HeadWeights:
    """A model's matrices in row-vector convention (``x @ W``), LayerNorms folded in.

    ``W_E [vocab, d]``, ``W_U [d, vocab]``; per block and head ``W_Q, W_K, W_V [L, H, d, d_head]``
    and ``W_O [L, H, d_head, d]``."""

    W_E: np.ndarray
    W_U: np.ndarray
    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    source: str = ""
    qk_meaningful: bool = True  # False where positions enter QK (rotary, ALiBi): no prefix-matching score

    def __post_init__(self):
        self.W_U = self.W_U - self.W_U.mean(1, keepdims=True)  # logits up to a constant per position

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy()


def layernorm_fold(ln, d: int) -> np.ndarray:
    """The linear part of a LayerNorm as a ``[d, d]`` matrix: centring then scale (``P diag(gamma)``);
    the identity for anything that is not a LayerNorm (an ``nn.Identity``: no norm)."""
    from torch import nn

    if isinstance(ln, nn.LayerNorm):
        gamma = _np(ln.weight) if ln.weight is not None else np.ones(d)
        return (np.eye(d) - 1.0 / d) * gamma[None, :]
    if isinstance(ln, nn.Identity) or ln is None:
        return np.eye(d)
    name = type(ln).__name__
    centre = np.eye(d) - 1.0 / d
    if name == "LayerNorm" and hasattr(ln, "w"):  # TransformerLens
        return centre * _np(ln.w)[None, :]
    if name == "LayerNormPre":  # TransformerLens after fold_ln: centre and scale only
        return centre
    if name == "RMSNorm" and hasattr(ln, "w"):
        return np.diag(_np(ln.w))
    if name == "RMSNormPre":
        return np.eye(d)
    if name.endswith("LayerNorm") and hasattr(ln, "weight"):  # e.g. transformers' own
        return centre * _np(ln.weight)[None, :]
    raise UsageError(f"cannot fold a {type(ln).__name__} into the weights (LayerNorm or none only)")


def _split_heads(W: np.ndarray, H: int) -> np.ndarray:
    """``[d, H * dh]`` -> ``[H, d, dh]``."""
    d, hd = W.shape
    return W.reshape(d, H, hd // H).transpose(1, 0, 2)


def toy_weights(model) -> HeadWeights:
    """The matrices of a probekit :class:`~probekit.models.toy.model.ToyTransformer` with token inputs."""
    cfg = model.cfg
    if cfg.arch != "transformer" or cfg.input_kind != "tokens":
        raise UsageError("weight scores need a toy transformer with token inputs (an embedding and an unembedding)")
    d, H = cfg.d_model, cfg.n_heads
    Q, K, V, O = [], [], [], []
    for block in model.blocks:
        fold = layernorm_fold(block.ln1, d)
        w = _np(block.attn.W_qkv.weight).T  # [d, 3d]: q, k, v, each heads-major
        Q.append(_split_heads(fold @ w[:, :d], H))
        K.append(_split_heads(fold @ w[:, d: 2 * d], H))
        V.append(_split_heads(fold @ w[:, 2 * d:], H))
        O.append(_np(block.attn.W_o.weight).T.reshape(H, d // H, d))  # rows of W_o^T are head-major
    W_U = layernorm_fold(model.ln_f, d) @ _np(model.unembed.weight).T
    return HeadWeights(_np(model.embed.weight), W_U, np.stack(Q), np.stack(K), np.stack(V), np.stack(O), "toy")


def gpt2_weights(model) -> HeadWeights:
    """The matrices of a transformers GPT-2 model (``GPT2LMHeadModel``; Conv1D weights are ``x @ W``),
    its modules found through the ``gpt2`` entry of :data:`probekit.models.anatomy.FAMILIES`."""
    from probekit.models.anatomy import FAMILIES

    names = FAMILIES["gpt2"]
    wte = model.get_submodule(names["embed"])
    d = wte.weight.shape[1]
    H = model.config.n_head
    Q, K, V, O = [], [], [], []
    for block in model.get_submodule(names["blocks"]):
        fold = layernorm_fold(block.get_submodule(names["ln1"]), d)
        w = _np(block.get_submodule(names["qkv"]).weight)  # [d, 3d]
        Q.append(_split_heads(fold @ w[:, :d], H))
        K.append(_split_heads(fold @ w[:, d: 2 * d], H))
        V.append(_split_heads(fold @ w[:, 2 * d:], H))
        O.append(_np(block.get_submodule(names["out_proj"]).weight).reshape(H, d // H, d))
    W_U = layernorm_fold(model.get_submodule(names["ln_final"]), d) @ _np(model.get_output_embeddings().weight).T
    return HeadWeights(_np(wte.weight), W_U, np.stack(Q), np.stack(K), np.stack(V), np.stack(O), "gpt2")


def tlens_weights(model) -> HeadWeights:
    """The matrices of a TransformerLens ``HookedTransformer`` (its own ``W_Q`` ... ``W_U``, in the
    same row-vector convention), with whatever norm is left after its weight processing folded."""
    cfg = model.cfg
    d = cfg.d_model
    Q, K, V, O = [], [], [], []
    for layer, block in enumerate(model.blocks):
        fold = layernorm_fold(getattr(block, "ln1", None), d)
        Q.append(np.einsum("de,hef->hdf", fold, _np(model.W_Q[layer])))
        K.append(np.einsum("de,hef->hdf", fold, _np(model.W_K[layer])))
        V.append(np.einsum("de,hef->hdf", fold, _np(model.W_V[layer])))
        O.append(_np(model.W_O[layer]))
    W_U = layernorm_fold(getattr(model, "ln_final", None), d) @ _np(model.W_U)
    absolute = getattr(cfg, "positional_embedding_type", "standard") in ("standard", "shortformer")
    return HeadWeights(_np(model.W_E), W_U, np.stack(Q), np.stack(K), np.stack(V), np.stack(O), "tlens",
                       qk_meaningful=absolute)


#: the matrix reader for each ``Anatomy.weights`` an adapter can declare
READERS = {"toy": toy_weights, "gpt2": gpt2_weights, "tlens": tlens_weights}


def head_weights(adapter) -> tuple[HeadWeights | None, str]:
    """The adapter's model matrices and where they came from, or ``(None, why not)``."""
    from probekit.models.anatomy import anatomy_of
    from probekit.models.capabilities import has

    if not has(adapter, "weights"):
        try:
            note = anatomy_of(adapter).weights_note
        except UsageError:
            note = ""
        return None, note or f"weight scores (OV, QK) need a model that declares readable weights; {adapter.spec} does not"
    anatomy = anatomy_of(adapter)
    return READERS[anatomy.weights](anatomy.model), anatomy.weights


# ----------------------------------------------------------------------------- eigen-scores
def eigen_score(eigenvalues: np.ndarray) -> float:
    """``sum(lambda) / sum(|lambda|)``: +1 when every eigenvalue is positive real, -1 when all negative."""
    lam = np.asarray(eigenvalues)
    total = float(np.abs(lam).sum())
    return float(np.real(lam.sum()) / total) if total > 0 else float("nan")


def ov_eigenvalues(W: HeadWeights, layer: int, head: int) -> np.ndarray:
    """Eigenvalues of the OV circuit ``W_E W_V W_O W_U`` via its d_head x d_head form
    ``W_O W_U W_E W_V`` (the same nonzero eigenvalues), largest magnitude first."""
    small = W.W_O[layer, head] @ (W.W_U @ (W.W_E @ W.W_V[layer, head]))
    return _sorted(np.linalg.eigvals(small))


def ov_full(W: HeadWeights, layer: int, head: int) -> np.ndarray:
    """The vocab x vocab OV circuit itself (for checks and small vocabularies)."""
    return W.W_E @ W.W_V[layer, head] @ W.W_O[layer, head] @ W.W_U


def qk_prefix_eigenvalues(W: HeadWeights, layer: int, head: int, prev_head: int) -> np.ndarray:
    """Eigenvalues of ``W_E W_Q W_K^T (W_E W_V^p W_O^p)^T`` with ``p`` = head ``prev_head`` of block
    ``layer - 1``, via the d_head form ``B^T A`` of ``A B^T`` (``A = W_E W_Q``,
    ``B = W_E W_V^p W_O^p W_K``)."""
    if layer < 1:
        raise UsageError("K-composition needs a block before the head's own (layer >= 1)")
    A = W.W_E @ W.W_Q[layer, head]  # [vocab, dh]: what the query token asks for
    B = ((W.W_E @ W.W_V[layer - 1, prev_head]) @ W.W_O[layer - 1, prev_head]) @ W.W_K[layer, head]
    return _sorted(np.linalg.eigvals(B.T @ A))


def qk_prefix_full(W: HeadWeights, layer: int, head: int, prev_head: int) -> np.ndarray:
    """The vocab x vocab prefix-matching matrix (for checks and small vocabularies)."""
    prev = W.W_E @ W.W_V[layer - 1, prev_head] @ W.W_O[layer - 1, prev_head]
    return W.W_E @ W.W_Q[layer, head] @ W.W_K[layer, head].T @ prev.T


def _sorted(lam: np.ndarray) -> np.ndarray:
    return lam[np.argsort(-np.abs(lam), kind="stable")]


def weight_scores(W: HeadWeights, prev_heads: list[int | None] | None = None) -> dict[str, np.ndarray]:
    """``ov_copying`` and ``qk_prefix`` ``[layer, head]`` and the eigenvalues behind them
    (``ov_eigenvalues``, ``qk_eigenvalues``: ``[layer, head, d_head]`` complex, NaN where undefined).

    ``prev_heads[l]``: the previous-token head of block ``l - 1`` that heads of block ``l``
    K-compose with (default: each block-(l-1) head in turn, keeping the largest score)."""
    L, H, dh = W.n_layers, W.n_heads, W.W_V.shape[-1]
    ov = np.full((L, H), np.nan)
    qk = np.full((L, H), np.nan)
    ov_lam = np.full((L, H, dh), np.nan, dtype=complex)
    qk_lam = np.full((L, H, dh), np.nan, dtype=complex)
    for layer in range(L):
        for head in range(H):
            ov_lam[layer, head] = ov_eigenvalues(W, layer, head)
            ov[layer, head] = eigen_score(ov_lam[layer, head])
            if layer == 0 or not W.qk_meaningful:
                continue
            choices = [prev_heads[layer]] if prev_heads and prev_heads[layer] is not None else range(H)
            best = max(choices, key=lambda p: eigen_score(qk_prefix_eigenvalues(W, layer, head, p)))
            qk_lam[layer, head] = qk_prefix_eigenvalues(W, layer, head, best)
            qk[layer, head] = eigen_score(qk_lam[layer, head])
    return {"ov_copying": ov, "qk_prefix": qk, "ov_eigenvalues": ov_lam, "qk_eigenvalues": qk_lam}
