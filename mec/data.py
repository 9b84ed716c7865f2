"""Data sets and loaders for pretraining and evaluation.

Every data set yields `(transform(image), label)` with a PIL RGB image as the transform's input, so a
`TwoViewTransform` gives `((view1, view2), label)` and an evaluation transform gives `(tensor, label)`.

Supported names and on-disk layouts (`root` is the data root of the config):
- "digits": `mec.digits` renders the bundled UCI digits into `root/{train,val}/<class>/` on first use.
- "cifar10" / "cifar100": torchvision's python version, `root/cifar-10-batches-py` / `root/cifar-100-python`;
  "val" is the official test set.
- "imagefolder": ImageNet-style `root/train/<class>/<image>` and `root/val/<class>/<image>`.
- "places365": the same plain class-folder layout (see `build_pretrain_dataset`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

from mec.digits import write_digit_folders

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "places365")
SPLITS = ("train", "val")

Transform = Callable[[Any], Any]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def _cifar(
    dataset_class: type[CIFAR10], name: str, root: Path, transform: Transform, split: str, download: bool
) -> CIFAR10:
    folder = root / dataset_class.base_folder
    try:
        return dataset_class(root=str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as err:
        # torchvision says only "not found or corrupted"; tell missing files apart from damaged ones.
        expected = [file for file, _ in dataset_class.train_list + dataset_class.test_list]
        expected.append(dataset_class.meta["filename"])
        missing = [file for file in expected if not (folder / file).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name} data not found: expected the extracted python version in {folder} (missing: "
                f"{', '.join(missing)}); set data.download=true to download it, or place the data there"
            ) from err
        raise RuntimeError(
            f"{name} files in {folder} failed torchvision's MD5 integrity check ({err}); replace them with the "
            "original files, or delete the folder and set data.download=true"
        ) from err


def _image_folder(name: str, root: Path, transform: Transform, split: str) -> ImageFolder:
    split_dir = root / split
    layout = f"{root}/{split}/<class>/<image>"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{name} split folder not found: {split_dir} (expected the layout {layout})")
    try:
        return ImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as err:
        # torchvision raises this when there are no class folders or no images with a known extension.
        raise FileNotFoundError(
            f"{name} split folder {split_dir} has no usable images ({err}); expected the layout {layout}"
        ) from err


def _build_dataset(
    name: str,
    root: str | Path,
    transform: Transform,
    split: str,
    download: bool,
    digits_params: dict[str, Any] | None,
) -> Dataset:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")
    _check_split(split)
    root = Path(root)
    if name == "cifar10":
        return _cifar(CIFAR10, name, root, transform, split, download)
    if name == "cifar100":
        return _cifar(CIFAR100, name, root, transform, split, download)
    if name == "digits":
        write_digit_folders(root, **(digits_params or {}))
    return _image_folder(name, root, transform, split)


def build_pretrain_dataset(
    name: str,
    root: str | Path,
    transform: Transform,
    *,
    download: bool = False,
    split: str = "train",
    digits_params: dict[str, Any] | None = None,
) -> Dataset:
    """The images of data set `name` under `root` (split "train" or "val"), each passed through `transform`.

    download: CIFAR only; otherwise missing files raise FileNotFoundError naming the expected folder.
    digits_params: keyword arguments of `mec.digits.write_digit_folders` (size, variants, seed and render
        knobs); the tree is rendered into `root` if it is missing or was rendered with other parameters.
        Ignored by the other data sets, so one config can carry it whatever the data set.

    Places365 is read as plain class folders (`root/train/<class>/...`, `root/val/<class>/...`), the way it
    is usually unpacked from the "small" or "challenge" archives. torchvision's `Places365` class is the
    alternative for its own layout (the archives plus the devkit's `categories_places365.txt` and
    `places365_{train_standard,val}.txt` file lists); it is not used here.
    """
    return _build_dataset(name, root, transform, split, download, digits_params)


def build_eval_dataset(
    name: str,
    root: str | Path,
    transform: Transform,
    split: str,
    *,
    download: bool = False,
    digits_params: dict[str, Any] | None = None,
) -> Dataset:
    """A labelled split ("train" or "val") for kNN, probes and fine-tuning; arguments as `build_pretrain_dataset`.

    The same images as pretraining: evaluations differ only in the transform they pass.
    """
    return _build_dataset(name, root, transform, split, download, digits_params)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    seed: int,
    distributed: bool | None = None,
) -> DataLoader:
    """A DataLoader whose order is fixed by (seed, epoch) and, when distributed, split across ranks.

    The sampler is always a `DistributedSampler` (a single replica when not distributed) so that every caller
    does the same thing each epoch: call `loader.sampler.set_epoch(epoch)` before iterating, or every epoch
    repeats the first epoch's order. With `distributed` (default: whether torch.distributed is initialised)
    each rank reads its 1/world share; `batch_size` is per process. Without `drop_last` the sampler pads the
    last share with repeated images so all ranks see the same count: run exact evaluations on one rank.

    Augmentations run in the workers, seeded from `loader.generator` (seeded here with `seed` and the rank)
    each time an epoch's iterator starts its workers. Workers do not persist across epochs, so a caller that
    reseeds the generator per epoch (as pretraining does) gets the same augmentations after a resume as
    without one; the cost is one worker start per epoch. With `num_workers == 0` the transforms draw from
    the process' global torch RNG instead.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised
    elif distributed and not initialised:
        raise ValueError("distributed=True needs an initialised torch.distributed process group")
    world_size, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    generator = torch.Generator()
    # Distinct per rank so that ranks do not draw the same augmentations in lockstep.
    generator.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
        # pin_memory only helps host-to-GPU copies, and warns when there is no GPU.
        pin_memory=torch.cuda.is_available(),
    )
