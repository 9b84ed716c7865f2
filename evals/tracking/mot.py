"""Multi-object tracking by appearance-only association of given detections (UniTrack's ``*_womotion`` MOT head).

Per frame, each detection's embedding is its box's region of the frame's feature map, ROI-aligned to
``feat_size`` cells (or averaged, ``pooling="mean"``), flattened and L2-normalised. Tracks keep an exponentially
smoothed embedding (``alpha`` of the old one). The cost of a track/detection pair is 1 - cosine similarity;
Hungarian assignment (scipy's ``linear_sum_assignment``) gives the matches, pairs costlier than ``max_cost`` are
not matched. Unmatched detections scoring above ``score_thresh`` start new tracks; a track without a match
for more than ``max_lost`` frames is dropped. No motion model, no IoU association: only appearance is compared.

Defaults from UniTrack (config/*_womotion.yaml, section mot, and tracker/mot): ``conf_thres: 0.5`` (detections
below it are discarded before association, as UniTrack's prepare_obs does), the first association's threshold
0.7, ``track_buffer: 30`` frames (at MOT16's 30 fps), ``feat_size: [4,10]`` ROI-align cells, feature smoothing
0.9 (STrack.alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import roi_align


@dataclass
class _Track:
    track_id: int
    embedding: torch.Tensor
    last_frame: int


def box_embeddings(
    feature_map: torch.Tensor,
    boxes_xywh: np.ndarray,
    stride: int,
    *,
    pooling: str = "roi",
    feat_size: tuple[int, int] = (4, 10),
) -> torch.Tensor:
    """[n, D] L2-normalised embeddings of boxes (x, y, w, h in image pixels) from one frame's map [C,h,w]."""
    if len(boxes_xywh) == 0:
        cells = feat_size[0] * feat_size[1] if pooling == "roi" else 1
        return feature_map.new_zeros((0, feature_map.shape[0] * cells))
    boxes = torch.as_tensor(np.asarray(boxes_xywh, dtype=np.float32)[:, :4], device=feature_map.device)
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    if pooling == "roi":
        pooled = roi_align(
            feature_map[None],
            [xyxy],
            output_size=feat_size,
            spatial_scale=1.0 / stride,
            sampling_ratio=2,
            aligned=True,
        )
        pooled = F.normalize(pooled, dim=1)  # each cell a unit vector, so the cosine is the cells' mean cosine
    elif pooling == "mean":
        h, w = feature_map.shape[-2:]
        cells = (xyxy / stride).clone()
        pooled = []
        for x0, y0, x1, y1 in cells.tolist():
            c0, r0 = max(0, min(w - 1, int(np.floor(x0)))), max(0, min(h - 1, int(np.floor(y0))))
            c1, r1 = max(c0 + 1, min(w, int(np.ceil(x1)))), max(r0 + 1, min(h, int(np.ceil(y1))))
            pooled.append(feature_map[:, r0:r1, c0:c1].mean(dim=(1, 2)))
        pooled = torch.stack(pooled)
    else:
        raise ValueError(f"pooling must be 'roi' or 'mean', got {pooling!r}")
    return F.normalize(pooled.flatten(1), dim=1)


def associate(
    model: Any,
    frames: Sequence[np.ndarray],
    detections: Sequence[np.ndarray],
    *,
    score_thresh: float = 0.5,
    max_cost: float = 0.7,
    max_lost: int = 30,
    alpha: float = 0.9,
    pooling: str = "roi",
    feat_size: tuple[int, int] = (4, 10),
) -> np.ndarray:
    """MOTChallenge rows (frame, id, x, y, w, h), frames and ids 1-based, of the detections assigned to tracks.

    ``detections[t]`` is an [n_t, 5] array (x, y, w, h, score) for ``frames[t]``; ``model`` gives
    ``features(frames) -> [N,C,h,w]`` (L2-normalised) and ``stride``. A track is reported in the frames where a
    detection was assigned to it, with that detection's box.
    """
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frames but {len(detections)} detection arrays")
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    stride = int(model.stride)
    tracks: list[_Track] = []
    next_id = 1
    rows: list[tuple[float, ...]] = []
    for t, (frame, dets) in enumerate(zip(frames, detections, strict=True), start=1):
        dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        dets = dets[dets[:, 4] > score_thresh]
        if len(dets) == 0:
            tracks = [tr for tr in tracks if t - tr.last_frame <= max_lost]
            continue
        fmap = model.features([frame])[0]
        embs = box_embeddings(fmap, dets[:, :4], stride, pooling=pooling, feat_size=feat_size)
        matched_dets: set[int] = set()
        if tracks:
            track_embs = torch.stack([tr.embedding for tr in tracks])
            cost = (1 - track_embs @ embs.T).cpu().numpy()
            for ti, di in zip(*linear_sum_assignment(cost), strict=True):
                if cost[ti, di] > max_cost:
                    continue
                track = tracks[ti]
                track.embedding = F.normalize(alpha * track.embedding + (1 - alpha) * embs[di], dim=0)
                track.last_frame = t
                matched_dets.add(int(di))
                rows.append((t, track.track_id, *dets[di, :4]))
        for di in range(len(dets)):
            if di not in matched_dets:
                tracks.append(_Track(next_id, embs[di], t))
                rows.append((t, next_id, *dets[di, :4]))
                next_id += 1
        tracks = [tr for tr in tracks if t - tr.last_frame <= max_lost]
    if not rows:
        return np.zeros((0, 6))
    out = np.array(rows, dtype=np.float64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]
