"""The per-image path's OpenCV ops against torchvision's and Pillow's, their random draws, and bad input."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as F

from mec.opencv_ops import OpenCVGaussianBlur, OpenCVHueColorJitter, gaussian_blur, shift_hue


def _noise(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _smooth(size: int = 96, seed: int = 0) -> Image.Image:
    """Noise upsampled bicubically: edges at every scale the blur's sigma range acts on, and every hue."""
    return _noise(size // 4, seed).resize((size, size), Image.Resampling.BICUBIC)


def _levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=float)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("image", [_smooth(), _noise(64, 1)], ids=["smooth", "noise"])
def test_blur_is_within_a_grey_level_of_torchvisions_23_px_kernel_everywhere(sigma, image):
    ours = _levels(gaussian_blur(image, sigma))
    kernel = _levels(F.gaussian_blur(image, [23, 23], [sigma, sigma]))
    assert np.abs(ours - kernel).max() <= 1.0, sigma
    if sigma >= 0.5:  # and it blurs: the image itself is many levels away
        assert np.abs(_levels(image) - kernel).mean() > 4 * np.abs(ours - kernel).mean()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_is_under_a_grey_level_from_pillows_on_average(sigma):
    """Pillow's three box passes are what the released code (MoCo v3's GaussianBlur) blurs with."""
    image = _smooth(224)
    pillow = _levels(image.filter(ImageFilter.GaussianBlur(radius=sigma)))
    assert np.abs(_levels(gaussian_blur(image, sigma)) - pillow).mean() < 1.0


def test_blur_keeps_the_mode_and_refuses_other_input():
    gray = _smooth().convert("L")
    blurred = gaussian_blur(gray, 1.0)
    assert blurred.mode == "L" and blurred.size == gray.size
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_blur(gray, 0.0)
    with pytest.raises(ValueError, match="RGB or L image, got mode 'P'"):
        gaussian_blur(_smooth().convert("P"), 1.0)
    with pytest.raises(TypeError, match="expected a PIL image, got Tensor"):
        gaussian_blur(torch.zeros(3, 8, 8), 1.0)


def test_blur_draws_sigma_uniformly_from_its_range_with_torchs_generator():
    blur = OpenCVGaussianBlur((0.1, 2.0))
    torch.manual_seed(0)
    sigmas = np.array([blur.sample_sigma() for _ in range(4000)])
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert stats.kstest(sigmas, stats.uniform(loc=0.1, scale=1.9).cdf).pvalue > 0.01
    torch.manual_seed(0)
    assert blur.sample_sigma() == sigmas[0]  # torch's generator: the loader's worker seeds fix it
    with pytest.raises(ValueError, match="sigma must be"):
        OpenCVGaussianBlur((2.0, 0.1))


def _exact_hue(image: Image.Image, factor: float) -> np.ndarray:
    """torchvision's float hue shift, rounded to levels: the op both 8-bit versions approximate."""
    shifted = F.adjust_hue(F.pil_to_tensor(image).float() / 255, factor)
    return (shifted * 255).round().permute(1, 2, 0).numpy()


def test_hue_shift_is_closer_to_the_exact_shift_than_torchvisions_pillow_op():
    image = _smooth(128, seed=3)
    ours, pillow = [], []
    for factor in np.linspace(-0.5, 0.5, 21).tolist():
        exact = _exact_hue(image, factor)
        ours.append(np.abs(_levels(shift_hue(image, factor)) - exact).mean())
        pillow.append(np.abs(_levels(F.adjust_hue(image, factor)) - exact).mean())
        if abs(factor) >= 0.05:  # a real shift: the input is far from it
            assert np.abs(_levels(image) - exact).mean() > 10 * ours[-1], factor
    # Measured: ours 0.27 to 0.47 levels (0.34 on average), Pillow's 0.27 to 1.47 (0.76).
    assert max(ours) < 0.6 and np.mean(ours) < 0.45 and np.mean(ours) < np.mean(pillow) - 0.2, (ours, pillow)


def test_hue_shift_passes_gray_images_and_refuses_bad_factors():
    gray = _smooth().convert("L")
    assert shift_hue(gray, 0.3) is gray
    with pytest.raises(ValueError, match=r"hue_factor must be in \[-0.5, 0.5\], got 0.6"):
        shift_hue(_smooth(), 0.6)
    with pytest.raises(ValueError, match="needs an RGB image, got mode 'RGBA'"):
        shift_hue(_smooth().convert("RGBA"), 0.1)


def test_jitter_draws_as_torchvisions_and_differs_from_it_only_in_the_hue_step():
    image = _smooth(64, seed=5)
    for seed in range(20):
        torch.manual_seed(seed)
        ours = OpenCVHueColorJitter(0.4, 0.4, 0.2)(image)  # no hue: torchvision's ops only
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        theirs = T.ColorJitter(0.4, 0.4, 0.2)(image)
        assert torch.rand(1) == after_ours  # the same number of draws from torch's generator
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), seed
    for seed in range(20):
        torch.manual_seed(seed)
        ours = _levels(OpenCVHueColorJitter(0.4, 0.4, 0.2, 0.1)(image))
        torch.manual_seed(seed)
        theirs = _levels(T.ColorJitter(0.4, 0.4, 0.2, 0.1)(image))
        assert np.abs(ours - theirs).mean() < 2.0, seed


def test_jitter_on_tensors_is_torchvisions_and_everything_pickles():
    tensor = F.pil_to_tensor(_smooth(32))
    torch.manual_seed(0)
    ours = OpenCVHueColorJitter(0.4, 0.4, 0.2, 0.1)(tensor)
    torch.manual_seed(0)
    assert torch.equal(ours, T.ColorJitter(0.4, 0.4, 0.2, 0.1)(tensor))
    for op in (OpenCVHueColorJitter(0.4, 0.4, 0.2, 0.1), OpenCVGaussianBlur((0.1, 2.0))):
        assert repr(pickle.loads(pickle.dumps(op))) == repr(op)


def test_opencv_runs_on_one_thread_in_the_loader_workers():
    assert cv2.getNumThreads() == 1  # its pool off: workers are the parallelism (mec.threads)


def test_without_opencv_the_ops_are_pillows_and_building_a_recipe_warns_once(monkeypatch):
    """Where cv2 cannot load (opencv-python without the system's libGL), pretraining still runs, on Pillow."""
    from mec import opencv_ops
    from mec.augment import imagenet_two_view

    monkeypatch.setattr(opencv_ops, "cv2", None)
    monkeypatch.setattr(opencv_ops, "OPENCV_ERROR", "ImportError: libGL.so.1: cannot open shared object file")
    opencv_ops.warn_if_opencv_is_missing.cache_clear()
    try:
        with pytest.warns(RuntimeWarning) as caught:
            imagenet_two_view(32)
            imagenet_two_view(32)
        assert len(caught) == 1
        assert "libGL.so.1" in str(caught[0].message) and "opencv-python-headless" in str(caught[0].message)
        image = _smooth(64)
        pillow_blur = image.filter(ImageFilter.GaussianBlur(radius=1.3))
        assert np.array_equal(np.asarray(gaussian_blur(image, 1.3)), np.asarray(pillow_blur))
        assert np.array_equal(np.asarray(shift_hue(image, -0.1)), np.asarray(F.adjust_hue(image, -0.1)))
    finally:
        opencv_ops.warn_if_opencv_is_missing.cache_clear()
