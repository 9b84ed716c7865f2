"""PoseTrack (issue 12): the per-joint tracking scores (poseval's definitions, TrackEval's counting) on hand-made
cases with known answers, the PoseTrack18 tree writer and reader, and the pose association head.

Known answers use people with a head box of 30 x 40 pixels: head size 0.6 x 50 = 30 pixels, so joints match
within 15 pixels (PCKh 0.5).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tracking_mots import ColourModel, OracleModel

from evals.tracking import posetrack, videos
from evals.tracking.datasets import (
    POSETRACK_KEYPOINTS,
    PosePerson,
    TrackingDataError,
    read_posetrack,
    read_posetrack_json,
)
from evals.tracking.metrics import POSEVAL_JOINTS, posetrack_scores
from mec.trees import MANIFEST_NAME

torch.set_num_threads(1)

HEAD = np.array([0.0, 0.0, 30.0, 40.0])
SLOT = {name: index for index, name in enumerate(POSETRACK_KEYPOINTS)}


def pose(x: float, y: float, joints: tuple[str, ...] | None = None) -> np.ndarray:
    """Keypoints [17, 3]: the poseval joints (or `joints`) on a 100-pixel grid around (x, y); the rest 0, 0, 0."""
    keypoints = np.zeros((17, 3))
    for index, name in enumerate(POSEVAL_JOINTS):
        if joints is None or name in joints:
            keypoints[SLOT[name]] = (x + 20 * (index % 5), y + 30 * (index // 5), 1)
    return keypoints


def person(track_id: int, keypoints: np.ndarray) -> PosePerson:
    return PosePerson(keypoints, track_id, HEAD.copy())


def video(frames: int = 4, joints: tuple[str, ...] | None = None):
    """Two people 500 pixels apart over `frames` frames: ground truth, and a perfect prediction (other ids)."""
    gt = [[person(1, pose(10 + 5 * t, 10, joints)), person(2, pose(510, 10 + 5 * t, joints))] for t in range(frames)]
    pred = [[person(7, p[0].keypoints.copy()), person(8, p[1].keypoints.copy())] for p in gt]
    return gt, pred


def scores_of(gt, pred, **kwargs):
    return posetrack_scores([list(zip(gt, pred, strict=True))], drop_last_frame=False, **kwargs)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------------- the metric


def test_perfect_tracker():
    scores = scores_of(*video())
    assert scores["IDF1"] == 1.0 and scores["IDF1_combined"] == 1.0 and scores["MOTA"] == 1.0
    assert scores["IDSW"] == 0 and scores["FP"] == 0 and scores["FN"] == 0
    assert scores["MOTP"] == 1.0 and scores["Precision"] == 1.0 and scores["Recall"] == 1.0
    assert all(scores[f"MOTA_{g}"] == 1.0 for g in ("head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"))


def test_one_identity_switch_costs_one_switch_per_joint():
    gt, pred = video(joints=("nose",))  # one annotated joint per person
    for t in (2, 3):
        pred[t][0] = person(9, pred[t][0].keypoints)  # person 1 continues under a new id from frame 3
    scores = scores_of(gt, pred)
    assert scores["IDSW"] == 1 and scores["MOTA"] == pytest.approx(1 - 1 / 8)
    assert scores["IDF1"] == pytest.approx(0.75)  # IDTP 4 + 2 of 8 gt and 8 predicted joints
    gt, pred = video()  # all 15 joints: each switches once
    for t in (2, 3):
        pred[t][0] = person(9, pred[t][0].keypoints)
    assert scores_of(gt, pred)["IDSW"] == 15


def test_missing_and_far_keypoints_are_misses():
    gt, pred = video()
    dropped = pred[1][0].keypoints.copy()
    dropped[SLOT["left_wrist"]] = 0  # one keypoint not predicted
    pred[1][0] = person(7, dropped)
    scores = scores_of(gt, pred)
    assert scores["FN"] == 1 and scores["FP"] == 0
    assert scores["MOTA"] == pytest.approx(1 - (1 / 8) / 15)  # left_wrist MOTA 7/8, the other 14 joints 1
    assert scores["MOTA_wrist"] == pytest.approx(1 - 1 / 16)
    # PCKh: 12 pixels (0.4 head sizes) away still matches; 18 pixels (0.6) is a miss and a false positive
    for shift, fn in ((12.0, 0), (18.0, 1)):
        gt, pred = video()
        moved = pred[0][0].keypoints.copy()
        moved[SLOT["nose"], 0] += shift
        pred[0][0] = person(7, moved)
        scores = scores_of(gt, pred)
        assert scores["FN"] == fn and scores["FP"] == fn
        if not fn:  # MOTP: 1 - the mean matched distance in head sizes, averaged over joints
            assert scores["MOTP"] == pytest.approx(1 - (0.4 / 8) / 15)
    assert scores_of(gt, pred, threshold=0.7)["FN"] == 0  # 0.6 head sizes is within a 0.7 threshold


def test_frames_without_ground_truth_and_the_last_frame_are_not_scored():
    gt, pred = video(frames=5)
    gt[1] = []  # an unlabeled frame: its predictions are not false positives
    pred[4][0] = person(9, pred[4][0].keypoints)  # a switch in the last frame
    assert scores_of(gt, pred)["IDSW"] == 15 and scores_of(gt, pred)["FP"] == 0
    assert posetrack_scores([list(zip(gt, pred, strict=True))])["IDSW"] == 0  # poseval drops the last frame


def test_ignore_regions_remove_points_and_videos_average_idf1():
    gt, pred = video()
    false = [*pred[0], person(5, pose(300, 300))]
    box = np.array([[290.0, 290.0], [400.0, 290.0], [400.0, 500.0], [290.0, 500.0]])
    frames = [(gt[0], false, [box]), *zip(gt[1:], pred[1:], strict=True)]
    assert posetrack_scores([frames], drop_last_frame=False)["FP"] == 0
    assert posetrack_scores([[(gt[0], false), *frames[1:]]], drop_last_frame=False)["FP"] == 15
    # IDF1 as UniTrack's poseval: the mean over videos (1 and 0), the combined one from summed counts
    nothing = [[] for _ in pred]
    scores = posetrack_scores([list(zip(gt, pred, strict=True)), list(zip(gt, nothing, strict=True))],
                              drop_last_frame=False)
    assert scores["IDF1"] == pytest.approx(0.5) and scores["IDF1_combined"] == pytest.approx(2 * 8 / (16 + 8))
    assert scores["FN"] == 15 * 8 and scores["MOTA"] == pytest.approx(0.5)


def test_bad_metric_input():
    gt, pred = video()
    gt[0][0] = PosePerson(gt[0][0].keypoints, 1, None)
    with pytest.raises(ValueError, match="head box"):
        scores_of(gt, pred)
    gt, pred = video()
    pred[0][1] = person(7, pred[0][1].keypoints)
    with pytest.raises(ValueError, match="unique predicted track ids"):
        scores_of(gt, pred)
    with pytest.raises(ValueError, match="at least one frame"):
        posetrack_scores([[([], [])]])


# ------------------------------------------------------------------------------------------------ tree and reader


@pytest.fixture(scope="module")
def posetrack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return videos.write_posetrack_videos(tmp_path_factory.mktemp("posetrack") / "videos", n_videos=2, frames=6,
                                         digits_per_video=(2, 3))


def test_posetrack_tree_matches_the_rendered_videos(posetrack_root: Path):
    manifest = (posetrack_root / MANIFEST_NAME).read_text()
    params = json.loads(manifest)["params"]
    assert params["split"] == "val"  # write_videos("posetrack") defaults to val, where read_posetrack looks
    videos.write_videos("posetrack", posetrack_root, n_videos=2, frames=6, digits_per_video=(2, 3))
    assert (posetrack_root / MANIFEST_NAME).read_text() == manifest
    rendered = videos.render_videos(params)
    read = read_posetrack(posetrack_root)
    assert [v.name for v in read] == videos.sequence_names("posetrack", 2) == ["000001_digits", "000002_digits"]
    for pt_video, video_ in zip(read, rendered, strict=True):
        assert len(pt_video.frames) == 6 and all(f.labeled and f.file.is_file() for f in pt_video.frames)
        assert pt_video.frames[0].image_id == 10_000_000_000 + int(pt_video.name[:6]) * 10_000
        for t, frame in enumerate(pt_video.frames):
            for p in frame.people:
                obj = video_.objects[p.track_id]
                expected = videos.digit_keypoints(obj.boxes[t], video_.masks[t], obj.object_id)
                assert np.array_equal(p.keypoints, expected)
                assert not p.present()[[SLOT["left_ear"], SLOT["right_ear"]]].any()
                assert p.head_box[2] > 0 and p.head_box[3] > 0
        assert pt_video.detections is not None and sum(map(len, pt_video.detections)) > 0
        assert all(p.track_id is None and 0.3 <= p.score <= 1 for people in pt_video.detections for p in people)


def test_digit_keypoints_are_box_points_hidden_by_digits_in_front():
    keypoints = videos.digit_keypoints((10, 20, 31, 41))
    assert tuple(keypoints[SLOT["head_top"]]) == (20.0, 20.0, 1.0)
    assert tuple(keypoints[SLOT["right_ankle"]]) == (15.0, 40.0, 1.0)
    labels = np.zeros((64, 64), np.uint8)
    labels[18:22, 18:22] = 2  # object 2 in front of object 1's head top
    assert not videos.digit_keypoints((10, 20, 31, 41), labels, 1)[SLOT["head_top"]].any()
    assert videos.digit_keypoints((10, 20, 31, 41), labels, 2)[SLOT["head_top"]].all()


def test_bad_posetrack_files_name_the_file(posetrack_root: Path, tmp_path: Path):
    root = Path(shutil.copytree(posetrack_root, tmp_path / "copy"))
    path = root / "annotations" / "val" / "000001_digits.json"
    good = json.loads(path.read_text())

    def broken(edit, target: Path = path) -> str:
        data = json.loads(json.dumps(good if target == path else json.loads(target.read_text())))
        edit(data)
        original = target.read_text()
        target.write_text(json.dumps(data, indent=1))
        try:
            with pytest.raises(TrackingDataError) as error:
                read_posetrack(root)
        finally:
            target.write_text(original)
        return one_line(error)

    assert broken(lambda d: d["annotations"][0].pop("keypoints")) == f"{path}: annotations[0] has no 'keypoints'"
    assert broken(lambda d: d["annotations"][2].pop("bbox_head")) == f"{path}: annotations[2] has no 'bbox_head'"
    assert broken(lambda d: d["annotations"][0].pop("track_id")) == f"{path}: annotations[0] has no 'track_id'"
    assert broken(lambda d: d["images"][1].pop("file_name")) == f"{path}: images[1] has no 'file_name'"
    assert broken(lambda d: d["annotations"][1].update(keypoints=[1, 2])).startswith(
        f"{path}: annotations[1].keypoints must be 51 numbers")
    assert broken(lambda d: d["annotations"][0].update(image_id=5)) == \
        f"{path}: annotations[0] refers to image 5, which 'images' does not list"
    detections = root / "detections" / "val" / "000001_digits.json"
    assert broken(lambda d: d["images"].append({**d["images"][0], "id": 7}), detections) == \
        f"{detections}: image id 7 is not an image of {path}"
    path.write_text(json.dumps(good, indent=1).replace('"images": [', '"images": [,', 1))
    with pytest.raises(TrackingDataError) as error:
        read_posetrack(root)
    assert one_line(error).startswith(f"{path}:2: not JSON (")
    path.write_text(json.dumps(good))
    (root / "images" / "val" / "000001_digits" / "000003.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"000001_digits/000003\.jpg: missing image"):
        read_posetrack(root)
    assert len(read_posetrack(root, check_images=False)) == 2
    with pytest.raises(TrackingDataError, match="missing PoseTrack annotations 'train' folder"):
        read_posetrack(root, "train")


# ------------------------------------------------------------------------------------------------------------- head


def test_skeleton_mask_and_pose_box():
    keypoints = pose(10, 10)
    mask = posetrack.skeleton_mask(keypoints, (200, 200))
    for name in ("left_shoulder", "right_hip", "head_top", "left_ankle"):
        x, y = keypoints[SLOT[name], :2].astype(int)
        assert mask[y, x]
    assert not mask[150:, 150:].any()
    x0, y0, x1, y1 = posetrack.pose_box(keypoints)
    assert (x0, y0, x1, y1) == (10, 10, 90, 70)
    assert posetrack.pose_box(np.zeros((17, 3))) is None
    assert not posetrack.skeleton_mask(np.zeros((17, 3)), (8, 8)).any()
    one = np.zeros((17, 3))
    one[SLOT["nose"]] = (5, 5, 1)
    assert tuple(posetrack.pose_box(one)) == (5, 5, 15, 15)
    assert posetrack.pose_mask(one, (32, 32), "box").sum() == 11 * 11


def test_poses_on_coloured_squares_keep_their_ids():
    rng = np.random.default_rng(2)
    frames, poses, truth = [], [], []
    for t in range(6):
        frame = np.empty((64, 64, 3), np.uint8)
        frame[:] = (30, 120, 40)
        red, blue = (4 + 4 * t, 6), (40 - 4 * t, 34)
        frame[red[1] : red[1] + 24, red[0] : red[0] + 20] = (230, 40, 40)
        frame[blue[1] : blue[1] + 24, blue[0] : blue[0] + 20] = (40, 60, 230)
        people = [("red", videos.digit_keypoints((*red, red[0] + 20, red[1] + 24)), 0.9),
                  ("blue", videos.digit_keypoints((*blue, blue[0] + 20, blue[1] + 24)), 0.8),
                  ("faint", videos.digit_keypoints((44, 2, 60, 20)), 0.2)]
        order = rng.permutation(3)
        frames.append(frame)
        poses.append([PosePerson(people[i][1], score=people[i][2]) for i in order])
        truth.append([people[i][0] for i in order])
    tracked = posetrack.associate_poses(ColourModel(), frames, poses)
    ids: dict[str, set[int]] = {}
    for people, out, names in zip(poses, tracked, truth, strict=True):
        assert len(out) == 2  # the faint pose (score 0.2) is not tracked
        for p in out:
            name = names[next(i for i, q in enumerate(people) if q.keypoints is p.keypoints)]
            ids.setdefault(name, set()).add(p.track_id)
    assert len(ids["red"]) == 1 and len(ids["blue"]) == 1 and ids["red"] != ids["blue"] and len(ids) == 2


def test_run_posetrack_perfect_poses_and_an_oracle_give_a_perfect_tracker(posetrack_root: Path, tmp_path: Path):
    root = Path(shutil.copytree(posetrack_root, tmp_path / "perfect"))
    for path in (root / "annotations" / "val").glob("*.json"):
        data = json.loads(path.read_text())
        for annotation in data["annotations"]:
            del annotation["track_id"]
            annotation["score"] = 0.9
        (root / "detections" / "val" / path.name).write_text(json.dumps(data))
    scores = posetrack.run_posetrack(OracleModel(root), root, output_dir=tmp_path / "out")
    assert scores["IDF1"] == 1.0 and scores["MOTA"] == 1.0 and scores["IDSW"] == 0
    assert scores["FN"] == 0 and scores["FP"] == 0 and scores["MOTP"] == pytest.approx(1.0)
    written = read_posetrack_json(tmp_path / "out" / "000001_digits.json", root, ground_truth=False)
    gt = read_posetrack(root)[0]
    assert [len(f.people) for f in written] == [len(f.people) for f in gt.frames]
    digits = {p.track_id for f in gt.frames for p in f.people}
    assert len({p.track_id for f in written for p in f.people}) == len(digits)  # one track per digit
    # the generated (noisy) poses: misses and false poses cost
    noisy = posetrack.run_posetrack(OracleModel(posetrack_root), posetrack_root)
    assert {"IDF1", "IDSW", "MOTA", "MOTP", "IDF1_combined", "MOTA_head"} <= set(noisy)
    assert noisy["FN"] > 0 and noisy["FP"] > 0 and 0 < noisy["MOTA"] < 1
