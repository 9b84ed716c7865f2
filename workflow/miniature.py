"""A campaign at miniature scale: the same DAG and evaluations on data this machine can make, with tiny budgets.

A campaign config (`workflow/experiments/table*.yaml`) may carry a ``miniature:`` block: an overlay of the campaign
tree, applied when the experiment is built with ``scale: miniature`` (``snakemake --configfile X.yaml --config
scale=miniature``). The overlay is merged key by key into the campaign (mappings recursively, other values
replace, ``null`` removes a key) and may only change what exists: the same run groups, the same evaluations, the
same grid keys with as many values, the same seeds, so the miniature has the same DAG shape. Its MLflow experiment
is ``<campaign>-miniature`` and its output ``results/<campaign>-miniature`` unless the overlay names them, so its
runs never mix with real ones. ``miniature.resources`` (for example one CPU, no GPU) replaces the resources of
every run group and evaluation; an entry's own ``resources`` update them.

Each miniature run remembers what it stands for: the campaign's values of every pretraining parameter and
evaluation option it changed (`nominal_values`), logged as the run's ``mec.nominal`` tag. The paper's tables read
a run through them (a digits run standing for ImageNet at 800 epochs fills Table 1's 800-epoch row) and say that
the numbers are a miniature's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from mec.config import ConfigError

SCALES = ("full", "miniature")
NOMINAL_TAG = "mec.nominal"  # JSON {param: campaign value} of the keys a miniature run changed
SCALE_TAG = "mec.scale"
# Overlay keys that would change the DAG's shape: the groups' and evaluations' expansion.
SHAPE_KEYS = ("grid", "seeds")


def _merge(base: Any, overlay: Any, where: str) -> Any:
    """``overlay`` merged into ``base``: mappings key by key, None deletes, other values replace."""
    if not isinstance(overlay, Mapping):
        return copy.deepcopy(overlay)
    if not isinstance(base, Mapping):
        raise ConfigError(f"miniature.{where}: the campaign has a {type(base).__name__} here, not a mapping")
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = _merge(base[key], value, f"{where}.{key}" if where else str(key))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_same_shape(campaign: Mapping[str, Any], overlay: Mapping[str, Any]) -> None:
    """The overlay names only existing groups and evaluations and keeps their expansion (grid keys and sizes, seeds)."""
    for section in ("pretrain", "evaluate"):
        existing = campaign.get(section) or {}
        for name, spec in (overlay.get(section) or {}).items():
            if name not in existing:
                raise ConfigError(f"miniature.{section}.{name}: the campaign has no such "
                                  f"{'run group' if section == 'pretrain' else 'evaluation'}; it has "
                                  f"{sorted(existing)}")
            if not isinstance(spec, Mapping):
                continue
            if "seeds" in spec and list(spec["seeds"] or []) != list(existing[name].get("seeds") or []):
                raise ConfigError(f"miniature.{section}.{name}.seeds: a miniature keeps the campaign's seeds "
                                  f"{existing[name].get('seeds')}")
            grid, base = spec.get("grid") or {}, existing[name].get("grid") or {}
            for key, values in grid.items():
                if key not in base or len(values or []) != len(base[key]):
                    raise ConfigError(f"miniature.{section}.{name}.grid.{key}: a miniature keeps the campaign's grid "
                                      f"keys and their number of values ({ {k: len(v) for k, v in base.items()} })")


def _give_resources(mini: dict[str, Any], overlay: Mapping[str, Any], resources: Any) -> None:
    """``miniature.resources`` replace the resources of every run group and evaluation (the campaign's GPUs and
    nodes mean nothing on the machine a miniature runs on); an overlay entry's own resources update them."""
    if not isinstance(resources, Mapping):
        raise ConfigError(f"miniature.resources: expected a mapping of resources (cpus_per_task, mem_mb, ...), "
                          f"got {resources!r}")
    for section in ("pretrain", "evaluate"):
        for name, spec in (mini.get(section) or {}).items():
            own = (overlay.get(section) or {}).get(name)
            own = own.get("resources") if isinstance(own, Mapping) else None
            if isinstance(spec, dict):
                spec["resources"] = copy.deepcopy({**resources, **(own or {})})


def miniature_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment tree of a campaign's miniature (``tree`` with its ``miniature:`` block applied)."""
    overlay = tree.get("miniature")
    if not isinstance(overlay, Mapping):
        raise ConfigError(f"scale=miniature: experiment {tree.get('experiment')!r} has no miniature block "
                          "(workflow/experiments/table*.yaml have one)")
    campaign = full_tree(tree)
    _check_same_shape(campaign, overlay)
    overlay = dict(overlay)
    resources = overlay.pop("resources", None)
    mini = _merge(campaign, overlay, "")
    if resources is not None:
        _give_resources(mini, overlay, resources)
    mini.setdefault("experiment", campaign["experiment"])
    if "experiment" not in overlay:
        mini["experiment"] = f"{campaign['experiment']}-miniature"
    if "output" not in overlay:
        mini["output"] = f"results/{mini['experiment']}"
    return mini


def full_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The campaign itself: ``tree`` without its scale switch and miniature block."""
    return {k: copy.deepcopy(v) for k, v in tree.items() if k not in ("scale", "miniature")}


def scale_of(tree: Mapping[str, Any]) -> str:
    scale = tree.get("scale", "full")
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r}: expected one of {list(SCALES)}")
    return str(scale)


def _differences(full: Mapping[str, Any], mini: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in full.items() if mini.get(key) != value}


def nominal_values(campaign: Any, mini: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """What each miniature run stands for: per pretraining run, the campaign's values of the config keys it changed
    (``train.output_dir`` and the tracking names excluded: they are where, not what); per evaluation, the
    campaign's options it changed. Runs and evaluations pair up in expansion order within their group or spec."""
    runs: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(run.group for run in campaign.runs.values()):
        full_runs = [r for r in campaign.runs.values() if r.group == group]
        mini_runs = [r for r in mini.runs.values() if r.group == group]
        for full, small in zip(full_runs, mini_runs, strict=True):
            wanted = {k: v for k, v in campaign.config_for(full.name).flat().items()
                      if k != "train.output_dir" and not k.startswith("tracking.")}
            runs[small.name] = _differences(wanted, mini.config_for(small.name).flat())
    evaluations: dict[str, dict[str, Any]] = {}
    for full, small in zip(campaign.evaluations.values(), mini.evaluations.values(), strict=True):
        evaluations[small.name] = _differences(full.options, small.options) | (
            {"fraction": full.fraction} if full.fraction is not None and full.fraction != small.fraction else {})
    return runs, evaluations


def nominal_tags(nominal: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a miniature run: its scale and what it stands for (JSON, values as the tables compare them)."""
    return {SCALE_TAG: "miniature", NOMINAL_TAG: json.dumps(nominal, sort_keys=True, default=str)}
