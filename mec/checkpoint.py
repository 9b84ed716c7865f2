"""Crash-safe pretraining checkpoints, resumption, and backbone export for the evaluations.

Every file written here is loaded back with ``torch.load(..., weights_only=True)``, so a checkpoint can
never run code. That restricts what a checkpoint may hold to tensors and primitive containers (dict,
OrderedDict, list, tuple, int, float, str, bool, None); :func:`save_checkpoint` checks this before writing,
because ``torch.save`` would accept anything and the failure would only show at resume time.

Pretraining checkpoint contract (the dict given to :func:`save_checkpoint` by the training loop):

- ``"epoch"`` (int, required) and ``"model"`` (state dict, required): what :func:`find_resumable` checks.
- ``"backbone"``: the student backbone as a plain torchvision-style state dict (``conv1.weight``,
  ``layer1.0.bn1.running_mean``, ...), read by :func:`load_backbone` when given a full checkpoint.
- ``"teacher"``, ``"optimizer"``, ``"schedules"``: state dicts of the EMA teacher, optimizer and schedules.
- ``"rng"``: :func:`capture_rng_state` output; ``"mlflow_run_id"``: str or None.
- ``"metadata"`` (optional dict): arch, width, ... passed through by :func:`load_backbone`.

Files are named ``checkpoint_epoch{epoch:04d}.pt``; each is written to a temporary file in the same
directory, fsynced, and renamed over the target, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import random
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

REQUIRED_CHECKPOINT_KEYS = ("epoch", "model")
BACKBONE_KEY = "backbone"
RUN_ID_KEY = "mlflow_run_id"
# Prefixes that released SSL code puts in front of the backbone's own names (DDP's "module.",
# the wrapper's attribute name), stripped by load_backbone.
BACKBONE_KEY_PREFIXES = ("module.", "backbone.", "encoder.")

_CHECKPOINT_NAME = re.compile(r"^checkpoint_epoch(\d+)\.pt$")
_TEMPORARY_NAME = re.compile(r"^checkpoint_epoch(\d+)\.tmp-\d+$")
_PRIMITIVE_TYPES = (int, float, str, bool, type(None))
_MAPPING_TYPES = (dict, OrderedDict)
_SEQUENCE_TYPES = (list, tuple)
_TENSOR_TYPES = (torch.Tensor, nn.Parameter)
_MISSING_KEYS_SHOWN = 5


class CheckpointLoadError(RuntimeError):
    """A checkpoint file exists but cannot be loaded safely (truncated, corrupt, unsafe or incomplete)."""


class MissingBackboneKeysError(KeyError):
    """A backbone file lacks weights the model needs; KeyError, but printed as a sentence, not a repr."""

    def __str__(self) -> str:
        return str(self.args[0])


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: the identity of a backbone (feature caches, imported runs) or a split list."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- writing


def _unsafe_entry(value: Any, where: str) -> str | None:
    """Return the key path of the first value weights_only loading would refuse, or None if all are safe.

    Types are compared exactly: subclasses such as ``numpy.float64`` (a float) pickle as their own class.
    """
    value_type = type(value)
    if value_type in _TENSOR_TYPES or value_type in _PRIMITIVE_TYPES:
        return None
    if value_type in _MAPPING_TYPES:
        for key, item in value.items():
            if type(key) not in _PRIMITIVE_TYPES:
                return f"{where}: key {key!r} of type {type(key).__qualname__}"
            found = _unsafe_entry(item, f"{where}[{key!r}]")
            if found is not None:
                return found
        return None
    if value_type in _SEQUENCE_TYPES:
        for index, item in enumerate(value):
            found = _unsafe_entry(item, f"{where}[{index}]")
            if found is not None:
                return found
        return None
    return f"{where}: {value_type.__module__}.{value_type.__qualname__}"


def _check_weights_only_safe(value: Any, argument: str) -> None:
    unsafe = _unsafe_entry(value, argument)
    if unsafe is not None:
        raise ValueError(
            f"{argument} holds a value torch.load(weights_only=True) would refuse at {unsafe}; "
            "expected only tensors, dict/list/tuple and int/float/str/bool/None (convert numpy "
            "scalars/arrays and other objects before saving)"
        )


def _fsync_directory(directory: Path) -> None:
    """Persist a rename: the new directory entry is only durable once the directory itself is synced."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some network/parallel file systems do not support fsync on directories; the rename is done.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(descriptor)


def write_atomically(path: Path, write: Any) -> Path:
    """Call ``write(handle)`` on a temporary sibling, flush + fsync, rename onto ``path``, fsync the directory.

    A crash or a kill at any point leaves the old file (or none) and at most a ``<stem>.tmp-<pid>`` sibling,
    never a torn ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    """A small text file (a stage record, a split list) written so that readers never see half of it."""
    return write_atomically(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, flush + fsync, rename, directory fsync.

    Raises ValueError (naming the offending key path) before writing anything when ``state`` holds a
    value that ``torch.load(weights_only=True)`` would refuse.
    """
    if type(state) not in _MAPPING_TYPES:
        raise ValueError(f"state must be a dict, got {type(state).__qualname__}")
    _check_weights_only_safe(state, "state")
    return write_atomically(Path(path), lambda handle: torch.save(state, handle))


def checkpoint_path(directory: Path, epoch: int) -> Path:
    """Return the file name of the checkpoint taken at ``epoch``: ``checkpoint_epoch{epoch:04d}.pt``."""
    if type(epoch) is not int or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    return Path(directory) / f"checkpoint_epoch{epoch:04d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Return ``(epoch, path)`` of the checkpoint files in ``directory``, newest (highest epoch) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match is not None and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, key=lambda item: item[0], reverse=True)


def prune_checkpoints(directory: Path, keep: int = 2) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the deleted paths.

    Call it after :func:`save_checkpoint` returned, so the newest file is on disk before older ones go.
    Also deletes temporary files left by a crashed save of an epoch no newer than the newest checkpoint
    (a single writer saves epochs in increasing order, so such a file can no longer be in use).
    """
    if type(keep) is not int or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    checkpoints = list_checkpoints(directory)
    deleted = [path for _, path in checkpoints[keep:]]
    if checkpoints:
        newest_epoch = checkpoints[0][0]
        for entry in Path(directory).iterdir():
            match = _TEMPORARY_NAME.match(entry.name)
            if match is not None and int(match.group(1)) <= newest_epoch:
                deleted.append(entry)
    for path in deleted:
        path.unlink(missing_ok=True)
    return deleted


# --------------------------------------------------------------------------------------------- reading


# What torch.save writes: a zip archive (torch >= 1.6), or the legacy format, a protocol-2 pickle of torch's
# magic number first. Any other pickle is not a torch.save file (torch would only report an unsupported opcode).
_ZIP_HEAD = b"PK\x03\x04"
_LEGACY_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]  # without the STOP opcode
_PICKLE_PROTOCOL_OPCODE = b"\x80"
_HEAD_SHOWN = 8
# torch's weights_only refusal runs over several lines and advises weights_only=False; keep only its reason.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_WEIGHTS_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", re.S)


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a file torch.save writes, judged from its size and first bytes, or None."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(len(_LEGACY_HEAD))
    if head.startswith(_ZIP_HEAD):
        if not zipfile.is_zipfile(path):
            return f"cut short or damaged (a zip archive without its end, {size} bytes)"
        return None
    if head == _LEGACY_HEAD:
        return None
    if head.startswith(_PICKLE_PROTOCOL_OPCODE):
        return "a Python pickle, not a file torch.save writes"
    return f"not a PyTorch checkpoint (it starts with {head[:_HEAD_SHOWN]!r})"


def _load_failure(path: Path, error: Exception) -> str:
    """One line for a torch.load(weights_only=True) failure on a file that starts like a checkpoint."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in text.lower().replace("`", ""):
        unsupported = _UNSUPPORTED_GLOBAL.search(text)
        if unsupported:
            return (f"torch.load(weights_only=True) refuses it: loading it needs code ({unsupported.group(1)} is "
                    "not a tensor or a plain container); expected a file of tensors and dict/list/tuple/int/"
                    "float/str/bool/None only, such as save_checkpoint and export_backbone write")
        reason = _WEIGHTS_UNPICKLER_REASON.search(text)
        return (f"torch.load(weights_only=True) refuses it "
                f"({' '.join((reason.group(1) if reason else 'no reason given').split())})")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = None
        if names is not None and not any(name.endswith("data.pkl") for name in names):
            return f"a zip archive, but not one torch.save writes (no data.pkl among its {len(names)} entries)"
        kind = "a zip archive"
    else:
        kind = "the legacy torch.save format"
    first_sentence = text.strip().splitlines()[0].split(". ")[0].rstrip(".") if text.strip() else "no detail"
    return f"cut short or damaged ({kind}, {path.stat().st_size} bytes: {type(error).__name__}: {first_sentence})"


def load_checkpoint(path: Path, required_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Raises FileNotFoundError if ``path`` does not exist and CheckpointLoadError, one line naming the file and
    the reason, if it cannot be read: empty, not what torch.save writes (text, a plain pickle), cut short or
    damaged, would need code to load (the global torch's weights_only loader refuses), not a dict, or lacks a
    key of ``required_keys``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # One line of our own, judged only when the load failed (a file that loads needs no second look): torch's
        # messages run over lines and advise weights_only=False (arbitrary code).
        raise CheckpointLoadError(f"{path}: {_not_a_checkpoint(path) or _load_failure(path, error)}") from None
    if not isinstance(state, dict):
        raise CheckpointLoadError(f"checkpoint {path} holds a {type(state).__qualname__}, expected a dict")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise CheckpointLoadError(
            f"checkpoint {path} lacks required keys {missing}; it has {sorted(map(str, state))}"
        )
    return state


def find_resumable(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """Return ``(path, state)`` of the newest checkpoint in ``directory`` that loads, or None if it holds none.

    A newer file that fails to load (truncated by a crash, corrupt, unsafe to unpickle, or without
    ``"epoch"``/``"model"``) is skipped with a warning naming it and the reason. Checkpoints of which none loads
    raise CheckpointLoadError: starting over would overwrite them and begin another MLflow run, silently.
    """
    unusable = []
    for _, path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path, required_keys=REQUIRED_CHECKPOINT_KEYS)
        except (CheckpointLoadError, OSError) as error:
            logger.warning("skipping unusable checkpoint %s: %s", path, error)
            unusable.append(error)
    if unusable:
        raise CheckpointLoadError(
            f"none of the {len(unusable)} checkpoint(s) in {directory} loads (the newest: {unusable[0]}); restore "
            "one, or move them away to start the run over")
    return None


# ------------------------------------------------------------------------------------------ RNG state


def capture_rng_state() -> dict[str, Any]:
    """Return the torch CPU (and CUDA, if present), numpy and python RNG states as weights_only-safe data."""
    numpy_state = np.random.get_state(legacy=True)
    bit_generator, numpy_keys, position, has_gauss, cached_gaussian = numpy_state
    python_version, python_internal, python_gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(bit_generator),
            # int64 holds every uint32 key and is a dtype every torch operation supports.
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(python_version),
            "internal": torch.tensor(python_internal, dtype=torch.int64),
            "gauss_next": python_gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state` (possibly after a save/load round trip).

    CUDA states are restored for the devices present in both the capture and this process; a difference
    (resuming on another GPU count, or without CUDA) is logged, since only the random draws change.
    """
    missing = [key for key in ("torch", "numpy", "python") if key not in state]
    if missing:
        raise ValueError(f"state lacks RNG entries {missing}; expected the output of capture_rng_state()")
    torch.set_rng_state(state["torch"].to(device="cpu", dtype=torch.uint8))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"])
    )
    saved_cuda = state.get("cuda", [])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(saved_cuda) != available:
        logger.warning(
            "checkpoint holds CUDA RNG states for %d devices, this process sees %d; "
            "restoring the first %d",
            len(saved_cuda),
            available,
            min(len(saved_cuda), available),
        )
    for device_index, device_state in enumerate(saved_cuda[:available]):
        torch.cuda.set_rng_state(device_state.to(device="cpu", dtype=torch.uint8), device_index)


# ------------------------------------------------------------------------------------ backbone files


def export_backbone(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> Path:
    """Write a plain backbone state dict and its metadata atomically as ``{"state_dict", "metadata"}``.

    ``metadata`` describes the network for the evaluations (arch, width, cifar_stem, feature_dim,
    source checkpoint, run id, ...); it must hold only weights_only-safe values.
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError(f"state_dict must be a non-empty mapping of name -> tensor, got {state_dict!r:.80}")
    bad = [
        name
        for name, value in state_dict.items()
        if not isinstance(name, str) or not isinstance(value, torch.Tensor)
    ]
    if bad:
        raise ValueError(f"state_dict must map str -> torch.Tensor; offending entries: {_shown(bad)}")
    if type(metadata) not in _MAPPING_TYPES:
        raise ValueError(f"metadata must be a dict, got {type(metadata).__qualname__}")
    # A copy on the CPU: views into a larger storage would otherwise save the whole storage.
    tensors = {name: value.detach().to("cpu", copy=True) for name, value in state_dict.items()}
    return save_checkpoint(Path(path), {"state_dict": tensors, "metadata": dict(metadata)})


def _backbone_state_dict(loaded: dict[str, Any], path: Path) -> dict[str, Any]:
    """Pick the backbone weights out of an exported file, a pretraining checkpoint or a bare state dict."""
    if "state_dict" in loaded:  # export_backbone output, and the released MEC/SimSiam code's format
        weights = loaded["state_dict"]
    elif BACKBONE_KEY in loaded:  # a pretraining checkpoint of this package
        weights = loaded[BACKBONE_KEY]
    elif loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        weights = loaded
    else:
        raise ValueError(
            f"{path} holds neither 'state_dict', '{BACKBONE_KEY}' nor a bare state dict; "
            f"its top-level keys are {sorted(map(str, loaded))[:10]}"
        )
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path}: the backbone entry is not a mapping of name -> tensor")
    return weights


def _match_file_keys(file_keys: Iterable[str], model_keys: set[str], path: Path) -> dict[str, str]:
    """Map each file key to a model name, stripping leading wrapper prefixes until the model knows the name.

    A key the model already knows is kept as it is, so a model whose own names start with a prefix still
    loads. Two file keys landing on one name (e.g. ``module.encoder.x`` and ``encoder.x``) are an error:
    which one to load would be a guess.
    """
    matched: dict[str, str] = {}
    owner: dict[str, str] = {}
    for file_key in file_keys:
        name = file_key
        while name not in model_keys and name.startswith(BACKBONE_KEY_PREFIXES):
            name = name.split(".", 1)[1]
        if name in model_keys:
            if name in owner:
                raise ValueError(
                    f"{path}: keys {owner[name]!r} and {file_key!r} both give the weight {name!r}"
                )
            owner[name] = file_key
        matched[file_key] = name
    return matched


def _shown(names: list[Any]) -> str:
    """The first few names of a list for an error message, and how many more there are."""
    more = f", ... (+{len(names) - _MISSING_KEYS_SHOWN} more)" if len(names) > _MISSING_KEYS_SHOWN else ""
    return ", ".join(map(str, names[:_MISSING_KEYS_SHOWN])) + more


def load_backbone(model: nn.Module, path: Path, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load backbone weights into ``model`` with strict checking; return metadata and a key summary.

    ``path`` may be an :func:`export_backbone` file, a pretraining checkpoint of this package (its
    ``"backbone"`` entry), a released-code checkpoint (``{"state_dict": {"module.encoder.conv1.weight",
    ...}}``) or a bare state dict. Leading ``module.``/``backbone.``/``encoder.`` prefixes are stripped.

    Every parameter and buffer of ``model`` must be found with a matching shape, except names starting
    with a prefix in ``ignore`` (e.g. ``("fc.",)`` for the classifier of a torchvision ResNet): those
    keep the model's values and are never loaded from the file. Missing weights raise
    MissingBackboneKeysError (a KeyError), shape mismatches ValueError, both naming the file, how many of
    the expected keys were found and the first offenders. Extra file keys (projector, predictor,
    teacher) are listed in the summary, not an error.

    Returns ``{"metadata", "loaded_keys", "expected_keys", "unexpected_keys", "ignored_keys"}``;
    ``metadata`` is the file's ``"metadata"`` plus its ``epoch``/``arch``/run id and ``source`` (the path).
    """
    path = Path(path)
    if not isinstance(ignore, tuple) or not all(isinstance(prefix, str) and prefix for prefix in ignore):
        raise ValueError(
            f"ignore must be a tuple of non-empty name prefixes such as ('fc.',), got {ignore!r}"
        )
    loaded = load_checkpoint(path)
    file_weights = _backbone_state_dict(loaded, path)
    model_state = model.state_dict()
    expected = [name for name in model_state if not name.startswith(ignore)]
    matched = _match_file_keys(file_weights, set(model_state), path)
    by_name = {name: file_key for file_key, name in matched.items()}

    missing = [name for name in expected if name not in by_name]
    if missing:
        raise MissingBackboneKeysError(
            f"{path}: backbone weights found for {len(expected) - len(missing)} of {len(expected)} "
            f"expected keys of {type(model).__name__}; missing {len(missing)}: {_shown(missing)}"
        )
    mismatched = [
        f"{name} (file {tuple(file_weights[by_name[name]].shape)}, model {tuple(model_state[name].shape)})"
        for name in expected
        if file_weights[by_name[name]].shape != model_state[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"{path}: {len(mismatched)} of {len(expected)} backbone weights have the wrong shape for "
            f"{type(model).__name__}: {_shown(mismatched)}"
        )

    selected = {name: file_weights[by_name[name]] for name in expected}
    outcome = model.load_state_dict(selected, strict=False)
    not_loaded = [name for name in outcome.missing_keys if not name.startswith(ignore)]
    if not_loaded or outcome.unexpected_keys:
        raise RuntimeError(f"{path}: load_state_dict disagreed with the key check: {outcome}")

    unexpected = [
        key for key, name in matched.items() if name not in model_state and not name.startswith(ignore)
    ]
    ignored = [key for key, name in matched.items() if name.startswith(ignore)]
    metadata = dict(loaded.get("metadata", {}))
    for key in ("epoch", "arch", RUN_ID_KEY):
        if key in loaded and key not in metadata:
            metadata[key] = loaded[key]
    metadata["source"] = str(path)
    logger.info(
        "loaded %d of %d backbone weights from %s (%d unexpected, %d ignored)",
        len(selected),
        len(expected),
        path,
        len(unexpected),
        len(ignored),
    )
    return {
        "metadata": metadata,
        "loaded_keys": len(selected),
        "expected_keys": len(expected),
        "unexpected_keys": unexpected,
        "ignored_keys": ignored,
    }
