"""t-SNE of frozen training-set features (paper Figure 4, appendix B), with openTSNE.

Per backbone: the training-set features (`evals.FEATURE_SPLITS`; the DAG's features job or the shared cache, so
kNN and t-SNE extract them once), at most ``max_points`` of them (a class-balanced, seeded subset; the paper
embeds all 50,000 CIFAR-10 images, which ``max_points: null`` does), embedded in 2-D and saved as
``embedding.npz`` and a PNG coloured by class. The study's multi-panel figure (e.g. eps = 0.12 next to
eps = 0.01) is drawn from these files by the tables stage. So that a panel's claim can be checked and not only
looked at, each run also measures the embedded features (`structure_scores`): the leave-one-out kNN accuracy
among them (class structure) and their uniformity on the sphere (spread); every panel prints both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from evals import FEATURE_SPLITS
from evals.features import job_features
from evals.job import EvalJob
from evals.splits import balanced_subset


def embed(features: np.ndarray, seed: int, perplexity: float) -> np.ndarray:
    from openTSNE import TSNE

    # n_jobs=1: faster than 2 on a loaded 2-core machine (measured), and deterministic with the seed.
    perplexity = min(perplexity, max(2.0, (len(features) - 1) / 3))
    return np.asarray(TSNE(perplexity=perplexity, random_state=seed, n_jobs=1).fit(features))


def structure_scores(features: np.ndarray, labels: np.ndarray, k: int = 20,
                     temperature: float = 0.07) -> dict[str, float]:
    """What a t-SNE panel shows, measured on the features it embeds (L2-normalised).

    ``knn_top1``: leave-one-out weighted kNN top-1 (k neighbours among the other points vote with exp(cos / T), the
    kNN protocol's rule): high when classes form clusters. ``uniformity``: log of the mean of exp(-2 ||x - y||^2)
    over pairs of points (Wang & Isola, 2020): 0 when every feature is the same point (collapse), about -3.9 for
    points spread uniformly over a high-dimensional sphere; lower is more uniform.
    """
    x = F.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float32), dim=1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(y)
    if n < 2:
        raise ValueError(f"structure scores need at least 2 points, got {n}")
    sims = x @ x.T
    squared = (2 - 2 * sims).clamp_min(0)  # ||x - y||^2 of unit vectors; 0 on the diagonal
    pair_sum = torch.exp(-2 * squared).sum() - n  # the n diagonal terms are exp(0) = 1
    uniformity = float(torch.log(pair_sum / (n * (n - 1))))
    sims.fill_diagonal_(float("-inf"))  # leave one out
    top, index = sims.topk(min(k, n - 1), dim=1)
    votes = torch.zeros(n, int(y.max()) + 1).scatter_add_(1, y[index], (top / temperature).exp())
    return {"knn_top1": float((votes.argmax(1) == y).float().mean()), "uniformity": uniformity}


def panel_title(name: str, scores: dict[str, float] | None) -> str:
    """A panel's title: its name and, when known, the measured structure of its features."""
    if not scores:
        return name
    return f"{name}\nkNN top-1 {scores['knn_top1']:.3f}, uniformity {scores['uniformity']:.2f}"


def plot_panels(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path,
                class_names: list[str] | None = None) -> Path:
    """One scatter panel per (title, 2-D points, labels), side by side, coloured by class; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, points, labels) in zip(axes[0], panels, strict=True):
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.8)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, _ = scatter.legend_elements()
    names = class_names or [str(i) for i in range(len(handles))]
    fig.legend(handles, names[: len(handles)], loc="lower center", ncol=min(10, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate(job: EvalJob) -> dict[str, float]:
    with job.logged() as logger:  # FAILED if anything below fails
        metrics, png = _embed_and_draw(job)
        logger.log_metrics(metrics, step=0)
        logger.try_("log the t-SNE figure", logger.log_artifact, png, "tsne")
        logger.try_("log the embedding", logger.log_artifact, png.parent / "embedding.npz", "tsne")
    return metrics


def _embed_and_draw(job: EvalJob) -> tuple[dict[str, float], Path]:
    job.check_options()
    max_points = None if job.option("max_points", 2000) is None else job.number_option("max_points", 2000, int)
    seed, perplexity = job.number_option("seed", 0, int), job.number_option("perplexity", 30.0)
    (split,) = FEATURE_SPLITS["tsne"]
    train, reused = job_features(job, split)
    labels = train.labels.numpy()
    feats = train.features.numpy()
    if max_points is not None and len(labels) > max_points:
        keep = np.asarray(balanced_subset(labels, max_points / len(labels), seed))
        feats, labels = feats[keep], labels[keep]
    scores = structure_scores(feats, labels)
    points = embed(feats, seed, perplexity)
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "embedding.npz", points=points, labels=labels, **scores)
    png = plot_panels([(panel_title(Path(job.output_dir).name, scores), points, labels)], out / "tsne.png")
    return {"tsne/points": float(len(labels)), "tsne/features_reused": float(reused),
            "tsne/knn_top1": scores["knn_top1"], "tsne/uniformity": scores["uniformity"]}, png
