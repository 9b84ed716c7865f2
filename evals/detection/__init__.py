"""Detection transfer (paper: Detectron2, C4 backbone): the backbone converted to detectron2, fine-tuned as Faster /
Mask R-CNN R50-C4 with MoCo's recipe (or the offline digit-scenes recipe), scored by VOC or COCO AP.

Options of the ``detection`` protocol:

- `recipe`: required; `voc0712`, `voc07`, `coco`, `digits_voc`, `digits_coco` (`evals.detection.recipes`).
- `root`: the data root (`<root>/VOC2007`, `<root>/VOC2012`, `<root>/coco`; the scenes folder for digits). Digits
  recipes without it render the scenes into the job's folder.
- `seed`: `cfg.SEED` and the process seeds (default 0).
- `lr`: `SOLVER.BASE_LR` (default: the config's); the experiment expands a list of lrs into runs.
- `ims_per_batch`: the global batch (default: the config's).
- `max_iter_scale`: scales MAX_ITER, STEPS, warm-up and checkpoint period together.
- `max_iter`: MAX_ITER itself (STEPS past it are ignored by detectron2).
- `overrides`: more detectron2 settings, a list of "KEY VALUE" strings (`"SOLVER.CHECKPOINT_PERIOD 100"`).
- `log_period`: iterations between training-loss records (default 20).
- `cpu_threads`: torch threads when training on the CPU (default: 1 for the digits recipes, whose tensors are tiny,
  the process' default otherwise).
- `scenes`: digits recipes without a root: keyword arguments of `scenes.write_{voc,coco}_scenes` over the
  defaults (400 / 100 images of 64 px, in the pretraining digits' style: see `scene_parameters`).

The job converts the backbone once into ``<output_dir>/backbone_detectron2.pkl`` (reused while the backbone's
SHA-256 is the same), trains into ``<output_dir>/detectron2/`` and resumes from its newest checkpoint when rerun, in
the same MLflow run. Metrics (fractions): ``detection/AP50``, ``detection/AP``, ``detection/AP75`` and, with masks,
``detection/mask_AP``, ``mask_AP50``, ``mask_AP75``; training: ``detection/train/<loss>``, ``detection/lr``, and
``detection/skipped_images`` when training images could not be read (each skipped with one warning naming it; an
unreadable test image stops the run: `evals.detection.train`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals import DETECTION_SCENE_RECIPES, PROTOCOL_OPTIONS, pretraining_style

if TYPE_CHECKING:  # the scenes CLI and the DAG's scenes stage import this package without torch or MLflow
    from evals.job import EvalJob

log = logging.getLogger(__name__)

OPTIONS = PROTOCOL_OPTIONS["detection"]
WEIGHTS_NAME = "backbone_detectron2.pkl"
# The scenes a digits recipe renders when no root is given: 400 training and 100 test images of 64 px.
SCENES = {"n_train": 400, "n_test": 100, "canvas": 64}


def _options(job: EvalJob) -> dict[str, Any]:
    from evals.detection.recipes import RecipeError, get_recipe

    unknown = sorted(set(job.options) - set(OPTIONS))
    if unknown:
        raise RecipeError(f"unknown detection options {unknown}; allowed: {list(OPTIONS)}")
    if "recipe" not in job.options:
        raise RecipeError("the detection protocol needs options.recipe (voc0712, voc07, coco, digits_voc, digits_coco)")
    recipe = get_recipe(job.options["recipe"])
    overrides = job.option("overrides", [])
    if isinstance(overrides, str) or not isinstance(overrides, list | tuple):
        raise RecipeError(f"detection options.overrides must be a list of 'KEY VALUE' strings, got {overrides!r}")
    overrides = list(overrides)
    if job.option("max_iter", None) is not None:
        overrides.append(f"SOLVER.MAX_ITER {int(job.options['max_iter'])}")
    root = job.option("root", None)
    if root is None and recipe.scenes is None:
        raise RecipeError(f"detection recipe {job.options['recipe']} needs options.root: {recipe.root}")
    seed = job.option("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"detection options.seed must be an int, got {seed!r}")
    threads = job.option("cpu_threads", recipe.cpu_threads)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise RecipeError(f"detection options.cpu_threads must be a positive int, got {threads!r}")
    return {"recipe": job.options["recipe"], "root": root, "seed": seed, "lr": job.option("lr", None),
            "cpu_threads": threads,
            "ims_per_batch": job.option("ims_per_batch", None), "max_iter_scale": job.option("max_iter_scale", None),
            "overrides": overrides, "log_period": int(job.option("log_period", 20))}


def _local_world_size(world: int) -> int:
    """Processes on this machine, from the hosts of all ranks (they must be contiguous blocks of one size)."""
    import torch.distributed as dist

    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, socket.gethostname())
    counts = {h: hosts.count(h) for h in hosts}
    size = counts[hosts[0]]
    blocks = [hosts[i:i + size] for i in range(0, world, size)]
    if len(set(counts.values())) != 1 or any(len(set(b)) != 1 for b in blocks):
        raise RuntimeError(f"detection needs the same number of consecutive ranks on every machine, got {hosts}")
    return size


@contextmanager
def _detectron2_process(seed: int) -> Iterator[Any]:
    """`mec.run.job_process` (process group from torchrun / SLURM, device, seeds) plus detectron2's local group."""
    from detectron2.utils import comm

    from mec.run import job_process

    with job_process("auto", seed) as proc:
        if proc.distributed:
            comm.create_local_process_group(_local_world_size(proc.world))
        try:
            yield proc
        finally:
            comm._LOCAL_PROCESS_GROUP = None  # the group dies with the process group; a later job makes its own


def _backbone_fallback(job: EvalJob) -> dict[str, Any]:
    try:
        model = job.cfg.model
    except Exception:  # no usable run config: the file's metadata must say it all
        return {}
    return {"arch": model.arch, "width": model.width, "cifar_stem": model.cifar_stem}


def _normalization(job: EvalJob) -> str | None:
    try:
        return job.cfg.data.augment
    except Exception:
        return None


def convert_once(backbone: str | Path, output: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Convert ``backbone`` to ``output`` unless ``output`` already holds this file's weights (same SHA-256)."""
    from evals.detection.convert import convert_backbone, read_converted
    from mec.checkpoint import file_sha256

    if output.is_file():
        try:
            record = read_converted(output).get("mec_backbone", {})
        except Exception as error:  # an unreadable file is converted again
            log.warning("detection: converting again: %s is unreadable (%s)", output, error)
            record = {}
        if record.get("sha256") == file_sha256(backbone) and all(record.get(k) == v for k, v in meta.items()):
            log.info("detection: reusing %s (converted from %s)", output, backbone)
            return record | {"reused": True}
    return convert_backbone(backbone, output, meta) | {"reused": False}


def scene_parameters(job: EvalJob) -> dict[str, Any]:
    """What a digits recipe renders when no root is given: `SCENES`, in the style of the digits the backbone was
    pretrained on (`evals.pretraining_style`: it decides who wins), then ``options.scenes``."""
    try:
        data = job.cfg.data
    except Exception:  # no usable run config: the renderer's defaults
        data = None
    extra = job.option("scenes", {})
    if not isinstance(extra, dict):
        raise ValueError(f"detection options.scenes must be a mapping of scene parameters, got {extra!r}")
    return dict(SCENES) | pretraining_style(data) | extra


def write_scenes(fmt: str, root: Path, params: dict[str, Any]) -> Path:
    """The digit scenes of `scene_parameters` in ``fmt`` ("voc" or "coco", `evals.DETECTION_SCENE_RECIPES`) at
    ``root``: what a digits job renders for itself, and what the DAG's detection_scenes rule writes for all."""
    from evals.detection import scenes

    params = dict(params)
    n_train, n_test = params.pop("n_train"), params.pop("n_test")
    if fmt == "voc":
        return scenes.write_voc_scenes(root, n_trainval=n_train, n_test=n_test, **params)
    return scenes.write_coco_scenes(root, n_train=n_train, n_val=n_test, **params)


def _scenes_root(recipe_name: str, out: Path, params: dict[str, Any]) -> Path:
    fmt = DETECTION_SCENE_RECIPES[recipe_name]
    return write_scenes(fmt, out / f"scenes-{fmt}", params)


def evaluate(job: EvalJob) -> dict[str, float]:
    """Convert, configure, train (or resume) and evaluate; rank 0 returns the metrics, other ranks an empty dict."""
    options = _options(job)  # bad options stop before anything is opened or written
    import torch

    from evals.detection import modeling  # noqa: F401 - registers the backbone and ROI heads with detectron2
    from evals.detection.convert import backbone_metadata
    from evals.detection.recipes import build_cfg
    from evals.detection.train import train_and_evaluate
    from mec.run import logged_run

    out = Path(job.output_dir)
    with _detectron2_process(options["seed"]) as proc:
        with logged_run(job.open_logger if proc.main else None) as logger:
            meta = backbone_metadata(job.backbone, _backbone_fallback(job))
            weights = out / WEIGHTS_NAME
            root = options["root"]
            # Check the recipe against the backbone before converting anything (raises one line).
            build_cfg(options["recipe"], meta | {"source": job.backbone}, weights, out / "detectron2",
                      root=root or out, register=False)
            if proc.main:
                record = convert_once(job.backbone, weights, meta)
                if root is None:
                    root = _scenes_root(options["recipe"], out, scene_parameters(job))
                if logger is not None:
                    logger.try_("tag the converted backbone", logger.set_tags, {
                        "detection.backbone_keys": str(record["keys"]), "detection.backbone_sha256": record["sha256"],
                        "detection.recipe": options["recipe"]})
            proc.barrier()
            if root is None:  # other ranks: the scenes rank 0 rendered (written once: the same parameters)
                root = _scenes_root(options["recipe"], out, scene_parameters(job))
            cfg = build_cfg(options["recipe"], meta | {"source": job.backbone}, weights, out / "detectron2",
                            root=root, seed=options["seed"], lr=options["lr"], max_iter_scale=options["max_iter_scale"],
                            ims_per_batch=options["ims_per_batch"], normalization=_normalization(job),
                            overrides=options["overrides"])
            cfg.defrost()
            cfg.MODEL.DEVICE = proc.device.type
            cfg.freeze()
            threads = torch.get_num_threads()
            if proc.device.type == "cpu" and options["cpu_threads"] is not None:
                torch.set_num_threads(options["cpu_threads"])
            try:
                metrics = train_and_evaluate(cfg, logger, options["log_period"])
            finally:
                torch.set_num_threads(threads)
    return metrics if proc.main else {}
