"""Multi-object tracking and segmentation by appearance-only association of given masks (UniTrack's MOTS head,
``*_womotion``), and its run on a MOTS Challenge tree.

UniTrack (tracker/mot/mask.py, core/association/matching.py, commit a83e782) describes a mask by the set of feature
vectors of the feature-map cells under it, not by one pooled vector: the mask is brought to the feature map's
resolution (nearest), the features under it are kept, and when it covers more than ``max_mask_area`` cells
(MOTS: 200, PoseTrack: 400) the masked map and the mask are first scaled down by sqrt(max_mask_area / area)
(bilinear / nearest). Tracks and observations are compared by its "reconstruction similarity" (RSM,
``reconsdot_distance``): with every track cell and detection cell L2-normalised and A = softmax(100 x cosine) taken
over all the detections' cells for each track cell (and over all the tracks' cells for each detection cell), each
track is rebuilt from each detection (cell p of track t -> sum over the cells s of detection d of A[p, s] f_s); the
similarity of (t, d) is the cosine between the rebuilt and the original cell sets (flattened), averaged with the
same from the detection's side, and the cost is 1 - that. A track compares by the cells of its last matched
observation (STrack.curr_feat). Hungarian assignment on the cost, pairs costlier than ``max_cost`` (0.7, the first
association's threshold) unmatched, unmatched observations above ``score_thresh`` start tracks, tracks unmatched
for more than ``max_lost`` frames are dropped (UniTrack: ``int(frame_rate / 30 * track_buffer)``, track_buffer 30;
`run_mots` takes the frame rate from seqinfo.ini). No motion model, no IoU association, as `evals.tracking.mot`.

Where this differs from UniTrack's code: a mask's cells are those it covers at least half of (``min_cover``; a
mask covering no cell that much keeps its best-covered cell), where UniTrack samples one pixel per cell (nearest
down-sampling), which misses thin masks on small images; the cell sets are not zero-padded to a common length
before the softmax (UniTrack pads them, which lets the padding take softmax mass); the assignment is scipy's
Hungarian then the cost threshold (as `mot.associate`), where UniTrack solves lapjv with a cost limit; a mask that
covers no pixel is not an observation (UniTrack gives it random features). ``similarity="cosine"`` is the simpler
alternative of `mot.associate`'s ``pooling="mean"``: the mean of the cells' features, L2-normalised, smoothed over
the track (``alpha``), cost 1 - cosine.

Output masks are made disjoint before they are written or scored (TrackEval, as the MOTS Challenge, refuses
overlapping masks in a frame): a pixel claimed by several tracked masks goes to the highest-scoring one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from evals.tracking import datasets, metrics
from evals.tracking.datasets import MOTS_PEDESTRIAN, MotsObject, TrackingDataError

RSM_TEMPERATURE = 100.0  # reconsdot_distance's tmp
MOTS_MAX_MASK_AREA = 200  # UniTrack's mots.max_mask_area (cells)
TRACK_BUFFER = 30  # UniTrack's track_buffer, frames at 30 fps
SIMILARITIES = ("rsm", "cosine")


def max_lost_for(frame_rate: float | None, track_buffer: int = TRACK_BUFFER) -> int:
    """UniTrack's ``buffer_size = int(frame_rate / 30.0 * track_buffer)``; `track_buffer` without a frame rate."""
    return track_buffer if frame_rate is None else int(frame_rate / 30.0 * track_buffer)


def mask_cells(masks: np.ndarray, grid: tuple[int, int], stride: int, min_cover: float = 0.5) -> torch.Tensor:
    """bool [n, h, w]: the feature-map cells each mask [n, H, W] covers (the fraction of the cell's stride x stride
    pixels at least `min_cover`; a mask with pixels but no such cell keeps its best-covered cell)."""
    h, w = grid
    masks = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    if masks.ndim != 3:
        raise ValueError(f"expected masks [n, H, W], got shape {tuple(masks.shape)}")
    height, width = masks.shape[-2:]
    if math.ceil(height / stride) != h or math.ceil(width / stride) != w:
        raise ValueError(f"masks of {height}x{width} do not fit a {h}x{w} feature map at stride {stride}")
    padded = F.pad(masks, (0, w * stride - width, 0, h * stride - height))
    cover = F.avg_pool2d(padded[:, None], stride)[:, 0]
    cells = cover >= min_cover
    for index in range(len(masks)):
        if not cells[index].any() and cover[index].max() > 0:
            cells[index] = cover[index] == cover[index].max()
    return cells


def cell_sets(feature_map: torch.Tensor, cells: torch.Tensor, max_mask_area: int = MOTS_MAX_MASK_AREA
              ) -> list[torch.Tensor]:
    """Per mask, the feature vectors [k, C] of its cells (`mask_cells`) in a frame's map [C, h, w]; a mask of more
    than `max_mask_area` cells is first scaled down as UniTrack's extract_emb does. Empty for a mask with no cell."""
    sets = []
    cells = cells.to(feature_map.device)
    for cell in cells:
        area = int(cell.sum())
        if area > max_mask_area:
            factor = math.sqrt(max_mask_area / area)
            masked = F.interpolate((feature_map * cell)[None], scale_factor=factor, mode="bilinear")[0]
            small = F.interpolate(cell[None, None].float(), scale_factor=factor, mode="nearest")[0, 0] >= 0.5
            if small.any():
                sets.append(masked[:, small].T.contiguous())
                continue
        sets.append(feature_map[:, cell].T.contiguous())
    return sets


def _rebuilt_cosine(weights: torch.Tensor, keys: torch.Tensor, key_sizes: list[int], queries: torch.Tensor,
                    query_sizes: list[int]) -> torch.Tensor:
    """[n_query_sets, n_key_sets]: cosine between each query set and its rebuild from each key set, the rebuild of
    query cell p from key set j being sum_{s in j} weights[p, s] keys[s] (queries are unit vectors)."""
    owner = torch.repeat_interleave(torch.arange(len(query_sizes), device=queries.device),
                                    torch.as_tensor(query_sizes, device=queries.device))
    out = queries.new_zeros((len(query_sizes), len(key_sizes)))
    start = 0
    for j, size in enumerate(key_sizes):
        rebuilt = weights[:, start : start + size] @ keys[start : start + size]
        start += size
        dot = queries.new_zeros(len(query_sizes)).index_add_(0, owner, (rebuilt * queries).sum(1))
        norm2 = queries.new_zeros(len(query_sizes)).index_add_(0, owner, (rebuilt * rebuilt).sum(1))
        sizes = torch.as_tensor(query_sizes, dtype=queries.dtype, device=queries.device)
        out[:, j] = torch.where(norm2 > 0, dot / (norm2.sqrt() * sizes.sqrt()), torch.zeros_like(dot))
    return out


def rsm_cost(track_sets: Sequence[torch.Tensor], det_sets: Sequence[torch.Tensor],
             temperature: float = RSM_TEMPERATURE) -> np.ndarray:
    """[n_tracks, n_detections] cost 1 - RSM (UniTrack's ``reconsdot_distance``, without its zero padding)."""
    if not track_sets or not det_sets:
        return np.zeros((len(track_sets), len(det_sets)))
    track_sizes, det_sizes = [len(s) for s in track_sets], [len(s) for s in det_sets]
    tracks = F.normalize(torch.cat(list(track_sets)).float(), dim=1)
    dets = F.normalize(torch.cat(list(det_sets)).float(), dim=1)
    affinity = temperature * tracks @ dets.T
    track_from_dets = _rebuilt_cosine(F.softmax(affinity, dim=1), dets, det_sizes, tracks, track_sizes)
    dets_from_tracks = _rebuilt_cosine(F.softmax(affinity, dim=0).T, tracks, track_sizes, dets, det_sizes)
    return (1.0 - 0.5 * (track_from_dets + dets_from_tracks.T)).cpu().numpy()


@dataclass
class _Track:
    track_id: int
    cells: torch.Tensor  # the last observation's cell features [k, C]
    vector: torch.Tensor  # the smoothed mean embedding (similarity="cosine")
    last_frame: int


def associate_masks(
    model: Any,
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    scores: Sequence[Sequence[float]] | None = None,
    *,
    score_thresh: float = 0.5,
    max_cost: float = 0.7,
    max_lost: int = TRACK_BUFFER,
    similarity: str = "rsm",
    alpha: float = 0.9,
    max_mask_area: int = MOTS_MAX_MASK_AREA,
    min_cover: float = 0.5,
    temperature: float = RSM_TEMPERATURE,
) -> list[np.ndarray]:
    """Track ids (1, 2, ...) of the given masks, per frame an int64 array aligned with ``masks[t]`` (0 where the
    mask was not tracked: its score is at most `score_thresh`, or it covers no pixel).

    ``masks[t]``: bool [n_t, H, W] for ``frames[t]`` (RGB [H, W, 3]); ``scores[t]``: n_t scores (all 1 when
    None, as UniTrack's MOTS observations). ``model`` gives ``features(frames) -> [N, C, h, w]`` and ``stride``.
    """
    if len(frames) != len(masks) or (scores is not None and len(scores) != len(frames)):
        raise ValueError(f"{len(frames)} frames but {len(masks)} mask arrays"
                         + ("" if scores is None else f" and {len(scores)} score arrays"))
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    stride = int(model.stride)
    tracks: list[_Track] = []
    next_id = 1
    out: list[np.ndarray] = []
    for t, (frame, frame_masks) in enumerate(zip(frames, masks, strict=True), start=1):
        frame_masks = np.asarray(frame_masks, dtype=bool).reshape(-1, *np.shape(frame)[:2])
        frame_scores = np.ones(len(frame_masks)) if scores is None else np.asarray(scores[t - 1], dtype=np.float64)
        if len(frame_scores) != len(frame_masks):
            raise ValueError(f"frame {t}: {len(frame_masks)} masks but {len(frame_scores)} scores")
        ids = np.zeros(len(frame_masks), dtype=np.int64)
        keep = np.flatnonzero((frame_scores > score_thresh) & frame_masks.any(axis=(1, 2)))
        if len(keep):
            fmap = model.features([frame])[0]
            cells = mask_cells(frame_masks[keep], tuple(fmap.shape[-2:]), stride, min_cover)
            sets = cell_sets(fmap, cells, max_mask_area)
            vectors = [F.normalize(s.mean(0), dim=0) for s in sets]
            matched: set[int] = set()
            if tracks:
                if similarity == "rsm":
                    cost = rsm_cost([tr.cells for tr in tracks], sets, temperature)
                else:
                    cost = (1 - torch.stack([tr.vector for tr in tracks]) @ torch.stack(vectors).T).cpu().numpy()
                for ti, di in zip(*linear_sum_assignment(cost), strict=True):
                    if cost[ti, di] > max_cost:
                        continue
                    track = tracks[ti]
                    track.cells = sets[di]
                    track.vector = F.normalize(alpha * track.vector + (1 - alpha) * vectors[di], dim=0)
                    track.last_frame = t
                    matched.add(int(di))
                    ids[keep[di]] = track.track_id
            for di in range(len(keep)):
                if di not in matched:
                    tracks.append(_Track(next_id, sets[di], vectors[di], t))
                    ids[keep[di]] = next_id
                    next_id += 1
        tracks = [tr for tr in tracks if t - tr.last_frame <= max_lost]
        out.append(ids)
    return out


def disjoint_masks(masks: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """The masks [n, H, W] with each pixel left only to the highest-scoring mask claiming it (ties: the first)."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros_like(masks)
    taken = np.zeros(masks.shape[1:], dtype=bool)
    for index in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        out[index] = masks[index] & ~taken
        taken |= out[index]
    return out


def track_sequence(model: Any, sequence: datasets.MotsSequence, frames: Sequence[np.ndarray] | None = None,
                   *, class_id: int = MOTS_PEDESTRIAN, **head_options: Any) -> list[MotsObject]:
    """The MOTS result rows of one sequence: its given masks of class `class_id` (det/det.txt) associated by
    `associate_masks` (``max_lost`` from seqinfo.ini's frameRate unless given), made disjoint per frame by score,
    each written with id 2000 + track id (as UniTrack writes MOTS results) and class `class_id`."""
    frames = datasets.read_frames(sequence.frames) if frames is None else frames
    by_frame: list[list[MotsObject]] = [[] for _ in frames]
    for obj in sequence.det:
        if obj.class_id == class_id:
            by_frame[obj.frame - 1].append(obj)
    height, width = frames[0].shape[:2]
    for obj in sequence.det:
        if (obj.height, obj.width) != (height, width):
            raise TrackingDataError(f"{sequence.name}: detection masks of {obj.height}x{obj.width} for frames of "
                                    f"{height}x{width}")
    masks = [np.stack([obj.mask() for obj in objs]) if objs else np.zeros((0, height, width), bool)
             for objs in by_frame]
    scores = [[obj.score for obj in objs] for objs in by_frame]
    frame_rate = sequence.info.get("frameRate")
    head_options.setdefault("max_lost", max_lost_for(frame_rate if isinstance(frame_rate, int) else None))
    ids = associate_masks(model, frames, masks, scores, **head_options)
    rows = []
    for t, (frame_masks, frame_scores, frame_ids) in enumerate(zip(masks, scores, ids, strict=True), start=1):
        tracked = np.flatnonzero(frame_ids > 0)
        if not len(tracked):
            continue
        kept = disjoint_masks(frame_masks[tracked], [frame_scores[i] for i in tracked])
        for index, mask in zip(tracked, kept, strict=True):
            if mask.any():
                rows.append(MotsObject(t, 2000 + int(frame_ids[index]), class_id, height, width,
                                       datasets.rle_encode(mask), float(frame_scores[index])))
    return sorted(rows, key=lambda row: (row.frame, row.track_id))


def run_mots(model: Any, root: str | Path, *, split: str = "train", output_dir: str | Path | None = None,
             **head_options: Any) -> dict[str, float]:
    """MOTS with given masks on the tree `root/<split>/` (`datasets.read_mots`): every sequence tracked by
    `track_sequence` and all scored together by `metrics.mots_benchmark_scores` (TrackEval's MOTSChallenge:
    HOTA, DetA, AssA, LocA, MOTA, MOTP, sMOTSA, IDSW, Frag, MT, ML, FP, FN, IDF1, IDP, IDR; fractions, counts as
    floats). With `output_dir`, the results are written as `<output_dir>/<sequence>.txt` in the MOTS format (what
    TrackEval and the MOTS Challenge read) and each sequence's scores to `sequences.json`. `head_options` go to
    `associate_masks`."""
    scored, per_sequence = [], {}
    for sequence in datasets.read_mots(root, split, require_det=True):
        if not sequence.gt:
            raise TrackingDataError(f"{Path(root) / split / sequence.name}: no gt/gt.txt to score against")
        rows = track_sequence(model, sequence, **head_options)
        if output_dir is not None:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{sequence.name}.txt").write_text("".join(row.line() + "\n" for row in rows))
        scored.append((sequence.gt, rows, len(sequence.frames)))
        per_sequence[sequence.name] = metrics.mots_scores(sequence.gt, rows, len(sequence.frames))
    if output_dir is not None:
        metrics.write_sequence_scores(output_dir, per_sequence)
    return metrics.mots_benchmark_scores(scored)
