"""Readers of the tracking benchmarks' on-disk layouts: DAVIS-2017 (VOS), OTB (SOT) and MOTChallenge (MOT).

The offline videos (`evals.tracking.videos`) are written in the same layouts as the real data sets, so one reader
serves both. Readers return plain dataclasses of paths and arrays and check what a tracker would trip over later:
a missing sequence folder, a gap in the frame numbering, a ground-truth line that is not numbers, a frame count
that disagrees with the boxes. Each such problem is a `TrackingDataError` of one line naming the file (and line).

    DAVIS-2017  root/JPEGImages/480p/<seq>/00000.jpg, root/Annotations/480p/<seq>/00000.png (indexed PNGs),
                root/ImageSets/2017/<split>.txt
    OTB         root/<Seq>/img/0001.jpg, root/<Seq>/groundtruth_rect.txt (x,y,w,h per frame, 1-based pixels;
                root/<Seq>/groundtruth_rect.<N>.txt for the N-th target of a sequence with several, "<Seq>-<N>")
    MOT16/17    root/<split>/<seq>/img1/000001.jpg, gt/gt.txt, det/det.txt, seqinfo.ini
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class TrackingDataError(ValueError):
    """A tracking data set on disk is missing a file or holds one that cannot be read; one line naming the file."""


def _voc_palette(size: int = 256) -> np.ndarray:
    """The Pascal VOC colour map that DAVIS annotations use: index i's bits spread over the RGB high bits."""
    palette = np.zeros((size, 3), dtype=np.uint8)
    for index in range(size):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = rgb
    palette.flags.writeable = False
    return palette


DAVIS_PALETTE = _voc_palette()
"""[256, 3] uint8: 0 black (background), 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), 4 (0, 0, 128), ..."""

DAVIS_RESOLUTION = "480p"
OTB_GROUNDTRUTH = "groundtruth_rect.txt"
_OTB_TARGET = re.compile(r"^(?P<seq>.+)-(?P<target>\d+)$")
_SEPARATORS = re.compile(r"[,\s]+")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------------------------
# Shared checks


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise TrackingDataError(f"{path}: missing {what} folder")
    return path


def _numbered_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """The images of a frame folder in frame order; their numbers must run without a gap."""
    images = [p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.stem.isdigit()]
    if not images:
        raise TrackingDataError(f"{folder}: no frames (expected numbered {'/'.join(suffixes)} images)")
    images.sort(key=lambda p: int(p.stem))
    first = int(images[0].stem)
    for offset, path in enumerate(images):
        if int(path.stem) != first + offset:
            digits = len(images[0].stem)
            missing = folder / f"{first + offset:0{digits}d}{images[0].suffix}"
            raise TrackingDataError(
                f"{missing}: missing frame (the folder's images run from {images[0].name} to {images[-1].name})"
            )
    return images


def _numeric_rows(path: Path, min_columns: int, expected: str) -> np.ndarray:
    """A text file of numbers, one row per non-empty line (commas, tabs or spaces between them), as float64."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TrackingDataError(f"{path}: missing file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TrackingDataError(f"{path}: cannot read it ({error})") from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        fields = _SEPARATORS.split(stripped.strip(","))
        try:
            values = [float(value) for value in fields]
        except ValueError:
            values = []
        if len(values) < min_columns or (rows and len(values) != len(rows[0])) or not np.isfinite(values).all():
            raise TrackingDataError(f"{path}:{number}: expected {expected}, got {stripped!r}")
        rows.append(values)
    if not rows:
        return np.zeros((0, min_columns))
    return np.asarray(rows, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# DAVIS-2017


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: its frames in order and the annotation PNGs there are (every frame's for train and val,
    only the first frame's for test-dev), `masks[i]` being the annotation of the frame with the same stem."""

    name: str
    frames: list[Path]
    masks: list[Path]


def read_palette(path: str | Path) -> np.ndarray:
    """The palette of an indexed PNG as uint8 [N, 3]."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                raise TrackingDataError(f"{path}: expected an indexed (palette) PNG, got mode {image.mode!r}")
            raw = image.getpalette() or []
    except (FileNotFoundError, IsADirectoryError):
        raise TrackingDataError(f"{path}: missing mask") from None
    except OSError as error:
        raise TrackingDataError(f"{path}: not a readable image ({error})") from None
    return np.asarray(raw, dtype=np.uint8).reshape(-1, 3)


def read_mask(path: str | Path, palette: np.ndarray | Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """A DAVIS annotation as a uint8 label map [H, W] (0 background, 1..K objects).

    The PNG must be indexed (or 8-bit grey, whose values are the labels). With `palette` (say the first frame's
    `read_palette`), an indexed PNG whose palette differs from it on the entries both have is refused: its
    indices would name other objects than the first frame's.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            labels = np.asarray(image)
            raw = image.getpalette() if mode == "P" else None
    except (FileNotFoundError, IsADirectoryError):
        raise TrackingDataError(f"{path}: missing mask") from None
    except OSError as error:
        raise TrackingDataError(f"{path}: not a readable image ({error})") from None
    if mode not in ("P", "L"):
        raise TrackingDataError(f"{path}: expected an indexed (palette) PNG of object ids, got mode {mode!r}")
    if palette is not None:
        if raw is None:
            raise TrackingDataError(f"{path}: has no palette to compare with the first frame's (mode {mode!r})")
        own = np.asarray(raw, dtype=np.uint8).reshape(-1, 3)
        reference = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        shared = min(len(own), len(reference))
        if shared == 0 or not np.array_equal(own[:shared], reference[:shared]):
            raise TrackingDataError(f"{path}: its palette does not match the first frame's mask palette")
    return np.ascontiguousarray(labels, dtype=np.uint8)


def load_masks(sequence: DavisSequence) -> np.ndarray:
    """All annotations of a sequence as uint8 [M, H, W], each checked against the first frame's palette."""
    if not sequence.masks:
        raise TrackingDataError(f"sequence {sequence.name!r} has no annotations")
    first = Path(sequence.masks[0])
    with Image.open(first) as image:
        mode = image.mode
    palette = read_palette(first) if mode == "P" else None
    masks = [read_mask(path, palette) for path in sequence.masks]
    for path, mask in zip(sequence.masks, masks, strict=True):
        if mask.shape != masks[0].shape:
            raise TrackingDataError(f"{path}: mask size {mask.shape} differs from the first frame's {masks[0].shape}")
    return np.stack(masks)


def read_davis(root: str | Path, split: str = "val", resolution: str = DAVIS_RESOLUTION) -> list[DavisSequence]:
    """The sequences of `root/ImageSets/2017/<split>.txt`, in its order."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    try:
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise TrackingDataError(f"{listing}: missing sequence list for split {split!r}") from None
    if not names:
        raise TrackingDataError(f"{listing}: lists no sequence")
    sequences = []
    for name in names:
        frames = _numbered_images(_require_dir(root / "JPEGImages" / resolution / name, "frame"), (".jpg", ".jpeg"))
        annotations = _require_dir(root / "Annotations" / resolution / name, "annotation")
        masks = sorted((p for p in annotations.iterdir() if p.suffix.lower() == ".png"), key=lambda p: p.stem)
        stems = {frame.stem for frame in frames}
        for mask in masks:
            if mask.stem not in stems:
                raise TrackingDataError(f"{mask}: annotation of a frame that is not in {frames[0].parent}")
        if not masks or masks[0].stem != frames[0].stem:
            raise TrackingDataError(f"{annotations / (frames[0].stem + '.png')}: missing first-frame annotation")
        order = {frame.stem: index for index, frame in enumerate(frames)}
        masks.sort(key=lambda p: order[p.stem])
        sequences.append(DavisSequence(name, frames, masks))
    return sequences


# ---------------------------------------------------------------------------------------------------------------
# OTB


@dataclass(frozen=True)
class OtbSequence:
    """One OTB target: the frames in order and its box in each, float64 [T, 4] x, y, w, h (1-based pixels)."""

    name: str
    frames: list[Path]
    boxes: np.ndarray


def _otb_names(root: Path) -> list[str]:
    names = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / OTB_GROUNDTRUTH).is_file():
            names.append(folder.name)
            continue
        targets = sorted(folder.glob("groundtruth_rect.*.txt"), key=lambda p: p.name)
        names += [f"{folder.name}-{p.name.split('.')[1]}" for p in targets if p.name.split(".")[1].isdigit()]
    return names


def _otb_paths(root: Path, name: str) -> tuple[Path, Path]:
    """The sequence folder and ground-truth file of an OTB target name ("Basketball", "Jogging-1")."""
    folder = root / name
    if folder.is_dir():
        return folder, folder / OTB_GROUNDTRUTH
    match = _OTB_TARGET.match(name)
    if match and (root / match["seq"]).is_dir():
        folder = root / match["seq"]
        return folder, folder / f"groundtruth_rect.{match['target']}.txt"
    raise TrackingDataError(f"{folder}: missing sequence folder")


def read_otb_boxes(path: str | Path) -> np.ndarray:
    """An OTB ground-truth file as float64 [T, 4] x, y, w, h (commas, tabs or spaces between the numbers)."""
    path = Path(path)
    boxes = _numeric_rows(path, 4, "4 comma-separated numbers x,y,w,h")
    if boxes.shape[1] != 4:
        raise TrackingDataError(f"{path}: expected 4 comma-separated numbers x,y,w,h per line, got {boxes.shape[1]}")
    if not len(boxes):
        raise TrackingDataError(f"{path}: no boxes")
    return boxes


def read_otb(
    root: str | Path,
    names: Iterable[str] | None = None,
    *,
    frame_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[OtbSequence]:
    """The OTB targets `names` (default: every folder with a ground truth, sorted; "<Seq>-<N>" for the N-th target
    of a sequence with `groundtruth_rect.<N>.txt` files).

    Every image of `<Seq>/img/` is a frame unless `frame_ranges` gives the target's first and last image number
    (1-based, inclusive; OTB-100 annotates only part of a few sequences, e.g. David from image 300). The number of
    frames must equal the number of boxes.
    """
    root = Path(root)
    _require_dir(root, "OTB root")
    frame_ranges = dict(frame_ranges or {})
    sequences = []
    for name in _otb_names(root) if names is None else list(names):
        folder, groundtruth = _otb_paths(root, name)
        frames = _numbered_images(_require_dir(folder / "img", "image"))
        if name in frame_ranges:
            first, last = (int(v) for v in frame_ranges[name])
            numbers = [int(frame.stem) for frame in frames]
            if first not in numbers or last not in numbers or last < first:
                raise TrackingDataError(
                    f"{folder / 'img'}: frame range {first}..{last} of {name!r} is outside its images "
                    f"{numbers[0]}..{numbers[-1]}"
                )
            frames = frames[numbers.index(first) : numbers.index(last) + 1]
        boxes = read_otb_boxes(groundtruth)
        if len(boxes) != len(frames):
            raise TrackingDataError(
                f"{groundtruth}: {len(boxes)} boxes for {len(frames)} frames in {folder / 'img'}"
            )
        sequences.append(OtbSequence(name, frames, boxes))
    return sequences


# ---------------------------------------------------------------------------------------------------------------
# MOTChallenge


@dataclass(frozen=True)
class MotSequence:
    """One MOTChallenge sequence.

    gt: float64 rows frame, id, x, y, w, h, conf, class, visibility (MOT16/17; [0, 9] where there is no gt/gt.txt,
    as in test splits). det: float64 rows frame, -1, x, y, w, h, score, ... ([0, 7] without det/det.txt). Boxes are
    1-based pixels. info: the `[Sequence]` section of seqinfo.ini, numbers as int.
    """

    name: str
    frames: list[Path]
    gt: np.ndarray
    det: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def read_seqinfo(path: str | Path) -> dict[str, Any]:
    """The `[Sequence]` section of a MOTChallenge seqinfo.ini, with integer values as int."""
    path = Path(path)
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep MOT's camelCase keys
    try:
        with open(path) as stream:
            parser.read_file(stream)
    except FileNotFoundError:
        raise TrackingDataError(f"{path}: missing file") from None
    except configparser.Error as error:
        first_line = str(error).splitlines()[0]
        raise TrackingDataError(f"{path}: not an ini file ({first_line})") from None
    if not parser.has_section("Sequence"):
        raise TrackingDataError(f"{path}: no [Sequence] section")
    info: dict[str, Any] = {}
    for key, value in parser.items("Sequence"):
        info[key] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()
    return info


def _mot_rows(path: Path, columns: int, expected: str, num_frames: int) -> np.ndarray:
    if not path.is_file():
        return np.zeros((0, columns))
    rows = _numeric_rows(path, 6, expected)
    if len(rows):
        bad = np.flatnonzero((rows[:, 0] < 1) | (rows[:, 0] > num_frames) | (rows[:, 0] != np.round(rows[:, 0])))
        if bad.size:
            line = _line_of_row(path, int(bad[0]))
            raise TrackingDataError(f"{path}:{line}: frame {rows[bad[0], 0]:g} is outside 1..{num_frames}")
    return rows


def _line_of_row(path: Path, row: int) -> int:
    """The 1-based line number of the `row`-th non-empty line."""
    seen = -1
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            seen += 1
            if seen == row:
                return number
    return row + 1


def read_mot(root: str | Path, split: str = "train") -> list[MotSequence]:
    """The sequences of `root/<split>/`, sorted by name; each needs seqinfo.ini and `seqLength` frames in its
    image folder (`imDir`, default img1); gt/gt.txt and det/det.txt are read when there."""
    root = Path(root)
    split_dir = _require_dir(root / split, f"MOT split {split!r}")
    sequences = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        info = read_seqinfo(folder / "seqinfo.ini")
        image_dir = _require_dir(folder / str(info.get("imDir", "img1")), "image")
        suffix = str(info.get("imExt", ".jpg"))
        frames = _numbered_images(image_dir, (suffix.lower(),))
        length = info.get("seqLength")
        if isinstance(length, int) and length != len(frames):
            raise TrackingDataError(f"{folder / 'seqinfo.ini'}: seqLength={length} but {image_dir} has "
                                    f"{len(frames)} frames")
        if int(frames[0].stem) != 1:
            raise TrackingDataError(f"{frames[0]}: the first frame must be number 1")
        gt = _mot_rows(folder / "gt" / "gt.txt", 9, "comma-separated numbers frame,id,x,y,w,h,...", len(frames))
        det = _mot_rows(folder / "det" / "det.txt", 7, "comma-separated numbers frame,-1,x,y,w,h,score,...",
                        len(frames))
        sequences.append(MotSequence(str(info.get("name", folder.name)), frames, gt, det, info))
    if not sequences:
        raise TrackingDataError(f"{split_dir}: no sequence folders")
    return sequences
