"""Transfer classification by linear evaluation on frozen features (paper Table 8; SimCLR / BYOL protocol).

Features of the target data set's images (Resize + CenterCrop at the backbone's input size) are extracted once
per (backbone, data set, split) into the shared cache. An L2-regularised multinomial logistic regression
(scikit-learn, L-BFGS, standardised features) is fit for each C of a log grid on the training split and scored on
the validation split; the best C is refit on train + validation and scored on the test split. Metrics follow
the protocol: top-1, mean per-class accuracy for Aircraft, Pets, Caltech-101 and Flowers, 11-point mAP for
VOC2007 (multi-label, one-vs-rest). Data sets without an official validation split hold out a seeded,
class-balanced 20% of the training split; SUN397 and Caltech-101, which have no official split at all, use a
seeded split (SUN397: 50/50 per class; Caltech-101: 30 training images per class).

Options: ``dataset`` (a name of `DATASETS`), ``root`` (its folder, as torchvision expects it; no download),
``C`` (the grid), ``image_size`` (default: the pretraining data's image size, 224 for ImageNet backbones, as
`evals.transfer_finetune`; a 16 px digits backbone read 224 px images 200x slower, at a scale it never saw).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.datasets as tvd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from evals.features import load_or_extract
from evals.job import EvalJob, load_frozen_backbone
from evals.splits import balanced_subset
from mec import checkpoint as ckpt
from mec.augment import IMAGENET_MEAN, IMAGENET_STD
from mec.config import data_identity
from mec.data import _unverified
from mec.monitor import Features
from mec.run import select_device
from mec.threads import loader_workers

log = logging.getLogger(__name__)

DEFAULT_C = tuple(float(c) for c in np.logspace(-4, 3, 8))
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class TransferSet:
    """How to read one data set's splits with torchvision, and how it is scored."""

    build: Callable[[str, str, Any], Dataset]  # (root, split, transform) -> dataset
    splits: tuple[str, str | None, str]  # (train, validation or None, test) split names
    metric: str = "top1"  # "top1" | "mean_per_class" | "map11"


def _rgb(transform: Any) -> Any:
    return T.Compose([T.Lambda(lambda image: image.convert("RGB")), transform])


def _voc_labels(target: dict) -> list[int]:
    names = {obj["name"] for obj in target["annotation"]["object"]}
    return [int(name in names) for name in VOC_CLASSES]


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

DATASETS: dict[str, TransferSet] = {
    "CIFAR10": TransferSet(lambda r, s, t: tvd.CIFAR10(r, train=s == "train", transform=t), ("train", None, "test")),
    "CIFAR100": TransferSet(lambda r, s, t: tvd.CIFAR100(r, train=s == "train", transform=t), ("train", None, "test")),
    "Food101": TransferSet(lambda r, s, t: tvd.Food101(r, split=s, transform=t), ("train", None, "test")),
    "DTD": TransferSet(lambda r, s, t: tvd.DTD(r, split=s, partition=1, transform=t), ("train", "val", "test")),
    "Pets": TransferSet(lambda r, s, t: tvd.OxfordIIITPet(r, split=s, transform=t), ("trainval", None, "test"),
                        "mean_per_class"),
    "Flowers": TransferSet(lambda r, s, t: tvd.Flowers102(r, split=s, transform=t), ("train", "val", "test"),
                           "mean_per_class"),
    "Cars": TransferSet(lambda r, s, t: tvd.StanfordCars(r, split=s, transform=t), ("train", None, "test")),
    "Aircraft": TransferSet(lambda r, s, t: tvd.FGVCAircraft(r, split=s, transform=t), ("train", "val", "test"),
                            "mean_per_class"),
    "SUN397": TransferSet(lambda r, s, t: tvd.SUN397(r, transform=t), ("all", None, "all")),
    "Caltech101": TransferSet(lambda r, s, t: tvd.Caltech101(r, transform=_rgb(t)), ("all", None, "all"),
                              "mean_per_class"),
    "VOC2007": TransferSet(lambda r, s, t: tvd.VOCDetection(r, year="2007", image_set=s, transform=t,
                                                            target_transform=_voc_labels),
                           ("trainval", None, "test"), "map11"),
}


def center_crop_transform(size: int) -> Any:
    """How the protocols see a test image: Resize(size * 256/224) + CenterCrop(size), ImageNet normalisation."""
    return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _Flowers102Unverified(tvd.Flowers102):
    _file_dict: ClassVar[dict[str, tuple[str, None]]] = {
        key: (file, None) for key, (file, _) in tvd.Flowers102._file_dict.items()}


# The readers of generated miniatures (evals/transfer_sets.py) where torchvision checks files against the real
# data set's MD5, which no generated file can match: the same readers with the sums removed (files must exist).
UNVERIFIED_BUILDS: dict[str, Callable[[str, str, Any], Dataset]] = {
    "CIFAR10": lambda r, s, t: _unverified(tvd.CIFAR10)(r, train=s == "train", transform=t),
    "CIFAR100": lambda r, s, t: _unverified(tvd.CIFAR100)(r, train=s == "train", transform=t),
    "Flowers": lambda r, s, t: _Flowers102Unverified(r, split=s, transform=t),
}


def is_generated_set(name: str, root: str | Path) -> bool:
    """Whether ``root`` holds the offline miniature of ``name`` (`evals.transfer_sets`: its manifest says so)."""
    import json

    from mec.trees import MANIFEST_NAME

    try:
        params = json.loads((Path(root) / MANIFEST_NAME).read_text()).get("params", {})
    except (OSError, ValueError, AttributeError):
        return False
    return "transfer_sets_version" in params and params.get("name") == name


def open_split(name: str, root: str, split: str, transform: Any) -> Dataset:
    """One split of a `DATASETS` data set read by torchvision (no download); a missing folder raises one line.
    A generated miniature of a data set whose files torchvision checks by MD5 is read without the sums."""
    build = DATASETS[name].build
    if name in UNVERIFIED_BUILDS and is_generated_set(name, root):
        build = UNVERIFIED_BUILDS[name]
    try:
        return build(root, split, transform)
    except (RuntimeError, FileNotFoundError) as exc:
        raise FileNotFoundError(f"transfer data set {name} not found under {root} (split {split!r}): {exc}") \
            from None


def _features(job: EvalJob, name: str, root: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] features and labels ([N] or [N, classes]) of one split, from the cache when present."""
    identity = data_identity(None, length=20, backbone_sha256=ckpt.file_sha256(job.backbone), dataset=name,
                             root=Path(root), split=split, size=size)
    path = Path(job.feature_cache) / f"transfer-{name}-{split}-{identity}.pt"

    def extract() -> Features:
        dataset = open_split(name, root, split, center_crop_transform(size))
        net, _ = load_frozen_backbone(job.backbone, job.cfg)
        device = select_device()
        net = net.to(device).eval()
        feats, labels = [], []
        with torch.no_grad():
            workers = loader_workers(job.cfg.data.num_workers)
            for images, targets in DataLoader(dataset, batch_size=128, num_workers=workers):
                feats.append(net(images.to(device)).float().cpu())
                labels.append(torch.stack(targets, dim=1) if isinstance(targets, list)
                              else torch.as_tensor(np.asarray(targets)))
        # Unnormalised: the logistic regression standardises them itself.
        return Features(torch.cat(feats), torch.cat(labels))

    features, _ = load_or_extract(path, extract, f"{name} {split}")
    return features.features.numpy(), features.labels.numpy()


def score_outputs(metric: str, outputs: np.ndarray, y: np.ndarray) -> float:
    """The data set's metric: ``outputs`` are per-class scores [N, classes] for "map11" (``y`` [N, classes] of
    0/1; classes without a positive are left out), predicted labels [N] otherwise ("top1", "mean_per_class")."""
    if metric == "map11":
        return float(np.mean([_ap11(outputs[:, k], y[:, k]) for k in range(y.shape[1]) if y[:, k].any()]))
    if metric == "mean_per_class":
        return float(np.mean([np.mean(outputs[y == c] == c) for c in np.unique(y)]))
    return float(np.mean(outputs == y))


def _score(metric: str, clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    if metric == "map11":
        return score_outputs(metric, np.stack([est.decision_function(x) for est in clf], axis=1), y)
    return score_outputs(metric, clf.predict(x), y)


def _ap11(scores: np.ndarray, positives: np.ndarray) -> float:
    """PASCAL VOC2007's 11-point interpolated average precision."""
    order = np.argsort(-scores)
    hits = positives[order].astype(float)
    recall = np.cumsum(hits) / max(hits.sum(), 1)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))


def _fit(metric: str, x: np.ndarray, y: np.ndarray, c: float) -> Any:
    if metric == "map11":
        return [LogisticRegression(C=c, max_iter=1000).fit(x, y[:, k]) if 0 < y[:, k].sum() < len(y) else
                _Constant(float(y[:, k].mean())) for k in range(y.shape[1])]
    return LogisticRegression(C=c, max_iter=1000).fit(x, y)


class _Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value)


def _seeded_split(labels: np.ndarray, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SUN397 / Caltech-101 have no official split: a seeded, per-class one."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = len(members) // 2 if name == "SUN397" else min(30, len(members) - 1)
        train += members[:cut].tolist()
        test += members[cut:].tolist()
    return np.asarray(sorted(train)), np.asarray(sorted(test))


def split_indices(name: str, train_labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray | None,
                                                                           np.ndarray | None]:
    """Which images of the data set's training split (``splits[0]``, labels ``train_labels``: [N] or
    [N, classes]) train, validate and test: (train, val, test) index arrays into that split. ``val`` is None
    where the data set has an official validation split, ``test`` None where it has an official test split.
    Without an official test split (SUN397, Caltech-101) a seeded per-class split takes the test images; without
    an official validation split, a seeded, class-balanced `VALIDATION_FRACTION` of the training images."""
    train_split, val_split, test_split = DATASETS[name].splits
    train_idx, test_idx = np.arange(len(train_labels)), None
    if train_split == test_split:  # no official split
        train_idx, test_idx = _seeded_split(train_labels, name, seed)
    if val_split is not None:
        return train_idx, None, test_idx
    labels = train_labels[train_idx]
    held = np.zeros(len(labels), dtype=bool)
    held[balanced_subset(labels if labels.ndim == 1 else labels.argmax(1), VALIDATION_FRACTION, seed)] = True
    return train_idx[~held], train_idx[held], test_idx


def _train_val_test(job: EvalJob, name: str, root: str, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of the training, validation and test splits (held out / seeded where not official)."""
    train_split, val_split, test_split = DATASETS[name].splits
    x_all, y_all = _features(job, name, root, train_split, size)
    train_idx, val_idx, test_idx = split_indices(name, y_all, seed)
    test = _features(job, name, root, test_split, size) if test_idx is None else (x_all[test_idx], y_all[test_idx])
    val = _features(job, name, root, val_split, size) if val_idx is None else (x_all[val_idx], y_all[val_idx])
    return [(x_all[train_idx], y_all[train_idx]), val, test]


def _fit_and_score(metric: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                   c: float) -> float:
    """Standardise on ``train``, fit at ``c``, score on ``test``."""
    scaler = StandardScaler().fit(train[0])
    return _score(metric, _fit(metric, scaler.transform(train[0]), train[1], c), scaler.transform(test[0]), test[1])


def evaluate(job: EvalJob) -> dict[str, float]:
    job.check_options()
    name = job.option("dataset", None)
    if name not in DATASETS:
        raise ValueError(f"transfer: options.dataset must be one of {sorted(DATASETS)}, got {name!r}")
    root = job.option("root", None)
    if root is None:
        raise ValueError(f"transfer: options.root must name the folder holding {name}")
    grid = job.option("C", DEFAULT_C)
    if not isinstance(grid, list | tuple) or not grid or not all(
            isinstance(c, int | float) and not isinstance(c, bool) and c > 0 for c in grid):
        raise ValueError(f"transfer: options.C must be a list of positive numbers, got {grid!r}")
    grid = [float(c) for c in grid]
    image_size, seed = job.number_option("image_size", job.cfg.data.image_size, int), job.number_option("seed", 0, int)
    metric = DATASETS[name].metric
    with job.logged() as logger:  # FAILED if anything below fails
        logger.try_("log the metric name", logger.set_tags, {"transfer.metric": metric, "transfer.dataset": name})
        train, val, test = _train_val_test(job, name, root, image_size, seed)
        scores = {c: _fit_and_score(metric, train, val, c) for c in grid}
        best_c = max(scores, key=scores.get)
        train_and_val = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
        test_score = _fit_and_score(metric, train_and_val, test, best_c)
        metrics = {"transfer/score": test_score, "transfer/best_C": best_c, "transfer/val_score": scores[best_c]}
        for i, c in enumerate(grid):
            logger.log_metrics({"transfer/val_score_by_C": scores[c]}, step=i)
        logger.log_metrics(metrics, step=len(grid))
    log.info("transfer %s: %s %.4f (C=%g)", name, metric, test_score, best_c)
    return metrics
