"""Semi-supervised video object segmentation by label propagation on frozen features (UniTrack's VOS head).

Each frame's labels are a weighted vote of reference positions: the affinity between a target position and every
reference position (cosine of L2-normalised features) is divided by a temperature; only the ``topk`` strongest
references of each target position are kept and softmax-weighted; the one-hot labels (soft, for propagated
frames) of the references, on the feature grid, are summed with those weights. References are the first frame
(UniTrack's long memory, everywhere) and the last ``n_refs - 1`` frames (short memory, only within ``radius``
feature cells of the target position). The result is up-sampled to the image and arg-maxed.

Defaults are UniTrack's VOS config (config/*_s3*.yaml, section vos): temperature 0.05, topk 10, radius 12;
its ``videoLen: 5`` context frames plus ``long_mem: [0]`` make 6 references, hence ``n_refs=6``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _check(name: str, value: Any, minimum: float) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _local_mask(h: int, w: int, radius: float, device: torch.device) -> torch.Tensor:
    """[h*w (target), h*w (reference)] True where the positions are less than ``radius`` cells apart."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    return torch.cdist(pos, pos) < radius


def propagate_labels(
    target: torch.Tensor,
    ref_feats: Sequence[torch.Tensor],
    ref_labels: Sequence[torch.Tensor],
    local: Sequence[bool],
    *,
    topk: int,
    temperature: float,
    radius: float,
    chunk: int = 1024,
) -> torch.Tensor:
    """Soft labels [K,h,w] of a target frame's features [C,h,w] from references' features [C,h,w] and labels [K,h,w].

    ``local[i]`` restricts reference ``i`` to within ``radius`` cells of each target position.
    """
    c, h, w = target.shape
    n = h * w
    query = target.reshape(c, n)
    keys = torch.cat([f.reshape(c, n) for f in ref_feats], dim=1)  # [C, R*n]
    labels = torch.cat([lab.reshape(lab.shape[0], n) for lab in ref_labels], dim=1)  # [K, R*n]
    mask = _local_mask(h, w, radius, target.device) if any(local) else None
    k = min(topk, keys.shape[1])
    out = torch.empty(labels.shape[0], n, dtype=labels.dtype, device=labels.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        aff = (query[:, start:stop].T @ keys) / temperature  # [q, R*n]
        if mask is not None:
            aff = aff.view(stop - start, len(ref_feats), n)
            allowed = mask[start:stop]
            for i, restricted in enumerate(local):
                if restricted:
                    aff[:, i].masked_fill_(~allowed, float("-inf"))
            aff = aff.reshape(stop - start, -1)
        weights, index = torch.topk(aff, k, dim=1)
        weights = torch.softmax(weights, dim=1)  # a -inf never wins: the first frame is unrestricted
        out[:, start:stop] = (labels[:, index] * weights[None]).sum(-1)
    return out.view(-1, h, w)


def _one_hot_grid(mask: np.ndarray, num_labels: int, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """[K,h,w] label fractions of each feature cell (the mask padded to the grid's extent, then area-pooled)."""
    onehot = torch.from_numpy(np.eye(num_labels, dtype=np.float32)[mask]).permute(2, 0, 1)[None]
    h, w = grid
    pad_h, pad_w = h * stride - mask.shape[0], w * stride - mask.shape[1]
    if pad_h or pad_w:
        # Pad with the nearest labels so that the partial cells at the border keep their labels' fractions.
        onehot = F.pad(onehot, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(onehot, stride)[0]


def propagate(
    model: Any,
    frames: Sequence[np.ndarray],
    first_mask: np.ndarray,
    *,
    topk: int = 10,
    temperature: float = 0.05,
    radius: float = 12,
    n_refs: int = 6,
) -> list[np.ndarray]:
    """Masks [H,W] (int labels, 0 = background) of every frame, the first being ``first_mask`` itself.

    ``model`` gives ``features(frames) -> [N,C,h,w]`` (L2-normalised) and ``stride``; ``frames`` are [H,W,3] RGB.
    Labels are those present in ``first_mask`` (any non-negative ints; absent ones are never predicted).
    """
    _check("topk", topk, 1)
    _check("n_refs", n_refs, 1)
    _check("radius", radius, 0)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    first_mask = np.asarray(first_mask)
    if len(frames) == 0:
        return []
    height, width = np.asarray(frames[0]).shape[:2]
    if first_mask.shape != (height, width):
        raise ValueError(f"first_mask has shape {first_mask.shape}, frames are {height}x{width}")
    if first_mask.min() < 0:
        raise ValueError("mask labels must be non-negative")
    values, dense = np.unique(first_mask, return_inverse=True)
    dense = dense.reshape(first_mask.shape)

    masks = [first_mask.copy()]
    if len(frames) == 1:
        return masks
    feats = model.features(frames)
    stride = int(model.stride)
    grid = tuple(feats.shape[-2:])
    first_labels = _one_hot_grid(dense, len(values), grid, stride).to(feats.device)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # short memory: (features, soft labels)
    for t in range(1, len(frames)):
        refs = [(feats[0], first_labels), *(history[-(n_refs - 1) :] if n_refs > 1 else [])]
        local = [False] + [True] * (len(refs) - 1)
        soft = propagate_labels(
            feats[t],
            [f for f, _ in refs],
            [lab for _, lab in refs],
            local,
            topk=topk,
            temperature=temperature,
            radius=radius,
        )
        history.append((feats[t], soft))
        full = (grid[0] * stride, grid[1] * stride)
        up = F.interpolate(soft[None], size=full, mode="bilinear", align_corners=False)[0, :, :height, :width]
        masks.append(values[up.argmax(0).cpu().numpy()])
    return masks
