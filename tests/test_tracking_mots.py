"""MOTS (issue 12): the COCO RLE codec, the MOTS tree writer and reader, TrackEval's MOTS scores on hand-made
cases with known answers, and the appearance-only mask association head on synthetic and generated videos.

The heads are checked with stub appearance models: colour features (as tests/test_tracking_heads.py) and an
"oracle" whose features are the one-hot object labels of the rendered videos at stride 1, which makes association
trivially correct, so that a perfect tracker must come out of the real writer, reader, head and metric.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evals.tracking import mots, videos
from evals.tracking.datasets import (
    MotsObject,
    TrackingDataError,
    read_mots,
    read_mots_file,
    rle_counts,
    rle_decode,
    rle_encode,
)
from evals.tracking.metrics import mots_benchmark_scores, mots_scores
from mec.trees import MANIFEST_NAME

torch.set_num_threads(1)

H = W = 32


class ColourModel:
    """Features = mean colour of each stride x stride cell (+ a small constant), L2-normalised over channels."""

    def __init__(self, stride: int = 4) -> None:
        self.stride = stride

    def features(self, frames) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames])).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        x = F.pad(x / 255.0 + 0.05, (0, -w % self.stride, 0, -h % self.stride), mode="replicate")
        return F.normalize(F.avg_pool2d(x, self.stride), dim=1)


class OracleModel:
    """Stride-1 features = one-hot of the object label under each pixel (channel 0: background) in the rendered
    videos of a tree; a frame read back from JPEG is recognised as the rendered frame nearest to it."""

    stride = 1

    def __init__(self, root: Path) -> None:
        params = json.loads((root / MANIFEST_NAME).read_text())["params"]
        rendered = videos.render_videos(params)
        self.frames = np.concatenate([v.frames for v in rendered]).astype(np.float32)
        self.labels = np.concatenate([v.masks for v in rendered]).astype(np.int64)
        self.channels = int(self.labels.max()) + 1

    def features(self, frames) -> torch.Tensor:
        out = []
        for frame in frames:
            index = int(np.argmin(np.abs(self.frames - np.asarray(frame, np.float32)).mean(axis=(1, 2, 3))))
            one_hot = F.one_hot(torch.from_numpy(self.labels[index]), self.channels).permute(2, 0, 1)
            out.append(one_hot.float())
        return torch.stack(out)


def square(x: int, y: int, size: int = 6, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y : y + size, x : x + size] = True
    return mask


def row(frame: int, track_id: int, mask: np.ndarray, class_id: int = 2) -> tuple:
    return (frame, track_id, class_id, *mask.shape, rle_encode(mask))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------------- RLE codec


def test_rle_round_trip_and_pycocotools_agree():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 9)) < 0.4, np.zeros((5, 4), bool), np.ones((3, 6), bool), square(3, 5, 20, (64, 48))]
    for mask in masks:
        counts = rle_encode(mask)
        assert np.array_equal(rle_decode(counts, *mask.shape), mask)
        assert sum(rle_counts(counts)) == mask.size
    coco = pytest.importorskip("pycocotools.mask")
    for mask in masks:
        assert rle_encode(mask) == coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def test_rle_decode_rejects_wrong_sizes_and_characters():
    counts = rle_encode(square(2, 2, 4, (10, 10)))
    with pytest.raises(ValueError, match=r"covers 100 pixels, not 10x12 = 120"):
        rle_decode(counts, 10, 12)
    with pytest.raises(ValueError, match="not an RLE character"):
        rle_counts("ab c")
    with pytest.raises(ValueError, match="ends inside a run length"):
        rle_counts("0" + chr(48 + 0x20))


# ------------------------------------------------------------------------------------------------------ MOTS metrics


@pytest.fixture
def gt_rows() -> list[tuple]:
    # two pedestrians over 4 frames, far apart, moving right by 2 pixels a frame
    return [row(f, 2001, square(2 + 2 * f, 2)) for f in range(1, 5)] + \
           [row(f, 2002, square(2 + 2 * f, 20)) for f in range(1, 5)]


def test_mots_perfect_output(gt_rows):
    pytest.importorskip("pycocotools")
    scores = mots_scores(gt_rows, gt_rows)
    assert scores["IDF1"] == 1.0 and scores["MOTA"] == 1.0 and scores["HOTA"] == pytest.approx(1.0)
    assert scores["IDSW"] == 0 and scores["FP"] == 0 and scores["FN"] == 0 and scores["sMOTSA"] == 1.0
    objects = [MotsObject(*r) for r in gt_rows]  # MotsObject rows score the same as tuples
    assert mots_scores(objects, objects) == scores


def test_mots_one_identity_switch(gt_rows):
    pytest.importorskip("pycocotools")
    pred = [(f, 2007 if (i == 2001 and f >= 3) else i, *rest) for f, i, *rest in gt_rows]
    scores = mots_scores(gt_rows, pred)
    assert scores["IDSW"] == 1
    assert scores["IDF1"] == pytest.approx(0.75)  # IDTP 6 of 8 gt and 8 predicted masks
    assert scores["MOTA"] == pytest.approx(1 - 1 / 8)
    assert scores["DetA"] == pytest.approx(1.0) and scores["AssA"] == pytest.approx(0.75)
    assert scores["HOTA"] == pytest.approx(math.sqrt(0.75))


def test_mots_missing_mask_is_a_false_negative(gt_rows):
    pytest.importorskip("pycocotools")
    pred = [r for r in gt_rows if not (r[1] == 2002 and r[0] == 2)]  # one mask of the second pedestrian missed
    pred.append(row(1, 2009, square(20, 10, 4)))  # one false mask
    scores = mots_scores(gt_rows, pred, num_frames=6)
    assert scores["FN"] == 1 and scores["FP"] == 1 and scores["MOTA"] == pytest.approx(1 - 2 / 8)
    # masks match at IoU >= 0.5: half of the first mask (IoU 1/2) matches, a third of it (IoU 1/3) does not
    for columns, misses in ((7, 0), (6, 1)):
        part = [r if not (r[1] == 2001 and r[0] == 1) else row(1, 2001, square(4, 2, 6) & (np.arange(W) < columns))
                for r in gt_rows]
        assert mots_scores(gt_rows, part)["FN"] == misses


def test_mots_benchmark_combines_counts_and_refuses_overlaps(gt_rows):
    pytest.importorskip("pycocotools")
    missed = [r for r in gt_rows if r[1] == 2001]
    scores = mots_benchmark_scores([(gt_rows, gt_rows, None), (gt_rows, missed, None)])
    assert scores["FN"] == 4 and scores["MOTA"] == pytest.approx(1 - 4 / 16)
    assert scores["IDF1"] == pytest.approx(2 * 12 / (16 + 12))
    overlapping = [*gt_rows, row(1, 2003, square(5, 3))]
    with pytest.raises(ValueError, match="overlapping masks"):
        mots_scores(gt_rows, overlapping)
    with pytest.raises(ValueError, match="at least one sequence"):
        mots_benchmark_scores([])
    with pytest.raises(ValueError, match=r"num_frames"):
        mots_scores(gt_rows, gt_rows, num_frames=3)


# ------------------------------------------------------------------------------------------------ tree and reader


@pytest.fixture(scope="module")
def mots_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return videos.write_mots_videos(tmp_path_factory.mktemp("mots") / "videos", n_videos=2, frames=6,
                                    digits_per_video=(2, 3))


def test_mots_tree_matches_the_rendered_videos(mots_root: Path):
    params = json.loads((mots_root / MANIFEST_NAME).read_text())["params"]
    rendered = videos.render_videos(params)
    sequences = read_mots(mots_root)
    assert [s.name for s in sequences] == videos.sequence_names("mots", 2)
    for sequence, video in zip(sequences, rendered, strict=True):
        assert len(sequence.frames) == 6 and sequence.info["imHeight"] == 64
        for obj in sequence.gt:
            assert obj.class_id == 2 and obj.track_id // 1000 == 2 and obj.score == 1.0
            assert np.array_equal(obj.mask(), video.masks[obj.frame - 1] == obj.track_id - 2000)
        visible = sum(int((video.masks[t] == o.object_id).any()) for t in range(6) for o in video.objects)
        assert len(sequence.gt) == visible
        assert sequence.det and all(d.track_id == -1 and 0.3 <= d.score <= 1.0 for d in sequence.det)
    # the same parameters give the same files; write_videos("mots") is the same tree
    again = videos.write_videos("mots", mots_root, n_videos=2, frames=6, digits_per_video=(2, 3))
    assert read_mots(again)[0].det == sequences[0].det


def test_bad_mots_files_name_the_file_and_line(mots_root: Path, tmp_path: Path):
    root = Path(shutil.copytree(mots_root, tmp_path / "copy"))
    gt = root / "train" / "DIGITS-01" / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()

    def broken(line: str) -> str:
        gt.write_text("\n".join([lines[0], line, *lines[2:]]) + "\n")
        with pytest.raises(TrackingDataError) as error:
            read_mots(root)
        return one_line(error)

    frame, track_id, _, _, _, counts = lines[1].split()
    assert broken(f"x {track_id} 2 64 64 {counts}").startswith(f"{gt}:2: expected space-separated frame id class_id")
    assert broken(f"{frame} {track_id} 2 64 64").startswith(f"{gt}:2: expected space-separated")
    assert broken(f"{frame} {track_id} 2 64 64 {counts} 0.5").startswith(f"{gt}:2: expected")  # no score in gt
    assert broken(f"9 {track_id} 2 64 64 {counts}") == f"{gt}:2: frame 9 is outside 1..6"
    small = rle_encode(np.ones((8, 8), bool))
    assert broken(f"{frame} {track_id} 2 64 64 {small}") == \
        f"{gt}:2: bad RLE (the RLE covers 64 pixels, not 64x64 = 4096)"
    assert broken(f"{frame} {track_id} 2 8 8 {small}") == f"{gt}:2: mask size 8x8 differs from the image size 64x64"
    assert broken(f"{frame} {track_id} 2 64 64 {counts}~").startswith(f"{gt}:2: bad RLE (")
    det = read_mots_file(root / "train" / "DIGITS-01" / "det" / "det.txt", scores=True)
    assert det[0].line(with_score=True).endswith(f" {det[0].score:.4f}")


# ------------------------------------------------------------------------------------------------------------- head


def test_rsm_cost_prefers_the_same_cells_and_disjoint_masks_go_to_the_higher_score():
    a, b = torch.eye(4)[:2], torch.eye(4)[2:]
    cost = mots.rsm_cost([a, b], [b, a])
    assert cost[0, 1] == pytest.approx(0.0, abs=1e-5) and cost[1, 0] == pytest.approx(0.0, abs=1e-5)
    assert cost[0, 0] > 0.9 and cost[1, 1] > 0.9
    assert mots.rsm_cost([], [a]).shape == (0, 1)
    masks = np.stack([square(0, 0, 4), square(2, 2, 4)])
    out = mots.disjoint_masks(masks, [0.6, 0.9])
    assert np.array_equal(out[1], masks[1]) and not (out[0] & out[1]).any() and out[0].sum() == 12


def crossing_video(n: int = 8):
    """A red and a blue square crossing each other's path on green (masks in random order), a faint yellow one."""
    rng = np.random.default_rng(1)
    frames, masks, scores, truth = [], [], [], []
    for t in range(n):
        frame = np.empty((H, W, 3), np.uint8)
        frame[:] = (30, 120, 40)
        red, blue = square(2 + 3 * t, 4, 8), square(24 - 3 * t, 16, 8)
        frame[red], frame[blue] = (230, 40, 40), (40, 60, 230)
        objects = [("red", red, 0.9), ("blue", blue, 0.8)]
        if t in (3, 4):
            yellow = square(22, 1, 5)
            frame[yellow] = (230, 220, 30)
            objects.append(("yellow", yellow, 0.3))
        order = rng.permutation(len(objects))
        frames.append(frame)
        masks.append(np.stack([objects[i][1] for i in order]))
        scores.append([objects[i][2] for i in order])
        truth.append([objects[i][0] for i in order])
    return frames, masks, scores, truth


@pytest.mark.parametrize("similarity", ["rsm", "cosine"])
def test_masks_keep_their_ids_and_faint_ones_start_no_track(similarity):
    frames, masks, scores, truth = crossing_video()
    ids = mots.associate_masks(ColourModel(), frames, masks, scores, similarity=similarity)
    seen: dict[str, set[int]] = {}
    for frame_ids, names in zip(ids, truth, strict=True):
        for track_id, name in zip(frame_ids, names, strict=True):
            seen.setdefault(name, set()).add(int(track_id))
    assert seen["red"] != seen["blue"] and len(seen["red"]) == 1 and len(seen["blue"]) == 1
    assert seen["yellow"] == {0} and 0 not in seen["red"] | seen["blue"]


def test_lost_tracks_are_dropped_after_max_lost():
    frames, masks, _, truth = crossing_video()
    red = [(m[[n == "red" for n in names]], [0.9]) for m, names in zip(masks, truth, strict=True)]
    gap = [(m, s) if t not in (2, 3, 4) else (np.zeros((0, H, W), bool), []) for t, (m, s) in enumerate(red)]
    kept = mots.associate_masks(ColourModel(), frames, [m for m, _ in gap], [s for _, s in gap], max_lost=3)
    assert {int(i) for ids in kept for i in ids} == {1}
    dropped = mots.associate_masks(ColourModel(), frames, [m for m, _ in gap], [s for _, s in gap], max_lost=2)
    assert [int(ids[0]) for ids in dropped if len(ids)] == [1, 1, 2, 2, 2]
    assert mots.max_lost_for(10) == 10 and mots.max_lost_for(None) == 30


def test_run_mots_perfect_masks_and_an_oracle_give_a_perfect_tracker(mots_root: Path, tmp_path: Path):
    pytest.importorskip("pycocotools")
    root = Path(shutil.copytree(mots_root, tmp_path / "perfect"))
    for folder in (root / "train").iterdir():
        gt = read_mots_file(folder / "gt" / "gt.txt")
        (folder / "det" / "det.txt").write_text(
            "".join(MotsObject(o.frame, -1, 2, o.height, o.width, o.rle, 0.9).line(with_score=True) + "\n"
                    for o in gt))
    scores = mots.run_mots(OracleModel(root), root, output_dir=tmp_path / "out")
    assert scores["IDF1"] == 1.0 and scores["HOTA"] == pytest.approx(1.0) and scores["MOTA"] == 1.0
    assert scores["IDSW"] == 0 and scores["FN"] == 0 and scores["FP"] == 0
    written = read_mots_file(tmp_path / "out" / "DIGITS-01.txt", num_frames=6, size=(64, 64))
    assert len(written) == len(read_mots(root)[0].gt) and {o.track_id for o in written} >= {2001}
    # the generated (noisy) detections: misses and false masks cost, the keys are there
    noisy = mots.run_mots(OracleModel(mots_root), mots_root)
    assert {"IDF1", "HOTA", "MOTA", "IDSW", "sMOTSA", "DetA", "AssA"} <= set(noisy)
    assert noisy["FN"] > 0 and noisy["FP"] > 0 and 0 < noisy["IDF1"] < 1


def test_run_mots_refuses_a_sequence_without_its_given_masks(mots_root: Path, tmp_path: Path):
    root = Path(shutil.copytree(mots_root, tmp_path / "copy"))
    det = root / "train" / "DIGITS-02" / "det" / "det.txt"
    det.unlink()
    assert read_mots(root)[1].det == []  # the reader alone still reads a tree without given masks
    with pytest.raises(TrackingDataError) as error:
        mots.run_mots(OracleModel(root), root, output_dir=tmp_path / "out")
    assert one_line(error) == (f"{det}: missing file (MOTS tracks the given detections of every sequence; "
                               "an empty file stands for a sequence without any)")
    assert not (tmp_path / "out").exists()  # refused before tracking any sequence


def test_masks_with_the_real_network_shapes():
    from evals.tracking.appearance import AppearanceModel
    from mec.augment import IMAGENET_MEAN, IMAGENET_STD
    from mec.models import build_backbone

    torch.manual_seed(0)
    for cifar_stem, stride in ((True, 4), (False, 8)):
        backbone = build_backbone("resnet18", width=8, cifar_stem=cifar_stem)
        model = AppearanceModel(backbone, IMAGENET_MEAN, IMAGENET_STD)
        assert model.stride == stride
        frames, masks, scores, _ = crossing_video(n=3)
        ids = mots.associate_masks(model, frames, masks, scores)
        assert [len(i) for i in ids] == [len(m) for m in masks] and all((i[np.array(s) > 0.5] > 0).all()
                                                                         for i, s in zip(ids, scores, strict=True))


def test_cli_writes_a_mots_tree(tmp_path: Path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "evals.tracking.videos", "--format", "mots", "--output",
                             str(tmp_path / "mots"), "--n-videos", "1", "--frames", "2"],
                            capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"mots digit videos in {tmp_path / 'mots'}: ")
    assert len(read_mots(tmp_path / "mots")[0].frames) == 2
