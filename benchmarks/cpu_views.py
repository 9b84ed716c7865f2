"""Milliseconds per image of the released ImageNet two-view recipe on one CPU thread, each path in this process.

    python benchmarks/cpu_views.py [--images 64] [--size 224] [--batch 32]

Files are JPEGs of ImageNet's average size (about 400 x 350 px, `mec.bench.write_jpeg_tree`), read from disk.

- ``torchvision blur (before issue 14)``: the per-image path as it was: Pillow decode, torchvision's transforms
  with ``GaussianBlur(23)`` (a 23 x 23 convolution of a PIL image), the baseline;
- ``Pillow blur, uint8 out``: the same with Pillow's blur (the released code's op), ending in uint8 tensors;
- ``per_image (OpenCV blur and hue)``: `mec.augment.imagenet_two_view`: blur and the jitter's hue step done by
  OpenCV (`mec.opencv_ops`);
- ``per_image (OpenCV, uint8 out)``: the per-image path as pretraining runs it now: those views ending in uint8
  tensors, normalised later on the device (`mec.augment.normalise_on_the_device`);
- ``batched on the CPU``: the device path run on the CPU: torchvision's JPEG decoder, then
  `mec.batch_augment.batch_imagenet_two_view` on batches of ``--batch`` images.

Each figure is the best of three passes over the files; ratios are against the baseline. One thread: what one
loader worker (or one core of the device path) costs per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from mec.augment import (
    BLUR_SIGMA,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOLARIZE_THRESHOLD,
    TwoViewTransform,
    imagenet_two_view,
    normalise_on_the_device,
)
from mec.batch_augment import batch_imagenet_two_view
from mec.bench import write_jpeg_tree
from mec.encoded import EncodedImages, ImageDecoder, collate_encoded


class PillowBlur:
    """MoCo v3's blur: Pillow's ``GaussianBlur`` with sigma ~ U(0.1, 2.0)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=float(torch.empty(1).uniform_(*BLUR_SIGMA))))


def torchvision_two_view(size: int, blur: Callable[[Image.Image], Image.Image],
                         last: list[Callable[[Any], Any]]) -> TwoViewTransform:
    """The released views with torchvision's ColorJitter (Pillow's hue), `blur`, then the `last` steps."""
    def view(blur_p: float, solarize_p: float) -> T.Compose:
        return T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([blur], p=blur_p),
            T.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=solarize_p),
            T.RandomHorizontalFlip(),
            *last,
        ])
    return TwoViewTransform(view(1.0, 0.0), view(0.1, 0.2))


def per_image_ms(files: list[Path], two_view: TwoViewTransform) -> float:
    started = time.perf_counter()
    for file in files:
        with Image.open(file) as image:
            two_view(image.convert("RGB"))
    return (time.perf_counter() - started) / len(files) * 1e3


def batched_ms(files: list[Path], size: int, batch: int) -> float:
    dataset = EncodedImages([(str(file), 0) for file in files])
    decoder = ImageDecoder([str(file) for file in files], "cpu")
    views = batch_imagenet_two_view(size)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for first in range(0, len(files), batch):
        encoded = collate_encoded([dataset[i] for i in range(first, min(first + batch, len(files)))])
        views(decoder(encoded).images, generator)
    return (time.perf_counter() - started) / len(files) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        files = sorted(write_jpeg_tree(Path(scratch), args.images).rglob("*.JPEG"))
        measured = {
            "torchvision blur (before issue 14)": lambda: per_image_ms(files, torchvision_two_view(
                args.size, T.GaussianBlur(23, sigma=BLUR_SIGMA),
                [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])),
            "Pillow blur, uint8 out": lambda: per_image_ms(
                files, torchvision_two_view(args.size, PillowBlur(), [T.PILToTensor()])),
            "per_image (OpenCV blur and hue)": lambda: per_image_ms(files, imagenet_two_view(args.size)),
            "per_image (OpenCV, uint8 out)": lambda: per_image_ms(
                files, normalise_on_the_device(imagenet_two_view(args.size))[0]),
            "batched on the CPU": lambda: batched_ms(files, args.size, args.batch),
        }
        results = {name: min(run() for _ in range(3)) for name, run in measured.items()}
    baseline = next(iter(results.values()))
    print(f"two views of {args.size} px per image, one thread, {args.images} JPEGs of ~400 x 350 px, "
          f"torch {torch.__version__}")
    print("| path | ms / image | images/s per core | x baseline |\n|---|---:|---:|---:|")
    for name, ms in results.items():
        print(f"| {name} | {ms:.1f} | {1e3 / ms:.0f} | {baseline / ms:.2f} |")


if __name__ == "__main__":
    main()
