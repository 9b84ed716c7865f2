"""Evaluations through the device input path on the CPU (`data.loader=device`): feature extraction against the
per-image path on the same JPEGs, a linear probe that finishes and logs its skipped file (either path), the probe's
seeded training views, and the recipes the path refuses.

Measured (a random width-4 ResNet-18, 16 px views of 19-41 px JPEGs, CPU): the two paths' L2-normalised features
differ by at most 3.5e-3 per coordinate, cosine similarity >= 0.99997 per image. The JPEGs decode to the same
pixels (libjpeg-turbo in both torchvision and Pillow); the views differ by at most one grey level, in 19% of the
pixels here (the 8-bit rounding of the two antialiased resizes, tests/test_batch_eval.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from mlflow.tracking import MlflowClient
from PIL import Image
from test_evals import _backbone, _job

from evals import run_protocol
from evals.features import INPUT_PATH, StaleFeaturesError, provenance, read_features, write_features
from mec import checkpoint as ckpt
from mec.batch_eval import ProbeTrainView, eval_loader
from mec.config import ConfigError, build_config
from mec.data import build_eval_dataset
from mec.encoded import DecodedLoader, EncodedImages

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29
SIDES = [(19, 27), (41, 30), (24, 24), (33, 37), (28, 21)]


def _write_jpegs(root: Path, per_class: int, broken: bool = False) -> Path:
    """An ImageFolder tree of JPEGs of different sizes, two classes (bright disc / dark bar on noise), one
    grayscale file per class; with ``broken`` one training file cut in half (the per-image path cannot read it)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(("disc", "bar")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = SIDES[i % len(SIDES)]
                yy, xx = np.mgrid[:h, :w]
                image = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
                cy, cx = h // 2 + rng.integers(-3, 4), w // 2 + rng.integers(-3, 4)
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 30 if label == 0 else (abs(xx - cx) < 2) & (abs(yy - cy) < 7)
                image[mask] = rng.integers(150, 255, 3)
                pil = Image.fromarray(image).convert("L" if i == 1 else "RGB")
                pil.save(folder / f"{i:03d}.JPEG", quality=90)
    if broken:
        path = root / "train" / "disc" / "000.JPEG"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root


def _config(root: Path, loader: str, augment: str = "imagenet", workers: int | str = 0) -> dict:
    data = {"name": "imagefolder", "root": str(root), "augment": augment, "image_size": 16, "loader": loader,
            "num_workers": workers}
    return build_config({"name": "tiny", "data": data, "model": TINY_MODEL}).model_dump(mode="json")


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Every job here picks the CPU (`select_device("auto")`), GPU or not: the device path with device cpu."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    return _write_jpegs(tmp_path_factory.mktemp("jpegs"), per_class=6)


def test_features_through_the_device_path_match_the_per_image_path_and_are_keyed_apart(tmp_path, jpegs):
    per_image, device = (build_config(_config(jpegs, loader)) for loader in ("per_image", "device"))
    backbone = _backbone(tmp_path / "b.pt", _config(jpegs, "per_image"))
    cpu = torch.device("cpu")
    reference, _ = write_features(tmp_path / "per_image.pt", backbone, per_image, "val")
    features, _ = write_features(tmp_path / "device.pt", backbone, device, "val")
    assert features.features.shape == reference.features.shape == (12, reference.features.shape[1])
    assert torch.equal(features.labels, reference.labels)
    # The views differ by at most one grey level (rounding of the resize), the JPEGs decode alike: measured max
    # 3.5e-3 per coordinate, cosine similarity >= 0.99997 per image.
    assert (features.features - reference.features).abs().max() < 1e-2
    assert (features.features * reference.features).sum(dim=1).min() > 0.9999
    # Decoded and resized differently: never one identity, so neither path's file is read as the other's.
    assert provenance(backbone, per_image, "val", cpu)["data_identity"] != \
        provenance(backbone, device, "val", cpu)["data_identity"]
    assert ckpt.load_checkpoint(tmp_path / "device.pt")[INPUT_PATH] == "device cpu"
    assert INPUT_PATH not in ckpt.load_checkpoint(tmp_path / "per_image.pt")
    with pytest.raises(StaleFeaturesError, match="read through the per_image input path where this job reads "
                                                 "through the device cpu one"):
        read_features(tmp_path / "per_image.pt", backbone, device, "val")


@pytest.mark.parametrize("loader", ["device", "per_image"])
def test_a_linear_probe_trains_through_either_path_and_logs_the_skipped_file(tmp_path, loader):
    root = _write_jpegs(tmp_path / "data", per_class=5, broken=True)
    config = _config(root, loader, workers="auto")  # the job's CPUs less one: a loader worker on 2 CPUs
    backbone = _backbone(tmp_path / "b.pt", config)
    job = _job(tmp_path, "linear_probe", config, backbone, epochs=1, batch_size=4)
    metrics = run_protocol(job)
    assert metrics["linear/train_images"] == 10 and 0.0 <= metrics["linear/top1_last"] <= 1.0
    client = MlflowClient(job.tracking_uri)
    assert len(client.get_metric_history(job.run_id, "linear/top1")) == 1
    assert [m.value for m in client.get_metric_history(job.run_id, "data/skipped_images")] == [1.0]


def test_the_device_path_refuses_a_recipe_it_does_not_implement(tmp_path, jpegs):
    config = _config(jpegs, "device", augment="digits")
    backbone = _backbone(tmp_path / "b.pt", config)
    with pytest.raises(ConfigError, match="data.loader=device: data.augment=digits"):
        write_features(tmp_path / "f.pt", backbone, build_config(config), "val")
    with pytest.raises(ConfigError, match="data.loader=device: data.augment=digits"):
        run_protocol(_job(tmp_path, "linear_probe", config, backbone, epochs=1, batch_size=4))


def test_the_probes_training_views_follow_the_epoch_seed_and_nothing_else(jpegs):
    """`DecodedLoader.set_epoch` fixes the sample order and the views: the same (epoch, seed) gives the same
    batches, whatever the global RNG; another seed gives other crops."""
    encoded = EncodedImages.from_folder(build_eval_dataset("imagefolder", jpegs, None, "train"))
    loader = eval_loader(encoded, 4, ProbeTrainView(16), "cpu", shuffle=True, num_workers=0, seed=0)
    assert isinstance(loader, DecodedLoader) and len(loader) == 3

    def epoch(number: int, seed: int) -> list[torch.Tensor]:
        loader.set_epoch(number, seed)
        torch.manual_seed(number + seed + 1)
        return [torch.cat([images.flatten(), labels.float()]) for images, labels in loader]

    first = epoch(0, 7)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 7), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, epoch(0, 8), strict=True))
    with pytest.raises(ValueError, match="DecodedLoader reads EncodedImages"):
        DecodedLoader(eval_loader(build_eval_dataset("imagefolder", jpegs, None, "val"), 4, ProbeTrainView(16),
                                  "cpu", shuffle=False, num_workers=0, seed=0), "cpu", ProbeTrainView(16))
