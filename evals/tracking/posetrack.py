"""Multi-person pose tracking by appearance-only association of given poses (UniTrack's PoseTrack head,
``*_womotion``), and its run on a PoseTrack18 tree.

UniTrack (tracker/mot/pose.py, utils/mask.py ``skltn2mask``, utils/box.py ``skltn2box``; commit a83e782) turns each
given pose into a mask, the pose's skeleton drawn on the frame: the trunk polygon (right hip, left hip, left
shoulder, neck, right shoulder) filled when at least three of those joints are there, and the 13 limbs (arms, neck
to shoulders and to the head top, shoulders to hips, legs) drawn as lines of width max(extent / 20, 8) pixels,
extent being the larger side of the keypoints' bounding box. The mask is then described and associated exactly as
a MOTS mask (`evals.tracking.mots.associate_masks`: the cells under it, reconstruction similarity, Hungarian,
cost threshold 0.7) with ``max_mask_area`` 400 cells and a track buffer of ``int(6 / 30 * 30)`` = 6 frames
(UniTrack's posetrack config: frame_rate 6, track_buffer 30). The box from the keypoints' extents (``skltn2box``)
is UniTrack's track position for its motion model, which the appearance-only protocol does not use;
``region="box"`` describes a pose by that box's cells instead of its skeleton.

UniTrack's joints are PoseTrack17's 15; here the skeleton is drawn on PoseTrack18's slots (neck = head_bottom),
with PIL instead of OpenCV (round joints added to the lines, as cv2's thick lines have round ends), keypoints
truncated to whole pixels as UniTrack does. A pose below the score threshold is not tracked and not reported
(UniTrack reports every given pose, the untracked ones under one shared id 1000).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from evals.tracking import datasets, metrics
from evals.tracking.datasets import POSETRACK_KEYPOINTS, PosePerson, TrackingDataError
from evals.tracking.mots import associate_masks, max_lost_for

POSE_MAX_MASK_AREA = 400  # UniTrack's posetrack.max_mask_area (cells)
POSETRACK_FRAME_RATE = 6  # UniTrack's posetrack.frame_rate
_SLOT = {name: index for index, name in enumerate(POSETRACK_KEYPOINTS)}
# skltn2mask's trunk polygon and limbs (PoseTrack17 joints), in PoseTrack18 slot names.
TRUNK = ("right_hip", "left_hip", "left_shoulder", "head_bottom", "right_shoulder")
LIMBS = (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"), ("left_shoulder", "head_bottom"), ("right_shoulder", "head_bottom"),
    ("head_bottom", "head_top"), ("left_shoulder", "left_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_shoulder", "right_hip"), ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
)
REGIONS = ("skeleton", "box")


def _points(keypoints: np.ndarray) -> dict[str, tuple[int, int]]:
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(len(POSETRACK_KEYPOINTS), 3)
    present = ~np.all(keypoints == 0, axis=1)
    return {name: (int(keypoints[i, 0]), int(keypoints[i, 1])) for name, i in _SLOT.items() if present[i]}


def pose_box(keypoints: np.ndarray) -> np.ndarray | None:
    """UniTrack's ``skltn2box``: (x0, y0, x1, y1) of the keypoints' extents (whole pixels; a side of 0 becomes 10);
    None for a pose without keypoints."""
    points = _points(keypoints)
    if not points:
        return None
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return np.array([x0, y0, x1 + 10 if x1 == x0 else x1, y1 + 10 if y1 == y0 else y1], dtype=np.float64)


def skeleton_mask(keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: UniTrack's ``skltn2mask`` of a pose (PoseTrack18 keypoints [17, 3]) on an image of `size`."""
    height, width = size
    image = Image.new("L", (width, height), 0)
    points = _points(keypoints)
    if not points:
        return np.zeros((height, width), dtype=bool)
    draw = ImageDraw.Draw(image)
    trunk = [points[name] for name in TRUNK if name in points]
    if len(trunk) > 2:
        draw.polygon(trunk, fill=1)
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    line_width = max(int(max(max(xs) - min(xs), max(ys) - min(ys), 0) / 20), 8)
    radius = line_width / 2
    for start, end in LIMBS:
        if start in points and end in points:
            draw.line([points[start], points[end]], fill=1, width=line_width)
            for x, y in (points[start], points[end]):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1)
    return np.asarray(image, dtype=bool)


def pose_mask(keypoints: np.ndarray, size: tuple[int, int], region: str = "skeleton") -> np.ndarray:
    """The mask a pose is described by: its skeleton (`skeleton_mask`) or its keypoints' box (`pose_box`)."""
    if region == "skeleton":
        return skeleton_mask(keypoints, size)
    if region != "box":
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    mask = np.zeros(size, dtype=bool)
    box = pose_box(keypoints)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        mask[max(0, y0) : max(0, y1 + 1), max(0, x0) : max(0, x1 + 1)] = True
    return mask


def associate_poses(
    model: Any,
    frames: Sequence[np.ndarray],
    poses: Sequence[Sequence[PosePerson]],
    *,
    region: str = "skeleton",
    max_mask_area: int = POSE_MAX_MASK_AREA,
    max_lost: int | None = None,
    **head_options: Any,
) -> list[list[PosePerson]]:
    """Per frame, the given poses that were tracked, with their track ids (1, 2, ...), in the given order.

    ``poses[t]``: the people given for ``frames[t]`` (keypoints [17, 3], score); `head_options` go to
    `mots.associate_masks` (score_thresh, max_cost, similarity, ...); ``max_lost`` defaults to UniTrack's
    PoseTrack buffer (6 frames)."""
    if len(frames) != len(poses):
        raise ValueError(f"{len(frames)} frames but {len(poses)} pose lists")
    masks = [np.stack([pose_mask(p.keypoints, frame.shape[:2], region) for p in people])
             if len(people) else np.zeros((0, *frame.shape[:2]), dtype=bool)
             for frame, people in zip(frames, poses, strict=True)]
    scores = [[p.score for p in people] for people in poses]
    if max_lost is None:
        max_lost = max_lost_for(POSETRACK_FRAME_RATE)
    ids = associate_masks(model, frames, masks, scores, max_mask_area=max_mask_area, max_lost=max_lost,
                          **head_options)
    return [[PosePerson(p.keypoints, int(track_id), p.head_box, p.box, p.score)
             for p, track_id in zip(people, frame_ids, strict=True) if track_id > 0]
            for people, frame_ids in zip(poses, ids, strict=True)]


def prediction_json(video: datasets.PosetrackVideo, tracked: Sequence[Sequence[PosePerson]]) -> dict[str, Any]:
    """A PoseTrack18 prediction file of a video: its images, and the tracked poses with track_id, keypoints,
    scores (the keypoints' v) and score."""
    images = json.loads(video.annotation_file.read_text())["images"]
    annotations = []
    for frame, people in zip(video.frames, tracked, strict=True):
        for index, person in enumerate(people):
            keypoints = np.asarray(person.keypoints, dtype=np.float64)
            annotations.append({"id": frame.image_id * 100 + index, "image_id": frame.image_id, "category_id": 1,
                                "track_id": int(person.track_id), "keypoints": keypoints.ravel().tolist(),
                                "scores": keypoints[:, 2].tolist(), "score": float(person.score)})
    category = {"supercategory": "person", "id": 1, "name": "person", "keypoints": list(POSETRACK_KEYPOINTS),
                "skeleton": [list(limb) for limb in datasets.POSETRACK_SKELETON]}
    return {"images": images, "annotations": annotations, "categories": [category]}


def run_posetrack(model: Any, root: str | Path, *, split: str = "val", output_dir: str | Path | None = None,
                  detections: str | Path = "detections", drop_last_frame: bool = True,
                  **head_options: Any) -> dict[str, float]:
    """PoseTrack with given poses on the tree at `root` (`datasets.read_posetrack`; given poses under
    `<detections>/<split>/`): every video tracked by `associate_poses` and scored by `metrics.posetrack_scores`
    (per joint as poseval: MOTA, MOTP, Precision, Recall, IDF1 (UniTrack's), IDF1_combined, IDSW, FP, FN,
    MOTA_<joint group>; fractions, counts as floats). With `output_dir`, the tracked poses are written as
    `<output_dir>/<video>.json` (PoseTrack18, what poseval reads) and each video's scores to `sequences.json`.
    `head_options` go to `associate_poses`."""
    scored, per_video = [], {}
    for video in datasets.read_posetrack(root, split, detections=detections):
        if video.detections is None:
            raise TrackingDataError(f"{video.annotation_file}: no given poses to track")
        frames = datasets.read_frames([frame.file for frame in video.frames])
        tracked = associate_poses(model, frames, video.detections, **head_options)
        if output_dir is not None:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{video.name}.json").write_text(json.dumps(prediction_json(video, tracked)) + "\n")
        scored.append([(frame.people, people, frame.ignore_regions)
                       for frame, people in zip(video.frames, tracked, strict=True)])
        per_video[video.name] = metrics.posetrack_scores(scored[-1:], drop_last_frame=drop_last_frame)
    if output_dir is not None:
        metrics.write_sequence_scores(output_dir, per_video)
    return metrics.posetrack_scores(scored, drop_last_frame=drop_last_frame)
