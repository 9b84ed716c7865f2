"""Training speed of the detection transfer's VOC recipe (R50-C4, `voc07`): float32 against detectron2's AMP.

    python benchmarks/detection_speed.py --work /tmp/detbench                 # CUDA when present
    python benchmarks/detection_speed.py --work /tmp/detbench --iters 30 --batch 16

The data are Pascal VOC files: digit scenes (evals/detection/scenes.py) at VOC's image size, their objects named
after the first ten VOC classes, read through the `voc07` recipe exactly as VOC2007 would be (MIN_SIZE_TRAIN
480..800, the R50-C4 model with the extra-norm res5 head, naiveSyncBN). The backbone is a randomly initialised
ResNet-50 exported as `mec pretrain` exports one. Each variant builds its own trainer in this process and times
``--iters`` iterations after ``--warmup``: iterations/s, images/s, the ratio to float32 and peak GPU memory.
Evaluation and precise BN are off: this measures training only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

VARIANTS = (("float32", False), ("AMP (SOLVER.AMP)", True))


def voc_tree(root: Path, n_trainval: int, canvas: int) -> Path:
    """A VOC2007 tree of digit scenes whose objects carry VOC class names (digit i -> the i-th VOC class)."""
    from evals.detection.datasets import VOC_CLASSES
    from evals.detection.scenes import DIGIT_CLASSES, write_voc_scenes

    tree = write_voc_scenes(root / "VOC2007", n_trainval=n_trainval, n_test=8, canvas=canvas, seed=0)
    pairs = zip(DIGIT_CLASSES, VOC_CLASSES[: len(DIGIT_CLASSES)], strict=True)
    renamed = {f"<name>{digit}</name>": f"<name>{voc}</name>" for digit, voc in pairs}
    for xml in sorted((tree / "Annotations").glob("*.xml")):
        text = xml.read_text()
        for old, new in renamed.items():
            text = text.replace(old, new)
        xml.write_text(text)
    return root


def random_resnet50(path: Path) -> Path:
    from mec import checkpoint as ckpt
    from mec.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet50", zero_init_residual=False)
    ckpt.export_backbone(net.state_dict(), path, {"arch": "resnet50", "width": 64, "cifar_stem": False,
                                                  "feature_dim": net.feature_dim, "source_checkpoint": "random_init"})
    return path


def iteration_rate(work: Path, root: Path, backbone: Path, amp: bool, batch: int, warmup: int, iters: int,
                   workers: int, extra: list[str]) -> tuple[float, float]:
    """(iterations per second, peak GiB) of ``iters`` timed iterations after ``warmup``."""
    from detectron2.engine import HookBase

    from evals.detection import modeling  # noqa: F401 - registers the backbone and ROI head
    from evals.detection.convert import backbone_metadata, convert_backbone
    from evals.detection.recipes import build_cfg
    from evals.detection.train import DetectionTrainer

    meta = backbone_metadata(backbone)
    weights = work / "r50.pkl"
    if not weights.exists():
        convert_backbone(backbone, weights, meta)
    out = work / ("amp" if amp else "fp32")
    cfg = build_cfg("voc07", meta | {"source": str(backbone)}, weights, out, root=root, ims_per_batch=batch,
                    overrides=[f"SOLVER.MAX_ITER {warmup + iters}", f"SOLVER.AMP.ENABLED {amp}",
                               "TEST.PRECISE_BN.ENABLED False", "SOLVER.CHECKPOINT_PERIOD 100000",
                               f"DATALOADER.NUM_WORKERS {workers}", *extra])
    cfg.defrost()
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.DATASETS.TEST = ()  # training only
    cfg.freeze()

    marks: dict[str, float] = {}

    class Clock(HookBase):
        def after_step(self) -> None:
            if self.trainer.iter + 1 == warmup:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                marks["start"] = time.perf_counter()

        def after_train(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks["end"] = time.perf_counter()

    trainer = DetectionTrainer(cfg)
    trainer.register_hooks([Clock()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return iters / (marks["end"] - marks["start"]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, weights and outputs")
    parser.add_argument("--batch", type=int, default=16, help="images per iteration (the recipe's 16)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--images", type=int, default=128, help="trainval images written")
    parser.add_argument("--canvas", type=int, default=500, help="scene side in pixels (VOC images are ~500 px)")
    parser.add_argument("--workers", type=int, default=8, help="data loader workers")
    parser.add_argument("--override", action="append", default=[], metavar="'KEY VALUE'",
                        help="another detectron2 setting (a smoke test: 'INPUT.MIN_SIZE_TRAIN (128,)')")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = voc_tree(args.work / "datasets", args.images, args.canvas)
    backbone = random_resnet50(args.work / "resnet50_random.pt")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"voc07 recipe, R50-C4, batch {args.batch}, {args.iters} timed iterations after {args.warmup}, {device}")
    baseline = None
    for name, amp in VARIANTS:
        rate, peak = iteration_rate(args.work, root, backbone, amp, args.batch, args.warmup, args.iters,
                                    args.workers, args.override)
        baseline = baseline or rate
        print(f"{name:18s} {rate:6.2f} it/s  {rate * args.batch:7.1f} img/s  x{rate / baseline:.2f}  "
              f"peak {peak:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
