"""scikit-learn estimators on probekit's engines: ``RidgeProbe`` and ``LogisticProbe``.

``RidgeProbe`` is ridge regression with the penalty chosen by sample-grouped K-fold
cross-validation, computed from per-fold Gram statistics (:mod:`probekit.probes.ridge`):
one streaming pass over the rows, then one ``eigh`` per training set scores every
alpha and every target at once. It has scikit-learn's ``RidgeCV(cv=...)`` semantics
(alpha picked by CV over all folds, then one refit on all rows; *not* nested) but
never refits per alpha, and folds are built from whole groups (e.g. all positions of
one sequence) so that correlated rows never straddle train and test.

``LogisticProbe`` is L2-penalised (multinomial) logistic regression fitted by
full-batch L-BFGS in torch, with ``sklearn.linear_model.LogisticRegression``'s
objective, so the two agree to optimiser tolerance.

Both follow scikit-learn's estimator conventions and pass its estimator checks.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import check_cv
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probekit.errors import ProbekitWarning
from probekit.probes.ridge import DEFAULT_REL_ALPHAS, FoldStats, RidgeSolution, alpha_grid, grouped_folds

__all__ = ["RidgeProbe", "LogisticProbe"]

_BATCH_ROWS = 8192  # rows per streamed chunk when accumulating statistics
_GPU_CHUNK_BYTES = 1 << 29  # on a GPU, chunks of up to 512 MiB (float64 [rows, features + targets])
_SSE_BYTES = 1 << 26  # bound on the [alphas, features, targets] temporaries of one SSE call


def _seed(random_state) -> int | None:
    """An integer seed (or None) from scikit-learn's ``random_state`` conventions."""
    if random_state is None or isinstance(random_state, numbers.Integral):
        return None if random_state is None else int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _writable(a: np.ndarray, dtype=None) -> np.ndarray:
    """``a`` as a C-contiguous, writable array (torch warns on read-only buffers)."""
    return np.require(a, dtype=dtype, requirements=["C", "W"])


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge regression with alpha chosen by sample-grouped K-fold CV on Gram statistics.

    Parameters
    ----------
    alphas : array-like of float > 0, default=None
        Penalty grid. None means ``probekit.probes.ridge.DEFAULT_REL_ALPHAS`` (1e-6 ... 1e3).
    alpha_scale : {"trace", "absolute"}, default="trace"
        "trace": ``alphas`` are relative and are multiplied by ``trace(Xc^T Xc) / n_features``
        (Xc = X centred), the mean eigenvalue of the centred Gram, as
        ``probekit.probes.ridge.alpha_grid`` does. "absolute": ``alphas`` are used as given.
    cv : int, cross-validation splitter or iterable of (train, test), default=5
        An int K deals the unique ``groups`` of ``fit`` into K folds by a seeded shuffle
        (``probekit.probes.ridge.grouped_folds``). With fewer groups than K, ``min(K, n_groups)``
        folds are used; with a single group (or training sets of fewer than 2 rows),
        no CV is possible and the middle alpha of the grid is used, with a warning
        (``cv_mse_`` and ``best_score_`` are then NaN). None means 5. A splitter
        (e.g. ``GroupKFold(5)``) is called as ``cv.split(X, y, groups)``; its test sets
        must partition the rows and, when ``groups`` is given, keep each group whole.
    alpha_per_target : bool, default=False
        Choose alpha separately for each target column instead of minimising the
        held-out error summed over targets.
    device : str, default="cpu"
        Torch device that accumulates the statistics and solves.
    random_state : int, RandomState instance or None, default=0
        Seeds the group-to-fold shuffle when ``cv`` is an int.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    alpha_ : float, or ndarray of shape (n_targets,) if ``alpha_per_target``
    alphas_ : ndarray of shape (n_alphas,) -- the absolute grid searched
    cv_mse_ : ndarray of shape (n_alphas,), or (n_alphas, n_targets) if ``alpha_per_target``
        Pooled held-out mean squared error over all folds (total SSE / n_rows), averaged
        over targets when they share one alpha (then it is computed for the target sum
        directly, at a cost almost independent of the number of targets).
    best_score_ : float
        Out-of-fold R² at the chosen alpha(s), averaged uniformly over targets
        (``r2_score`` of the cross-validated predictions).
    n_folds_ : int
    fold_of_row_ : ndarray of shape (n_samples,) -- the test fold of each row
    n_features_in_ : int
    feature_names_in_ : ndarray, only when X has string column names

    Notes
    -----
    Folds are scored by pooled held-out SSE, so with unequal fold sizes the choice can
    differ from ``RidgeCV(cv=..., scoring="neg_mean_squared_error")``, which averages
    per-fold MSEs; with equal folds they coincide.
    """

    def __init__(self, alphas=None, alpha_scale="trace", cv=5, alpha_per_target=False, device="cpu",
                 random_state=0):
        self.alphas = alphas
        self.alpha_scale = alpha_scale
        self.cv = cv
        self.alpha_per_target = alpha_per_target
        self.device = device
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _folds(self, X, y, groups) -> tuple[np.ndarray, int]:
        """Test-fold index of each row and the number of folds (1 = no CV possible)."""
        n = X.shape[0]
        if groups is not None:
            groups = np.asarray(groups)
            if groups.ndim != 1 or len(groups) != n:
                raise ValueError(f"groups must be 1-d with one entry per row ({n}), got shape {groups.shape}")
            group_of_row = np.unique(groups, return_inverse=True)[1].reshape(-1)
        else:
            group_of_row = np.arange(n)
        n_groups = int(group_of_row.max()) + 1
        cv = 5 if self.cv is None else self.cv
        if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
            if cv < 2:
                raise ValueError(f"cv must be at least 2 folds, got {cv}")
            n_folds = min(int(cv), n_groups)
            if n_folds < 2:
                return np.zeros(n, dtype=np.int64), 1
            fold = grouped_folds(n_groups, n_folds, seed=_seed(self.random_state))[group_of_row]
            if (n - np.bincount(fold, minlength=n_folds)).min() < 2:
                return np.zeros(n, dtype=np.int64), 1
            return fold, n_folds
        splitter = check_cv(cv)
        fold = np.full(n, -1, dtype=np.int64)
        n_folds = 0
        for j, (_, test) in enumerate(splitter.split(X, y, groups)):
            test = np.asarray(test)
            if (fold[test] >= 0).any():
                raise ValueError("cv test sets overlap: each row must be in exactly one test fold")
            fold[test] = j
            n_folds = j + 1
        if n_folds < 2 or (fold < 0).any():
            raise ValueError("cv must give at least 2 test sets that together cover every row exactly once")
        lo = np.full(n_groups, n_folds)
        hi = np.full(n_groups, -1)
        np.minimum.at(lo, group_of_row, fold)
        np.maximum.at(hi, group_of_row, fold)
        split = np.flatnonzero(lo != hi)
        if split.size:
            raise ValueError(f"cv splits {split.size} group(s) across test folds; rows of one group must stay "
                             "together (use a group-aware splitter such as GroupKFold)")
        if (n - np.bincount(fold, minlength=n_folds)).min() < 2:
            raise ValueError("every cv training set needs at least 2 rows")
        return fold, n_folds

    def _check_alphas(self):
        if self.alpha_scale not in ("trace", "absolute"):
            raise ValueError(f"alpha_scale must be 'trace' or 'absolute', got {self.alpha_scale!r}")
        rel = DEFAULT_REL_ALPHAS if self.alphas is None else self.alphas
        rel = np.asarray(rel, dtype=np.float64).reshape(-1)
        if rel.size == 0 or not np.all(np.isfinite(rel)) or not np.all(rel > 0):
            raise ValueError(f"alphas must be a non-empty sequence of finite values > 0, got {self.alphas!r}")
        return rel

    def _fold_stats(self, X, y2, fold, K) -> FoldStats:
        """Sufficient statistics of every fold, accumulated over streamed chunks of rows."""
        import torch

        (n, F), k = X.shape, y2.shape[1]
        stats = FoldStats(K, F, k, device=self.device)
        # On the CPU, stream the rows fold by fold so each chunk arrives sorted and is copied
        # only once; a GPU receives chunks as they are and sorts them itself.
        on_cpu = torch.device(self.device).type == "cpu"
        order = np.argsort(fold, kind="stable")
        in_order = not on_cpu or bool(np.all(order == np.arange(n)))
        batch = _BATCH_ROWS if on_cpu else max(_BATCH_ROWS, _GPU_CHUNK_BYTES // (8 * (F + k)))
        for i in range(0, n, batch):
            rows = slice(i, i + batch) if in_order else order[i : i + batch]
            stats.add(X[rows], y2[rows], fold[rows])
        return stats

    def fit(self, X, y, groups=None):
        """Fit on rows ``X`` [n, F] and targets ``y`` [n] or [n, k]; ``groups`` [n] names each row's sample."""
        import torch

        rel = self._check_alphas()
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True,
                             ensure_min_samples=2)
        y2 = y.reshape(X.shape[0], -1)  # cast per chunk below: no full float64 copy of X or y
        n, F = X.shape
        k = y2.shape[1]
        fold, K = self._folds(X, y, groups)
        stats = self._fold_stats(X, y2, fold, K)

        if self.alpha_scale == "trace":
            alphas = alpha_grid(stats, tuple(rel))
        else:
            alphas = torch.tensor(rel, dtype=torch.float64, device=self.device)
        total = stats.subset(range(K))
        _, _, _, sy, yy, n_t = total
        sst = (yy - sy * sy / n_t).cpu().numpy()  # per target, about the pooled mean

        best = self._select_alphas(stats, total, alphas, sst, n, k, K, F)

        # Refit on all rows with the chosen alpha(s); undo the reference-row shift.
        sol = RidgeSolution.fit(total)
        chosen = alphas[torch.as_tensor(best, device=alphas.device)]  # [k]
        W = sol.V @ (sol.VC / (sol.e[:, None] + chosen[None, :]))  # [F, k]
        b = sol.my - sol.mx @ W + stats.y_shift - stats.x_shift @ W

        self.alphas_ = alphas.cpu().numpy()
        self.n_folds_ = K
        self.fold_of_row_ = fold
        coef, intercept = W.T.cpu().numpy(), b.cpu().numpy()
        alpha = self.alphas_[best]
        if y.ndim == 1:
            self.coef_, self.intercept_ = coef[0], float(intercept[0])
            if self.cv_mse_.ndim == 2:
                self.cv_mse_ = self.cv_mse_[:, 0]
            self.alpha_ = float(alpha[0])
        else:
            self.coef_, self.intercept_ = coef, intercept
            self.alpha_ = alpha if self.alpha_per_target else float(alpha[0])
        return self

    def _select_alphas(self, stats, total, alphas, sst, n: int, k: int, K: int, F: int) -> np.ndarray:
        """The index into ``alphas`` chosen for each of the ``k`` targets by leave-one-fold-out CV
        over the ``K`` folds of ``stats``; sets ``cv_mse_`` and ``best_score_``."""
        import torch

        A = len(alphas)
        if K >= 2:
            folds = [tuple(a[j] for a in (stats.xtx, stats.xty, stats.sx, stats.sy, stats.yy, stats.n))
                     for j in range(K)]
            sols = [RidgeSolution.fit(tuple(a - b for a, b in zip(total, test))) for test in folds]
            if self.alpha_per_target:
                cv_sse = torch.zeros(A, k, dtype=torch.float64, device=self.device)
                step = max(1, _SSE_BYTES // (8 * F * k))
                for sol, test in zip(sols, folds):
                    for s in range(0, A, step):
                        cv_sse[s : s + step] += sol.sse(alphas[s : s + step], test)
                cv_sse = cv_sse.clamp_min(0).cpu().numpy()
                best = cv_sse.argmin(0)
                sse = cv_sse[best, np.arange(k)]
                self.cv_mse_ = cv_sse / n
            else:  # one shared alpha: score the target sum cheaply, then per target at that alpha only
                one = torch.ones(1, k, dtype=torch.float64, device=self.device)
                total_sse = sum(sol.sse_grouped(alphas, test, one) for sol, test in zip(sols, folds))[:, 0]
                best = np.full(k, int(total_sse.argmin()))
                chosen = alphas[best[:1]]
                sse = sum(sol.sse(chosen, test) for sol, test in zip(sols, folds))[0].clamp_min(0).cpu().numpy()
                self.cv_mse_ = total_sse.clamp_min(0).cpu().numpy() / (n * k)
            safe = np.where(sst > 0, sst, 1.0)  # a constant target scores 1 if fitted exactly, else 0
            r2 = np.where(sst > 0, 1.0 - sse / safe, np.where(sse > 0, 0.0, 1.0))
            self.best_score_ = float(r2.mean())
        else:
            warnings.warn(f"RidgeProbe: too few groups/rows ({n} rows) to cross-validate; "
                          f"fitting with the middle alpha of the grid ({float(alphas[A // 2]):.3g})",
                          ProbekitWarning, stacklevel=3)
            best = np.full(k, A // 2)
            self.cv_mse_ = np.full((A, k) if self.alpha_per_target else (A,), np.nan)
            self.best_score_ = float("nan")
        return best

    def predict(self, X):
        """Predictions [n] (1-d y at fit) or [n, k], float64."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """L2-penalised logistic regression (multinomial for >2 classes) by full-batch L-BFGS in torch.

    Minimises ``C * sum_i logloss_i + ||W||^2 / 2`` (intercept unpenalised), exactly the
    objective of ``sklearn.linear_model.LogisticRegression(C=C)`` with its default lbfgs
    solver: a sigmoid model with ``coef_`` of shape (1, n_features) for two classes and a
    softmax over all classes, ``coef_`` (n_classes, n_features), otherwise. The mean
    (scaled) objective is optimised from zeros, so fits are deterministic; ``tol`` is the
    L-BFGS stopping bound on the largest gradient entry, as sklearn's ``gtol`` (measured
    on internally centred features, an exact reparametrisation when fitting an intercept).

    Parameters
    ----------
    C : float > 0, default=1.0
        Inverse L2 strength.
    max_iter : int, default=200
        L-BFGS iterations; a ``ConvergenceWarning`` is raised if they run out.
    tol : float, default=1e-6
    device : str, default="cpu"
    random_state : int or None, default=0
        Accepted for API compatibility; the fit is deterministic (zero initialisation).
    fit_intercept : bool, default=True

    Problems with at most 2**26 entries in X are solved in float64, larger ones in float32.

    Attributes
    ----------
    classes_, coef_, intercept_, n_iter_ (ndarray of shape (1,)), n_features_in_
    """

    def __init__(self, C=1.0, max_iter=200, tol=1e-6, device="cpu", random_state=0, fit_intercept=True):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.random_state = random_state
        self.fit_intercept = fit_intercept

    def fit(self, X, y):
        """Fit on rows ``X`` [n, F] and class labels ``y`` [n]."""
        import torch
        import torch.nn.functional as nnf

        if not (isinstance(self.C, numbers.Real) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C!r}")
        if not (isinstance(self.max_iter, numbers.Integral) and self.max_iter >= 1):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.tol, numbers.Real) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"LogisticProbe needs samples of at least 2 classes in the data, but the data "
                             f"contains only one class: {self.classes_[0]!r}")
        n, F = X.shape
        dtype = torch.float64 if X.size <= 1 << 26 else torch.float32
        Xt = torch.from_numpy(_writable(X)).to(device=self.device, dtype=dtype)
        # Centring is an exact reparametrisation (the intercept is unpenalised) that removes the
        # ill-conditioning a large feature mean causes; it is undone on the intercept below.
        mean = Xt.mean(0) if self.fit_intercept else torch.zeros(F, dtype=dtype, device=self.device)
        Xt = Xt - mean
        yt = torch.from_numpy(y_idx.reshape(-1).astype(np.int64)).to(self.device)
        binary = n_classes == 2
        n_out = 1 if binary else n_classes
        W = torch.zeros(n_out, F, dtype=dtype, device=self.device, requires_grad=True)
        b = torch.zeros(n_out, dtype=dtype, device=self.device, requires_grad=self.fit_intercept)
        params = [W, b] if self.fit_intercept else [W]
        lam = 1.0 / (float(self.C) * n)  # mean loss + lam/2 ||W||^2  ==  (C sum loss + ||W||^2/2) / (C n)
        target = yt.to(dtype) if binary else yt

        def objective():
            z = Xt @ W.T + b
            if binary:
                loss = nnf.binary_cross_entropy_with_logits(z[:, 0], target)
            else:
                loss = nnf.cross_entropy(z, target)
            return loss + 0.5 * lam * (W * W).sum()

        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=self.max_iter, max_eval=2 * self.max_iter + 5,
                                tolerance_grad=float(self.tol), tolerance_change=float(torch.finfo(dtype).eps),
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        opt.step(closure)
        n_iter = int(opt.state[W].get("n_iter", 0))
        closure()
        grad_max = max(float(p.grad.abs().max()) for p in params)
        if grad_max > self.tol and n_iter >= self.max_iter:
            warnings.warn(f"LogisticProbe: L-BFGS did not converge in {self.max_iter} iterations "
                          f"(max gradient {grad_max:.2e} > tol {self.tol:g}); increase max_iter",
                          ConvergenceWarning, stacklevel=2)
        coef = W.detach().to(torch.float64).cpu().numpy()
        intercept = (b - W @ mean).detach().to(torch.float64).cpu().numpy()
        if not binary and self.fit_intercept:
            intercept = intercept - intercept.mean()  # unpenalised softmax intercepts: pick the centred one
        self.coef_, self.intercept_ = coef, intercept
        self.n_iter_ = np.array([max(n_iter, 1)], dtype=np.int32)
        return self

    def decision_function(self, X):
        """Logits: [n] for two classes (positive = ``classes_[1]``), else [n, n_classes]."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X):
        """Class probabilities [n, n_classes], columns in the order of ``classes_``."""
        d = self.decision_function(X)
        if d.ndim == 1:
            p = expit(d)
            return np.column_stack([1.0 - p, p])
        return softmax(d, axis=1)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        d = self.decision_function(X)
        idx = (d > 0).astype(np.int64) if d.ndim == 1 else d.argmax(1)
        return self.classes_[idx]
