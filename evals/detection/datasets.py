"""Registering detection data sets in detectron2, with one-line errors for bad input.

`register_voc` and `register_coco` check a data set's layout and annotations before detectron2 gets to them, so
that a wrong path or a broken file stops a run with one line naming the file instead of a traceback from deep in
detectron2 (an AssertionError, a KeyError, 'NoneType' has no attribute 'text'). They set the metadata detectron2's
own registrations set, so `PascalVOCDetectionEvaluator` and `COCOEvaluator` work on what they register.
Registering a name again with the same arguments does nothing; with other arguments it replaces the earlier
registration (detectron2's built-in names such as `voc_2007_test` included).

What is checked when:
* VOC: at registration, the tree's folders, the split file and that every id it lists has its XML and JPEG (a
  directory listing: 0.06 s for 16.5k ids); at loading (`DatasetCatalog.get`), every listed XML is parsed and
  checked (about 5 s for 16.5k small XMLs on a loaded 2-core machine, once per process; detectron2's own
  `load_voc_instances` took 4.4 s there).
* COCO: at registration, the whole JSON (so that `COCOEvaluator`, which reads the JSON itself, never sees a bad
  one); the result is remembered per file (path, size, modification time), so registering again is free.

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

# What this module registered under each name, to tell a repeated registration from a different one.
_REGISTERED: dict[str, tuple[Any, ...]] = {}
# COCO files already checked: (resolved path, size, mtime_ns, image root) -> (thing_classes, id map).
_CHECKED_COCO: dict[tuple[Any, ...], tuple[list[str], dict[int, int]]] = {}


class DatasetError(ValueError):
    """A data set that is missing or malformed; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------------------------
# Pascal VOC


def _split_ids(dirname: Path, split: str) -> list[str]:
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
        objects.append((class_names.index(name), [box[0] - 1.0, box[1] - 1.0, box[2], box[3]]))
    return {"height": height, "width": width, "objects": objects}


def load_voc(dirname: str | Path, split: str, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """detectron2's dicts for a VOC split, as `load_voc_instances` makes them, with checked annotations."""
    from detectron2.structures import BoxMode

    dirname = Path(dirname)
    class_names = list(class_names)
    dicts = []
    for file_id in _split_ids(dirname, split):
        annotation = parse_voc_annotation(dirname / "Annotations" / f"{file_id}.xml", class_names)
        dicts.append({
            "file_name": os.path.join(dirname, "JPEGImages", f"{file_id}.jpg"),
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
    name: str, dirname: str | Path, split: str, year: int, class_names: Sequence[str] = VOC_CLASSES
) -> str:
    """Register a Pascal VOC split in detectron2's catalogs after checking its layout; returns `name`.

    The loader parses every XML of the split when the data set is first read (`parse_voc_annotation`'s checks).
    Metadata as detectron2's built-in VOC splits: thing_classes, dirname, year, split, evaluator_type
    "pascal_voc". `year` must be 2007 (the VOC07 11-point AP) or 2012.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if year not in VOC_YEARS:
        raise DatasetError(f"{dirname}: VOC year {year!r} is not one of {VOC_YEARS} (PascalVOCDetectionEvaluator)")
    class_names = tuple(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise DatasetError(f"{dirname}: class_names must be distinct and non-empty, got {list(class_names)}")
    dirname = Path(dirname).absolute()
    _split_ids(dirname, split)
    key = ("voc", str(dirname), split, year, class_names)
    if _replace_if_registered(name, key):
        return name
    DatasetCatalog.register(name, lambda: load_voc(dirname, split, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=list(class_names), dirname=str(dirname), year=year, split=split, evaluator_type="pascal_voc"
    )
    _REGISTERED[name] = key
    return name


# ---------------------------------------------------------------------------------------------------------------
# COCO


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_coco_json(json_file: str | Path, image_root: str | Path | None = None) -> tuple[list[str], dict[int, int]]:
    """Check a COCO instances JSON; returns (thing_classes, category id -> contiguous id) as detectron2 derives them.

    Checks that it parses, has the three lists, categories with distinct integer ids and names, images with
    id/file_name/height/width, and annotations with distinct ids, a 4-number bbox, a category_id among the
    categories and an image_id among the images; with `image_root`, that the folder exists and holds every image.
    """
    json_file = Path(json_file)
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: no such file; {COCO_LAYOUT}")
    stat = json_file.stat()
    cache_key = (str(json_file.resolve()), stat.st_size, stat.st_mtime_ns, image_root and str(image_root))
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
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not all(_is_int(image.get(k)) for k in ("id", "height", "width")) or (
            not isinstance(image.get("file_name"), str)
        ):
            raise DatasetError(f"{json_file}: image #{index} lacks an integer id/height/width or a file_name")
        if image["id"] in images:
            raise DatasetError(f"{json_file}: image id {image['id']} appears twice")
        images[image["id"]] = image["file_name"]

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
    # As detectron2's load_coco_json: classes in category id order, ids mapped to 0..N-1 in that order.
    result = ([categories[i] for i in ids], {category_id: index for index, category_id in enumerate(ids)})
    _CHECKED_COCO[cache_key] = result
    return result


def register_coco(name: str, json_file: str | Path, image_root: str | Path) -> str:
    """Register a COCO instances data set after checking its JSON (`check_coco_json`); returns `name`.

    Uses detectron2's `register_coco_instances` (metadata json_file, image_root, evaluator_type "coco"), and also
    sets thing_classes and thing_dataset_id_to_contiguous_id (the values `load_coco_json` would set), so that
    `COCOEvaluator` maps category ids right even before the data set is loaded.
    """
    from detectron2.data.datasets import register_coco_instances

    json_file, image_root = Path(json_file).absolute(), Path(image_root).absolute()
    stat = json_file.stat() if json_file.is_file() else None
    key = ("coco", str(json_file), str(image_root), stat and (stat.st_size, stat.st_mtime_ns))
    thing_classes, id_map = check_coco_json(json_file, image_root)
    if _replace_if_registered(name, key):
        return name
    metadata = {"thing_classes": thing_classes, "thing_dataset_id_to_contiguous_id": id_map}
    register_coco_instances(name, metadata, str(json_file), str(image_root))
    _REGISTERED[name] = key
    return name
