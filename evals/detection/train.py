"""The detectron2 trainer of the detection transfer: `DefaultTrainer` with the recipe's evaluators, atomic
checkpoints, a strict check of the pretrained weights and the MLflow run as the metrics sink.

- Evaluators: Pascal VOC (`PascalVOCDetectionEvaluator`; 11-point AP50 for year 2007, AP and AP75 over IoU
  0.50:0.95) or COCO (`COCOEvaluator(use_fast_impl=False)`: pycocotools, since this detectron2 has no `_C`), chosen by
  the data set's ``evaluator_type``; evaluation runs once, after the last iteration (after precise BN).
- Checkpoints: `AtomicDetectionCheckpointer` writes ``model_XXXXXXX.pth`` and ``last_checkpoint`` through a
  temporary sibling + fsync + rename, so a kill mid-save leaves the previous checkpoint and its tag; the newest two
  periodic checkpoints are kept. `resume_or_load(resume=True)` continues from the tagged one after a preemption.
- Starting fresh, the converted backbone is loaded with detectron2's name matching; any backbone or res5 weight it
  did not fill (a name or shape mismatch) stops the run naming the weights.
- Rank 0 logs ``detection/train/<loss>`` (median over the logging window) and ``detection/lr`` every
  ``log_period`` iterations, then ``detection/AP50``, ``AP``, ``AP75`` (and ``mask_AP*`` with masks) as fractions.
- Unreadable images (`evals.detection.datasets`, "Images"): the training mapper skips one with a warning naming
  it (once per file and process; `MapDataset` draws another image instead) and lists it in
  ``<OUTPUT_DIR>/skipped_images.txt``; rank 0 logs how many distinct images were skipped over the whole training
  as ``detection/skipped_images`` (only when some were). The test mapper stops the run naming the image. The VOC
  test sets are loaded (their XMLs, boxes and image headers checked) before training, not only at evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger

from evals.detection.datasets import TEST_IMAGE, DatasetError
from evals.detection.modeling import DetectionModelError, missing_pretrained_keys
from mec import checkpoint as ckpt

log = logging.getLogger(__name__)

METRIC_PREFIX = "detection"
KEEP_CHECKPOINTS = 2
# detectron2 result task -> metric name prefix; detectron2 reports percent, MLflow gets fractions
_TASKS = {"bbox": "", "segm": "mask_"}
_REPORTED = ("AP", "AP50", "AP75")
SKIPPED_FILE = "skipped_images.txt"
# (record folder, image) pairs this process has warned about: one warning per file, however often it is drawn.
_WARNED: set[tuple[str, str]] = set()


class SkipUnreadableImages:
    """A training mapper that returns None for an image that cannot be read (empty, not an image, truncated),
    warning once per file and listing it in ``<record_dir>/skipped_images.txt``; `MapDataset` then maps another
    image. Other errors (a `SizeMismatchError`, a bug) propagate."""

    def __init__(self, mapper: Any, record_dir: str) -> None:
        self.mapper = mapper
        self.record_dir = str(record_dir)

    def __call__(self, record: dict[str, Any]) -> Any:
        try:
            return self.mapper(record)
        except OSError as error:  # PIL's UnidentifiedImageError and "image file is truncated" are OSErrors
            file_name = str(record.get("file_name", "?"))
            if (self.record_dir, file_name) not in _WARNED:
                _WARNED.add((self.record_dir, file_name))
                log.warning("detection: skipping training image %s: it cannot be read (%s)", file_name, error)
                os.makedirs(self.record_dir, exist_ok=True)
                with open(os.path.join(self.record_dir, SKIPPED_FILE), "a", encoding="utf-8") as handle:
                    handle.write(file_name + "\n")
            return None


class RequireReadableImages:
    """A test mapper that stops the run in one line naming an image that cannot be read."""

    def __init__(self, mapper: Any) -> None:
        self.mapper = mapper

    def __call__(self, record: dict[str, Any]) -> Any:
        try:
            return self.mapper(record)
        except OSError as error:
            raise DatasetError(f"{record.get('file_name', '?')}: cannot be read as an image ({error}); {TEST_IMAGE}") \
                from None


def skipped_images(output_dir: str | Path) -> list[str]:
    """The distinct training images the mappers of this run skipped (all processes, all attempts of the run)."""
    path = Path(output_dir) / SKIPPED_FILE
    if not path.is_file():
        return []
    return sorted({line for line in path.read_text(encoding="utf-8").splitlines() if line})


def load_test_data(cfg: CfgNode) -> None:
    """Load the VOC test sets now: loading checks their XMLs, boxes and image headers, and detectron2 loads a test
    set only when it evaluates, after training. (COCO sets are checked when registered.)"""
    from detectron2.data import DatasetCatalog

    for name in cfg.DATASETS.TEST:
        if MetadataCatalog.get(name).get("evaluator_type", None) == "pascal_voc":
            DatasetCatalog.get(name)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` whose files appear whole or not at all, and which keeps its last load's key report."""

    last_incompatible: Any = None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        ckpt.write_atomically(save_file, lambda handle: torch.save(data, handle))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        ckpt.write_atomically(os.path.join(self.save_dir, "last_checkpoint"),
                         lambda handle: handle.write(last_filename_basename.encode()))

    def _load_model(self, checkpoint: Any) -> Any:
        incompatible = super()._load_model(checkpoint)
        self.last_incompatible = incompatible
        return incompatible


class MLflowHook(HookBase):
    """Rank 0: the training losses (median over the window) and the learning rate, every ``period`` iterations."""

    def __init__(self, logger: Any, period: int) -> None:
        self._logger = logger
        self._period = max(1, int(period))

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period and next_iter != self.trainer.max_iter:
            return
        storage = self.trainer.storage
        metrics = {}
        for name, history in storage.histories().items():
            if name == "total_loss" or name.startswith("loss_"):
                metrics[f"{METRIC_PREFIX}/train/{name}"] = history.median(self._period)
        if "lr" in storage.histories():
            metrics[f"{METRIC_PREFIX}/lr"] = storage.history("lr").latest()
        if metrics:
            self._logger.log_metrics(metrics, next_iter)


class DetectionTrainer(DefaultTrainer):
    """DefaultTrainer with atomic checkpoints, the recipe's evaluators, bounded checkpoint history and MLflow."""

    def __init__(self, cfg: CfgNode, run_logger: Any = None, log_period: int = 20) -> None:
        # DefaultTrainer.__init__, with the checkpointer replaced before the hooks take it.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # as DefaultTrainer: progress on stdout
            setup_logger()
        self._run_logger = run_logger
        self._log_period = log_period
        cfg = DefaultTrainer.auto_scale_workers(cfg, _world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # detectron2 passes device_ids=[local rank], which DDP refuses for a CPU module (gloo runs)
        cpu = {"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}
        model = create_ddp_model(model, broadcast_buffers=False, **cpu)
        # As DefaultTrainer: SOLVER.AMP.ENABLED trains with autocast and a grad scaler
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicDetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self._last_eval_results: Any = None
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        from detectron2.modeling import build_model

        return build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        from detectron2.data import DatasetMapper, build_detection_train_loader

        return build_detection_train_loader(cfg, mapper=SkipUnreadableImages(DatasetMapper(cfg, True), cfg.OUTPUT_DIR))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        from detectron2.data import DatasetMapper, build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name, mapper=RequireReadableImages(DatasetMapper(cfg, False)))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> Any:
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "coco":
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
            return COCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                                 output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"), use_fast_impl=False)
        raise DetectionModelError(f"data set {dataset_name} has evaluator_type {kind!r}; expected pascal_voc or coco")

    def build_hooks(self) -> list[HookBase]:
        built = [h for h in super().build_hooks() if h is not None]
        for hook in built:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.max_to_keep = KEEP_CHECKPOINTS
        if self._run_logger is not None:
            built.append(MLflowHook(self._run_logger, self._log_period))
        return built

    def build_writers(self) -> list[Any]:
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]

    def resume_or_load(self, resume: bool = True) -> bool:
        """Resume from ``last_checkpoint`` or load the converted backbone strictly; True when resumed."""
        resumed = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume=resume)
        if not resumed:
            check_pretrained_load(self.checkpointer, self.cfg.MODEL.WEIGHTS)
        return resumed


def check_pretrained_load(checkpointer: AtomicDetectionCheckpointer, weights: str) -> None:
    """Raise (one line, naming them) when the last load left backbone or res5 weights of the model unfilled."""
    incompatible = checkpointer.last_incompatible
    if incompatible is None:
        raise DetectionModelError(f"MODEL.WEIGHTS {weights!r} loaded nothing")
    missing = missing_pretrained_keys(checkpointer.model, incompatible.missing_keys)
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DetectionModelError(f"{weights}: {len(missing)} backbone/res5 weights of the detector were not loaded "
                                  f"(name or shape mismatch): {shown}")


def _world_size() -> int:
    from detectron2.utils import comm

    return comm.get_world_size()


def detection_metrics(results: Mapping[str, Any] | None) -> dict[str, float]:
    """detectron2's ``{"bbox": {"AP": 41.2, ...}, "segm": {...}}`` (percent) -> ``detection/AP`` ... (fractions)."""
    metrics: dict[str, float] = {}
    for task, prefix in _TASKS.items():
        values = (results or {}).get(task)
        if not values:
            continue
        for key in _REPORTED:
            if key in values:
                value = float(values[key])
                metrics[f"{METRIC_PREFIX}/{prefix}{key}"] = value / 100.0 if not math.isnan(value) else value
    return metrics


def train_and_evaluate(cfg: CfgNode, run_logger: Any = None, log_period: int = 20,
                       extra_hooks: list[HookBase] | None = None) -> dict[str, float]:
    """Train (or resume) ``cfg``'s run, evaluate after the last iteration; rank 0 returns the metrics."""
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    load_test_data(cfg)  # a bad test annotation or image stops the run before it trains
    trainer = DetectionTrainer(cfg, run_logger, log_period)
    if extra_hooks:
        trainer.register_hooks(extra_hooks)
    resumed = trainer.resume_or_load(resume=True)
    if resumed:
        log.info("detection: resuming from %s at iteration %d of %d", trainer.checkpointer.get_checkpoint_file(),
                 trainer.start_iter, trainer.max_iter)
    if run_logger is not None:
        run_logger.try_("log the detectron2 config", run_logger.log_text, cfg.dump(), "detection/config.yaml")
        run_logger.try_("tag the start iteration", run_logger.set_tags,
                        {"detection.start_iter": str(trainer.start_iter)})
    trainer.train()
    metrics = detection_metrics(trainer._last_eval_results)
    skipped = skipped_images(cfg.OUTPUT_DIR)
    if skipped:
        log.warning("detection: %d training image(s) could not be read and were skipped (listed in %s)",
                    len(skipped), Path(cfg.OUTPUT_DIR) / SKIPPED_FILE)
    if run_logger is not None:
        if not metrics:
            raise RuntimeError(f"detection evaluation returned no AP: {trainer._last_eval_results!r}")
        run_logger.log_metrics(metrics, trainer.max_iter)
        if skipped:
            run_logger.log_metrics({f"{METRIC_PREFIX}/skipped_images": float(len(skipped))}, trainer.max_iter)
    return metrics
