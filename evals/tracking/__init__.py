"""Tracking transfer (paper Table 4, UniTrack's protocol): one appearance model from the frozen backbone and task
heads without fine-tuning.

- `appearance`: the backbone up to stage 3 at stride 8, L2-normalised features.
- `vos`, `sot`, `mot`, `mots`, `posetrack`: mask propagation by feature affinity, cross-correlation tracking,
  association of given boxes, masks and poses by appearance (Hungarian, motion cues off); `tasks` runs each over a
  benchmark's folder, saves the predictions and scores them.
- `metrics`: DAVIS J / F, the OTB success AUC, MOTChallenge and MOTS HOTA / MOTA / IDF1 (TrackEval), PoseTrack's
  per-joint MOTA / IDF1 / ID switches as poseval counts them.
- `videos`, `datasets`: the offline digit videos in the benchmarks' layouts, and checked readers.
- `unitrack`: the same tasks run by a UniTrack checkout, for those who have one.

Options of the ``tracking`` protocol:

- `task`: required; a row of Table 4 (`evals.TRACKING_TASKS`): sot, vos, mot, mots, posetrack.
- `root`: the benchmark's folder (OTB-2015, DAVIS-2017, MOT16/MOTS20/PoseTrack18 layout). The experiment fills it
  from ``datasets.<key>`` (`TrackingTask.datasets_key`); on the offline digits the DAG writes the videos in the
  pretraining digits' style and points it there; a job with neither renders them into its own folder.
- `split`: the split folder read (DAVIS val, MOT train, ...; default: the task runner's).
- `head`: keyword arguments of the task's head over UniTrack's defaults (`vos.propagate`, `sot.track`, ...).
- `stride`: the appearance model's largest down-sampling (default 8, UniTrack's).
- `batch_size`: frames per forward pass (default 8).
- `videos`: offline videos without a root: `videos.write_videos` parameters over `VIDEOS`.
- `runner`: ``native`` (default, this package) or ``unitrack``: run UniTrack's own test script of the task.
- `unitrack`: the UniTrack checkout (runner unitrack; the experiment fills it from ``datasets.unitrack``).
- `unitrack_overrides`: dotted UniTrack config keys -> values (runner unitrack).

Metrics (fractions, counts as floats): ``tracking/<name>`` for each score of the task (`tasks`); tags
``tracking.task`` and ``tracking.benchmark`` name the Table 4 row and its data set (``digits`` for the offline
videos). Predictions and per-sequence scores land in ``<output_dir>/results/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals import PROTOCOL_OPTIONS, TRACKING_TASKS, pretraining_style

if TYPE_CHECKING:  # the videos stage imports this package without torch and MLflow
    from evals.job import EvalJob

log = logging.getLogger(__name__)

OPTIONS = PROTOCOL_OPTIONS["tracking"]
RUNNERS = ("native", "unitrack")
# The offline videos a job renders when no root is given: 10 videos of 20 frames at 64 px (`videos.write_videos`).
VIDEOS = {"n_videos": 10, "frames": 20, "canvas": 64}
OFFLINE_BENCHMARK = "digits"


class TrackingOptionError(ValueError):
    """A tracking evaluation's options are wrong: the message names the option and what was expected."""


def _mapping(job: EvalJob, name: str) -> dict[str, Any]:
    value = job.option(name, {})
    if not isinstance(value, dict):
        raise TrackingOptionError(f"tracking options.{name} must be a mapping, got {value!r}")
    return dict(value)


def _positive_int(job: EvalJob, name: str, default: int) -> int:
    value = job.option(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TrackingOptionError(f"tracking options.{name} must be a positive int, got {value!r}")
    return value


def _options(job: EvalJob) -> dict[str, Any]:
    unknown = sorted(set(job.options) - set(OPTIONS))
    if unknown:
        raise TrackingOptionError(f"unknown tracking options {unknown}; allowed: {list(OPTIONS)}")
    task = job.options.get("task")
    if task not in TRACKING_TASKS:
        raise TrackingOptionError(f"tracking options.task must be one of {sorted(TRACKING_TASKS)}, got {task!r}")
    runner = job.option("runner", "native")
    if runner not in RUNNERS:
        raise TrackingOptionError(f"tracking options.runner must be one of {list(RUNNERS)}, got {runner!r}")
    if runner == "unitrack" and not job.option("unitrack", None):
        raise TrackingOptionError("tracking runner unitrack needs options.unitrack (or datasets.unitrack): the "
                                  "folder of a UniTrack checkout")
    split = job.option("split", None)
    return {"task": task, "runner": runner, "root": job.option("root", None), "head": _mapping(job, "head"),
            "split": split, "stride": _positive_int(job, "stride", 8),
            "batch_size": _positive_int(job, "batch_size", 8), "videos": _mapping(job, "videos"),
            "unitrack": job.option("unitrack", None), "unitrack_overrides": _mapping(job, "unitrack_overrides")}


def video_parameters(data: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The offline videos of a run: `VIDEOS` in the style of its pretraining digits (`evals.pretraining_style`),
    then ``extra`` (a job's ``options.videos``)."""
    return dict(VIDEOS) | pretraining_style(data) | dict(extra or {})


def write_videos(task: str, root: Path, params: dict[str, Any]) -> Path:
    """The offline videos of ``task`` (its `TrackingTask.video_format`) at ``root``: what a job without a root
    renders for itself, and what the DAG's tracking_videos rule writes for all runs on the same data."""
    from evals.tracking import videos

    return videos.write_videos(TRACKING_TASKS[task].video_format, root, **params)


def _offline_root(job: EvalJob, options: dict[str, Any]) -> Path:
    try:
        data = job.cfg.data
    except Exception as error:
        raise TrackingOptionError(f"tracking task {options['task']} has no options.root and the run's config is "
                                  f"unusable ({error}); set datasets.{TRACKING_TASKS[options['task']].datasets_key}"
                                  ) from None
    if data.name != "digits":
        key = TRACKING_TASKS[options["task"]].datasets_key
        raise TrackingOptionError(f"tracking task {options['task']} needs options.root (or datasets.{key}): offline "
                                  f"videos exist only for runs on the digits, this run is on {data.name!r}")
    fmt = TRACKING_TASKS[options["task"]].video_format
    return write_videos(options["task"], Path(job.output_dir) / f"videos-{fmt}",
                        video_parameters(data, options["videos"]))


def _is_offline(root: Path) -> bool:
    """Whether ``root`` holds the offline digit videos (their manifest), not a benchmark."""
    import json

    from mec.trees import MANIFEST_NAME

    try:
        return "videos_version" in json.loads((root / MANIFEST_NAME).read_text()).get("params", {})
    except (OSError, ValueError, AttributeError):
        return False


def _native(job: EvalJob, options: dict[str, Any], root: Path, out: Path) -> dict[str, float]:
    import torch

    from evals.tracking.appearance import from_backbone_file
    from evals.tracking.tasks import TASK_RUNNERS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_backbone_file(job.backbone, job.cfg, stride=options["stride"], device=device,
                               batch_size=options["batch_size"])
    split = {} if options["split"] is None else {"split": options["split"]}
    return TASK_RUNNERS[options["task"]](model, root, out, **split, **options["head"])


def _unitrack(job: EvalJob, options: dict[str, Any], root: Path, out: Path) -> dict[str, float]:
    from evals.job import load_frozen_backbone
    from evals.tracking import unitrack

    backbone, _ = load_frozen_backbone(job.backbone, job.cfg)
    weights = unitrack.export_backbone(backbone, Path(job.output_dir) / "unitrack_backbone.pth")
    return unitrack.run(options["task"], Path(options["unitrack"]), weights, root, out,
                        arch=job.cfg.model.arch, overrides=options["unitrack_overrides"] or None)


def evaluate(job: EvalJob) -> dict[str, float]:
    """Run one Table 4 task on the frozen backbone, log ``tracking/<score>`` and return them."""
    options = _options(job)  # bad options stop before anything is opened or written
    with job.logged() as logger:
        root = Path(options["root"]) if options["root"] is not None else _offline_root(job, options)
        benchmark = OFFLINE_BENCHMARK if _is_offline(root) else TRACKING_TASKS[options["task"]].benchmark
        logger.try_("tag the tracking task", logger.set_tags,
                    {"tracking.task": options["task"], "tracking.benchmark": benchmark,
                     "tracking.runner": options["runner"]})
        out = Path(job.output_dir) / "results"
        run = _native if options["runner"] == "native" else _unitrack
        scores = run(job, options, root, out)
        metrics = {f"tracking/{name}": float(value) for name, value in scores.items()}
        logger.log_metrics(metrics, step=0)
        log.info("tracking %s on %s: %s", options["task"], benchmark,
                 ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
        if (out / "sequences.json").is_file():
            logger.try_("log the per-sequence scores", logger.log_artifact, out / "sequences.json", "tracking")
    return metrics
