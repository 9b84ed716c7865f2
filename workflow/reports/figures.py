"""Figures regenerated from MLflow and from measurements: training curves, probe accuracy, Taylor error.

- `training_curves`: per pretraining run (a row of panels each), ``train/loss`` and ``train/coding_length``
  against the step;
- `tsne_panels`: the t-SNE study's panels (one per run, titled with its eps) from the runs' embeddings;
- `probe_curves`: linear-probe top-1 by epoch for every linear-probe run;
- `taylor_error_figure` (paper Figure 6): relative error and time of the order-1/2/4 Taylor coding length
  against the exact log-determinant, by dimension. Errors do not depend on the hardware; times are measured
  here and the figure and the CSV's ``device`` column name the device;
- `taylor_by_lambda_figure_files` (issue 13): the same relative errors against lambda * m = d / eps^2, with
  the measured ||C||_2, for synthetic embeddings and a pretrained model's own (`trained_embeddings`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
        z1, z2 = synthetic_views(m, d, generator)
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


def synthetic_views(m: int, d: int, generator: torch.Generator,
                    aligned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic pair of [m, d] unit-row views: z1 isotropic Gaussian, z2 = z1 + noise, renormalised.

    aligned=False is `taylor_error_table`'s pair: noise 0.5 N(0, 1) per coordinate, whose norm (0.5 sqrt(d))
    swamps the unit z1, so the views' cosine is 1 / sqrt(1 + d / 4): 0.24 at d = 64, 0.044 at d = 2048. Nearly
    unrelated views give C a tiny trace (Tr C = lambda * m * cosine), which is part of why that table's errors
    fall with d. aligned=True scales the noise by 1 / sqrt(d): cosine 0.89 at every d, as trained positives
    agree. Both spread over all d directions (effective rank ~d), the healthiest embeddings there are.
    """
    z1 = torch.nn.functional.normalize(torch.randn(m, d, generator=generator), dim=1)
    noise = torch.randn(m, d, generator=generator) * (0.5 / d**0.5 if aligned else 0.5)
    z2 = torch.nn.functional.normalize(z1 + noise, dim=1)
    return z1, z2


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


# ------------------------------------------------------------------------ Figure 6 by lambda * m (issue 13)

# Appendix D: relative error of the order-n coding length against the exact log-determinant at dim 2048.
PAPER_FIGURE6_ERRORS = {1: 0.0256, 2: 0.0022, 4: 0.0007}
PAPER_EPS_SQ_OVER_D = 0.06  # appendix C: lambda * m = d / eps^2 = 1 / 0.06
# One point per octave, lambda * m from 1/2 to 4096: from where every order is exact to beyond ||C||_2 = 1 for
# the healthiest (isotropic, d = 2048) embeddings, where the series diverges.
DEFAULT_LAMBDA_M = tuple(2.0**k for k in range(-1, 13))


def taylor_error_by_lambda(z1: torch.Tensor, z2: torch.Tensor, lambda_m: Any, orders: tuple[int, ...] = (1, 2, 4),
                           side: str = "auto", dtype: torch.dtype = torch.float64) -> pd.DataFrame:
    """Relative error of each order's Taylor coding length against the exact one, at each value of lambda * m.

    z1, z2: [m, d] embeddings of two views (the pair the loss compares); their rows are l2-normalised here as
    `MaximumEntropyCodingLoss` normalises them. At each lambda * m, lambda = (lambda * m) / m and the coding
    length is mec.loss's for ``side``: C = `cross_correlation_matrix(z1, z2, lambda, side)`, exact =
    `logdet_exact(C)`, order n = `taylor_trace(C, n)` (what `coding_length_series` returns). C is lambda times
    the lambda = 1 matrix, formed once (`cross_correlation_matrix` multiplies its product by lambda, so each C
    is that same matrix), and ``spectral_norm`` = lambda * ||G||_2 with ||G||_2 measured once by
    `mec.loss.spectral_norm` (the estimate training logs as train/spectral_norm, with more iterations).

    dtype: float64 by default, so that the truncation error is measured rather than rounding: in float32 (the
    loss's precision) errors below ~1e-5 are rounding noise, e.g. `taylor_error_table`'s order-2 and -4 errors
    at d = 2048 (6e-6 and 5e-6 there; 1.3e-7 and 3e-11 in float64).

    Returns one row per (lambda_m, order): m, d, side (the resolved one), cosine (mean cosine of the pair's
    rows: Tr C = lambda * m * cosine), lambda_m, lam, order, exact, approx, rel_error = |approx - exact| /
    |exact|, spectral_norm.
    """
    from mec.loss import cross_correlation_matrix, logdet_exact, resolve_side, spectral_norm, taylor_trace

    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 have shapes {tuple(z1.shape)} and {tuple(z2.shape)}; expected two [m, d] "
                         "tensors of one shape")
    values = [float(v) for v in np.atleast_1d(np.asarray(lambda_m, dtype=float))]
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"lambda_m={lambda_m!r} is invalid; expected finite values > 0")
    m, d = z1.shape
    side = resolve_side(m, d, side)
    a = torch.nn.functional.normalize(z1.detach().to(dtype), dim=1)
    b = torch.nn.functional.normalize(z2.detach().to(dtype), dim=1)
    with torch.no_grad():
        base = cross_correlation_matrix(a, b, 1.0, side)
        base_norm = spectral_norm(base, iters=200)
        cosine = float((a * b).sum(dim=1).mean())
        rows = []
        for value in values:
            lam = value / m
            c = lam * base
            exact = float(logdet_exact(c))
            for order in orders:
                approx = float(taylor_trace(c, order))
                rows.append({"m": m, "d": d, "side": side, "cosine": cosine, "lambda_m": value, "lam": lam,
                             "order": order, "exact": exact, "approx": approx,
                             "rel_error": abs(approx - exact) / abs(exact), "spectral_norm": lam * base_norm})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TrainedEmbeddings:
    """A pretrained model's embeddings of two augmented views, as its loss compares them (`trained_embeddings`)."""

    z1: torch.Tensor  # [n, d] target embeddings of view 1 (teacher / stop-gradient / the symmetric encoder)
    z2: torch.Tensor  # [n, d] student embeddings of view 2 (predictor output; the encoder's for the symmetric net)
    recipe_lambda_m: float  # d / eps^2 of the run's config: lambda * m once the lambda warm-up is over
    side: str  # the run's loss.side
    name: str  # the run's config name
    epoch: int  # epochs the checkpoint had completed
    checkpoint: Path


def pretraining_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Load a pretraining checkpoint: a ``checkpoint_epochNNNN.pt`` file, or the newest one in a folder (a run's
    ``checkpoints/`` or the run folder above it).

    Raises FileNotFoundError (no such file, no checkpoint in the folder) or `mec.checkpoint.CheckpointLoadError`
    (unreadable, or not a `mec pretrain` checkpoint: no model or config), each one sentence naming the path.
    """
    from mec import checkpoint as ckpt

    path = Path(path)
    if path.is_dir():
        found = ckpt.list_checkpoints(path) or ckpt.list_checkpoints(path / "checkpoints")
        if not found:
            raise FileNotFoundError(f"no pretraining checkpoint (checkpoint_epochNNNN.pt) in {path} "
                                    f"or {path / 'checkpoints'}")
        path = found[0][1]
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointLoadError as exc:  # torch's reason runs over several lines: keep its kind
        if exc.__cause__ is None:
            raise
        raise ckpt.CheckpointLoadError(
            f"cannot load {path}: not a file torch.load(weights_only=True) reads ({type(exc.__cause__).__name__}); "
            "expected a checkpoint_epochNNNN.pt of `mec pretrain`") from exc
    missing = [key for key in ("model", "config", "epoch") if key not in state]
    if missing:
        raise ckpt.CheckpointLoadError(
            f"{path} is not a pretraining checkpoint of `mec pretrain` (checkpoint_epochNNNN.pt): it lacks "
            f"{missing} (it holds {sorted(map(str, state))})")
    return path, state


def trained_embeddings(checkpoint: str | Path, n: int | None = None, seed: int = 0) -> TrainedEmbeddings:
    """Embed two augmented views of ``n`` training images with the model of a pretraining checkpoint.

    The run's own data and transform (`mec.data.build_pretrain_dataset` with `mec.augment.build_pretrain_views`
    as the run's config builds them, global views only, positives as the run pairs them), the model rebuilt
    from the checkpoint's config (`mec.train.build_model`) in train mode, as the loss sees its embeddings (BN
    on the batch's statistics). The pair is the first of `mec.loss.multi_crop_pairs`: the target embedding of
    view 1 and the student's of view 2, (z1, p2) for the asymmetric net, the encoder's two for the symmetric
    one. n defaults to the run's batch size, the m of its loss; ``seed`` picks the images and the augmentations
    (the global RNG state is left as it was). On the CPU.
    """
    from mec.augment import build_pretrain_views
    from mec.config import build_config
    from mec.data import build_pretrain_dataset
    from mec.loss import MaximumEntropyCodingLoss, multi_crop_pairs
    from mec.train import build_model

    path, state = pretraining_checkpoint(checkpoint)
    cfg = build_config(state["config"], origin=f"the config in {path}")
    n = cfg.optim.batch_size if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r} is invalid; expected an int >= 2 (images to embed)")
    views = build_pretrain_views(cfg.data.augment, cfg.data.image_size, **cfg.data.augment_options)
    dataset = build_pretrain_dataset(
        cfg.data.name, cfg.data.root, views, download=False, digits_params=cfg.data.digits_params(),
        positives=cfg.data.positives, source_pair_p=cfg.data.source_pair_p,
        verify_checksums=cfg.data.verify_checksums,
    )
    if n > len(dataset):
        raise ValueError(f"n={n} is more than the {len(dataset)} training items of {cfg.data.root}")
    with torch.random.fork_rng(devices=[]):  # the model's initialisation and the draws leave no trace
        torch.manual_seed(seed)
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        items = [dataset[int(i)][0] for i in torch.randperm(len(dataset))[:n]]
        view1 = torch.stack([item[0] for item in items])
        view2 = torch.stack([item[1] for item in items])
        model.train()
        with torch.no_grad():
            p1, p2, t1, t2 = model(view1, view2)
    z1, z2 = multi_crop_pairs([t1, t2], [p1, p2], symmetric=model.symmetric)[0]
    bound = MaximumEntropyCodingLoss.convergence_bound(cfg.loss.eps, cfg.optim.batch_size, cfg.model.embedding_dim)
    return TrainedEmbeddings(z1=z1, z2=z2, recipe_lambda_m=bound, side=cfg.loss.side, name=cfg.name,
                             epoch=int(state["epoch"]), checkpoint=path)


def taylor_by_lambda_table(checkpoint: str | Path | None = None, dim: int = 2048,
                           lambda_m: tuple[float, ...] = DEFAULT_LAMBDA_M, orders: tuple[int, ...] = (1, 2, 4),
                           samples: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The by-lambda curves of `taylor_error_by_lambda` for two synthetic pairs (`synthetic_views`, m = d = ``dim``:
    the by-dimension figure's pair and the aligned one) and, with ``checkpoint``, a trained model's pair
    (`trained_embeddings` of ``samples`` images).

    Each source is also evaluated at its recipe's own lambda * m (``recipe`` True on those rows): the paper's
    eps^2 / d = 0.06 for the synthetic pairs, d / eps^2 of the run's config for the trained one. Columns: those
    of `taylor_error_by_lambda`, plus source ("synthetic", "synthetic, aligned" or "trained: <name> epoch
    <epoch>") and recipe.
    """
    sources = []
    if checkpoint is not None:  # first: a bad checkpoint fails before the synthetic curves are computed
        trained = trained_embeddings(checkpoint, n=samples, seed=seed)
        sources.append((f"trained: {trained.name} epoch {trained.epoch}", trained.z1, trained.z2, trained.side,
                        trained.recipe_lambda_m))
    for label, aligned in (("synthetic, aligned", True), ("synthetic", False)):
        z1, z2 = synthetic_views(dim, dim, torch.Generator().manual_seed(seed), aligned=aligned)
        sources.insert(0, (label, z1, z2, "auto", 1.0 / PAPER_EPS_SQ_OVER_D))
    tables = []
    for source, a, b, side, recipe in sources:
        grid = sorted(set(lambda_m) | {recipe})
        table = taylor_error_by_lambda(a, b, grid, orders=orders, side=side)
        tables.append(table.assign(source=source, recipe=np.isclose(table["lambda_m"], recipe, rtol=1e-12)))
    return pd.concat(tables, ignore_index=True)


def paper_crossings(table: pd.DataFrame, targets: dict[int, float] | None = None) -> pd.DataFrame:
    """Where each source's order-n curve first reaches the paper's error (`PAPER_FIGURE6_ERRORS`): lambda * m
    by log-log interpolation between the table's points (NaN where the curve never reaches it), with
    ||C||_2 there and the other orders' errors at that lambda * m."""
    targets = PAPER_FIGURE6_ERRORS if targets is None else targets
    rows = []
    for source, group in table[~table["recipe"]].groupby("source", sort=False):
        curves = {order: curve.sort_values("lambda_m") for order, curve in group.groupby("order")}
        for order, target in targets.items():
            curve = curves.get(order)
            crossing = np.nan
            if curve is not None:
                x, y = np.log(curve["lambda_m"].to_numpy()), np.log(curve["rel_error"].to_numpy())
                above = np.nonzero(y >= np.log(target))[0]
                if len(above) and above[0] > 0:
                    i = above[0]
                    crossing = float(np.exp(x[i - 1] + (np.log(target) - y[i - 1]) * (x[i] - x[i - 1])
                                            / (y[i] - y[i - 1])))
            row = {"source": source, "order": order, "paper_rel_error": target, "lambda_m": crossing}
            for other, other_curve in curves.items():
                row[f"rel_error_order{other}"] = float(np.exp(np.interp(
                    np.log(crossing), np.log(other_curve["lambda_m"]), np.log(other_curve["rel_error"])))) \
                    if np.isfinite(crossing) else np.nan
            first = next(iter(curves.values()))
            row["spectral_norm"] = float(np.interp(crossing, first["lambda_m"], first["spectral_norm"])) \
                if np.isfinite(crossing) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def taylor_by_lambda_figure(table: pd.DataFrame, path: Path) -> Path:
    """Relative error against lambda * m (log-log), a panel per source, a curve per order, a marker at the
    recipe's lambda * m and the paper's d = 2048 errors as dotted lines; a last panel against ||C||_2."""
    plt = _pyplot()
    sources = list(dict.fromkeys(table["source"]))
    fig, axes = plt.subplots(1, len(sources) + 1, figsize=(5.2 * (len(sources) + 1), 4.8), squeeze=False)
    axes = axes[0]
    colours = {order: f"C{i}" for i, order in enumerate(sorted(set(table["order"])))}
    styles = ["-", "--", ":", "-."]
    for ax, source in zip(axes, sources, strict=False):
        rows = table[table["source"] == source]
        m, d = int(rows["m"].iloc[0]), int(rows["d"].iloc[0])
        for order, curve in rows.groupby("order"):
            curve = curve.sort_values("lambda_m")
            ax.plot(curve["lambda_m"], 100 * curve["rel_error"], marker="o", ms=3, color=colours[order],
                    label=f"order {order}")
            recipe = curve[curve["recipe"]]
            ax.plot(recipe["lambda_m"], 100 * recipe["rel_error"], marker="*", ms=13, ls="none",
                    color=colours[order], markeredgecolor="k")
            if order in PAPER_FIGURE6_ERRORS:
                ax.axhline(100 * PAPER_FIGURE6_ERRORS[order], color=colours[order], ls=":", lw=1)
        recipe_lambda_m = rows.loc[rows["recipe"], "lambda_m"]
        star = f"star: its recipe, lambda*m = {recipe_lambda_m.iloc[0]:.3g}; " if len(recipe_lambda_m) else ""
        ax.set_title(f"{source}\nm = {m}, d = {d}, views' cosine {rows['cosine'].iloc[0]:.2f}\n"
                     f"{star}dotted: the paper's (d = 2048)", fontsize=9)
        ax.set(xscale="log", yscale="log", xlabel="lambda * m = d / eps^2", ylabel="relative error (%)")
        _clip_diverged(ax, rows)
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[-1]
    for style, source in zip(styles * len(sources), sources, strict=False):
        rows = table[table["source"] == source]
        for order, curve in rows.groupby("order"):
            curve = curve.sort_values("spectral_norm")
            ax.plot(curve["spectral_norm"], 100 * curve["rel_error"], ls=style, color=colours[order],
                    label=f"{source}, order {order}")
    ax.axvline(1.0, color="grey", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured ||C||_2 (the smaller side's)", ylabel="relative error (%)")
    ax.set_title("the same errors against ||C||_2\n(below 1 the series surely converges)", fontsize=9)
    _clip_diverged(ax, table)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _clip_diverged(ax: Any, rows: pd.DataFrame) -> None:
    """Stop the y axis at 1000%: beyond, the series has diverged and its error only measures how fast."""
    if 100 * rows["rel_error"].max() > 1e3:
        ax.set_ylim(top=1e3)


def by_lambda_path(png: Path) -> Path:
    """``<out stem>_by_lambda.png`` beside the Figure 6 PNG (its CSV beside it)."""
    return png.with_name(f"{png.stem}_by_lambda.png")


def taylor_by_lambda_figure_files(png: Path, checkpoint: str | Path | None = None, **measure: Any) -> dict[str, Path]:
    """The by-lambda figure and CSV of ``png`` (the Figure 6 PNG): ``<stem>_by_lambda.png`` and ``.csv``.

    ``measure`` goes to `taylor_by_lambda_table` (dim, lambda_m, orders, samples, seed).
    """
    table = taylor_by_lambda_table(checkpoint, **measure)
    target = by_lambda_path(png)
    target.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(target.with_suffix(".csv"), index=False)
    return {"figure:taylor_by_lambda": taylor_by_lambda_figure(table, target),
            "figure:taylor_by_lambda:csv": target.with_suffix(".csv")}
