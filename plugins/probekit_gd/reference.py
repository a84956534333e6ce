"""The reference numbers ``docs/gd.md`` quotes for the algorithms alone (no model), reproducible with

    python -m probekit_gd.reference -n 10000

On ``n`` linreg tasks drawn with ``--seed`` (5, as ``compare``'s held-out tasks; von Oswald et al. 2023
evaluate 10,000 tasks drawn with PRNGKey(5)) it prints one GD step's closed-form eta* and the eta of
their ``scan_lrs`` grid ([0.001, 25) in steps of 0.1) with its loss, the loss of predicting 0, and the
held-out loss of K-step GD (K = 1, 2, 3) and GD++ (K = 2, 3), untied, their step sizes fitted on ``n``
separate tasks (``--fit-seed``, 6, as ``compare`` fits them). Losses are 1/2 squared error.
"""

from __future__ import annotations

import argparse

import torch

from probekit_gd import algorithms
from probekit_gd.linreg import LinRegTask


def tensors(n: int, seed: int):
    """``(x, y, y_q)`` of ``n`` linreg tasks, float64."""
    ds = LinRegTask().generate(n, seed)
    x = torch.as_tensor(ds["x"].values, dtype=torch.float64)
    y = torch.as_tensor(ds["y"].values[..., 0], dtype=torch.float64)
    return x, y[:, :-1], y[:, -1]


def reference(n: int, seed: int = 5, fit_seed: int = 6) -> dict[str, float]:
    x, y, y_q = tensors(n, seed)
    fx, fy, fy_q = tensors(n, fit_seed)
    grid_eta, grid_loss = algorithms.grid_search_eta(x, y, y_q)
    out = {"eta_closed_form": algorithms.best_eta(x, y, y_q), "eta_grid": grid_eta, "loss_grid": grid_loss,
           "loss_zero": algorithms.half_mse(torch.zeros_like(y_q), y_q)}
    for kind, steps in (("gd", 1), ("gd", 2), ("gd", 3), ("gdpp", 2), ("gdpp", 3)):
        h = algorithms.fit_steps(fx, fy, fy_q, steps, kind=kind)
        gammas = torch.as_tensor(h["gammas"], dtype=torch.float64) if "gammas" in h else None
        pred = algorithms.run_steps(x, y, torch.as_tensor(h["etas"], dtype=torch.float64), gammas=gammas).pred[-1]
        out[f"loss_{kind}_{steps}"] = algorithms.half_mse(pred, y_q)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m probekit_gd.reference", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="tasks to evaluate on, and to fit on (10,000)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the evaluation tasks (5)")
    parser.add_argument("--fit-seed", type=int, default=6, help="seed of the fitting tasks (6)")
    args = parser.parse_args(argv)
    out = reference(args.n, args.seed, args.fit_seed)
    print(f"one GD step on {args.n:,} tasks: eta* closed form {out['eta_closed_form']:.3f}, grid {out['eta_grid']:.3f} "
          f"(loss {out['loss_grid']:.4f}); predicting 0: {out['loss_zero']:.4f}")
    print("fitted on separate tasks, held-out loss: GD K=1/2/3 " +
          " / ".join(f"{out[f'loss_gd_{k}']:.4f}" for k in (1, 2, 3)) +
          "; GD++ K=2/3 " + " / ".join(f"{out[f'loss_gdpp_{k}']:.4f}" for k in (2, 3)))
    return out


if __name__ == "__main__":
    main()
