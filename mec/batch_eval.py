"""The evaluation transforms of the ImageNet recipe (`mec.augment.eval_transform`, `probe_train_transform`) as
batched ops on decoded images, and the loaders that feed evaluations through the device path (issue 14).

On the device path (`data.loader`, `mec.config.resolve_loader`) DataLoader workers only read JPEG bytes
(`mec.encoded.EncodedImages`), the job's device decodes them (`mec.encoded.ImageDecoder`: a list of uint8
[3, H, W] images of their own sizes) and the views below make the float batch there:

- `center_view(images, size)`: Resize(round(size * 256 / 224)) + CenterCrop(size) + ToTensor + Normalize, the
  deterministic view of feature extraction (kNN, t-SNE) and of the probes' validation. Per image: the shorter
  side resized with `interpolate(..., antialias=True)` to the output size torchvision's `F.resize` computes,
  rounded to 8 bits as torchvision's tensor `F.resize` rounds a uint8 image (and Pillow, the per-image path,
  gives 8 bits), centre-cropped as `F.center_crop`; then one batched normalisation. Equal to torchvision's
  per-image tensor ops on the same uint8 image (tests/test_batch_eval.py); within about a grey level of the
  per-image path's Pillow resize, whose antialiased bilinear filter it follows.
- `ProbeTrainView(size)`: RandomResizedCrop(size) (scale (0.08, 1), ratio (3/4, 4/3): torchvision's defaults)
  + RandomHorizontalFlip, the probes' training view: boxes from `mec.batch_augment.sample_crop_boxes` and the
  flips Bernoulli(0.5), both from one CPU `torch.Generator`, crops resized by `resized_crop_each` (antialiased,
  float: not rounded to 8 bits, as pretraining's views), normalised as one batch.

`DecodedLoader` wraps a DataLoader of `EncodedBatch`es: it decodes each batch on the job's device and yields
(images, labels) as a per-image DataLoader does, so the loops of `mec.monitor.extract_features` and
`evals.supervised` read either path; `eval_loader` builds the one or the other for a data set, which
`input_dataset` gives as the files' bytes on the device path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mec.batch_augment import CROP_RATIO, FLIP_P, image_sizes_of, normalize, resized_crop_each, sample_crop_boxes
from mec.data import build_loader
from mec.encoded import DecodedLoader, EncodedImages, View, collate_encoded, encoded_images

# torchvision's RandomResizedCrop default scale, which `probe_train_transform("imagenet", size)` keeps (its default
# ratio is the pretraining views' CROP_RATIO).
PROBE_CROP_SCALE = (0.08, 1.0)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (pixels), got {size!r}")
    return size


def resized_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `short`: torchvision's `_compute_resized_output_size`
    for an int size (the longer side truncated, int(short * long / shorter))."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _resized_center(image: Tensor, resize: int, size: int) -> Tensor:
    """[1, 3, size, size] float holding 8-bit values: `F.center_crop(F.resize(image, resize), size)` of one uint8
    (or 0-255 float) image, as torchvision's tensor ops compute it."""
    height, width = image.shape[1:]
    out_h, out_w = resized_shape(height, width, resize)
    resized = image.unsqueeze(0).float()
    if (out_h, out_w) != (height, width):  # F.resize returns an image already at the size as it is
        resized = nnf.interpolate(resized, size=(out_h, out_w), mode="bilinear", align_corners=False,
                                  antialias=True)
        # F.resize casts a uint8 image to float and back: rounded, and clamped (a no-op: bilinear never overshoots).
        resized = resized.round().clamp(0.0, 255.0)
    if size > out_h or size > out_w:
        raise ValueError(f"center crop {size} exceeds the resized image {out_h} x {out_w}")
    top = round((out_h - size) / 2.0)  # F.center_crop's offsets
    left = round((out_w - size) / 2.0)
    return resized[:, :, top:top + size, left:left + size]


def center_view(images: Sequence[Tensor], size: int) -> Tensor:
    """float [N, 3, size, size], normalised: `eval_transform("imagenet", size)` of each decoded uint8 [3, H, W]
    image (Resize(round(size * 256 / 224)), CenterCrop(size), ToTensor, Normalize), on the images' device."""
    _check_size(size)
    image_sizes_of(images)  # checks the list
    resize = round(size * 256 / 224)
    batch = torch.cat([_resized_center(image, resize, size) for image in images])
    return normalize(batch.div(255))


@dataclass(frozen=True)
class CenterView:
    """`center_view` at `size` as a view a `DecodedLoader` calls (its generator unused: the view is fixed)."""

    size: int

    def __post_init__(self) -> None:
        _check_size(self.size)

    def __call__(self, images: Sequence[Tensor], generator: torch.Generator | None = None) -> Tensor:
        return center_view(images, self.size)


@dataclass(frozen=True)
class ProbeTrainView:
    """`probe_train_transform("imagenet", size)` for a list of decoded images: RandomResizedCrop(size) with
    torchvision's default scale (0.08, 1) and ratio (3/4, 4/3), a horizontal flip with p=0.5, ImageNet
    normalisation. `sample` draws (boxes, flips) on the host, `apply` applies them, calling does both."""

    size: int

    def __post_init__(self) -> None:
        _check_size(self.size)

    def sample(self, sizes: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """([N, 4] int64 boxes (top, left, height, width), [N] bool flips) for images of (height, width)
        `sizes` [N, 2]: boxes as `RandomResizedCrop.get_params`, then the flips, from one generator."""
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator: crop boxes index the images on the host")
        boxes = sample_crop_boxes(sizes, generator, scale=PROBE_CROP_SCALE, ratio=CROP_RATIO)
        flips = torch.rand(len(boxes), generator=generator) < FLIP_P  # RandomHorizontalFlip: rand < p
        return boxes, flips

    def apply(self, images: Sequence[Tensor], boxes: Tensor, flips: Tensor) -> Tensor:
        return normalize(resized_crop_each(images, boxes, self.size, flip=flips))

    def __call__(self, images: Sequence[Tensor], generator: torch.Generator) -> Tensor:
        return self.apply(images, *self.sample(image_sizes_of(images), generator))


# ---------------------------------------------------------------------------------------------------- loaders

def input_dataset(dataset: Dataset, per_image: bool) -> Dataset:
    """What an evaluation's loader reads of an image-folder ``dataset``: its transformed images on the per-image
    input path; on the device path (``dataset`` built without a transform), its files' bytes (`EncodedImages`),
    which `eval_loader` then decodes and views on the job's device."""
    return dataset if per_image else EncodedImages.from_folder(dataset)


def eval_loader(dataset: Dataset, batch_size: int, view: View, device: torch.device | str, *, shuffle: bool,
                num_workers: int, seed: int, distributed: bool = False) -> DataLoader | DecodedLoader:
    """The (images, labels) loader of an evaluation: `mec.data.build_loader`'s over a data set of transformed
    images (the per-image path; `view` and `device` unused), a `DecodedLoader` over `EncodedImages` (the device
    path: workers read bytes and draw nothing at random)."""
    encoded = encoded_images(dataset) is not None
    loader = build_loader(dataset, batch_size, shuffle=shuffle, drop_last=False, num_workers=num_workers, seed=seed,
                          distributed=distributed, collate_fn=collate_encoded if encoded else None,
                          seeded_items=not encoded)
    return DecodedLoader(loader, device, view) if encoded else loader
