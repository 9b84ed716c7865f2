"""The tracking transfer's appearance model and task heads (evals.tracking: VOS, SOT, MOT) on synthetic videos.

The heads' mechanics are checked with a colour "appearance model" (features = the cells' mean colours,
L2-normalised), which makes the expected result exact; the real (tiny, random) network only for strides/shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from evals.tracking import appearance, mot, sot, vos
from evals.tracking.appearance import AppearanceModel, normalization
from mec.augment import IMAGENET_MEAN, IMAGENET_STD
from mec.checkpoint import export_backbone
from mec.config import build_config
from mec.models import build_backbone

torch.set_num_threads(1)

BACKGROUND = (30, 120, 40)
RED = (230, 40, 40)
BLUE = (40, 60, 230)
YELLOW = (230, 220, 30)


class ColourModel:
    """Features = mean colour of each stride x stride cell (+ a small constant), L2-normalised over channels."""

    def __init__(self, stride: int = 4) -> None:
        self.stride = stride

    def features(self, frames) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames])).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        x = F.pad(x / 255.0 + 0.05, (0, pad_w, 0, pad_h), mode="replicate")
        return F.normalize(F.avg_pool2d(x, self.stride), dim=1)


def canvas(height: int, width: int) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = BACKGROUND
    return frame


def paint(frame: np.ndarray, box_xywh, colour) -> None:
    x, y, w, h = (int(v) for v in box_xywh)
    frame[max(0, y) : y + h, max(0, x) : x + w] = colour


def box_mask(shape, box_xywh) -> np.ndarray:
    mask = np.zeros(shape, bool)
    x, y, w, h = (int(v) for v in box_xywh)
    mask[max(0, y) : y + h, max(0, x) : x + w] = True
    return mask


def iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


# ---------------------------------------------------------------- appearance model


def test_imagenet_stem_resnet50_layer3_stride_one_gives_stride_8():
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", width=8, cifar_stem=False)
    model = AppearanceModel(backbone, IMAGENET_MEAN, IMAGENET_STD, stride=8)
    assert model.stride == 8
    frames = [np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8) for i in range(3)]
    feats = model.features(frames)
    assert feats.shape == (3, 8 * 4 * 4, 5, 7)  # layer3 of a width-8 R50: 128 channels, 40/8 x 56/8
    assert torch.allclose(feats.norm(dim=1), torch.ones(3, 5, 7), atol=1e-4)
    # The caller's backbone keeps its strides (the model works on a copy).
    assert backbone.layer3[0].conv2.stride == (2, 2) and backbone.layer3[0].downsample[0].stride == (2, 2)
    # Without the stride change, layer3 is 16x down-sampled.
    assert AppearanceModel(backbone, IMAGENET_MEAN, IMAGENET_STD, stride=16).stride == 16


def test_cifar_stem_resnet18_keeps_natural_strides():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=8, cifar_stem=True)
    model = AppearanceModel(backbone, IMAGENET_MEAN, IMAGENET_STD, stride=8)
    assert model.stride == 4
    feats = model.features(np.zeros((2, 30, 34, 3), np.uint8))
    assert feats.shape == (2, 32, 8, 9)  # ceil(30/4), ceil(34/4)
    assert not feats.requires_grad
    model.train()
    assert not model.training  # frozen: BatchNorm keeps its running statistics
    with pytest.raises(ValueError, match="down-sampled before layer3"):
        AppearanceModel(build_backbone("resnet50", width=8), IMAGENET_MEAN, IMAGENET_STD, stride=4)


def test_from_backbone_file_loads_an_exported_backbone(tmp_path):
    cfg = build_config({"name": "tiny", "data": {"augment": "digits", "image_size": 16}, "model": TINY_MODEL})
    torch.manual_seed(0)
    net = build_backbone(TINY_MODEL["arch"], width=TINY_MODEL["width"], cifar_stem=True, zero_init_residual=False)
    path = export_backbone(net.state_dict(), tmp_path / "backbone.pt", {"arch": "resnet18"})
    model = appearance.from_backbone_file(path, cfg)
    assert model.stride == 4
    torch.testing.assert_close(model.mean.flatten(), torch.full((3,), 0.5 * 255))
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    net.eval()
    with torch.no_grad():
        x = (torch.from_numpy(frame).float().permute(2, 0, 1)[None] / 255 - 0.5) / 0.5
        x = net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x))))))
    torch.testing.assert_close(model.features([frame]), F.normalize(x, dim=1), rtol=1e-4, atol=1e-5)


def test_normalization_follows_the_config_recipe():
    class Cfg:
        class data:
            augment = "digits"

    assert normalization(Cfg) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    Cfg.data.augment = "imagenet"
    assert normalization(Cfg) == (IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------- VOS


def moving_squares_video(n: int = 8, size: int = 64):
    frames, truths = [], []
    for t in range(n):
        frame = canvas(size, size)
        a = (6 + 3 * t, 8 + 2 * t, 14, 14)
        b = (44 - 2 * t, 40 - t, 12, 12)
        paint(frame, a, RED)
        paint(frame, b, BLUE)
        frames.append(frame)
        truths.append((a, b))
    return frames, truths


def test_vos_propagation_follows_moving_squares():
    frames, truths = moving_squares_video()
    first = np.zeros(frames[0].shape[:2], np.int64)
    first[box_mask(first.shape, truths[0][0])] = 3  # arbitrary label values are kept
    first[box_mask(first.shape, truths[0][1])] = 7
    masks = vos.propagate(ColourModel(stride=4), frames, first)
    assert len(masks) == len(frames)
    assert masks[0] is not first and np.array_equal(masks[0], first)
    for mask, (a, b) in zip(masks[1:], truths[1:], strict=True):
        assert mask.shape == first.shape
        assert set(np.unique(mask)) <= {0, 3, 7}
        assert mask_iou(mask == 3, box_mask(mask.shape, a)) > 0.5
        assert mask_iou(mask == 7, box_mask(mask.shape, b)) > 0.5


def test_vos_single_reference_and_local_radius():
    frames, truths = moving_squares_video(n=4)
    first = box_mask(frames[0].shape[:2], truths[0][0]).astype(np.int64)
    masks = vos.propagate(ColourModel(stride=4), frames, first, n_refs=1, topk=5, radius=2)
    assert mask_iou(masks[-1] == 1, box_mask(first.shape, truths[-1][0])) > 0.5
    with pytest.raises(ValueError, match="first_mask has shape"):
        vos.propagate(ColourModel(), frames, first[:10])


def test_vos_radius_restricts_short_memory_only():
    # One red cell in the reference at the left edge; the target's red cell far right. The first frame is
    # unrestricted (long memory), so its red cell is still reachable; a local-only reference is not.
    ref = torch.zeros(2, 1, 8)
    ref[1] = 1.0
    ref[:, 0, 0] = torch.tensor([1.0, 0.0])
    target = ref.clone()
    target[:, 0, 0] = torch.tensor([0.0, 1.0])
    target[:, 0, 7] = torch.tensor([1.0, 0.0])
    labels = torch.zeros(2, 1, 8)
    labels[0] = 1.0
    labels[:, 0, 0] = torch.tensor([0.0, 1.0])
    kwargs = {"topk": 1, "temperature": 0.05, "radius": 2}
    free = vos.propagate_labels(target, [ref], [labels], [False], **kwargs)
    local = vos.propagate_labels(target, [ref], [labels], [True], **kwargs)
    assert free[1, 0, 7] == 1.0
    assert local[1, 0, 7] == 0.0


def test_vos_with_the_real_network_shapes():
    torch.manual_seed(0)
    model = AppearanceModel(build_backbone("resnet18", width=8, cifar_stem=True), IMAGENET_MEAN, IMAGENET_STD)
    frames, _ = moving_squares_video(n=3, size=32)
    first = box_mask((32, 32), (4, 4, 10, 10)).astype(np.int64)
    masks = vos.propagate(model, frames, first)
    assert [m.shape for m in masks] == [(32, 32)] * 3
    assert all(set(np.unique(m)) <= {0, 1} for m in masks)


# ---------------------------------------------------------------- SOT


def sot_video(n: int = 10, size: int = 96):
    frames, boxes = [], []
    for t in range(n):
        frame = canvas(size, size)
        box = (20 + 4 * t, 24 + 3 * t, 16, 16)
        paint(frame, (70 - 3 * t, 10, 12, 12), BLUE)  # a distractor of another colour
        paint(frame, box, RED)
        frames.append(frame)
        boxes.append(box)
    return frames, boxes


def test_sot_tracks_a_moving_square():
    frames, boxes = sot_video()
    out = sot.track(ColourModel(stride=4), frames, boxes[0], exemplar_size=32, instance_size=64)
    assert out.shape == (len(frames), 4)
    np.testing.assert_allclose(out[0], boxes[0])
    for predicted, truth in zip(out, boxes, strict=True):
        assert iou(predicted, truth) > 0.5, (predicted, truth)


def test_sot_follows_a_growing_square_over_scales():
    frames, boxes = [], []
    for t in range(12):
        frame = canvas(128, 128)
        box = (40 + t, 40, 32 + t, 32 + t)
        paint(frame, box, RED)
        frames.append(frame)
        boxes.append(box)
    # Colour features barely separate the scales' peaks, so SiamFC's default penalty would keep the scale.
    out = sot.track(ColourModel(stride=4), frames, boxes[0], exemplar_size=64, instance_size=128, scale_penalty=1.0)
    assert out[-1, 2] > 40  # grew from 32 towards 43
    for predicted, truth in zip(out, boxes, strict=True):
        assert iou(predicted, truth) > 0.5, (predicted, truth)


def test_sot_crop_pads_with_the_mean_colour():
    frame = canvas(20, 20)
    crop = sot.crop_resize(frame, (0.0, 0.0), 20.0, 10)
    assert crop.shape == (10, 10, 3)
    np.testing.assert_allclose(crop[0, 0], BACKGROUND, atol=1e-3)  # outside the frame: the frame's mean colour
    np.testing.assert_allclose(crop[-1, -1], BACKGROUND, atol=1e-3)


def test_sot_with_the_real_network_shapes():
    torch.manual_seed(0)
    model = AppearanceModel(build_backbone("resnet18", width=8, cifar_stem=True), IMAGENET_MEAN, IMAGENET_STD)
    frames, boxes = sot_video(n=3, size=64)
    out = sot.track(model, frames, boxes[0], exemplar_size=32, instance_size=64)
    assert out.shape == (3, 4) and np.isfinite(out).all() and (out[:, 2:] > 0).all()


# ---------------------------------------------------------------- MOT


def crossing_video(n: int = 11):
    """Red moves right, blue moves left on overlapping rows: they cross (red on top) in the middle frame."""
    rng = np.random.default_rng(0)
    frames, detections, truth = [], [], []
    for t in range(n):
        frame = canvas(64, 100)
        red = (4 + 8 * t, 20, 16, 16)
        blue = (84 - 8 * t, 28, 16, 16)
        paint(frame, blue, BLUE)
        paint(frame, red, RED)
        dets = [(*red, 0.9), (*blue, 0.8)]
        if t in (3, 4):  # a faint detection of a yellow object: below the score threshold
            paint(frame, (40, 2, 10, 10), YELLOW)
            dets.append((40, 2, 10, 10, 0.3))
        order = rng.permutation(len(dets))
        frames.append(frame)
        detections.append(np.array([dets[i] for i in order], dtype=np.float64))
        truth.append({"red": red, "blue": blue})
    return frames, detections, truth


def test_mot_crossing_objects_keep_their_ids_and_faint_detections_start_no_track():
    frames, detections, truth = crossing_video()
    rows = mot.associate(ColourModel(stride=4), frames, detections)
    assert rows.shape == (2 * len(frames), 6)
    assert set(rows[:, 0].astype(int)) == set(range(1, len(frames) + 1))
    assert set(rows[:, 1].astype(int)) == {1, 2}  # the yellow detection (score 0.3) started no track
    ids = {}
    for frame_no, track_id, x, y, w, h in rows:
        boxes = truth[int(frame_no) - 1]
        name = next(k for k, b in boxes.items() if np.allclose((x, y, w, h), b))
        ids.setdefault(name, set()).add(int(track_id))
    assert ids["red"] != ids["blue"] and len(ids["red"]) == 1 and len(ids["blue"]) == 1


def test_mot_lost_tracks_are_dropped_after_max_lost():
    frames, detections, _ = crossing_video(n=8)
    red_only = [d[d[:, 4] == 0.9] for d in detections]
    gap = [d if t not in (2, 3, 4) else np.zeros((0, 5)) for t, d in enumerate(red_only)]
    kept = mot.associate(ColourModel(), frames, gap, max_lost=3)
    assert set(kept[:, 1].astype(int)) == {1}
    dropped = mot.associate(ColourModel(), frames, gap, max_lost=2)
    assert set(dropped[dropped[:, 0] <= 2, 1].astype(int)) == {1}
    assert set(dropped[dropped[:, 0] > 5, 1].astype(int)) == {2}
    # mean pooling associates the same way
    assert np.array_equal(mot.associate(ColourModel(), frames, gap, max_lost=3, pooling="mean"), kept)


def test_mot_with_the_real_network_shapes():
    torch.manual_seed(0)
    model = AppearanceModel(build_backbone("resnet18", width=8, cifar_stem=True), IMAGENET_MEAN, IMAGENET_STD)
    frames, detections, _ = crossing_video(n=3)
    rows = mot.associate(model, frames, detections)
    assert rows.shape[1] == 6 and len(rows) == 6
    assert (rows[:, 1] >= 1).all()
