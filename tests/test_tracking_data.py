"""The offline tracking data (evals.tracking.videos) and the readers of the tracking layouts
(evals.tracking.datasets).

Videos are written as DAVIS-2017, OTB and MOTChallenge trees and read back; broken copies check that bad input stops
with one line naming the file (and line).
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evals.tracking import datasets, videos
from evals.tracking.datasets import TrackingDataError, load_masks, read_davis, read_mask, read_mot, read_otb
from evals.tracking.videos import write_davis_videos, write_mot_videos, write_otb_videos

N_VIDEOS, FRAMES, CANVAS = 6, 12, 64
SMALL = {"n_videos": N_VIDEOS, "frames": FRAMES}


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_davis_videos(tmp_path_factory.mktemp("davis") / "videos", **SMALL)


@pytest.fixture(scope="module")
def otb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_otb_videos(tmp_path_factory.mktemp("otb") / "videos", **SMALL)


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mot_videos(tmp_path_factory.mktemp("mot") / "videos", **SMALL)


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def _one_line(error: pytest.ExceptionInfo[TrackingDataError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_render_video_moves_and_occludes() -> None:
    """Digits stay inside the canvas, move, keep their size, come from the val digits, and hide each other."""
    images, labels = videos.load_source_digits()
    pool = videos.split_sources(labels, 0.2, 0)["val"]
    occluded = moved = 0
    for index in range(8):
        video = videos.render_video(np.random.default_rng([0, index]), images, labels, pool, frames=FRAMES)
        assert video.frames.shape == (FRAMES, CANVAS, CANVAS, 3) and video.frames.dtype == np.uint8
        assert video.masks.shape == (FRAMES, CANVAS, CANVAS) and video.masks.dtype == np.uint8
        assert 1 <= len(video.objects) <= 4
        assert [obj.object_id for obj in video.objects] == list(range(1, len(video.objects) + 1))
        assert set(np.unique(video.masks)) <= set(range(len(video.objects) + 1))
        for obj in video.objects:
            assert obj.source in pool and obj.label == labels[obj.source]
            x0, y0, x1, y1 = obj.boxes.T
            assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= CANVAS).all() and (y1 <= CANVAS).all()
            assert len({tuple(size) for size in obj.boxes[:, 2:] - obj.boxes[:, :2]}) == 1  # rigid motion
            moved += int(len({tuple(box) for box in obj.boxes}) > 1)
            assert obj.visibility[0] == 1.0  # masks are disjoint in the first frame
            occluded += int((obj.visibility < 1.0).any())
            for t in range(FRAMES):  # the visible mask lies inside the box
                inside = np.zeros((CANVAS, CANVAS), dtype=bool)
                inside[obj.boxes[t, 1] : obj.boxes[t, 3], obj.boxes[t, 0] : obj.boxes[t, 2]] = True
                assert not ((video.masks[t] == obj.object_id) & ~inside).any()
        # Only the front digit is never covered.
        assert (video.objects[-1].visibility == 1.0).all()
    assert moved >= 8 and occluded >= 2


def test_davis_tree(davis_root: Path) -> None:
    sequences = read_davis(davis_root)
    assert [s.name for s in sequences] == videos.sequence_names("davis", N_VIDEOS)
    for sequence in sequences:
        assert [p.name for p in sequence.frames] == [f"{t:05d}.jpg" for t in range(FRAMES)]
        assert [p.stem for p in sequence.masks] == [p.stem for p in sequence.frames]
        assert sequence.frames[0].parent == davis_root / "JPEGImages" / "480p" / sequence.name
        with Image.open(sequence.masks[0]) as image:
            assert image.mode == "P"
            np.testing.assert_array_equal(datasets.read_palette(sequence.masks[0]), datasets.DAVIS_PALETTE)
        assert np.asarray(Image.open(sequence.frames[0])).shape == (CANVAS, CANVAS, 3)
        masks = load_masks(sequence)
        assert masks.shape == (FRAMES, CANVAS, CANVAS)
        ids = np.unique(masks[0])
        assert ids[0] == 0 and list(ids) == list(range(len(ids)))  # 0 and objects 1..K, all in the first frame
    # The DAVIS palette: 1 red, 2 green, 3 olive, 4 blue (VOC's colour map).
    assert datasets.DAVIS_PALETTE[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    # Occlusion shows in the masks: some object loses pixels to a digit in front of it.
    shrinks = [
        (masks == k).sum(axis=(1, 2)).min() < (masks[0] == k).sum()
        for masks in map(load_masks, sequences) for k in range(1, int(masks.max()) + 1)
    ]
    assert any(shrinks)
    manifest = json.loads((davis_root / "manifest.json").read_text())
    assert manifest["counts"]["videos"] == N_VIDEOS and manifest["counts"]["frames"] == N_VIDEOS * FRAMES
    assert (davis_root / "ImageSets/2017/val.txt").read_text().splitlines() == [s.name for s in sequences]


def test_otb_and_mot_trees_agree(otb_root: Path, mot_root: Path, davis_root: Path) -> None:
    """Video i is the same in every format: OTB's target is MOT's (and DAVIS') object 1."""
    otb = read_otb(otb_root)
    mot = read_mot(mot_root, "train")
    davis = read_davis(davis_root)
    assert [s.name for s in otb] == videos.sequence_names("otb", N_VIDEOS)
    assert [s.name for s in mot] == videos.sequence_names("mot", N_VIDEOS)
    for sot, mot_seq, vos in zip(otb, mot, davis, strict=True):
        assert [p.name for p in sot.frames] == [f"{t:04d}.jpg" for t in range(1, FRAMES + 1)]
        assert sot.boxes.shape == (FRAMES, 4)
        x, y, w, h = sot.boxes.T
        assert (x >= 1).all() and (y >= 1).all() and (w > 0).all() and (h > 0).all()
        assert (x - 1 + w <= CANVAS).all() and (y - 1 + h <= CANVAS).all()
        assert filecmp.cmp(sot.frames[0], mot_seq.frames[0], shallow=False)
        assert filecmp.cmp(sot.frames[-1], vos.frames[-1], shallow=False)

        assert mot_seq.info == {"name": mot_seq.name, "imDir": "img1", "frameRate": 10, "seqLength": FRAMES,
                                "imWidth": CANVAS, "imHeight": CANVAS, "imExt": ".jpg"}
        assert [p.name for p in mot_seq.frames] == [f"{t:06d}.jpg" for t in range(1, FRAMES + 1)]
        gt = mot_seq.gt
        assert gt.shape[1] == 9 and (gt[:, 6] == 1).all() and (gt[:, 7] == 1).all()
        ids = np.unique(gt[:, 1]).astype(int)
        assert list(ids) == list(range(1, len(ids) + 1)) and len(gt) == FRAMES * len(ids)
        first = gt[gt[:, 1] == 1]
        np.testing.assert_array_equal(first[:, 0], np.arange(1, FRAMES + 1))
        np.testing.assert_array_equal(first[:, 2:6], sot.boxes)
        assert ((gt[:, 8] >= 0) & (gt[:, 8] <= 1)).all()
        det = mot_seq.det
        assert det.shape[1] == 10 and (det[:, 1] == -1).all() and (det[:, 7:] == -1).all()
        assert ((det[:, 0] >= 1) & (det[:, 0] <= FRAMES)).all()
        assert (det[:, 2] >= 1).all() and (det[:, 2] - 1 + det[:, 4] <= CANVAS + 1e-6).all()
    all_gt = np.concatenate([s.gt for s in mot])
    all_det = np.concatenate([s.det for s in mot])
    assert (all_gt[:, 8] < 1).any()  # occlusion
    # Detections: about one per visible box, a few missed, a few false positives.
    assert 0.7 * len(all_gt) < len(all_det) < 1.1 * len(all_gt)
    matched = 0
    for seq in mot:
        for row in seq.det:
            boxes = seq.gt[seq.gt[:, 0] == row[0], 2:6]
            matched += int((np.abs(boxes - row[2:6]).max(axis=1) < 6).any())
    assert 0.8 * len(all_det) < matched < len(all_det)


def test_writes_are_deterministic_and_manifest_guards(tmp_path: Path, otb_root: Path, mot_root: Path) -> None:
    again = write_mot_videos(tmp_path / "mot", **SMALL)
    comparison = filecmp.dircmp(mot_root, again)
    files = [p.relative_to(mot_root) for p in mot_root.rglob("*") if p.is_file()]
    _, mismatch, errors = filecmp.cmpfiles(mot_root, again, [str(p) for p in files], shallow=False)
    assert comparison.left_only == comparison.right_only == [] and mismatch == errors == []
    assert len(files) == 1 + N_VIDEOS * (FRAMES + 3)

    # The same parameters: nothing is rewritten. Other parameters replace the tree.
    stamp = (again / "manifest.json").stat().st_mtime_ns
    marker = again / "train" / "DIGITS-01" / "img1" / "000001.jpg"
    inode = marker.stat().st_ino
    assert write_mot_videos(again, **SMALL) == again
    assert (again / "manifest.json").stat().st_mtime_ns == stamp and marker.stat().st_ino == inode
    write_mot_videos(again, n_videos=2, frames=4, split="val")
    assert sorted(p.name for p in again.iterdir()) == ["manifest.json", "val"]
    assert len(read_mot(again, "val")) == 2 and len(read_mot(again, "val")[0].frames) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or retired folders left

    # A folder this module did not write is never touched; a style knob that does not exist is refused.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no manifest.json"):
        write_otb_videos(foreign, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match=r"unknown digit render parameters \['colour'\]"):
        write_otb_videos(tmp_path / "x", colour=1)
    with pytest.raises(ValueError, match="format must be one of"):
        videos.write_videos("voc", tmp_path / "x")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert videos.main(["--format", "otb", "--output", str(tmp_path / "otb"), "--n-videos", "2", "--frames", "3",
                        "--canvas", "32", "--seed", "1"]) == 0
    assert "otb digit videos in" in capsys.readouterr().out
    sequences = read_otb(tmp_path / "otb")
    assert len(sequences) == 2 and sequences[0].boxes.shape == (3, 4)
    assert np.asarray(Image.open(sequences[0].frames[0])).shape == (32, 32, 3)
    assert videos.main(["--format", "davis", "--output", str(tmp_path / "x"), "--frames", "1"]) == 2
    assert "frames must be >= 2" in capsys.readouterr().err


def test_bad_davis(davis_root: Path, tmp_path: Path) -> None:
    root = _copy(davis_root, tmp_path)
    sequence = read_davis(root)[1]
    # A mask whose palette is not the first frame's.
    odd = Image.open(sequence.masks[3])
    palette = datasets.DAVIS_PALETTE.copy()
    palette[[1, 2]] = palette[[2, 1]]
    odd.putpalette(palette.tobytes())
    odd.save(sequence.masks[3])
    with pytest.raises(TrackingDataError) as error:
        load_masks(sequence)
    assert _one_line(error) == f"{sequence.masks[3]}: its palette does not match the first frame's mask palette"
    assert read_mask(sequence.masks[3]).shape == (CANVAS, CANVAS)  # without a palette to match, it reads
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(sequence.masks[4])
    with pytest.raises(TrackingDataError, match=r"00004\.png: expected an indexed \(palette\) PNG"):
        read_mask(sequence.masks[4])

    sequence.frames[5].unlink()
    with pytest.raises(TrackingDataError) as error:
        read_davis(root)
    assert _one_line(error).startswith(f"{sequence.frames[5]}: missing frame")
    shutil.rmtree(root / "JPEGImages" / "480p" / sequence.name)
    with pytest.raises(TrackingDataError) as error:
        read_davis(root)
    assert _one_line(error) == f"{root / 'JPEGImages' / '480p' / sequence.name}: missing frame folder"
    with pytest.raises(TrackingDataError, match=r"test-dev\.txt: missing sequence list for split 'test-dev'"):
        read_davis(root, "test-dev")


def test_bad_otb(otb_root: Path, tmp_path: Path) -> None:
    root = _copy(otb_root, tmp_path)
    groundtruth = root / "Digits002" / "groundtruth_rect.txt"
    lines = groundtruth.read_text().splitlines()
    groundtruth.write_text("\n".join([*lines[:2], "abc", *lines[3:]]) + "\n")
    with pytest.raises(TrackingDataError) as error:
        read_otb(root)
    assert _one_line(error) == f"{groundtruth}:3: expected 4 comma-separated numbers x,y,w,h, got 'abc'"
    groundtruth.write_text("\n".join([*lines[:2], "1,2,3", *lines[3:]]) + "\n")
    with pytest.raises(TrackingDataError, match=r"Digits002/groundtruth_rect.txt:3: .* got '1,2,3'"):
        read_otb(root, ["Digits002"])
    # Tabs and spaces separate numbers in some OTB files; one box fewer than frames is refused.
    groundtruth.write_text("".join(line.replace(",", "\t") + "\n" for line in lines[:-1]))
    with pytest.raises(TrackingDataError) as error:
        read_otb(root, ["Digits002"])
    assert _one_line(error) == f"{groundtruth}: {FRAMES - 1} boxes for {FRAMES} frames in {root / 'Digits002/img'}"
    first, last = read_otb(root, ["Digits002"], frame_ranges={"Digits002": (2, FRAMES)})[0].frames[::FRAMES - 2]
    assert (first.name, last.name) == ("0002.jpg", f"{FRAMES:04d}.jpg")

    # A second target of a sequence ("<Seq>-<N>"), a missing sequence, a missing image.
    shutil.copy(root / "Digits001" / "groundtruth_rect.txt", root / "Digits003" / "groundtruth_rect.2.txt")
    (root / "Digits003" / "groundtruth_rect.txt").rename(root / "Digits003" / "groundtruth_rect.1.txt")
    names = [s.name for s in read_otb(root, frame_ranges={"Digits002": (2, FRAMES)})]
    assert names[:4] == ["Digits001", "Digits002", "Digits003-1", "Digits003-2"]
    with pytest.raises(TrackingDataError) as error:
        read_otb(root, ["Nope"])
    assert _one_line(error) == f"{root / 'Nope'}: missing sequence folder"
    (root / "Digits001" / "img" / "0004.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"Digits001/img/0004\.jpg: missing frame"):
        read_otb(root, ["Digits001"])


def test_bad_mot(mot_root: Path, tmp_path: Path) -> None:
    root = _copy(mot_root, tmp_path)
    folder = root / "train" / "DIGITS-02"
    gt = folder / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join([lines[0], lines[1].replace(",1,1,", ",x,1,"), *lines[2:]]) + "\n")
    with pytest.raises(TrackingDataError) as error:
        read_mot(root)
    assert _one_line(error).startswith(f"{gt}:2: expected comma-separated numbers frame,id,x,y,w,h")
    gt.write_text("\n".join([lines[0], f"{FRAMES + 1}" + lines[1][lines[1].index(","):], *lines[2:]]) + "\n")
    with pytest.raises(TrackingDataError) as error:
        read_mot(root)
    assert _one_line(error) == f"{gt}:2: frame {FRAMES + 1} is outside 1..{FRAMES}"
    gt.unlink()
    assert read_mot(root)[1].gt.shape == (0, 9)  # no ground truth, as in a test split
    det = folder / "det" / "det.txt"
    det.write_text("")
    assert read_mot(root, require_det=True)[1].det.shape == (0, 7)  # an empty file: a sequence without detections
    det.unlink()
    assert read_mot(root)[1].det.shape == (0, 7)
    with pytest.raises(TrackingDataError) as error:
        read_mot(root, require_det=True)
    assert _one_line(error).startswith(f"{det}: missing file (MOT tracks the given detections of every sequence")

    (folder / "img1" / f"{FRAMES:06d}.jpg").unlink()
    with pytest.raises(TrackingDataError) as error:
        read_mot(root)
    assert _one_line(error) == (f"{folder / 'seqinfo.ini'}: seqLength={FRAMES} but {folder / 'img1'} has "
                                f"{FRAMES - 1} frames")
    (folder / "img1" / "000003.jpg").unlink()
    with pytest.raises(TrackingDataError, match=r"img1/000003\.jpg: missing frame"):
        read_mot(root)
    shutil.rmtree(folder / "img1")
    with pytest.raises(TrackingDataError) as error:
        read_mot(root)
    assert _one_line(error) == f"{folder / 'img1'}: missing image folder"
    (folder / "seqinfo.ini").write_text("name=x\n")
    with pytest.raises(TrackingDataError, match=r"seqinfo\.ini: not an ini file"):
        read_mot(root)
    with pytest.raises(TrackingDataError) as error:
        read_mot(root, "test")
    assert _one_line(error) == f"{root / 'test'}: missing MOT split 'test' folder"
