"""The offline detection data set: scenes of several UCI digits, written as Pascal VOC or COCO.

Each scene is a textured canvas (`mec.digits.textured_background`) with 1 to 4 digits pasted by
`mec.digits.paste_digit`, placed so that their boxes overlap little and their masks not at all. Every digit has
its box (the extent of its visible ink, as `paste_digit` returns it), its class name (`DIGIT_CLASSES`) and its
mask (the pixels where its ink's alpha is above 0.5). Training scenes draw from the "train" source digits of
`mec.digits.split_sources`, test scenes from its "val" ones, so no test digit was seen in training (with the
same `val_fraction` and `seed` they are also the digits the offline pretraining never saw).

Every scene is seeded by (seed, split, index): the same parameters give byte-identical files. The trees are
written like `mec.digits.write_digit_folders`: into a temporary sibling, moved onto the root when complete with
`manifest.json` (parameters and their hash); the same parameters leave it alone, other parameters replace it, and
a non-empty folder without a manifest is never touched.

    python -m evals.detection.scenes --format voc --output data/digit-scenes-voc
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mec.digits import (
    BoundingBox,
    DigitStyle,
    box_iou,
    colour_palette,
    digit_style,
    load_source_digits,
    paste_digit,
    split_sources,
    textured_background,
)
from mec.trees import MANIFEST_NAME, write_tree

DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FORMATS = ("voc", "coco")
# Bump when the written files change for the same parameters, so existing trees get rewritten.
SCENES_VERSION = 1
# A digit's mask: the pixels where its ink covers more than half of the background.
MASK_ALPHA = 0.5
# Side of a digit's 8x8 cell as a fraction of the canvas side: 16 to 32 pixels on the default 64x64 canvas.
SCENE_SCALE_RANGE = (0.25, 0.5)
# Placements tried per digit before the scene gets one digit fewer.
PLACEMENT_TRIES = 25
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}
_SPLIT_SEED = {"train": 0, "test": 1}
_INK_PROBE = np.ones(3, dtype=np.float32)
SCENE_STYLE = DigitStyle(scale_range=SCENE_SCALE_RANGE)


@dataclass(frozen=True)
class SceneObject:
    """One pasted digit: class index, source digit, box (x0, y0, x1, y1), end exclusive; bool mask [H, W]."""

    label: int
    source: int
    box: BoundingBox
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A rendered scene: uint8 image [H, W, 3] and its digits, in pasting order (masks are disjoint)."""

    image: np.ndarray
    objects: tuple[SceneObject, ...]


def render_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    *,
    canvas: int = 64,
    digits_per_image: tuple[int, int] = (1, 4),
    max_box_iou: float = 0.2,
    style: DigitStyle = SCENE_STYLE,
) -> Scene:
    """One scene: `digits_per_image` (low, high; inclusive) digits drawn from the source indices `pool`.

    A digit is placed at most `PLACEMENT_TRIES` times: a placement is kept when its box has an IoU of at most
    `max_box_iou` with every box already there and its mask shares no pixel with theirs; a digit that finds no
    place is left out (the scene then has fewer digits, never none: the first digit always fits).
    """
    background = ink = None
    if style.palette_size:
        palette = colour_palette(style.palette_size, style.min_colour_distance)
        background, ink = palette[rng.integers(style.palette_size)]
    pixels = textured_background(rng, canvas, canvas, style, flat=background)
    occupied = np.zeros((canvas, canvas), dtype=bool)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))):
        source = int(pool[rng.integers(len(pool))])
        for _ in range(PLACEMENT_TRIES):
            # paste_digit draws the digit's geometry (rotation, scale, position) before its ink colour: pasting a
            # white digit on black with a copy of the generator gives the alpha the real paste will use.
            probe_rng = copy.deepcopy(rng)
            probe = np.zeros((canvas, canvas, 3), dtype=np.float32)
            box = paste_digit(probe, images[source], probe_rng, style, ink=_INK_PROBE)
            mask = probe[..., 0] > MASK_ALPHA
            if mask.any() and not (mask & occupied).any() and all(
                box_iou(box, other.box) <= max_box_iou for other in objects
            ):
                pasted = paste_digit(pixels, images[source], rng, style, ink=ink)
                if pasted != box:
                    raise RuntimeError(
                        f"paste_digit placed the digit at {pasted}, its probe at {box}: it no longer draws the "
                        "geometry before the ink colour, which render_scene relies on"
                    )
                occupied |= mask
                objects.append(SceneObject(int(labels[source]), source, box, mask))
                break
            rng.bit_generator.state = probe_rng.bit_generator.state  # the next try draws another placement
    if style.noise_std > 0:
        pixels += rng.normal(0.0, style.noise_std, pixels.shape).astype(np.float32)
    image = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Scene(image, tuple(objects))


# ---------------------------------------------------------------------------------------------------------------
# Masks as COCO polygons


_NEIGHBOURS_8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool mask, each a bool mask, in raster order of their first pixel."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        component = np.zeros_like(mask, dtype=bool)
        queue = deque([(int(y), int(x))])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            component[cy, cx] = True
            for dy, dx in _NEIGHBOURS_8:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(component)
    return components


def _outer_boundary(component: np.ndarray) -> list[float]:
    """The outer boundary of one 8-connected component along pixel edges, as a flat [x0, y0, x1, y1, ...] list.

    Vertices are pixel corners (pixel (row, col) covers [col, col+1] x [row, row+1]), so the polygon filled
    covers exactly the component with its holes filled. The walk keeps the component on its right, starting
    east along the top edge of the component's first pixel in raster order, and at each corner turns left if
    the pixel ahead-left is inside (8-connectivity), goes straight if the pixel ahead-right is, else turns right.
    """
    height, width = component.shape

    def inside(row: int, col: int) -> bool:
        return 0 <= row < height and 0 <= col < width and bool(component[row, col])

    rows, cols = np.nonzero(component)
    x, y, dx, dy = int(cols[0]), int(rows[0]), 1, 0
    start = (x, y, dx, dy)
    polygon = [float(x), float(y)]
    while True:
        x, y = x + dx, y + dy
        left, right = (dy, -dx), (-dy, dx)
        # The pixel ahead and to side s of a corner has its centre at corner + (heading + s) / 2.
        ahead_left = inside(y + (dy + left[1] - 1) // 2, x + (dx + left[0] - 1) // 2)
        ahead_right = inside(y + (dy + right[1] - 1) // 2, x + (dx + right[0] - 1) // 2)
        heading = left if ahead_left else (dx, dy) if ahead_right else right
        if (x, y, *heading) == start:
            return polygon
        if heading != (dx, dy):
            polygon += [float(x), float(y)]
        dx, dy = heading


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a bool mask: the outer boundary of each 8-connected component (holes are not kept)."""
    return [_outer_boundary(component) for component in _components(np.asarray(mask, dtype=bool))]


def filled_mask(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: what `mask_polygons(mask)` covers once rasterised."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    outside = np.zeros_like(padded)
    outside[0, 0] = True
    queue = deque([(0, 0)])
    height, width = padded.shape
    while queue:  # the background 4-connected to the border (the complement of 8-connected ink)
        y, x = queue.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < height and 0 <= nx < width and not padded[ny, nx] and not outside[ny, nx]:
                outside[ny, nx] = True
                queue.append((ny, nx))
    return ~outside[1:-1, 1:-1]


# ---------------------------------------------------------------------------------------------------------------
# Writing the trees


def _expected_paths(fmt: str) -> tuple[str, ...]:
    if fmt == "voc":
        return ("Annotations", "JPEGImages", "ImageSets/Main/trainval.txt", "ImageSets/Main/test.txt")
    return ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017")


def _scene_params(
    fmt: str,
    counts: dict[str, int],
    *,
    canvas: int,
    seed: int,
    val_fraction: float,
    digits_per_image: Sequence[int],
    max_box_iou: float,
    render_kwargs: dict[str, Any],
) -> dict[str, Any]:
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"the {split} split needs at least one image, got {count!r}")
    if canvas < 16:
        raise ValueError(f"canvas must be >= 16 pixels, got {canvas!r}")
    low, high = (int(v) for v in digits_per_image)
    if not 1 <= low <= high:
        raise ValueError(f"digits_per_image must be (low, high) with 1 <= low <= high, got {digits_per_image!r}")
    if not 0.0 <= max_box_iou <= 1.0:
        raise ValueError(f"max_box_iou must be in [0, 1], got {max_box_iou!r}")
    return {
        "scenes_version": SCENES_VERSION,
        "format": fmt,
        "images": dict(counts),
        "canvas": canvas,
        "seed": seed,
        "val_fraction": val_fraction,
        "digits_per_image": [low, high],
        "max_box_iou": max_box_iou,
        "style": dataclasses.asdict(digit_style(render_kwargs, SCENE_STYLE)),
    }


def _scenes(params: dict[str, Any], split: str, count: int) -> list[Scene]:
    """The scenes of one split ("train" or "test"), each seeded by (seed, split, index)."""
    images, labels = load_source_digits()
    pool = split_sources(labels, params["val_fraction"], params["seed"])["train" if split == "train" else "val"]
    style = DigitStyle(**{k: tuple(v) if isinstance(v, list) else v for k, v in params["style"].items()})
    return [
        render_scene(
            np.random.default_rng([params["seed"], _SPLIT_SEED[split], index]),
            images,
            labels,
            pool,
            canvas=params["canvas"],
            digits_per_image=tuple(params["digits_per_image"]),
            max_box_iou=params["max_box_iou"],
            style=style,
        )
        for index in range(count)
    ]


def _write(root: str | Path, params: dict[str, Any], write: Callable[[Path, dict[str, Any]], Any]) -> Path:
    return write_tree(root, params, _expected_paths(params["format"]), lambda staging: write(staging, params))


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, format="JPEG", **JPEG_OPTIONS)


def voc_annotation(file_name: str, scene: Scene) -> bytes:
    """A Pascal VOC annotation XML for one scene (boxes 1-based and inclusive, as VOC writes them)."""
    height, width = scene.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "digit-scenes"
    ET.SubElement(root, "filename").text = file_name
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "MEC digit scenes"
    ET.SubElement(source, "annotation").text = "evals.detection.scenes"
    ET.SubElement(source, "image").text = "UCI handwritten digits (scikit-learn)"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in scene.objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = DIGIT_CLASSES[obj.label]
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "0"
        bndbox = ET.SubElement(element, "bndbox")
        x0, y0, x1, y1 = obj.box
        # The box covers pixels x0..x1-1 (0-based); VOC numbers pixels from 1 and includes both ends.
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_voc_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (target / folder).mkdir(parents=True)
    counts: dict[str, Any] = {}
    first_id = 1
    for split, scene_split in (("trainval", "train"), ("test", "test")):
        count = params["images"][split]
        ids = []
        scenes = _scenes(params, scene_split, count)
        for offset, scene in enumerate(scenes):
            image_id = f"{first_id + offset:06d}"
            _save_jpeg(scene.image, target / "JPEGImages" / f"{image_id}.jpg")
            (target / "Annotations" / f"{image_id}.xml").write_bytes(voc_annotation(f"{image_id}.jpg", scene))
            ids.append(image_id)
        (target / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        counts[split] = {"images": count, "objects": sum(len(scene.objects) for scene in scenes)}
        first_id += count
    return counts


def coco_annotation(scene: Scene, image_id: int, first_annotation_id: int) -> list[dict[str, Any]]:
    """The COCO instance annotations of one scene: bbox [x, y, w, h], polygons, area of the polygons."""
    annotations = []
    for offset, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.box
        crop = obj.mask[y0:y1, x0:x1]  # the mask lies inside the box; tracing the crop is faster
        polygons = [[value + (x0, y0)[i % 2] for i, value in enumerate(p)] for p in mask_polygons(crop)]
        annotations.append({
            "id": first_annotation_id + offset,
            "image_id": image_id,
            "category_id": obj.label + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float(filled_mask(crop).sum()),
            "iscrowd": 0,
            "segmentation": polygons,
        })
    return annotations


def _write_coco_tree(target: Path, params: dict[str, Any]) -> dict[str, Any]:
    (target / "annotations").mkdir(parents=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "digit"} for i, name in enumerate(DIGIT_CLASSES)]
    counts: dict[str, Any] = {}
    first_id = 1
    for split, scene_split, folder in (("train", "train", "train2017"), ("val", "test", "val2017")):
        (target / folder).mkdir()
        count = params["images"][split]
        images, annotations = [], []
        scenes = _scenes(params, scene_split, count)
        for offset, scene in enumerate(scenes):
            image_id = first_id + offset
            file_name = f"{image_id:012d}.jpg"
            _save_jpeg(scene.image, target / folder / file_name)
            height, width = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            annotations += coco_annotation(scene, image_id, len(annotations) + 1)
        data = {
            "info": {"description": "MEC digit scenes (evals.detection.scenes)", "version": str(SCENES_VERSION)},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (target / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data, separators=(",", ":")))
        counts[split] = {"images": count, "objects": len(annotations)}
        first_id += count
    return counts


def write_voc_scenes(
    root: str | Path,
    *,
    n_trainval: int = 400,
    n_test: int = 100,
    canvas: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    digits_per_image: Sequence[int] = (1, 4),
    max_box_iou: float = 0.2,
    **render_kwargs: Any,
) -> Path:
    """Write digit scenes as a Pascal VOC tree and return `root`.

    Layout: `root/Annotations/<id>.xml`, `root/JPEGImages/<id>.jpg` (ids 000001...; trainval first, then test),
    `root/ImageSets/Main/{trainval,test}.txt` and `root/manifest.json`. `render_kwargs` are `DigitStyle` fields
    (`scale_range` defaults to `SCENE_SCALE_RANGE`). Register it with year 2007 for the VOC07 11-point metric.
    """
    params = _scene_params(
        "voc", {"trainval": n_trainval, "test": n_test}, canvas=canvas, seed=seed, val_fraction=val_fraction,
        digits_per_image=digits_per_image, max_box_iou=max_box_iou, render_kwargs=render_kwargs,
    )
    return _write(root, params, _write_voc_tree)


def write_coco_scenes(
    root: str | Path,
    *,
    n_train: int = 400,
    n_val: int = 100,
    canvas: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    digits_per_image: Sequence[int] = (1, 4),
    max_box_iou: float = 0.2,
    **render_kwargs: Any,
) -> Path:
    """Write digit scenes in the COCO 2017 layout and return `root`.

    Layout: `root/annotations/instances_{train,val}2017.json` (bbox xywh, polygon segmentations, categories 1..10
    named by `DIGIT_CLASSES`), `root/{train,val}2017/<012d id>.jpg` and `root/manifest.json`; image ids run on
    from train to val. Other arguments as `write_voc_scenes`.
    """
    params = _scene_params(
        "coco", {"train": n_train, "val": n_val}, canvas=canvas, seed=seed, val_fraction=val_fraction,
        digits_per_image=digits_per_image, max_box_iou=max_box_iou, render_kwargs=render_kwargs,
    )
    return _write(root, params, _write_coco_tree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.detection.scenes",
        description="Write the offline detection data set (scenes of UCI digits) as Pascal VOC or COCO.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", type=Path, required=True, help="the tree's root folder")
    parser.add_argument("--n-train", type=int, default=400, help="training images (VOC trainval, COCO train2017)")
    parser.add_argument("--n-test", type=int, default=100, help="test images (VOC test, COCO val2017)")
    parser.add_argument("--canvas", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.format == "voc":
            root = write_voc_scenes(args.output, n_trainval=args.n_train, n_test=args.n_test, canvas=args.canvas,
                                    seed=args.seed)
        else:
            root = write_coco_scenes(args.output, n_train=args.n_train, n_val=args.n_test, canvas=args.canvas,
                                     seed=args.seed)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = json.loads((root / MANIFEST_NAME).read_text())["counts"]
    summary = ", ".join(f"{split} {c['images']} images / {c['objects']} digits" for split, c in counts.items())
    print(f"{args.format} digit scenes in {root}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
