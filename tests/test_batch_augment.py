"""The batched ImageNet recipe (mec.batch_augment) against torchvision's per-image ops and samplers.

Each op with fixed parameters is compared with torchvision's functional op on CPU tensors; each sampled
parameter's distribution with the per-image sampler's (two-sample KS tests, binomial tests, p > 0.01, seeded so
the outcome is fixed); then shapes, independence, the views' asymmetry, determinism and argument checks.
Images are a few dozen pixels a side so that the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as F

from mec.augment import BLUR_SIGMA, IMAGENET_MEAN, IMAGENET_STD
from mec.batch_augment import (
    BLUR_RADIUS,
    BatchMultiCrop,
    BatchTwoView,
    BatchView,
    ViewParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    batch_imagenet_two_view,
    batch_local_view,
    batch_multi_crop,
    color_jitter,
    gaussian_blur,
    grayscale,
    hflip,
    normalize,
    resized_crop,
    resized_crop_each,
    sample_crop_boxes,
    sample_jitter,
    solarize,
    to_float,
)
from mec.opencv_ops import OpenCVGaussianBlur

DRAWS = 4000
KERNEL = 2 * BLUR_RADIUS + 1
TORCHVISION_JITTER = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]


def _images(n: int = 6, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    """Float [n, 3, height, width] in [0, 1]: noise upsampled bicubically (edges at several scales) plus a few
    grey pixels (equal channels: the hue conversion's degenerate case)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, height // 4, width // 4, generator=g)
    images = nnf.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    images = 0.7 * images + 0.3 * torch.rand(n, 3, height, width, generator=g)
    images[:, :, :3, :3] = images[:, :1, :3, :3]
    return images


def _mask(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


def _params(n: int, **changes: torch.Tensor) -> ViewParams:
    """Fixed parameters: every op on, varied per sample, then `changes`."""
    base = {
        "boxes": torch.tensor([[2, 3, 30, 36], [0, 0, 40, 48], [10, 5, 12, 20], [5, 20, 35, 28]])[:n],
        "flip": _mask(1, 0, 1, 0)[:n],
        "jitter": _mask(1, 1, 0, 1)[:n],
        "jitter_factors": torch.tensor([[0.7, 1.3, 0.9, 0.08], [1.2, 0.8, 1.1, -0.05],
                                        [1.0, 1.0, 1.0, 0.0], [0.65, 1.35, 0.85, 0.1]])[:n],
        "jitter_order": torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])[:n],
        "gray": _mask(0, 1, 0, 0)[:n],
        "sigma": torch.tensor([0.1, 0.8, 1.5, 2.0])[:n],
        "blur": _mask(1, 1, 0, 1)[:n],
        "solarize": _mask(1, 0, 0, 1)[:n],
    }
    return ViewParams(**(base | changes))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------- ops against torchvision's functional ops

# Boxes: shrinking (36 px wide to 16), enlarging (4 px to 16), the whole image, 1 x 1 pixel, the bottom-right edge.
CROP_BOXES = torch.tensor([[2, 3, 30, 36], [10, 5, 4, 4], [0, 0, 40, 48], [7, 9, 1, 1], [28, 30, 12, 18]])


def test_resized_crop_matches_torchvisions_bilinear_resized_crop_with_flip():
    images = _images(5)
    flip = _mask(1, 0, 1, 0, 1)
    ours = resized_crop(images, CROP_BOXES, 16, flip=flip)
    for i in range(5):
        expected = F.resized_crop(images[i], *CROP_BOXES[i].tolist(), [16, 16], antialias=False)
        expected = F.hflip(expected) if flip[i] else expected
        # Measured 2e-6: grid coordinates normalised to [-1, 1] and back, float rounding only.
        assert _max_diff(ours[i], expected) < 1e-5, i
    assert torch.equal(resized_crop(images, CROP_BOXES, 16), resized_crop(images, CROP_BOXES, 16, _mask(0, 0, 0, 0, 0)))


def test_resized_crop_differs_from_the_antialiased_resize_only_when_it_shrinks():
    """What the per-image path's Pillow resize (antialiased, as torchvision's antialias=True) would give."""
    images = _images(5)
    ours = resized_crop(images, CROP_BOXES, 16)
    antialiased = torch.stack([F.resized_crop(images[i], *CROP_BOXES[i].tolist(), [16, 16], antialias=True)
                               for i in range(5)])
    enlarged = [1, 3]  # 4 px and 1 px to 16: antialiasing changes nothing
    shrunk = [0, 2]  # 36 x 30 and 48 x 40 to 16: plain bilinear reads 2 x 2 pixels of each 2-3 px footprint
    assert _max_diff(ours[enlarged], antialiased[enlarged]) < 1e-5
    difference = (ours[shrunk] - antialiased[shrunk]).abs()
    # Measured on this texture: 0.20 at worst, 0.045 on average (11 grey levels), the aliased fine noise.
    assert 0.01 < difference.mean().item() < 0.1
    assert difference.max().item() < 0.5


def test_hflip_matches_torchvision():
    images = _images(3)
    ours = hflip(images, _mask(1, 0, 1))
    assert torch.equal(ours[0], F.hflip(images[0])) and torch.equal(ours[1], images[1])
    assert torch.equal(ours[2], F.hflip(images[2]))
    uint8 = (images * 255).to(torch.uint8)
    assert torch.equal(hflip(uint8, _mask(1, 1, 0))[1], F.hflip(uint8[1]))


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, F.adjust_brightness, [0.6, 1.4, 1.0, 0.0, 2.5]),
        (adjust_contrast, F.adjust_contrast, [0.6, 1.4, 1.0, 0.0, 2.5]),
        (adjust_saturation, F.adjust_saturation, [0.8, 1.2, 1.0, 0.0, 2.5]),
    ],
)
def test_blend_ops_match_torchvision_exactly(ours, theirs, factors):
    images = _images(5)
    out = ours(images, torch.tensor(factors))
    for i, factor in enumerate(factors):
        # The same float expression as torchvision's _blend: equal to the last bit (measured 0).
        assert _max_diff(out[i], theirs(images[i], factor)) < 1e-6, factor
    assert torch.equal(out[2], images[2])  # factor 1: identity


def test_adjust_hue_matches_torchvision():
    factors = [-0.1, 0.1, 0.05, -0.5, 0.5, 0.0]
    images = _images(6)
    out = adjust_hue(images, torch.tensor(factors))
    for i, factor in enumerate(factors):
        # The HSV -> RGB step is computed in closed form, not by torchvision's sector table: measured 5e-7.
        assert _max_diff(out[i], F.adjust_hue(images[i], factor)) < 1e-5, factor
    grey = images[:, :, :3, :3]
    assert _max_diff(out[:, :, :3, :3], grey) < 1e-6  # grey pixels have no hue to turn


def test_color_jitter_applies_each_samples_ops_in_its_own_order():
    images = _images(4)
    factors = torch.tensor([[0.7, 1.3, 0.9, 0.08], [1.2, 0.8, 1.1, -0.05], [0.6, 1.4, 0.8, 0.1],
                            [0.65, 1.35, 0.85, 0.1]])
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    out = color_jitter(images, factors, orders, _mask(1, 1, 0, 1))
    for i in (0, 1, 3):
        expected = images[i]
        for op in orders[i].tolist():  # ColorJitter.forward's loop over fn_idx
            expected = TORCHVISION_JITTER[op](expected, factors[i, op].item())
        assert _max_diff(out[i], expected) < 1e-5, i  # measured 5e-7 (the hue step)
    assert torch.equal(out[2], images[2])  # not jittered: untouched
    # The order matters, so the test above can tell a wrong order from the right one.
    reordered = color_jitter(images, factors, orders.flip(1), _mask(1, 1, 1, 1))
    assert _max_diff(reordered[0], out[0]) > 1e-2


def test_grayscale_matches_torchvision():
    images = _images(3)
    out = grayscale(images, _mask(1, 0, 1))
    assert _max_diff(out[0], F.rgb_to_grayscale(images[0], num_output_channels=3)) < 1e-6
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[2][0], out[2][1]) and torch.equal(out[2][1], out[2][2])


def test_gaussian_blur_matches_torchvisions_kernel_of_the_same_size():
    images = _images(6)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3])
    out = gaussian_blur(images, sigma, _mask(1, 1, 1, 1, 1, 0))
    for i in range(5):
        expected = F.gaussian_blur(images[i], [KERNEL, KERNEL], [sigma[i].item()] * 2)
        assert _max_diff(out[i], expected) < 1e-5, i  # separable vs 2-D kernel: measured 8e-7
    assert torch.equal(out[5], images[5])


def test_gaussian_blur_is_within_a_grey_level_of_the_per_image_paths_opencv_blur():
    """The per-image path blurs with OpenCV (a 6-sigma kernel, rounded to uint8); the batched 17 px kernel is a
    quarter of a grey level from it on average (measured 0.25 to 0.27: the rounding) and 1.12 at most."""
    images = (_images(3, 48, 48) * 255).round().to(torch.uint8)
    for sigma in (0.5, 1.0, 2.0):
        ours = gaussian_blur(to_float(images), torch.full((3,), sigma), _mask(1, 1, 1)) * 255
        for i in range(3):
            pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
            opencv = np.asarray(OpenCVGaussianBlur((sigma, sigma))(pil), dtype=float)
            unblurred = np.abs(images[i].permute(1, 2, 0).numpy().astype(float) - opencv).mean()
            difference = np.abs(ours[i].permute(1, 2, 0).numpy() - opencv)
            assert difference.max() < 1.5 and difference.mean() < min(0.5, unblurred / 4), (sigma, difference.max())


def test_solarize_matches_torchvision_and_pillows_uint8_threshold():
    images = _images(3)
    out = solarize(images, _mask(1, 0, 1))
    assert torch.equal(out[0], F.solarize(images[0], 0.5)) and torch.equal(out[1], images[1])
    # Threshold 0.5 on k / 255 floats inverts exactly the uint8 pixels >= 128, as the per-image path's Pillow op.
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    pil = Image.fromarray(levels[0].permute(1, 2, 0).numpy().copy())
    expected = torch.from_numpy(np.array(T.RandomSolarize(128, p=1.0)(pil))).permute(2, 0, 1)
    # 1 - k/255 and (255 - k)/255 may differ in the last bit; the pixels inverted are the same.
    assert _max_diff(solarize(to_float(levels), _mask(1))[0], expected.float() / 255) < 1e-6


def test_normalize_matches_torchvision():
    images = _images(2)
    expected = torch.stack([F.normalize(image, IMAGENET_MEAN, IMAGENET_STD) for image in images])
    assert _max_diff(normalize(images), expected) < 1e-6


def test_view_with_fixed_parameters_is_the_per_image_chain_of_torchvision_ops():
    """The whole view, in the per-image path's order (crop, jitter, grayscale, blur, solarize, flip, normalise)
    with torchvision's tensor ops; the batched view folds the flip into the crop, which commutes."""
    images = _images(4)
    params = _params(4)
    view = BatchView(16, blur_p=0.5, solarize_p=0.5)
    out = view.apply(images, params)
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    for i in range(4):
        x = F.resized_crop(images[i], *params.boxes[i].tolist(), [16, 16], antialias=False)
        if params.jitter[i]:
            for op in params.jitter_order[i].tolist():
                x = TORCHVISION_JITTER[op](x, params.jitter_factors[i, op].item())
        if params.gray[i]:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if params.blur[i]:
            x = F.gaussian_blur(x, [KERNEL, KERNEL], [params.sigma[i].item()] * 2)
        if params.solarize[i]:
            x = F.solarize(x, 0.5)
        if params.flip[i]:
            x = F.hflip(x)
        x = F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
        assert _max_diff(out[i], x) < 1e-4, i  # measured ~1e-5, after the division by std ~0.22
    # uint8 input is the same as its k / 255 floats.
    uint8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(view.apply(uint8, params), view.apply(uint8.float() / 255, params))


def test_padded_batches_crop_inside_each_images_own_size():
    """Images of different sizes padded into one tensor: boxes and pixels come from each image's own part."""
    images = _images(2, 40, 48)
    padded = torch.ones(2, 3, 64, 64)  # a fill unlike the images, to show any leak
    padded[:, :, :40, :48] = images
    sizes = torch.tensor([[40, 48], [40, 48]])
    generator = torch.Generator().manual_seed(3)
    boxes = sample_crop_boxes(sizes[:1].expand(500, 2), generator)
    assert bool((boxes[:, 0] + boxes[:, 2] <= 40).all()) and bool((boxes[:, 1] + boxes[:, 3] <= 48).all())
    assert _max_diff(resized_crop(padded, CROP_BOXES[:2], 16), resized_crop(images, CROP_BOXES[:2], 16)) < 1e-5
    view = BatchView(16, blur_p=1.0, solarize_p=0.2)
    a = view(padded, torch.Generator().manual_seed(4), image_sizes=sizes)
    b = view(images, torch.Generator().manual_seed(4))
    assert _max_diff(a, b) < 1e-4


def test_resized_crop_each_is_torchvisions_antialiased_resized_crop_per_image():
    """Images of their own sizes (the decoded-on-the-device path): each crop resized with antialiasing, as the
    per-image path's Pillow resize, and mirrored where flipped; uint8 in, the same as its k / 255 floats."""
    images = [_images(1, 40, 48, seed=1)[0], _images(1, 44, 36, seed=2)[0], _images(1, 40, 48, seed=3)[0]]
    boxes = torch.tensor([[2, 5, 36, 30], [0, 0, 44, 36], [10, 20, 4, 4]])
    flip = _mask(1, 0, 1)
    ours = resized_crop_each(images, boxes, 16, flip=flip)
    assert ours.shape == (3, 3, 16, 16) and ours.dtype == torch.float32
    for i, image in enumerate(images):
        expected = F.resized_crop(image, *boxes[i].tolist(), [16, 16], antialias=True)
        expected = F.hflip(expected) if flip[i] else expected
        assert _max_diff(ours[i], expected) < 1e-6, i
    uint8 = [(image * 255).round().to(torch.uint8) for image in images]
    floats = [image.float() / 255 for image in uint8]
    assert torch.equal(resized_crop_each(uint8, boxes, 16), resized_crop_each(floats, boxes, 16))


def test_a_list_of_images_gets_the_same_view_as_a_batch_but_antialiased():
    """A list draws its boxes inside each image's own size and applies the same ops as a [N, 3, H, W] batch;
    only the resampling differs (antialiased), so enlarging crops agree."""
    images = _images(3, 40, 48)
    view = BatchView(16, blur_p=0.5, solarize_p=0.5)
    params = _params(3, boxes=torch.tensor([[2, 3, 10, 12], [0, 0, 16, 16], [10, 5, 12, 8]]))  # all enlarge
    assert _max_diff(view.apply(list(images), params), view.apply(images, params)) < 1e-4
    shrinking = _params(3)
    assert _max_diff(view.apply(list(images), shrinking), view.apply(images, shrinking)) > 0.01
    sizes = [(40, 48), (20, 60), (64, 24)]
    different = [_images(1, h, w, seed=k)[0] for k, (h, w) in enumerate(sizes)]
    generator = torch.Generator().manual_seed(5)
    params = view.sample(torch.tensor(sizes), generator)
    for (h, w), (top, left, box_h, box_w) in zip(sizes, params.boxes.tolist(), strict=True):
        assert 0 <= top and top + box_h <= h and 0 <= left and left + box_w <= w
    out = batch_imagenet_two_view(16)(different, torch.Generator().manual_seed(6))
    assert [tuple(v.shape) for v in out] == [(3, 3, 16, 16)] * 2
    with pytest.raises(ValueError, match="image_sizes is for padded batches"):
        view(different, generator, image_sizes=torch.tensor(sizes))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        view([torch.zeros(1, 8, 8)], generator)


# ----------------------------------------------------------------- parameter distributions against torchvision's


def _ks(a, b) -> float:
    return stats.ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).pvalue


@pytest.mark.parametrize(
    ("height", "width", "scale"),
    [
        (48, 64, (0.2, 1.0)),  # the global views: some attempts overflow, a few samples fall back
        (40, 100, (0.2, 1.0)),  # a wide image: most attempts overflow, the central fallback is common
        (64, 64, (0.05, 0.14)),  # the local views' scale: every attempt fits
    ],
)
def test_crop_boxes_follow_random_resized_crops_distribution(height, width, scale):
    generator = torch.Generator().manual_seed(11)
    ours = sample_crop_boxes(torch.tensor([[height, width]]).expand(DRAWS, 2), generator, scale).numpy()
    with torch.random.fork_rng():
        torch.manual_seed(12)
        image = torch.empty(3, height, width)
        theirs = np.array([T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
                           for _ in range(DRAWS)])
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = [b[:, 2] * b[:, 3] / (height * width) for b in (ours, theirs)]
    aspect = [b[:, 3] / b[:, 2] for b in (ours, theirs)]
    centre_x = [(b[:, 1] + b[:, 3] / 2) / width for b in (ours, theirs)]
    centre_y = [(b[:, 0] + b[:, 2] / 2) / height for b in (ours, theirs)]
    for name, (a, b) in {"area": area, "aspect": aspect, "centre_x": centre_x, "centre_y": centre_y}.items():
        assert _ks(a, b) > 0.01, name


def test_crop_boxes_fall_back_to_torchvisions_central_crop():
    """No attempt can fit a 10 x 200 image (every candidate is over 10 px high): the central fallback, exactly."""
    generator = torch.Generator().manual_seed(0)
    for height, width in ((10, 200), (200, 10)):
        ours = sample_crop_boxes(torch.tensor([[height, width]] * 3), generator)
        expected = T.RandomResizedCrop.get_params(torch.empty(3, height, width), [0.2, 1.0], [3 / 4, 4 / 3])
        assert ours.tolist() == [list(expected)] * 3


def test_jitter_factors_and_order_follow_color_jitters_distribution():
    ours, order = sample_jitter(DRAWS, torch.Generator().manual_seed(21))
    jitter = T.ColorJitter(0.4, 0.4, 0.2, 0.1)
    with torch.random.fork_rng():
        torch.manual_seed(22)
        draws = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
                 for _ in range(DRAWS)]
    theirs = np.array([d[1:] for d in draws])
    for k, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        assert _ks(ours[:, k].numpy(), theirs[:, k]) > 0.01, name
    assert ours[:, 0].min() >= 0.6 and ours[:, 0].max() <= 1.4 and ours[:, 2].min() >= 0.8
    assert ours[:, 3].abs().max() <= 0.1
    # Orders: each row a permutation, all 24 equally likely (torch.randperm(4)'s distribution).
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(DRAWS, 4))
    permutations = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([permutations[tuple(row)] for row in order.tolist()], minlength=24)
    assert stats.chisquare(counts).pvalue > 0.01
    their_counts = np.bincount([permutations[tuple(d[0].tolist())] for d in draws], minlength=24)
    assert stats.chi2_contingency(np.stack([counts, their_counts])).pvalue > 0.01


@pytest.mark.parametrize(
    ("view", "blur_p", "solarize_p"),
    [("view1", 1.0, 0.0), ("view2", 0.1, 0.2), ("local", 0.5, 0.0)],
)
def test_bernoulli_rates_and_sigma_follow_the_per_image_recipe(view, blur_p, solarize_p):
    two_view = batch_imagenet_two_view(32)
    recipe = {"view1": two_view.view1, "view2": two_view.view2, "local": batch_local_view(16)}[view]
    params = recipe.sample(torch.tensor([[40, 48]]).expand(DRAWS, 2), torch.Generator().manual_seed(31))
    for name, p in {"flip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": blur_p, "solarize": solarize_p}.items():
        hits = int(getattr(params, name).sum())
        if p in (0.0, 1.0):
            assert hits == p * DRAWS, name  # never / always, exactly
        else:
            assert stats.binomtest(hits, DRAWS, p).pvalue > 0.01, (name, hits)
    sigma = params.sigma.numpy()
    assert stats.kstest(sigma, "uniform", args=(0.1, 1.9)).pvalue > 0.01
    with torch.random.fork_rng():
        torch.manual_seed(32)
        per_image = OpenCVGaussianBlur(BLUR_SIGMA)
        assert _ks(sigma, [per_image.sample_sigma() for _ in range(DRAWS)]) > 0.01


def test_a_wrong_distribution_fails_the_tests_statistics():
    """The KS and binomial checks above can fail: a crop scale of (0.3, 1) or a flip rate of 0.45 is caught."""
    generator = torch.Generator().manual_seed(41)
    sizes = torch.tensor([[48, 64]]).expand(DRAWS, 2)
    right = sample_crop_boxes(sizes, generator, (0.2, 1.0)).numpy()
    wrong = sample_crop_boxes(sizes, generator, (0.3, 1.0)).numpy()
    assert _ks(right[:, 2] * right[:, 3], wrong[:, 2] * wrong[:, 3]) < 0.01
    assert stats.binomtest(int(0.45 * DRAWS), DRAWS, 0.5).pvalue < 0.01


# ------------------------------------------------------------------ shapes, independence, asymmetry, determinism


def test_views_shapes_and_dtypes_for_uint8_and_float_batches():
    images = _images(3, 40, 48)
    generator = torch.Generator().manual_seed(0)
    for batch in (images, (images * 255).to(torch.uint8), images.double()):
        v1, v2 = batch_imagenet_two_view(24)(batch, generator)
        expected = torch.float64 if batch.dtype == torch.float64 else torch.float32
        assert v1.shape == v2.shape == (3, 3, 24, 24) and v1.dtype == v2.dtype == expected
        assert torch.isfinite(v1).all() and torch.isfinite(v2).all()
    crops = batch_multi_crop(24, local_crops=2, local_size=12)(images, generator)
    assert [tuple(c.shape) for c in crops] == [(3, 3, 24, 24)] * 2 + [(3, 3, 12, 12)] * 2


def test_samples_of_one_batch_get_their_own_parameters():
    same = _images(1).expand(8, 3, 40, 48)  # one image eight times
    view = BatchView(16, blur_p=1.0, solarize_p=0.0)
    params = view.sample(torch.tensor([[40, 48]]).expand(8, 2), torch.Generator().manual_seed(5))
    assert len({tuple(box) for box in params.boxes.tolist()}) > 1
    assert len(set(params.sigma.tolist())) == 8 and len(set(params.jitter_factors[:, 0].tolist())) == 8
    out = view.apply(same, params)
    assert all(_max_diff(out[0], out[i]) > 1e-3 for i in range(1, 8))


def test_view1_is_always_blurred_and_never_solarised_view2_rarely_blurred():
    two_view = batch_imagenet_two_view(16)
    sizes = torch.tensor([[40, 48]]).expand(400, 2)
    generator = torch.Generator().manual_seed(6)
    first, second = two_view.view1.sample(sizes, generator), two_view.view2.sample(sizes, generator)
    assert bool(first.blur.all()) and not bool(first.solarize.any())
    assert 0 < int(second.blur.sum()) < 100 and 0 < int(second.solarize.sum()) < 140
    assert (two_view.view1.blur_p, two_view.view1.solarize_p) == (1.0, 0.0)
    assert (two_view.view2.blur_p, two_view.view2.solarize_p) == (0.1, 0.2)
    local = batch_local_view()
    assert (local.size, local.blur_p, local.solarize_p, local.crop_scale) == (96, 0.5, 0.0, (0.05, 0.14))


def test_views_are_determined_by_the_generator():
    images = _images(3)
    recipe = batch_multi_crop(24, local_crops=1, local_size=12)
    a = recipe(images, torch.Generator().manual_seed(7))
    b = recipe(images, torch.Generator().manual_seed(7))
    c = recipe(images, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two views draw differently from one generator


def test_bad_arguments_raise_value_errors_naming_them():
    images = _images(2)
    generator = torch.Generator().manual_seed(0)
    view = BatchView(16, blur_p=1.0, solarize_p=0.0)
    with pytest.raises(ValueError, match="size"):
        BatchView(0, blur_p=1.0, solarize_p=0.0)
    with pytest.raises(ValueError, match="radius"):
        BatchView(BLUR_RADIUS, blur_p=1.0, solarize_p=0.0)
    with pytest.raises(ValueError, match="blur_p"):
        BatchView(16, blur_p=1.5, solarize_p=0.0)
    with pytest.raises(ValueError, match="solarize_p"):
        BatchView(16, blur_p=1.0, solarize_p=-0.1)
    with pytest.raises(ValueError, match="crop_scale"):
        BatchView(16, blur_p=1.0, solarize_p=0.0, crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="images"):
        view(images[:, :1], generator)
    with pytest.raises(ValueError, match="images"):
        view(images.to(torch.int32), generator)
    with pytest.raises(ValueError, match="generator"):
        view(images, 7)
    with pytest.raises(ValueError, match="image_sizes"):
        view(images, generator, image_sizes=torch.tensor([[41, 48], [40, 48]]))
    with pytest.raises(ValueError, match="image_sizes"):
        view(images, generator, image_sizes=torch.tensor([40, 48]))
    with pytest.raises(ValueError, match="params"):
        view.apply(images, _params(3))
    with pytest.raises(ValueError, match="boxes"):
        resized_crop(images, torch.zeros(3, 4), 16)
    with pytest.raises(ValueError, match="mask"):
        grayscale(images, torch.ones(2))
    with pytest.raises(ValueError, match="factors"):
        adjust_brightness(images, torch.ones(3))
    with pytest.raises(ValueError, match="order"):
        color_jitter(images, torch.ones(2, 4), torch.zeros(2, 3, dtype=torch.long), _mask(1, 1))
    with pytest.raises(ValueError, match="radius"):
        gaussian_blur(images[:, :, :8, :8], torch.ones(2), _mask(1, 1))
    with pytest.raises(ValueError, match="threshold"):
        solarize(images, _mask(1, 1), threshold=2.0)
    with pytest.raises(ValueError, match="scale"):
        sample_crop_boxes(torch.tensor([[40, 48]]), generator, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="strength"):
        sample_jitter(2, generator, strength=(0.4, 0.4, 0.2, 0.6))
    with pytest.raises(ValueError, match="jitter_order"):
        _params(2, jitter_order=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="local_crops"):
        BatchMultiCrop(view, view, view, local_crops=0)
    with pytest.raises(ValueError, match="local_view"):
        BatchMultiCrop(view, view)
    with pytest.raises(ValueError, match="view2"):
        BatchTwoView(view, "view")
    with pytest.raises(ValueError, match="local_size"):
        batch_multi_crop(24, local_size=24)
