"""The released ImageNet recipe's augmentations (`mec.augment.imagenet_two_view`) as batched tensor ops.

The per-image path (`mec.augment`) augments one PIL image at a time in DataLoader workers. Here the same
augmentations act on a whole batch [N, 3, H, W] (uint8 or float in [0, 1]) on any device, so that a training
loop can run them on the GPU (issue 14); the same code runs on CPU tensors in the tests. Every sample draws its
own parameters, from the distributions of the per-image samplers, out of one explicit `torch.Generator`:

- `BatchView.sample` draws a batch's parameters into a `ViewParams` (crop boxes, flip mask, jitter mask,
  factors and order, grayscale mask, blur sigma and mask, solarize mask);
- pure functions apply each op given those parameters (`resized_crop`, `hflip`, `adjust_brightness`,
  `adjust_contrast`, `adjust_saturation`, `adjust_hue`, `color_jitter`, `grayscale`, `gaussian_blur`,
  `solarize`, `normalize`), so that tests can fix the parameters;
- `BatchView` is one view's recipe (size, crop scale, blur and solarize probabilities); `BatchTwoView` pairs
  two as `imagenet_two_view` does (`batch_imagenet_two_view`), and `BatchMultiCrop` adds local views
  (`batch_local_view`), as `mec.augment.multi_crop` does.

What is the same as the per-image path: every distribution (torchvision's `RandomResizedCrop.get_params`
with its 10 attempts and central fallback, `ColorJitter.get_params`' factors and random order, the Bernoulli
probabilities, sigma ~ U(0.1, 2.0)), the per-view asymmetry (blur 1.0 / 0.1, solarize 0 / 0.2; local views
blur 0.5, never solarize) and the arithmetic of torchvision's *tensor* functional ops, which tests check op by
op. What differs, and why:

- Resampling: the crop is resized by plain bilinear interpolation (torchvision's
  `resized_crop(..., antialias=False)` on tensors, to float rounding), done for all samples at once by one
  `grid_sample`. The per-image path resizes with Pillow, whose bilinear filter is antialiased: when a crop is
  shrunk (a crop larger than `size`) Pillow averages over the whole footprint of an output pixel, while plain
  bilinear reads only the 2 x 2 nearest pixels, so fine texture aliases. Antialiasing needs a filter whose
  support grows with each sample's own scale factor, which does not batch into one resampling call.
  On enlarging crops the two agree to float rounding; on shrinking ones they differ by the aliased detail
  (tests/test_batch_augment.py, against `resized_crop(..., antialias=True)`: on noise shrunk 2-3x, 0.045 of
  the [0, 1] range on average, 0.20 at worst). Most ImageNet crops shrink (a 0.2-1 fraction of a ~400 px
  image to 224), so this is the main difference from the per-image path. A *list* of images of their own sizes
  (what decoding on the device gives) is cropped image by image instead (`resized_crop_each`), with
  antialiasing: that path, the one pretraining uses, resamples as the per-image path does.
- Blur: a truncated Gaussian kernel of radius `BLUR_RADIUS` (4 sigma at the largest sigma), applied as two
  1-D passes with reflected borders, exactly torchvision's `gaussian_blur` with that kernel size; the per-image
  path blurs with OpenCV (`mec.opencv_ops`, a 6-sigma kernel rounded to uint8: a quarter of a grey level from
  this one on average, 1.1 at most, tests/test_batch_augment.py). A per-sample Gaussian is one grouped
  convolution for the batch.
- Precision: the batch is float from the start and is rounded to 8 bits nowhere, while the per-image path
  rounds to uint8 after every op (jitter steps, grayscale, blur), so outputs differ by up to about a
  grey level per op even with equal parameters. Pillow's jitter ops (`ImageEnhance`) also round and clamp
  differently from torchvision's tensor ops, which these functions follow.
- Order: the flip is folded into the crop's sampling grid (a mirrored grid), not applied last. All later ops
  act on each pixel alone or convolve with a symmetric kernel over reflected borders, so they commute with a
  mirror flip, and the result is the same.
- On CUDA, cuDNN may run the blur's convolution in TF32 (`torch.backends.cudnn.allow_tf32`, on by default), a
  relative error of about 1e-3, a quarter of a grey level at most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as nnf
from torch import Tensor

from mec.augment import (
    BLUR_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOCAL_BLUR_P,
    LOCAL_CROPS,
    LOCAL_SCALE,
    LOCAL_SIZE,
)

# The released recipe's fixed parts (`mec.augment._moco_v3_view`), torchvision's defaults where it sets none.
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # RandomResizedCrop.get_params tries 10 boxes before its central fallback.
JITTER_STRENGTH = (0.4, 0.4, 0.2, 0.1)  # ColorJitter(brightness, contrast, saturation, hue)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
FLIP_P = 0.5
# torchvision's rgb_to_grayscale (ITU-R 601-2 luma, as TensorFlow and Pillow).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Pillow inverts pixels >= 128 of 255; on floats k / 255, 0.5 splits them at the same place (127/255 < 0.5).
SOLARIZE_THRESHOLD = 0.5
# 4 sigma at the largest sigma: the kernel's tails beyond it weigh 6e-5 of the whole. One radius for the batch
# (each sample's kernel is its own Gaussian on those 17 taps, so a small sigma's far taps are ~0).
BLUR_RADIUS = math.ceil(4 * BLUR_SIGMA[1])

# Jitter ops, in ColorJitter.get_params' numbering (the values of its fn_idx).
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


# --------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ViewParams:
    """One view's random parameters for a batch of N samples (all tensors on one device).

    boxes: [N, 4] int64 crop boxes (top, left, height, width) in pixels, as `RandomResizedCrop.get_params`.
    flip: [N] bool, mirror the crop horizontally.
    jitter: [N] bool, apply the colour jitter (RandomApply's draw).
    jitter_factors: [N, 4] float32, (brightness, contrast, saturation, hue) factors as `ColorJitter.get_params`.
    jitter_order: [N, 4] int64, each row a permutation of 0..3: the ops in the order applied (its fn_idx).
    gray: [N] bool, convert to 3-channel grayscale.
    sigma: [N] float32 blur sigmas; blur: [N] bool, blur the sample.
    solarize: [N] bool, solarize the sample.
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    jitter_factors: Tensor
    jitter_order: Tensor
    gray: Tensor
    sigma: Tensor
    blur: Tensor
    solarize: Tensor

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        expected = {"boxes": (n, 4), "jitter_factors": (n, 4), "jitter_order": (n, 4)}
        for field in fields(self):
            value = getattr(self, field.name)
            shape = expected.get(field.name, (n,))
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"ViewParams.{field.name} must be a tensor of shape {shape}, got {got}")

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> ViewParams:
        return ViewParams(**{field.name: to_device(getattr(self, field.name), device) for field in fields(self)})


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """`tensor` on `device` without the host waiting for the device: a copy from pageable host memory to a GPU
    waits for the stream's queued work (the previous training step), so small host tensors (parameters drawn on
    the host, labels) go through pinned memory (PyTorch's caching host allocator) and an asynchronous copy."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
             dtype: torch.dtype = torch.float32) -> Tensor:
    # torch's uniform_ (what torchvision's samplers call) is low + (high - low) * U[0, 1) as well.
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)


def _bernoulli(n: int, p: float, generator: torch.Generator) -> Tensor:
    # RandomApply applies when rand <= p; `<` differs from it on a set of probability zero, and keeps p=0 never.
    return torch.rand(n, generator=generator, device=generator.device) < p


def _check_range(
    name: str, value: Sequence[float], *, low_bound: float, high_bound: float | None
) -> tuple[float, float]:
    if (
        len(value) != 2
        or not low_bound < value[0] <= value[1]
        or (high_bound is not None and value[1] > high_bound)
    ):
        upper = f" <= {high_bound}" if high_bound is not None else ""
        raise ValueError(f"{name} must be (low, high) with {low_bound} < low <= high{upper}, got {value!r}")
    return float(value[0]), float(value[1])


def _check_image_sizes(image_sizes: Tensor) -> Tensor:
    if not isinstance(image_sizes, Tensor) or image_sizes.ndim != 2 or image_sizes.shape[1] != 2:
        got = tuple(image_sizes.shape) if isinstance(image_sizes, Tensor) else type(image_sizes).__name__
        raise ValueError(f"image_sizes must be an [N, 2] tensor of (height, width), got {got}")
    if image_sizes.dtype.is_floating_point or image_sizes.dtype == torch.bool:
        raise ValueError(f"image_sizes must hold integers, got {image_sizes.dtype}")
    return image_sizes


def sample_crop_boxes(
    image_sizes: Tensor,
    generator: torch.Generator,
    scale: Sequence[float] = CROP_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
) -> Tensor:
    """[N, 4] int64 boxes (top, left, height, width), one per (height, width) row of `image_sizes`, drawn as
    `torchvision.transforms.RandomResizedCrop.get_params(img, scale, ratio)` draws one.

    Each sample gets 10 candidate boxes (area fraction ~ U(scale), log aspect ratio ~ U(log ratio), sides
    rounded half to even as Python's `round`); the first that fits is kept with a uniform integer position,
    and a sample none of whose 10 fit gets torchvision's central fallback. All 10 candidates are drawn for every
    sample (torchvision stops at the first fit) so that the batch needs no data-dependent loop: the kept box has
    the same distribution. Arithmetic in float64, as torchvision's Python floats.
    """
    _check_generator(generator)
    image_sizes = _check_image_sizes(image_sizes).to(generator.device)
    scale = _check_range("scale", scale, low_bound=0.0, high_bound=1.0)
    ratio = _check_range("ratio", ratio, low_bound=0.0, high_bound=None)
    n = image_sizes.shape[0]
    height = image_sizes[:, 0:1].double()
    width = image_sizes[:, 1:2].double()

    target_area = height * width * _uniform((n, CROP_ATTEMPTS), *scale, generator, torch.float64)
    log_ratio = _uniform((n, CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), generator, torch.float64)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))  # torch.round, like Python's, rounds half to even
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # argmax returns the first maximal index: the first attempt that fits, as torchvision's loop keeps.
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first)
    h = h.gather(1, first)
    fit = fits.any(dim=1, keepdim=True)
    # Position uniform over the integers 0..(side - crop side), as torch.randint(0, side - crop + 1).
    top = torch.floor(torch.rand((n, 1), generator=generator, device=generator.device, dtype=torch.float64)
                      * (height - h + 1))
    left = torch.floor(torch.rand((n, 1), generator=generator, device=generator.device, dtype=torch.float64)
                       * (width - w + 1))

    # The central fallback: the whole image, or its central part at the nearest allowed aspect ratio.
    in_ratio = width / height
    narrow = in_ratio < ratio[0]
    wide = in_ratio > ratio[1]
    fallback_w = torch.where(wide, torch.round(height * ratio[1]), width)
    fallback_h = torch.where(narrow, torch.round(width / ratio[0]), height)
    fallback_top = torch.div(height - fallback_h, 2, rounding_mode="floor")
    fallback_left = torch.div(width - fallback_w, 2, rounding_mode="floor")

    boxes = torch.cat(
        [
            torch.where(fit, top, fallback_top),
            torch.where(fit, left, fallback_left),
            torch.where(fit, h, fallback_h),
            torch.where(fit, w, fallback_w),
        ],
        dim=1,
    )
    return boxes.long()


def sample_jitter(n: int, generator: torch.Generator,
                  strength: Sequence[float] = JITTER_STRENGTH) -> tuple[Tensor, Tensor]:
    """([N, 4] float32 factors, [N, 4] int64 order) as `ColorJitter(*strength).get_params` draws them per sample:
    brightness, contrast, saturation ~ U(max(0, 1 - s), 1 + s), hue ~ U(-s, s), and a uniform random order of
    the four ops (torch.randperm(4) there; the ranks of four uniform draws here, which is the same distribution).
    """
    _check_generator(generator)
    if len(strength) != 4 or any(s < 0 for s in strength) or strength[3] > 0.5:
        raise ValueError(f"strength must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                         f"got {strength!r}")
    columns = [_uniform((n,), max(0.0, 1.0 - s), 1.0 + s, generator) for s in strength[:3]]
    columns.append(_uniform((n,), -strength[3], strength[3], generator))
    order = torch.rand((n, 4), generator=generator, device=generator.device).argsort(dim=1)
    return torch.stack(columns, dim=1), order


# -------------------------------------------------------------------------------------------------------- ops


def _check_batch(images: Tensor, *, floating: bool = True) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a [N, 3, H, W] tensor, got {got}")
    if floating and not images.dtype.is_floating_point:
        raise ValueError(f"images must be floating point in [0, 1] here (see to_float), got {images.dtype}")
    if not floating and images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")


def _per_sample(name: str, value: Tensor, n: int, *, boolean: bool = False) -> Tensor:
    """`value` ([N]) checked and shaped [N, 1, 1, 1] to broadcast over a batch."""
    if not isinstance(value, Tensor) or tuple(value.shape) != (n,):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor of shape ({n},), one per sample, got {got}")
    if boolean and value.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got {value.dtype}")
    return value.view(n, 1, 1, 1)


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (as ToTensor and convert_image_dtype); floats pass through, half
    precision promoted to float32 (the hue conversion's divisions need more than 11 bits of mantissa)."""
    _check_batch(images, floating=False)
    if images.dtype == torch.uint8:
        return images.float().div(255)
    return images if images.dtype in (torch.float32, torch.float64) else images.float()


def resized_crop(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop box n = (top, left, height, width) of sample n and resize it to size x size, mirrored where `flip`.

    Equal, to float rounding, to `torchvision.transforms.functional.resized_crop(image, *box, [size, size],
    antialias=False)` (then `hflip`): PyTorch's bilinear resize (align_corners=False) reads source coordinate
    (x + 0.5) * w / size - 0.5 within the crop, clamped to the crop's first and last pixel. Here those
    coordinates, offset by the box, index the whole image in one `grid_sample` (align_corners=True maps grid -1
    and 1 to the centres of the first and last pixel), so no crop is ever materialised and every sample has its
    own box. Not antialiased: see the module's docstring.
    """
    _check_batch(images)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    n, _, height, width = images.shape
    if not isinstance(boxes, Tensor) or tuple(boxes.shape) != (n, 4):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an [N, 4] tensor of (top, left, height, width), got {got}")
    dtype, device = images.dtype, images.device
    top, left, box_h, box_w = boxes.to(device=device, dtype=dtype).unbind(dim=1)
    centres = torch.arange(size, device=device, dtype=dtype) + 0.5

    def source(offset: Tensor, extent: Tensor) -> Tensor:
        # [N, size] pixel coordinates in the whole image, clamped to the crop as upsample_bilinear2d clamps.
        inside = centres * (extent / size).unsqueeze(1) - 0.5
        inside = torch.minimum(inside.clamp(min=0.0), (extent - 1).unsqueeze(1))
        return offset.unsqueeze(1) + inside

    ys = source(top, box_h)
    xs = source(left, box_w)
    if flip is not None:
        mirrored = _per_sample("flip", flip, n, boolean=True).view(n, 1)
        xs = torch.where(mirrored, xs.flip(1), xs)
    # Pixel index p -> grid coordinate 2 p / (side - 1) - 1 (a side of 1 pixel: every coordinate is pixel 0).
    gy = ys * (2.0 / max(height - 1, 1)) - 1.0
    gx = xs * (2.0 / max(width - 1, 1)) - 1.0
    grid = torch.stack(
        [gx.unsqueeze(1).expand(n, size, size), gy.unsqueeze(2).expand(n, size, size)], dim=3
    )
    # "border" only guards float rounding at the last pixel; every coordinate lies inside the image.
    return nnf.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resized_crop_each(images: Sequence[Tensor], boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """`resized_crop` for N images of their own sizes (a list of [3, H_n, W_n], uint8 or float, one device):
    the float [N, 3, size, size] batch of their crops, each resized with antialiasing.

    What the decoded-on-the-device pipeline uses: decoded JPEGs differ in size, and padding them into one batch
    would hold the largest image's area N times. Each crop is a view of its image (no copy), converted to float
    and resized by `interpolate(..., antialias=True)`, exactly torchvision's `resized_crop(image, *box, [size,
    size], antialias=True)` on tensors: the same filter footprint as Pillow's antialiased bilinear resize of the
    per-image path (module docstring, "Resampling"). Three small kernels per image, batched ops from there on.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    n = len(images)
    if n == 0:
        raise ValueError("images must hold at least one image")
    if not isinstance(boxes, Tensor) or tuple(boxes.shape) != (n, 4):
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an [N, 4] tensor of (top, left, height, width), got {got}")
    # Box corners index the images on the host: the boxes are drawn on the host (from the images' shapes), so
    # reading them needs no device synchronisation.
    crops = []
    for image, (top, left, height, width) in zip(images, boxes.tolist(), strict=True):
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"each image must be a [3, H, W] tensor, got {got}")
        crop = to_float(image[:, top:top + height, left:left + width].unsqueeze(0))
        crops.append(nnf.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True))
    out = torch.cat(crops)
    return out if flip is None else hflip(out, to_device(flip, out.device))


def hflip(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror the samples where `mask` (torchvision's `hflip`); `BatchView` folds the flip into the crop."""
    _check_batch(images, floating=False)
    return torch.where(_per_sample("mask", mask, images.shape[0], boolean=True), images.flip(-1), images)


def _luma(images: Tensor) -> Tensor:
    # [N, 1, H, W], the same expression (and so the same float rounding) as torchvision's rgb_to_grayscale.
    r, g, b = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor | float, factor: Tensor) -> Tensor:
    # torchvision's _blend: factor * image + (1 - factor) * other, clamped to the float range [0, 1].
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Sample n times factors[n], clamped to [0, 1] (torchvision's `adjust_brightness`; factor 1 is identity)."""
    _check_batch(images)
    return _blend(images, 0.0, _per_sample("factors", factors, images.shape[0]))


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend of sample n with its mean grey level (torchvision's `adjust_contrast` on float images)."""
    _check_batch(images)
    mean = _luma(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, _per_sample("factors", factors, images.shape[0]))


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend of sample n with its own grayscale (torchvision's `adjust_saturation`)."""
    _check_batch(images)
    return _blend(images, _luma(images), _per_sample("factors", factors, images.shape[0]))


def _rgb_to_hsv(images: Tensor) -> Tensor:
    # torchvision's _rgb2hsv (after Pillow's): grey pixels (max == min) get hue and saturation 0 without a NaN.
    r, g, b = images.unbind(dim=1)
    maxc = images.amax(dim=1)
    minc = images.amin(dim=1)
    grey = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(grey, ones, maxc)
    divisor = torch.where(grey, ones, chroma)
    rc = (maxc - r) / divisor
    gc = (maxc - g) / divisor
    bc = (maxc - b) / divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    # Each channel in closed form, c = v - v s clamp(min(k, 4 - k), 0, 1) with k = (m + 6 h) mod 6 and m = 5, 3, 1
    # for r, g, b: the same function of (h, s, v) as torchvision's six-sector table (which stacks 18 planes
    # per pixel and selects one sector by a one-hot product), continuous in h, so float rounding at a sector
    # boundary moves the result by rounding only.
    h, s, v = hsv.unbind(dim=1)
    channels = []
    for m in (5.0, 3.0, 1.0):
        k = torch.remainder(m + 6.0 * h, 6.0)
        weight = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
        channels.append((v - v * s * weight).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


def adjust_hue(images: Tensor, factors: Tensor) -> Tensor:
    """Hue of sample n rotated by factors[n] of a turn, via RGB -> HSV -> RGB (torchvision's `adjust_hue`)."""
    _check_batch(images)
    shift = _per_sample("factors", factors, images.shape[0]).view(-1, 1, 1)
    hsv = _rgb_to_hsv(images)
    h = torch.remainder(hsv[:, 0] + shift, 1.0)
    return _hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def color_jitter(images: Tensor, factors: Tensor, order: Tensor, mask: Tensor) -> Tensor:
    """`ColorJitter.forward` per sample where `mask`: the four ops in row n of `order` with row n of `factors`.

    Step k applies op order[n, k] to sample n. Brightness, contrast and saturation are one blend, of the image
    with 0, its mean grey or its grey image, so a step is one blend whose reference and factor each sample
    selects; the hue shift is computed for the whole batch and kept where the step's op is hue. Every sample
    is computed at every step rather than gathered per op, so that no step needs a data-dependent index (a
    host synchronisation on CUDA); the ops are elementwise and cheap beside the network.
    """
    _check_batch(images)
    n = images.shape[0]
    for name, value in (("factors", factors), ("order", order)):
        if not isinstance(value, Tensor) or tuple(value.shape) != (n, 4):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be an [N, 4] tensor, got {got}")
    applied = _per_sample("mask", mask, n, boolean=True)
    factors = factors.to(images.dtype)
    for step in range(4):
        op = order[:, step].view(n, 1)
        factor = factors.gather(1, op).view(n, 1, 1, 1)
        op = op.view(n, 1, 1, 1)
        luma = _luma(images)
        reference = torch.where(
            op == BRIGHTNESS,
            torch.zeros_like(luma),
            torch.where(op == CONTRAST, luma.mean(dim=(-3, -2, -1), keepdim=True), luma),
        )
        blended = _blend(images, reference, factor)
        hue = adjust_hue(images, torch.where(op.view(n) == HUE, factor.view(n), 0.0))
        images = torch.where(applied, torch.where(op == HUE, hue, blended), images)
    return images


def grayscale(images: Tensor, mask: Tensor) -> Tensor:
    """3-channel grayscale where `mask` (torchvision's `rgb_to_grayscale(image, 3)` weights)."""
    _check_batch(images)
    return torch.where(_per_sample("mask", mask, images.shape[0], boolean=True),
                       _luma(images).expand_as(images), images)


def gaussian_kernels(sigma: Tensor, radius: int = BLUR_RADIUS) -> Tensor:
    """[N, 2 radius + 1] normalised 1-D Gaussian kernels, one per sigma (torchvision's `_get_gaussian_kernel1d`
    for kernel size 2 radius + 1)."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive int (pixels), got {radius!r}")
    if not isinstance(sigma, Tensor) or sigma.ndim != 1:
        raise ValueError(f"sigma must be a 1-D tensor, one per sample, got {getattr(sigma, 'shape', sigma)!r}")
    dtype = sigma.dtype if sigma.dtype.is_floating_point else torch.float32
    x = torch.linspace(-radius, radius, 2 * radius + 1, dtype=dtype, device=sigma.device)
    pdf = torch.exp(-0.5 * (x / sigma.to(dtype).unsqueeze(1)).pow(2))
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: Tensor, mask: Tensor, radius: int = BLUR_RADIUS) -> Tensor:
    """Blur sample n with a Gaussian of sigma[n] where `mask`: torchvision's `gaussian_blur(image, [k, k],
    [sigma, sigma])` with k = 2 radius + 1 (reflected borders), as two 1-D passes.

    The batch is folded into the channels ([1, N*3, H, W]) so that one grouped convolution gives every sample
    its own kernel. Unblurred samples are computed too and then replaced by their input (`torch.where`), so
    they stay bit-exact whatever precision the convolution runs in.
    """
    _check_batch(images)
    n, c, height, width = images.shape
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive int (pixels), got {radius!r}")
    if radius >= min(height, width):
        raise ValueError(f"radius ({radius}) must be smaller than the images' sides ({height} x {width}): "
                         f"reflected borders need it")
    blurred_mask = _per_sample("mask", mask, n, boolean=True)
    kernels = gaussian_kernels(_per_sample("sigma", sigma, n).view(n).to(images.dtype), radius)
    kernels = kernels.repeat_interleave(c, dim=0)  # [N*3, K]: each sample's kernel for its three channels
    size = 2 * radius + 1
    padded = nnf.pad(images, (radius, radius, radius, radius), mode="reflect")
    folded = padded.reshape(1, n * c, height + 2 * radius, width + 2 * radius)
    folded = nnf.conv2d(folded, kernels.view(n * c, 1, size, 1), groups=n * c)
    folded = nnf.conv2d(folded, kernels.view(n * c, 1, 1, size), groups=n * c)
    return torch.where(blurred_mask, folded.view(n, c, height, width), images)


def solarize(images: Tensor, mask: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert the pixels >= `threshold` where `mask` (torchvision's `solarize` on floats)."""
    _check_batch(images)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (float images), got {threshold!r}")
    solarized = torch.where(images >= threshold, 1.0 - images, images)
    return torch.where(_per_sample("mask", mask, images.shape[0], boolean=True), solarized, images)


def normalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(image - mean) / std per channel (torchvision's `normalize`)."""
    _check_batch(images)
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std must have 3 values each, std > 0, got mean={mean!r}, std={std!r}")
    mean_t = to_device(torch.tensor(mean, dtype=images.dtype), images.device).view(1, 3, 1, 1)
    std_t = to_device(torch.tensor(std, dtype=images.dtype), images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


# ------------------------------------------------------------------------------------------------------ views


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _batch_sizes(images: Tensor, image_sizes: Tensor | None) -> Tensor:
    """[N, 2] (height, width) of each sample's image: the whole tensor, or each image's top-left part when
    images of different sizes are padded into one batch. The resampling reads only pixels inside each box
    (the padding enters at a float-rounding weight, ~1e-6 of its value)."""
    n, _, height, width = images.shape
    if image_sizes is None:
        return torch.tensor([[height, width]], dtype=torch.int64).expand(n, 2)
    sizes = _check_image_sizes(image_sizes)
    if sizes.shape[0] != n:
        raise ValueError(f"image_sizes has {sizes.shape[0]} rows for {n} images")
    # One host read of N pairs: image sizes are known on the host where images are decoded anyway.
    cpu = sizes.cpu()
    if bool((cpu < 1).any()) or bool((cpu[:, 0] > height).any()) or bool((cpu[:, 1] > width).any()):
        raise ValueError(f"image_sizes must lie within 1..{height} x 1..{width} (the batch tensor's sides)")
    return sizes


def _count_and_device(images: Tensor | Sequence[Tensor]) -> tuple[int, torch.device]:
    if isinstance(images, Tensor):
        return images.shape[0], images.device
    if not isinstance(images, Sequence) or not images or not all(isinstance(i, Tensor) for i in images):
        raise ValueError("images must be a [N, 3, H, W] tensor or a non-empty list of [3, H, W] tensors")
    return len(images), images[0].device


def image_sizes_of(images: Sequence[Tensor]) -> Tensor:
    """[N, 2] int64 (height, width) of a non-empty list of [3, H, W] images, on the host (read from their
    shapes: no device synchronisation)."""
    if isinstance(images, Tensor) or not isinstance(images, Sequence) or not images:
        raise ValueError("images must be a non-empty list of [3, H, W] tensors (decoded images of their own sizes)")
    for image in images:
        if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"each image must be a [3, H, W] tensor, got {got}")
    return torch.tensor([tuple(image.shape[1:]) for image in images], dtype=torch.int64)


@dataclass(frozen=True)
class BatchView:
    """One view of the released recipe (`mec.augment._moco_v3_view`) for a batch: RandomResizedCrop(size,
    crop_scale, ratio (3/4, 4/3)), ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, Gaussian blur
    (sigma U(0.1, 2.0)) with p=`blur_p`, solarize with p=`solarize_p`, horizontal flip p=0.5, ImageNet mean/std.

    `sample` draws a batch's parameters, `apply` applies given ones, calling the view does both. The output is
    float [N, 3, size, size] on the images' device. Same distributions and ops as the per-image view; see the
    module's docstring for what differs (resampling, blur kernel, precision) and why.
    """

    size: int
    blur_p: float
    solarize_p: float
    crop_scale: tuple[float, float] = CROP_SCALE

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive int (pixels), got {self.size!r}")
        _check_probability("blur_p", self.blur_p)
        _check_probability("solarize_p", self.solarize_p)
        object.__setattr__(self, "crop_scale",
                           _check_range("crop_scale", self.crop_scale, low_bound=0.0, high_bound=1.0))
        if self.size <= BLUR_RADIUS:
            # The blur reflects the borders, which needs a side longer than the kernel's radius.
            raise ValueError(f"size ({self.size}) must exceed the blur kernel's radius ({BLUR_RADIUS})")

    def sample(self, image_sizes: Tensor, generator: torch.Generator) -> ViewParams:
        """Parameters for N images of (height, width) `image_sizes` [N, 2], on the generator's device."""
        _check_generator(generator)
        image_sizes = _check_image_sizes(image_sizes)
        n = image_sizes.shape[0]
        boxes = sample_crop_boxes(image_sizes, generator, self.crop_scale, CROP_RATIO)
        factors, order = sample_jitter(n, generator)
        return ViewParams(
            boxes=boxes,
            flip=_bernoulli(n, FLIP_P, generator),
            jitter=_bernoulli(n, JITTER_P, generator),
            jitter_factors=factors,
            jitter_order=order,
            gray=_bernoulli(n, GRAYSCALE_P, generator),
            sigma=_uniform((n,), *BLUR_SIGMA, generator),
            blur=_bernoulli(n, self.blur_p, generator),
            solarize=_bernoulli(n, self.solarize_p, generator),
        )

    def apply(self, images: Tensor | Sequence[Tensor], params: ViewParams) -> Tensor:
        """The view of `images` ([N, 3, H, W], uint8 or float in [0, 1]; or a list of N [3, H_n, W_n] images of
        their own sizes, cropped with antialiasing by `resized_crop_each`) with the parameters `params`."""
        if isinstance(images, Tensor):
            _check_batch(images, floating=False)
        n, device = _count_and_device(images)
        if not isinstance(params, ViewParams) or len(params) != n:
            raise ValueError(f"params must be ViewParams for the {n} images, got "
                             f"{len(params) if isinstance(params, ViewParams) else type(params).__name__}")
        # The crop comes first, as in the per-image path, so every later op works on size x size pixels only.
        if isinstance(images, Tensor):
            params = params.to(device)
            out = resized_crop(to_float(images), params.boxes, self.size, flip=params.flip)
        else:
            out = resized_crop_each(images, params.boxes, self.size, flip=params.flip)
            params = params.to(device)
        out = color_jitter(out, params.jitter_factors, params.jitter_order, params.jitter)
        out = grayscale(out, params.gray)
        # Every op runs as `params` say, whatever the view's probabilities (fixed parameters in tests included).
        out = gaussian_blur(out, params.sigma, params.blur)
        out = solarize(out, params.solarize)
        return normalize(out)

    def __call__(self, images: Tensor | Sequence[Tensor], generator: torch.Generator,
                 image_sizes: Tensor | None = None) -> Tensor:
        """Draw parameters from `generator` and apply them. `image_sizes` ([N, 2]) when the batch pads images
        of different sizes (each at the top left): crops are drawn inside each image's own (height, width).
        A list of images of their own sizes needs none. For a list, a CPU generator keeps every draw on the
        host, where the crops are indexed, so nothing waits for the device."""
        if isinstance(images, Tensor):
            _check_batch(images, floating=False)
            return self.apply(images, self.sample(_batch_sizes(images, image_sizes), generator))
        if image_sizes is not None:
            raise ValueError("image_sizes is for padded batches; a list of images carries its own sizes")
        return self.apply(images, self.sample(image_sizes_of(images), generator))


@dataclass(frozen=True)
class BatchTwoView:
    """Two views of a batch (`mec.augment.TwoViewTransform`): returns (view1(images), view2(images)), each
    with its own draws from the one generator (view 1's first)."""

    view1: BatchView
    view2: BatchView

    def __post_init__(self) -> None:
        for name in ("view1", "view2"):
            if not isinstance(getattr(self, name), BatchView):
                raise ValueError(f"{name} must be a BatchView, got {type(getattr(self, name)).__name__}")

    def __call__(self, images: Tensor | Sequence[Tensor], generator: torch.Generator,
                 image_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        return self.view1(images, generator, image_sizes), self.view2(images, generator, image_sizes)


@dataclass(frozen=True)
class BatchMultiCrop(BatchTwoView):
    """The two global views then `local_crops` local views (`mec.augment.MultiCropTransform`'s order): returns
    (view1, view2, local_1, ..., local_N), each local view an independent draw of `local_view` for the batch."""

    local_view: BatchView | None = None
    local_crops: int = LOCAL_CROPS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.local_view, BatchView):
            raise ValueError(f"local_view must be a BatchView, got {type(self.local_view).__name__}")
        if isinstance(self.local_crops, bool) or not isinstance(self.local_crops, int) or self.local_crops < 1:
            raise ValueError(f"local_crops must be an int >= 1, got {self.local_crops!r}")

    def __call__(self, images: Tensor | Sequence[Tensor], generator: torch.Generator,
                 image_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        local = self.local_view  # a BatchView (__post_init__); None is only the dataclass field's default
        return (*super().__call__(images, generator, image_sizes),
                *(local(images, generator, image_sizes) for _ in range(self.local_crops)))


def batch_imagenet_two_view(size: int = 224) -> BatchTwoView:
    """`mec.augment.imagenet_two_view` for batches: blur p=1.0 on view 1 and 0.1 on view 2, solarize p=0 on
    view 1 and 0.2 on view 2, crop scale (0.2, 1)."""
    return BatchTwoView(BatchView(size, blur_p=1.0, solarize_p=0.0), BatchView(size, blur_p=0.1, solarize_p=0.2))


def batch_local_view(local_size: int = LOCAL_SIZE, local_scale: Sequence[float] = LOCAL_SCALE) -> BatchView:
    """`mec.augment.local_view("imagenet", ...)` for batches: crop scale `local_scale`, blur p=0.5, no solarize."""
    return BatchView(local_size, blur_p=LOCAL_BLUR_P, solarize_p=0.0, crop_scale=tuple(local_scale))


def batch_multi_crop(size: int = 224, *, local_crops: int = LOCAL_CROPS, local_size: int = LOCAL_SIZE,
                     local_scale: Sequence[float] = LOCAL_SCALE) -> BatchMultiCrop:
    """`mec.augment.multi_crop("imagenet", size, ...)` for batches: the two views of `batch_imagenet_two_view`
    plus `local_crops` local views of `local_size` < `size` pixels."""
    if isinstance(local_size, int) and isinstance(size, int) and local_size >= size:
        raise ValueError(f"local_size ({local_size}) must be smaller than the global views' size ({size})")
    two_view = batch_imagenet_two_view(size)
    return BatchMultiCrop(two_view.view1, two_view.view2, batch_local_view(local_size, local_scale), local_crops)
