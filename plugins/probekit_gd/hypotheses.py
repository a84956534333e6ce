"""Hypotheses ``gd``, ``gdpp`` and ``pgd``: the transformer runs K steps of gradient descent in context.

Step k of the algorithm lines up with layer k of the model ("step k <-> layer k" is
recorded as each target's ``expected_layer``). Targets (for k = 1..K):

* ``<h>_pred_k``      the algorithm's query prediction after k steps (``W_k x_q`` for GD), at the query;
* ``<h>_residual_k``  the y-slot residuals r_i^(k) = y_i - W_k x_i at the context tokens;
* ``gd_weights_k`` / ``pgd_weights_k``  the weight estimate W_k, read at the query
  (``pgd_weights_1`` is the preconditioned gradient A (1/N) sum_i y_i x_i);
* ``gdpp_x_k``        GD++'s transformed inputs (I - gamma sum x x^T) x_j at every token;
* ``ls_pred``         exact least squares at the query: what a converged learner predicts.

Hyperparameters (per-step eta, GD++'s gamma, PGD's preconditioner A) are fitted to
the *task* by default — to the store's own regression tasks, never to the model's
activations or outputs — by L-BFGS on the K-step loss; pass ``eta=...`` to fix GD's.
Options: ``steps`` (default: the cached model's number of layers), ``tied`` (one eta
and gamma for all steps; default: whether the model shares its layers' weights),
``eta``, ``fit_samples`` and ``lam`` (of ``ls_pred``). ``fit(ds)`` fits on every task in ``ds``
(``probekit compare --fit-samples N`` hands it N tasks); ``fit_samples`` caps that only when given,
and caps at 10,000 by default the store's tasks that ``compute`` fits on when nothing was fitted.
``predict`` runs the fitted algorithm on model-input tokens (differentiably), giving
what the GD transformer would output at every position, for ``probekit compare``.
"""

from __future__ import annotations

import numpy as np

from probekit import DataError, Hypothesis, Target, UsageError

from probekit_gd import algorithms

OPTIONS = ("steps", "tied", "eta", "fit_samples", "lam")
DEFAULT_FIT_SAMPLES = 10_000  # of a store's tasks, when compute() fits


class _GDFamily(Hypothesis):
    requires = ("x", "y", "is_query")
    kind = "gd"  # the algorithms.fit_steps kind

    def __init__(self, **options):
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise UsageError(f"hypothesis {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"choose from: {', '.join(OPTIONS)}")
        if "eta" in options and self.kind != "gd":
            raise UsageError(f"eta can only be fixed for gd; {self.name} fits its hyperparameters jointly")
        super().__init__(**options)
        self.hparams: dict | None = None

    # -- the task's data ---------------------------------------------------------------------------
    def _steps(self, attrs: dict) -> int:
        steps = self.options.get("steps")
        if steps is None:  # default: as many steps as the cached model has layers
            steps = (attrs.get("model_config") or {}).get("n_layers", 1)
        steps = int(steps)
        if steps < 1:
            raise UsageError(f"steps must be >= 1, got {steps}")
        return steps

    def _tied(self, attrs: dict) -> bool:
        tied = self.options.get("tied")
        if tied is None:  # default: tie the steps when the cached model shares its layers' weights
            tied = bool((attrs.get("model_config") or {}).get("shared", False))
        if not isinstance(tied, bool):
            raise UsageError(f"tied must be true or false, got {tied!r}")
        return tied

    @staticmethod
    def _arrays(ds):
        import torch

        query = np.asarray(ds["is_query"].values, dtype=bool)
        if not query[:, -1].all() or query[:, :-1].any():
            raise DataError("the gd hypotheses need regression prompts whose last position is the query "
                            "(tasks linreg, linreg-ahn)")
        x = torch.as_tensor(np.asarray(ds["x"].values, dtype=np.float64))
        y = np.asarray(ds["y"].values, dtype=np.float64)[..., 0]
        return x, torch.as_tensor(y[:, :-1]), torch.as_tensor(y[:, -1])

    def fit(self, ds) -> "_GDFamily":
        """Fit the algorithm's hyperparameters to the regression tasks in ``ds`` (not to a model): to
        all of them, or to the first ``fit_samples`` when that option is given."""
        self.check(ds)
        n = self.options.get("fit_samples")
        x, y, y_q = self._arrays(ds if n is None else ds.isel(sample=slice(0, int(n))))
        steps = self._steps(ds.attrs)
        if self.kind == "gd" and "eta" in self.options:
            eta = self.options["eta"]
            etas = [float(e) for e in (eta if isinstance(eta, list) else [eta] * steps)]
            if len(etas) != steps:
                raise UsageError(f"eta lists {len(etas)} steps, steps is {steps}")
            self.hparams = {"etas": etas}
        else:
            self.hparams = algorithms.fit_steps(x, y, y_q, steps, kind=self.kind, tied=self._tied(ds.attrs))
        self._shape = {"steps": steps, "tied": self._tied(ds.attrs)}
        traj = self._run(x, y)
        self.hparams["fit_loss"] = algorithms.half_mse(traj.pred[-1], y_q)
        return self

    def _run(self, x, y) -> algorithms.Trajectory:
        import torch

        h = self.hparams
        etas = torch.as_tensor(h["etas"], dtype=x.dtype)
        gammas = torch.as_tensor(h["gammas"], dtype=x.dtype) if "gammas" in h else None
        precond = torch.as_tensor(h["precond"], dtype=x.dtype) if "precond" in h else None
        return algorithms.run_steps(x, y, etas, gammas=gammas, precond=precond)

    def predict(self, inputs):
        """The fitted algorithm on model-input tokens ``[b, N+1, d+1]``: minus every token's y-slot
        after K steps (context: -r_i; query: the prediction), as ``[b, N+1, 1]``; differentiable."""
        import torch

        if self.hparams is None:
            raise DataError(f"hypothesis {self.name!r}: call fit() on task data before predict()")
        x, y = algorithms.split_tokens(inputs)
        traj = self._run(x, y)
        return torch.cat([-traj.residual[-1], traj.pred[-1][:, None]], 1)[..., None]

    def compute(self, ds):
        if self.hparams is None:  # fit on the store's own tasks: the first fit_samples (10,000) of them
            self.fit(ds.isel(sample=slice(0, int(self.options.get("fit_samples", DEFAULT_FIT_SAMPLES)))))
        x, y, _ = self._arrays(ds)
        traj = self._run(x, y)
        n, T, d = x.shape
        query = np.zeros((n, T), dtype=bool)
        query[:, -1] = True
        context = ~query
        h = self.name
        out = []
        for k in range(len(traj.pred)):
            step = k + 1
            pred = np.zeros((n, T, 1))
            pred[:, -1, 0] = traj.pred[k].numpy()
            out.append(Target(f"{h}_pred_{step}", pred, query,
                              f"{h}: query prediction after {step} step(s)", expected_layer=step))
            res = np.zeros((n, T, 1))
            res[:, :-1, 0] = traj.residual[k].numpy()
            out.append(Target(f"{h}_residual_{step}", res, context,
                              f"{h}: residuals y_i - W_{step} x_i at the context tokens", expected_layer=step))
            if traj.weights[k] is not None:
                W = np.zeros((n, T, d))
                W[:, -1] = traj.weights[k].numpy()
                out.append(Target(f"{h}_weights_{step}", W, query,
                                  f"{h}: weight estimate W_{step}, read at the query", expected_layer=step))
            else:
                out.append(Target(f"{h}_x_{step}", traj.x[k].numpy(), np.ones((n, T), dtype=bool),
                                  f"{h}: transformed inputs after {step} step(s)", expected_layer=step))
        ls = np.zeros((n, T, 1))
        ls[:, -1, 0] = algorithms.least_squares_pred(x, y, float(self.options.get("lam", 1e-6))).numpy()
        out.append(Target("ls_pred", ls, query, "least squares on the context, at the query"))
        return out

    def fitted(self) -> dict:
        return dict(self.hparams or {})

    def rivals(self) -> dict:
        """What else the model could be doing, with the same number of steps (and tying): for ``gd``,
        GD at 0.8 and 1.2 times the fitted step sizes, GD++ (K > 1: one GD++ step is one GD step) and
        least squares; for ``gdpp`` (K > 1) and ``pgd``, plain GD; and least squares. ``compare`` fits
        each on the same tasks."""
        if self.hparams is None:
            raise DataError(f"hypothesis {self.name!r}: call fit() before rivals()")
        shape = dict(self._shape)
        if "fit_samples" in self.options:
            shape["fit_samples"] = self.options["fit_samples"]
        out = {}
        if self.kind == "gd":
            for f in (0.8, 1.2):
                out[f"gd η×{f:g}"] = GDHypothesis(eta=[f * e for e in self.hparams["etas"]], steps=shape["steps"])
            if shape["steps"] > 1:  # one GD++ step predicts exactly what one GD step does
                out["gdpp"] = GDPPHypothesis(**shape)
        elif self.kind == "pgd" or shape["steps"] > 1:
            out["gd"] = GDHypothesis(**shape)
        out["least squares"] = LeastSquares(lam=float(self.options.get("lam", 1e-6)))
        return out


class GDHypothesis(_GDFamily):
    name = "gd"
    description = "K steps of gradient descent on the in-context least-squares loss (von Oswald et al. 2023)"
    kind = "gd"


class GDPPHypothesis(_GDFamily):
    name = "gdpp"
    description = "GD++: gradient descent with a curvature correction of the inputs (von Oswald et al. 2023)"
    kind = "gdpp"


class PGDHypothesis(_GDFamily):
    name = "pgd"
    description = "preconditioned gradient descent with a fitted preconditioner A (Ahn et al. 2023)"
    kind = "pgd"


class LeastSquares(Hypothesis):
    """Exact (ridge) least squares on the context: a converged in-context learner, as a rival of the
    GD family. At the query it predicts w·x_q with w the ridge solution (``lam``); at a context token,
    minus its residual, in the layout of the GD hypotheses' ``predict``. Not registered: a rival."""

    name = "least-squares"
    description = "ridge least squares on the context tokens, evaluated at the query"
    requires = ("x", "y", "is_query")

    def __init__(self, lam: float = 1e-6):
        if lam < 0:
            raise UsageError(f"least squares needs lam >= 0, got {lam}")
        super().__init__(lam=lam)
        self.lam = lam

    def predict(self, inputs):
        import torch

        x, y = algorithms.split_tokens(inputs)
        X = x[:, :-1]
        R = X.transpose(1, 2) @ X + self.lam * torch.eye(x.shape[-1], dtype=x.dtype)
        w = torch.linalg.solve(R, X.transpose(1, 2) @ y[..., None])[..., 0]
        fitted = torch.einsum("bd,btd->bt", w, x)
        return torch.cat([fitted[:, :-1] - y, fitted[:, -1:]], 1)[..., None]

    def fitted(self) -> dict:
        return {"lam": self.lam}

    def compute(self, ds):
        x, y, _ = _GDFamily._arrays(ds)
        n, T, _ = x.shape
        ls = np.zeros((n, T, 1))
        ls[:, -1, 0] = algorithms.least_squares_pred(x, y, self.lam).numpy()
        query = np.zeros((n, T), dtype=bool)
        query[:, -1] = True
        return [Target("ls_pred", ls, query, "least squares on the context, at the query")]
