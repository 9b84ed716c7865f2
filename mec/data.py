"""Data sets and loaders for pretraining and evaluation.

Every data set yields `(transform(image), label)` with a PIL RGB image as the transform's input, so a
`TwoViewTransform` gives `((view1, view2), label)`, a `MultiCropTransform` `((view1, view2, *local_views), label)`
and an evaluation transform gives `(tensor, label)`.

Supported names and on-disk layouts (`root` is the data root of the config):
- "digits": `mec.digits` renders the bundled UCI digits into `root/{train,val}/<class>/` on first use.
- "cifar10" / "cifar100": torchvision's python version, `root/cifar-10-batches-py` / `root/cifar-100-python`;
  "val" is the official test set.
- "imagefolder": ImageNet-style `root/train/<class>/<image>` and `root/val/<class>/<image>`.
- "places365": the same plain class-folder layout (see `build_pretrain_dataset`).

A folder data set never ends an epoch on a file it cannot read (corrupt, truncated, not an image, unreadable): it
serves the next readable file in its place, warns once per file and process naming it, and counts it across the
loader's workers (`skipped_images`). Grayscale, CMYK and PNG files are read, through Pillow's `convert("RGB")`.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, get_worker_info
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity

from mec.config import ConfigError
from mec.digits import write_digit_folders

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder", "places365")
SPLITS = ("train", "val")
# Where the two views of a pretraining pair come from: two augmentations of one image (SSL's usual), or
# two different files of one source (`<source>_<variant>.<ext>` in an ImageFolder, as `mec.digits` writes).
POSITIVES = ("same_image", "same_source")

Transform = Callable[[Any], Any]
Item = TypeVar("Item")

log = logging.getLogger(__name__)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


class DataIntegrityError(ConfigError):
    """A data file fails its checksum or is not in the format expected; the message names the file."""


def _cifar_files(dataset_class: type[CIFAR10]) -> list[tuple[str, str]]:
    """(file name, torchvision's MD5) of every file of the python version: batches, then the meta file."""
    files = [(file, md5) for file, md5 in dataset_class.train_list + dataset_class.test_list]
    return [*files, (dataset_class.meta["filename"], dataset_class.meta["md5"])]


def _unverified(dataset_class: type[CIFAR10]) -> type[CIFAR10]:
    """``dataset_class`` with every MD5 removed: torchvision then checks only that each file exists."""
    no_md5 = {
        "train_list": [[file, None] for file, _ in dataset_class.train_list],
        "test_list": [[file, None] for file, _ in dataset_class.test_list],
        "meta": dataset_class.meta | {"md5": None},
    }
    return type(dataset_class.__name__, (dataset_class,), no_md5)


def _cifar(
    dataset_class: type[CIFAR10], name: str, root: Path, transform: Transform, split: str, download: bool,
    verify_checksums: bool = True,
) -> CIFAR10:
    folder = root / dataset_class.base_folder
    reader = dataset_class if verify_checksums else _unverified(dataset_class)
    try:
        dataset = reader(root=str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as err:
        # torchvision says only "not found or corrupted"; tell missing files apart from damaged ones.
        files = _cifar_files(dataset_class)
        missing = [file for file, _ in files if not (folder / file).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name} data not found: expected the extracted python version in {folder} (missing: "
                f"{', '.join(missing)}); set data.download=true to download it, or place the data there"
            ) from err
        failed = [file for file, md5 in files if not check_integrity(str(folder / file), md5)]
        first = folder / (failed[0] if failed else files[0][0])
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DataIntegrityError(
            f"{name}: {first}{more} fails torchvision's MD5 check of the official file; replace it with the "
            "original, or delete the folder and set data.download=true, or set data.verify_checksums=false to "
            "read real-format batches from elsewhere"
        ) from None
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError,
            ImportError) as err:
        _check_cifar_files(dataset_class, name, folder, split)  # raises, naming the file and what is wrong
        raise DataIntegrityError(f"{name}: {folder} is not a batch of the python version "
                                 f"({type(err).__name__}: {err})") from None
    if not verify_checksums:
        # torchvision stacks whatever the pickles hold: a float array fails in PIL mid-epoch, missing or extra
        # labels shift every label after them, a label past the meta file's class names sizes heads wrongly.
        # The official files (MD5 checked) have none of this; files from elsewhere are checked here, per file.
        _check_cifar_files(dataset_class, name, folder, split)
    return dataset


# The python version's images: uint8 rows of 1024 red, 1024 green, then 1024 blue values (32 x 32).
_CIFAR_ROW = 3 * 32 * 32


def _read_cifar_pickle(name: str, path: Path) -> dict:
    """The dict a file of the python version unpickles to; DataIntegrityError naming the file otherwise."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as err:  # any failure to unpickle it: say which file and what the unpickler said
        raise DataIntegrityError(f"{name}: {path} is not a batch of the python version "
                                 f"({type(err).__name__}: {err})") from None
    if not isinstance(entry, dict):
        raise DataIntegrityError(f"{name}: {path} is not a batch of the python version (it holds a "
                                 f"{type(entry).__name__}, expected a dict)")
    return entry


def _keys(entry: dict) -> str:
    return ", ".join(sorted(map(repr, entry))) or "none"


def _cifar_batch_problem(entry: dict, label_key: str, classes: int, meta: str) -> str | None:
    """What is wrong with one unpickled batch (as torchvision reads it: `data`, and `labels` or else
    `fine_labels`), or None: `data` uint8 [N, 3072], N integer labels in [0, classes)."""
    if "data" not in entry:
        return f"no 'data' key (it has {_keys(entry)})"
    data = entry["data"]
    if not isinstance(data, np.ndarray):
        return f"'data' is a {type(data).__name__}, expected a uint8 array [N, {_CIFAR_ROW}]"
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        return f"'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, {_CIFAR_ROW}]"
    key = "labels" if "labels" in entry else "fine_labels" if "fine_labels" in entry else None
    if key is None:
        return f"no {label_key!r} key (it has {_keys(entry)})"
    try:
        labels = np.asarray(entry[key])
    except (TypeError, ValueError):  # ragged or otherwise not an array of numbers
        labels = np.asarray([None])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return f"{key!r} is not a list of integer class indices ({type(entry[key]).__name__} of {labels.dtype})"
    if len(labels) != len(data):
        return f"{len(data)} images but {len(labels)} labels"
    outside = labels[(labels < 0) | (labels >= classes)]
    if len(outside):
        return f"label {outside[0]} outside the {classes} classes of {meta}"
    return None


def _check_cifar_files(dataset_class: type[CIFAR10], name: str, folder: Path, split: str) -> None:
    """Raise DataIntegrityError naming the first file of ``split`` (or the meta file) that is not what
    torchvision's python version holds, and what is wrong with it."""
    meta_path = folder / dataset_class.meta["filename"]
    names_key = dataset_class.meta["key"]
    meta = _read_cifar_pickle(name, meta_path)
    class_names = meta.get(names_key)
    if not isinstance(class_names, (list, tuple)) or not class_names:
        got = f"a {type(class_names).__name__}" if names_key in meta else f"none (it has {_keys(meta)})"
        raise DataIntegrityError(f"{name}: {meta_path}: expected a non-empty list of class names under "
                                 f"{names_key!r}, got {got}")
    label_key = "fine_labels" if issubclass(dataset_class, CIFAR100) else "labels"
    for file, _ in dataset_class.train_list if split == "train" else dataset_class.test_list:
        path = folder / file
        problem = _cifar_batch_problem(_read_cifar_pickle(name, path), label_key, len(class_names),
                                       meta_path.name)
        if problem is not None:
            raise DataIntegrityError(f"{name}: {path}: {problem}")


# Slots of `UnreadableFiles.counts`: the main process adds to slot 0 and loader worker k to slot 1 + k % 63, so no
# two processes of a loader add to one slot and no lock is needed (a multiprocessing lock made in one start method's
# context cannot be sent to workers started by another; shared memory can).
_SKIP_SLOTS = 64
# This many unreadable files in a row is the data set failing (a lost mount), not a few bad files: raise.
MAX_UNREADABLE_IN_A_ROW = 100


class UnreadableImage(Exception):
    """A data set's loader could not read one file; the message names it and why."""


class UnreadableFiles:
    """The count of items a folder data set served in place of an unreadable file, shared with its loader's workers.

    The counts live in shared memory made with the data set, which DataLoader workers inherit (fork) or receive
    pickled (spawn, forkserver), so the main process sees the workers' counts (`total`).
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()  # per process: each worker warns once per file

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def count(self) -> None:
        worker = get_worker_info()
        self.counts[0 if worker is None else 1 + worker.id % (_SKIP_SLOTS - 1)] += 1

    def load(self, loader: Callable[[str], Any], path: str) -> Any:
        """loader(path), or UnreadableImage naming the file if it raises (warning once per file and process)."""
        try:
            return loader(path)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            # Pillow's UnidentifiedImageError repeats the path inside a file object's repr: say what it means.
            unknown = isinstance(err, UnidentifiedImageError)
            reason = "not an image format Pillow knows" if unknown else f"{type(err).__name__}: {err}"
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipped %s: cannot be read as an image (%s); the next readable file takes its place",
                            path, reason)
            raise UnreadableImage(f"{path} ({reason})") from err


def first_readable(load: Callable[[int], Item], index: int, size: int, unreadable: UnreadableFiles) -> Item:
    """load(index), or if its file is unreadable, load of the next index that reads: (index + 1) % size, ...

    The replacement is deterministic, so that a resumed run reads the same items. The item counts once as
    skipped however many files it tried; a file met while replacing another counts when its own index is read.
    """
    first_error = None
    for offset in range(min(size, MAX_UNREADABLE_IN_A_ROW)):
        try:
            item = load((index + offset) % size)
        except UnreadableImage as err:
            first_error = first_error or err
            continue
        if offset:
            unreadable.count()
        return item
    tried = min(size, MAX_UNREADABLE_IN_A_ROW)
    raise DataIntegrityError(f"{tried} files in a row from index {index} of a data set of {size} cannot be read as "
                             f"images, the first {first_error}: check the data folder")


class ReadableImageFolder(ImageFolder):
    """An `ImageFolder` that serves the next readable file in place of one it cannot read (`first_readable`)."""

    def __init__(self, root: str, transform: Transform | None = None, **kwargs: Any) -> None:
        super().__init__(root, transform=transform, **kwargs)
        self.unreadable = UnreadableFiles()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return first_readable(self._read, index, len(self.samples), self.unreadable)

    def _read(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        sample = self.unreadable.load(self.loader, path)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


def skipped_images(dataset: Dataset) -> int:
    """How many items `dataset` served in place of an unreadable file so far, in this process and its loader
    workers (0 for data sets that do not skip, such as CIFAR's, which is read whole when it is built)."""
    if isinstance(dataset, (Subset, SeededItems)):
        return skipped_images(dataset.dataset)
    unreadable = getattr(dataset, "unreadable", None)
    return unreadable.total if isinstance(unreadable, UnreadableFiles) else 0


def _image_folder(name: str, root: Path, transform: Transform, split: str) -> ImageFolder:
    split_dir = root / split
    layout = f"{root}/{split}/<class>/<image>"
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{name} split folder not found: {split_dir} (expected the layout {layout})")
    try:
        return ReadableImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as err:
        # torchvision raises this when there are no class folders, or when one class folder holds no image.
        classes = [d for d in split_dir.iterdir() if d.is_dir()]
        empty = sorted(d.name for d in classes if not any(
            f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS) for f in d.rglob("*")))
        if empty and len(empty) < len(classes):
            raise FileNotFoundError(
                f"{name} split folder {split_dir}: class folder(s) {empty[:5]}{' ...' if len(empty) > 5 else ''} "
                f"hold no image (extensions {', '.join(IMG_EXTENSIONS)}); add images or remove the folder(s)"
            ) from err
        raise FileNotFoundError(
            f"{name} split folder {split_dir} has no usable images ({err}); expected the layout {layout}"
        ) from err


class SourcePairs(Dataset):
    """Pairs of different files of one source object from an ImageFolder, one pair per source per epoch.

    The files of a source are named `<source>_<variant>.<ext>` (any class folder; `<source>` is the stem up to
    its last underscore). Item `i` picks two distinct variants of the i-th source and returns
    `((view1(a), view2(b)), label)` for a `TwoViewTransform` (`((view1(a), view2(b), *local_views(a)), label)`
    for a `MultiCropTransform`), so the pair differs by everything the renderer varied (colours, texture,
    position, scale, rotation) as well as by the augmentations. The variants are drawn from torch's RNG, which
    `build_loader` seeds per worker and epoch, so a resumed run draws the same pairs.

    With probability `1 - pair_p` both views come from the same file instead (SSL's usual pair): two crops
    of one rendering agree on many features even through a random network, which gives the objective aligned
    directions to spread from while the other pairs teach the renderer's nuisances (measured on the digits:
    pair_p 0.5 beat both 0 and 1).

    One item per source also keeps a source's variants from being negatives of each other in a batch: they
    differ only by nuisances, and telling them apart would teach exactly those.
    """

    def __init__(self, folder: ImageFolder, two_view: Transform, pair_p: float = 1.0) -> None:
        if not 0.0 <= pair_p <= 1.0:
            raise ValueError(f"pair_p must be a probability in [0, 1], got {pair_p!r}")
        if not (hasattr(two_view, "view1") and hasattr(two_view, "view2")):
            raise TypeError(f"SourcePairs needs a TwoViewTransform, got {type(two_view).__name__}")
        groups: dict[tuple[int, str], list[str]] = {}
        for path, label in folder.samples:
            stem = Path(path).stem
            source, sep, _ = stem.rpartition("_")
            if not sep:
                raise ValueError(
                    f"data.positives=same_source: file {path} is not named <source>_<variant>.<ext>; every "
                    "source needs at least two variants named this way"
                )
            groups.setdefault((label, f"{Path(path).parent}/{source}"), []).append(path)
        single = [key[1] for key, paths in groups.items() if len(paths) < 2]
        if single:
            raise ValueError(
                f"data.positives=same_source needs at least two files per source; {len(single)} source(s) have "
                f"one (first: {single[0]}); render more variants (data.digits.variants_train >= 2)"
            )
        self.loader = folder.loader
        # The folder's count when it has one (the same files), so that `skipped_images` reads either.
        self.unreadable = getattr(folder, "unreadable", None) or UnreadableFiles()
        self.pair_p = pair_p
        self.two_view = two_view
        self.sources = [(sorted(paths), label) for (label, _), paths in sorted(groups.items(), key=lambda kv: kv[0][1])]
        self.targets = [label for _, label in self.sources]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[tuple[Any, Any], int]:
        # A pair with an unreadable file is replaced by the next source's pair (`first_readable`).
        return first_readable(self._pair, index, len(self.sources), self.unreadable)

    def _pair(self, index: int) -> tuple[tuple[Any, Any], int]:
        paths, label = self.sources[index]
        first = int(torch.randint(len(paths), ()))
        second = first
        if float(torch.rand(())) < self.pair_p:
            # A second variant different from the first, uniformly among the others.
            second = (first + 1 + int(torch.randint(len(paths) - 1, ()))) % len(paths)
        image = self.unreadable.load(self.loader, paths[first])
        view1 = self.two_view.view1(image)
        view2 = self.two_view.view2(self.unreadable.load(self.loader, paths[second]))
        # A MultiCropTransform's local views are crops of view 1's file: each is then compared with one global
        # view of its own rendering and one of the other (mec.loss.multi_crop_pairs).
        local_views = getattr(self.two_view, "local_views", None)
        return (view1, view2, *(local_views(image) if local_views else ())), label


def _build_dataset(
    name: str,
    root: str | Path,
    transform: Transform,
    split: str,
    download: bool,
    digits_params: dict[str, Any] | None,
    verify_checksums: bool = True,
) -> Dataset:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")
    _check_split(split)
    root = Path(root)
    if name == "cifar10":
        return _cifar(CIFAR10, name, root, transform, split, download, verify_checksums)
    if name == "cifar100":
        return _cifar(CIFAR100, name, root, transform, split, download, verify_checksums)
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
    positives: str = "same_image",
    source_pair_p: float = 1.0,
    verify_checksums: bool = True,
) -> Dataset:
    """The images of data set `name` under `root` (split "train" or "val"), each passed through `transform`.

    positives: "same_image" applies the two-view `transform` to one image; "same_source" (folder data sets
        only) pairs two files of one source, see `SourcePairs` (`source_pair_p` is its `pair_p`).

    download: CIFAR only; otherwise missing files raise FileNotFoundError naming the expected folder.
    verify_checksums: CIFAR only; check each file against torchvision's MD5 (a mismatch raises
        `DataIntegrityError` naming the file), or only that each file holds what the python version holds
        (uint8 images [N, 3072], N integer labels within the meta file's classes): `DataIntegrityError` naming
        the first file that does not and what is wrong, when the data set is built.
    digits_params: keyword arguments of `mec.digits.write_digit_folders` (size, variants, seed and render
        knobs); the tree is rendered into `root` if it is missing or was rendered with other parameters.
        Ignored by the other data sets, so one config can carry it whatever the data set.

    Places365 is read as plain class folders (`root/train/<class>/...`, `root/val/<class>/...`), the way it
    is usually unpacked from the "small" or "challenge" archives. torchvision's `Places365` class is the
    alternative for its own layout (the archives plus the devkit's `categories_places365.txt` and
    `places365_{train_standard,val}.txt` file lists); it is not used here.
    """
    if positives not in POSITIVES:
        raise ValueError(f"unknown positives {positives!r}; expected one of {list(POSITIVES)}")
    if positives == "same_image":
        return _build_dataset(name, root, transform, split, download, digits_params, verify_checksums)
    if name in ("cifar10", "cifar100"):
        raise ValueError(f"data.positives=same_source needs files named <source>_<variant>; {name} has none")
    folder = _build_dataset(name, root, None, split, download, digits_params, verify_checksums)
    return SourcePairs(folder, transform, source_pair_p)


def build_eval_dataset(
    name: str,
    root: str | Path,
    transform: Transform,
    split: str,
    *,
    download: bool = False,
    digits_params: dict[str, Any] | None = None,
    verify_checksums: bool = True,
) -> Dataset:
    """A labelled split ("train" or "val") for kNN, probes and fine-tuning; arguments as `build_pretrain_dataset`.

    The same images as pretraining: evaluations differ only in the transform they pass.
    """
    return _build_dataset(name, root, transform, split, download, digits_params, verify_checksums)


# What SLURM sends to every process of a job step (preemption, time limit, scancel, Ctrl-C under srun).
JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker ignores the job's signals: the main process checkpoints and requeues (submitit), then
    the workers end with it. A worker that died of SIGTERM would make the main process raise "DataLoader
    worker ... is killed by signal" and turn a preemption into a failed job."""
    for signum in JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@functools.cache
def kill_deaf_workers_at_exit() -> None:
    """Make this process kill its loader workers when it exits, once (called whenever a loader with workers is
    built).

    multiprocessing's exit handler ends daemonic children, which loader workers are, with SIGTERM and then
    joins them; ours ignore SIGTERM (`leave_signals_to_the_main_process`), so a process that exits while a
    loader's workers still live would wait for them forever. That happens when a job fails with the loader
    still referenced: submitit re-raises the job's exception, and the traceback Python keeps at exit holds the
    frames whose loader keeps persistent workers (the device path's). A failed job then held its allocation
    until SLURM's time limit. atexit runs its handlers last registered first, so this one runs before
    multiprocessing's (registered when torch imported it) and its join finds the workers gone."""
    atexit.register(_kill_daemonic_children)


def _kill_daemonic_children() -> None:
    # torch's SIGCHLD handler would report each killed worker as "DataLoader worker ... is killed by signal",
    # burying the job's own error.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


_MASK64 = 2**64 - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s random draws in ``epoch`` of a loader seeded with ``seed``: chained
    splitmix64, so that neighbouring indices or epochs do not seed related streams."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ epoch) ^ index) >> 1


class SeededSampler(DistributedSampler):
    """A `DistributedSampler` whose indices come with their seeds, (index, `item_seed`), for `SeededItems`."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((index, item_seed(self.seed, self.epoch, index)) for index in super().__iter__())


class SeededItems(Dataset):
    """``dataset``'s items, each read with torch's default generator seeded with the seed its index comes with
    (`SeededSampler`); the generator's state is restored after, so in the main process (no workers) reading an
    item leaves the process' random stream as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index_and_seed: tuple[int, int]) -> Any:
        index, seed = index_and_seed
        state = torch.random.get_rng_state()
        torch.random.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(state)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    seed: int,
    distributed: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    seeded_items: bool = True,
) -> DataLoader:
    """A DataLoader whose order and augmentations are fixed by (seed, epoch) and, when distributed, split
    across ranks.

    The sampler is always a `DistributedSampler` (a single replica when not distributed) so that every caller
    does the same thing each epoch: call `loader.sampler.set_epoch(epoch)` before iterating, or every epoch
    repeats the first epoch's order and augmentations. With `distributed` (default: whether torch.distributed is
    initialised) each rank reads its 1/world share; `batch_size` is per process. Without `drop_last` the sampler
    pads the last share with repeated images so all ranks see the same count: run exact evaluations on one rank.

    With ``seeded_items`` (for data sets whose transforms draw at random from torch's default generator, as
    torchvision's and `mec.augment`'s do), each item is read with that generator seeded from (seed, epoch, index)
    (`SeededSampler`, `SeededItems`): an epoch's augmentations are the same whatever the number of workers or
    ranks, in the main process or in workers, and after a resume, so workers persist across epochs (no worker
    start per epoch). ``seeded_items=False`` is for data sets that draw nothing (the device path's file bytes,
    whose views are drawn in the main process). Workers ignore the job's signals
    (`leave_signals_to_the_main_process`) and are killed when the process exits (`kill_deaf_workers_at_exit`).
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
    if num_workers:
        kill_deaf_workers_at_exit()
    sampler = (SeededSampler if seeded_items else DistributedSampler)(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(
        SeededItems(dataset) if seeded_items else dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        # The workers' base seed is drawn from this, not from the process' stream, which a resume restores.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=leave_signals_to_the_main_process,
        # pin_memory only helps host-to-GPU copies, and warns when there is no GPU.
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )

