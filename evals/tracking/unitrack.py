"""Run UniTrack's own task scripts on our frozen backbone (paper Table 4; issue 12, point 2).

The paper evaluates the frozen backbone with UniTrack (https://github.com/Zhongdao/UniTrack): one appearance
model, stage-3 features at stride 8, task heads without fine-tuning. `evals.tracking` re-implements those heads;
this module runs the original code instead, for those who have a UniTrack checkout and the benchmarks, so that the
numbers come from the code the paper used. Everything below follows UniTrack at commit `UNITRACK_COMMIT`:

* `export_backbone` writes the backbone in the one form UniTrack's `model/model.py:make_encoder` loads for that
  depth: a ResNet-50 as a flat torchvision state dict (the branch of the self-supervised models, `model_type:
  barlowtwins` here; `partial_load` into torchvision's `resnet50`), a ResNet-18 as ``{"model": state dict}`` (the only
  ResNet-18 branch that reads a file, `model_type: crw`). `partial_load` silently keeps random weights for keys the
  file lacks and `crw` silently skips a missing file, so both the export and `write_config` check the full key set.
* `write_config` starts from `config/imagenet_resnet18_s3_womotion.yaml`, UniTrack's ImageNet-ResNet config with
  motion cues off (`*_womotion`: association by appearance only, the setting for comparing representations; the
  SOT and VOS sections are the same in both variants). It keeps `remove_layers: ['layer4']` (`ResNet.modify` then
  sets the layer-3 strides to 1: stride-8 maps), ImageNet mean/std, and sets `model_type`, `resume`, the task's
  data root and an `exp_name` of our own; `overrides` (dotted keys) go on top.
* `run` runs `test/test_<task>.py --config <ours>` with the checkout as working directory (its scripts write to
  ``results/<task>/<exp_name>`` there and start their evaluators with ``python ./eval/...``), into
  ``<output_dir>/unitrack-<task>.log``, and parses what the evaluators print (`parse_<task>_output`) into our metric
  names, fractions in [0, 1] and counts: pysot's OTB table (SOT), davis2017-evaluation's global table (VOS),
  TrackEval's HOTA / CLEAR / Identity tables (MOT, MOTS) and poseval's MOT table (PoseTrack).

UniTrack's scripts call ``yaml.load(f)`` without a Loader, a TypeError on PyYAML >= 6. `run` leaves its files alone:
the script runs under a ``python -c`` shim that makes the Loader default to ``FullLoader`` (what PyYAML 5.x used when
none was given) and then runs the script with `runpy` and the argv it would have had.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from evals import TRACKING_TASKS
from mec.augment import IMAGENET_MEAN, IMAGENET_STD
from mec.checkpoint import write_atomically, write_text_atomically

UNITRACK_COMMIT = "a83e782f5c56c17ccf30f0e330cb50bd3349d5b7"  # the UniTrack commit this module was written against
TASKS = tuple(TRACKING_TASKS)
SCRIPTS = {"sot": "test/test_sot_siamfc.py", "vos": "test/test_vos.py", "mot": "test/test_mot.py",
           "mots": "test/test_mots.py", "posetrack": "test/test_posetrack.py"}
BASE_CONFIG = "config/imagenet_resnet18_s3_womotion.yaml"
# The config key of each task's benchmark folder (its section of the config).
DATA_ROOT_KEYS = {"sot": "dataroot", "vos": "davisroot", "mot": "mot_root", "mots": "mots_root",
                  "posetrack": "data_root"}
# The `make_encoder` branch that loads each depth from `resume` (module docstring).
MODEL_TYPES = {"resnet50": "barlowtwins", "resnet18": "crw"}
# What each script writes under the checkout, per exp_name. The SOT script skips a video whose result file exists
# and the DAVIS evaluator reuses a global_results CSV it finds, so a rerun must start from none of them.
RESULT_PATHS = {"sot": ("results/sot/SiamFC/{exp}",), "vos": ("results/vos/{exp}", "results/vos/convert_{exp}"),
                "mot": ("results/mot/{exp}",), "mots": ("results/mots/{exp}",),
                "posetrack": ("results/pose/{exp}", "results/pose/{exp}.json")}

# Runs the script as `python script --config X` would, except that yaml.load's Loader defaults to FullLoader.
YAML_SHIM = """\
import runpy, sys, yaml
_load = yaml.load
def _load_with_default(stream, Loader=None, **kwargs):
    return _load(stream, Loader=getattr(yaml, "FullLoader", yaml.Loader) if Loader is None else Loader, **kwargs)
yaml.load = _load_with_default
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class UniTrackError(RuntimeError):
    """UniTrack cannot run or gave no result: one line naming the path, key or value and what was expected."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------------- weights

@functools.cache
def _torchvision_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    import torchvision

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = getattr(torchvision.models, arch)()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _torchvision_arch(state: Mapping[str, Any], source: str) -> str:
    """The torchvision ResNet whose state dict (minus fc) ``state`` is exactly; UniTrackError otherwise."""
    arch = "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"  # only Bottleneck blocks have a conv3
    expected = _torchvision_shapes(arch)
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    if missing or extra or wrong:
        if wrong:
            detail = f"{wrong[0]} has shape {shapes[wrong[0]]}, torchvision's is {expected[wrong[0]]}"
        else:
            first, more = (missing, "missing") if missing else (extra, "unexpected")
            detail = f"{more} key {first[0]!r}" + (f" (and {len(first) - 1} more)" if len(first) > 1 else "")
        raise UniTrackError(f"{source} is not a torchvision {arch} state dict (UniTrack loads weights into "
                            f"torchvision's resnet18 / resnet50 with a 7x7 stem, width 64): {detail}")
    return arch


def export_backbone(backbone: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``backbone`` (a torchvision-layout ResNet-18 or -50; ``fc`` absent, Identity or dropped) for UniTrack.

    A ResNet-50 becomes a flat state dict, a ResNet-18 ``{"model": state dict}`` (module docstring: the form each
    depth's `model_type` reads). Tensors go to the CPU, so that UniTrack's ``torch.load`` without map_location works
    anywhere. The file is written next to ``path`` and renamed onto it: a reader never sees half of it.
    """
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    arch = _torchvision_arch(state, f"backbone {type(backbone).__name__}")
    payload = {"model": state} if arch == "resnet18" else state
    return write_atomically(Path(path), lambda handle: torch.save(payload, handle))


def weights_arch(weights: str | os.PathLike[str]) -> str:
    """The depth ("resnet18" / "resnet50") of an exported file, checked to be in the form UniTrack loads."""
    weights = Path(weights)
    if not weights.is_file():
        raise UniTrackError(f"backbone weights not found: {weights} (write them with unitrack.export_backbone)")
    try:
        content = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UniTrackError(f"cannot load backbone weights {weights}: {_one_line(str(error))}") from error
    wrapped = isinstance(content, dict) and isinstance(content.get("model"), dict)
    state = content["model"] if wrapped else content
    if not isinstance(state, dict):
        raise UniTrackError(f"backbone weights {weights} hold a {type(content).__name__}, expected a state dict")
    arch = _torchvision_arch(state, f"backbone weights {weights}")
    if wrapped != (arch == "resnet18"):
        form = '{"model": state dict}' if arch == "resnet18" else "a flat state dict"
        raise UniTrackError(f"backbone weights {weights}: UniTrack's model_type {MODEL_TYPES[arch]} reads a {arch} "
                            f"as {form}; write the file with unitrack.export_backbone")
    return arch


# -------------------------------------------------------------------------------------------------------- config

def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UniTrackError(f"unknown UniTrack task {task!r}: expected one of {', '.join(TASKS)}")


def _checkout(unitrack_root: str | os.PathLike[str], task: str) -> Path:
    root = Path(unitrack_root).resolve()
    if not root.is_dir():
        raise UniTrackError(f"UniTrack checkout not found: {root} is not a folder (git clone "
                            f"https://github.com/Zhongdao/UniTrack)")
    for relative, what in ((SCRIPTS[task], f"the {task} script"), (BASE_CONFIG, "the base config")):
        if not (root / relative).is_file():
            raise UniTrackError(f"UniTrack checkout {root} lacks {relative} ({what}); is it a UniTrack checkout?")
    return root


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise UniTrackError(f"UniTrack override {key!r} is not a dotted key <section>.<key> (e.g. common.workers)")
    if not isinstance(config.get(parts[0]), dict):
        raise UniTrackError(f"UniTrack override {key!r}: no section {parts[0]!r} in {BASE_CONFIG} (sections: "
                            f"{', '.join(k for k, v in config.items() if isinstance(v, dict))})")
    node = config[parts[0]]
    for part in parts[1:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UniTrackError(f"UniTrack override {key!r}: {part!r} is a value, not a section")
    # New keys are allowed: the scripts copy every key of their sections onto their arguments.
    node[parts[-1]] = value


def _exp_name(output_dir: Path) -> str:
    # One name per output folder: two jobs never share UniTrack's result folders, a rerun replaces its own.
    return "mec_" + hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:12]


def _data_requirements(task: str, section: dict[str, Any], root: Path) -> list[tuple[Path, str]]:
    """What the task's script reads under its data root (read from the scripts), with why."""
    if task == "sot":
        name = section.get("dataset", "OTB2015")
        return [(root / f"{name}.json", f"the {name} sequence list the SOT loader reads")]
    if task == "vos":
        return [(root / "ImageSets" / "2017" / f"{section.get('split', 'val')}.txt", "DAVIS's sequence list"),
                (root / "davis2017-evaluation" / "evaluation_method.py",
                 "test_vos.py runs DAVIS's evaluation from <davisroot>/davis2017-evaluation")]
    if task in ("mot", "mots"):
        split = "test" if section.get("test_mot16" if task == "mot" else "test") else "train"
        obid = section.get("obid", "")
        return [(root / "images" / split, "the sequences' frames"),
                (root / "obs" / str(obid), f"the detections of obid {obid!r}")]
    split, obid = section.get("split", "val"), section.get("obid", "")
    return [(root / "obs" / str(split) / str(obid), f"the pose observations of obid {obid!r}"),
            (root / "posetrack_data" / "annotations" / str(split), "the ground truth poseval reads")]


def _check_data(task: str, config: dict[str, Any]) -> None:
    key = DATA_ROOT_KEYS[task]
    section = config[task]
    root = Path(str(section.get(key)))
    if not root.is_dir():
        raise UniTrackError(f"data root for UniTrack's {task} ({task}.{key}) is not a folder: {root}")
    if task in ("mot", "mots") and "images" in str(root):
        # data/video.py finds the detections by replacing every "images" in a frame's path with "obs/<obid>".
        raise UniTrackError(f"data root for UniTrack's {task} ({task}.{key}) {root} contains 'images': UniTrack "
                            f"would look for the detections in the wrong folder; move or link it elsewhere")
    for path, why in _data_requirements(task, section, root):
        if not path.exists():
            raise UniTrackError(f"data root for UniTrack's {task} ({task}.{key}) lacks {path} ({why})")


def write_config(task: str, unitrack_root: str | os.PathLike[str], weights: str | os.PathLike[str],
                 data_root: str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
                 arch: str | None = "resnet50", overrides: Mapping[str, Any] | None = None) -> Path:
    """Write ``<output_dir>/unitrack-<task>.yaml``: UniTrack's base config on our weights, data root and exp_name.

    ``arch`` must be the depth of ``weights`` (None: whatever they are). ``overrides`` maps dotted keys
    (``mot.track_buffer``, ``common.im_mean``, ...) to values, applied last; the data must then be in place.
    """
    _check_task(task)
    root = _checkout(unitrack_root, task)
    if arch is not None and arch not in MODEL_TYPES:
        raise UniTrackError(f"arch {arch!r} cannot be run by UniTrack: expected one of {', '.join(MODEL_TYPES)}")
    found = weights_arch(weights)
    if arch is not None and found != arch:
        raise UniTrackError(f"backbone weights {weights} hold a {found}, but arch is {arch}")
    config = yaml.safe_load((root / BASE_CONFIG).read_text())
    if not isinstance(config, dict) or not all(isinstance(config.get(s), dict) for s in ("common", task)):
        raise UniTrackError(f"{root / BASE_CONFIG} has no 'common' and {task!r} sections")
    output_dir = Path(output_dir)
    config["common"].update(exp_name=_exp_name(output_dir), model_type=MODEL_TYPES[found],
                            resume=str(Path(weights).resolve()), remove_layers=["layer4"],
                            im_mean=list(IMAGENET_MEAN), im_std=list(IMAGENET_STD))
    config[task][DATA_ROOT_KEYS[task]] = str(Path(data_root).resolve())
    for key, value in (overrides or {}).items():
        _set_dotted(config, str(key), value)
    exp_name = str(config["common"]["exp_name"])
    # Used in folder names and in test_vos.py's path.replace(exp_name, "convert_" + exp_name).
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", exp_name) or exp_name in "results/vos/":
        raise UniTrackError(f"common.exp_name {exp_name!r} must be a plain folder name (letters, digits, _ . -)")
    _check_data(task, config)
    return write_text_atomically(output_dir / f"unitrack-{task}.yaml", yaml.safe_dump(config, sort_keys=False))


# ----------------------------------------------------------------------------------------------------------- run

def _interpreter(python: str | os.PathLike[str]) -> str:
    found = shutil.which(str(python)) if os.sep not in str(python) else str(python)
    if not found or not os.access(found, os.X_OK):
        raise UniTrackError(f"python interpreter for UniTrack not found or not executable: {python}")
    return os.path.abspath(found)


def _environment(root: Path, python: str, output_dir: Path, env: Mapping[str, str] | None) -> dict[str, str]:
    environment = {**os.environ, **(env or {})}
    # The scripts start their evaluators with os.system("python ./eval/..."): a `python` first on PATH that is the
    # interpreter given, not whichever `python` the machine has (a shell script: a link would lose a venv).
    bin_dir = output_dir / ".unitrack-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n')
    wrapper.chmod(0o755)
    environment["PATH"] = os.pathsep.join(p for p in (str(bin_dir), environment.get("PATH")) if p)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), environment.get("PYTHONPATH")) if p)
    # Unbuffered, so that the log interleaves the script's and its evaluators' lines in the order they happened.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _clear_results(root: Path, task: str, exp_name: str) -> list[Path]:
    paths = [root / template.format(exp=exp_name) for template in RESULT_PATHS[task]]
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return paths


def _execute(command: list[str], root: Path, environment: dict[str, str], log: Path, timeout: float | None) -> int:
    with open(log, "wb") as handle:
        handle.write(f"# cwd: {root}\n# script: {' '.join(command[4:])}\n".encode())
        handle.flush()
        # Its own process group: a timeout or an interrupt ends the evaluators it started as well.
        process = subprocess.Popen(command, cwd=root, env=environment, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except BaseException as error:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            if isinstance(error, subprocess.TimeoutExpired):
                raise UniTrackError(f"UniTrack's {command[4]} did not finish in {timeout} s and was stopped "
                                    f"(log: {log})") from None
            raise


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("# cwd: ", "# script: "))]
    return _one_line(lines[-1]) if lines else "(no output)"


def run(task: str, unitrack_root: str | os.PathLike[str], weights: str | os.PathLike[str],
        data_root: str | os.PathLike[str], output_dir: str | os.PathLike[str], *,
        python: str | os.PathLike[str] = sys.executable, arch: str | None = "resnet50",
        overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
        env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Run UniTrack's ``task`` script on ``weights`` (from `export_backbone`) and return its scores.

    Writes the config (`write_config`), runs the script in the checkout with ``python`` (``env``: variables over
    this process's), logs to ``<output_dir>/unitrack-<task>.log`` and parses it (`PARSERS`). Also writes
    ``<output_dir>/unitrack-<task>.json``: the scores, config, log and UniTrack's result folders.
    """
    output_dir = Path(output_dir)
    config_path = write_config(task, unitrack_root, weights, data_root, output_dir, arch=arch, overrides=overrides)
    root = Path(unitrack_root).resolve()
    exp_name = str(yaml.safe_load(config_path.read_text())["common"]["exp_name"])
    results = _clear_results(root, task, exp_name)
    python = _interpreter(python)
    log = output_dir / f"unitrack-{task}.log"
    command = [python, "-u", "-c", YAML_SHIM, SCRIPTS[task], "--config", str(config_path.resolve())]
    status = _execute(command, root, _environment(root, python, output_dir, env), log, timeout)
    text = log.read_text(errors="replace")
    if status != 0:
        raise UniTrackError(f"UniTrack's {SCRIPTS[task]} exited with status {status} (log: {log}); last line: "
                            f"{_last_line(text)}")
    extra = {"tracker": exp_name} if task == "sot" else {}
    metrics = PARSERS[task](text, source=str(log), **extra)
    summary = {"task": task, "unitrack_commit_read": UNITRACK_COMMIT, "script": SCRIPTS[task],
               "config": str(config_path), "log": str(log), "exp_name": exp_name,
               "unitrack_results": [str(p) for p in results if p.exists()], "metrics": metrics}
    write_text_atomically(output_dir / f"unitrack-{task}.json", json.dumps(summary, indent=2) + "\n")
    return metrics


# ------------------------------------------------------------------------------------------------------- parsing

def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _require(task: str, metrics: dict[str, float], required: tuple[str, ...], source: str, what: str
             ) -> dict[str, float]:
    missing = [name for name in required if name not in metrics]
    if missing:
        raise UniTrackError(f"no UniTrack {task} scores ({', '.join(missing)}) found in {source}: expected {what}")
    return metrics


def _pipe_cells(line: str) -> list[str] | None:
    line = line.strip()
    if len(line) < 2 or not (line.startswith("|") and line.endswith("|")):
        return None
    return [cell.strip() for cell in line[1:-1].split("|")]


def parse_sot_output(text: str, source: str = "UniTrack's output", tracker: str | None = None
                     ) -> dict[str, float]:
    """pysot's OTB table (`OPEBenchmark.show_result`): Success = AUC, Precision = precision at 20 px (fractions).

    ``tracker`` picks its row (UniTrack evaluates only its exp_name); otherwise the table's first row.
    """
    rows: dict[str, dict[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        header = _pipe_cells(line)
        if not header or header[0] != "Tracker name":
            continue
        rows = {}  # the last table printed wins
        for row_line in lines[i + 1:]:
            if set(row_line.strip()) <= {"-"} and row_line.strip():
                continue
            cells = _pipe_cells(row_line)
            if cells is None or len(cells) != len(header):
                break
            rows[cells[0]] = dict(zip(header, cells, strict=True))
    row = rows.get(tracker) if tracker is not None else next(iter(rows.values()), None)
    metrics: dict[str, float] = {}
    for ours, theirs in (("AUC", "Success"), ("precision", "Precision")):
        value = _number(row.get(theirs, "")) if row else None
        if value is not None:
            metrics[ours] = value
    return _require("sot", metrics, ("AUC", "precision"), source,
                    "pysot's '| Tracker name | Success | ... | Precision |' table" +
                    (f" with a row for {tracker}" if tracker else ""))


_DAVIS_NAMES = {"J&F-Mean": "JF_mean", "J-Mean": "J_mean", "J-Recall": "J_recall", "F-Mean": "F_mean",
                "F-Recall": "F_recall"}


def parse_vos_output(text: str, source: str = "UniTrack's output") -> dict[str, float]:
    """davis2017-evaluation's "Global results" table (a pandas frame, fractions): J&F / J / F means and recalls."""
    lines = text.splitlines()
    metrics: dict[str, float] = {}
    for i, line in enumerate(lines):
        if "Global results for" not in line or i + 2 >= len(lines):
            continue
        header, values = lines[i + 1].split(), lines[i + 2].split()
        if len(header) == len(values):
            parsed = {_DAVIS_NAMES[h]: _number(v) for h, v in zip(header, values, strict=True) if h in _DAVIS_NAMES}
            metrics = {k: v for k, v in parsed.items() if v is not None}  # the last table printed wins
    return _require("vos", metrics, ("J_mean", "F_mean", "JF_mean"), source,
                    "davis2017-evaluation's 'Global results for <set>' table")


# Our name -> (TrackEval metric family, its field, divisor): TrackEval prints float fields as percentages.
_TRACKEVAL_NAMES = {
    "HOTA": ("HOTA", "HOTA", 100), "DetA": ("HOTA", "DetA", 100), "AssA": ("HOTA", "AssA", 100),
    "LocA": ("HOTA", "LocA", 100), "MOTA": ("CLEAR", "MOTA", 100), "MOTP": ("CLEAR", "MOTP", 100),
    "IDSW": ("CLEAR", "IDSW", 1), "FP": ("CLEAR", "CLR_FP", 1), "FN": ("CLEAR", "CLR_FN", 1),
    "Frag": ("CLEAR", "Frag", 1), "MT": ("CLEAR", "MT", 1), "ML": ("CLEAR", "ML", 1),
    "IDF1": ("Identity", "IDF1", 100), "IDP": ("Identity", "IDP", 100), "IDR": ("Identity", "IDR", 100),
}
_TRACKEVAL_HEADER = re.compile(r"^(HOTA|CLEAR|Identity): (\S+)\s+(.+)$")
_TRACKEVAL_REQUIRED = ("IDF1", "HOTA", "MOTA", "IDSW")


def _trackeval_tables(text: str) -> dict[str, dict[str, str]]:
    """TrackEval's printed tables (`_BaseMetric.print_table`): family -> field -> its COMBINED value."""
    tables: dict[str, dict[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _TRACKEVAL_HEADER.match(line)
        if not match:
            continue
        fields = match.group(3).split()
        for row in lines[i + 1:]:
            if not row.strip():
                break
            cells = row.split()
            if cells[0] == "COMBINED" and len(cells) == len(fields) + 1:
                tables[match.group(1)] = dict(zip(fields, cells[1:], strict=True))  # the last table printed wins
                break
    return tables


def _parse_trackeval(task: str, text: str, source: str, names: dict[str, tuple[str, str, int]]
                     ) -> dict[str, float]:
    tables = _trackeval_tables(text)
    metrics: dict[str, float] = {}
    for ours, (family, field, divisor) in names.items():
        value = _number(tables.get(family, {}).get(field, ""))
        if value is not None:
            metrics[ours] = value / divisor
    return _require(task, metrics, _TRACKEVAL_REQUIRED, source,
                    "TrackEval's 'HOTA: / CLEAR: / Identity: <tracker>-<class>' tables with a COMBINED row")


def parse_mot_output(text: str, source: str = "UniTrack's output") -> dict[str, float]:
    """TrackEval's HOTA / CLEAR / Identity tables (COMBINED rows): fractions, and counts for IDSW, FP, FN, ..."""
    return _parse_trackeval("mot", text, source, _TRACKEVAL_NAMES)


def parse_mots_output(text: str, source: str = "UniTrack's output") -> dict[str, float]:
    """As `parse_mot_output`, plus sMOTA (the MOTS benchmark's headline CLEAR score)."""
    return _parse_trackeval("mots", text, source, {**_TRACKEVAL_NAMES, "sMOTA": ("CLEAR", "sMOTA", 100)})


def _latex_cells(line: str) -> list[str] | None:
    line = line.strip()
    if not line.startswith("&"):
        return None
    return [cell.strip() for cell in line.rstrip("\\").split("&")[1:]]


def parse_posetrack_output(text: str, source: str = "UniTrack's output") -> dict[str, float]:
    """poseval's MOT table (`eval_helpers.printTable(..., motHeader=True)`): the Total columns, in percent.

    Returns MOTA and IDF1 as fractions and IDSW (poseval's "IDs", the summed ID switches) as a count.
    """
    lines = text.splitlines()
    totals: dict[str, float] = {}
    for i in range(len(lines) - 2):
        first, second, row = (_latex_cells(lines[i + k]) for k in range(3))
        if not first or first[0] != "MOTA" or not second or not row or not len(first) == len(second) == len(row):
            continue
        parsed = {name: _number(value) for name, part, value in zip(first, second, row, strict=True)
                  if part == "Total"}
        totals = {name: value for name, value in parsed.items() if value is not None}  # the last one wins
    metrics = {ours: totals[theirs] / divisor for ours, theirs, divisor in
               (("MOTA", "MOTA", 100), ("IDF1", "IDF1", 100), ("IDSW", "IDs", 1)) if theirs in totals}
    return _require("posetrack", metrics, ("MOTA", "IDF1", "IDSW"), source,
                    "poseval's '& MOTA & ... & IDF1 & IDs' table with a Total row")


PARSERS: dict[str, Callable[..., dict[str, float]]] = {
    "sot": parse_sot_output, "vos": parse_vos_output, "mot": parse_mot_output, "mots": parse_mots_output,
    "posetrack": parse_posetrack_output,
}
