"""Readers of the tracking benchmarks' on-disk layouts: DAVIS-2017 (VOS), OTB (SOT), MOTChallenge (MOT), MOTS
Challenge (MOTS) and PoseTrack18.

The offline videos (`evals.tracking.videos`) are written in the same layouts as the real data sets, so one reader
serves both. Readers return plain dataclasses of paths and arrays and check what a tracker would trip over later:
a missing sequence folder, a gap in the frame numbering, a ground-truth line that is not numbers, a frame count
that disagrees with the boxes. Each such problem is a `TrackingDataError` of one line naming the file (and line).

    DAVIS-2017  root/JPEGImages/480p/<seq>/00000.jpg, root/Annotations/480p/<seq>/00000.png (indexed PNGs),
                root/ImageSets/2017/<split>.txt
    OTB         root/<Seq>/img/0001.jpg, root/<Seq>/groundtruth_rect.txt (x,y,w,h per frame, 1-based pixels;
                root/<Seq>/groundtruth_rect.<N>.txt for the N-th target of a sequence with several, "<Seq>-<N>")
    MOT16/17    root/<split>/<seq>/img1/000001.jpg, gt/gt.txt, det/det.txt, seqinfo.ini
    MOTS        root/<split>/<seq>/img1/000001.jpg, gt/gt.txt, det/det.txt (MOTS text lines, COCO RLE masks),
                seqinfo.ini
    PoseTrack18 root/annotations/<split>/<video>.json, root/images/<split>/<video>/000000.jpg, given poses in
                root/detections/<split>/<video>.json
"""

from __future__ import annotations

import configparser
import json
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


def read_frames(paths: Sequence[Path]) -> list[np.ndarray]:
    """uint8 [H, W, 3] RGB frames (grey and palette images converted); an unreadable image is a TrackingDataError
    naming it."""
    frames = []
    for path in paths:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise TrackingDataError(f"{path}: not a readable image ({error})") from None
    return frames


def _read_text(path: Path) -> str:
    """A text file's content; a missing or unreadable file is a TrackingDataError naming it."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise TrackingDataError(f"{path}: missing file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TrackingDataError(f"{path}: cannot read it ({error})") from None


def _numeric_rows(path: Path, min_columns: int, expected: str) -> np.ndarray:
    """A text file of numbers, one row per non-empty line (commas, tabs or spaces between them), as float64."""
    text = _read_text(path)
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
    if not len(rows):  # an empty file: the same [0, columns] as no file, for code that slices the columns
        return np.zeros((0, columns))
    bad = np.flatnonzero((rows[:, 0] < 1) | (rows[:, 0] > num_frames) | (rows[:, 0] != np.round(rows[:, 0])))
    if bad.size:
        line = _line_of_row(path, int(bad[0]))
        raise TrackingDataError(f"{path}:{line}: frame {rows[bad[0], 0]:g} is outside 1..{num_frames}")
    return rows


def _require_detections(path: Path, task: str) -> None:
    """A task that tracks given detections would score a sequence without its file as a tracker that found
    nothing, averaged in with the rest; an empty file is how a sequence says it has no detections."""
    if not path.is_file():
        raise TrackingDataError(f"{path}: missing file ({task} tracks the given detections of every sequence; "
                                "an empty file stands for a sequence without any)")


def _line_of_row(path: Path, row: int) -> int:
    """The 1-based line number of the `row`-th non-empty line."""
    seen = -1
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            seen += 1
            if seen == row:
                return number
    return row + 1


def read_mot(root: str | Path, split: str = "train", *, require_det: bool = False) -> list[MotSequence]:
    """The sequences of `root/<split>/`, sorted by name; each needs seqinfo.ini and `seqLength` frames in its
    image folder (`imDir`, default img1); gt/gt.txt and det/det.txt are read when there (det/det.txt must be
    there with `require_det`)."""
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
        if require_det:
            _require_detections(folder / "det" / "det.txt", "MOT")
        gt = _mot_rows(folder / "gt" / "gt.txt", 9, "comma-separated numbers frame,id,x,y,w,h,...", len(frames))
        det = _mot_rows(folder / "det" / "det.txt", 7, "comma-separated numbers frame,-1,x,y,w,h,score,...",
                        len(frames))
        sequences.append(MotSequence(str(info.get("name", folder.name)), frames, gt, det, info))
    if not sequences:
        raise TrackingDataError(f"{split_dir}: no sequence folders")
    return sequences


# ---------------------------------------------------------------------------------------------------------------
# COCO run-length encoding (the masks of MOTS text files)
#
# A COCO RLE is a mask read column by column (Fortran order) as alternating runs of 0s and 1s, the first run being
# 0s; its "counts" string packs each run length (from the fourth on, as the difference to the run two before) in
# 5-bit groups, least significant first, each group a character 48 + group, 0x20 marking "more groups follow" and
# 0x10 of the last group the sign. This is the format pycocotools' `mask.encode` / `mask.decode` read and write
# (`rleToString` / `rleFrString` in its maskApi.c); it is written here so that a malformed string or one whose runs
# do not add up to height x width is an error naming the line, where pycocotools decodes some of those silently.


def rle_counts(counts: str) -> list[int]:
    """The run lengths of a COCO RLE counts string; ValueError when it is not one."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value = shift = 0
        more = True
        while more:
            if position >= len(counts):
                raise ValueError("the RLE string ends inside a run length")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"{counts[position]!r} at {position} is not an RLE character")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs) + 1} of the RLE string has negative length {value}")
        runs.append(value)
    return runs


def rle_decode(counts: str, height: int, width: int) -> np.ndarray:
    """The bool mask [height, width] of a COCO RLE counts string; ValueError unless its runs cover exactly
    height x width pixels."""
    runs = rle_counts(counts)
    total = sum(runs)
    if total != height * width:
        raise ValueError(f"the RLE covers {total} pixels, not {height}x{width} = {height * width}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape((height, width), order="F")


def rle_encode(mask: np.ndarray) -> str:
    """The COCO RLE counts string of a 2-D mask (non-zero = in the mask), as pycocotools' `mask.encode` writes it."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}")
    flat = mask.ravel(order="F").astype(bool)
    if flat.size == 0:
        return ""
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)
    chars = []
    for index, run in enumerate(runs):
        value = int(run) - (int(runs[index - 2]) if index > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(chars)


# ---------------------------------------------------------------------------------------------------------------
# MOTS (MOTS Challenge / KITTI MOTS text files)

MOTS_PEDESTRIAN = 2  # the MOTS Challenge's class (KITTI MOTS: 1 car, 2 pedestrian)
MOTS_IGNORE = 10  # ignore regions (id 10000), as TrackEval's MOTSChallenge reads them
MOTS_COLUMNS = "space-separated frame id class_id img_height img_width rle"


@dataclass(frozen=True)
class MotsObject:
    """One line of a MOTS file: frame (1-based), object id (class_id * 1000 + instance in the ground truth, -1 in
    detections), class, image size, COCO RLE counts, and a score (detections; 1.0 where the file has none)."""

    frame: int
    track_id: int
    class_id: int
    height: int
    width: int
    rle: str
    score: float = 1.0

    def mask(self) -> np.ndarray:
        """The decoded bool mask [height, width]."""
        return rle_decode(self.rle, self.height, self.width)

    def line(self, with_score: bool = False) -> str:
        text = f"{self.frame} {self.track_id} {self.class_id} {self.height} {self.width} {self.rle}"
        return f"{text} {self.score:.4f}" if with_score else text


@dataclass(frozen=True)
class MotsSequence:
    """One MOTS sequence: frames in order, ground-truth objects (gt/gt.txt; empty without it) and given detections
    (det/det.txt; empty without it), each sorted by frame; info: seqinfo.ini's `[Sequence]` section."""

    name: str
    frames: list[Path]
    gt: list[MotsObject]
    det: list[MotsObject]
    info: dict[str, Any] = field(default_factory=dict)


def read_mots_file(
    path: str | Path,
    *,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    scores: bool = False,
) -> list[MotsObject]:
    """The lines of a MOTS text file (`frame id class_id img_height img_width rle`, a 7th column `score` where
    `scores`), checked: integers where integers belong, frame in 1..num_frames, the image size equal to `size`
    (height, width) when given, and an RLE that decodes to exactly that many pixels. A bad line is a
    TrackingDataError naming the file and line."""
    path = Path(path)
    text = _read_text(path)
    expected = MOTS_COLUMNS + (" [score]" if scores else "")
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6 and not (scores and len(fields) == 7):
            raise TrackingDataError(f"{path}:{number}: expected {expected}, got {line.strip()!r}")
        try:
            frame, track_id, class_id, height, width = (int(value) for value in fields[:5])
            score = float(fields[6]) if len(fields) == 7 else 1.0
        except ValueError:
            raise TrackingDataError(f"{path}:{number}: expected {expected}, got {line.strip()!r}") from None
        if not np.isfinite(score):
            raise TrackingDataError(f"{path}:{number}: score {fields[6]!r} is not a finite number")
        if frame < 1 or (num_frames is not None and frame > num_frames):
            raise TrackingDataError(f"{path}:{number}: frame {frame} is outside 1..{num_frames}")
        if height < 1 or width < 1:
            raise TrackingDataError(f"{path}:{number}: image size {height}x{width} is not positive")
        if size is not None and (height, width) != tuple(size):
            raise TrackingDataError(
                f"{path}:{number}: mask size {height}x{width} differs from the image size {size[0]}x{size[1]}")
        try:
            rle_decode(fields[5], height, width)
        except ValueError as error:
            raise TrackingDataError(f"{path}:{number}: bad RLE ({error})") from None
        objects.append(MotsObject(frame, track_id, class_id, height, width, fields[5], score))
    objects.sort(key=lambda obj: obj.frame)
    return objects


def read_mots(root: str | Path, split: str = "train", *, require_det: bool = False) -> list[MotsSequence]:
    """The sequences of a MOTS Challenge tree `root/<split>/<seq>/` (img1/, seqinfo.ini, gt/gt.txt, det/det.txt),
    sorted by name. Like `read_mot`: seqinfo.ini and `seqLength` frames numbered from 1 are required; gt/gt.txt and
    det/det.txt are read when there (det.txt may carry a 7th column, the score; it must be there with
    `require_det`). Masks must have the image size of seqinfo.ini (imHeight x imWidth) when it gives one."""
    root = Path(root)
    split_dir = _require_dir(root / split, f"MOTS split {split!r}")
    sequences = []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        info = read_seqinfo(folder / "seqinfo.ini")
        image_dir = _require_dir(folder / str(info.get("imDir", "img1")), "image")
        frames = _numbered_images(image_dir, (str(info.get("imExt", ".jpg")).lower(),))
        length = info.get("seqLength")
        if isinstance(length, int) and length != len(frames):
            raise TrackingDataError(f"{folder / 'seqinfo.ini'}: seqLength={length} but {image_dir} has "
                                    f"{len(frames)} frames")
        if int(frames[0].stem) != 1:
            raise TrackingDataError(f"{frames[0]}: the first frame must be number 1")
        height, width = info.get("imHeight"), info.get("imWidth")
        size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if require_det:
            _require_detections(folder / "det" / "det.txt", "MOTS")
        files = {}
        for kind, scores in (("gt", False), ("det", True)):
            path = folder / kind / f"{kind}.txt"
            files[kind] = (read_mots_file(path, num_frames=len(frames), size=size, scores=scores)
                           if path.is_file() else [])
        sequences.append(MotsSequence(str(info.get("name", folder.name)), frames, files["gt"], files["det"], info))
    if not sequences:
        raise TrackingDataError(f"{split_dir}: no sequence folders")
    return sequences


# ---------------------------------------------------------------------------------------------------------------
# PoseTrack 2018 (one JSON per video)

# The 17 keypoint slots of PoseTrack18 (COCO order; the ears are never annotated, PoseTrack18 leaves them 0, 0, 0).
POSETRACK_KEYPOINTS = (
    "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# The limbs of PoseTrack18's category (1-based keypoint numbers, as its JSON "skeleton").
POSETRACK_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)


@dataclass(frozen=True)
class PosePerson:
    """One person (annotation) of a PoseTrack18 frame: keypoints float64 [17, 3] (x, y, v in the 17 slots; a slot
    that is 0, 0, 0 is not annotated), track id (None in detections), head box and box (x, y, w, h; None where the
    annotation has none) and score (detections' "score"; 1.0 where there is none)."""

    keypoints: np.ndarray
    track_id: int | None = None
    head_box: np.ndarray | None = None
    box: np.ndarray | None = None
    score: float = 1.0

    def present(self) -> np.ndarray:
        """bool [17]: the annotated slots (not 0, 0, 0), as poseval's conversion to PoseTrack17 keeps them."""
        return ~np.all(self.keypoints == 0, axis=1)


@dataclass(frozen=True)
class PoseFrame:
    """One image of a PoseTrack18 video: image id, file, the people annotated on it, whether it is labeled, and its
    ignore regions (polygons float64 [k, 2] of x, y)."""

    image_id: int
    file: Path
    people: list[PosePerson]
    labeled: bool = True
    ignore_regions: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class PosetrackVideo:
    """One PoseTrack18 video: its frames in order with the ground truth, and per frame the given detections (poses
    without track ids; None where no detection file was read)."""

    name: str
    frames: list[PoseFrame]
    detections: list[list[PosePerson]] | None
    annotation_file: Path
    detection_file: Path | None = None


def _json_file(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TrackingDataError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None


def _json_key(path: Path, where: str, item: Any, key: str) -> Any:
    if not isinstance(item, dict):
        raise TrackingDataError(f"{path}: {where} is not an object")
    if key not in item:
        raise TrackingDataError(f"{path}: {where} has no {key!r}")
    return item[key]


def _json_numbers(path: Path, where: str, value: Any, length: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (length,) or not np.isfinite(array).all():
        raise TrackingDataError(f"{path}: {where} must be {length} numbers, got {str(value)[:80]}")
    return array


def _pose_people(path: Path, data: dict[str, Any], image_ids: set[int], ground_truth: bool
                 ) -> dict[int, list[PosePerson]]:
    people: dict[int, list[PosePerson]] = {image_id: [] for image_id in image_ids}
    annotations = _json_key(path, "the file", data, "annotations")
    if not isinstance(annotations, list):
        raise TrackingDataError(f"{path}: 'annotations' is not a list")
    for index, item in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = _json_key(path, where, item, "image_id")
        if image_id not in people:
            raise TrackingDataError(f"{path}: {where} refers to image {image_id!r}, which 'images' does not list")
        keypoints = _json_numbers(path, f"{where}.keypoints", _json_key(path, where, item, "keypoints"),
                                  3 * len(POSETRACK_KEYPOINTS)).reshape(-1, 3)
        annotated = bool(np.any(keypoints != 0))
        track_id = _json_key(path, where, item, "track_id") if ground_truth else item.get("track_id")
        if (ground_truth or track_id is not None) and (not isinstance(track_id, int) or isinstance(track_id, bool)):
            raise TrackingDataError(f"{path}: {where}.track_id must be an integer, got {track_id!r}")
        head_box = box = None
        if ground_truth and annotated:  # poseval's PCKh needs the head box of every annotated person
            head_box = _json_numbers(path, f"{where}.bbox_head", _json_key(path, where, item, "bbox_head"), 4)
        if item.get("bbox") is not None:
            box = _json_numbers(path, f"{where}.bbox", item["bbox"], 4)
        score = item.get("score", 1.0)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not np.isfinite(score):
            raise TrackingDataError(f"{path}: {where}.score must be a number, got {score!r}")
        people[image_id].append(PosePerson(keypoints, track_id, head_box, box, float(score)))
    return people


def _pose_images(path: Path, data: Any, root: Path) -> list[tuple[int, Path, bool, list[np.ndarray]]]:
    if not isinstance(data, dict):
        raise TrackingDataError(f"{path}: expected a PoseTrack18 object with 'images' and 'annotations'")
    images = _json_key(path, "the file", data, "images")
    if not isinstance(images, list) or not images:
        raise TrackingDataError(f"{path}: 'images' is not a non-empty list")
    rows = []
    for index, item in enumerate(images):
        where = f"images[{index}]"
        image_id = _json_key(path, where, item, "id")
        file_name = _json_key(path, where, item, "file_name")
        frame_id = item.get("frame_id", image_id) if isinstance(item, dict) else image_id
        if not isinstance(image_id, int) or not isinstance(frame_id, int):
            raise TrackingDataError(f"{path}: {where}.id and frame_id must be integers")
        regions = []
        xs, ys = item.get("ignore_regions_x") or [], item.get("ignore_regions_y") or []
        if len(xs) != len(ys):
            raise TrackingDataError(f"{path}: {where} has {len(xs)} ignore_regions_x but {len(ys)} ignore_regions_y")
        for x, y in zip(xs, ys, strict=True):
            if len(x) != len(y):
                raise TrackingDataError(f"{path}: {where} has an ignore region with {len(x)} x and {len(y)} y")
            if len(x):
                regions.append(np.stack([_json_numbers(path, f"{where}.ignore_regions_x", x, len(x)),
                                         _json_numbers(path, f"{where}.ignore_regions_y", y, len(y))], axis=1))
        rows.append((frame_id, image_id, root / str(file_name), bool(item.get("is_labeled", True)), regions))
    ids = [row[1] for row in rows]
    if len(set(ids)) != len(ids):
        raise TrackingDataError(f"{path}: 'images' lists an image id twice")
    rows.sort(key=lambda row: row[0])
    return [(image_id, file, labeled, regions) for _, image_id, file, labeled, regions in rows]


def read_posetrack_json(path: str | Path, root: str | Path, *, ground_truth: bool = True
                        ) -> list[PoseFrame]:
    """The frames of one PoseTrack18 JSON file, ordered by frame_id, with the people of each. Image files are
    `root/<file_name>`. Ground truth needs an integer `track_id` on every annotation and a `bbox_head` on every
    annotation with keypoints (poseval measures joint distances in head sizes); otherwise (detections, tracker
    results) a track_id is read where there is one. A missing key is a TrackingDataError naming the file and the
    JSON element (a file that is not JSON: the file and line)."""
    path, root = Path(path), Path(root)
    data = _json_file(path)
    images = _pose_images(path, data, root)
    people = _pose_people(path, data, {image_id for image_id, *_ in images}, ground_truth)
    return [PoseFrame(image_id, file, people[image_id], labeled, regions)
            for image_id, file, labeled, regions in images]


def read_posetrack(
    root: str | Path,
    split: str = "val",
    *,
    detections: str | Path | None = "detections",
    check_images: bool = True,
) -> list[PosetrackVideo]:
    """The videos of a PoseTrack18 tree, sorted by name: `root/annotations/<split>/<video>.json` (the ground
    truth; its file_name entries are relative to `root`, as `images/<split>/<video>/000000.jpg`) and, when
    `detections` is not None, the given poses `<detections>/<split>/<video>.json` (relative to `root` unless
    absolute; PoseTrack18 JSON without track ids, the same image ids). `check_images` requires every image file."""
    root = Path(root)
    annotation_dir = _require_dir(root / "annotations" / split, f"PoseTrack annotations {split!r}")
    files = sorted(p for p in annotation_dir.iterdir() if p.suffix == ".json")
    if not files:
        raise TrackingDataError(f"{annotation_dir}: no annotation files (<video>.json)")
    detection_dir = None if detections is None else Path(root, detections, split)
    videos = []
    for path in files:
        frames = read_posetrack_json(path, root)
        if check_images:
            for frame in frames:
                if not frame.file.is_file():
                    raise TrackingDataError(f"{frame.file}: missing image (listed in {path})")
        given = detection_file = None
        if detection_dir is not None:
            detection_file = detection_dir / path.name
            detected = read_posetrack_json(detection_file, root, ground_truth=False)
            by_id = {frame.image_id: frame.people for frame in detected}
            unknown = set(by_id) - {frame.image_id for frame in frames}
            if unknown:
                raise TrackingDataError(
                    f"{detection_file}: image id {min(unknown)} is not an image of {path}")
            given = [by_id.get(frame.image_id, []) for frame in frames]
        videos.append(PosetrackVideo(path.stem, frames, given, path, detection_file))
    return videos
