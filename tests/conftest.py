"""Small real-format data shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

TINY_MODEL = {
    "arch": "resnet18", "width": 4, "cifar_stem": True, "projector": "released",
    "projector_hidden": 32, "embedding_dim": 32, "predictor_hidden": 16,
}


def write_image_folder(root: Path, per_class: int = 12, size: int = 24, variants: int = 1) -> Path:
    """A real ImageFolder tree: two classes (bright disc / dark bar) on noise, PNG files.

    variants > 1 names the files `<source>_<variant>.png`, `variants` per source (data.positives=same_source).
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split in ("train", "val"):
        for label, name in enumerate(("disc", "bar")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 80, (size, size, 3)).astype(np.uint8)
                cx, cy = rng.integers(6, size - 6, 2)
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 16 if label == 0 else (abs(xx - cx) < 2) & (abs(yy - cy) < 6)
                img[mask] = rng.integers(150, 255, 3)
                name = f"{i:03d}.png" if variants == 1 else f"{i // variants:03d}_{i % variants}.png"
                Image.fromarray(img).save(folder / name)
    return root


def write_tiny_mec_config(tmp_path: Path, *, epochs: int = 2, per_class: int = 16, deterministic: bool = False,
                          num_workers: int = 0) -> Path:
    """A `mec` config YAML for a width-4 network on a written ImageFolder tree: 4 steps per epoch at 16 per class."""
    data = write_image_folder(tmp_path / "data", per_class=per_class, size=16)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "data": {"name": "imagefolder", "root": str(data), "augment": "digits", "image_size": 16,
                 "num_workers": num_workers},
        "model": TINY_MODEL,
        "loss": {"eps": 2.0, "lambda_warmup_epochs": 1},
        "optim": {"batch_size": 8, "base_lr": 0.1, "epochs": epochs, "warmup_epochs": 1},
        "monitor": {"enabled": False},
        "train": {"log_every": 1, "deterministic": deterministic},
    }))
    return path
