"""evals.tracking.unitrack: UniTrack's task scripts on an exported backbone, against a fake UniTrack checkout.

The fake checkout has UniTrack's interface (commit a83e782): `config/imagenet_resnet18_s3_womotion.yaml`, and
`test/test_<task>.py --config X` scripts that read it with ``yaml.load(f)`` (no Loader), check `common.resume`
(VOS and MOT load it with ``torch.load``; the others, to save the seconds of importing torch, check its format) and
print scores in the format of the evaluator the real script runs (pysot, davis2017-evaluation through
``os.system("python ...")``, TrackEval, poseval). The sample outputs copy those formats; the values are made up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from evals.tracking import unitrack
from evals.tracking.unitrack import UniTrackError
from mec.models import build_backbone


def _trackeval_row(*cells: object) -> str:
    # TrackEval's _BaseMetric._row_print: the first column padded to 35, the others to 10.
    return f"{cells[0]!s:<35}" + "".join(f"{cell!s:<10}" for cell in cells[1:])


def _trackeval_tables(hota: list[str], clear: list[str], identity: list[str]) -> str:
    """TrackEval's output as test_mot.py / test_mots.py make it print: config, timing, then one table per metric."""
    lines = ["", "Eval Config:", "USE_PARALLEL         : False", "PRINT_RESULTS        : True", "",
             "Evaluating 1 tracker(s) on 2 sequence(s) for 1 class(es) on MotChallenge2DBox dataset using the "
             "following metrics: HOTA, CLEAR, Identity, Count", "", "", "Evaluating quantitive", "",
             "    MotChallenge2DBox.get_raw_seq_data                                     1.2345 sec",
             "", "All sequences for quantitive finished in 3.21 seconds", ""]
    fields = {"HOTA": ["HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "RHOTA", "HOTA(0)",
                       "LocA(0)", "HOTALocA(0)"],
              "CLEAR": ["MOTA", "MOTP", "MODA", "CLR_Re", "CLR_Pr", "MTR", "PTR", "MLR", "sMOTA", "CLR_TP", "CLR_FN",
                        "CLR_FP", "IDSW", "MT", "PT", "ML", "Frag"],
              "Identity": ["IDF1", "IDR", "IDP", "IDTP", "IDFN", "IDFP"]}
    for family, combined in (("HOTA", hota), ("CLEAR", clear), ("Identity", identity)):
        lines += [_trackeval_row(f"{family}: quantitive-pedestrian", *fields[family]),
                  _trackeval_row("MOT16-02", *(["12.5"] * len(fields[family]))),
                  _trackeval_row("COMBINED", *combined), ""]
    lines += [_trackeval_row("Count: quantitive-pedestrian", "Dets", "GT_Dets", "IDs", "GT_IDs"),
              _trackeval_row("COMBINED", 93594, 110108, 1123, 517)]
    return "\n".join(lines) + "\n"


SAMPLES = {
    # test_sot_siamfc.py's per-video line, then pysot's eval.py: tqdm bars and OPEBenchmark.show_result's table.
    "sot": (
        "Total params: 2.78M\n"
        "Video: Basketball   Time: 3.2s Speed: 226.5fps\n"
        "eval success: 100%|##########| 1/1 [00:01<00:00,  1.02s/it]\n"
        "eval precision: 100%|##########| 1/1 [00:01<00:00,  1.10s/it]\n"
        "-----------------------------------------------------------\n"
        "|   Tracker name   | Success | Norm Precision | Precision |\n"
        "-----------------------------------------------------------\n"
        "| mec_0123456789ab |  0.555  |     0.000      |   0.734   |\n"
        "-----------------------------------------------------------\n"
    ),
    # test_vos.py's progress, then davis2017-evaluation's evaluation_method.py (pandas to_string tables).
    "vos": (
        "******* Vid 0 (69 frames) *******\n"
        "computed features 1.234\n"
        "******* Vid 0 TOOK 12.3 *******\n"
        "Evaluating sequences for the semi-supervised task...\n"
        "Global results saved in results/vos/convert_x/global_results-val.csv\n"
        "Per-sequence results saved in results/vos/convert_x/per-sequence_results-val.csv\n"
        "--------------------------- Global results for val ---------------------------\n"
        " J&F-Mean   J-Mean  J-Recall  J-Decay   F-Mean  F-Recall  F-Decay\n"
        " 0.612346 0.584123  0.671234 0.201235 0.640568  0.753457 0.239876\n"
        "\n"
        "---------- Per sequence results for val ----------\n"
        "      Sequence  J-Mean  F-Mean\n"
        "bike-packing_1  0.6123  0.7012\n"
        "   blackswan_1  0.9345  0.9812\n"
        "\n"
        "Total time:52.3"
    ),
    "mot": _trackeval_tables(
        hota=["56.789", "58.1", "55.6", "63.2", "79.9", "60.1", "80.2", "82.3", "58.4", "70.12", "78.9", "55.3"],
        clear=["74.654", "81.2", "75.3", "80.1", "94.5", "45.1", "40.2", "14.7", "60.1", "88451", "21657", "5143",
               "683", "234", "210", "73", "1520"],
        identity=["71.835", "65.1", "80.2", "72000", "38108", "17594"]),
    "mots": _trackeval_tables(
        hota=["54.25", "60", "49.5", "64.1", "80.2", "52.3", "82.1", "85.1", "55", "66.6", "80.1", "53.4"],
        clear=["-3.5", "79.8", "1.25", "70.2", "90.1", "30.2", "50.1", "19.7", "68.9", "20000", "8000", "2100", "622",
               "60", "100", "40", "800"],
        identity=["67.2", "60.3", "75.9", "19000", "9000", "6000"]),
    # test_posetrack.py's timing, then poseval's evaluate.py --evalPoseTracking (eval_helpers.printTable).
    "posetrack": (
        "Time elapsed: 123.45 seconds, FPS: 20.10\n"
        "Loading data\n"
        "# gt frames  : 57928\n"
        "# pred frames: 57928\n"
        "Evaluation of video-based  multi-person pose tracking\n"
        "Multiple Object Tracking (MOT) metrics:\n"
        "& MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTP & Prec & Rec & IDF1 & IDs  \\\\\n"
        "& Head & Shou & Elb  & Wri  & Hip  & Knee & Ankl & Total& Total& Total& Total& Total& Total\\\\\n"
        "& 70.1 & 72.3 & 60.2 & 50.4 & 61.0 & 55.2 & 48.9 & 63.5 & 85.2 & 88.1 & 74.6 & 73.2 &6760.0 \\\\\n"
    ),
}
EXPECTED = {
    "sot": {"AUC": 0.555, "precision": 0.734},
    "vos": {"JF_mean": 0.612346, "J_mean": 0.584123, "J_recall": 0.671234, "F_mean": 0.640568,
            "F_recall": 0.753457},
    "mot": {"HOTA": 0.56789, "DetA": 0.581, "AssA": 0.556, "LocA": 0.823, "MOTA": 0.74654, "MOTP": 0.812,
            "IDSW": 683.0, "FP": 5143.0, "FN": 21657.0, "Frag": 1520.0, "MT": 234.0, "ML": 73.0, "IDF1": 0.71835,
            "IDP": 0.802, "IDR": 0.651},
    "mots": {"HOTA": 0.5425, "DetA": 0.6, "AssA": 0.495, "LocA": 0.851, "MOTA": -0.035, "MOTP": 0.798,
             "IDSW": 622.0, "FP": 2100.0, "FN": 8000.0, "Frag": 800.0, "MT": 60.0, "ML": 40.0, "IDF1": 0.672,
             "IDP": 0.759, "IDR": 0.603, "sMOTA": 0.689},
    "posetrack": {"MOTA": 0.635, "IDF1": 0.732, "IDSW": 6760.0},
}
SAMPLE_TRACKER = "mec_0123456789ab"  # the SOT table's row; a fake run prints its own exp_name (same length)

FAKE_CONFIG = """\
common:
    exp_name: imagenet_resnet18_s3_womotion
    model_type: imagenet18
    remove_layers: ['layer4']
    im_mean: [0.485, 0.456, 0.406]
    im_std: [0.229, 0.224, 0.225]
    nopadding: False
    resume: None
    down_factor: 8
    infer2D: True
    workers: 4
    gpu_id: 0
    device: cuda

sot:
    dataset: 'OTB2015'
    dataroot: '/home/someone/datasets/GOT/OTB100/'
    epoch_test: False

vos:
    davisroot: '/home/someone/datasets/uvc/DAVIS/'
    split: 'val'
    temperature: 0.05
    topk: 10
    radius: 12
    videoLen: 5
    long_mem: [0]

mot:
    obid: 'FairMOT'
    mot_root: '/home/someone/datasets/MOT/MOT16'
    test_mot16: False
    track_buffer: 30
    img_size: [1088, 608]
    use_kalman: True
    asso_with_motion: False
    motion_lambda: 1

mots:
    obid: 'COSTA'
    mots_root: '/home/someone/datasets/GOT/MOTS'
    test: False
    asso_with_motion: False

posetrack:
    obid: 'lighttrack_MSRA152'
    data_root: '/home/someone/datasets/GOT/Posetrack2018'
    split: 'val'
    asso_with_motion: False
"""

# One script per task, as UniTrack's: argparse, yaml.load without a Loader, the sections copied onto the arguments.
FAKE_SCRIPT = """\
import argparse
import os
import sys
sys.path[0] = os.getcwd()
import yaml

TASK, SAMPLE, SAMPLE_TRACKER = {task!r}, {sample!r}, {tracker!r}

parser = argparse.ArgumentParser()
parser.add_argument("--config", default="", required=True, type=str)
args = parser.parse_args()
with open(args.config) as f:
    common_args = yaml.load(f)
for k, v in common_args["common"].items():
    setattr(args, k, v)
for k, v in common_args[TASK].items():
    setattr(args, k, v)
if os.environ.get("FAKE_UNITRACK_FAIL"):
    raise RuntimeError("CUDA error: no CUDA-capable device is detected")
if os.environ.get("FAKE_UNITRACK_SILENT"):
    sys.exit(0)
if os.environ.get("FAKE_UNITRACK_HANG"):  # an evaluator that never ends, started as the real scripts start theirs
    import subprocess
    evaluator = subprocess.Popen(["sleep", "60"])
    with open(os.environ["FAKE_UNITRACK_HANG"], "w") as f:
        f.write(str(evaluator.pid))
    evaluator.wait()
assert args.model_type == "crw" and args.remove_layers == ["layer4"], (args.model_type, args.remove_layers)
assert os.path.isfile(args.resume), args.resume
if TASK in ("vos", "mot"):  # importing torch takes seconds: two tasks load the weights, the others check the file
    import torch
    state = torch.load(args.resume)["model"]  # make_encoder's crw branch
    print("Total params: %.2fM" % (sum(v.numel() for v in state.values()) / 1e6))
else:
    import zipfile
    assert zipfile.is_zipfile(args.resume), args.resume  # torch.save's format
    print("Total params: 11.18M")
results = {{"sot": "results/sot/SiamFC/", "vos": "results/vos/", "mot": "results/mot/", "mots": "results/mots/",
           "posetrack": "results/pose/"}}[TASK] + args.exp_name
os.makedirs(results)
if TASK == "vos":
    os.system("python {{}}/evaluation_method.py --task semi-supervised --results_path {{}} --set val "
              "--davis_path {{}}".format(os.path.join(args.davisroot, "davis2017-evaluation"), results, args.davisroot))
else:
    print(SAMPLE.replace(SAMPLE_TRACKER, args.exp_name))
"""

FAKE_DAVIS_EVALUATION = """\
import sys
print("evaluator python: " + sys.executable)
print({sample!r})
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backbone = build_backbone("resnet18", width=64, cifar_stem=False, zero_init_residual=False)
    return unitrack.export_backbone(backbone, tmp_path_factory.mktemp("weights") / "unitrack_backbone.pth")


def fake_unitrack(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / unitrack.BASE_CONFIG).write_text(FAKE_CONFIG)
    (root / "test").mkdir()
    for task, script in unitrack.SCRIPTS.items():
        (root / script).write_text(FAKE_SCRIPT.format(task=task, sample=SAMPLES[task], tracker=SAMPLE_TRACKER))
    return root


def fake_data(root: Path, task: str) -> Path:
    """The files each real script reads first under its data root (the rest of a benchmark is not needed)."""
    folders = {"sot": [], "vos": ["ImageSets/2017", "davis2017-evaluation"],
               "mot": ["images/train", "obs/FairMOT"], "mots": ["images/train", "obs/COSTA"],
               "posetrack": ["obs/val/lighttrack_MSRA152", "posetrack_data/annotations/val"]}[task]
    root.mkdir(parents=True)
    for folder in folders:
        (root / folder).mkdir(parents=True)
    if task == "sot":
        (root / "OTB2015.json").write_text("{}")
    if task == "vos":
        (root / "ImageSets/2017/val.txt").write_text("bike-packing\nblackswan\n")
        (root / "davis2017-evaluation/evaluation_method.py").write_text(
            FAKE_DAVIS_EVALUATION.format(sample=SAMPLES["vos"]))
    return root


# --------------------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("task", unitrack.TASKS)
def test_parse_sample_output(task: str) -> None:
    parse = unitrack.PARSERS[task]
    assert parse(SAMPLES[task]) == pytest.approx(EXPECTED[task], rel=1e-12, abs=1e-12)
    assert set(parse(SAMPLES[task])) == set(EXPECTED[task])


def test_parse_sot_picks_the_named_tracker() -> None:
    other = "| imagenet_resnet |  0.611  |     0.000      |   0.802   |\n"
    text = SAMPLES["sot"].replace("| mec_0123456789ab", other + "| mec_0123456789ab")
    assert unitrack.parse_sot_output(text) == {"AUC": 0.611, "precision": 0.802}
    assert unitrack.parse_sot_output(text, tracker=SAMPLE_TRACKER) == EXPECTED["sot"]
    with pytest.raises(UniTrackError, match="row for nobody"):
        unitrack.parse_sot_output(text, source="x.log", tracker="nobody")


def test_parse_vos_precomputed_results() -> None:
    # A rerun of davis2017-evaluation reads its CSV back ("%.3f"), and pandas drops trailing zeros.
    text = ("Using precomputed results...\n--------------------------- Global results for val ---------------------\n"
            " J&F-Mean  J-Mean  J-Recall  J-Decay  F-Mean  F-Recall  F-Decay\n"
            "    0.612   0.584     0.671    0.201   0.641     0.753     0.24\n")
    assert unitrack.parse_vos_output(text) == {"JF_mean": 0.612, "J_mean": 0.584, "J_recall": 0.671,
                                               "F_mean": 0.641, "F_recall": 0.753}


@pytest.mark.parametrize("task", unitrack.TASKS)
def test_output_without_scores_names_the_log(task: str) -> None:
    text = "Total params: 2.78M\nTraceback (most recent call last):\nFileNotFoundError: OTB2015.json\n"
    with pytest.raises(UniTrackError, match=f"no UniTrack {task} scores .* found in /runs/unitrack-{task}.log") as info:
        unitrack.PARSERS[task](text, source=f"/runs/unitrack-{task}.log")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------- export

def _load_like_unitrack(path: Path, arch: str) -> torch.nn.Module:
    """model/model.py make_encoder: the crw branch for a ResNet-18, the self-supervised one for a ResNet-50."""
    net = getattr(torchvision.models, arch)()
    checkpoint = torch.load(path)
    if arch == "resnet18":
        state = {}
        for k, v in checkpoint["model"].items():  # the crw branch's renaming, which torchvision names pass through
            if "conv1.1.weight" in k or "conv2.1.weight" in k:
                state[k.replace(".1.weight", ".weight")] = v
            state[k.replace("encoder.model.", "")] = v
        checkpoint = {k: v for k, v in state.items() if "head" not in k}
    # partial_load: keep the file's keys the model has, then a strict load of the model's own dict.
    model_state = net.state_dict()
    assert set(model_state) - set(checkpoint) == {"fc.weight", "fc.bias"}  # partial_load would keep these random
    model_state.update({k: v for k, v in checkpoint.items() if k in model_state})
    net.load_state_dict(model_state)
    return net


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_export_backbone_loads_as_unitrack_loads_it(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(arch, width=64, cifar_stem=False, zero_init_residual=False)
    with torch.no_grad():
        for buffer in backbone.buffers():  # non-default running statistics, so that they are checked too
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    path = unitrack.export_backbone(backbone, tmp_path / "backbone.pth")
    assert path == tmp_path / "backbone.pth" and [p.name for p in tmp_path.iterdir()] == ["backbone.pth"]
    content = torch.load(path, weights_only=True)
    assert ("model" in content) == (arch == "resnet18")
    net = _load_like_unitrack(path, arch)
    loaded = net.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded[key], value), key
    strict = getattr(torchvision.models, arch)()
    result = strict.load_state_dict(content.get("model", content), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    assert unitrack.weights_arch(path) == arch


@pytest.mark.parametrize("kwargs", [{"width": 16}, {"cifar_stem": True}])
def test_export_refuses_what_torchvision_resnet_cannot_load(tmp_path: Path, kwargs: dict) -> None:
    backbone = build_backbone("resnet18", **{"width": 64, "cifar_stem": False, **kwargs})
    with pytest.raises(UniTrackError, match=r"not a torchvision resnet18 state dict .*conv1\.weight has shape"):
        unitrack.export_backbone(backbone, tmp_path / "backbone.pth")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------- config

def test_write_config_starts_from_the_womotion_config(tmp_path: Path, weights: Path) -> None:
    root = fake_unitrack(tmp_path / "UniTrack")
    data = fake_data(tmp_path / "MOT16", "mot")
    path = unitrack.write_config("mot", root, weights, data, tmp_path / "out", arch="resnet18",
                                 overrides={"mot.track_buffer": 60, "common.workers": 0, "mot.new_key": [1, 2]})
    assert path == tmp_path / "out" / "unitrack-mot.yaml"
    config = yaml.safe_load(path.read_text())
    common = config["common"]
    assert common["model_type"] == "crw" and common["resume"] == str(weights.resolve())
    assert common["remove_layers"] == ["layer4"] and common["im_mean"] == [0.485, 0.456, 0.406]
    assert common["workers"] == 0 and common["exp_name"].startswith("mec_")
    assert config["mot"]["mot_root"] == str(data.resolve()) and config["mot"]["track_buffer"] == 60
    assert config["mot"]["asso_with_motion"] is False and config["mot"]["new_key"] == [1, 2]
    assert config["vos"]["temperature"] == 0.05  # the rest of UniTrack's config is kept
    with pytest.raises(UniTrackError, match="override 'tracker.topk': no section 'tracker'"):
        unitrack.write_config("mot", root, weights, data, tmp_path / "out", arch="resnet18",
                              overrides={"tracker.topk": 5})
    with pytest.raises(UniTrackError, match="hold a resnet18, but arch is resnet50"):
        unitrack.write_config("mot", root, weights, data, tmp_path / "out")


def test_fake_script_needs_the_yaml_shim(tmp_path: Path, weights: Path) -> None:
    if int(yaml.__version__.split(".")[0]) < 6:
        pytest.skip("yaml.load without a Loader works before PyYAML 6")
    root = fake_unitrack(tmp_path / "UniTrack")
    config = unitrack.write_config("vos", root, weights, fake_data(tmp_path / "DAVIS", "vos"), tmp_path / "out",
                                   arch="resnet18")
    direct = subprocess.run([sys.executable, unitrack.SCRIPTS["vos"], "--config", str(config)], cwd=root,
                            capture_output=True, text=True)
    assert direct.returncode != 0 and "Loader" in direct.stderr


# ------------------------------------------------------------------------------------------------------------- run

@pytest.mark.parametrize("task", unitrack.TASKS)
def test_run_returns_the_scores_unitrack_prints(tmp_path: Path, weights: Path, task: str) -> None:
    root = fake_unitrack(tmp_path / "UniTrack")
    data = fake_data(tmp_path / "data", task)
    out = tmp_path / "job" / "unitrack"
    exp_name = yaml.safe_load(unitrack.write_config(task, root, weights, data, out, arch="resnet18")
                              .read_text())["common"]["exp_name"]
    stale = root / unitrack.RESULT_PATHS[task][0].format(exp=exp_name) / "from-an-earlier-run.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    metrics = unitrack.run(task, root, weights, data, out, arch="resnet18")
    assert metrics == pytest.approx(EXPECTED[task], rel=1e-12, abs=1e-12)
    log = (out / f"unitrack-{task}.log").read_text()
    assert "Total params" in log
    assert not stale.exists() and stale.parent.is_dir()  # cleared, then written again by the script
    if task == "vos":  # the evaluator started with os.system("python ...") ran this interpreter
        assert f"evaluator python: {sys.executable}\n" in log
    summary = json.loads((out / f"unitrack-{task}.json").read_text())
    assert summary["metrics"] == metrics and summary["exp_name"] == exp_name


def _one_line_error(info: pytest.ExceptionInfo[UniTrackError]) -> str:
    assert "\n" not in str(info.value)
    return str(info.value)


def test_run_errors_are_one_line_and_name_what_is_wrong(tmp_path: Path, weights: Path) -> None:
    root = fake_unitrack(tmp_path / "UniTrack")
    data = fake_data(tmp_path / "DAVIS", "vos")
    out = tmp_path / "out"
    with pytest.raises(UniTrackError, match=f"UniTrack checkout not found: {tmp_path / 'nowhere'}") as info:
        unitrack.run("vos", tmp_path / "nowhere", weights, data, out, arch="resnet18")
    _one_line_error(info)
    with pytest.raises(UniTrackError, match=r"data root for UniTrack's vos \(vos.davisroot\) is not a folder: .*/no"):
        unitrack.run("vos", root, weights, tmp_path / "no", out, arch="resnet18")
    (data / "davis2017-evaluation/evaluation_method.py").rename(data / "moved.py")
    with pytest.raises(UniTrackError, match="lacks .*davis2017-evaluation/evaluation_method.py"):
        unitrack.run("vos", root, weights, data, out, arch="resnet18")
    with pytest.raises(UniTrackError, match="backbone weights not found"):
        unitrack.run("vos", root, tmp_path / "missing.pth", data, out, arch="resnet18")
    with pytest.raises(UniTrackError, match="unknown UniTrack task 'vis'"):
        unitrack.run("vis", root, weights, data, out, arch="resnet18")
    images = fake_data(tmp_path / "images" / "MOT16", "mot")
    with pytest.raises(UniTrackError, match="contains 'images'"):
        unitrack.run("mot", root, weights, images, out, arch="resnet18")
    (root / unitrack.SCRIPTS["sot"]).unlink()
    with pytest.raises(UniTrackError, match="lacks test/test_sot_siamfc.py"):
        unitrack.run("sot", root, weights, fake_data(tmp_path / "OTB", "sot"), out, arch="resnet18")


def test_run_names_the_log_when_the_script_fails_or_prints_no_scores(tmp_path: Path, weights: Path) -> None:
    root = fake_unitrack(tmp_path / "UniTrack")
    data = fake_data(tmp_path / "MOT16", "mot")
    out = tmp_path / "out"
    log = out / "unitrack-mot.log"
    with pytest.raises(UniTrackError, match=f"test_mot.py exited with status 1 \\(log: {log}\\); last line: "
                                            "RuntimeError: CUDA error: no CUDA-capable device") as info:
        unitrack.run("mot", root, weights, data, out, arch="resnet18", env={"FAKE_UNITRACK_FAIL": "1"})
    _one_line_error(info)
    assert "Traceback" in log.read_text()
    with pytest.raises(UniTrackError, match=f"no UniTrack mot scores .* found in {log}") as info:
        unitrack.run("mot", root, weights, data, out, arch="resnet18", env={"FAKE_UNITRACK_SILENT": "1"})
    _one_line_error(info)


def test_run_stops_the_script_and_its_evaluators_after_the_timeout(tmp_path: Path, weights: Path) -> None:
    root = fake_unitrack(tmp_path / "UniTrack")
    pid_file = tmp_path / "evaluator.pid"
    with pytest.raises(UniTrackError, match=r"test_mot.py did not finish in 2 s and was stopped \(log: .*\.log\)"):
        unitrack.run("mot", root, weights, fake_data(tmp_path / "MOT16", "mot"), tmp_path / "out", arch="resnet18",
                     timeout=2, env={"FAKE_UNITRACK_HANG": str(pid_file)})
    evaluator = int(pid_file.read_text())
    for _ in range(50):  # killed with its process group (a zombie until whoever adopted it reaps it)
        if not _alive(evaluator):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the evaluator {evaluator} outlived the timeout")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc/self/stat").exists():
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped meanwhile
        return False
