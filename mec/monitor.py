"""Frozen-feature quality: weighted kNN, few-shot and full-label linear classifiers.

Used at the end of pretraining to compare the learned backbone with a randomly initialised one of the same
architecture on held-out images. Features are extracted once per backbone and split, then every classifier
reuses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn


@dataclass(frozen=True)
class Features:
    """L2-normalised features ([N, D], float32) with their integer labels."""

    features: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: Iterable[tuple[torch.Tensor, Any]], device: torch.device
                     ) -> Features:
    """Run the backbone in eval mode (BN on running statistics) over a labelled loader: a DataLoader of
    transformed images, or a `mec.batch_eval.DecodedLoader` whose batches are already on `device`."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for images, targets in loader:
        out = backbone(images.to(device, non_blocking=True))
        feats.append(F.normalize(out.float(), dim=1).cpu())
        labels.append(torch.as_tensor(targets).cpu())
    backbone.train(was_training)
    return Features(torch.cat(feats), torch.cat(labels))


@torch.no_grad()
def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of l2-normalised, centred rows (Roy & Vetterli, 2007).

    Between 1 (every row on one line) and min(n, d) (a flat spectrum): a cheap view of dimensional collapse,
    which the cross-view coding length does not prevent by itself (README, "The offline default").
    """
    if embeddings.ndim != 2 or min(embeddings.shape) < 2:
        raise ValueError(f"embeddings must be [n, d] with n, d >= 2, got shape {tuple(embeddings.shape)}")
    rows = F.normalize(embeddings.detach().float(), dim=1)
    singular = torch.linalg.svdvals(rows - rows.mean(dim=0))
    if float(singular.sum()) == 0.0:
        return 0.0  # identical rows: nothing spread at all
    p = singular / singular.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def knn_accuracy(train: Features, test: Features, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Top-1 of the weighted kNN of InstDisc/DINO: neighbours vote with weight exp(cosine / T)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, len(train.labels))
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    correct = 0
    for start in range(0, len(test.labels), chunk):
        sims = test.features[start : start + chunk] @ train.features.T
        top_sims, idx = sims.topk(k, dim=1)
        votes = torch.zeros(len(idx), num_classes)
        votes.scatter_add_(1, train.labels[idx], (top_sims / temperature).exp())
        correct += int((votes.argmax(1) == test.labels[start : start + chunk]).sum())
    return correct / len(test.labels)


def linear_accuracy(train: Features, test: Features, max_iter: int = 2000) -> float:
    """Multinomial logistic regression on standardised frozen features (scikit-learn, L-BFGS)."""
    scaler = StandardScaler().fit(train.features.numpy())
    clf = LogisticRegression(max_iter=max_iter, C=1.0)
    clf.fit(scaler.transform(train.features.numpy()), train.labels.numpy())
    return float(clf.score(scaler.transform(test.features.numpy()), test.labels.numpy()))


def few_shot_subset(labels: torch.Tensor, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``shots`` examples of every class, drawn without replacement."""
    picked = []
    for cls in np.unique(labels.numpy()):
        members = np.flatnonzero(labels.numpy() == cls)
        if len(members) < shots:
            raise ValueError(f"class {cls} has {len(members)} training images, fewer than few_shot={shots}")
        picked.append(rng.choice(members, shots, replace=False))
    return np.concatenate(picked)


def few_shot_accuracy(train: Features, test: Features, shots: int, draws: int, seed: int = 0) -> float:
    """Mean test accuracy of linear classifiers each trained on a fresh draw of ``shots`` images per class."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        idx = torch.as_tensor(few_shot_subset(train.labels, shots, rng))
        scores.append(linear_accuracy(Features(train.features[idx], train.labels[idx]), test))
    return float(np.mean(scores))


def feature_quality(
    train: Features,
    test: Features,
    *,
    knn_k: int,
    knn_temperature: float,
    few_shot: int,
    few_shot_draws: int,
    full_linear: bool,
    seed: int = 0,
) -> dict[str, float]:
    scores = {
        "knn_top1": knn_accuracy(train, test, knn_k, knn_temperature),
        f"linear_{few_shot}shot_top1": few_shot_accuracy(train, test, few_shot, few_shot_draws, seed),
    }
    if full_linear:
        scores["linear_top1"] = linear_accuracy(train, test)
    return scores
