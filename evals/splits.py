"""Fixed label subsets for few-label probes and semi-supervised fine-tuning.

Two kinds of split file, one image per line:
- SimCLR's ImageNet 1% / 10% lists (``n01440764_10026.JPEG``): the class is the name's prefix before ``_``, the
  image is ``<root>/train/<class>/<name>``. Users bring their own copy; `resolve_split` checks it against
  the published SHA-256 (`verify_simclr_split`) (the lists themselves are not shipped).
- Our own lists for CIFAR and ImageFolder data (``3/0836_01.png`` or a CIFAR index ``#1234``), written once by
  `write_balanced_split`: class-balanced, deterministic from the seed, so every run and every method sees the
  same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mec.checkpoint import file_sha256, write_text_atomically

# SHA-256 of SimCLR's published split lists (12,811 and 128,116 lines).
SIMCLR_SHA256 = {
    "1percent.txt": "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17",
    "10percent.txt": "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091",
}


class SplitError(ValueError):
    """A split file that does not match the data: names the file, the line and the image."""


def balanced_subset(targets: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Indices of ``fraction`` of the images of every class (at least one each), drawn with ``seed``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        count = max(1, round(fraction * len(members)))
        picked.extend(rng.choice(members, count, replace=False).tolist())
    return sorted(picked)


def write_split(path: Path, lines: Sequence[str]) -> Path:
    """Write a split list atomically (one entry per line)."""
    return write_text_atomically(Path(path), "\n".join(lines) + "\n")


def split_lines_for(samples: Sequence[tuple[str, int]] | None, root: Path | None, indices: Sequence[int]) -> list[str]:
    """Entries for ``indices``: ImageFolder paths relative to ``root`` when there are samples, else ``#index``."""
    if samples is None:
        return [f"#{i}" for i in indices]
    return [Path(samples[i][0]).relative_to(root).as_posix() for i in indices]


def resolve_split(path: Path, samples: Sequence[tuple[str, int]] | None, root: Path | None,
                  size: int | None = None) -> list[int]:
    """Dataset indices named by a split file; a missing image is an error naming the file, line and image.

    A file named like one of SimCLR's lists (``1percent.txt``, ``10percent.txt``) must match its published
    checksum (`verify_simclr_split`): every protocol that reads a split reads it through here.
    """
    path = Path(path)
    if not path.exists():
        raise SplitError(f"split file {path} does not exist")
    if path.name in SIMCLR_SHA256:
        verify_simclr_split(path)
    by_name: dict[str, int] = {}
    by_basename: dict[str, int] = {}
    if samples is not None:
        for i, (file, _) in enumerate(samples):
            by_name[Path(file).relative_to(root).as_posix()] = i
            by_basename[Path(file).name] = i
    indices = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith("#"):
            index = int(entry[1:])
            if size is not None and not 0 <= index < size:
                raise SplitError(f"{path}:{number}: index {index} is outside the data set (0..{size - 1})")
            indices.append(index)
        elif "/" in entry:
            if entry not in by_name:
                raise SplitError(f"{path}:{number}: image {entry!r} is not in {root}")
            indices.append(by_name[entry])
        else:  # SimCLR style: a bare file name whose class is its prefix
            if entry not in by_basename:
                expected = Path(root or ".") / entry.split("_")[0] / entry
                raise SplitError(f"{path}:{number}: image {entry!r} is missing (expected {expected})")
            indices.append(by_basename[entry])
    if not indices:
        raise SplitError(f"split file {path} names no images")
    return indices


def verify_simclr_split(path: Path) -> None:
    """Check a user's copy of SimCLR's 1% / 10% list against the published checksum."""
    path = Path(path)
    expected = SIMCLR_SHA256.get(path.name)
    if expected is None:
        raise SplitError(f"{path}: not one of SimCLR's split lists {sorted(SIMCLR_SHA256)}")
    actual = file_sha256(path)
    if actual != expected:
        raise SplitError(f"{path}: SHA-256 {actual} does not match SimCLR's published list ({expected})")
