"""`mec bench`: where a pretraining step's time goes, measured side by side in one process.

Each figure is images per second of one part, timed over the same number of batches after warm-up batches
(worker start-up, cuDNN's autotuning, compilation):

- ``step (synthetic views)``: model + loss + optimiser + teacher update on random views already on the device,
  the rate the input must reach;
- ``input per_image`` / ``input device``: each input path alone (`mec.pretrain_input`), workers as configured:
  files to views on the device;
- ``end to end``: the configured path's input and the step together, as `mec.train.train_one_epoch` runs them;
- ``busy``: end to end / synthetic step, the fraction of the step rate the whole loop keeps.

Ratios compare runs of the same process on the same machine, never figures from elsewhere. Without
``--data`` it writes a JPEG tree of ImageNet's average size (about 400 x 350 px) to a temporary folder.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from mec.config import Config, build_config
from mec.pretrain_input import build_pretrain_input
from mec.run import job_process
from mec.threads import job_cpus
from mec.train import check_steps, setup_pretraining, train_step

INPUT_PATHS = ("per_image", "device")


def write_jpeg_tree(root: Path, images: int, classes: int = 4, seed: int = 0) -> Path:
    """`images` JPEGs of 300-500 x 280-420 px (smooth random content plus noise, quality 90) as an ImageFolder
    under root/train/<class>/; returns root. Named <source>_<variant>, two variants a source, so that a config
    pairing renderings of one source (``data.positives=same_source``: the digits) reads them too."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    rng = np.random.default_rng(seed)
    for i in range(images):
        source, variant = divmod(i, 2)
        width, height = int(rng.integers(300, 500)), int(rng.integers(280, 420))
        coarse = Image.fromarray(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8))
        smooth = coarse.resize((width, height), Image.BILINEAR).filter(ImageFilter.GaussianBlur(1))
        noisy = np.asarray(smooth).astype(np.int16) + rng.integers(-20, 20, (height, width, 3))
        folder = root / "train" / f"class{source % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{source:06d}_{variant}.JPEG", quality=90)
    return root


def _with(cfg: Config, **changes: dict) -> Config:
    tree = cfg.model_dump(mode="json")
    for section, values in changes.items():
        tree[section] = tree[section] | values
    return build_config(tree, origin="bench")


def _rate(batches: Iterator, run: Callable, batch_size: int, warmup: int, steps: int, sync: Callable) -> float:
    """Images/s of `run(batch)` over `steps` batches after `warmup` untimed ones; `sync` waits for the device."""
    for batch in itertools.islice(batches, warmup):
        run(batch)
    sync()
    started = time.perf_counter()
    done = 0
    for batch in itertools.islice(batches, steps):
        run(batch)
        done += 1
    sync()
    if done < steps:
        raise ValueError(f"the data set gave {done + warmup} batches; the benchmark needs {warmup + steps}: "
                         "give more images (--images) or fewer --steps")
    return steps * batch_size / (time.perf_counter() - started)


def run_bench(cfg: Config, steps: int = 10, warmup: int = 3) -> dict[str, float]:
    """The figures of the module's docstring for `cfg` (its data, model, batch and workers), in images/s."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"the benchmark needs --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    with tempfile.TemporaryDirectory() as out, job_process(cfg.train.device, cfg.train.seed) as proc:
        cfg = _with(cfg, train={"output_dir": out}, monitor={"enabled": False})
        job = setup_pretraining(cfg, proc, None)
        device = proc.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        batch = proc.local_batch(cfg.optim.batch_size, "optim.batch_size")
        sizes = [cfg.data.image_size] * 2 + [cfg.data.multi_crop.local_size] * cfg.data.multi_crop.local_crops
        synthetic = tuple(torch.randn(batch, 3, s, s, device=device) for s in sizes)
        results = {"step (synthetic views)": _rate(
            itertools.repeat(synthetic), lambda views: train_step(job, 0, *views), batch, warmup, steps, sync)}
        for path in INPUT_PATHS:
            try:
                source = build_pretrain_input(_with(cfg, data={"loader": path}), proc)
            except ValueError as exc:  # ConfigError: this path cannot read this data set / recipe
                results[f"input {path}"] = float("nan")
                print(f"input {path}: not measured ({exc})")
                continue
            source.start_epoch(0, cfg.train.seed)
            results[f"input {path}"] = _rate(iter(source.loader), source.views, batch, warmup, steps, sync)
        job.input.start_epoch(0, cfg.train.seed)
        unread = []

        def one_step(batch_data) -> None:
            unread.append(train_step(job, 0, *job.input.views(batch_data)))
            if len(unread) == cfg.train.log_every:
                check_steps(job, unread)
                unread.clear()

        results[f"end to end ({job.input.path})"] = _rate(iter(job.input.loader), one_step, batch, warmup,
                                                          steps, sync)
        results["busy (end to end / step)"] = results[f"end to end ({job.input.path})"] / results[
            "step (synthetic views)"]
        return results


def describe_machine(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{where}, {job_cpus()} CPUs for this job, torch {torch.__version__}"


def format_results(results: dict[str, float], cfg: Config, machine: str) -> str:
    head = (f"mec bench: {cfg.name}, batch {cfg.optim.batch_size}, {cfg.data.image_size} px, "
            f"{cfg.model.arch} width {cfg.model.width}, data.num_workers={cfg.data.num_workers}; {machine}")
    rows = [f"  {name:<32} {value:>10.3f}" if name.startswith("busy") else f"  {name:<32} {value:>10.1f} img/s"
            for name, value in results.items()]
    return "\n".join([head, *rows])
