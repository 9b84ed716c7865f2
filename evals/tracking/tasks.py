"""The tracking tasks of paper Table 4 on a data tree: read it, run the head on every sequence, score, save results.

Each `run_<task>(model, root, output_dir, ...)` reads the benchmark's folder layout with the checked readers of
`evals.tracking.datasets`, runs the task's head (`vos.propagate`, `sot.track`, `mot.associate`) on every sequence
with the appearance model, writes the predictions under ``output_dir`` in the benchmark's own result format (so
that an official toolkit can score them again) and returns the benchmark's scores (fractions; counts as floats):

- VOS on DAVIS-2017 val: ``J_mean``, ``J_recall``, ``F_mean``, ``F_recall``, ``JF_mean`` (`metrics.davis_scores`);
  predictions as indexed PNGs ``<output_dir>/<sequence>/<frame>.png`` (the davis2017-evaluation layout).
- SOT on OTB-2015: ``AUC`` (success) and ``precision`` (20 px), each the mean over targets as pysot reports them;
  predictions ``<output_dir>/<target>.txt``, one ``x,y,w,h`` line per frame (pysot's OTB result files).
- MOT on MOTChallenge: TrackEval's HOTA / CLEAR / Identity over all sequences together (`IDF1`, `HOTA`, `MOTA`,
  `IDSW`, ...); predictions ``<output_dir>/<sequence>.txt`` in MOTChallenge's tracker format.

Every task also writes ``<output_dir>/sequences.json``: the per-sequence scores, for looking at where a backbone
fails. Frames are read as RGB (grey and palette images converted), one sequence at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals.tracking import datasets, metrics
from evals.tracking.datasets import TrackingDataError, read_frames


def run_vos(model: Any, root: str | Path, output_dir: str | Path, *, split: str = "val",
            **head: Any) -> dict[str, float]:
    """DAVIS-2017 semi-supervised VOS: propagate each sequence's first-frame mask (`vos.propagate`) and score J/F."""
    from evals.tracking.vos import propagate

    out = Path(output_dir)
    preds, gts, per_sequence = [], [], {}
    for sequence in datasets.read_davis(root, split):
        _check_every_frame_annotated(sequence)
        gt = datasets.load_masks(sequence)
        frames = read_frames(sequence.frames)
        if frames[0].shape[:2] != gt[0].shape:
            raise TrackingDataError(f"{sequence.masks[0]}: mask {gt[0].shape} for frames of {frames[0].shape[:2]}")
        pred = np.stack(propagate(model, frames, gt[0], **head)).astype(np.uint8)
        for frame, labels in zip(sequence.frames, pred, strict=True):
            target = out / sequence.name / f"{Path(frame).stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(labels)
            image.putpalette(datasets.DAVIS_PALETTE.tobytes())
            image.save(target)
        per_sequence[sequence.name] = metrics.davis_scores([pred], [gt])
        preds.append(pred)
        gts.append(gt)
    scores = metrics.davis_scores(preds, gts)
    metrics.write_sequence_scores(out, per_sequence)
    return scores


def _check_every_frame_annotated(sequence: datasets.DavisSequence) -> None:
    """Semi-supervised VOS scores every frame, so each needs its mask; `read_davis` already refuses a mask of a
    frame that is not there, so the first frame without one is the file to name."""
    annotated = {Path(mask).stem for mask in sequence.masks}
    missing = [Path(frame).stem for frame in sequence.frames if Path(frame).stem not in annotated]
    if missing:
        raise TrackingDataError(f"{Path(sequence.masks[0]).parent / (missing[0] + '.png')}: missing annotation "
                                f"({len(missing)} of {len(sequence.frames)} frames have none; semi-supervised VOS "
                                "scores every frame)")


def run_sot(model: Any, root: str | Path, output_dir: str | Path, **head: Any) -> dict[str, float]:
    """OTB one-pass evaluation: track every target from its first box (`sot.track`); mean success AUC, precision."""
    from evals.tracking.sot import track

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_sequence = {}
    for sequence in datasets.read_otb(root):
        boxes = track(model, read_frames(sequence.frames), sequence.boxes[0], **head)
        np.savetxt(out / f"{sequence.name}.txt", boxes, fmt="%.2f", delimiter=",")
        per_sequence[sequence.name] = {"AUC": metrics.otb_success_auc(boxes, sequence.boxes),
                                       "precision": metrics.otb_precision(boxes, sequence.boxes)}
    metrics.write_sequence_scores(out, per_sequence)
    return {name: float(np.mean([s[name] for s in per_sequence.values()])) for name in ("AUC", "precision")}


def run_mot(model: Any, root: str | Path, output_dir: str | Path, *, split: str = "train",
            benchmark: str = "MOT16", **head: Any) -> dict[str, float]:
    """MOTChallenge with given detections (det/det.txt): appearance-only association (`mot.associate`), scored by
    TrackEval on every sequence together."""
    from evals.tracking.mot import associate

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored, per_sequence = [], {}
    for sequence in datasets.read_mot(root, split, require_det=True):
        if len(sequence.gt) == 0:
            raise TrackingDataError(f"{root}/{split}/{sequence.name}: no gt/gt.txt to score against")
        detections = [sequence.det[sequence.det[:, 0] == t][:, 2:7] for t in range(1, len(sequence.frames) + 1)]
        rows = associate(model, read_frames(sequence.frames), detections, **head)
        with open(out / f"{sequence.name}.txt", "w") as handle:
            for row in rows:
                handle.write(f"{int(row[0])},{int(row[1])},{row[2]:.2f},{row[3]:.2f},{row[4]:.2f},{row[5]:.2f},"
                             "1,-1,-1,-1\n")
        scored.append((sequence.gt, rows, len(sequence.frames)))
        per_sequence[sequence.name] = metrics.mot_scores(sequence.gt, rows, len(sequence.frames), benchmark)
    metrics.write_sequence_scores(out, per_sequence)
    return metrics.mot_benchmark_scores(scored, benchmark)


def run_mots(model: Any, root: str | Path, output_dir: str | Path, **options: Any) -> dict[str, float]:
    """MOTS with given masks (`evals.tracking.mots.run_mots`): results `<output_dir>/<sequence>.txt` (MOTS)."""
    from evals.tracking import mots

    return mots.run_mots(model, root, output_dir=output_dir, **options)


def run_posetrack(model: Any, root: str | Path, output_dir: str | Path, **options: Any) -> dict[str, float]:
    """PoseTrack with given poses (`evals.tracking.posetrack.run_posetrack`): PoseTrack18 JSON per video."""
    from evals.tracking import posetrack

    return posetrack.run_posetrack(model, root, output_dir=output_dir, **options)


# task (`evals.TRACKING_TASKS`) -> runner(model, root, output_dir, [split=...], **head options) -> scores
TASK_RUNNERS = {"vos": run_vos, "sot": run_sot, "mot": run_mot, "mots": run_mots, "posetrack": run_posetrack}
