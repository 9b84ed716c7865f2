"""The offline default data set: scikit-learn's UCI digits rendered with nuisance variation.

`sklearn.datasets.load_digits()` ships 1,797 grey 8x8 handwritten digits with no download. As they are, they
are too easy (a randomly initialised CNN already separates them), so each digit is rendered onto an RGB canvas
with the nuisances that SSL augmentations teach invariance to: a random smooth colour texture behind it, a
random scale, position and small rotation, and a random ink colour that stands out from the local background.
Every rendering is seeded by (seed, source digit, variant), so the data set is reproducible bit for bit.

The renderer works on an existing float canvas and returns the digit's box (`paste_digit`), so that scenes with
several digits (detection) or digits moving over frames (tracking) can be built from the same pieces.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mec.trees import write_tree

# Bump when the rendered pixels change for the same parameters, so existing trees get rewritten.
RENDERER_VERSION = 1
SPLITS = ("train", "val")
NUM_CLASSES = 10
# sklearn's digits count ink in 0..16 per 8x8 cell.
SOURCE_MAX_INTENSITY = 16.0
# Alpha below this is invisible after 8-bit quantisation; it bounds the digit's box.
VISIBLE_ALPHA = 0.05

BoundingBox = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, end exclusive: the digit covers canvas[y0:y1, x0:x1]."""


@dataclass(frozen=True)
class DigitStyle:
    """The nuisance knobs of the renderer.

    texture_strength: weight in [0, 1] of the random texture over a flat random background colour.
    texture_cells: the coarsest random-noise grid is 2x2 cells (a gradient), the finest this many per side.
    stripe_cycles: range of stripe periods per canvas side for the striped part of the texture.
    scale_range: side of the digit's 8x8 cell as a fraction of the canvas' shorter side.
    max_rotation_deg: rotation drawn uniformly in [-max, max] degrees.
    min_colour_distance: least RGB distance (channels in [0, 1]) between ink and the local background.
    noise_std: standard deviation of per-pixel Gaussian noise, in [0, 1] intensity units.
    palette_size: 0 draws background and ink colours freely for every image; N > 0 draws each image's
        (background, ink) pair from a fixed palette of N pairs. A colour pair unique to one image lets
        self-supervised learning tell images apart by colour alone (a shortcut the augmentations cannot
        remove); a small shared palette keeps colour a nuisance for random features without that shortcut.
    """

    texture_strength: float = 0.5
    texture_cells: int = 5
    stripe_cycles: tuple[float, float] = (1.0, 4.0)
    scale_range: tuple[float, float] = (0.45, 0.8)
    max_rotation_deg: float = 15.0
    min_colour_distance: float = 0.7
    noise_std: float = 0.02
    palette_size: int = 0

    def __post_init__(self) -> None:
        if self.palette_size < 0:
            raise ValueError(f"palette_size must be >= 0, got {self.palette_size!r}")
        if not 0.0 <= self.texture_strength <= 1.0:
            raise ValueError(f"texture_strength must be in [0, 1], got {self.texture_strength!r}")
        if self.texture_cells < 2:
            raise ValueError(f"texture_cells must be >= 2, got {self.texture_cells!r}")
        low, high = self.stripe_cycles
        if not 0.0 < low <= high:
            raise ValueError(f"stripe_cycles must be (low, high) with 0 < low <= high, got {self.stripe_cycles!r}")
        low, high = self.scale_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high <= 1, got {self.scale_range!r}")
        if not 0.0 <= self.max_rotation_deg <= 45.0:
            raise ValueError(f"max_rotation_deg must be in [0, 45], got {self.max_rotation_deg!r}")
        if not 0.0 <= self.min_colour_distance <= math.sqrt(3.0):
            raise ValueError(f"min_colour_distance must be in [0, sqrt(3)], got {self.min_colour_distance!r}")
        if self.noise_std < 0.0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")


def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled UCI digits: images float32 [1797, 8, 8] in 0..16 and int64 labels [1797]."""
    from sklearn.datasets import (
        load_digits,  # a heavy import, needed only when rendering
    )

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=64)
def _bicubic_upsampling(cells: int, length: int) -> np.ndarray:
    """[length, cells] matrix that bicubically upsamples `cells` values to `length` (PIL's resampling)."""
    basis = np.eye(cells, dtype=np.float32)
    columns = [Image.fromarray(unit[None, :]).resize((length, 1), Image.Resampling.BICUBIC) for unit in basis]
    matrix = np.stack([np.asarray(column)[0] for column in columns], axis=1)
    matrix.flags.writeable = False
    return matrix


@lru_cache(maxsize=64)
def _normalised_coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column indices divided by the longer side, [height, width] each."""
    ys, xs = np.indices((height, width), dtype=np.float32) / np.float32(max(height, width))
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


@lru_cache(maxsize=8)
def colour_palette(size: int, min_distance: float) -> np.ndarray:
    """[size, 2, 3] fixed (background, ink) colour pairs, the same for every data set seed."""
    rng = np.random.default_rng(20221128)  # fixed: the palette is part of the data set's definition
    pairs = []
    for _ in range(size):
        background = rng.random(3, dtype=np.float32)
        pairs.append((background, ink_colour(rng, background, min_distance)))
    palette = np.asarray(pairs, dtype=np.float32)
    palette.flags.writeable = False
    return palette


def textured_background(
    rng: np.random.Generator, height: int, width: int, style: DigitStyle, flat: np.ndarray | None = None
) -> np.ndarray:
    """A random smooth colour background, float32 [height, width, 3] in [0, 1].

    A flat random colour mixed (by `style.texture_strength`) with a texture that itself blends low-frequency
    colour noise (bicubically upsampled random cells; 2x2 cells give a gradient) and sinusoidal stripes
    between two random colours at a random angle.
    """
    flat = rng.random(3, dtype=np.float32) if flat is None else flat
    cells = int(rng.integers(2, style.texture_cells + 1))
    noise_cells = rng.random((3, cells, cells), dtype=np.float32)
    noise = (_bicubic_upsampling(cells, height) @ noise_cells @ _bicubic_upsampling(cells, width).T).transpose(1, 2, 0)

    angle = rng.uniform(0.0, math.pi)
    cycles = rng.uniform(*style.stripe_cycles)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = _normalised_coordinates(height, width)
    along = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    mix = (0.5 + 0.5 * np.sin(np.float32(2.0 * math.pi * cycles) * along + np.float32(phase)))[..., None]
    stripe_colours = rng.random((2, 3), dtype=np.float32)
    stripes = mix * stripe_colours[0] + (1.0 - mix) * stripe_colours[1]

    noise_weight = np.float32(rng.random())
    texture = noise_weight * noise + (1.0 - noise_weight) * stripes
    strength = np.float32(style.texture_strength)
    return (1.0 - strength) * flat + strength * texture


def _digit_alpha(digit: np.ndarray, side: int, angle_deg: float) -> np.ndarray:
    """The digit's ink as alpha in [0, 1], upscaled to `side`, rotated, cropped to its visible pixels."""
    alpha = Image.fromarray(np.ascontiguousarray(digit, dtype=np.float32) / SOURCE_MAX_INTENSITY)
    alpha = alpha.resize((side, side), Image.Resampling.BICUBIC)
    alpha = alpha.rotate(angle_deg, resample=Image.Resampling.BILINEAR, expand=True)
    array = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    rows = np.flatnonzero((array > VISIBLE_ALPHA).any(axis=1))
    cols = np.flatnonzero((array > VISIBLE_ALPHA).any(axis=0))
    if rows.size == 0:
        raise ValueError("digit has no visible ink (all intensities near 0)")
    return array[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def box_iou(a: BoundingBox, b: BoundingBox) -> float:
    """Intersection over union of two end-exclusive pixel boxes (x0, y0, x1, y1)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def ink_colour(rng: np.random.Generator, background: np.ndarray, min_distance: float) -> np.ndarray:
    """A random colour at least `min_distance` from `background`, else the farthest of the candidates drawn."""
    candidates = rng.random((16, 3), dtype=np.float32)
    distances = np.linalg.norm(candidates - background, axis=1)
    far_enough = np.flatnonzero(distances >= min_distance)
    return candidates[far_enough[0] if far_enough.size else int(np.argmax(distances))]


def paste_digit(
    canvas: np.ndarray, digit: np.ndarray, rng: np.random.Generator, style: DigitStyle, ink: np.ndarray | None = None
) -> BoundingBox:
    """Draw one digit onto `canvas` in place and return its box.

    canvas: float32 [H, W, 3] in [0, 1]. digit: [8, 8] (any size) with ink 0..16. The digit's cell gets a side
    of `style.scale_range` times the canvas' shorter side (shrunk if needed so the rotated digit fits), a
    rotation in +-`style.max_rotation_deg`, a position fully inside the canvas, and an ink colour far from the
    background under it; the ink intensity is the alpha that blends the colour onto the canvas.
    """
    if canvas.ndim != 3 or canvas.shape[2] != 3 or canvas.dtype != np.float32:
        raise ValueError(f"canvas must be a float32 [H, W, 3] array, got {canvas.dtype} {canvas.shape}")
    if digit.ndim != 2:
        raise ValueError(f"digit must be a 2-D intensity array, got shape {digit.shape}")
    height, width = canvas.shape[:2]
    short_side = min(height, width)
    angle = rng.uniform(-style.max_rotation_deg, style.max_rotation_deg)
    rotated_extent = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    largest_side = max(2, int(short_side / rotated_extent) - 1)
    side = min(largest_side, max(2, round(rng.uniform(*style.scale_range) * short_side)))
    alpha = _digit_alpha(digit, side, angle)

    box_h, box_w = alpha.shape
    y0 = int(rng.integers(0, height - box_h + 1))
    x0 = int(rng.integers(0, width - box_w + 1))
    region = canvas[y0 : y0 + box_h, x0 : x0 + box_w]
    weights = alpha[..., None]
    background_under_ink = (weights * region).sum(axis=(0, 1)) / weights.sum()
    if ink is None:
        ink = ink_colour(rng, background_under_ink, style.min_colour_distance)
    region[...] = (1.0 - weights) * region + weights * ink
    return x0, y0, x0 + box_w, y0 + box_h


def render_digit_image(
    digit: np.ndarray, rng: np.random.Generator, *, size: int = 32, style: DigitStyle = DigitStyle()
) -> tuple[np.ndarray, BoundingBox]:
    """One digit on a textured `size` x `size` canvas: uint8 [size, size, 3] image and the digit's box."""
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size!r}")
    background = ink = None
    if style.palette_size:
        palette = colour_palette(style.palette_size, style.min_colour_distance)
        background, ink = palette[rng.integers(style.palette_size)]
    canvas = textured_background(rng, size, size, style, flat=background)
    box = paste_digit(canvas, digit, rng, style, ink=ink)
    if style.noise_std > 0:
        canvas += rng.normal(0.0, style.noise_std, canvas.shape).astype(np.float32)
    image = np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
    return image, box


def split_sources(labels: np.ndarray, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Source-digit indices of each split, stratified by class and fixed by `seed`.

    Each class gives round(val_fraction * its count) (at least one) of its digits to "val", the rest to "train".
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val.append(members[:num_val])
        train.append(members[num_val:])
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(np.concatenate(val))}


def _render_tree(
    target: Path,
    images: np.ndarray,
    labels: np.ndarray,
    sources: dict[str, np.ndarray],
    variants: dict[str, int],
    *,
    size: int,
    seed: int,
    style: DigitStyle,
) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        for label in range(NUM_CLASSES):
            (target / split / str(label)).mkdir(parents=True)
        for source in sources[split]:
            for variant in range(variants[split]):
                # Seeding by (seed, source, variant) makes each image independent of which others are rendered.
                rng = np.random.default_rng([seed, int(source), variant])
                image, _ = render_digit_image(images[source], rng, size=size, style=style)
                path = target / split / str(labels[source]) / f"{source:04d}_{variant:02d}.png"
                Image.fromarray(image).save(path, compress_level=1)
        counts[split] = len(sources[split]) * variants[split]
    return counts


def digit_style(render_kwargs: dict[str, Any], base: DigitStyle | None = None) -> DigitStyle:
    """``base`` (default: `DigitStyle()`) with ``render_kwargs`` applied; an unknown knob raises naming it."""
    allowed = {field.name for field in dataclasses.fields(DigitStyle)}
    unknown = sorted(set(render_kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown digit render parameters {unknown}; expected some of {sorted(allowed)}")
    values = dataclasses.asdict(base or DigitStyle()) | render_kwargs
    return DigitStyle(**{key: tuple(v) if isinstance(v, list) else v for key, v in values.items()})


def write_digit_folders(
    root: str | Path,
    *,
    size: int = 32,
    variants_train: int = 4,
    variants_val: int = 2,
    val_fraction: float = 0.2,
    seed: int = 0,
    **render_kwargs: Any,
) -> Path:
    """Render the digits into an ImageFolder tree `root/{train,val}/<class>/<source>_<variant>.png`.

    Sources are split by `split_sources` so that val images are renderings of digits never seen in train; each
    source is rendered `variants_train` / `variants_val` times with different nuisances. `render_kwargs` are
    `DigitStyle` fields. The defaults give 5,752 train and 718 val images.

    The tree is written to a temporary sibling directory and moved onto `root` only when complete, together
    with `root/manifest.json` (parameters, their hash, counts). A call whose parameters match the manifest does
    nothing; different parameters replace the tree. A non-empty `root` without a manifest is never touched.
    Returns `root`.
    """
    style = digit_style(render_kwargs)
    for name, value in (("variants_train", variants_train), ("variants_val", variants_val)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size!r}")

    params = {
        "renderer_version": RENDERER_VERSION,
        "size": size,
        "variants": {"train": variants_train, "val": variants_val},
        "val_fraction": val_fraction,
        "seed": seed,
        "style": dataclasses.asdict(style),
    }

    def render(staging: Path) -> dict[str, int]:
        images, labels = load_source_digits()
        sources = split_sources(labels, val_fraction, seed)
        return _render_tree(staging, images, labels, sources, params["variants"], size=size, seed=seed, style=style)

    return write_tree(root, params, SPLITS, render)
