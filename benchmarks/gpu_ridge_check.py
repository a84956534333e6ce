"""CUDA vs CPU for RidgeProbe at the probe benchmark's size (100k rows x 768, 8 targets, 30 alphas).

Needs a CUDA device. Prints both times (second, warm run of each) and the agreement.
    python benchmarks/gpu_ridge_check.py
"""
import time, numpy as np, torch
from sklearn.model_selection import GroupKFold
from probekit.estimators import RidgeProbe
rng = np.random.default_rng(0)
n, T, F, k = 2000, 50, 768, 8
X = rng.standard_normal((n * T, F)).astype(np.float32)
Y = (X @ rng.standard_normal((F, k)) * 0.3 + rng.standard_normal((n * T, k))).astype(np.float32)
g = np.repeat(np.arange(n), T)
rel = tuple(10.0 ** np.linspace(-6, 3, 30))
res = {}
for dev in ("cpu", "cuda", "cpu", "cuda"):
    t = time.perf_counter(); p = RidgeProbe(alphas=rel, cv=GroupKFold(5), device=dev).fit(X, Y, groups=g)
    if dev == "cuda": torch.cuda.synchronize()
    res[dev] = (time.perf_counter() - t, p)
cpu, gpu = res["cpu"][1], res["cuda"][1]
print(f"RidgeProbe 100k x 768, 8 targets, 30 alphas, 5 folds: cpu({torch.get_num_threads()} thr) {res['cpu'][0]:.2f}s  cuda {res['cuda'][0]:.2f}s  speed-up {res['cpu'][0]/res['cuda'][0]:.1f}x")
print(f"alpha rel diff: {abs(cpu.alpha_ - gpu.alpha_) / cpu.alpha_:.1e}  "
      f"max rel coef diff: {float(np.abs(cpu.coef_ - gpu.coef_).max() / np.abs(cpu.coef_).max()):.1e}")
