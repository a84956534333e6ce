"""Hypothesis ``induction``: the model copies the token that followed the previous occurrence.

Per position q of a token store (``tokens``; any task, or ``probekit cache --text`` prompts):

* ``prev_token``     the token at q - 1 (class index) -- a previous-token head writes it;
  expected after block 1 (``resid`` layer 1);
* ``duplicate``      1 if the token at q occurred before in the sequence, else 0; layer 1;
* ``induction_next`` the token after the most recent previous occurrence of the token at q
  (what an induction head copies), defined only where there is a previous occurrence;
  expected after block 2 (``resid`` layer 2).

The three are categorical (logistic probes), each with the token at q as its control-task
type, so selectivity says how much of the accuracy needs more than the current token's
identity. As continuous targets for ridge (option ``directions``):

* ``<target>_embed``: the token's embedding direction, estimated from the store's own
  ``resid`` layer 0 (embeddings + positions): the mean over the token's occurrences after
  subtracting each position's mean;
* ``<target>_unembed``: the token's unembedding direction: the store's logits
  (``model_out``) regressed on the last ``resid`` layer (layer-normalised when the model
  has a final LayerNorm), column by column.

Both read only the store (the model's last checkpoint in a checkpoint store). Tokens whose
direction cannot be estimated (unseen in the fitting samples) leave the position undefined.

A large vocabulary (an LLM's tens of thousands of tokens): a categorical probe has one class per
token that occurs, and on text or random tokens most of them occur once or twice -- the logistic
probes then take tens of minutes and cannot generalise to a held-out sample's unseen tokens. So
with ``categorical=auto`` (the default) ``prev_token`` and ``induction_next`` are categorical only
when every token id is below :data:`LARGE_VOCAB`; above it only ``duplicate`` (two classes) stays
categorical and the two token targets are probed through their directions (``*_unembed``,
``*_embed``: one ridge regression per layer, whatever the vocabulary). ``categorical=all`` keeps
them categorical anyway, over their ``max_classes`` most frequent classes (the positions whose
class is rarer are left undefined, and the target's description says so).

Options: ``directions`` (``auto``: whatever the store allows; ``none``; or a comma list of
``embed``, ``unembed``), ``fit_samples`` (samples the directions are estimated from, 2000),
``categorical`` (``auto``, ``all`` or ``binary``: only ``duplicate``), ``max_classes`` (512).
"""

from __future__ import annotations

import numpy as np

from probekit import DataError, Hypothesis, Target, UsageError

DIRECTIONS = ("embed", "unembed")
CATEGORICAL = ("auto", "all", "binary")
MAX_FIT_ROWS = 50_000  # rows of the unembedding regression
LARGE_VOCAB = 4096  # token ids from here on: an LLM's vocabulary (categorical=auto drops the token classes)


def previous_occurrence(tokens: np.ndarray) -> np.ndarray:
    """For each ``(sample, q)`` the largest ``j < q`` with ``tokens[j] == tokens[q]``, or -1."""
    tokens = np.asarray(tokens)
    n, T = tokens.shape
    out = np.full((n, T), -1, dtype=np.int64)
    for q in range(1, T):
        eq = tokens[:, :q] == tokens[:, q : q + 1]
        has = eq.any(1)
        last = q - 1 - np.argmax(eq[:, ::-1], axis=1)
        out[has, q] = last[has]
    return out


class InductionHypothesis(Hypothesis):
    name = "induction"
    description = "induction-head copying: previous token, duplicate flag, token after the previous occurrence"
    requires = ("tokens",)

    def __init__(self, directions: str = "auto", fit_samples: int = 2000, categorical: str = "auto",
                 max_classes: int = 512):
        super().__init__(directions=directions, fit_samples=fit_samples, categorical=categorical,
                         max_classes=max_classes)
        if categorical not in CATEGORICAL:
            raise UsageError(f"unknown categorical {categorical!r}; choose from: {', '.join(CATEGORICAL)}")
        if not isinstance(max_classes, int) or isinstance(max_classes, bool) or max_classes < 2:
            raise UsageError(f"max_classes must be an integer >= 2, got {max_classes!r}")
        self.categorical, self.max_classes = categorical, max_classes
        if isinstance(directions, (list, tuple)):
            directions = ",".join(map(str, directions))
        wanted = [d.strip() for d in str(directions).split(",") if d.strip()]
        if wanted not in (["auto"], ["none"]):
            for d in wanted:
                if d not in DIRECTIONS:
                    raise UsageError(f"unknown direction {d!r}; choose from: auto, none, {', '.join(DIRECTIONS)}")
        self.directions = wanted
        if not isinstance(fit_samples, int) or fit_samples < 1:
            raise UsageError(f"fit_samples must be a positive integer, got {fit_samples!r}")
        self.fit_samples = fit_samples

    def compute(self, ds):
        tokens = np.asarray(ds["tokens"].values).astype(np.int64)
        n, T = tokens.shape
        valid = np.asarray(ds["valid"].values, dtype=bool) if "valid" in ds else np.ones((n, T), bool)
        later = valid.copy()
        later[:, 0] = False
        prev = np.zeros_like(tokens)
        prev[:, 1:] = tokens[:, :-1]
        occ = previous_occurrence(tokens)
        has = (occ >= 0) & valid
        nxt = np.zeros_like(tokens)
        rows, cols = np.nonzero(has)
        nxt[rows, cols] = tokens[rows, occ[rows, cols] + 1]
        if not has.any():
            raise DataError("no token in this store repeats an earlier one: induction_next is defined nowhere")
        token_targets = (("prev_token", prev, later, 1, "the previous token t_{q-1} (class)"),
                         ("induction_next", nxt, has, 2, "the token after the previous occurrence of t_q (to copy)"))
        out = [Target("duplicate", has.astype(np.int64), later, "1 if t_q occurred earlier in the sequence",
                      kind="categorical", expected_layer=1, control_types=tokens)]
        if self._token_classes(tokens[valid]):  # prev_token, duplicate, induction_next
            out = [self._token_target(*token_targets[0], tokens), out[0], self._token_target(*token_targets[1], tokens)]
        for kind in self._directions(ds):
            ids, table = (self._embed_table if kind == "embed" else self._unembed_table)(ds, tokens, valid)
            for name, labels, mask, layer, _ in token_targets:
                row = np.clip(np.searchsorted(ids, labels), 0, len(ids) - 1)
                ok = mask & (ids[row] == labels)
                if not ok.any():
                    continue
                values = np.zeros((n, T, table.shape[1]))
                values[ok] = table[row[ok]]
                what = "embedding" if kind == "embed" else "unembedding"
                out.append(Target(f"{name}_{kind}", values, ok, f"{what} direction of {name} (estimated from the "
                                  "store)", expected_layer=layer))
        return out

    # -- categorical token targets on a large vocabulary -----------------------------------------
    def _token_classes(self, tokens: np.ndarray) -> bool:
        """Whether ``prev_token`` and ``induction_next`` are categorical targets (see the module doc)."""
        if self.categorical == "auto":
            return not tokens.size or int(tokens.max()) < LARGE_VOCAB
        return self.categorical == "all"

    def _token_target(self, name, labels, mask, layer, what, tokens) -> Target:
        mask, note = self._frequent(labels, mask)
        return Target(name, labels, mask, what + note, kind="categorical", expected_layer=layer, control_types=tokens)

    def _frequent(self, labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, str]:
        """``mask`` restricted to the ``max_classes`` most frequent labels (ties: the smaller id)."""
        classes, counts = np.unique(labels[mask], return_counts=True)
        if len(classes) <= self.max_classes:
            return mask, ""
        keep = classes[np.lexsort((classes, -counts))[: self.max_classes]]
        return mask & np.isin(labels, keep), (f"; only its {self.max_classes} most frequent of "
                                              f"{len(classes)} classes (max_classes)")

    # -- token directions, estimated from the store ----------------------------------------------
    def _directions(self, ds) -> list[str]:
        can = {"embed": "resid" in ds, "unembed": "resid" in ds and "model_out" in ds}
        if self.directions == ["none"]:
            return []
        if self.directions == ["auto"]:
            return [d for d in DIRECTIONS if can[d]]
        for d in self.directions:
            if not can[d]:
                need = "resid" if d == "embed" else "resid and model_out (cache with --logits keep)"
                raise DataError(f"direction {d!r} needs the store to hold {need}")
        return self.directions

    @staticmethod
    def _last(da):
        return da.isel(checkpoint=-1) if "checkpoint" in da.dims else da

    def _embed_table(self, ds, tokens, valid):
        """``(token ids, their mean layer-0 residual [k, d])`` (position means removed) over the fitting samples."""
        m = min(self.fit_samples, len(tokens))
        x = np.asarray(self._last(ds["resid"]).isel(sample=slice(0, m)).sel(layer=0).values, dtype=np.float64)
        v = valid[:m]
        pos_mean = (x * v[..., None]).sum(0) / np.maximum(v.sum(0), 1)[:, None]
        x = (x - pos_mean)[v]
        return _class_means(x, tokens[:m][v])

    def _unembed_table(self, ds, tokens, valid):
        """``(token ids, their columns [k, d] of the least-squares map from the (normalised) last
        residual to the logits)``, for the tokens of the store only (never the whole vocabulary)."""
        m = min(self.fit_samples, len(tokens))
        out = self._last(ds["model_out"])
        used = np.unique(tokens[valid])
        used = used[used < out.sizes[out.dims[-1]]]
        resid = self._last(ds["resid"])
        h = np.asarray(resid.isel(sample=slice(0, m), layer=-1).values, dtype=np.float64)[valid[:m]]
        logits = np.asarray(out.isel(sample=slice(0, m), **{out.dims[-1]: used}).values)[valid[:m]]
        if len(h) > MAX_FIT_ROWS:
            pick = np.random.default_rng(0).choice(len(h), MAX_FIT_ROWS, replace=False)
            h, logits = h[pick], logits[pick]
        if (ds.attrs.get("model_config") or {}).get("layernorm", True):
            h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
        X = np.concatenate([h, np.ones((len(h), 1))], 1)
        coef = np.linalg.lstsq(X, np.asarray(logits, dtype=np.float64), rcond=None)[0][:-1]  # [d, k]
        return used, coef.T


def _class_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(the labels that occur, the mean of x over each)``."""
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, inverse.reshape(-1), x)
    return ids, sums / np.bincount(inverse.reshape(-1), minlength=len(ids))[:, None]
