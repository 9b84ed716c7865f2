"""The offline tracking data: short videos of UCI digits moving over a canvas, written as DAVIS-2017, OTB,
MOTChallenge, MOTS Challenge or PoseTrack18.

Each video has a static background (`mec.digits.textured_background`) and 1 to 4 digits, each rendered once by
`mec.digits.paste_digit` (its scale and rotation fixed for the video) and then moved rigidly: a constant velocity
of `speed_range` pixels per frame in a random direction plus Gaussian jitter, bouncing off the borders, so every
digit stays fully inside the canvas. Digits are drawn in z-order (object 1 at the back, the last one in front) and
occlude each other; in the first frame their masks are disjoint, so every object is visible where a tracker is
given it. An object's mask is the pixels where its ink's alpha is above 0.5; the frame's label map paints the
masks in z-order, and an object's visibility is the fraction of its mask left visible.

Videos draw from the "val" source digits of `mec.digits.split_sources` (the digits the offline pretraining never
saw, with the same `val_fraction` and `seed`). The default style is the offline pretraining digits' (`VIDEO_STYLE`:
one colour pair, no texture); `render_kwargs` are `DigitStyle` fields over it. Video i is seeded by (seed, i) in
every format, so the three formats show the same videos; the same parameters give byte-identical files. Trees are
written like `evals.detection.scenes`: into a temporary sibling, moved onto the root when complete with
`manifest.json` (parameters and their hash); the same parameters leave it alone, other parameters replace it, and a
non-empty folder without a manifest is never touched.

    python -m evals.tracking.videos --format davis --output data/digit-videos-davis
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals.tracking.datasets import (
    DAVIS_PALETTE,
    DAVIS_RESOLUTION,
    OTB_GROUNDTRUTH,
    POSETRACK_KEYPOINTS,
    POSETRACK_SKELETON,
    MotsObject,
    rle_encode,
)
from mec.digits import (
    BoundingBox,
    DigitStyle,
    box_iou,
    colour_palette,
    digit_style,
    ink_colour,
    load_source_digits,
    paste_digit,
    split_sources,
    textured_background,
)
from mec.trees import MANIFEST_NAME, write_tree

FORMATS = ("davis", "otb", "mot", "mots", "posetrack")
# Bump when the written files change for the same parameters, so existing trees get rewritten.
VIDEOS_VERSION = 1
MASK_ALPHA = 0.5
# Side of a digit's 8x8 cell as a fraction of the canvas side: 16 to 32 pixels on the default 64x64 canvas.
VIDEO_SCALE_RANGE = (0.25, 0.5)
# The offline pretraining digits' style (mec/configs/digits.yaml): one colour pair, no texture, small rotations.
VIDEO_STYLE = DigitStyle(palette_size=1, texture_strength=0.0, max_rotation_deg=10.0, scale_range=VIDEO_SCALE_RANGE)
PLACEMENT_TRIES = 25
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}
_INK_PROBE = np.ones(3, dtype=np.float32)
DAVIS_SPLIT = "val"
MOT_FRAME_RATE = 10
# det/det.txt: ground-truth boxes moved by this many pixels (standard deviation, and a fraction of the size for
# w and h), each dropped with probability DET_DROP (always when less than DET_MIN_VISIBILITY of it shows), and
# on average DET_FALSE_POSITIVES boxes per frame that cover no digit.
DET_JITTER_PX = 1.0
DET_SIZE_JITTER = 0.05
DET_DROP = 0.1
DET_MIN_VISIBILITY = 0.25
DET_FALSE_POSITIVES = 0.2


@dataclass(frozen=True)
class VideoObject:
    """One moving digit: object id (1..K, also its z-order: higher ids in front), class, source digit, its box in
    every frame int64 [T, 4] (x0, y0, x1, y1; end exclusive, always inside the canvas) and visibility float64 [T]
    (the fraction of its mask not covered by digits in front of it)."""

    object_id: int
    label: int
    source: int
    boxes: np.ndarray
    visibility: np.ndarray


@dataclass(frozen=True)
class Video:
    """A rendered video: frames uint8 [T, H, W, 3], label maps uint8 [T, H, W] (0 background, object ids)."""

    frames: np.ndarray
    masks: np.ndarray
    objects: tuple[VideoObject, ...]


def _trajectory(
    rng: np.random.Generator, start: tuple[int, int], size: tuple[int, int], canvas: int, frames: int,
    speed_range: tuple[float, float], jitter: float,
) -> np.ndarray:
    """Top-left corners int64 [T, 2] (x, y): constant velocity plus jitter, reflected at the borders."""
    speed = rng.uniform(*speed_range)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    velocity = np.array([speed * math.cos(angle), speed * math.sin(angle)])
    limit = np.array([canvas - size[0], canvas - size[1]], dtype=np.float64)
    position = np.array(start, dtype=np.float64)
    corners = [np.array(start, dtype=np.int64)]
    for _ in range(frames - 1):
        position = position + velocity + rng.normal(0.0, jitter, 2)
        for axis in range(2):
            if limit[axis] <= 0:
                position[axis] = 0.0
                continue
            # Reflect until inside (a step longer than the free range bounces more than once).
            while not 0.0 <= position[axis] <= limit[axis]:
                if position[axis] < 0.0:
                    position[axis] = -position[axis]
                else:
                    position[axis] = 2.0 * limit[axis] - position[axis]
                velocity[axis] = -velocity[axis]
        corners.append(np.clip(np.round(position), 0, limit).astype(np.int64))
    return np.stack(corners)


def render_video(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    *,
    frames: int = 20,
    canvas: int = 64,
    digits_per_video: tuple[int, int] = (1, 4),
    speed_range: tuple[float, float] = (1.0, 3.0),
    jitter: float = 0.5,
    max_box_iou: float = 0.2,
    style: DigitStyle = VIDEO_STYLE,
) -> Video:
    """One video of `frames` frames with `digits_per_video` (low, high; inclusive) digits drawn from `pool`.

    In the first frame a digit is placed at most `PLACEMENT_TRIES` times, as in `evals.detection.scenes`: a
    placement is kept when its box has an IoU of at most `max_box_iou` with the others' and its mask shares no
    pixel with theirs; a digit that finds no place is left out (never the first).
    """
    background = ink = None
    if style.palette_size:
        palette = colour_palette(style.palette_size, style.min_colour_distance)
        background, ink = palette[rng.integers(style.palette_size)]
    pixels = textured_background(rng, canvas, canvas, style, flat=background)
    occupied = np.zeros((canvas, canvas), dtype=bool)
    sprites: list[tuple[int, np.ndarray, BoundingBox, np.ndarray]] = []  # source, alpha, first box, ink
    for _ in range(int(rng.integers(digits_per_video[0], digits_per_video[1] + 1))):
        source = int(pool[rng.integers(len(pool))])
        for _ in range(PLACEMENT_TRIES):
            # A white digit pasted on black gives its alpha (scale, rotation and first position) exactly.
            probe = np.zeros((canvas, canvas, 3), dtype=np.float32)
            box = paste_digit(probe, images[source], rng, style, ink=_INK_PROBE)
            mask = probe[..., 0] > MASK_ALPHA
            if mask.any() and not (mask & occupied).any() and all(
                box_iou(box, other[2]) <= max_box_iou for other in sprites
            ):
                occupied |= mask
                alpha = probe[box[1] : box[3], box[0] : box[2], 0].copy()
                colour = ink if ink is not None else ink_colour(rng, pixels.mean(axis=(0, 1)),
                                                                    style.min_colour_distance)
                sprites.append((source, alpha, box, np.asarray(colour, dtype=np.float32)))
                break

    corners = []
    for _, alpha, box, _ in sprites:
        height, width = alpha.shape
        corners.append(_trajectory(rng, (box[0], box[1]), (width, height), canvas, frames, speed_range, jitter))

    video = np.empty((frames, canvas, canvas, 3), dtype=np.uint8)
    label_maps = np.zeros((frames, canvas, canvas), dtype=np.uint8)
    full_area = [int((alpha > MASK_ALPHA).sum()) for _, alpha, _, _ in sprites]
    visibility = np.zeros((len(sprites), frames))
    for t in range(frames):
        frame = pixels.copy()
        for index, (_, alpha, _, colour) in enumerate(sprites):
            x0, y0 = (int(v) for v in corners[index][t])
            height, width = alpha.shape
            region = frame[y0 : y0 + height, x0 : x0 + width]
            region[...] = (1.0 - alpha[..., None]) * region + alpha[..., None] * colour
            label_maps[t, y0 : y0 + height, x0 : x0 + width][alpha > MASK_ALPHA] = index + 1
        if style.noise_std > 0:
            frame += rng.normal(0.0, style.noise_std, frame.shape).astype(np.float32)
        video[t] = np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
        counts = np.bincount(label_maps[t].ravel(), minlength=len(sprites) + 1)
        visibility[:, t] = [counts[i + 1] / full_area[i] for i in range(len(sprites))]

    objects = []
    for index, (source, alpha, _, _) in enumerate(sprites):
        height, width = alpha.shape
        xy = corners[index]
        boxes = np.concatenate([xy, xy + np.array([width, height])], axis=1).astype(np.int64)
        objects.append(VideoObject(index + 1, int(labels[source]), source, boxes, visibility[index]))
    return Video(video, label_maps, tuple(objects))


# ---------------------------------------------------------------------------------------------------------------
# Writing the trees


def sequence_names(fmt: str, n_videos: int) -> list[str]:
    """The sequence names a tree of `n_videos` videos in `fmt` has, in order."""
    pattern = {"davis": "digits-{:03d}", "otb": "Digits{:03d}", "mot": "DIGITS-{:02d}", "mots": "DIGITS-{:02d}",
               "posetrack": "{:06d}_digits"}[fmt]
    return [pattern.format(index + 1) for index in range(n_videos)]


def _expected_paths(params: dict[str, Any]) -> list[str]:
    names = sequence_names(params["format"], params["n_videos"])
    if params["format"] == "davis":
        return [f"ImageSets/2017/{DAVIS_SPLIT}.txt"] + [
            f"{kind}/{DAVIS_RESOLUTION}/{name}" for name in names for kind in ("JPEGImages", "Annotations")
        ]
    if params["format"] == "otb":
        return [f"{name}/{OTB_GROUNDTRUTH}" for name in names]
    if params["format"] == "posetrack":
        return [f"{kind}/{params['split']}/{name}.json" for name in names for kind in ("annotations", "detections")]
    return [f"{params['split']}/{name}/seqinfo.ini" for name in names]


def _video_params(
    fmt: str,
    *,
    n_videos: int,
    frames: int,
    canvas: int,
    seed: int,
    val_fraction: float,
    digits_per_video: Sequence[int],
    speed_range: Sequence[float],
    jitter: float,
    max_box_iou: float,
    render_kwargs: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if n_videos < 1:
        raise ValueError(f"n_videos must be >= 1, got {n_videos!r}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames!r}")
    if canvas < 16:
        raise ValueError(f"canvas must be >= 16 pixels, got {canvas!r}")
    low, high = (int(v) for v in digits_per_video)
    if not 1 <= low <= high:
        raise ValueError(f"digits_per_video must be (low, high) with 1 <= low <= high, got {digits_per_video!r}")
    slow, fast = (float(v) for v in speed_range)
    if not 0.0 <= slow <= fast:
        raise ValueError(f"speed_range must be (low, high) with 0 <= low <= high, got {speed_range!r}")
    if jitter < 0.0:
        raise ValueError(f"jitter must be >= 0, got {jitter!r}")
    if not 0.0 <= max_box_iou <= 1.0:
        raise ValueError(f"max_box_iou must be in [0, 1], got {max_box_iou!r}")
    return {
        "videos_version": VIDEOS_VERSION,
        "format": fmt,
        "n_videos": n_videos,
        "frames": frames,
        "canvas": canvas,
        "seed": seed,
        "val_fraction": val_fraction,
        "digits_per_video": [low, high],
        "speed_range": [slow, fast],
        "jitter": float(jitter),
        "max_box_iou": max_box_iou,
        "style": dataclasses.asdict(digit_style(render_kwargs, VIDEO_STYLE)),
        **extra,
    }


def render_videos(params: dict[str, Any]) -> list[Video]:
    """The videos of a tree's parameters (as `_video_params` makes them; a manifest's "params"), video i seeded
    by (seed, i) and drawn from the "val" source digits."""
    images, labels = load_source_digits()
    pool = split_sources(labels, params["val_fraction"], params["seed"])["val"]
    style = DigitStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["style"].items()})
    return [
        render_video(
            np.random.default_rng([params["seed"], index]),
            images,
            labels,
            pool,
            frames=params["frames"],
            canvas=params["canvas"],
            digits_per_video=tuple(params["digits_per_video"]),
            speed_range=tuple(params["speed_range"]),
            jitter=params["jitter"],
            max_box_iou=params["max_box_iou"],
            style=style,
        )
        for index in range(params["n_videos"])
    ]


def _write(root: str | Path, params: dict[str, Any], write: Callable[[Path, dict[str, Any]], Any]) -> Path:
    return write_tree(root, params, _expected_paths(params), lambda staging: write(staging, params))


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", **JPEG_OPTIONS)


def _save_indexed_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels)  # mode "L"; putpalette makes it "P"
    image.putpalette(DAVIS_PALETTE.tobytes())
    image.save(path, format="PNG", compress_level=9)


def _write_davis_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = sequence_names("davis", params["n_videos"])
    objects = 0
    for name, video in zip(names, render_videos(params), strict=True):
        frame_dir = target / "JPEGImages" / DAVIS_RESOLUTION / name
        mask_dir = target / "Annotations" / DAVIS_RESOLUTION / name
        frame_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for t, (frame, labels) in enumerate(zip(video.frames, video.masks, strict=True)):
            _save_jpeg(frame, frame_dir / f"{t:05d}.jpg")
            _save_indexed_png(labels, mask_dir / f"{t:05d}.png")
        objects += len(video.objects)
    (target / "ImageSets" / "2017").mkdir(parents=True)
    (target / "ImageSets" / "2017" / f"{DAVIS_SPLIT}.txt").write_text("".join(f"{name}\n" for name in names))
    return {"videos": len(names), "frames": len(names) * params["frames"], "objects": objects}


def otb_line(box: Sequence[int]) -> str:
    """An OTB ground-truth line for an end-exclusive 0-based box: x,y,w,h with x and y 1-based."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return f"{x0 + 1},{y0 + 1},{x1 - x0},{y1 - y0}"


def _write_otb_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = sequence_names("otb", params["n_videos"])
    for name, video in zip(names, render_videos(params), strict=True):
        (target / name / "img").mkdir(parents=True)
        for t, frame in enumerate(video.frames):
            _save_jpeg(frame, target / name / "img" / f"{t + 1:04d}.jpg")
        # The tracked digit is object 1, at the back: the others pass in front of it.
        lines = [otb_line(box) for box in video.objects[0].boxes]
        (target / name / OTB_GROUNDTRUTH).write_text("".join(f"{line}\n" for line in lines))
    return {"videos": len(names), "frames": len(names) * params["frames"]}


def _detections(rng: np.random.Generator, video: Video, canvas: int) -> list[tuple[int, list[float], float]]:
    """(frame, [x0, y0, x1, y1], score) of a simulated detector: jittered ground truth, misses, false positives."""
    detections = []
    sizes = np.array([obj.boxes[0, 2:] - obj.boxes[0, :2] for obj in video.objects], dtype=np.float64)
    for t in range(len(video.frames)):
        for obj in video.objects:
            drop = rng.random() < DET_DROP
            x0, y0, x1, y1 = obj.boxes[t].astype(np.float64)
            width, height = x1 - x0, y1 - y0
            cx = (x0 + x1) / 2 + rng.normal(0.0, DET_JITTER_PX)
            cy = (y0 + y1) / 2 + rng.normal(0.0, DET_JITTER_PX)
            width *= 1.0 + rng.normal(0.0, DET_SIZE_JITTER)
            height *= 1.0 + rng.normal(0.0, DET_SIZE_JITTER)
            score = rng.uniform(0.6, 1.0)
            if drop or obj.visibility[t] < DET_MIN_VISIBILITY:
                continue
            box = np.clip([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], 0, canvas)
            detections.append((t + 1, box.tolist(), score))
        for _ in range(int(rng.poisson(DET_FALSE_POSITIVES))):
            width, height = np.minimum(sizes[rng.integers(len(sizes))] * rng.uniform(0.8, 1.2), canvas)
            x0, y0 = rng.uniform(0, canvas - width), rng.uniform(0, canvas - height)
            detections.append((t + 1, [x0, y0, x0 + width, y0 + height], rng.uniform(0.3, 0.7)))
    return detections


def _motchallenge_sequence(folder: Path, video: Video, canvas: int) -> Path:
    """A MOTChallenge sequence folder (MOT and MOTS alike): img1/ with the frames, empty gt/ and det/, seqinfo.ini."""
    for sub in ("img1", "gt", "det"):
        (folder / sub).mkdir(parents=True)
    for t, frame in enumerate(video.frames):
        _save_jpeg(frame, folder / "img1" / f"{t + 1:06d}.jpg")
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={folder.name}\nimDir=img1\nframeRate={MOT_FRAME_RATE}\nseqLength={len(video.frames)}\n"
        f"imWidth={canvas}\nimHeight={canvas}\nimExt=.jpg\n")
    return folder


def _write_mot_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = sequence_names("mot", params["n_videos"])
    canvas = params["canvas"]
    boxes = detections = 0
    for index, (name, video) in enumerate(zip(names, render_videos(params), strict=True)):
        folder = _motchallenge_sequence(target / params["split"] / name, video, canvas)
        # MOT16/17 gt: frame, id, bb_left, bb_top, width, height (1-based pixels), conf, class (1 pedestrian), vis.
        gt = []
        for t in range(params["frames"]):
            for obj in video.objects:
                x0, y0, x1, y1 = (int(v) for v in obj.boxes[t])
                gt.append(f"{t + 1},{obj.object_id},{x0 + 1},{y0 + 1},{x1 - x0},{y1 - y0},1,1,"
                          f"{obj.visibility[t]:.4f}\n")
        (folder / "gt" / "gt.txt").write_text("".join(gt))
        det_rng = np.random.default_rng([params["seed"], index, 1])
        det = [
            f"{frame},-1,{x0 + 1:.2f},{y0 + 1:.2f},{x1 - x0:.2f},{y1 - y0:.2f},{score:.4f},-1,-1,-1\n"
            for frame, (x0, y0, x1, y1), score in _detections(det_rng, video, canvas)
        ]
        (folder / "det" / "det.txt").write_text("".join(det))
        boxes += len(gt)
        detections += len(det)
    return {"videos": len(names), "frames": len(names) * params["frames"], "boxes": boxes, "detections": detections}


_TREE_WRITERS = {"davis": _write_davis_tree, "otb": _write_otb_tree, "mot": _write_mot_tree}


def write_videos(
    fmt: str,
    root: str | Path,
    *,
    n_videos: int = 10,
    frames: int = 20,
    canvas: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    digits_per_video: Sequence[int] = (1, 4),
    speed_range: Sequence[float] = (1.0, 3.0),
    jitter: float = 0.5,
    max_box_iou: float = 0.2,
    split: str | None = None,
    **render_kwargs: Any,
) -> Path:
    """Write `n_videos` digit videos of `frames` frames at `root` in `fmt` ("davis", "otb", "mot", "mots" or
    "posetrack") and return `root`. `split` is the MOT / MOTS / PoseTrack split folder (default "train", "val" for
    posetrack, the splits their readers default to; ignored by the others); `render_kwargs` are `DigitStyle` fields
    over `VIDEO_STYLE`.

    davis: `root/JPEGImages/480p/digits-NNN/00000.jpg...`, `root/Annotations/480p/digits-NNN/00000.png...`
        (indexed PNGs with `DAVIS_PALETTE`: 0 background, 1..K the objects in z-order), `root/ImageSets/2017/val.txt`.
    otb: `root/DigitsNNN/img/0001.jpg...` and `root/DigitsNNN/groundtruth_rect.txt` (x,y,w,h of object 1, the
        digit at the back, per frame; 1-based pixels).
    mot: `root/<split>/DIGITS-NN/img1/000001.jpg...`, `gt/gt.txt` (frame,id,x,y,w,h,1,1,visibility),
        `det/det.txt` (frame,-1,x,y,w,h,score,-1,-1,-1: jittered ground truth, some missed, a few false
        positives) and `seqinfo.ini`.
    mots, posetrack: see `write_mots_videos` and `write_posetrack_videos`.
    Every tree also has `root/manifest.json`.
    """
    if split is None:
        split = "val" if fmt == "posetrack" else "train"
    extra = {"split": split} if fmt in ("mot", "mots", "posetrack") else {}
    params = _video_params(
        fmt, n_videos=n_videos, frames=frames, canvas=canvas, seed=seed, val_fraction=val_fraction,
        digits_per_video=digits_per_video, speed_range=speed_range, jitter=jitter, max_box_iou=max_box_iou,
        render_kwargs=render_kwargs, **extra,
    )
    return _write(root, params, _TREE_WRITERS[fmt])


def write_davis_videos(root: str | Path, **kwargs: Any) -> Path:
    """`write_videos("davis", root, **kwargs)`."""
    return write_videos("davis", root, **kwargs)


def write_otb_videos(root: str | Path, **kwargs: Any) -> Path:
    """`write_videos("otb", root, **kwargs)`."""
    return write_videos("otb", root, **kwargs)


def write_mot_videos(root: str | Path, **kwargs: Any) -> Path:
    """`write_videos("mot", root, **kwargs)`."""
    return write_videos("mot", root, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.tracking.videos",
        description="Write the offline tracking data set (videos of moving UCI digits) as DAVIS-2017, OTB, MOT, "
                    "MOTS or PoseTrack18.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", type=Path, required=True, help="the tree's root folder")
    parser.add_argument("--n-videos", type=int, default=10)
    parser.add_argument("--frames", type=int, default=20, help="frames per video")
    parser.add_argument("--canvas", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default=None,
                        help="MOT / MOTS / PoseTrack split folder (default train; val for posetrack)")
    args = parser.parse_args(argv)
    try:
        root = write_videos(args.format, args.output, n_videos=args.n_videos, frames=args.frames,
                            canvas=args.canvas, seed=args.seed, split=args.split)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = json.loads((root / MANIFEST_NAME).read_text())["counts"]
    print(f"{args.format} digit videos in {root}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# MOTS Challenge and PoseTrack18 trees (formats "mots" and "posetrack")

# det/det.txt of a MOTS tree: each visible ground-truth mask shifted by a whole number of pixels (rounded
# N(0, DET_JITTER_PX) per axis), dropped as the MOT boxes are (DET_DROP, DET_MIN_VISIBILITY), plus on average
# DET_FALSE_POSITIVES ellipses per frame covering no particular digit; scores as for the MOT boxes.
MOTS_CLASS = 2  # pedestrian, the MOTS Challenge's one class
# PoseTrack "detections": ground-truth keypoints moved by N(0, POSE_JITTER_PX) pixels, each kept with probability
# 1 - POSE_KEYPOINT_DROP; whole poses dropped as the MOT boxes are; false poses on random boxes.
POSE_JITTER_PX = 0.5
POSE_KEYPOINT_DROP = 0.1
POSETRACK_IMAGE_ID_BASE = 10_000_000_000  # PoseTrack18 image ids: 1 followed by the 6-digit video number, 4-digit frame
# A digit has no skeleton: its "keypoints" are fixed points of its box, a stick figure facing the viewer (the
# person's left on the image's right), in PoseTrack18's 17 slots; (u, v) are fractions of the box width and height
# from its top-left corner. The ears stay unannotated, as in PoseTrack18.
DIGIT_KEYPOINTS: dict[str, tuple[float, float]] = {
    "nose": (0.5, 0.1), "head_bottom": (0.5, 0.2), "head_top": (0.5, 0.0),
    "left_shoulder": (0.75, 0.25), "right_shoulder": (0.25, 0.25),
    "left_elbow": (0.9, 0.45), "right_elbow": (0.1, 0.45),
    "left_wrist": (1.0, 0.6), "right_wrist": (0.0, 0.6),
    "left_hip": (0.65, 0.6), "right_hip": (0.35, 0.6),
    "left_knee": (0.7, 0.8), "right_knee": (0.3, 0.8),
    "left_ankle": (0.75, 1.0), "right_ankle": (0.25, 1.0),
}
DIGIT_HEAD_BOX = (0.25, 0.0, 0.5, 0.2)  # x, y, w, h as fractions of the box: around head_top, nose, head_bottom


def digit_keypoints(box: Sequence[float], label_map: np.ndarray | None = None, object_id: int = 0) -> np.ndarray:
    """PoseTrack18 keypoints float64 [17, 3] (x, y, v) of a digit whose box is `box` (x0, y0, x1, y1, end
    exclusive): `DIGIT_KEYPOINTS` placed on the box (x = x0 + u (w - 1), y = y0 + v (h - 1), rounded to 0.01 px).

    This is a format-level stand-in for a human pose, not a skeleton: the points move rigidly with the digit, so
    a tracker is scored on the same joint-level matching as on PoseTrack. With `label_map` (the frame's painted
    label map), a point whose pixel shows a digit in front of object `object_id` (a higher id) is occluded and left
    unannotated (0, 0, 0), as PoseTrack leaves joints it cannot see; visible points have v = 1.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    keypoints = np.zeros((len(POSETRACK_KEYPOINTS), 3))
    for slot, name in enumerate(POSETRACK_KEYPOINTS):
        if name not in DIGIT_KEYPOINTS:
            continue
        u, v = DIGIT_KEYPOINTS[name]
        x, y = round(x0 + u * (width - 1), 2), round(y0 + v * (height - 1), 2)
        if label_map is not None:
            row = min(max(round(y), 0), label_map.shape[0] - 1)
            col = min(max(round(x), 0), label_map.shape[1] - 1)
            if int(label_map[row, col]) > object_id:
                continue
        keypoints[slot] = (x, y, 1.0)
    return keypoints


def digit_head_box(box: Sequence[float]) -> list[float]:
    """The head box (x, y, w, h) of a digit's box (x0, y0, x1, y1): `DIGIT_HEAD_BOX`, rounded to 0.01 px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    fx, fy, fw, fh = DIGIT_HEAD_BOX
    width, height = x1 - x0, y1 - y0
    return [round(x0 + fx * width, 2), round(y0 + fy * height, 2), round(fw * width, 2), round(fh * height, 2)]


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`mask` moved by (dx, dy) pixels; what leaves the canvas is cut off."""
    out = np.zeros_like(mask)
    height, width = mask.shape
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _mots_detections(rng: np.random.Generator, video: Video, canvas: int) -> list[tuple[int, np.ndarray, float]]:
    """(frame, mask, score) of a simulated instance segmenter: shifted ground-truth masks, misses, false ones."""
    detections = []
    sizes = np.array([obj.boxes[0, 2:] - obj.boxes[0, :2] for obj in video.objects], dtype=np.float64)
    rows, cols = np.mgrid[0:canvas, 0:canvas]
    for t in range(len(video.frames)):
        for obj in video.objects:
            drop = rng.random() < DET_DROP
            dx, dy = (int(v) for v in np.round(rng.normal(0.0, DET_JITTER_PX, 2)))
            score = rng.uniform(0.6, 1.0)
            if drop or obj.visibility[t] < DET_MIN_VISIBILITY:
                continue
            mask = _shifted(video.masks[t] == obj.object_id, dx, dy)
            if mask.any():
                detections.append((t + 1, mask, score))
        for _ in range(int(rng.poisson(DET_FALSE_POSITIVES))):
            width, height = np.minimum(sizes[rng.integers(len(sizes))] * rng.uniform(0.8, 1.2), canvas)
            cx, cy = rng.uniform(width / 2, canvas - width / 2), rng.uniform(height / 2, canvas - height / 2)
            mask = ((cols + 0.5 - cx) / (width / 2)) ** 2 + ((rows + 0.5 - cy) / (height / 2)) ** 2 <= 1.0
            detections.append((t + 1, mask, rng.uniform(0.3, 0.7)))
    return detections


def _write_mots_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = sequence_names("mots", params["n_videos"])
    canvas = params["canvas"]
    masks = detections = 0
    for index, (name, video) in enumerate(zip(names, render_videos(params), strict=True)):
        folder = _motchallenge_sequence(target / params["split"] / name, video, canvas)
        # MOTS gt: frame id class_id img_height img_width rle; id = class_id * 1000 + object id; visible pixels only
        gt = [
            MotsObject(t + 1, MOTS_CLASS * 1000 + obj.object_id, MOTS_CLASS, canvas, canvas,
                       rle_encode(video.masks[t] == obj.object_id)).line() + "\n"
            for t in range(params["frames"]) for obj in video.objects if (video.masks[t] == obj.object_id).any()
        ]
        (folder / "gt" / "gt.txt").write_text("".join(gt))
        det_rng = np.random.default_rng([params["seed"], index, 2])
        det = [MotsObject(frame, -1, MOTS_CLASS, canvas, canvas, rle_encode(mask), score).line(with_score=True) + "\n"
               for frame, mask, score in _mots_detections(det_rng, video, canvas)]
        (folder / "det" / "det.txt").write_text("".join(det))
        masks += len(gt)
        detections += len(det)
    return {"videos": len(names), "frames": len(names) * params["frames"], "masks": masks, "detections": detections}


def _posetrack_category() -> dict[str, Any]:
    return {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(POSETRACK_KEYPOINTS),
            "skeleton": [list(limb) for limb in POSETRACK_SKELETON]}


def _pose_detections(rng: np.random.Generator, video: Video, canvas: int) -> list[list[tuple[np.ndarray, float]]]:
    """Per frame, (keypoints [17, 3], score) of a simulated pose estimator: jittered ground-truth keypoints (some
    dropped), missed poses, false poses on random boxes."""
    sizes = np.array([obj.boxes[0, 2:] - obj.boxes[0, :2] for obj in video.objects], dtype=np.float64)
    frames = []
    for t in range(len(video.frames)):
        poses = []
        candidates = [(digit_keypoints(obj.boxes[t], video.masks[t], obj.object_id),
                       rng.random() < DET_DROP or obj.visibility[t] < DET_MIN_VISIBILITY) for obj in video.objects]
        for _ in range(int(rng.poisson(DET_FALSE_POSITIVES))):
            width, height = np.minimum(sizes[rng.integers(len(sizes))] * rng.uniform(0.8, 1.2), canvas)
            x0, y0 = rng.uniform(0, canvas - width), rng.uniform(0, canvas - height)
            candidates.append((digit_keypoints((x0, y0, x0 + width, y0 + height)), None))
        for keypoints, drop in candidates:
            present = np.any(keypoints != 0, axis=1)
            jitter = rng.normal(0.0, POSE_JITTER_PX, (len(keypoints), 2))
            kept = present & (rng.random(len(keypoints)) >= POSE_KEYPOINT_DROP)
            score = rng.uniform(0.3, 0.7) if drop is None else rng.uniform(0.6, 1.0)
            if drop or not kept.any():
                continue
            out = np.zeros_like(keypoints)
            out[kept, :2] = np.round(np.clip(keypoints[kept, :2] + jitter[kept], 0, canvas - 1), 2)
            out[kept, 2] = 1.0
            poses.append((out, score))
        frames.append(poses)
    return frames


def _posetrack_json(name: str, index: int, split: str, frames: int, people: list[list[dict[str, Any]]]
                    ) -> dict[str, Any]:
    vid = f"{index + 1:06d}"
    images, annotations = [], []
    for t in range(frames):
        image_id = POSETRACK_IMAGE_ID_BASE + (index + 1) * 10_000 + t
        images.append({"file_name": f"images/{split}/{name}/{t:06d}.jpg", "id": image_id, "frame_id": image_id,
                       "vid_id": vid, "nframes": frames, "is_labeled": True, "has_no_densepose": True,
                       "ignore_regions_x": [], "ignore_regions_y": []})
        for person_index, person in enumerate(people[t]):
            annotations.append({"id": image_id * 100 + person_index, "image_id": image_id, "category_id": 1,
                                **person})
    return {"images": images, "annotations": annotations, "categories": [_posetrack_category()]}


def _keypoint_list(keypoints: np.ndarray) -> list[float]:
    return [float(v) if v != int(v) else int(v) for v in keypoints.ravel()]


def _write_posetrack_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    names = sequence_names("posetrack", params["n_videos"])
    split, canvas = params["split"], params["canvas"]
    for kind in ("annotations", "detections"):
        (target / kind / split).mkdir(parents=True)
    poses = detections = 0
    for index, (name, video) in enumerate(zip(names, render_videos(params), strict=True)):
        (target / "images" / split / name).mkdir(parents=True)
        for t, frame in enumerate(video.frames):
            _save_jpeg(frame, target / "images" / split / name / f"{t:06d}.jpg")
        gt_people: list[list[dict[str, Any]]] = []
        for t in range(params["frames"]):
            frame_people = []
            for obj in video.objects:
                keypoints = digit_keypoints(obj.boxes[t], video.masks[t], obj.object_id)
                if not keypoints.any():
                    continue
                x0, y0, x1, y1 = (int(v) for v in obj.boxes[t])
                frame_people.append({"track_id": obj.object_id - 1, "keypoints": _keypoint_list(keypoints),
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_head": digit_head_box(obj.boxes[t])})
            gt_people.append(frame_people)
            poses += len(frame_people)
        det_rng = np.random.default_rng([params["seed"], index, 3])
        det_people = []
        for frame_poses in _pose_detections(det_rng, video, canvas):
            det_people.append([{"keypoints": _keypoint_list(keypoints), "scores": [float(v) for v in keypoints[:, 2]],
                                "score": round(float(score), 4)} for keypoints, score in frame_poses])
            detections += len(frame_poses)
        for kind, people in (("annotations", gt_people), ("detections", det_people)):
            data = _posetrack_json(name, index, split, params["frames"], people)
            (target / kind / split / f"{name}.json").write_text(json.dumps(data) + "\n")
    return {"videos": len(names), "frames": len(names) * params["frames"], "poses": poses, "detections": detections}


_TREE_WRITERS.update({"mots": _write_mots_tree, "posetrack": _write_posetrack_tree})


def write_mots_videos(root: str | Path, **kwargs: Any) -> Path:
    """`write_videos("mots", root, **kwargs)`: a MOTS Challenge tree of the digit videos.

    `root/<split>/DIGITS-NN/img1/000001.jpg...`, `seqinfo.ini` (as MOT's), `gt/gt.txt` in the MOTS text format
    (`frame id class_id img_height img_width rle`, space-separated; class 2 = pedestrian as in the MOTS Challenge,
    id = 2000 + object id, the COCO RLE of the object's visible pixels; objects hidden entirely have no line, and
    the masks of a frame never overlap, as TrackEval requires) and `det/det.txt`, the given masks: the same columns
    with id -1 and a 7th, the score (shifted ground-truth masks, some missed, a few false ellipses; they may
    overlap). UniTrack reads its given MOTS masks from per-frame files `obs/<detector>/<split>/<seq>/img1/
    000001.txt` of the same six columns without a score; here they are one file per sequence, where MOT trees keep
    their public detections.
    """
    return write_videos("mots", root, **kwargs)


def write_posetrack_videos(root: str | Path, **kwargs: Any) -> Path:
    """`write_videos("posetrack", root, **kwargs)` (`split` "val" unless given): a PoseTrack18 tree.

    `root/images/<split>/NNNNNN_digits/000000.jpg...`, `root/annotations/<split>/NNNNNN_digits.json` (PoseTrack18
    JSON: `images` with file_name, id = frame_id = 10000000000 + video * 10000 + frame, vid_id, nframes,
    is_labeled; `annotations` with keypoints [x, y, v] x 17 from `digit_keypoints` (a format-level stand-in: digits
    have no skeleton), track_id (object id - 1), bbox and bbox_head (`digit_head_box`, the PCKh reference);
    `categories`: PoseTrack18's person with its 17 keypoint names and skeleton) and
    `root/detections/<split>/NNNNNN_digits.json`, the given poses in the same format without track ids, with
    "score" and per-keypoint "scores" (jittered keypoints, some dropped, missed poses, a few false ones). UniTrack
    reads its given poses from `obs/<split>/<detector>/<video>.json` (PoseTrack17 annolist format).
    """
    return write_videos("posetrack", root, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
