"""Frozen features extracted once per (backbone file, data split) and reused by every protocol that needs them.

kNN, t-SNE and transfer classification all read the same [N, D] features. The cache key hashes the backbone
file's bytes and the data identity (`mec.config.data_identity`: data set, root, split, transform), so a
retrained backbone or a changed data set never reuses stale features. Files are written atomically and read
with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from evals.job import load_frozen_backbone
from mec import checkpoint as ckpt
from mec.augment import eval_transform
from mec.config import Config, data_identity
from mec.data import build_eval_dataset, build_loader
from mec.monitor import Features, extract_features
from mec.run import select_device

log = logging.getLogger(__name__)


def feature_key(backbone: Path, cfg: Config, split: str) -> str:
    data = cfg.data
    return data_identity(data, backbone_sha256=ckpt.file_sha256(backbone), split=split,
                         transform=[data.augment, data.image_size])


def load_or_extract(path: Path, extract: Callable[[], Features], what: str) -> tuple[Features, bool]:
    """The features stored at ``path``, or ``extract()``-ed and stored there; the flag says "from the cache"."""
    if path.exists():
        stored = ckpt.load_checkpoint(path, required_keys=("features", "labels"))
        log.info("reusing cached %s features %s", what, path)
        return Features(stored["features"], stored["labels"]), True
    features = extract()
    ckpt.save_checkpoint(path, {"features": features.features, "labels": features.labels})
    log.info("extracted %s features %s -> %s", what, tuple(features.features.shape), path)
    return features, False


def cached_features(backbone: Path, cfg: Config, split: str, cache_dir: Path) -> tuple[Features, bool]:
    """Features of ``split`` under ``backbone``; the flag says whether they came from the cache."""
    path = Path(cache_dir) / f"{split}-{feature_key(Path(backbone), cfg, split)}.pt"

    def extract() -> Features:
        net, _ = load_frozen_backbone(backbone, cfg)
        device = select_device()
        dataset = build_eval_dataset(
            cfg.data.name, cfg.data.root, eval_transform(cfg.data.augment, cfg.data.image_size), split,
            download=cfg.data.download, digits_params=cfg.data.digits_params(),
            verify_checksums=cfg.data.verify_checksums,
        )
        loader = build_loader(dataset, 256, shuffle=False, drop_last=False, num_workers=cfg.data.num_workers,
                              seed=0, distributed=False)
        return extract_features(net.to(device), loader, device)

    return load_or_extract(path, extract, split)


def train_val_features(backbone: Path, cfg: Config, cache_dir: Path) -> tuple[Features, Features, bool]:
    train, hit_train = cached_features(backbone, cfg, "train", cache_dir)
    val, hit_val = cached_features(backbone, cfg, "val", cache_dir)
    return train, val, hit_train and hit_val

