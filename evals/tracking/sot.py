"""Single-object tracking by cross-correlating frozen features, SiamFC-style, without training (UniTrack's XCorr).

The template is the feature map of a square exemplar crop around the first box, with SiamFC's context margin
(side ``sqrt((w + p) (h + p))``, ``p = context * (w + h)``) resized to ``exemplar_size``. Each frame, square search
crops of ``instance_size / exemplar_size`` times that side are taken around the previous centre at ``num_scales``
scales, resized to ``instance_size``; the response is the cross-correlation of the template with the search
features (both L2-normalised per position), up-sampled ``response_up`` times. The best scale is the one with the
highest (penalised, for non-unit scales) peak; its response, min-shifted and normalised to sum 1, is blended with
a cosine (Hann) window, and its argmax gives the displacement. The size follows the chosen scale with damping
``scale_lr``. Crops outside the frame are filled with the frame's mean colour.

Defaults are those of the SiamFC tracker in UniTrack's repository (tracker/sot/lib/tracker/siamfc.py, FCConfig,
SiamDW's values): exemplar 128 / instance 256 px (16 / 32 cells at stride 8), 3 scales of step 1.0375, scale
penalty 0.9745, scale damping 0.59, window influence 0.35, response up-sampling 16, context 0.5; the size is
kept within 0.2x-5x of the first box (UniTrack's min/max scale factors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def crop_resize(frame: np.ndarray, center: Sequence[float], side: float, out_size: int) -> np.ndarray:
    """The square of ``side`` pixels centred on ``center`` (x, y), resized to ``out_size``; mean-colour padding.

    Returns float32 [out_size, out_size, 3] in the frame's value range.
    """
    image = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).permute(2, 0, 1)[None]
    _, _, height, width = image.shape
    fill = image.mean(dim=(2, 3), keepdim=True)
    # Output pixel i samples the frame at cx + (i + 0.5) * side / out - side / 2 (pixel centres at k + 0.5).
    steps = (torch.arange(out_size, dtype=torch.float32) + 0.5) * (side / out_size) - side / 2
    xs = (center[0] + steps) / width * 2 - 1
    ys = (center[1] + steps) / height * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    # Sample the mean-centred frame with zero padding: outside the frame the crop is the mean colour.
    crop = F.grid_sample(image - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return crop[0].permute(1, 2, 0).numpy()


def _exemplar_side(size: np.ndarray, context: float) -> float:
    pad = context * float(size.sum())
    return float(np.sqrt((size[0] + pad) * (size[1] + pad)))


def track(
    model: Any,
    frames: Sequence[np.ndarray],
    init_box_xywh: Sequence[float],
    *,
    exemplar_size: int = 128,
    instance_size: int = 256,
    context: float = 0.5,
    num_scales: int = 3,
    scale_step: float = 1.0375,
    scale_penalty: float = 0.9745,
    scale_lr: float = 0.59,
    window_influence: float = 0.35,
    response_up: int = 16,
    min_scale: float = 0.2,
    max_scale: float = 5.0,
) -> np.ndarray:
    """Boxes [T,4] (x, y, w, h; x, y the top-left corner, pixels) of the target in every frame.

    ``model`` gives ``features(frames) -> [N,C,h,w]`` (L2-normalised) and ``stride``; the first row is
    ``init_box_xywh``. ``exemplar_size`` and ``instance_size`` should be multiples of the model's stride.
    """
    if len(frames) == 0:
        return np.zeros((0, 4))
    if num_scales < 1 or response_up < 1:
        raise ValueError("num_scales and response_up must be >= 1")
    if not 0 < exemplar_size <= instance_size:
        raise ValueError(f"need 0 < exemplar_size <= instance_size, got {exemplar_size}, {instance_size}")
    x, y, w, h = (float(v) for v in init_box_xywh)
    if w <= 0 or h <= 0:
        raise ValueError(f"the initial box needs a positive size, got {init_box_xywh!r}")
    center = np.array([x + w / 2, y + h / 2])
    size = np.array([w, h])
    min_size, max_size = np.maximum(min_scale * size, 1.0), max_scale * size
    stride = int(model.stride)

    template = model.features([crop_resize(frames[0], center, _exemplar_side(size, context), exemplar_size)])
    offsets = np.arange(num_scales) - (num_scales - 1) / 2
    scales = scale_step**offsets
    penalties = np.where(offsets == 0, 1.0, scale_penalty)
    boxes = [np.array([x, y, w, h])]
    window: torch.Tensor | None = None
    for frame in frames[1:]:
        height, width = frame.shape[:2]
        side_x = _exemplar_side(size, context) * instance_size / exemplar_size
        crops = [crop_resize(frame, center, side_x * s, instance_size) for s in scales]
        search = model.features(crops)
        response = F.conv2d(search, template)[:, 0]  # [S, R, R]
        r_h, r_w = response.shape[-2:]
        up = F.interpolate(
            response[:, None],
            size=((r_h - 1) * response_up + 1, (r_w - 1) * response_up + 1),
            mode="bicubic",
            align_corners=True,
        )[:, 0]
        peaks = up.flatten(1).max(dim=1).values.cpu().numpy() * penalties
        best = int(np.argmax(peaks))
        resp = up[best]
        resp = resp - resp.min()
        resp = resp / resp.sum().clamp_min(1e-12)
        if window is None or window.shape != resp.shape:
            window = torch.outer(
                torch.hann_window(resp.shape[0], periodic=False, dtype=resp.dtype, device=resp.device),
                torch.hann_window(resp.shape[1], periodic=False, dtype=resp.dtype, device=resp.device),
            )
            window = window / window.sum()
        resp = (1 - window_influence) * resp + window_influence * window
        row, col = np.unravel_index(int(resp.argmax()), tuple(resp.shape))
        # Response index i/response_up is a shift of (i/response_up - (R-1)/2) cells from the crop's centre.
        shift_cells = np.array([col / response_up - (r_w - 1) / 2, row / response_up - (r_h - 1) / 2])
        center = center + shift_cells * stride * (side_x * scales[best] / instance_size)
        size = np.clip((1 - scale_lr) * size + scale_lr * size * scales[best], min_size, max_size)
        center = np.clip(center, [0.0, 0.0], [float(width), float(height)])
        boxes.append(np.array([center[0] - size[0] / 2, center[1] - size[1] / 2, size[0], size[1]]))
    return np.stack(boxes)
