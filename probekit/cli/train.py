"""``probekit train``: train a toy transformer on a task and save a safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from probekit.cli import app
from probekit.cli._common import (fraction, non_negative, positive, print_json, progress, stderr_console,
                                  threads_option)


@app.command()
def train(
    task: str = typer.Option("lds", "--task", help="Task to train on (see `probekit plugins`)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    model: str = typer.Option("softmax", "--model",
                              help="Toy-model preset: softmax, linear, attn-only, lsa, lsa-recurrent."),
    steps: int = typer.Option(3000, min=1, help="Optimiser steps (fresh task samples each step)."),
    param: Optional[List[str]] = typer.Option(None, "--param", "-p", help="Task parameter key=value (repeatable)."),
    layers: Optional[int] = typer.Option(None, min=1, help="Override the preset's number of layers."),
    width: Optional[int] = typer.Option(None, min=1, help="Override d_model."),
    heads: Optional[int] = typer.Option(None, min=1, help="Override the number of heads."),
    attention: Optional[str] = typer.Option(None, help="Override attention: softmax or linear."),
    mlp: Optional[bool] = typer.Option(None, "--mlp/--no-mlp", help="Override: MLP blocks."),
    layernorm: Optional[bool] = typer.Option(None, "--layernorm/--no-layernorm", help="Override: LayerNorm."),
    batch_size: int = typer.Option(128, min=1, help="Sequences per step."),
    lr: float = typer.Option(2e-3, callback=positive, help="Peak learning rate (one-cycle schedule; > 0)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", callback=non_negative,
                                       help="AdamW weight decay (>= 0)."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", callback=non_negative,
                                    help="Clip the gradient norm to this (0: no clipping)."),
    warmup: float = typer.Option(0.1, callback=fraction,
                                 help="Fraction of the steps spent warming the learning rate up (0 to 1)."),
    init_std: Optional[float] = typer.Option(None, "--init-std", callback=positive,
                                             help="Std of the initial weights (> 0; default: the "
                                             "preset's; 0.002/layers for lsa)."),
    seed: int = typer.Option(0, min=0, help="Seed for initialisation and data: same seed, same weights."),
    threads: int = threads_option(),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", min=0,
                                         help="Also keep checkpoints every K steps (and at step 0) under OUT/checkpoints/."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    overwrite: bool = typer.Option(False, help="Replace the checkpoint already in OUT (kept until the new one "
                                   "is complete). Anything else in OUT is never replaced."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of text."),
) -> None:
    """Train a toy transformer on TASK with fresh samples every step."""
    from probekit.models.adapters import resolve_device
    from probekit.models.toy.train import TrainSettings
    from probekit.models.toy.train import train as run_train
    from probekit.models.toy.presets import build_config
    from probekit.plugin.host import PluginHost
    from probekit.tasks import parse_params

    from probekit import outputs

    outputs.check_output(out, outputs.CHECKPOINT, replace=overwrite)  # before any work
    from probekit.threads import apply_threads

    threads = apply_threads(threads)[0]  # recorded with the checkpoint's training settings
    host = PluginHost.default()
    task_cls = host.tasks.get(task)
    task_obj = task_cls(**parse_params(task_cls.Params, param))
    config = build_config(model, task_obj.io, n_layers=layers, d_model=width, n_heads=heads,
                          attention=attention, mlp=mlp, layernorm=layernorm, init_std=init_std)
    settings = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
                             checkpoint_every=checkpoint_every, weight_decay=weight_decay, grad_clip=grad_clip,
                             warmup=warmup)
    continuous = task_obj.io.kind == "continuous"
    with progress(f"train {task}", steps, "steps", enabled=not as_json) as update:
        def on_step(step: int, loss: float) -> None:
            if step % 10 == 0 or step == steps:
                update(step, info=f"{'MSE' if continuous else 'cross-entropy'} {loss:.4g}")

        path = run_train(task_obj, config, settings, out, device=resolve_device(device), on_step=on_step,
                         overwrite=overwrite)
    from probekit.models.toy.checkpoint import read

    info = read(path).training
    summary = {"checkpoint": str(path), "final_loss": info["final_loss"], "loss": info["loss"],
               "seconds": info["seconds"], "steps_per_second": round(steps / max(info["seconds"], 1e-9), 1),
               "threads": threads, "model": config.to_dict()}
    if continuous:  # compare reports half the MSE (von Oswald's loss): give that too, labelled
        summary["final_half_mse"] = info["final_loss"] / 2
    if as_json:
        print_json(summary)
    else:
        stderr_console().print(
            f"saved [bold]{path}[/bold]: {_loss_words(info['final_loss'], continuous)}, averaged over the last "
            f"≤ 50 steps, after {steps} steps ({summary['steps_per_second']} steps/s); next: probekit cache "
            f"--model toy:{path} --out <store.zarr>"
        )


def _loss_words(loss: float, continuous: bool) -> str:
    """The final training loss, named: the full MSE (and its half, the loss ``compare`` reports) or nats."""
    if continuous:
        return f"final training loss: MSE {loss:.4g} (full MSE; ½·MSE {loss / 2:.4g}, the loss compare reports)"
    return f"final training loss: cross-entropy {loss:.4g} nats"
