"""Known answers for the tracking-transfer metrics (evals/tracking/metrics.py): DAVIS J/F, OTB success/precision,
MOTChallenge IDF1/MOTA/ID switches/HOTA (TrackEval)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.tracking.metrics import (
    boundary_measure,
    davis_scores,
    mot_benchmark_scores,
    mot_scores,
    otb_precision,
    otb_success_auc,
    otb_success_curve,
    region_similarity,
    seg2bmap,
)


def square(top: int, left: int, size: int, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


# --------------------------------------------------------------------------------------------------------------- DAVIS

def test_identical_masks_score_one():
    mask = square(20, 30, 40)
    assert region_similarity(mask, mask) == 1.0
    assert boundary_measure(mask, mask) == 1.0


def test_empty_masks_score_one_as_davis():
    empty = np.zeros((10, 12), bool)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_measure(empty, empty) == 1.0


def test_disjoint_masks():
    a, b = square(0, 0, 20), square(60, 60, 20)  # boundaries 40 px apart, tolerance ceil(0.008 * 141.4) = 2 px
    assert region_similarity(a, b) == 0.0
    assert boundary_measure(a, b) == 0.0
    assert boundary_measure(np.zeros_like(a), b) == 0.0  # no predicted boundary: precision 1, recall 0


def test_half_overlap_region_similarity():
    gt = square(20, 20, 40)
    left_half = gt.copy()
    left_half[:, 40:] = False
    assert region_similarity(left_half, gt) == pytest.approx(0.5)
    shifted = square(20, 40, 40)  # half of each square overlaps the other: 800 / 2400
    assert region_similarity(shifted, gt) == pytest.approx(1 / 3)


def test_boundary_tolerance_is_a_disk_of_the_diagonal():
    gt = square(20, 20, 40)
    assert boundary_measure(square(22, 20, 40), gt) == 1.0  # 2 px shift: within ceil(0.008 * 141.4) = 2 px
    assert boundary_measure(square(22, 20, 40), gt, bound_th=1) < 1.0  # a 1 px tolerance misses the top and bottom


def test_seg2bmap_marks_one_pixel_wide_boundary():
    mask = square(2, 2, 3, shape=(8, 8))
    bmap = seg2bmap(mask)
    # The boundary sits half a pixel towards the origin: on the square's pixels that touch its east/south/south-east
    # outside, and on the outside pixels just west/north of it.
    assert bmap.sum() > 0 and bmap[3, 3] == 0 and bmap[4, 4] == 1 and bmap[1, 1] == 1


def labels(t: int, objects: list[np.ndarray]) -> list[np.ndarray]:
    frame = np.zeros(objects[0].shape, np.uint8)
    for k, mask in enumerate(objects, start=1):
        frame[mask] = k
    return [frame.copy() for _ in range(t)]


def test_davis_scores_perfect_and_first_last_frames_excluded():
    gt = labels(5, [square(10, 10, 30), square(60, 60, 30)])
    assert davis_scores([gt], [gt]) == {"J_mean": 1.0, "J_recall": 1.0, "F_mean": 1.0, "F_recall": 1.0,
                                        "JF_mean": 1.0}
    pred = [frame.copy() for frame in gt]
    pred[0][:] = 0  # the first (given) and last frames are not scored
    pred[-1][:] = 2
    assert davis_scores([pred], [gt])["JF_mean"] == 1.0


def test_davis_scores_average_over_objects():
    gt = labels(4, [square(10, 10, 30), square(60, 60, 30)])
    pred = labels(4, [square(10, 10, 30), np.zeros((100, 100), bool)])  # object 2 never predicted
    scores = davis_scores([pred, gt], [gt, gt])  # objects: 1, 0, 1, 1 over the two sequences
    assert scores["J_mean"] == pytest.approx(0.75) and scores["J_recall"] == pytest.approx(0.75)
    assert scores["F_mean"] == pytest.approx(0.75) and scores["JF_mean"] == pytest.approx(0.75)


def test_davis_scores_rejects_bad_input():
    gt = labels(4, [square(10, 10, 30)])
    with pytest.raises(ValueError, match="expected sequence 0's predicted labels in 0..1"):
        davis_scores([labels(4, [square(10, 10, 30), square(60, 60, 30)])], [gt])
    with pytest.raises(ValueError, match="at least 3 frames"):
        davis_scores([gt[:2]], [gt[:2]])
    with pytest.raises(ValueError, match="as many predicted sequences"):
        davis_scores([gt, gt], [gt])
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        davis_scores([[frame[:50] for frame in gt]], [gt])
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        region_similarity(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


# ----------------------------------------------------------------------------------------------------------------- OTB

def test_otb_perfect_tracker():
    gt = np.array([[10 + t, 20, 30, 40] for t in range(50)], float)
    # success is IoU > threshold, so the threshold 1 is never passed: 20 of the 21 thresholds (pysot, OTB toolkit)
    assert otb_success_auc(gt, gt) == pytest.approx(20 / 21)
    assert otb_precision(gt, gt) == 1.0


def test_otb_constant_shift():
    gt = np.array([[10, 20, 10, 10]] * 8, float)
    # IoU 50 / 150 = 1/3 in every frame: passes thresholds 0, 0.05, ..., 0.30 (7 of 21)
    pred = gt + np.array([5, 0, 0, 0])
    curve = otb_success_curve(pred, gt)
    assert curve.tolist() == [1.0] * 7 + [0.0] * 14
    assert otb_success_auc(pred, gt) == pytest.approx(1 / 3)
    assert otb_precision(pred, gt) == 1.0 and otb_precision(pred, gt, threshold=4) == 0.0
    assert otb_precision(gt + np.array([25, 0, 0, 0]), gt) == 0.0


def test_otb_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected boxes \[T, 4\]"):
        otb_success_auc(np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="as many predicted boxes"):
        otb_precision(np.zeros((3, 4)), np.zeros((4, 4)))


# ----------------------------------------------------------------------------------------------------------------- MOT

@pytest.fixture
def gt_rows() -> np.ndarray:
    # two pedestrians over 4 frames, far apart
    return np.array([[f, 1, 10, 10, 20, 40] for f in range(1, 5)] + [[f, 2, 200, 10, 20, 40] for f in range(1, 5)],
                    float)


def test_mot_perfect_output(gt_rows):
    pytest.importorskip("trackeval")
    scores = mot_scores(gt_rows, gt_rows)
    assert scores["IDF1"] == 1.0 and scores["MOTA"] == 1.0 and scores["HOTA"] == pytest.approx(1.0)
    assert scores["IDSW"] == 0 and scores["FP"] == 0 and scores["FN"] == 0


def test_mot_one_identity_switch(gt_rows):
    pytest.importorskip("trackeval")
    pred = gt_rows.copy()
    pred[(pred[:, 1] == 1) & (pred[:, 0] >= 3), 1] = 7  # track 1 continues under a new id from frame 3
    scores = mot_scores(gt_rows, pred)
    assert scores["IDSW"] == 1
    # IDF1: best one-to-one id matching gives IDTP = 4 + 2 of 8 gt and 8 predicted boxes: 2 * 6 / (8 + 8)
    assert scores["IDF1"] == pytest.approx(0.75)
    assert scores["MOTA"] == pytest.approx(1 - 1 / 8)
    # HOTA: detection perfect (DetA 1); association: the 4 matches of gt 2 score 1, the 4 of gt 1 score 2 / 4
    assert scores["DetA"] == pytest.approx(1.0) and scores["AssA"] == pytest.approx(0.75)
    assert scores["HOTA"] == pytest.approx(math.sqrt(0.75))


def test_mot_missed_and_false_boxes(gt_rows):
    pytest.importorskip("trackeval")
    pred = np.vstack([gt_rows[gt_rows[:, 1] == 1], [[1, 9, 400, 400, 20, 40]]])  # gt 2 missed, one false box
    scores = mot_scores(gt_rows, pred, num_frames=6)
    assert scores["FN"] == 4 and scores["FP"] == 1 and scores["MOTA"] == pytest.approx(1 - 5 / 8)


def test_mot_benchmark_combines_counts_not_scores(gt_rows):
    pytest.importorskip("trackeval")
    switched = gt_rows.copy()
    switched[(switched[:, 1] == 1) & (switched[:, 0] >= 3), 1] = 7
    missed = gt_rows[gt_rows[:, 1] == 1]  # the second sequence: gt 2 never found (4 misses)
    scores = mot_benchmark_scores([(gt_rows, switched, None), (gt_rows, missed, None)])
    assert scores["IDSW"] == 1 and scores["FN"] == 4
    # MOTA over the 16 gt boxes of both: 1 - (1 switch + 4 misses) / 16, not the mean of 7/8 and 1/2
    assert scores["MOTA"] == pytest.approx(1 - 5 / 16)
    # IDF1 from summed IDTP = 6 + 4 over 16 gt and 12 predicted boxes
    assert scores["IDF1"] == pytest.approx(2 * 10 / (16 + 12))
    with pytest.raises(ValueError, match="at least one sequence"):
        mot_benchmark_scores([])


def test_mot_rejects_bad_input(gt_rows):
    with pytest.raises(ValueError, match=r"expected predicted rows \[N, >=6\]"):
        mot_scores(gt_rows, gt_rows[:, :5])
    with pytest.raises(ValueError, match="num_frames"):
        mot_scores(gt_rows, gt_rows, num_frames=2)
    with pytest.raises(ValueError, match="benchmark"):
        mot_scores(gt_rows, gt_rows, benchmark="KITTI")
