"""The project's exported backbone -> a detectron2 weight file (MoCo's `convert-pretrain-to-detectron2.py`).

Names: ``conv1`` -> ``stem.conv1``, ``bn1`` -> ``stem.conv1.norm``, ``layerN.i`` -> ``res{N+1}.i``,
``bnK`` -> ``convK.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` -> ``shortcut.norm``; ``fc.*``
is dropped. The output is what `DetectionCheckpointer` reads from a ``.pkl``: ``{"model": {name: ndarray},
"__author__": "mec-pipeline", "matching_heuristics": True}`` (the heuristics put ``res5.*`` under
``roi_heads.`` in a C4 model and the rest under ``backbone.``), plus ``"mec_backbone"`` (arch, width,
cifar_stem, source file and its SHA-256), written atomically.

BN statistics are converted deliberately: ``running_mean``/``running_var`` are kept (the detector starts from the
pretrained statistics, which PreciseBN later refines), and so is ``num_batches_tracked`` (a 0-d int64), so the
converted file holds the backbone's whole state; it is inert in detectron2's norms (momentum 0.1, not cumulative
averaging), and a norm without the buffer (FrozenBN) reports it as unexpected, which the loader ignores.

Every weight is checked: the file is first loaded strictly into `mec.models.build_backbone(arch, width,
cifar_stem)` (`mec.checkpoint.load_backbone`: a partial file or one of another architecture fails, naming the file
and the keys), then every key is renamed by an explicit pattern; a key no pattern maps is an error.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mec import checkpoint as ckpt
from mec.models import build_backbone

AUTHOR = "mec-pipeline"
_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# torchvision name pattern -> detectron2 name template (groups of the match fill it)
_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN_FIELDS}$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_BN_FIELDS}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN_FIELDS}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
)
_SHOWN = 5


class ConversionError(ValueError):
    """A backbone file that cannot become detectron2 weights; the message is one line naming the file."""


def _shown(names: list[str]) -> str:
    more = f", ... (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def detectron2_name(name: str) -> str | None:
    """The detectron2 name of one torchvision-style backbone key, or None when no rule maps it."""
    for pattern, template in _RULES:
        match = pattern.match(name)
        if match is not None:
            return template(match)
    return None


def convert_state_dict(state: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, np.ndarray]:
    """Rename every weight to detectron2's names (``fc.*`` dropped); a key that maps nowhere raises, naming it."""
    converted: dict[str, np.ndarray] = {}
    unmapped = []
    for name, value in state.items():
        if name.startswith("fc."):
            continue
        target = detectron2_name(name)
        if target is None:
            unmapped.append(name)
            continue
        if target in converted:  # cannot happen with the rules above; a guard against editing them wrongly
            raise ConversionError(f"{source}: two keys map to {target!r}")
        converted[target] = value.detach().to("cpu").numpy().copy()
    if unmapped:
        raise ConversionError(f"{source}: {len(unmapped)} keys map to no detectron2 weight: {_shown(unmapped)}")
    return converted


def backbone_metadata(path: str | Path, fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """arch / width / cifar_stem of a backbone file: its metadata, else ``fallback`` (the run's ``model`` config).

    Where both give a value and they disagree, the file and the config describe different networks: an error.
    """
    path = Path(path)
    try:
        loaded = ckpt.load_checkpoint(path)
    except (OSError, ckpt.CheckpointLoadError) as error:
        raise ConversionError(f"backbone {path}: {error}") from error
    meta = dict(loaded.get("metadata", {})) if isinstance(loaded.get("metadata", {}), dict) else {}
    fallback = dict(fallback or {})
    out: dict[str, Any] = {}
    for key, default in (("arch", None), ("width", 64), ("cifar_stem", False)):
        in_file, in_config = meta.get(key), fallback.get(key)
        if in_file is not None and in_config is not None and in_file != in_config:
            raise ConversionError(f"backbone {path}: its metadata says {key}={in_file!r} but the run's config says "
                                  f"{key}={in_config!r}")
        value = in_file if in_file is not None else in_config
        out[key] = default if value is None else value
    if out["arch"] is None:
        raise ConversionError(f"backbone {path}: no 'arch' in its metadata nor in the run's config; "
                              "cannot tell which ResNet it holds")
    return out


def check_expected(meta: Mapping[str, Any], expected: Mapping[str, Any], path: str | Path, what: str) -> None:
    """One line when the backbone's arch / width / cifar_stem differ from what ``what`` (a recipe) expects."""
    wrong = [f"{key}={meta.get(key)!r} (expected {value!r})" for key, value in expected.items()
             if value is not None and meta.get(key) != value]
    if wrong:
        raise ConversionError(f"backbone {path} is not the network {what} expects: {', '.join(wrong)}")


def convert_backbone(path: str | Path, output: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check ``path`` strictly against ``meta`` (default: its own metadata) and write detectron2 weights.

    Returns the ``mec_backbone`` record written with the weights (arch, width, cifar_stem, source, sha256, keys).
    """
    path, output = Path(path), Path(output)
    meta = dict(meta) if meta is not None else backbone_metadata(path)
    arch, width, cifar_stem = meta["arch"], int(meta["width"]), bool(meta["cifar_stem"])
    try:
        model = build_backbone(arch, width=width, cifar_stem=cifar_stem, zero_init_residual=False)
    except ValueError as error:
        raise ConversionError(f"backbone {path}: {error}") from error
    described = f"{arch} (width {width}, {'CIFAR' if cifar_stem else 'ImageNet'} stem)"
    try:
        summary = ckpt.load_backbone(model, path, ignore=("fc.",))
    except (KeyError, ValueError, RuntimeError, OSError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        raise ConversionError(f"backbone {path} is not a complete {described}: {message}") from error
    stray = [key for key in summary["unexpected_keys"]]
    if stray:
        raise ConversionError(f"backbone {path}: {len(stray)} weights are not part of a {described} and would be "
                              f"dropped: {_shown(stray)}")
    weights = convert_state_dict(model.state_dict(), str(path))
    record = {"arch": arch, "width": width, "cifar_stem": cifar_stem, "source": str(path),
              "sha256": ckpt.file_sha256(path), "keys": len(weights)}
    payload = {"model": weights, "__author__": AUTHOR, "matching_heuristics": True, "mec_backbone": record}
    ckpt.write_atomically(output, lambda handle: pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL))
    return record


def read_converted(path: str | Path) -> dict[str, Any]:
    """The payload of a converted file (for reuse checks and tests)."""
    with open(path, "rb") as handle:
        return pickle.load(handle)
