"""Tracking-transfer metrics (paper Table 4, the UniTrack protocols): numpy arrays in, floats out.

Each function follows the benchmark's official evaluation code, named in its docstring:

* VOS on DAVIS-2017 (semi-supervised): `region_similarity` (J), `boundary_measure` (F), `davis_scores`. The official
  `davis2017-evaluation` is not on the package registry (it publishes nothing there) and TrackEval's `JAndF` needs
  OpenCV and scikit-image and matches objects by Hungarian assignment (the unsupervised protocol), so J and F are
  written here as `davis2017/metrics.py` and `davis2017/evaluation.py` (commit 30b698a) define them.
* SOT on OTB-2015 (one-pass evaluation): `otb_success_curve`, `otb_success_auc`, `otb_precision`, as pysot's
  `toolkit/utils/statistics.py` and `OPEBenchmark` compute them (the OTB MATLAB toolkit's definitions).
* MOT16/17 (MOTChallenge boxes): `mot_scores`, computed by TrackEval (the MOTChallenge's official evaluation code):
  its MOTChallenge dataset class does the benchmark's preprocessing, and its `HOTA`, `CLEAR` and `Identity` metrics
  give HOTA, MOTA / ID switches and IDF1.
* MOTS (MOTS Challenge masks): `mots_scores`, `mots_benchmark_scores`, by TrackEval's MOTSChallenge dataset class
  and the same three metrics (mask IoU; pycocotools decodes the masks inside TrackEval).
* PoseTrack: `posetrack_scores`, per joint as poseval's `evaluateTracking.py` (PCKh 0.5 joint matching, MOTA
  averaged over joints; IDF1 and ID switches as UniTrack's copy of poseval adds them), the CLEAR / Identity counts
  by TrackEval on per-joint data (poseval is not on the package registry; it counted with motmetrics).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

# DAVIS: the boundary tolerance, a fraction of the image diagonal (davis2017 `bound_th`), and the label of void pixels
# in the annotations (the official loader sets them to background).
DAVIS_BOUND_TH = 0.008
DAVIS_VOID_LABEL = 255
# OTB: the success plot's IoU thresholds 0:0.05:1 (21 of them) and the precision plot's centre-error thresholds 0..50.
OTB_IOU_THRESHOLDS = np.arange(0, 1.05, 0.05)
OTB_CENTRE_THRESHOLDS = np.arange(0, 51, 1)
MOT_BENCHMARKS = ("MOT15", "MOT16", "MOT17", "MOT20")


def write_sequence_scores(output_dir: str | Path, per_sequence: dict[str, dict[str, float]]) -> Path:
    """``<output_dir>/sequences.json``: each sequence's own scores, to see where a backbone fails (the benchmark's
    numbers combine the sequences; they are not the mean of these)."""
    path = Path(output_dir) / "sequences.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(per_sequence, indent=1, sort_keys=True))
    return path


# --------------------------------------------------------------------------------------------------------------- DAVIS

def _mask_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"expected two masks of one shape [H, W], got {pred.shape} and {gt.shape}")
    return pred.astype(bool), gt.astype(bool)


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS region similarity J: the intersection over union of two binary masks [H, W].

    As `davis2017.metrics.db_eval_iou` (without void pixels: the official loader sets them to background): a frame
    where both masks are empty scores 1.
    """
    pred, gt = _mask_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """The boundary map of a binary mask [H, W] as davis2017's `_seg2bmap` (David Martin's, 2003) draws it.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (pixels past the image
    count as background for those three, except that the last row compares only with the east neighbour and the last
    column only with the south one; the bottom-right pixel is never a boundary): one-pixel-wide boundaries offset by
    half a pixel towards the origin.
    """
    seg = np.asarray(seg).astype(bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk(radius): the pixels (x, y) of the grid -r..r with x^2 + y^2 <= r^2."""
    grid = np.arange(-radius, radius + 1)
    return grid[None, :] ** 2 + grid[:, None] ** 2 <= radius ** 2


def boundary_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> float:
    """DAVIS contour accuracy F: the F-measure of boundary precision and recall of two binary masks [H, W].

    As `davis2017.metrics.f_measure`: boundaries by `seg2bmap`; a boundary pixel matches when the other mask's boundary,
    dilated by a disk of radius ceil(bound_th * image diagonal) pixels (bound_th >= 1 is a radius in pixels), covers
    it (the official code dilates with cv2.dilate, the same binary dilation as scipy's with that structuring element);
    precision = matched predicted boundary / predicted boundary, recall likewise for the ground truth. An empty
    predicted boundary has precision 1 (recall 0 against a non-empty one), an empty ground-truth boundary recall 1;
    both empty gives F = 1.
    """
    pred, gt = _mask_pair(pred, gt)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    disk = _disk(int(bound_pix))
    fg_boundary, gt_boundary = seg2bmap(pred), seg2bmap(gt)
    fg_dil = ndimage.binary_dilation(fg_boundary, structure=disk)
    gt_dil = ndimage.binary_dilation(gt_boundary, structure=disk)
    n_fg, n_gt = np.count_nonzero(fg_boundary), np.count_nonzero(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(fg_boundary & gt_dil) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _label_sequence(frames: Any, what: str, index: int) -> np.ndarray:
    try:
        array = np.stack([np.asarray(frame) for frame in frames])
    except ValueError as error:
        raise ValueError(f"expected {what} sequence {index} to be label maps [H, W] of one shape ({error})") from None
    if array.ndim != 3:
        raise ValueError(f"expected {what} sequence {index} to be a list of label maps [H, W], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected {what} sequence {index} to hold integer labels, got dtype {array.dtype}")
    return array


def davis_scores(preds: Sequence[Sequence[np.ndarray]], gts: Sequence[Sequence[np.ndarray]],
                 bound_th: float = DAVIS_BOUND_TH) -> dict[str, float]:
    """DAVIS-2017 semi-supervised scores of per-sequence lists of label maps [H, W] (0 background, k object k).

    As `davis2017.evaluation.DAVISEvaluation.evaluate` with task 'semi-supervised' and `utils.db_statistics`:
    * the objects of a sequence are labels 1..max of its first ground-truth frame (void label 255 counts as
      background, as the official loader sets it);
    * the first frame (given to the tracker) and the last frame are excluded (`all_gt_masks[:, 1:-1]`), so a sequence
      needs at least 3 frames;
    * per object, J and F of every remaining frame; its mean, and its recall: the fraction of frames scoring > 0.5;
    * J_mean, J_recall, F_mean, F_recall are the means of those per-object values over all objects of all sequences
      (so a sequence weighs by its number of objects), JF_mean = (J_mean + F_mean) / 2.
    A predicted label above the sequence's object count is a ValueError (the official code stops there); an object
    the prediction never labels scores as an empty mask. Decay (J-Decay, F-Decay) is not computed.
    """
    if len(preds) != len(gts):
        raise ValueError(f"expected as many predicted sequences as ground-truth ones, got {len(preds)} and {len(gts)}")
    j_mean, j_recall, f_mean, f_recall = [], [], [], []
    for index, (pred_frames, gt_frames) in enumerate(zip(preds, gts, strict=True)):
        pred, gt = _label_sequence(pred_frames, "predicted", index), _label_sequence(gt_frames, "ground-truth", index)
        if pred.shape != gt.shape:
            raise ValueError(f"expected sequence {index}'s prediction to match its ground truth [T, H, W] {gt.shape}, "
                             f"got {pred.shape}")
        if gt.shape[0] < 3:
            raise ValueError(f"expected sequence {index} to have at least 3 frames (the first and last are not "
                             f"scored), got {gt.shape[0]}")
        gt = np.where(gt == DAVIS_VOID_LABEL, 0, gt)
        num_objects = int(gt[0].max())
        pred, gt = pred[1:-1], gt[1:-1]
        if pred.max() > num_objects:
            raise ValueError(f"expected sequence {index}'s predicted labels in 0..{num_objects} (its objects in the "
                             f"first frame), got {int(pred.max())}")
        for obj in range(1, num_objects + 1):
            j = np.array([region_similarity(p == obj, g == obj) for p, g in zip(pred, gt, strict=True)])
            f = np.array([boundary_measure(p == obj, g == obj, bound_th) for p, g in zip(pred, gt, strict=True)])
            j_mean.append(j.mean())
            j_recall.append(np.mean(j > 0.5))
            f_mean.append(f.mean())
            f_recall.append(np.mean(f > 0.5))
    if not j_mean:
        raise ValueError("expected at least one object in the first ground-truth frame of some sequence, got none")
    scores = {"J_mean": float(np.mean(j_mean)), "J_recall": float(np.mean(j_recall)),
              "F_mean": float(np.mean(f_mean)), "F_recall": float(np.mean(f_recall))}
    scores["JF_mean"] = (scores["J_mean"] + scores["F_mean"]) / 2
    return scores


# ----------------------------------------------------------------------------------------------------------------- OTB

def _box_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=float), np.asarray(gt, dtype=float)
    if pred.ndim != 2 or pred.shape[1] != 4 or gt.ndim != 2 or gt.shape[1] != 4:
        raise ValueError(f"expected boxes [T, 4] as (x, y, w, h), got {pred.shape} and {gt.shape}")
    if len(pred) != len(gt):
        raise ValueError(f"expected as many predicted boxes as ground-truth ones, got {len(pred)} and {len(gt)}")
    if len(gt) == 0:
        raise ValueError("expected at least one frame, got 0")
    return pred, gt


def _overlap_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pysot's overlap_ratio: IoU of (x, y, w, h) boxes with continuous coordinates, clipped to [0, 1]."""
    left, right = np.maximum(a[:, 0], b[:, 0]), np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    top, bottom = np.maximum(a[:, 1], b[:, 1]), np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    intersect = np.maximum(0, right - left) * np.maximum(0, bottom - top)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(intersect / union, 0, 1)


def otb_success_curve(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """The OTB success plot of one sequence: for each IoU threshold 0, 0.05, ..., 1 the fraction of frames whose IoU
    is strictly above it (pysot's `success_overlap`). Frames whose ground truth has no positive width and height score
    IoU -1 (a failure at every threshold) but still count in the denominator, as in pysot."""
    pred, gt = _box_pair(pred_xywh, gt_xywh)
    iou = np.full(len(gt), -1.0)
    valid = np.all(gt[:, 2:] > 0, axis=1)
    iou[valid] = _overlap_ratio(gt[valid], pred[valid])
    return np.array([np.sum(iou > threshold) / len(gt) for threshold in OTB_IOU_THRESHOLDS])


def otb_success_auc(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> float:
    """OTB success AUC of one sequence: the mean of the success plot over its 21 thresholds (OTB toolkit, pysot).

    The benchmark's number is the mean of this over the sequences. Because success is `IoU > threshold`, the
    threshold 1 is never passed: a perfect tracker scores 20/21 (0.952), as in the official toolkits.
    """
    return float(np.mean(otb_success_curve(pred_xywh, gt_xywh)))


def otb_precision(pred_xywh: np.ndarray, gt_xywh: np.ndarray, threshold: float = 20) -> float:
    """OTB precision of one sequence: the fraction of frames whose box centres are at most `threshold` pixels apart.

    As pysot's `success_error` on `convert_bb_to_center` centres (x + (w - 1) / 2, y + (h - 1) / 2); frames whose
    ground-truth centre is not positive in both coordinates get distance -1 and so count as within the threshold, as in
    pysot. The benchmark's number is the mean over sequences at 20 pixels.
    """
    pred, gt = _box_pair(pred_xywh, gt_xywh)
    pred_centre = pred[:, :2] + (pred[:, 2:] - 1) / 2
    gt_centre = gt[:, :2] + (gt[:, 2:] - 1) / 2
    dist = np.full(len(gt), -1.0)
    valid = np.all(gt_centre > 0, axis=1)
    dist[valid] = np.linalg.norm(gt_centre[valid] - pred_centre[valid], axis=1)
    return float(np.sum(dist <= threshold) / len(gt))


# ----------------------------------------------------------------------------------------------------------------- MOT

def _mot_rows(rows: Any, what: str) -> np.ndarray:
    array = np.asarray(rows, dtype=float)
    if array.size == 0:
        return np.empty((0, 10))
    if array.ndim != 2 or array.shape[1] < 6:
        raise ValueError(f"expected {what} rows [N, >=6] as (frame, id, x, y, w, h, ...), got shape {array.shape}")
    if np.any(array[:, 0] < 1) or np.any(array[:, 0] != np.round(array[:, 0])):
        raise ValueError(f"expected {what} frames to be integers from 1 (MOTChallenge numbering)")
    return array


def _write_mot_file(path: Path, rows: np.ndarray, defaults: tuple[float, ...]) -> None:
    """MOTChallenge text rows; missing columns (conf / consider flag, class, visibility, ...) take `defaults`."""
    full = np.empty((len(rows), 6 + len(defaults)))
    full[:, 6:] = defaults
    width = min(rows.shape[1], full.shape[1])
    full[:, :width] = rows[:, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for row in full:
            handle.write(f"{int(row[0])},{int(row[1])}," + ",".join(repr(float(v)) for v in row[2:]) + "\n")


def _mot_sequence_results(gt_rows: Any, pred_rows: Any, num_frames: int | None, benchmark: str,
                          metrics: Sequence[Any]) -> list[dict[str, Any]]:
    """TrackEval's per-sequence results of ``metrics`` for one sequence (see `mot_scores`)."""
    from trackeval.datasets import MotChallenge2DBox

    gt, pred = _mot_rows(gt_rows, "ground-truth"), _mot_rows(pred_rows, "predicted")
    last_frame = int(max(gt[:, 0].max(initial=0), pred[:, 0].max(initial=0)))
    if num_frames is None:
        num_frames = last_frame
    if num_frames < max(last_frame, 1):
        raise ValueError(f"expected num_frames >= the last frame of the rows ({last_frame}) and >= 1, got {num_frames}")
    with tempfile.TemporaryDirectory(prefix="mot-scores-") as folder:
        root = Path(folder)
        _write_mot_file(root / "gt" / "seq" / "gt" / "gt.txt", gt, (1.0, 1.0, 1.0))
        _write_mot_file(root / "trackers" / "pred" / "data" / "seq.txt", pred, (1.0, -1.0, -1.0, -1.0))
        dataset = MotChallenge2DBox({
            "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"), "TRACKERS_TO_EVAL": ["pred"],
            "BENCHMARK": benchmark, "SEQ_INFO": {"seq": int(num_frames)}, "SKIP_SPLIT_FOL": True,
            "PRINT_CONFIG": False})
        raw = dataset.get_raw_seq_data("pred", "seq")
    data = dataset.get_preprocessed_seq_data(raw, "pedestrian")
    return [metric.eval_sequence(data) for metric in metrics]


def mot_scores(gt_rows: np.ndarray, pred_rows: np.ndarray, num_frames: int | None = None,
               benchmark: str = "MOT17") -> dict[str, float]:
    """MOTChallenge scores of one sequence, by TrackEval (HOTA, CLEAR and Identity on the MOTChallenge 2D-box data).

    `gt_rows` [N, 6..9]: (frame, id, x, y, w, h[, consider, class, visibility]) as gt.txt; rows without the last
    three count as considered pedestrians (1, 1, 1). `pred_rows` [M, >=6]: (frame, id, x, y, w, h[, conf, ...]) as a
    tracker's result file. Frames count from 1; `num_frames` (seqinfo.ini's seqLength) defaults to the last frame of
    either. TrackEval's MOTChallenge preprocessing applies (`benchmark` MOT16/MOT17/MOT20; MOT15 skips it): predictions
    matched (IoU >= 0.5) to distractor classes are dropped, and only considered pedestrian rows are ground truth.
    Boxes match at IoU >= 0.5 for MOTA / IDF1; HOTA averages over the 19 IoU thresholds 0.05..0.95.

    Returns HOTA, DetA, AssA, LocA; MOTA, MOTP, IDSW, FP, FN, Frag, MT, ML; IDF1, IDP, IDR (fractions, counts as
    floats). Several sequences: `mot_benchmark_scores`.
    """
    return mot_benchmark_scores([(gt_rows, pred_rows, num_frames)], benchmark)


def mot_benchmark_scores(sequences: Sequence[tuple[Any, Any, int | None]],
                         benchmark: str = "MOT17") -> dict[str, float]:
    """`mot_scores` of a benchmark's sequences together, each given as (gt_rows, pred_rows, num_frames): TrackEval
    combines the sequences' counts (`combine_sequences`, its "COMBINED_SEQ" row), not their scores' averages."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    if benchmark not in MOT_BENCHMARKS:
        raise ValueError(f"expected benchmark in {MOT_BENCHMARKS}, got {benchmark!r}")
    if not sequences:
        raise ValueError("expected at least one sequence to score, got none")
    metrics = (HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False}))
    per_sequence = [_mot_sequence_results(gt, pred, frames, benchmark, metrics) for gt, pred, frames in sequences]
    hota, clear, identity = (
        metric.combine_sequences({str(i): results[m] for i, results in enumerate(per_sequence)})
        for m, metric in enumerate(metrics))
    scores = {name: float(np.mean(hota[name])) for name in ("HOTA", "DetA", "AssA", "LocA")}
    scores.update({name: float(clear[name]) for name in ("MOTA", "MOTP", "IDSW", "Frag", "MT", "ML")})
    scores.update(FP=float(clear["CLR_FP"]), FN=float(clear["CLR_FN"]))
    scores.update({name: float(identity[name]) for name in ("IDF1", "IDP", "IDR")})
    return scores


# ---------------------------------------------------------------------------------------------------------------- MOTS

def _mots_lines(rows: Any, what: str) -> list[str]:
    """MOTS text lines of `rows`: objects with frame, track_id, class_id, height, width, rle attributes (as
    `datasets.MotsObject`) or 6-tuples in that order."""
    lines = []
    for index, row in enumerate(rows):
        if hasattr(row, "rle"):
            row = (row.frame, row.track_id, row.class_id, row.height, row.width, row.rle)
        if len(row) < 6:
            raise ValueError(f"expected {what} row {index} as (frame, id, class_id, height, width, rle), got {row!r}")
        frame, track_id, class_id, height, width = (int(v) for v in row[:5])
        if frame < 1:
            raise ValueError(f"expected {what} frames to count from 1 (MOTS numbering), got {frame} in row {index}")
        lines.append(f"{frame} {track_id} {class_id} {height} {width} {row[5]}\n")
    return lines


def _mots_sequence_results(gt_rows: Any, pred_rows: Any, num_frames: int | None,
                           metrics: Sequence[Any]) -> list[dict[str, Any]]:
    """TrackEval's per-sequence results of ``metrics`` for one MOTS sequence (see `mots_scores`)."""
    from trackeval.datasets import MOTSChallenge
    from trackeval.utils import TrackEvalException

    gt, pred = _mots_lines(gt_rows, "ground-truth"), _mots_lines(pred_rows, "predicted")
    last_frame = max((int(line.split(" ", 1)[0]) for line in gt + pred), default=0)
    if num_frames is None:
        num_frames = last_frame
    if num_frames < max(last_frame, 1):
        raise ValueError(f"expected num_frames >= the last frame of the rows ({last_frame}) and >= 1, got {num_frames}")
    with tempfile.TemporaryDirectory(prefix="mots-scores-") as folder:
        root = Path(folder)
        for path, lines in ((root / "gt" / "seq" / "gt" / "gt.txt", gt),
                            (root / "trackers" / "pred" / "data" / "seq.txt", pred)):
            path.parent.mkdir(parents=True)
            path.write_text("".join(lines))
        dataset = MOTSChallenge({
            "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"), "TRACKERS_TO_EVAL": ["pred"],
            "SEQ_INFO": {"seq": int(num_frames)}, "SKIP_SPLIT_FOL": True, "PRINT_CONFIG": False})
        try:
            raw = dataset.get_raw_seq_data("pred", "seq")
        except TrackEvalException as error:
            raise ValueError(f"TrackEval refused the MOTS rows: {error}") from None
    data = dataset.get_preprocessed_seq_data(raw, "pedestrian")
    return [metric.eval_sequence(data) for metric in metrics]


def mots_scores(gt_rows: Any, pred_rows: Any, num_frames: int | None = None) -> dict[str, float]:
    """MOTS Challenge scores of one sequence, by TrackEval (its MOTSChallenge data class; HOTA, CLEAR, Identity).

    Rows are MOTS lines: `datasets.MotsObject`s or tuples (frame, id, class_id, img_height, img_width, rle) with a
    COCO RLE counts string; frames count from 1, `num_frames` (seqinfo.ini's seqLength) defaults to the last frame
    of either. As TrackEval's MOTSChallenge does: class 2 (pedestrian) is scored, ground-truth class 10 rows are
    ignore regions (an unmatched prediction at least half inside them is dropped), the masks of a frame must not
    overlap (ValueError otherwise, as TrackEval refuses them), and masks match by mask IoU (>= 0.5 for MOTA /
    IDF1; HOTA over the 19 thresholds 0.05..0.95). pycocotools must be installed (TrackEval decodes the masks with
    it). Returns what `mot_scores` returns plus sMOTSA (CLEAR's soft MOTA on masks). Several sequences:
    `mots_benchmark_scores`.
    """
    return mots_benchmark_scores([(gt_rows, pred_rows, num_frames)])


def mots_benchmark_scores(sequences: Sequence[tuple[Any, Any, int | None]]) -> dict[str, float]:
    """`mots_scores` of a benchmark's sequences together, each (gt_rows, pred_rows, num_frames): TrackEval's
    `combine_sequences` (summed counts, its "COMBINED_SEQ" row), as `mot_benchmark_scores`."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    if not sequences:
        raise ValueError("expected at least one sequence to score, got none")
    metrics = (HOTA(), CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False}))
    per_sequence = [_mots_sequence_results(gt, pred, frames, metrics) for gt, pred, frames in sequences]
    hota, clear, identity = (
        metric.combine_sequences({str(i): results[m] for i, results in enumerate(per_sequence)})
        for m, metric in enumerate(metrics))
    scores = {name: float(np.mean(hota[name])) for name in ("HOTA", "DetA", "AssA", "LocA")}
    scores.update({name: float(clear[name]) for name in ("MOTA", "MOTP", "IDSW", "Frag", "MT", "ML")})
    scores.update(sMOTSA=float(clear["sMOTA"]), FP=float(clear["CLR_FP"]), FN=float(clear["CLR_FN"]))
    scores.update({name: float(identity[name]) for name in ("IDF1", "IDP", "IDR")})
    return scores


# ----------------------------------------------------------------------------------------------------------- PoseTrack

# poseval's 15 joints (its `Joint` order) and their PoseTrack18 slots; the ears are not evaluated.
POSEVAL_JOINTS = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "right_wrist", "right_elbow",
    "right_shoulder", "left_shoulder", "left_elbow", "left_wrist", "head_bottom", "nose", "head_top",
)
# poseval's table columns (eval_helpers.getCum): each the mean of its joints.
POSEVAL_JOINT_GROUPS = {
    "head": ("head_top", "head_bottom", "nose"), "shoulder": ("right_shoulder", "left_shoulder"),
    "elbow": ("right_elbow", "left_elbow"), "wrist": ("right_wrist", "left_wrist"),
    "hip": ("right_hip", "left_hip"), "knee": ("right_knee", "left_knee"), "ankle": ("right_ankle", "left_ankle"),
}
POSEVAL_DIST_THRESH = 0.5  # a joint matches within half the head size (PCKh 0.5)
POSEVAL_HEAD_FACTOR = 0.6  # head size = 0.6 x the head box diagonal (eval_helpers.getHeadSize)


def _inside_polygons(points: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """bool [n]: points (x, y) strictly inside any polygon [k, 2] (even-odd rule; points on an edge may go either
    way, where shapely's `contains`, which poseval uses, says outside)."""
    inside = np.zeros(len(points), dtype=bool)
    for polygon in polygons:
        polygon = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(polygon) < 3:
            continue
        x, y = points[:, 0:1], points[:, 1:2]
        (x0, y0), (x1, y1) = polygon.T[:, None, :], np.roll(polygon, -1, axis=0).T[:, None, :]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside |= (np.count_nonzero(crosses & (x < x_cross), axis=1) % 2 == 1)
    return inside


def _pose_arrays(people: Sequence[Any], ignore: Sequence[np.ndarray], ground_truth: bool, where: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(track ids [n], joints [n, 15, 2], present [n, 15], head sizes [n]) of a frame's people."""
    from evals.tracking.datasets import POSETRACK_KEYPOINTS

    slots = [POSETRACK_KEYPOINTS.index(name) for name in POSEVAL_JOINTS]
    ids, joints, present, heads = [], [], [], []
    for index, person in enumerate(people):
        keypoints = np.asarray(person.keypoints, dtype=np.float64)
        if keypoints.shape != (len(POSETRACK_KEYPOINTS), 3):
            raise ValueError(f"expected {where} person {index}'s keypoints as [17, 3] (x, y, v), got "
                             f"{keypoints.shape}")
        if person.track_id is None:
            raise ValueError(f"expected {where} person {index} to have a track id")
        keypoints = keypoints[slots]
        has = ~np.all(keypoints == 0, axis=1)  # poseval drops 0, 0, 0 points (unannotated in PoseTrack18)
        if ignore:
            has &= ~_inside_polygons(keypoints[:, :2], ignore)
        head = np.nan
        if ground_truth and has.any():
            if getattr(person, "head_box", None) is None:
                raise ValueError(f"expected {where} person {index} to have a head box (poseval's PCKh needs it)")
            head = POSEVAL_HEAD_FACTOR * float(np.hypot(*np.asarray(person.head_box, dtype=np.float64)[2:4]))
        ids.append(int(person.track_id))
        joints.append(keypoints[:, :2])
        present.append(has)
        heads.append(head)
    n = len(ids)
    return (np.asarray(ids, dtype=np.int64).reshape(n), np.asarray(joints).reshape(n, len(slots), 2),
            np.asarray(present, dtype=bool).reshape(n, len(slots)), np.asarray(heads, dtype=np.float64).reshape(n))


def _contiguous(ids_per_frame: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    unique = np.unique(np.concatenate(ids_per_frame)) if ids_per_frame else np.zeros(0, dtype=np.int64)
    return [np.searchsorted(unique, ids).astype(int) for ids in ids_per_frame], len(unique)


def _joint_sequence_data(frames: list[tuple], joint: int, threshold: float) -> dict[str, Any]:
    """TrackEval's data dict for one joint of one video: per frame the gt / predicted people with that joint, their
    track ids, and similarity 1 - distance / head size (clipped at 0), so that a pair matches exactly when poseval's
    distance is at most `threshold` (TrackEval's CLEAR and Identity match similarities >= 1 - threshold)."""
    gt_ids, tracker_ids, similarity = [], [], []
    for gt, pred in frames:
        g, p = gt[2][:, joint], pred[2][:, joint]
        gt_ids.append(gt[0][g])
        tracker_ids.append(pred[0][p])
        distance = np.linalg.norm(gt[1][g, joint][:, None, :] - pred[1][p, joint][None, :, :], axis=2)
        distance = distance / gt[3][g][:, None]
        similarity.append(np.clip(1.0 - distance * (POSEVAL_DIST_THRESH / threshold), 0.0, 1.0))
    gt_ids, num_gt_ids = _contiguous(gt_ids)
    tracker_ids, num_tracker_ids = _contiguous(tracker_ids)
    return {"num_timesteps": len(frames), "gt_ids": gt_ids, "tracker_ids": tracker_ids,
            "similarity_scores": similarity, "num_gt_ids": num_gt_ids, "num_tracker_ids": num_tracker_ids,
            "num_gt_dets": int(sum(len(ids) for ids in gt_ids)),
            "num_tracker_dets": int(sum(len(ids) for ids in tracker_ids))}


def posetrack_scores(videos: Sequence[Sequence[tuple]], *, threshold: float = POSEVAL_DIST_THRESH,
                     drop_last_frame: bool = True) -> dict[str, float]:
    """PoseTrack multi-person pose tracking scores, per joint as poseval (`evaluateTracking.py`, with the IDF1 and
    ID switches that UniTrack's copy of it adds) defines them, counted by TrackEval's CLEAR and Identity.

    `videos`: per video, its frames in order, each (gt_people, pred_people) or (gt_people, pred_people,
    ignore_regions); people have `keypoints` [17, 3] in PoseTrack18's slots (x, y, v; 0, 0, 0 = not annotated) and
    `track_id`, ground-truth people a `head_box` (x, y, w, h) too (`datasets.PosePerson` has all). As poseval:

    * the 15 joints of poseval (PoseTrack18's slots less the ears); a point is absent when it is 0, 0, 0, or inside
      an ignore region (then for the ground truth and the prediction alike);
    * frames without any ground-truth person are not evaluated (`cleanupData`), nor, with `drop_last_frame`, the
      last evaluated frame of each video (poseval's `imgidxs[:-1]`);
    * per joint and frame, the ground-truth and predicted people having that joint are the objects and hypotheses;
      a pair can match when the joints are at most `threshold` x head size apart, head size = 0.6 x the ground
      truth's head box diagonal (PCKh); the matching, misses, false positives and ID switches are the CLEAR MOT
      ones (TrackEval's CLEAR with similarity 1 - distance / head size, threshold 0.5: poseval uses motmetrics);
    * MOTA, MOTP (1 - mean matched distance in head sizes), Precision and Recall of a joint from its counts summed
      over videos, then averaged over the joints that have ground truth; `MOTA_<group>` the mean of poseval's table
      columns (head, shoulder, elbow, wrist, hip, knee, ankle);
    * IDF1 as UniTrack's poseval: per joint the mean over videos of the video's IDF1 (TrackEval's Identity), then
      the mean over joints; IDF1_combined: per joint from Identity counts summed over videos; IDSW, FP, FN: totals
      over joints and videos.

    Deviations from poseval: a frame with ground truth but no prediction (or the reverse) counts its real misses
    (false positives), where poseval puts one dummy miss and one dummy false positive per joint; a video's IDF1 is
    left out of a joint's mean when that joint has neither ground truth nor predictions in the video (poseval's
    NaN would drop the joint altogether); matching prefers the previous frame's pairs (TrackEval) where motmetrics
    keeps a pair matched at any earlier frame when it is still within reach.
    """
    from trackeval.metrics import CLEAR, Identity

    if not 0 < threshold <= 1:
        raise ValueError(f"expected threshold in (0, 1], got {threshold}")
    clear, identity = CLEAR({"PRINT_CONFIG": False}), Identity({"PRINT_CONFIG": False})
    prepared = []
    for v, frames in enumerate(videos):
        kept = []
        for t, frame in enumerate(frames):
            if len(frame) not in (2, 3):
                raise ValueError(f"expected video {v} frame {t} as (gt_people, pred_people[, ignore_regions])")
            gt_people, pred_people = frame[0], frame[1]
            ignore = list(frame[2]) if len(frame) == 3 and frame[2] is not None else []
            if len(gt_people) == 0:
                continue
            kept.append((_pose_arrays(gt_people, ignore, True, f"video {v} frame {t} ground-truth"),
                         _pose_arrays(pred_people, ignore, False, f"video {v} frame {t} predicted")))
        for gt, pred in kept:
            for what, ids in (("ground-truth", gt[0]), ("predicted", pred[0])):
                if len(np.unique(ids)) != len(ids):
                    raise ValueError(f"expected unique {what} track ids per frame in video {v}, got {ids.tolist()}")
        prepared.append(kept[:-1] if drop_last_frame else kept)
    if not any(prepared):
        raise ValueError("expected at least one frame with ground truth to score, got none")
    names = list(POSEVAL_JOINTS)
    per_joint: dict[str, dict[str, float]] = {}
    idsw = fp = fn = 0.0
    for joint, name in enumerate(names):
        clear_res, identity_res, video_idf1 = {}, {}, []
        for v, frames in enumerate(prepared):
            if not frames:
                continue
            data = _joint_sequence_data(frames, joint, threshold)
            clear_res[str(v)] = clear.eval_sequence(data)
            identity_res[str(v)] = identity.eval_sequence(data)
            if data["num_gt_dets"] + data["num_tracker_dets"] > 0:
                video_idf1.append(float(identity_res[str(v)]["IDF1"]))
        combined_clear = clear.combine_sequences(clear_res)
        combined_identity = identity.combine_sequences(identity_res)
        idsw += float(combined_clear["IDSW"])
        fp += float(combined_clear["CLR_FP"])
        fn += float(combined_clear["CLR_FN"])
        if combined_clear["CLR_TP"] + combined_clear["CLR_FN"] == 0:
            continue  # no ground truth of this joint: poseval's NaN, left out of the means
        per_joint[name] = {
            "MOTA": float(combined_clear["MOTA"]),
            "MOTP": float(1.0 - (1.0 - combined_clear["MOTP"]) * threshold / POSEVAL_DIST_THRESH)
            if combined_clear["CLR_TP"] else 0.0,
            "Precision": float(combined_clear["CLR_Pr"]), "Recall": float(combined_clear["CLR_Re"]),
            "IDF1": float(np.mean(video_idf1)) if video_idf1 else float("nan"),
            "IDF1_combined": float(combined_identity["IDF1"]),
        }
    if not per_joint:
        raise ValueError("expected at least one annotated joint in the evaluated frames, got none")
    scores = {key: float(np.nanmean([joint[key] for joint in per_joint.values()]))
              for key in ("MOTA", "MOTP", "Precision", "Recall", "IDF1", "IDF1_combined")}
    scores.update(IDSW=idsw, FP=fp, FN=fn)
    for group, joints in POSEVAL_JOINT_GROUPS.items():
        values = [per_joint[name]["MOTA"] for name in joints if name in per_joint]
        scores[f"MOTA_{group}"] = float(np.mean(values)) if values else float("nan")
    return scores
