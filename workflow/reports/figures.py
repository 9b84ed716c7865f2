"""Figures regenerated from MLflow and from measurements: training curves, probe accuracy, Taylor error.

- `training_curves`: per pretraining run, ``train/loss`` and ``train/coding_length`` against the step;
- `probe_curves`: linear-probe top-1 by epoch for every linear-probe run;
- `taylor_error_figure` (paper Figure 6): relative error and time of the order-1/2/4 Taylor coding length
  against the exact log-determinant, by dimension. Errors do not depend on the hardware; times are measured
  here and the figure names the device.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(runs: pd.DataFrame, client: MlflowClient, path: Path) -> Path | None:
    """Loss and coding length by step, one line per pretraining run; None when no run has them."""
    if runs.empty or "tag:mec.stage" not in runs:
        return None
    pre = runs[(runs["tag:mec.stage"] == "pretrain") & runs.get("train/loss", pd.Series(index=runs.index)).notna()]
    if pre.empty:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for _, run in pre.iterrows():
        label = run.get("tag:mec.run") or run["run_name"]
        for ax, key in zip(axes, ("train/loss", "train/coding_length"), strict=True):
            steps, values = _history(client, run["run_id"], key)
            ax.plot(steps, values, label=label, lw=1)
    for ax, key in zip(axes, ("train/loss", "train/coding_length"), strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def probe_curves(runs: pd.DataFrame, client: MlflowClient, path: Path) -> Path | None:
    """Linear-probe top-1 by epoch, one line per linear-probe run."""
    if runs.empty or "tag:mec.protocol" not in runs:
        return None
    probes = runs[runs["tag:mec.protocol"] == "linear_probe"]
    if probes.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, run in probes.iterrows():
        _, top1 = _history(client, run["run_id"], "linear/top1")
        _, epochs = _history(client, run["run_id"], "linear/epoch")
        if top1:
            ax.plot(epochs[: len(top1)], top1, marker="o", ms=3, label=run["run_name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("linear top-1 (val)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def taylor_error_table(dims: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048), orders: tuple[int, ...] = (1, 2, 4),
                       eps_sq_over_d: float = 0.06, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """Relative error and time of the Taylor coding length against ``slogdet``, by feature dimension d.

    C = lambda Z1^T Z2 of two correlated views (m = d samples, unit rows), lambda = d / (m eps^2) with the
    paper's eps^2 / d = 0.06; times are medians of ``repeats`` forward passes on this machine's CPU.
    """
    from mec.loss import logdet_exact, taylor_trace

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for d in dims:
        m = d
        z1 = torch.nn.functional.normalize(torch.randn(m, d, generator=generator), dim=1)
        z2 = torch.nn.functional.normalize(z1 + 0.5 * torch.randn(m, d, generator=generator), dim=1)
        lam = 1.0 / (m * eps_sq_over_d)  # d / (m eps^2) with eps^2 = 0.06 d
        c = lam * z1.T @ z2
        exact_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            exact = float(logdet_exact(c))
            exact_times.append(time.perf_counter() - start)
        rows.append({"d": d, "order": "exact", "rel_error": 0.0, "ms": 1000 * float(np.median(exact_times))})
        for order in orders:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                approx = float(taylor_trace(c, order))
                times.append(time.perf_counter() - start)
            rows.append({"d": d, "order": str(order), "rel_error": abs(approx - exact) / abs(exact),
                         "ms": 1000 * float(np.median(times))})
    return pd.DataFrame(rows)


def taylor_error_figure(table: pd.DataFrame, path: Path, device: str = "cpu") -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for order, group in table.groupby("order"):
        if order != "exact":
            axes[0].plot(group["d"], 100 * group["rel_error"], marker="o", label=f"order {order}")
        axes[1].plot(group["d"], group["ms"], marker="o", label="exact logdet" if order == "exact" else f"order {order}")
    axes[0].set(xscale="log", yscale="log", xlabel="dimension d", ylabel="relative error (%)")
    axes[1].set(xscale="log", yscale="log", xlabel="dimension d", ylabel=f"time (ms, {device})")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
