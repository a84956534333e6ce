"""`probekit train` on a busy machine: torch's default threads vs probekit's automatic choice.

Starts K busy-loop processes (default: as many as there are cores), then trains the same small
model twice, side by side in one run: with ``--threads <cores>`` (torch's default: one OpenMP
thread per core) and with ``--threads 0`` (probekit's default: OMP_NUM_THREADS, else the idle
cores by the load average). Prints steps/s of each and their ratio.

    python benchmarks/threads_busy.py --steps 300 --busy 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def busy_loops(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def train(steps: int, threads: int, out: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default under test
    argv = [sys.executable, "-m", "probekit", "train", "--task", "lds", "--steps", str(steps), "--layers", "2",
            "--width", "32", "--heads", "2", "--batch-size", "64", "--threads", str(threads), "--out", out, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--busy", type=int, default=cores, help="busy-loop processes beside the training")
    args = ap.parse_args()
    procs = busy_loops(args.busy)
    try:
        time.sleep(65)  # let the 1-minute load average see the busy loops
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, threads in ((f"torch default ({cores} threads)", cores), ("probekit auto (--threads 0)", 0)):
                info = train(args.steps, threads, os.path.join(tmp, f"m{threads}"))
                rows.append((label, info["steps_per_second"],
                             info.get("threads", threads)))
    finally:
        for p in procs:
            p.kill()
    print(f"{cores} cores, {args.busy} busy-loop processes, load {os.getloadavg()[0]:.1f}, {args.steps} steps")
    for label, sps, used in rows:
        print(f"  {label:<32} {sps:8.1f} steps/s  ({used} threads)")
    print(f"  ratio auto / default: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
