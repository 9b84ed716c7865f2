"""What a campaign will cost before it starts: its jobs with their GPUs and GPU hours, printed by a dry run.

Per job: the GPUs it holds (nodes x GPUs per node), its time limit (the ``runtime`` resource, minutes) and the GPU
hours that reserves; for a pretraining run also an estimate of the GPU hours it needs, from its epochs, the size
of its data set and the pretraining throughput the README states (`IMAGES_PER_SECOND_PER_GPU`, one H100 with 16
cores: the end-to-end rate of the ResNet-50 224 px recipe while the input pipeline is the bottleneck, issue 14),
so only for that setting (ImageNet, Places365); other runs and the evaluations have no estimate: their
reservation is the bound. CPU-only jobs (the miniatures) show 0 GPUs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

# End-to-end pretraining rate of the released ImageNet recipe on one H100 with 16 cores (README, "On a GPU"):
# images (two views each) per second per GPU.
IMAGES_PER_SECOND_PER_GPU = 102.0
# Training-set images per epoch of each pretraining data set (`data.name`); the digits' depend on their renderings.
TRAIN_IMAGES = {"imagefolder": 1_281_167, "places365": 1_803_460}
DRY_RUN_FLAGS = ("--dry-run", "--dryrun", "--just-print")


def _gpus(resources: dict[str, Any]) -> int:
    return int(resources.get("nodes", 1)) * int(resources.get("gpus_per_node", 0))


def _hours(resources: dict[str, Any]) -> float:
    return int(resources.get("runtime", 60)) / 60


def plan_rows(experiment: Any) -> list[dict[str, Any]]:
    """One row per job: name, kind, GPUs, time limit (h), reserved GPU hours, estimated GPU hours (or None)."""
    rows = []
    for name, run in experiment.runs.items():
        gpus, limit = _gpus(run.resources), _hours(run.resources)
        estimate = None
        if run.backbone is None and not run.random_init:
            cfg = experiment.config_for(name)
            images = TRAIN_IMAGES.get(cfg.data.name)
            measured = cfg.model.arch == "resnet50" and cfg.data.image_size == 224  # the setting of the figure
            if images is not None and gpus > 0 and measured:
                estimate = cfg.optim.epochs * images / IMAGES_PER_SECOND_PER_GPU / 3600
        rows.append({"job": f"pretrain {name}", "gpus": gpus, "limit_h": limit, "reserved": gpus * limit,
                     "estimate": estimate})
    for evaluation in experiment.evaluations.values():
        gpus, limit = _gpus(evaluation.resources), _hours(evaluation.resources)
        for run in evaluation.runs:
            rows.append({"job": f"{evaluation.name} {run}", "gpus": gpus, "limit_h": limit, "reserved": gpus * limit,
                         "estimate": None})
    return rows


def format_plan(experiment: Any) -> str:
    """The plan as a text table with totals (what a dry run prints)."""
    rows = plan_rows(experiment)
    width = max([len(r["job"]) for r in rows] + [len("total")])
    lines = [f"Plan of {experiment.name} ({experiment.scale} scale, launcher {experiment.launcher}): GPU hours",
             f"{'job':<{width}}  {'GPUs':>5}  {'limit h':>8}  {'reserved':>9}  {'estimated':>9}"]
    for r in rows:
        estimate = f"{r['estimate']:9.0f}" if r["estimate"] is not None else f"{'-':>9}"
        lines.append(f"{r['job']:<{width}}  {r['gpus']:>5}  {r['limit_h']:>8.1f}  {r['reserved']:>9.0f}  {estimate}")
    reserved = sum(r["reserved"] for r in rows)
    estimated = sum(r["estimate"] for r in rows if r["estimate"] is not None)
    lines.append(f"{'total':<{width}}  {'':>5}  {'':>8}  {reserved:>9.0f}  {estimated:>9.0f}")
    lines.append(f"(estimated: pretraining only, epochs x training images / {IMAGES_PER_SECOND_PER_GPU:g} images/s per "
                 "GPU, the end-to-end H100 rate in the README; reserved: GPUs x time limit per attempt)")
    over = [r["job"] for r in rows if r["estimate"] is not None and r["estimate"] > r["reserved"]]
    if over:
        lines.append(f"{len(over)} job(s) need more than one time limit ({', '.join(over)}): each is requeued at its "
                     "limit and resumes from its newest checkpoint (at most the launcher's max_requeues times)")
    return "\n".join(lines)


def is_dry_run(argv: Sequence[str]) -> bool:
    """Whether Snakemake was started as a dry run (``-n``, also inside short-option groups such as ``-np``)."""
    return any(a in DRY_RUN_FLAGS or (a.startswith("-") and not a.startswith("--") and "n" in a[1:]) for a in argv)


def print_plan_on_dry_run(experiment: Any, argv: Sequence[str] = tuple(sys.argv)) -> None:
    if is_dry_run(argv[1:]):
        print(format_plan(experiment), file=sys.stderr)
