"""Train a toy transformer on a task with fresh samples every step."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from probekit.errors import UsageError
from probekit.models.toy import checkpoint
from probekit.models.toy.model import ToyConfig
from probekit.tasks import Task


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3  # peak of a one-cycle schedule
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps spent warming up
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0  # torch threads; 0 leaves torch's default
    checkpoint_every: int = 0  # also keep a checkpoint every this many steps (0: only the final one)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("training needs steps >= 1, batch_size >= 1 and lr > 0")
        if self.checkpoint_every < 0:
            raise UsageError("checkpoint_every must be >= 0")


def lr_factor(steps: int, warmup: float):
    """Linear warm-up over ``warmup`` of the steps (at least one), then cosine decay to 4 % of the
    peak: a one-cycle shape that, unlike torch's OneCycleLR, is defined for any number of steps."""
    warm = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.04 + 0.96 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def step_seed(seed: int, step: int) -> int:
    """Data seed of one training step, independent across (seed, step) pairs."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def batch_tensors(task: Task, ds, device="cpu"):
    """Model inputs, training targets and the loss mask (None: every position) of a task Dataset."""
    import torch

    io = task.io
    x = torch.as_tensor(np.asarray(ds[io.input_var].values), device=device)
    y = torch.as_tensor(np.asarray(ds[io.target_var].values), device=device)
    mask = None
    if io.loss_mask_var is not None:
        mask = torch.as_tensor(np.asarray(ds[io.loss_mask_var].values, dtype=bool), device=device)
    if io.kind == "continuous":
        return x.float(), y.float(), mask
    return x.long(), y.long(), mask


#: what the training loss is, per output kind (recorded as the checkpoint's ``training["loss"]``);
#: ``probekit compare`` reports ½·MSE (von Oswald's loss), half the training MSE
LOSS_NAMES = {"continuous": "mse", "tokens": "cross_entropy"}


def loss_fn(kind: str, out, y, mask=None):
    """Mean squared error, the full MSE (continuous), or cross-entropy in nats (tokens) over the positions
    in ``mask``."""
    import torch.nn.functional as F

    if mask is not None:
        out, y = out[mask], y[mask]  # [rows, d] / [rows, (d)]
    if kind == "continuous":
        return ((out - y) ** 2).mean()
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def train(
    task: Task,
    config: ToyConfig,
    settings: TrainSettings,
    out: str | Path,
    *,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    log_every: int = 50,
    overwrite: bool = False,
) -> Path:
    """Train from scratch, save a checkpoint in ``out``, and return its path.

    With ``settings.checkpoint_every = K`` the weights after every K steps (and at step 0,
    the initialisation) are also kept, as ``out/checkpoints/step-0000500`` etc.: the same
    format, for training-dynamics work (``toy:out/checkpoints/step-0000500``).

    The same ``settings.seed`` gives the same weights: the initialisation and every
    step's data are drawn from it.

    ``out`` must be absent, an empty folder, or (with ``overwrite``) a probekit toy
    checkpoint, which is replaced only once the new one is complete. A failed or interrupted
    run removes what it wrote.
    """
    from probekit import outputs

    out = outputs.check_output(out, outputs.CHECKPOINT, replace=overwrite)
    kwargs = {"device": device, "on_step": on_step, "log_every": log_every}
    if outputs.describe(out) == outputs.CHECKPOINT:
        with outputs.replacing(out) as stage:
            _train(task, config, settings, stage, **kwargs)
        return out
    with outputs.made_here(out):
        return _train(task, config, settings, out, **kwargs)


def _train(task: Task, config: ToyConfig, settings: TrainSettings, out: Path, *, device, on_step, log_every) -> Path:
    import torch

    from probekit.models.toy.model import build_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(settings.steps, settings.warmup))
    history: list[tuple[int, float]] = []
    start, running = time.perf_counter(), []
    if settings.checkpoint_every:
        _keep(model, config, task, settings, out, 0, history)
    for step in range(settings.steps):
        x, y, mask = batch_tensors(task, task.generate(settings.batch_size, step_seed(settings.seed, step)), device)
        loss = loss_fn(task.io.kind, model(x), y, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not np.isfinite(value):
            raise UsageError(f"training diverged at step {step} (loss {value}); lower --lr")
        running.append(value)
        if (step + 1) % log_every == 0 or step + 1 == settings.steps:
            history.append((step + 1, float(np.mean(running))))
            running = []
        if settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0:
            _keep(model, config, task, settings, out, step + 1, history)
        if on_step:
            on_step(step + 1, value)
    training = asdict(settings) | {
        "final_loss": history[-1][1],
        "loss": LOSS_NAMES.get(task.io.kind, "cross_entropy"),
        "seconds": round(time.perf_counter() - start, 2),
        "history": history,
        "device": str(device),
        "torch_version": torch.__version__,
    }
    ckpt = checkpoint.Checkpoint(config, task.name, asdict(task.params), training)
    return checkpoint.save(model.cpu(), ckpt, out)


def _keep(model, config: ToyConfig, task: Task, settings: TrainSettings, out, step: int, history) -> Path:
    """Save the weights at ``step`` under ``out/checkpoints/step-NNNNNNN`` (weights copied to CPU)."""
    import copy

    info = asdict(settings) | {"step": step, "history": list(history)}
    ckpt = checkpoint.Checkpoint(config, task.name, asdict(task.params), info)
    return checkpoint.save(copy.deepcopy(model).cpu(), ckpt, Path(out) / "checkpoints" / f"step-{step:07d}")
