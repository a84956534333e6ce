"""How badly conditioned R_t = sum_{tau<t} x_tau x_tau^T + lam I is on ``lds`` sequences: the numbers
``docs/rls.md`` quotes, reproducible with

    python -m probekit_rls.conditioning -n 2000 --seed 1      # the tutorial store's sequences

It prints the median, 90th percentile and share above 200 of the condition number of R_t over every
sequence and every position t >= D (where ``precond`` is defined).
"""

from __future__ import annotations

import argparse

import numpy as np

from probekit_rls.lds import LDSParams, LDSTask


def condition_numbers(x: np.ndarray, lam: float, min_pos: int) -> np.ndarray:
    """cond(R_t) at every sequence and position t >= ``min_pos`` of ``x[n, T, D]``."""
    x = np.asarray(x, dtype=np.float64)
    outer = np.einsum("nti,ntj->ntij", x, x)
    R = np.cumsum(outer, axis=1) - outer + lam * np.eye(x.shape[-1])  # sum over tau < t
    return np.linalg.cond(R[:, min_pos:]).ravel()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m probekit_rls.conditioning", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="sequences (default 2000, as the tutorial caches)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sequences (default 1: probekit cache's)")
    parser.add_argument("--lam", type=float, default=1e-3, help="ridge lambda of R_t (the rls hypothesis' default)")
    args = parser.parse_args(argv)
    p = LDSParams()
    cond = condition_numbers(LDSTask().generate(args.n, args.seed)["x"].values, args.lam, p.dim)
    out = {"median": float(np.median(cond)), "p90": float(np.percentile(cond, 90)),
           "share_over_200": float((cond > 200).mean())}
    print(f"cond(R_t), t >= {p.dim}, {args.n} lds sequences (seed {args.seed}): median {out['median']:.1f}, "
          f"90th percentile {out['p90']:.0f}, share above 200 {out['share_over_200']:.3f}")
    return out


if __name__ == "__main__":
    main()
