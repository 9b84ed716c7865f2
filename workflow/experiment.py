"""An experiment config: which pretraining runs exist (grids and seeds expanded) and what evaluates them.

`build_experiment` first checks the tree against ``workflow/schemas/experiment.schema.yaml`` (shape, types,
the launcher names), then what a schema cannot (that every override names a real config key with an allowed
value, that evaluations name existing run groups and protocols, that run names are unique, that an imported
backbone file exists) and expands the grids into named runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals import (
    CLASSIFIER_PROTOCOLS,
    DATA_NAMES,
    DETECTION_SCENE_RECIPES,
    FEATURE_SPLITS,
    GENERATED_PROBE_SETS,
    PROTOCOL_OPTIONS,
    PROTOCOLS,
    TRACKING_TASKS,
    TRANSFER_DATASETS,
)
from mec.config import Config, ConfigError, data_identity, load_config

SCHEMA = Path(__file__).with_name("schemas") / "experiment.schema.yaml"
EXPERIMENTS = Path(__file__).with_name("experiments")  # the shipped experiment configs (default.yaml, table1.yaml, ...)
TRANSFER_PROTOCOLS = ("transfer", "transfer_finetune")  # the protocols reading a data set of paper Table 8
# A pretraining run's data (`data.name`) -> the ``datasets`` key of its folder.
PRETRAIN_DATASETS = {name: key for key, name in DATA_NAMES.items()}


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining run: a shipped config (or YAML path) plus overrides, under a unique name."""

    name: str
    group: str
    config: str
    overrides: dict[str, Any]
    seed: int
    resources: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False  # a baseline: the same backbone, randomly initialised, never trained
    backbone: str | None = None  # an existing backbone file imported as this run's result, never trained

    def override_args(self) -> list[str]:
        return [f"{key}={_as_override_value(value)}" for key, value in self.overrides.items()]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation protocol and the pretraining runs it applies to."""

    name: str
    protocol: str
    runs: tuple[str, ...]
    options: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)
    fraction: float | None = None  # class-balanced label subset (few-label probe, semi-supervised)


@dataclass(frozen=True)
class Experiment:
    name: str
    launcher: str
    tracking_uri: str | None
    output: Path
    runs: dict[str, PretrainRun]
    evaluations: dict[str, Evaluation]
    datasets: dict[str, str] = field(default_factory=dict)  # data set kind -> folder (schema: `datasets`)
    scale: str = "full"  # or "miniature" (`workflow.miniature`): then what each run stands for:
    nominal_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> campaign config values
    nominal_evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # evaluation -> campaign options

    def run(self, name: str) -> PretrainRun:
        if name not in self.runs:
            raise ConfigError(f"no pretraining run named {name!r} in experiment {self.name!r}; "
                              f"runs: {sorted(self.runs)}")
        return self.runs[name]

    def evaluation(self, name: str) -> Evaluation:
        if name not in self.evaluations:
            raise ConfigError(f"no evaluation named {name!r} in experiment {self.name!r}: {sorted(self.evaluations)}")
        return self.evaluations[name]

    def pretrain_dir(self, run: str) -> Path:
        return self.output / "pretrain" / run

    def pretrain_record(self, run: str) -> Path:
        return self.pretrain_dir(run) / "pretrain.json"

    def eval_dir(self, evaluation: str, run: str) -> Path:
        return self.output / "eval" / evaluation / run

    def eval_record(self, evaluation: str, run: str) -> Path:
        return self.eval_dir(evaluation, run) / "result.json"

    def eval_records(self) -> list[Path]:
        return [self.eval_record(e.name, run) for e in self.evaluations.values() for run in e.runs]

    def split_file(self, run: str, fraction: float, seed: int = 0) -> Path:
        """The class-balanced label subset an evaluation with ``fraction`` reads for ``run``: named by the data
        identity, so every run and method on the same data reads the same file (a declared output of its own rule)."""
        data = self.config_for(run).data
        return self.output / "splits" / f"{data.name}-{data_identity(data, length=10)}-{fraction:g}-seed{seed}.txt"

    def label_splits(self) -> dict[str, tuple[str, float]]:
        """Every split file the evaluations read (its name without ``.txt``) -> (a run on its data, fraction)."""
        splits: dict[str, tuple[str, float]] = {}
        for evaluation in self.evaluations.values():
            if evaluation.fraction is not None and "split" not in evaluation.options:
                for run in evaluation.runs:
                    splits.setdefault(self.split_file(run, evaluation.fraction).stem, (run, evaluation.fraction))
        return splits

    def split_inputs(self, evaluation: str, run: str) -> list[str]:
        """The split file an evaluation of ``run`` needs, if any (the evaluate rule's input)."""
        spec = self.evaluation(evaluation)
        if spec.fraction is None or "split" in spec.options:
            return []
        return [str(self.split_file(run, spec.fraction))]

    def feature_file(self, run: str, split: str) -> Path:
        """Frozen features of ``run``'s backbone on ``split``: a declared output of the features rule."""
        return self.output / "features" / run / f"{split}.pt"

    def feature_job_dir(self, run: str, split: str) -> Path:
        """The features job's submitit logs and launches.jsonl."""
        return self.output / "features" / run / split

    def feature_splits(self, evaluation: str) -> tuple[str, ...]:
        """The splits whose features the evaluation's protocol reads (`evals.FEATURE_SPLITS`)."""
        return FEATURE_SPLITS.get(self.evaluation(evaluation).protocol, ())

    def feature_inputs(self, evaluation: str, run: str) -> list[str]:
        """The feature files an evaluation of ``run`` reads (the evaluate rule's input)."""
        return [str(self.feature_file(run, split)) for split in self.feature_splits(evaluation)]

    def feature_reader(self, run: str, split: str) -> Evaluation:
        """The first evaluation (in config order) that reads ``run``'s ``split`` features: its resources are
        the features job's."""
        for evaluation in self.evaluations.values():
            if run in evaluation.runs and split in self.feature_splits(evaluation.name):
                return evaluation
        raise ConfigError(f"no evaluation of experiment {self.name!r} reads the {split!r} features of run {run!r}")

    def detectron2_record(self) -> Path:
        """What the detectron2 rule writes: the installed detectron2 (version, location, source) the jobs use."""
        return self.output / "detectron2.json"

    def _digits_data_dir(self, run: str, kind: str, fmt: str) -> Path:
        """Generated transfer data drawn like ``run``'s pretraining digits, named by their data identity, so runs on
        the same data share one folder."""
        data = self.config_for(run).data
        return self.output / "data" / f"digit-{kind}-{fmt}-{data.name}-{data_identity(data, length=10)}"

    def scenes_dir(self, run: str, fmt: str) -> Path:
        """The digit scenes ``run``'s offline detection evaluations train and test on, in ``fmt`` (voc | coco)."""
        return self._digits_data_dir(run, "scenes", fmt)

    def scenes_root(self, evaluation: str, run: str) -> Path | None:
        """The DAG-written scenes a detection evaluation of ``run`` reads (a digits recipe, no root or scene
        parameters of its own), else None."""
        spec = self.evaluation(evaluation)
        fmt = DETECTION_SCENE_RECIPES.get(spec.options.get("recipe"))
        if spec.protocol != "detection" or fmt is None or {"root", "scenes"} & set(spec.options):
            return None
        return self.scenes_dir(run, fmt)

    def _generated_folders(self, root_of: Any, kind_of: Any) -> dict[str, tuple[str, str]]:
        """Every generated-data folder the evaluations read (its name) -> (the first run on its data, what kind of
        it ``kind_of(evaluation)`` says); ``root_of(evaluation, run)`` is the folder or None."""
        found: dict[str, tuple[str, str]] = {}
        for evaluation in self.evaluations.values():
            for run in evaluation.runs:
                if (root := root_of(evaluation.name, run)) is not None:
                    found.setdefault(root.name, (run, kind_of(evaluation)))
        return found

    def detection_scenes(self) -> dict[str, tuple[str, str]]:
        """Every scenes folder the evaluations read (its name) -> (a run on its data, format)."""
        return self._generated_folders(self.scenes_root, lambda e: DETECTION_SCENE_RECIPES[e.options["recipe"]])

    def detection_inputs(self, evaluation: str, run: str) -> list[str]:
        """What a detection evaluation needs before its job starts: detectron2 installed, its generated data."""
        if self.evaluation(evaluation).protocol != "detection":
            return []
        root = self.scenes_root(evaluation, run)
        return [str(self.detectron2_record()), *([str(root / "manifest.json")] if root else [])]

    def videos_dir(self, run: str, task: str) -> Path:
        """The digit videos ``run``'s offline tracking evaluations of ``task`` read, in the task's layout."""
        return self._digits_data_dir(run, "videos", TRACKING_TASKS[task].video_format)

    def videos_root(self, evaluation: str, run: str) -> Path | None:
        """The DAG-written videos a tracking evaluation of ``run`` reads (no root or video parameters of its own),
        else None."""
        spec = self.evaluation(evaluation)
        if spec.protocol != "tracking" or {"root", "videos"} & set(spec.options):
            return None
        return self.videos_dir(run, spec.options["task"])

    def tracking_videos(self) -> dict[str, tuple[str, str]]:
        """Every videos folder the evaluations read (its name) -> (a run on its data, task)."""
        return self._generated_folders(self.videos_root, lambda e: e.options["task"])

    def transfer_set_dir(self, run: str, dataset: str) -> Path:
        """The offline miniature of transfer data set ``dataset`` drawn like ``run``'s pretraining digits
        (`evals.transfer_sets`), in the layout torchvision reads for it."""
        return self._digits_data_dir(run, "transfer", dataset)

    def probe_dataset(self, evaluation: str) -> str | None:
        """The ``datasets`` key a classifier evaluation (linear probe, fine-tuning) reads instead of its runs' own
        data (option ``dataset``), else None."""
        spec = self.evaluation(evaluation)
        return spec.options.get("dataset") if spec.protocol in CLASSIFIER_PROTOCOLS else None

    def probe_root(self, evaluation: str, run: str) -> Path | None:
        """The folder a classifier evaluation of ``run`` with option ``dataset`` reads: ``datasets.<key>``, else
        the DAG-written stand-in (`transfer_root`); None without the option."""
        key = self.probe_dataset(evaluation)
        if key is None:
            return None
        return Path(self.datasets[key]) if key in self.datasets else self.transfer_root(evaluation, run)

    def transfer_root(self, evaluation: str, run: str) -> Path | None:
        """The DAG-written set an evaluation of ``run`` reads, else None: the transfer set of a transfer evaluation
        without a root, the stand-in (`evals.GENERATED_PROBE_SETS`) of a classifier evaluation whose ``dataset``
        has no folder in ``datasets``."""
        spec = self.evaluation(evaluation)
        key = self.probe_dataset(evaluation)
        if key is not None and key not in self.datasets:
            return self.transfer_set_dir(run, GENERATED_PROBE_SETS[key])
        if spec.protocol not in TRANSFER_PROTOCOLS or "root" in spec.options:
            return None
        return self.transfer_set_dir(run, spec.options["dataset"])

    def transfer_sets(self) -> dict[str, tuple[str, str]]:
        """Every offline set the evaluations read (its folder's name) -> (a run on its data, the set's name)."""
        return self._generated_folders(self.transfer_root, _generated_set_name)

    def generated_inputs(self, evaluation: str, run: str) -> list[str]:
        """The manifests of the offline data an evaluation of ``run`` reads (tracking videos, transfer sets, probe
        stand-ins)."""
        roots = (self.videos_root(evaluation, run), self.transfer_root(evaluation, run))
        return [str(root / "manifest.json") for root in roots if root is not None]

    def config_for(self, run: str, **extra: Any) -> Config:
        """The run's typed `mec` config, with the output folder, seed and MLflow names the workflow owns."""
        spec = self.run(run)
        owned = [
            f"train.output_dir={self.pretrain_dir(run).resolve()}",
            f"train.seed={spec.seed}",
            f"tracking.experiment={self.name}",
            f"tracking.run_name={run}",
        ]
        if self.tracking_uri:
            owned.append(f"tracking.tracking_uri={self.tracking_uri}")
        owned += [f"{key}={_as_override_value(value)}" for key, value in extra.items()]
        cfg = load_config(spec.config, spec.override_args() + owned)
        # The experiment's folder for the run's data set (datasets.imagenet, ...) unless the run names its own;
        # jobs may start in another directory (sbatch, submitit): a relative data root means the workflow's.
        key = PRETRAIN_DATASETS.get(cfg.data.name)
        root = Path(self.datasets[key]) if key in self.datasets and "data.root" not in spec.overrides \
            else Path(cfg.data.root)
        if root.resolve() != Path(cfg.data.root):
            cfg = load_config(spec.config, [*spec.override_args(), *owned, f"data.root={root.resolve()}"])
        return cfg

    def data_roots(self) -> dict[str, Path]:
        """Every folder of existing data the experiment reads (what -> path): the pretraining runs' data (not the
        offline digits, which the runs render, nor a data set the run may download) and the evaluations' roots."""
        roots: dict[str, Path] = {}
        for name, run in self.runs.items():
            data = self.config_for(name).data
            if run.backbone is None and not run.random_init and data.name != "digits" and not data.download:
                roots.setdefault(f"pretrain.{run.group} (data.root of {data.name})", Path(data.root))
        for evaluation in self.evaluations.values():
            for key in ("root", "split", "unitrack"):
                if isinstance(evaluation.options.get(key), str):
                    roots.setdefault(f"evaluate.{evaluation.name}.options.{key}", Path(evaluation.options[key]))
            if (dataset := self.probe_dataset(evaluation.name)) in self.datasets:
                roots.setdefault(f"evaluate.{evaluation.name}.options.dataset (datasets.{dataset})",
                                 Path(self.datasets[dataset]))
        return roots


def _generated_set_name(evaluation: Evaluation) -> str:
    """The name of the offline set (`evals.transfer_sets`) an evaluation reads when the DAG writes it."""
    if evaluation.protocol in CLASSIFIER_PROTOCOLS:
        return GENERATED_PROBE_SETS[evaluation.options["dataset"]]
    return evaluation.options["dataset"]


def _as_override_value(value: Any) -> str:
    """Render a YAML value so that `mec.config`'s ``key=value`` parser reads it back unchanged."""
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1].replace("_", "")


def _grid_runs(group: str, spec: Mapping[str, Any]) -> list[PretrainRun]:
    grid: dict[str, list[Any]] = dict(spec.get("grid") or {})
    # An imported backbone has no pretraining seed: its run is the group's name, unless seeds are given.
    imported = spec.get("backbone") is not None and "seeds" not in spec
    seeds = list(spec.get("seeds") or [0])
    keys = sorted(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        suffix = "".join(f"_{_short_key(k)}{_name_part(v)}" for k, v in zip(keys, combo, strict=True))
        for seed in seeds:
            overrides = dict(spec.get("overrides") or {}) | dict(zip(keys, combo, strict=True))
            runs.append(
                PretrainRun(
                    name=group if imported else f"{group}{suffix}_s{seed}",
                    group=group,
                    config=str(spec["config"]),
                    overrides=overrides,
                    seed=int(seed),
                    resources=dict(spec.get("resources") or {}),
                    random_init=bool(spec.get("random_init", False)),
                    backbone=spec.get("backbone"),
                )
            )
    return runs


def _check_option_names(name: str, protocol: str, spec: Mapping[str, Any]) -> None:
    """Refuse, before anything runs, options (and grid keys, and ``seeds``' option ``seed``) that ``protocol``
    does not read: a misspelt one would otherwise run the default after the pretraining it waits for."""
    given = {*(spec.get("options") or {}), *(spec.get("grid") or {}), *(["seed"] if "seeds" in spec else [])}
    unknown = sorted(given - set(PROTOCOL_OPTIONS[protocol]))
    if unknown:
        raise ConfigError(f"evaluate.{name}: {protocol} reads no option {unknown}; its options: "
                          f"{sorted(PROTOCOL_OPTIONS[protocol])}")


def _expanded_evaluations(name: str, spec: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """An evaluation over its option grid and seeds: (name, options), named <name>[_<option><value>...][_s<seed>].

    Without grid and seeds, the evaluation itself, unchanged. Seeds set option ``seed`` (tables average over it).
    """
    base = dict(spec.get("options") or {})
    grid: dict[str, list[Any]] = dict(spec.get("grid") or {})
    clash = sorted(set(grid) & set(base)) + (["seed"] if "seeds" in spec and "seed" in base else [])
    if clash:
        raise ConfigError(f"evaluate.{name}: {clash} given both as options and as grid/seeds; keep one")
    keys = sorted(grid)
    expanded = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        suffix = "".join(f"_{_short_key(k)}{_name_part(v)}" for k, v in zip(keys, combo, strict=True))
        options = base | dict(zip(keys, combo, strict=True))
        if "seeds" not in spec:
            expanded.append((f"{name}{suffix}", options))
        else:
            expanded += [(f"{name}{suffix}_s{seed}", options | {"seed": int(seed)}) for seed in spec["seeds"]]
    return expanded


def _detection_options(name: str, options: dict[str, Any], datasets: Mapping[str, str]) -> dict[str, Any]:
    """A detection evaluation's data root: its own option or ``datasets.detectron2`` (the digits recipes read the
    scenes the DAG writes for each run's data: `Experiment.scenes_root`)."""
    recipe = options.get("recipe")
    if not isinstance(recipe, str):
        raise ConfigError(f"evaluate.{name}.options.recipe: a detection recipe is required (evals/detection/"
                          "recipes.py: voc0712, voc07, coco, digits_voc, digits_coco)")
    if "root" in options or recipe in DETECTION_SCENE_RECIPES:
        return options
    if "detectron2" not in datasets:
        raise ConfigError(f"evaluate.{name}: recipe {recipe!r} reads detectron2's datasets folder; set "
                          "datasets.detectron2 (the folder holding VOC2007/, VOC2012/, coco/) or options.root")
    return options | {"root": datasets["detectron2"]}


def _transfer_options(name: str, options: dict[str, Any], datasets: Mapping[str, str]) -> dict[str, Any]:
    """A transfer evaluation's data set checked and its root filled from ``datasets.transfer`` (one folder holding
    a folder per data set, named as `evals.TRANSFER_DATASETS`). Without either, runs on the offline digits read
    the DAG's miniature of the data set (`Experiment.transfer_root`; `_check_offline_data` checks the runs)."""
    dataset = options.get("dataset")
    if dataset not in TRANSFER_DATASETS:
        raise ConfigError(f"evaluate.{name}.options.dataset: {dataset!r} is not one of {list(TRANSFER_DATASETS)}")
    if "root" in options or "transfer" not in datasets:
        return options
    return options | {"root": str(Path(datasets["transfer"]) / dataset)}


def _probe_options(name: str, options: dict[str, Any], datasets: Mapping[str, str],
                   fraction: float | None) -> dict[str, Any]:
    """A classifier evaluation's ``dataset`` option checked: a `evals.DATA_NAMES` key whose folder the experiment's
    ``datasets`` block names, or one the DAG renders for runs on the digits (`evals.GENERATED_PROBE_SETS`;
    `_check_offline_data` checks the runs). The folder is ``datasets.<key>`` alone: no ``root`` beside it."""
    dataset = options.get("dataset")
    if dataset is None:
        return options
    if dataset not in DATA_NAMES:
        raise ConfigError(f"evaluate.{name}.options.dataset: {dataset!r} is not one of {list(DATA_NAMES)}")
    if dataset not in datasets and dataset not in GENERATED_PROBE_SETS:
        named = [key for key in DATA_NAMES if key in datasets]
        raise ConfigError(f"evaluate.{name}.options.dataset: {dataset!r} has no folder in the experiment's datasets "
                          f"block; set datasets.{dataset}, or name one of {named}")
    if "root" in options:
        raise ConfigError(f"evaluate.{name}.options.root: a probe reads options.dataset's folder from "
                          f"datasets.{dataset}; set that instead")
    if fraction is not None and "split" not in options:
        raise ConfigError(f"evaluate.{name}.fraction: the label subset is drawn from the runs' own data, not "
                          f"options.dataset {dataset!r}; give options.split (a file of that data set's images)")
    return options


def _split_option(options: dict[str, Any], datasets: Mapping[str, str]) -> dict[str, Any]:
    """A label split named by its file alone (SimCLR's ``1percent.txt``) is read from ``datasets.simclr_splits``."""
    split = options.get("split")
    if isinstance(split, str) and "simclr_splits" in datasets and not Path(split).is_absolute():
        return options | {"split": str(Path(datasets["simclr_splits"]) / split)}
    return options


def _tracking_options(name: str, options: dict[str, Any], datasets: Mapping[str, str]) -> dict[str, Any]:
    """A tracking evaluation's task checked, its data root (``datasets.<key>`` of the task's benchmark unless
    options.root) and UniTrack checkout (``datasets.unitrack``) filled in. Without either root the DAG writes
    the offline digit videos (`Experiment.videos_root`; `_check_offline_tracking` checks the runs are on digits)."""
    task = options.get("task")
    if task not in TRACKING_TASKS:
        raise ConfigError(f"evaluate.{name}.options.task: {task!r} is not one of {sorted(TRACKING_TASKS)} "
                          "(the rows of Table 4)")
    key = TRACKING_TASKS[task].datasets_key
    if "root" not in options and "videos" not in options and key in datasets:
        options = options | {"root": datasets[key]}
    if options.get("runner") == "unitrack" and "unitrack" not in options:
        if "unitrack" not in datasets:
            raise ConfigError(f"evaluate.{name}: runner unitrack needs datasets.unitrack (the UniTrack checkout) "
                              "or options.unitrack")
        options = options | {"unitrack": datasets["unitrack"]}
    return options


def _check_offline_data(experiment: Experiment) -> None:
    """Tracking, transfer and probe evaluations without a data folder read offline data drawn from the pretraining
    digits: only runs on the digits have them."""
    for evaluation in experiment.evaluations.values():
        probed = experiment.probe_dataset(evaluation.name)
        if evaluation.protocol == "tracking" and not {"root", "videos"} & set(evaluation.options):
            task = TRACKING_TASKS[evaluation.options["task"]]
            key, what, root = task.datasets_key, f"the {task.benchmark} folder", " or options.root"
        elif evaluation.protocol in TRANSFER_PROTOCOLS and "root" not in evaluation.options:
            key, what, root = "transfer", f"the folder holding {evaluation.options['dataset']}/", " or options.root"
        elif probed is not None and probed not in experiment.datasets:
            key, what, root = probed, f"the folder options.dataset {probed!r} reads", ""  # no root beside it
        else:
            continue
        for run in evaluation.runs:
            data = experiment.config_for(run).data.name
            if data != "digits":
                raise ConfigError(f"evaluate.{evaluation.name}: run {run} is pretrained on {data!r}, not the offline "
                                  f"digits; set datasets.{key} ({what}){root}")


def _under(root: Path, folder: str) -> Path:
    path = Path(folder)
    return path if path.is_absolute() else (root / path).resolve()


def _name_part(value: Any) -> str:
    text = "null" if value is None else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def check_schema(tree: Mapping[str, Any], source: str = "experiment config") -> None:
    """The experiment config against its JSON schema; the first violation as one line naming ``source`` (the
    config file), the key path and what the schema expected (e.g. ``unknown key 'launcherr' (allowed: ...)``,
    ``evaluate.knn.fraction: 1.5 is greater than the maximum of 1``), not jsonschema's dump of the schema."""
    from snakemake.utils import validate

    try:
        validate(dict(tree), str(SCHEMA), set_default=False)
    except Exception as exc:  # Snakemake wraps jsonschema's ValidationError in its WorkflowError
        error = exc.__cause__ or exc.__context__
        if error is None or not hasattr(error, "absolute_path"):
            raise
        raise ConfigError(f"{source}: {schema_violation(error)}") from None


def shipped_experiment(name: str, folder: Path = EXPERIMENTS) -> Path:
    """The shipped experiment config that ``snakemake --config experiment=NAME`` names, by its file name
    (``table1``) or its MLflow experiment (``mec-table1``); another name stops in one line listing them."""
    import yaml

    shipped = sorted(folder.glob("*.yaml"))
    for path in shipped:
        if name in (path.stem, path.name) or name == (yaml.safe_load(path.read_text()) or {}).get("experiment"):
            return path
    raise ConfigError(f"--config experiment={name}: no shipped experiment of that name (workflow/experiments/: "
                      f"{', '.join(path.stem for path in shipped)}); for a config of your own: --configfile FILE")


def config_source(configfiles: Sequence[Any], overrides: Mapping[str, Any], default: Any) -> str:
    """What an error in the experiment config names as its origin: the config file(s) Snakemake read (``default``
    without --configfile) and the --config values on top, e.g. ``config table1.yaml --config scale=miniature``."""
    files = [str(path) for path in configfiles] or [str(default)]
    extra = " ".join(f"{key}={value}" for key, value in overrides.items())
    return f"config {', '.join(files)}" + (f" --config {extra}" if extra else "")


def schema_violation(error: Any) -> str:
    """One jsonschema ValidationError in words: the key path (dotted, from the top of the config), then what
    was wrong with the value there."""
    where = ".".join(map(str, error.absolute_path))
    at = f"{where}: " if where else ""
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in known]
        keys = ", ".join(repr(key) for key in unknown)
        return f"{at}unknown key{'s' if len(unknown) > 1 else ''} {keys} (allowed: {', '.join(sorted(known))})"
    if error.validator == "required":
        return f"{at}missing key {error.message.replace(' is a required property', '')}"
    return f"{at}{error.message}"


def build_experiment(tree: Mapping[str, Any], root: Path = Path(".")) -> Experiment:
    """Check an experiment config (as Snakemake loaded it) and expand its runs; with ``scale: miniature``, the
    campaign's miniature (`workflow.miniature`), each run knowing the campaign values it stands for."""
    from workflow import miniature

    check_schema(tree)
    if miniature.scale_of(tree) == "full":
        return _build(miniature.full_tree(tree), root)
    campaign = _build(miniature.full_tree(tree), root, check_files=False)
    mini = _build(miniature.miniature_tree(tree), root)
    runs, evaluations = miniature.nominal_values(campaign, mini)
    return dataclasses.replace(mini, scale="miniature", nominal_runs=runs, nominal_evaluations=evaluations)


def _build(tree: Mapping[str, Any], root: Path, check_files: bool = True) -> Experiment:
    """`build_experiment` of one scale's tree; ``check_files`` False skips what needs the campaign's files (an
    imported backbone), for a campaign whose miniature is what runs."""
    check_schema(tree)
    name = str(tree["experiment"])
    runs: dict[str, PretrainRun] = {}
    groups: dict[str, list[str]] = {}
    for group, spec in tree["pretrain"].items():
        if spec.get("backbone") is not None and check_files:
            _check_import(group, spec, root)
        for run in _grid_runs(group, spec):
            if run.name in runs:
                raise ConfigError(f"pretrain.{group}: run name {run.name!r} is produced twice; rename a group")
            runs[run.name] = run
            groups.setdefault(group, []).append(run.name)
    output = Path(tree.get("output") or Path("results") / name)
    output = output if output.is_absolute() else root / output
    datasets = {kind: str(_under(root, folder)) for kind, folder in (tree.get("datasets") or {}).items()}
    evaluations: dict[str, Evaluation] = {}
    for eval_name, spec in (tree.get("evaluate") or {}).items():
        wanted = spec.get("runs", sorted(groups))
        if not wanted:  # `runs` left out means every group; an empty list would silently plan nothing
            raise ConfigError(f"evaluate.{eval_name}.runs is empty; name run groups ({sorted(groups)}), leave it "
                              "out for all, or remove the evaluation")
        unknown = sorted(set(wanted) - set(groups))
        if unknown:
            raise ConfigError(f"evaluate.{eval_name}.runs: unknown pretrain groups {unknown}; groups: {sorted(groups)}")
        protocol = str(spec.get("protocol", eval_name))
        if protocol not in PROTOCOLS:
            raise ConfigError(f"evaluate.{eval_name}.protocol: {protocol!r} is not one of {sorted(PROTOCOLS)}")
        _check_option_names(eval_name, protocol, spec)
        for expanded_name, options in _expanded_evaluations(eval_name, spec):
            if expanded_name in evaluations:
                raise ConfigError(f"evaluate.{eval_name}: evaluation name {expanded_name!r} is produced twice; "
                                  "rename one")
            if protocol == "detection":
                options = _detection_options(eval_name, options, datasets)
            if protocol == "tracking":
                options = _tracking_options(eval_name, options, datasets)
            if protocol in TRANSFER_PROTOCOLS:
                options = _transfer_options(eval_name, options, datasets)
            if protocol in CLASSIFIER_PROTOCOLS:
                options = _probe_options(eval_name, options, datasets, spec.get("fraction"))
            options = _split_option(options, datasets)
            evaluations[expanded_name] = Evaluation(
                name=expanded_name,
                protocol=protocol,
                runs=tuple(run for group in wanted for run in groups[group]),
                options=options,
                resources=dict(spec.get("resources") or {}),
                fraction=spec.get("fraction"),
            )
    experiment = Experiment(
        name=name,
        launcher=str(tree.get("launcher", "local")),
        tracking_uri=tree.get("tracking_uri"),
        output=output,
        runs=runs,
        evaluations=evaluations,
        datasets=datasets,
    )
    for spec_name, spec in [*((f"pretrain.{g}", s) for g, s in tree["pretrain"].items()),
                            *((f"evaluate.{e}", s) for e, s in (tree.get("evaluate") or {}).items())]:
        _check_resources(spec_name, spec.get("resources") or {}, experiment.launcher)
    for name, run in runs.items():  # every override must name a real key with an allowed value, before any job
        try:
            experiment.config_for(name)
        except ConfigError as exc:
            raise ConfigError(f"pretrain.{run.group} (run {name}): {exc}") from None
    _check_offline_data(experiment)
    return experiment


def _check_resources(where: str, resources: Mapping[str, Any], launcher: str) -> None:
    """Resources the launcher can give: several nodes only through SLURM, and one task per GPU (DDP's layout)."""
    nodes, gpus = int(resources.get("nodes", 1)), int(resources.get("gpus_per_node", 0))
    if nodes > 1 and launcher != "slurm":
        raise ConfigError(f"{where}.resources.nodes={nodes}: launcher {launcher!r} runs on one node; several nodes "
                          "need launcher slurm (--profile slurm)")
    tasks = resources.get("tasks_per_node")
    if gpus > 0 and tasks is not None and int(tasks) != gpus:
        raise ConfigError(f"{where}.resources.tasks_per_node={tasks}: jobs run one task per GPU; with "
                          f"gpus_per_node={gpus} use tasks_per_node {gpus} (or leave it out)")


def _check_import(group: str, spec: Mapping[str, Any], root: Path) -> None:
    """A group importing a backbone file: the file exists, and nothing that trains or varies training applies."""
    if spec.get("random_init") or spec.get("grid"):
        raise ConfigError(f"pretrain.{group}: 'backbone' imports a trained file; 'random_init' and 'grid' do not "
                          "apply to it")
    path = Path(spec["backbone"])
    if not (path if path.is_absolute() else root / path).is_file():
        raise ConfigError(f"pretrain.{group}.backbone: no file {path}")


def check_data_roots(experiment: Experiment) -> None:
    """Planning-time check that every data folder the experiment reads exists: the first missing one as one line
    naming the config key and the path expected, before any job starts."""
    for what, path in experiment.data_roots().items():
        if not path.exists():
            raise ConfigError(f"{what}: no such file or folder {path} (set it in the experiment's datasets block, "
                              "or run the campaign's miniature: --config scale=miniature)")
