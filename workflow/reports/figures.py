"""Figures regenerated from MLflow and from measurements: training curves, probe accuracy, Taylor error.

- `training_curves`: per pretraining run (a row of panels each), ``train/loss`` and ``train/coding_length``
  against the step;
- `tsne_panels`: the t-SNE study's panels (one per run, titled with its eps) from the runs' embeddings;
- `probe_curves`: linear-probe top-1 by epoch for every linear-probe run;
- `taylor_error_figure` (paper Figure 6): relative error and time of the order-1/2/4 Taylor coding length
  against the exact log-determinant, by dimension. Errors do not depend on the hardware; times are measured
  here and the figure and the CSV's ``device`` column name the device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    """Loss and coding length by step, one row of panels per pretraining run; None when no run has them.

    Each run has its own axes: runs of one experiment differ by orders of magnitude (the exact log-determinant
    of a small-eps run against the Taylor loss of the default), which one shared linear axis flattens.
    """
    if runs.empty or "tag:mec.stage" not in runs or "train/loss" not in runs:
        return None
    pre = runs[(runs["tag:mec.stage"] == "pretrain") & runs["train/loss"].notna()]
    if pre.empty:
        return None
    several = "experiment" in pre and pre["experiment"].nunique() > 1
    pre = pre.assign(label=[_run_label(run, several) for _, run in pre.iterrows()]).sort_values("label")
    plt = _pyplot()
    keys = ("train/loss", "train/coding_length")
    fig, axes = plt.subplots(len(pre), 2, figsize=(11, 2.4 * len(pre) + 0.6), squeeze=False)
    for row, (_, run) in zip(axes, pre.iterrows(), strict=True):
        for ax, key in zip(row, keys, strict=True):
            steps, values = _history(client, run["run_id"], key)
            ax.plot(steps, values, lw=1)
            ax.set_title(f"{run['label']}: {key}", fontsize=9)
            ax.set_ylabel(key.split("/")[-1], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _run_label(run: pd.Series, with_experiment: bool) -> str:
    name = run.get("tag:mec.run")
    name = name if isinstance(name, str) and name else run["run_name"]
    return f"{run['experiment']}/{name}" if with_experiment else str(name)


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


def cpu_name() -> str:
    """This machine's processor and the threads torch uses: the device Figure 6's times were measured on."""
    import platform

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"CPU {model}, {torch.get_num_threads()} threads"


def taylor_figure(png: Path, **measure: Any) -> dict[str, Path]:
    """Paper Figure 6 measured here: the table as CSV (with a ``device`` column) and the figure naming the device.

    ``measure`` goes to `taylor_error_table` (dims, orders, repeats).
    """
    device = cpu_name()
    table = taylor_error_table(**measure).assign(device=device)
    png.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(png.with_suffix(".csv"), index=False)
    return {"figure:taylor": taylor_error_figure(table, png, device=device),
            "figure:taylor:csv": png.with_suffix(".csv")}


def tsne_panels(runs: pd.DataFrame, client: MlflowClient, folder: Path) -> dict[str, Path]:
    """One multi-panel PNG per t-SNE evaluation, a panel per run titled with its eps, from the runs' embeddings.

    The embeddings are the ``tsne/embedding.npz`` artifacts of the evaluation runs, so any copy of the store
    redraws the figure; a run whose embedding never reached the store is left out with a warning.
    """
    import logging
    import tempfile

    from evals.tsne import panel_title, plot_panels
    from workflow.reports.tables import latest_evaluations

    evals = latest_evaluations(runs)
    if evals.empty or "tag:mec.protocol" not in evals:
        return {}
    evals = evals[evals["tag:mec.protocol"] == "tsne"]
    params = runs.set_index("run_id")["param:loss.eps"] if "param:loss.eps" in runs else pd.Series(dtype=object)
    figures = {}
    for (experiment, evaluation), group in evals.groupby(["experiment", "tag:mec.evaluation"]):
        panels = []
        for _, run in group.sort_values("tag:mec.run").iterrows():
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = client.download_artifacts(run["run_id"], "tsne/embedding.npz", tmp)
                except Exception as exc:  # MLflow raises several types for a missing artifact
                    logging.getLogger(__name__).warning("t-SNE %s/%s: no embedding in run %s (%s)", evaluation,
                                                        run["tag:mec.run"], run["run_id"], exc)
                    continue
                embedding = np.load(local)
                points, labels = embedding["points"], embedding["labels"]
                scores = {k: float(embedding[k]) for k in ("knn_top1", "uniformity") if k in embedding}
            eps = params.get(run["tag:mec.pretrain_run_id"])
            known = isinstance(eps, str) and eps not in ("", "None")
            title = f"{run['tag:mec.run']} (eps = {float(eps):g})" if known else run["tag:mec.run"]
            panels.append((panel_title(title, scores if len(scores) == 2 else None), points, labels))
        if panels:
            name = evaluation if evals["experiment"].nunique() == 1 else f"{experiment}-{evaluation}"
            figures[f"figure:{name}"] = plot_panels(panels, folder / f"{name}.png")
    return figures


def taylor_error_figure(table: pd.DataFrame, path: Path, device: str = "cpu") -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for order, group in table.groupby("order"):
        if order != "exact":
            axes[0].plot(group["d"], 100 * group["rel_error"], marker="o", label=f"order {order}")
        label = "exact logdet" if order == "exact" else f"order {order}"
        axes[1].plot(group["d"], group["ms"], marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="dimension d", ylabel="relative error (%)")
    axes[1].set(xscale="log", yscale="log", xlabel="dimension d", ylabel=f"time (ms, {device})")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
