"""Fixed label subsets for few-label probes and semi-supervised fine-tuning.

Two kinds of split file, one image per line:
- SimCLR's ImageNet 1% / 10% lists (``n01440764_10026.JPEG``): the class is the name's prefix before ``_``, the
  image is ``<root>/train/<class>/<name>``. Users bring their own copy; `resolve_split` checks it against
  the published SHA-256 (`verify_simclr_split`; a copy with CRLF line endings passes) (the lists themselves are
  not shipped). A bare name found in several class folders is refused: such lists name ``class/file``.
- Our own lists for CIFAR and ImageFolder data (``3/0836_01.png`` or a CIFAR index ``#1234``), written once by
  `write_balanced_split`: class-balanced, deterministic from the seed, so every run and every method sees the
  same images.
"""

from __future__ import annotations

import hashlib
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
    files = _FolderFiles(samples, root) if samples is not None else None
    indices = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        entry = raw.strip()
        if entry:
            indices.append(_entry_index(f"{path}:{number}", entry, files, size))
    if not indices:
        raise SplitError(f"split file {path} names no images")
    return indices


class _FolderFiles:
    """The images of a folder data set by path relative to its root and by bare file name (several per name)."""

    def __init__(self, samples: Sequence[tuple[str, int]], root: Path | None) -> None:
        self.root = root
        self.by_name: dict[str, int] = {}
        self.by_basename: dict[str, list[str]] = {}
        for i, (file, _) in enumerate(samples):
            name = Path(file).relative_to(root).as_posix()
            self.by_name[name] = i
            self.by_basename.setdefault(Path(file).name, []).append(name)
        self.classes = {name.split("/")[0] for name in self.by_name if "/" in name}


def _entry_index(where: str, entry: str, files: _FolderFiles | None, size: int | None) -> int:
    """The data set index of one split line; ``where`` is ``file:line`` for the error."""
    if entry.startswith("#"):
        return _index_entry(where, entry, size)
    if "\\" in entry:
        raise SplitError(f"{where}: {entry!r} has Windows path separators '\\', which are not supported: "
                         "write class/file with '/'")
    if files is None:  # CIFAR and the like: no image files to name
        raise SplitError(f"{where}: got {entry!r}, but this data set has no image files: its split entries are "
                         "image indices '#<integer>' (file names and class/file paths need a folder data set)")
    if "/" in entry:
        if entry not in files.by_name:
            raise SplitError(f"{where}: image {entry!r} is not in {files.root}")
        return files.by_name[entry]
    return _bare_name_index(where, entry, files)


def _index_entry(where: str, entry: str, size: int | None) -> int:
    try:
        index = int(entry[1:])
    except ValueError:
        raise SplitError(f"{where}: expected an image index (an integer after '#'), got {entry!r}") from None
    if size is not None and not 0 <= index < size:
        raise SplitError(f"{where}: index {index} is outside the data set (0..{size - 1})")
    return index


def _bare_name_index(where: str, entry: str, files: _FolderFiles) -> int:
    """SimCLR style: a bare file name. Where its prefix before ``_`` names a class folder (ImageNet's
    ``n01440764_10026.JPEG``), the image must be in that folder; a name found in several folders is ambiguous."""
    candidates = files.by_basename.get(entry, [])
    prefix = entry.split("_")[0]
    if "_" in entry and prefix in files.classes:
        in_class = [name for name in candidates if name.split("/")[0] == prefix]
        if candidates and not in_class:
            raise SplitError(f"{where}: image {entry!r} is named for class {prefix!r} but is in "
                             f"{', '.join(candidates)} (under {files.root})")
        candidates = in_class
    if not candidates:
        expected = Path(files.root or ".") / prefix / entry
        raise SplitError(f"{where}: image {entry!r} is missing (expected {expected})")
    if len(candidates) > 1:
        raise SplitError(f"{where}: image {entry!r} is ambiguous: {', '.join(candidates)} share the name; "
                         "give class/file")
    return files.by_name[candidates[0]]


def verify_simclr_split(path: Path) -> None:
    """Check a user's copy of SimCLR's 1% / 10% list against the published checksum."""
    path = Path(path)
    expected = SIMCLR_SHA256.get(path.name)
    if expected is None:
        raise SplitError(f"{path}: not one of SimCLR's split lists {sorted(SIMCLR_SHA256)}")
    actual = file_sha256(path)
    if actual == expected:
        return
    # A copy saved on Windows has CRLF line endings: the same names, so the same images.
    if hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest() == expected:
        return
    raise SplitError(f"{path}: SHA-256 {actual} does not match SimCLR's published list ({expected})")
