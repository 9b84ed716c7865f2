"""Registering detection data sets in detectron2, with one-line errors for bad input.

`register_voc` and `register_coco` check a data set's layout and annotations before detectron2 gets to them, so
that a wrong path or a broken file stops a run with one line naming the file instead of a traceback from deep in
detectron2 (an AssertionError, a KeyError, 'NoneType' has no attribute 'text'). They set the metadata detectron2's
own registrations set, so `PascalVOCDetectionEvaluator` and `COCOEvaluator` work on what they register.
Registering a name again with the same arguments does nothing; with other arguments it replaces the earlier
registration (detectron2's built-in names such as `voc_2007_test` included).

What is checked when:
* VOC: at registration, the tree's folders, the split file and that every id it lists has its XML and JPEG (a
  directory listing: 0.06 s for 16.5k ids), and for a test split that no JPEG is empty (a stat per file); at
  loading (`DatasetCatalog.get`), every listed XML is parsed and checked (about 5 s for 16.5k small XMLs on a
  loaded 2-core machine, once per process; detectron2's own `load_voc_instances` took 4.4 s there), its boxes
  against its <size>, and its <size> against the JPEG's header (PIL reads the header only: about 80 us per image,
  1.3 s for 16.5k). `evals.detection.train` loads the test splits before training, so that all of this stops a
  run before it trains.
* COCO: at registration, the whole JSON (so that `COCOEvaluator`, which reads the JSON itself, never sees a bad
  one), its boxes against its images' sizes, and for a test split that no image is empty (a stat per file: 118k
  stats are cheap, 118k decodes are not); the result is remembered per file (path, size, modification time), so
  registering again is free. A COCO image whose size differs from the JSON's is found by detectron2 when it reads
  the image (its `SizeMismatchError` line names the image and both sizes).

Images (`role`): a training split's image that cannot be read is skipped by the trainer with one warning naming it
(`evals.detection.train.SkipUnreadableImages`); a test split's stops the run naming it (the evaluation would be
wrong without it): at registration when it is empty, at loading (VOC) when its header does not read, at
evaluation when it does not decode.

Boxes: a box with a negative width or height, or lying wholly outside its image, is refused naming the file (the
annotation id for COCO), the box and the image size; so is a box reaching more than `BORDER_TOLERANCE` pixels
past the image. Real data has boxes touching the border (VOC: xmin 1, xmax = width) and COCO has float boxes a
fraction of a pixel past it: those pass. A box far past the border means wrong coordinates or a wrong size: for
training detectron2 would clip it to the image silently, and the evaluators score against the raw box
(`PascalVOCDetectionEvaluator` re-reads the XML's integer corners and computes IoU with the predictions, which
the model clips to the image; `COCOEvaluator` uses the JSON's bbox), so such a ground truth could only be matched
by its part inside the image and the AP would be off without a word. COCO boxes of zero width or height pass:
instances_train2017.json holds two (cocodataset/cocoapi#355), and detectron2 drops empty boxes in training.

detectron2 is imported when a data set is registered or loaded, not when this module is imported.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# detectron2.data.datasets.pascal_voc.CLASS_NAMES
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_LAYOUT = "expected a Pascal VOC tree (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)"
VOC_YEARS = (2007, 2012)  # PascalVOCDetectionEvaluator knows these two (2007: the 11-point metric)
COCO_LAYOUT = "expected a COCO instances JSON (an object with 'images', 'annotations' and 'categories' lists)"
# How far (pixels) a box may reach past its image: VOC's 1-based corners put xmin = 0 one pixel out, COCO's float
# boxes end a fraction past the border.
BORDER_TOLERANCE = 2.0
# A data set's role: "train" (unreadable images are skipped while training) or "test" (they stop the run).
ROLES = ("train", "test")
TEST_IMAGE = "a test split's images must all be readable, its evaluation would be wrong without them"

# What this module registered under each name, to tell a repeated registration from a different one.
_REGISTERED: dict[str, tuple[Any, ...]] = {}
# COCO files already checked: (resolved path, size, mtime_ns, image root) -> (thing_classes, id map).
_CHECKED_COCO: dict[tuple[Any, ...], tuple[list[str], dict[int, int]]] = {}


class DatasetError(ValueError):
    """A data set that is missing or malformed; the message is one line naming the file."""


def box_problem(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> str | None:
    """What is wrong with the box [x0, x1] x [y0, y1] (continuous pixel coordinates) on a width x height image, or
    None: a negative width or height, lying wholly outside, or reaching more than `BORDER_TOLERANCE` past it."""
    if x1 < x0 or y1 < y0:
        return "has a negative width or height"
    inside_w, inside_h = min(x1, width) - max(x0, 0.0), min(y1, height) - max(y0, 0.0)
    if inside_w < 0 or inside_h < 0 or (inside_w == 0 and x1 > x0) or (inside_h == 0 and y1 > y0):
        return f"lies wholly outside the {width}x{height} image"
    past = max(-x0, -y0, x1 - width, y1 - height)
    if past > BORDER_TOLERANCE:
        return (f"reaches {past:g} px past the {width}x{height} image (at most {BORDER_TOLERANCE:g} accepted: wrong "
                "coordinates or a wrong image size)")
    return None


def _check_role(role: str, where: Any) -> None:
    if role not in ROLES:
        raise DatasetError(f"{where}: role {role!r} is not one of {ROLES}")


def _empty_file(path: Path, listed_in: str) -> DatasetError:
    return DatasetError(f"{path}: empty file (0 bytes), listed in {listed_in}; expected an image ({TEST_IMAGE})")


def image_header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as detectron2's `read_image` returns it (EXIF rotation applied), from its header
    only; raises `OSError` (PIL's `UnidentifiedImageError` included) when it cannot be read as an image."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(0x0112)
        except Exception:  # a broken EXIF block: detectron2's _apply_exif_orientation ignores it too
            orientation = None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# ---------------------------------------------------------------------------------------------------------------
# Pascal VOC


def _split_ids(dirname: Path, split: str, role: str = "train") -> list[str]:
    split_file = dirname / "ImageSets" / "Main" / f"{split}.txt"
    if not dirname.is_dir():
        raise DatasetError(f"{dirname}: no such folder; {VOC_LAYOUT}")
    for folder in ("Annotations", "JPEGImages"):
        if not (dirname / folder).is_dir():
            raise DatasetError(f"{dirname}: no {folder}/; {VOC_LAYOUT}")
    if not split_file.is_file():
        raise DatasetError(f"{dirname}: no ImageSets/Main/{split}.txt; {VOC_LAYOUT}")
    # VOC split files hold one id per line (the per-class files add a label column, which we do not read).
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{split_file}: lists no image ids")
    for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
        present = set(os.listdir(dirname / folder))
        missing = [i for i in ids if i + suffix not in present]
        if missing:
            raise DatasetError(
                f"{dirname / folder / (missing[0] + suffix)}: no such file, listed in ImageSets/Main/{split}.txt "
                f"({len(missing)} of its {len(ids)} ids have no {folder}/<id>{suffix})"
            )
    if role == "test":  # a stat per image; a training split's empty image is skipped when read
        for file_id in ids:
            image = dirname / "JPEGImages" / f"{file_id}.jpg"
            if image.stat().st_size == 0:
                raise _empty_file(image, f"ImageSets/Main/{split}.txt")
    return ids


def _text(element: ET.Element, path: str, anno_file: Path) -> str:
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DatasetError(f"{anno_file}: not a VOC annotation (no {path})")
    return found.text.strip()


def _number(element: ET.Element, path: str, anno_file: Path, kind: type = float) -> Any:
    text = _text(element, path, anno_file)
    try:
        return kind(text)
    except ValueError:
        raise DatasetError(f"{anno_file}: not a VOC annotation ({path} is {text!r}, not a number)") from None


def parse_voc_annotation(anno_file: str | Path, class_names: Sequence[str]) -> dict[str, Any]:
    """One VOC XML as detectron2's `load_voc_instances` reads it, checked: height, width and the objects.

    Returns {"height", "width", "objects": [(class index, [x0, y0, x1, y1] in detectron2's 0-based
    continuous coordinates)]}. Raises `DatasetError` for an XML that does not parse, lacks a field or names an
    object not in `class_names`.
    """
    anno_file = Path(anno_file)
    try:
        root = ET.parse(anno_file).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{anno_file}: not a VOC annotation (XML does not parse: {error})") from None
    except OSError as error:
        raise DatasetError(f"{anno_file}: cannot be read ({error.strerror or error})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{anno_file}: not a VOC annotation (root element <{root.tag}>, not <annotation>)")
    height = _number(root, "size/height", anno_file, int)
    width = _number(root, "size/width", anno_file, int)
    if height <= 0 or width <= 0:
        raise DatasetError(f"{anno_file}: not a VOC annotation (size {width}x{height})")
    objects = []
    for obj in root.findall("object"):
        name = _text(obj, "name", anno_file)
        if name not in class_names:
            raise DatasetError(
                f"{anno_file}: object {name!r} is not one of the {len(class_names)} classes "
                f"({', '.join(class_names)})"
            )
        box = [_number(obj, f"bndbox/{key}", anno_file) for key in ("xmin", "ymin", "xmax", "ymax")]
        if not (box[0] <= box[2] and box[1] <= box[3]):
            raise DatasetError(f"{anno_file}: not a VOC annotation (object {name!r} has an empty box {box})")
        # VOC numbers pixels from 1, both ends included; detectron2's loader moves the start to 0 (and keeps the
        # end), so that (1, W) covers the whole width [0, W].
        converted = [box[0] - 1.0, box[1] - 1.0, box[2], box[3]]
        problem = box_problem(*converted, width, height)
        if problem:
            raise DatasetError(f"{anno_file}: object {name!r} box (xmin, ymin, xmax, ymax) = "
                               f"({', '.join(f'{v:g}' for v in box)}) {problem}")
        objects.append((class_names.index(name), converted))
    return {"height": height, "width": width, "objects": objects}


def load_voc(dirname: str | Path, split: str, class_names: Sequence[str], role: str = "test") -> list[dict[str, Any]]:
    """detectron2's dicts for a VOC split, as `load_voc_instances` makes them, with checked annotations.

    Each XML's <size> is checked against its JPEG's header. A JPEG whose header does not read stops a "test" split
    here (naming it); a "train" split keeps its record, and the trainer skips the image with a warning.
    """
    from detectron2.structures import BoxMode

    _check_role(role, dirname)
    dirname = Path(dirname)
    class_names = list(class_names)
    dicts = []
    for file_id in _split_ids(dirname, split, role):
        anno_file = dirname / "Annotations" / f"{file_id}.xml"
        annotation = parse_voc_annotation(anno_file, class_names)
        image = dirname / "JPEGImages" / f"{file_id}.jpg"
        try:
            size = image_header_size(image)
        except OSError as error:
            if role == "test":
                raise DatasetError(f"{image}: cannot be read as an image ({error}); {TEST_IMAGE}") from None
            size = None  # skipped with a warning when the trainer reads it
        if size is not None and size != (annotation["width"], annotation["height"]):
            raise DatasetError(
                f"{anno_file}: <size> says {annotation['width']}x{annotation['height']} but {image} is "
                f"{size[0]}x{size[1]} (width x height)"
            )
        dicts.append({
            "file_name": str(image),
            "image_id": file_id,
            "height": annotation["height"],
            "width": annotation["width"],
            "annotations": [
                {"category_id": category, "bbox": box, "bbox_mode": BoxMode.XYXY_ABS}
                for category, box in annotation["objects"]
            ],
        })
    return dicts


def _replace_if_registered(name: str, key: tuple[Any, ...]) -> bool:
    """True when `name` is registered with `key` already; otherwise clears any registration of `name`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        if _REGISTERED.get(name) == key:
            return True
        logger.info("data set %r was registered with other arguments: replacing that registration", name)
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    _REGISTERED.pop(name, None)
    return False


def register_voc(
    name: str, dirname: str | Path, split: str, year: int, class_names: Sequence[str] = VOC_CLASSES,
    role: str = "test",
) -> str:
    """Register a Pascal VOC split in detectron2's catalogs after checking its layout; returns `name`.

    The loader parses every XML of the split when the data set is first read (`parse_voc_annotation`'s checks, the
    sizes against the JPEG headers). ``role`` "test" also refuses unreadable images (empty ones at registration);
    "train" leaves them to the trainer, which skips them with a warning.
    Metadata as detectron2's built-in VOC splits: thing_classes, dirname, year, split, evaluator_type
    "pascal_voc". `year` must be 2007 (the VOC07 11-point AP) or 2012.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if year not in VOC_YEARS:
        raise DatasetError(f"{dirname}: VOC year {year!r} is not one of {VOC_YEARS} (PascalVOCDetectionEvaluator)")
    class_names = tuple(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise DatasetError(f"{dirname}: class_names must be distinct and non-empty, got {list(class_names)}")
    _check_role(role, dirname)
    dirname = Path(dirname).absolute()
    _split_ids(dirname, split, role)
    key = ("voc", str(dirname), split, year, class_names, role)
    if _replace_if_registered(name, key):
        return name
    DatasetCatalog.register(name, lambda: load_voc(dirname, split, class_names, role))
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), dirname=str(dirname), year=year, split=split, evaluator_type="pascal_voc"
    )
    _REGISTERED[name] = key
    return name


# ---------------------------------------------------------------------------------------------------------------
# COCO


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_coco_json(
    json_file: str | Path, image_root: str | Path | None = None, role: str = "test"
) -> tuple[list[str], dict[int, int]]:
    """Check a COCO instances JSON; returns (thing_classes, category id -> contiguous id) as detectron2 derives them.

    Checks that it parses, has the three lists, categories with distinct integer ids and names, images with
    id/file_name/height/width, and annotations with distinct ids, a 4-number bbox (`box_problem`: no negative
    width or height, not wholly outside its image nor far past it), a category_id among the categories and an
    image_id among the images; with `image_root`, that the folder exists and holds every image, none of them
    empty for ``role`` "test" (a "train" split's unreadable images are skipped by the trainer).
    """
    _check_role(role, json_file)
    json_file = Path(json_file)
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: no such file; {COCO_LAYOUT}")
    stat = json_file.stat()
    cache_key = (str(json_file.resolve()), stat.st_size, stat.st_mtime_ns, image_root and str(image_root), role)
    if cache_key in _CHECKED_COCO:
        return _CHECKED_COCO[cache_key]
    try:
        with open(json_file, "rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{json_file}: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: not a COCO instances file (a JSON {type(data).__name__}); {COCO_LAYOUT}")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise DatasetError(f"{json_file}: not a COCO instances file (no {field!r} list); {COCO_LAYOUT}")

    categories: dict[int, str] = {}
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")) or not isinstance(
            category.get("name"), str
        ):
            raise DatasetError(f"{json_file}: category #{index} has no integer 'id' and string 'name': {category!r}")
        if category["id"] in categories:
            raise DatasetError(f"{json_file}: category id {category['id']} appears twice")
        categories[category["id"]] = category["name"]
    if not categories:
        raise DatasetError(f"{json_file}: has no categories")
    ids = sorted(categories)
    id_range = f"{ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))

    images: dict[int, str] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not all(_is_int(image.get(k)) for k in ("id", "height", "width")) or (
            not isinstance(image.get("file_name"), str)
        ):
            raise DatasetError(f"{json_file}: image #{index} lacks an integer id/height/width or a file_name")
        if image["id"] in images:
            raise DatasetError(f"{json_file}: image id {image['id']} appears twice")
        if image["height"] <= 0 or image["width"] <= 0:
            raise DatasetError(f"{json_file}: image id {image['id']} has size {image['width']}x{image['height']}")
        images[image["id"]] = image["file_name"]
        sizes[image["id"]] = (image["width"], image["height"])

    seen: set[Any] = set()
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or "id" not in annotation:
            raise DatasetError(f"{json_file}: annotation #{index} has no 'id'")
        ann_id = annotation["id"]
        if ann_id in seen:
            raise DatasetError(f"{json_file}: annotation id {ann_id} appears twice")
        seen.add(ann_id)
        if annotation.get("category_id") not in categories:
            raise DatasetError(
                f"{json_file}: annotation {ann_id} has category_id {annotation.get('category_id')!r}, not one of "
                f"the {len(categories)} categories ({id_range})"
            )
        if annotation.get("image_id") not in images:
            raise DatasetError(
                f"{json_file}: annotation {ann_id} has image_id {annotation.get('image_id')!r}, not one of the "
                f"{len(images)} images"
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
            raise DatasetError(f"{json_file}: annotation {ann_id} has bbox {bbox!r}, not [x, y, width, height]")
        x, y, w, h = bbox
        problem = box_problem(x, y, x + w, y + h, *sizes[annotation["image_id"]])
        if problem:
            raise DatasetError(f"{json_file}: annotation {ann_id} (image {annotation['image_id']} "
                               f"{images[annotation['image_id']]}) has bbox [x, y, width, height] = {bbox} that "
                               f"{problem}")

    if image_root is not None:
        image_root = Path(image_root)
        if not image_root.is_dir():
            raise DatasetError(f"{image_root}: no such folder (the images of {json_file})")
        present = set(os.listdir(image_root))
        missing = [name for name in images.values() if name not in present and not (image_root / name).is_file()]
        if missing:
            raise DatasetError(
                f"{image_root / missing[0]}: no such file, listed in {json_file} "
                f"({len(missing)} of its {len(images)} images are missing)"
            )
        if role == "test":  # a stat per image (cheap even for 118k; decoding them is not)
            for file_name in images.values():
                if (image_root / file_name).stat().st_size == 0:
                    raise _empty_file(image_root / file_name, str(json_file))
    # As detectron2's load_coco_json: classes in category id order, ids mapped to 0..N-1 in that order.
    result = ([categories[i] for i in ids], {category_id: index for index, category_id in enumerate(ids)})
    _CHECKED_COCO[cache_key] = result
    return result


def register_coco(name: str, json_file: str | Path, image_root: str | Path, role: str = "test") -> str:
    """Register a COCO instances data set after checking its JSON (`check_coco_json`, with ``role``); returns `name`.

    Uses detectron2's `register_coco_instances` (metadata json_file, image_root, evaluator_type "coco"), and also
    sets thing_classes and thing_dataset_id_to_contiguous_id (the values `load_coco_json` would set), so that
    `COCOEvaluator` maps category ids right even before the data set is loaded.
    """
    from detectron2.data.datasets import register_coco_instances

    json_file, image_root = Path(json_file).absolute(), Path(image_root).absolute()
    stat = json_file.stat() if json_file.is_file() else None
    key = ("coco", str(json_file), str(image_root), stat and (stat.st_size, stat.st_mtime_ns), role)
    thing_classes, id_map = check_coco_json(json_file, image_root, role)
    if _replace_if_registered(name, key):
        return name
    metadata = {"thing_classes": thing_classes, "thing_dataset_id_to_contiguous_id": id_map}
    register_coco_instances(name, metadata, str(json_file), str(image_root))
    _REGISTERED[name] = key
    return name
