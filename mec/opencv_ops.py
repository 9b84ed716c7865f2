"""The per-image path's two costliest colour ops done by OpenCV: Gaussian blur and the hue shift.

Measured on one core of the 2-core development machine (README, "Benchmarks"), on a 224 x 224 view:
Pillow's ``GaussianBlur`` 2.1 ms against OpenCV's 0.3 ms; torchvision's hue shift of a PIL image (Pillow's
RGB -> HSV -> RGB conversions) 2.5 ms against OpenCV's 0.28 ms. Both are drop-ins for the torchvision /
Pillow ops of the recipes in `mec.augment`, drawing their random parameters exactly as those do:

- `OpenCVGaussianBlur` convolves with a true Gaussian kernel (``cv2.GaussianBlur``, kernel 6 sigma + 1, borders
  reflected like torchvision's): within one grey level of torchvision's ``GaussianBlur(23)`` everywhere, and under
  one level on average from Pillow's three-box approximation, which the released code (MoCo v3's ``GaussianBlur``)
  uses.
- `OpenCVHueColorJitter` is torchvision's ``ColorJitter`` (same factors, same random order) whose hue step, on
  PIL RGB images, shifts H in OpenCV's 8-bit HSV instead of Pillow's. Both are 8-bit approximations of the exact
  float hue shift: OpenCV's is 0.34 grey levels from it on average, Pillow's 0.76 (`shift_hue`).

OpenCV's own thread pool is switched off at import: a view is small, a loader worker is one process on one
core of the job's budget (`mec.threads`), and OpenCV threads started before a fork can hang forked workers.

Where cv2 cannot load (opencv-python needs the system's libGL.so.1, which slim containers lack), the ops fall back
to Pillow's blur and torchvision's hue shift, the released code's ops, and building a recipe warns once, naming
the error and the fix (opencv-python-headless in place of opencv-python).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as F

try:
    import cv2
except ImportError as error:  # e.g. "libGL.so.1: cannot open shared object file"
    cv2, OPENCV_ERROR = None, f"{type(error).__name__}: {error}"
else:
    OPENCV_ERROR = None
    cv2.setNumThreads(0)


@functools.cache
def warn_if_opencv_is_missing() -> None:
    """One warning per process (the one building the recipes) when the ops run on the Pillow fallback."""
    if cv2 is None:
        warnings.warn(
            f"OpenCV (cv2) cannot be loaded ({OPENCV_ERROR}): blur and hue shift fall back to Pillow's ops, about "
            f"2x slower per image; on a machine without libGL run `pip install --force-reinstall --no-deps "
            f"opencv-python-headless==5.0.0.93`", RuntimeWarning, stacklevel=3)


def _check_pil(image: object) -> None:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """`image` (PIL, mode "RGB" or "L") blurred by a Gaussian of standard deviation `sigma` pixels."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    _check_pil(image)
    if image.mode not in ("RGB", "L"):
        raise ValueError(f"gaussian_blur needs an RGB or L image, got mode {image.mode!r}")
    if cv2 is None:
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))
    blurred = cv2.GaussianBlur(np.asarray(image), (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return Image.fromarray(blurred)  # the array's shape gives the mode back: L or RGB


def shift_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """`image` with its hue shifted by `hue_factor` of a turn, like ``torchvision.transforms.functional.adjust_hue``
    (same factor range, same pass-through of modes without hue: "L", "1", "I", "F").

    OpenCV's 8-bit H has 256 steps a turn; the shift is ``floor(hue_factor * 256)`` steps, the rounding measured
    closest to the exact float shift (0.34 grey levels from it on average over factors in [-0.5, 0.5], against
    0.76 for torchvision's Pillow op, ``int(hue_factor * 255)`` steps of Pillow's HSV; tests/test_opencv_ops.py).
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor!r}")
    _check_pil(image)
    if image.mode in {"L", "1", "I", "F"}:
        return image
    if image.mode != "RGB":
        raise ValueError(f"shift_hue needs an RGB image, got mode {image.mode!r}")
    if cv2 is None:
        return F.adjust_hue(image, hue_factor)
    hsv = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(math.floor(hue_factor * 256) % 256)  # uint8 wraps around the colour circle
    return Image.fromarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL))


class OpenCVGaussianBlur:
    """Gaussian blur of a PIL image with sigma ~ U(low, high), the sigma drawn from torch's generator as
    torchvision's ``GaussianBlur`` draws it (so the loader's per-worker seeds fix it); see the module docstring."""

    def __init__(self, sigma: Sequence[float]) -> None:
        if len(sigma) != 2 or not 0.0 < sigma[0] <= sigma[1]:
            raise ValueError(f"sigma must be (low, high) with 0 < low <= high, got {sigma!r}")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        warn_if_opencv_is_missing()

    def sample_sigma(self) -> float:
        return float(torch.empty(1).uniform_(*self.sigma))

    def __call__(self, image: Image.Image) -> Image.Image:
        return gaussian_blur(image, self.sample_sigma())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class OpenCVHueColorJitter(T.ColorJitter):
    """torchvision's ``ColorJitter`` with the hue step of PIL images done by `shift_hue` (see the module docstring).

    Brightness, contrast and saturation stay torchvision's ops; the factors and their order come from
    ``ColorJitter.get_params``, so one seed gives the same draws as torchvision's class. Tensors go through
    torchvision's ops unchanged.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        warn_if_opencv_is_missing()

    def forward(self, img):
        order, brightness, contrast, saturation, hue = self.get_params(
            self.brightness, self.contrast, self.saturation, self.hue)
        for op in order.tolist():
            if op == 0 and brightness is not None:
                img = F.adjust_brightness(img, brightness)
            elif op == 1 and contrast is not None:
                img = F.adjust_contrast(img, contrast)
            elif op == 2 and saturation is not None:
                img = F.adjust_saturation(img, saturation)
            elif op == 3 and hue is not None:
                img = shift_hue(img, hue) if isinstance(img, Image.Image) else F.adjust_hue(img, hue)
        return img
