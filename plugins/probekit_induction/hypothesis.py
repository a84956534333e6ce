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
Options: ``directions`` (``auto``: whatever the store allows; ``none``; or a comma list of
``embed``, ``unembed``), ``fit_samples`` (samples the directions are estimated from, 2000).
"""

from __future__ import annotations

import numpy as np

from probekit import DataError, Hypothesis, Target, UsageError

DIRECTIONS = ("embed", "unembed")
MAX_FIT_ROWS = 50_000  # rows of the unembedding regression


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

    def __init__(self, directions: str = "auto", fit_samples: int = 2000):
        super().__init__(directions=directions, fit_samples=fit_samples)
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
        out = [
            Target("prev_token", prev, later, "the previous token t_{q-1} (class)", kind="categorical",
                   expected_layer=1, control_types=tokens),
            Target("duplicate", has.astype(np.int64), later, "1 if t_q occurred earlier in the sequence",
                   kind="categorical", expected_layer=1, control_types=tokens),
            Target("induction_next", nxt, has, "the token after the previous occurrence of t_q (to copy)",
                   kind="categorical", expected_layer=2, control_types=tokens),
        ]
        for kind in self._directions(ds):
            table, known = (self._embed_table if kind == "embed" else self._unembed_table)(ds, tokens, valid)
            for name, labels, mask, layer in (("prev_token", prev, later, 1), ("induction_next", nxt, has, 2)):
                ok = mask & known[np.clip(labels, 0, len(known) - 1)] & (labels < len(known))
                if not ok.any():
                    continue
                values = np.zeros((n, T, table.shape[1]))
                values[ok] = table[labels[ok]]
                what = "embedding" if kind == "embed" else "unembedding"
                out.append(Target(f"{name}_{kind}", values, ok, f"{what} direction of {name} (estimated from the "
                                  "store)", expected_layer=layer))
        return out

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
        """Token -> mean layer-0 residual (position means removed) over the fitting samples."""
        m = min(self.fit_samples, len(tokens))
        x = np.asarray(self._last(ds["resid"]).isel(sample=slice(0, m)).sel(layer=0).values, dtype=np.float64)
        v = valid[:m]
        pos_mean = (x * v[..., None]).sum(0) / np.maximum(v.sum(0), 1)[:, None]
        x = (x - pos_mean)[v]
        return _class_means(x, tokens[:m][v])

    def _unembed_table(self, ds, tokens, valid):
        """Token -> column of the least-squares map from the (normalised) last residual to the logits."""
        m = min(self.fit_samples, len(tokens))
        resid = self._last(ds["resid"])
        h = np.asarray(resid.isel(sample=slice(0, m), layer=-1).values, dtype=np.float64)[valid[:m]]
        logits = self._last(ds["model_out"]).isel(sample=slice(0, m)).values[valid[:m]]
        if len(h) > MAX_FIT_ROWS:
            pick = np.random.default_rng(0).choice(len(h), MAX_FIT_ROWS, replace=False)
            h, logits = h[pick], logits[pick]
        if (ds.attrs.get("model_config") or {}).get("layernorm", True):
            h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-5)
        used = np.unique(tokens[valid])
        used = used[used < logits.shape[1]]
        X = np.concatenate([h, np.ones((len(h), 1))], 1)
        coef = np.linalg.lstsq(X, np.asarray(logits[:, used], dtype=np.float64), rcond=None)[0][:-1]  # [d, k]
        V = int(tokens.max()) + 1
        table, known = np.zeros((V, h.shape[1])), np.zeros(V, bool)
        table[used], known[used] = coef.T, True
        return table, known


def _class_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    V = int(labels.max()) + 1 if len(labels) else 1
    counts = np.bincount(labels, minlength=V)
    sums = np.zeros((V, x.shape[1]))
    np.add.at(sums, labels, x)
    known = counts > 0
    sums[known] /= counts[known, None]
    return sums, known
