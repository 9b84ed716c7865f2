"""Small real-format data shared by the test modules."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

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


def run_snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )


def planned_jobs(dry_run_output: str) -> list[dict[str, str]]:
    """The jobs of a dry run: rule name and its ``input:``/``output:``/``wildcards:`` lines."""
    jobs: list[dict[str, str]] = []
    for line in dry_run_output.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":"):
            jobs.append({"rule": line.split()[1].rstrip(":")})
        elif jobs and line.startswith("    ") and ":" in line:
            key, value = line.strip().split(":", 1)
            jobs[-1].setdefault(key, value.strip())
    return jobs


def job_wildcards(job: dict[str, str]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in job.get("wildcards", "").split(", ") if "=" in part)


def campaign_data(workdir: Path, campaign: Path) -> None:
    """Empty stand-ins at every data path the campaign reads (relative paths are the workflow directory's): what a
    dry run checks exists. Paths with a suffix (SimCLR's split lists) become empty files, the others folders."""
    from workflow.experiment import build_experiment

    for path in build_experiment(yaml.safe_load(campaign.read_text()), workdir).data_roots().values():
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)


CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_pickle(path: Path, payload: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(payload, f)


def write_cifar10(root: Path, images_per_file: int = 3) -> dict[str, np.ndarray]:
    """The python version's layout: pickled dicts with str keys, images as uint8 rows of R, G, B planes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in CIFAR10_FILES:
        data = rng.integers(0, 256, (images_per_file, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, images_per_file)]
        write_pickle(folder / name, {"batch_label": name, "data": data, "labels": labels})
        written[name] = data
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return written
