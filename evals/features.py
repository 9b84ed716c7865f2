"""Frozen features extracted once per (backbone file, data split) and reused by every protocol that needs them.

kNN and t-SNE read the same [N, D] features of the evaluated run's data (which splits: `evals.FEATURE_SPLITS`).
Each file stores, beside the features and labels, what they were computed from: the backbone file's sha256 and
the data identity (`mec.config.data_identity`: data set, root, split, transform), checked whenever it is read.
The transform's identity names the input path too (`data.loader`, `mec.config.resolve_loader`): features of
images decoded and resized on the device (`mec.batch_eval.center_view` after `mec.encoded.ImageDecoder`) differ
slightly from the per-image path's (Pillow), so the device path's identity adds "device" and the device type
(nvJPEG on a GPU decodes differently from libjpeg on the CPU) and its files say so (``input_path``); the
per-image path's identity is what it always was. A file of either path is never read as the other's.

- In the DAG, a ``features`` job of its own writes ``<output>/features/<run>/<split>.pt`` (`write_features`)
  and the evaluations are given that path (``EvalJob.features``); a file there computed from another backbone
  or data is refused, naming the file and what was expected (`read_features`).
- Without the DAG (a protocol called directly), features go to a content-keyed cache under
  ``EvalJob.feature_cache`` (`cached_features`), whose name hashes the same identity; a stale file there is
  extracted again.

Files are written atomically (`mec.checkpoint.save_checkpoint`) and read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from evals.job import EvalJob, load_frozen_backbone
from mec import checkpoint as ckpt
from mec.augment import eval_transform
from mec.batch_eval import CenterView, eval_loader, input_dataset
from mec.config import Config, DataConfig, data_identity, resolve_loader
from mec.data import build_eval_dataset
from mec.encoded import skipped_images
from mec.monitor import Features, extract_features
from mec.run import select_device
from mec.threads import loader_workers

log = logging.getLogger(__name__)


class StaleFeaturesError(RuntimeError):
    """A feature file computed from another backbone or data than the one it is read for."""


INPUT_PATH = "input_path"  # the provenance key of a device-path file ("device cuda"); per-image files have none
PER_IMAGE = "per_image"


def input_path(data: DataConfig, device: torch.device | None = None) -> str:
    """How this job reads the images: "per_image", or "device <type>" (decoded and resized on that device)."""
    device = select_device() if device is None else device
    return PER_IMAGE if resolve_loader(data, device.type) == PER_IMAGE else f"device {device.type}"


def transform_identity(data: DataConfig, path: str) -> list[Any]:
    """The transform's part of the data identity: recipe and size, and the input ``path`` (`input_path`) unless
    per-image."""
    return [data.augment, data.image_size] + ([] if path == PER_IMAGE else path.split())


def provenance(backbone: Path, cfg: Config, split: str, device: torch.device | None = None) -> dict[str, str]:
    """What features of ``split`` under ``backbone`` are computed from: the file's bytes and the data identity
    (with this job's input path, on ``device``: default `select_device()`), the path resolved once for both."""
    data = cfg.data
    path = input_path(data, device)
    identity = {"backbone_sha256": ckpt.file_sha256(backbone),
                "data_identity": data_identity(data, split=split, transform=transform_identity(data, path))}
    return identity if path == PER_IMAGE else identity | {INPUT_PATH: path}


def feature_key(backbone: Path, cfg: Config, split: str, device: torch.device | None = None) -> str:
    """The content-keyed cache's name for these features (the lazy path, without the DAG)."""
    data = cfg.data
    return data_identity(data, backbone_sha256=ckpt.file_sha256(backbone), split=split,
                         transform=transform_identity(data, input_path(data, device)))


def load_or_extract(path: Path, extract: Callable[[], Features], what: str,
                    expected: Mapping[str, str] | None = None, *, strict: bool = False) -> tuple[Features, bool]:
    """The features stored at ``path``, or ``extract()``-ed and stored there; the flag says "from the cache".

    ``expected``: the provenance the stored file must carry (`provenance`), stored with new features. A file
    without it is extracted again, or with ``strict`` refused (`StaleFeaturesError` naming the file).
    """
    expected = dict(expected or {})
    if path.exists():
        stored = ckpt.load_checkpoint(path, required_keys=("features", "labels"))
        found = {key: stored.get(key) for key in expected}
        if found == expected:
            log.info("reusing cached %s features %s", what, path)
            return Features(stored["features"], stored["labels"]), True
        mismatch = "; ".join(f"{key} {found[key]} where {value} was expected" for key, value in expected.items()
                             if found[key] != value)
        paths = stored.get(INPUT_PATH, PER_IMAGE), expected.get(INPUT_PATH, PER_IMAGE)
        if paths[0] != paths[1]:
            mismatch += (f"; read through the {paths[0]} input path where this job reads through the {paths[1]} one "
                         "(data.loader: give the features job and its readers the same device, or set data.loader)")
        if strict:
            raise StaleFeaturesError(f"feature file {path} was computed from another backbone or data ({mismatch}); "
                                     "delete it, or rerun the rule that writes it")
        log.warning("%s features %s are stale (%s): extracting them again", what, path, mismatch)
    features = extract()
    ckpt.save_checkpoint(path, {"features": features.features, "labels": features.labels, **expected})
    log.info("extracted %s features %s -> %s", what, tuple(features.features.shape), path)
    return features, False


def _extractor(backbone: Path, cfg: Config, split: str) -> Callable[[], Features]:
    def extract() -> Features:
        net, _ = load_frozen_backbone(backbone, cfg)
        device, data = select_device(), cfg.data
        per_image = input_path(data, device) == PER_IMAGE
        dataset = build_eval_dataset(
            data.name, data.root, eval_transform(data.augment, data.image_size) if per_image else None, split,
            **data.dataset_options(),
        )
        loader = eval_loader(input_dataset(dataset, per_image), 256, CenterView(data.image_size), device,
                             shuffle=False, num_workers=loader_workers(data.num_workers), seed=0)
        features = extract_features(net.to(device), loader, device)
        if skipped_images(loader):
            log.warning("%s features: %d unreadable image(s) skipped, each replaced by another image",
                        split, skipped_images(loader))
        return features

    return extract


def write_features(path: Path, backbone: Path, cfg: Config, split: str) -> tuple[Features, bool]:
    """The features job: ``split`` under ``backbone`` at ``path``, kept if already there, else (re)extracted."""
    backbone = Path(backbone)
    return load_or_extract(Path(path), _extractor(backbone, cfg, split), split, provenance(backbone, cfg, split))


def read_features(path: Path, backbone: Path, cfg: Config, split: str) -> tuple[Features, bool]:
    """Features an evaluation was given the file of: refused if computed from another backbone or data
    (`StaleFeaturesError`); extracted there if missing (an evaluation run outside the DAG)."""
    backbone = Path(backbone)
    return load_or_extract(Path(path), _extractor(backbone, cfg, split), split, provenance(backbone, cfg, split),
                           strict=True)


def cached_features(backbone: Path, cfg: Config, split: str, cache_dir: Path) -> tuple[Features, bool]:
    """Features of ``split`` under ``backbone`` from the content-keyed cache; the flag says "from the cache"."""
    backbone = Path(backbone)
    return write_features(Path(cache_dir) / f"{split}-{feature_key(backbone, cfg, split)}.pt", backbone, cfg, split)


def job_features(job: EvalJob, split: str) -> tuple[Features, bool]:
    """An evaluation's features of ``split``: the file it was given (``job.features``), else the cache's."""
    if split in job.features:
        return read_features(Path(job.features[split]), Path(job.backbone), job.cfg, split)
    return cached_features(Path(job.backbone), job.cfg, split, Path(job.feature_cache))
