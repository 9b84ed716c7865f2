"""Detection transfer (evals.detection): weight conversion, the detectron2 model, the recipes, the trainer.

Runs on digit scenes from `evals.detection.scenes` with the offline default's width-8 CIFAR ResNet-18, RPN / ROI
samples of 32 and a handful of iterations; one torch thread (these tensors are tiny: on a loaded 2-core machine
two threads made a step 10-30x slower).
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from mlflow.tracking import MlflowClient

from evals import run_protocol
from evals.detection import WEIGHTS_NAME, convert_once, scene_parameters
from evals.detection import evaluate as detection_evaluate
from evals.detection.convert import (
    ConversionError,
    backbone_metadata,
    convert_backbone,
    convert_state_dict,
    read_converted,
)
from evals.detection.datasets import DatasetError
from evals.detection.modeling import DetectionModelError, missing_pretrained_keys
from evals.detection.recipes import RECIPES, RecipeError, build_cfg, pixel_statistics
from evals.detection.scenes import write_coco_scenes, write_voc_scenes
from evals.detection.train import (
    AtomicDetectionCheckpointer,
    DetectionTrainer,
    RequireReadableImages,
    SkipUnreadableImages,
    check_pretrained_load,
)
from evals.job import EvalJob
from mec.augment import DIGITS_MEAN, IMAGENET_MEAN, IMAGENET_STD
from mec.checkpoint import export_backbone
from mec.config import build_config, load_config
from mec.models import build_backbone
from mec.tracking import RunLogger

DIGITS = {"arch": "resnet18", "width": 8, "cifar_stem": True}
R50 = {"arch": "resnet50", "width": 64, "cifar_stem": False}
SMALL = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE 32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32", "SOLVER.IMS_PER_BATCH 4",
         "TEST.PRECISE_BN.NUM_ITER 2", "SOLVER.WARMUP_ITERS 2", "SOLVER.BASE_LR 0.01"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(path: Path, meta: dict, seed: int = 0, drop: str | None = None, extra: dict | None = None) -> Path:
    torch.manual_seed(seed)
    net = build_backbone(meta["arch"], width=meta["width"], cifar_stem=meta["cifar_stem"], zero_init_residual=False)
    for module in net.modules():  # statistics that differ from the defaults, so that a lost buffer shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    state = {k: v for k, v in net.state_dict().items() if drop is None or not k.startswith(drop)}
    return export_backbone(state | (extra or {}), path, dict(meta))


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return write_voc_scenes(tmp_path_factory.mktemp("scenes") / "voc", n_trainval=12, n_test=6)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_coco_scenes(tmp_path_factory.mktemp("scenes") / "coco", n_train=12, n_val=6)


def _mec_config(model: dict) -> dict:
    return build_config({"name": "digits-like", "data": {"name": "digits", "augment": "digits", "image_size": 16},
                         "model": model}).model_dump(mode="json")


def _job(tmp_path: Path, backbone: Path, model: dict = DIGITS, **options) -> EvalJob:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "detection"
    run = RunLogger.open(experiment="evals", run_name="detection", journal=out / "metrics.jsonl", tracking_uri=uri)
    return EvalJob(protocol="detection", backbone=str(backbone), config=_mec_config(model), output_dir=str(out),
                   feature_cache=str(tmp_path / "features"), options=options, run_id=run.run_id, tracking_uri=uri,
                   experiment="evals")


# ------------------------------------------------------------------------------------------------ conversion


@pytest.mark.parametrize("meta", [DIGITS, R50], ids=["r18_w8_cifar", "r50"])
def test_conversion_maps_every_weight_and_buffer(tmp_path, meta):
    source = _export(tmp_path / "b.pt", meta)
    record = convert_backbone(source, tmp_path / "b.pkl")
    payload = read_converted(tmp_path / "b.pkl")
    assert payload["__author__"] == "mec-pipeline" and payload["matching_heuristics"] is True
    assert record["arch"] == meta["arch"] and len(record["sha256"]) == 64
    state = torch.load(source, weights_only=True)["state_dict"]
    model = payload["model"]
    assert len(model) == len(state) == record["keys"]  # nothing dropped, nothing invented
    assert all(isinstance(v, np.ndarray) for v in model.values())
    assert np.array_equal(model["stem.conv1.weight"], state["conv1.weight"].numpy())
    assert np.array_equal(model["stem.conv1.norm.running_var"], state["bn1.running_var"].numpy())
    assert np.array_equal(model["res5.1.conv2.norm.running_mean"], state["layer4.1.bn2.running_mean"].numpy())
    assert np.array_equal(model["res3.0.shortcut.norm.bias"], state["layer2.0.downsample.1.bias"].numpy())
    assert model["res2.0.conv1.norm.num_batches_tracked"].shape == ()
    assert not any(k.startswith(("layer", "bn", "fc", "conv1")) for k in model)


def test_a_key_that_maps_nowhere_is_an_error():
    with pytest.raises(ConversionError, match=r"mine: 2 keys map to no detectron2 weight: layer1\.0\.se\.weight"):
        convert_state_dict({"conv1.weight": torch.zeros(1), "layer1.0.se.weight": torch.zeros(1),
                            "layer5.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, "mine")


def test_partial_files_and_other_architectures_fail_in_one_line_naming_the_file(tmp_path):
    partial = _export(tmp_path / "partial.pt", DIGITS, drop="layer4.")
    with pytest.raises(ConversionError, match=r"partial\.pt is not a complete resnet18 .*missing .*layer4\.") as info:
        convert_backbone(partial, tmp_path / "p.pkl")
    assert "\n" not in str(info.value) and not (tmp_path / "p.pkl").exists()
    # A ResNet-18 file whose metadata says ResNet-50: the strict load finds no bottleneck weights.
    liar = _export(tmp_path / "liar.pt", DIGITS)
    with pytest.raises(ConversionError, match=r"liar\.pt is not a complete resnet50 .*missing .*conv3"):
        convert_backbone(liar, tmp_path / "l.pkl", {"arch": "resnet50", "width": 8, "cifar_stem": True})
    # Weights that are not part of the network would be dropped silently: refused.
    stray = _export(tmp_path / "stray.pt", DIGITS, extra={"layer1.0.attention.weight": torch.zeros(2)})
    with pytest.raises(ConversionError, match=r"stray\.pt: 1 weights are not part of .*layer1\.0\.attention"):
        convert_backbone(stray, tmp_path / "s.pkl")
    # The file's metadata and the run's config disagree.
    with pytest.raises(ConversionError, match=r"metadata says width=8 but the run's config says width=16"):
        backbone_metadata(liar, {"arch": "resnet18", "width": 16})


def test_conversion_is_reused_for_the_same_backbone_only(tmp_path):
    first = _export(tmp_path / "a.pt", DIGITS)
    out = tmp_path / WEIGHTS_NAME
    assert convert_once(first, out, DIGITS)["reused"] is False
    assert convert_once(first, out, DIGITS)["reused"] is True
    second = _export(tmp_path / "a.pt", DIGITS, seed=1)  # same path, other weights
    assert convert_once(second, out, DIGITS)["reused"] is False
    assert read_converted(out)["mec_backbone"]["sha256"] == convert_once(second, out, DIGITS)["sha256"]


# ---------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("meta", [DIGITS, R50], ids=["r18_w8_cifar", "r50"])
def test_the_detector_loads_every_backbone_weight_and_computes_the_same_features(tmp_path, meta):
    source = _export(tmp_path / "b.pt", meta)
    convert_backbone(source, tmp_path / "b.pkl")
    recipe = "digits_voc" if meta["cifar_stem"] else "voc07"
    cfg = build_cfg(recipe, meta, tmp_path / "b.pkl", tmp_path / "out", root=tmp_path, register=False,
                    overrides=["MODEL.DEVICE cpu"])
    model = build_model(cfg)
    checkpointer = AtomicDetectionCheckpointer(model)
    checkpointer.load(str(tmp_path / "b.pkl"))
    check_pretrained_load(checkpointer, str(tmp_path / "b.pkl"))  # raises on any missing backbone/res5 weight
    assert not missing_pretrained_keys(model, checkpointer.last_incompatible.missing_keys)
    assert not checkpointer.last_incompatible.incorrect_shapes
    reference = build_backbone(meta["arch"], width=meta["width"], cifar_stem=meta["cifar_stem"])
    reference.load_state_dict(torch.load(source, weights_only=True)["state_dict"])
    model.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        res4 = model.backbone(x)["res4"]
        r = reference
        layer3 = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))))
        res5 = model.roi_heads.res5[:-1](res4)  # res5 without the extra norm
        layer4 = r.layer4(layer3)
    torch.testing.assert_close(res4, layer3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res5, layer4, rtol=1e-5, atol=1e-5)
    assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
    assert isinstance(model.roi_heads.res5.norm, torch.nn.BatchNorm2d)


def test_a_weight_the_detector_did_not_get_stops_the_run(tmp_path):
    convert_backbone(_export(tmp_path / "b.pt", DIGITS), tmp_path / "b.pkl")
    payload = read_converted(tmp_path / "b.pkl")
    del payload["model"]["res5.1.conv2.weight"]
    payload["model"]["res4.0.conv1.weight"] = payload["model"]["res4.0.conv1.weight"][:, :3]  # wrong shape
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(payload))
    cfg = build_cfg("digits_voc", DIGITS, tmp_path / "cut.pkl", tmp_path / "out", root=tmp_path, register=False,
                    overrides=["MODEL.DEVICE cpu"])
    checkpointer = AtomicDetectionCheckpointer(build_model(cfg))
    checkpointer.load(str(tmp_path / "cut.pkl"))
    with pytest.raises(DetectionModelError,
                       match=r"cut\.pkl: 2 backbone/res5 weights .*backbone\.res4\.0\.conv1\.weight, "
                             r"roi_heads\.res5\.1\.conv2\.weight"):
        check_pretrained_load(checkpointer, str(tmp_path / "cut.pkl"))


# -------------------------------------------------------------------------------------------------- recipes


def test_the_paper_recipes_resolve_to_mocos_settings(tmp_path):
    voc0712 = build_cfg("voc0712", R50, "w.pkl", tmp_path, root=tmp_path, register=False)
    assert voc0712.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and voc0712.MODEL.RESNETS.NORM == "naiveSyncBN"
    assert voc0712.MODEL.BACKBONE.FREEZE_AT == 0 and voc0712.TEST.PRECISE_BN.ENABLED
    assert voc0712.INPUT.FORMAT == "RGB" and not voc0712.MODEL.RESNETS.STRIDE_IN_1X1
    assert voc0712.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] == [round(m * 255, 6) for m in IMAGENET_MEAN]
    assert voc0712.MODEL.PIXEL_STD == [58.395, 57.12, 57.375] == [round(s * 255, 6) for s in IMAGENET_STD]
    assert voc0712.INPUT.MIN_SIZE_TRAIN == tuple(range(480, 801, 32)) and voc0712.INPUT.MIN_SIZE_TEST == 800
    assert (voc0712.SOLVER.MAX_ITER, voc0712.SOLVER.STEPS, voc0712.SOLVER.WARMUP_ITERS) == (24000, (18000, 22000), 100)
    assert (voc0712.SOLVER.IMS_PER_BATCH, voc0712.SOLVER.BASE_LR) == (16, 0.02)
    assert voc0712.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert voc0712.DATASETS.TEST == ("voc_2007_test",) and voc0712.MODEL.ROI_HEADS.NUM_CLASSES == 20
    voc07 = build_cfg("voc07", R50, "w.pkl", tmp_path, root=tmp_path, register=False)
    assert voc07.SOLVER.MAX_ITER == round(24000 * 5011 / 16551)
    assert voc07.SOLVER.STEPS == tuple(round(s * 5011 / 16551) for s in (18000, 22000))
    assert voc07.DATASETS.TRAIN == ("voc_2007_trainval",)
    coco = build_cfg("coco", R50, "w.pkl", tmp_path, root=tmp_path, register=False, lr=0.03, seed=4,
                     overrides=["SOLVER.CHECKPOINT_PERIOD 7"])
    assert coco.MODEL.MASK_ON and (coco.SOLVER.MAX_ITER, coco.SOLVER.STEPS) == (90000, (60000, 80000))
    assert coco.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800) and coco.SOLVER.BASE_LR == 0.03
    assert coco.SEED == 4 and coco.SOLVER.CHECKPOINT_PERIOD == 7
    digits = build_cfg("digits_voc", DIGITS, "w.pkl", tmp_path, root=tmp_path, register=False, max_iter_scale=0.5)
    assert digits.MODEL.PIXEL_MEAN == pixel_statistics("digits")[0] == [m * 255 for m in DIGITS_MEAN]
    assert digits.SOLVER.MAX_ITER == 300 and set(RECIPES) == {"voc0712", "voc07", "coco", "digits_voc", "digits_coco"}
    assert (digits.MODEL.RESNETS.DEPTH, digits.MODEL.RESNETS.RES2_OUT_CHANNELS, digits.MODEL.ROI_HEADS.NUM_CLASSES) \
        == (18, 8, 10)


def test_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown detection recipe 'voc2009'; known: coco, digits_coco"):
        build_cfg("voc2009", R50, "w.pkl", tmp_path, root=tmp_path)
    with pytest.raises(RecipeError, match=r"does not fit detection recipe voc0712: arch='resnet18' \(expected "
                                          r"'resnet50'\), cifar_stem=True \(expected False\)"):
        build_cfg("voc0712", DIGITS, "w.pkl", tmp_path, root=tmp_path, register=False)
    with pytest.raises(RecipeError, match=r"SOLVER\.NO_SUCH_KEY"):
        build_cfg("voc07", R50, "w.pkl", tmp_path, root=tmp_path, register=False, overrides=["SOLVER.NO_SUCH_KEY 1"])
    with pytest.raises(RecipeError, match="MODEL.MEC_BACKBONE.WIDTH is set by the recipe"):
        build_cfg("voc07", R50, "w.pkl", tmp_path, root=tmp_path, register=False,
                  overrides=["MODEL.MEC_BACKBONE.WIDTH 32"])
    with pytest.raises(RecipeError, match=r"not a 'KEY VALUE' string"):
        build_cfg("voc07", R50, "w.pkl", tmp_path, root=tmp_path, register=False, overrides=["SOLVER.MAX_ITER"])


def test_voc_recipes_register_the_datasets_layout_and_name_a_missing_year(tmp_path, voc):
    (tmp_path / "VOC2007").symlink_to(voc)
    with pytest.raises(RecipeError, match=r"VOC2012: no such folder.*the root should hold detectron2's datasets/"):
        build_cfg("voc0712", R50, "w.pkl", tmp_path / "out", root=tmp_path)
    (tmp_path / "VOC2012").symlink_to(voc)
    from evals.detection import recipes
    from evals.detection.scenes import DIGIT_CLASSES

    real = recipes._class_names  # the scenes hold digits, not VOC's classes: registration only checks the layout
    try:
        recipes._class_names = lambda recipe: tuple(DIGIT_CLASSES)
        cfg = build_cfg("voc0712", R50, "w.pkl", tmp_path / "out", root=tmp_path)
    finally:
        recipes._class_names = real
    from detectron2.data import MetadataCatalog

    assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert MetadataCatalog.get("voc_2012_trainval").dirname == str((tmp_path / "VOC2012").absolute())


def test_digits_recipes_render_scenes_in_the_pretraining_digits_style(tmp_path):
    config = load_config("digits").model_dump(mode="json")
    job = EvalJob(protocol="detection", backbone="b.pt", config=config, output_dir=str(tmp_path), feature_cache="",
                  options={"recipe": "digits_voc", "scenes": {"n_test": 50}})
    params = scene_parameters(job)
    digits = config["data"]["digits"]
    assert params == {"n_train": 400, "n_test": 50, "canvas": 64, "palette_size": 1, "texture_strength": 0.0,
                      "max_rotation_deg": digits["options"]["max_rotation_deg"],
                      "val_fraction": digits["val_fraction"], "seed": digits["seed"]}  # not its scale_range


# -------------------------------------------------------------------------------------------------- training


class _Preempted(Exception):
    pass


class _PreemptAt(HookBase):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter + 1 == self.iteration:
            raise _Preempted(f"preempted after iteration {self.iteration}")


class _Threads(HookBase):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def after_step(self) -> None:
        self.seen.append(torch.get_num_threads())


@pytest.mark.slow
def test_digits_voc_trains_logs_to_mlflow_and_resumes_after_a_preemption(tmp_path, voc, monkeypatch):
    backbone = _export(tmp_path / "backbone.pt", DIGITS)
    job = _job(tmp_path, backbone, recipe="digits_voc", root=str(voc), max_iter=4, log_period=1,
               overrides=[*SMALL, "SOLVER.CHECKPOINT_PERIOD 2"])
    real_hooks = DetectionTrainer.build_hooks
    monkeypatch.setattr(DetectionTrainer, "build_hooks", lambda self: [*real_hooks(self), _PreemptAt(3)])
    with pytest.raises(_Preempted):
        run_protocol(job)
    client = MlflowClient(job.tracking_uri)
    assert client.get_run(job.run_id).info.status == "FAILED"
    out = Path(job.output_dir) / "detectron2"
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"  # iterations 1-2 are saved
    monkeypatch.setattr(DetectionTrainer, "build_hooks", real_hooks)

    torch.set_num_threads(2)  # the process' own setting (the fixture restores the session's after the test)
    seen = []
    monkeypatch.setattr(DetectionTrainer, "build_hooks", lambda self: [*real_hooks(self), _Threads(seen)])
    metrics = run_protocol(job)  # the rerun after the preemption
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2  # digits: 1 CPU thread, then restored
    monkeypatch.setattr(DetectionTrainer, "build_hooks", real_hooks)
    assert set(metrics) == {"detection/AP", "detection/AP50", "detection/AP75"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    run = client.get_run(job.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["detection.start_iter"] == "2"
    assert run.data.tags["detection.recipe"] == "digits_voc"
    assert [m.step for m in client.get_metric_history(job.run_id, "detection/train/total_loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(job.run_id, "detection/lr")] == [1, 2, 3, 4]
    assert client.get_metric_history(job.run_id, "detection/AP50")[0].value == metrics["detection/AP50"]
    assert "detection/config.yaml" in [a.path for a in client.list_artifacts(job.run_id, "detection")]
    assert (out / "model_final.pth").is_file() and not list(out.glob("*.tmp-*"))
    # Nothing left to train: a third run evaluates the final model again and logs nothing twice.
    again = run_protocol(job)
    assert again == metrics
    assert len(client.get_metric_history(job.run_id, "detection/AP50")) == 1


@pytest.mark.slow
def test_digits_coco_logs_box_and_mask_ap(tmp_path, coco):
    job = _job(tmp_path, _export(tmp_path / "backbone.pt", DIGITS), recipe="digits_coco", root=str(coco),
               max_iter=2, overrides=SMALL)
    metrics = detection_evaluate(job)
    assert set(metrics) == {f"detection/{p}{k}" for p in ("", "mask_") for k in ("AP", "AP50", "AP75")}
    logged = MlflowClient(job.tracking_uri).get_run(job.run_id).data.metrics
    assert {"detection/mask_AP", "detection/mask_AP50", "detection/AP50"} <= set(logged)


def _rank(rank: int, job: EvalJob, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    results[rank] = detection_evaluate(job)


@pytest.mark.slow
def test_two_ranks_train_with_gloo_and_naive_sync_bn_and_only_rank_0_logs(tmp_path, voc, monkeypatch):
    """The launcher starts one process per task (torchrun / SLURM variables); IMS_PER_BATCH is global."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU ranks (gloo) on a GPU machine too, where it failed
    job = _job(tmp_path, _export(tmp_path / "backbone.pt", DIGITS), recipe="digits_voc", root=str(voc), max_iter=3,
               log_period=1, overrides=[*SMALL, "MODEL.RESNETS.NORM naiveSyncBN"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(job, port, results), nprocs=2)
    assert results[1] == {} and set(results[0]) == {"detection/AP", "detection/AP50", "detection/AP75"}
    client = MlflowClient(job.tracking_uri)
    assert client.get_run(job.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(job.run_id, "detection/train/total_loss")] == [1, 2, 3]


def test_bad_input_stops_in_one_line_and_keeps_what_was_written(tmp_path, voc):
    backbone = _export(tmp_path / "backbone.pt", DIGITS)
    with pytest.raises(RecipeError, match="unknown detection recipe 'pascal'"):
        run_protocol(_job(tmp_path, backbone, recipe="pascal", root=str(voc)))
    with pytest.raises(RecipeError, match="needs options.root"):
        run_protocol(_job(tmp_path, backbone, recipe="voc07"))
    with pytest.raises(RecipeError, match="unknown detection options"):
        run_protocol(_job(tmp_path, backbone, recipe="voc07", epochs=3))
    wrong = _job(tmp_path, _export(tmp_path / "r50.pt", R50), R50, recipe="digits_voc", root=str(voc))
    with pytest.raises(RecipeError, match=r"r50\.pt does not fit detection recipe digits_voc: arch='resnet50'") as info:
        run_protocol(wrong)
    assert "\n" not in str(info.value)
    assert MlflowClient(wrong.tracking_uri).get_run(wrong.run_id).info.status == "FAILED"
    assert not (Path(wrong.output_dir) / WEIGHTS_NAME).exists()
    with pytest.raises(ConversionError, match=r"metadata says arch='resnet50' but the run's config says arch="):
        run_protocol(_job(tmp_path, tmp_path / "r50.pt", DIGITS, recipe="digits_voc", root=str(voc)))
    # A missing data folder, after an earlier run left checkpoints: they stay.
    job = _job(tmp_path, backbone, recipe="digits_voc", root=str(tmp_path / "nowhere"))
    kept = Path(job.output_dir) / "detectron2" / "model_0000009.pth"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"checkpoint")
    with pytest.raises(RecipeError, match=r"nowhere is not a folder; it should hold digit scenes"):
        run_protocol(job)
    assert kept.read_bytes() == b"checkpoint"


def test_a_kill_mid_save_leaves_the_previous_checkpoint_and_its_tag(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    real_save = torch.save

    def torn(data, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the kill arrives mid-write

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000003", iteration=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert AtomicDetectionCheckpointer(model, str(tmp_path)).resume_or_load("")["iteration"] == 1


# -------------------------------------------------------------------------------------------- unreadable images


@pytest.mark.slow
def test_unreadable_training_images_are_skipped_with_one_warning_each_and_counted(tmp_path, caplog):
    """The probe: a VOC tree with JPEGImages/000001.jpg emptied (and 000002.jpg cut short) trains and evaluates."""
    voc = write_voc_scenes(tmp_path / "voc", n_trainval=4, n_test=2)  # every batch of 4 draws both
    empty, truncated = voc / "JPEGImages" / "000001.jpg", voc / "JPEGImages" / "000002.jpg"
    empty.write_bytes(b"")
    truncated.write_bytes(truncated.read_bytes()[:-300])  # the header reads, the pixels do not
    job = _job(tmp_path, _export(tmp_path / "backbone.pt", DIGITS), recipe="digits_voc", root=str(voc), max_iter=2,
               overrides=SMALL)
    with caplog.at_level("WARNING", logger="evals.detection.train"):
        metrics = detection_evaluate(job)
    assert set(metrics) == {"detection/AP", "detection/AP50", "detection/AP75"}
    warnings = [r.getMessage() for r in caplog.records if r.name == "evals.detection.train"]
    for image in (empty, truncated):  # once per file, though drawn in several batches and by precise BN
        assert len([w for w in warnings if w.startswith(f"detection: skipping training image {image}:")]) == 1
    assert "detection: 2 training image(s) could not be read and were skipped" in warnings[-1]
    logged = MlflowClient(job.tracking_uri).get_run(job.run_id).data.metrics
    assert logged["detection/skipped_images"] == 2.0


def test_unreadable_test_images_and_wrong_sizes_stop_before_training(tmp_path, voc):
    backbone = _export(tmp_path / "backbone.pt", DIGITS)
    copy = tmp_path / "voc"
    shutil.copytree(voc, copy)
    test_image = copy / "JPEGImages" / "000013.jpg"  # 12 trainval ids, then the test ids
    test_image.write_bytes(b"")
    with pytest.raises(RecipeError, match=r"000013\.jpg: empty file \(0 bytes\), listed in ImageSets/Main/test\.txt"):
        detection_evaluate(_job(tmp_path, backbone, recipe="digits_voc", root=str(copy), max_iter=2, overrides=SMALL))
    test_image.write_bytes((voc / "JPEGImages" / "000013.jpg").read_bytes())

    anno = copy / "Annotations" / "000014.xml"
    anno.write_text(anno.read_text().replace("<width>64</width>", "<width>640</width>"))
    job = _job(tmp_path, backbone, recipe="digits_voc", root=str(copy), max_iter=2, overrides=SMALL)
    with pytest.raises(DatasetError, match=r"000014\.xml: <size> says 640x64 but .*000014\.jpg is 64x64") as info:
        detection_evaluate(job)
    assert "\n" not in str(info.value)
    assert not (Path(job.output_dir) / "detectron2" / "metrics.json").exists()  # stopped before training


def test_a_test_image_that_does_not_decode_stops_the_evaluation_naming_it(tmp_path, voc):
    from detectron2.data import DatasetMapper

    cfg = build_cfg("digits_voc", DIGITS, "w.pkl", tmp_path, root=voc)
    record = dict(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0])
    image = tmp_path / "cut.jpg"
    image.write_bytes(Path(record["file_name"]).read_bytes()[:-300])
    record["file_name"] = str(image)
    with pytest.raises(DatasetError, match=r"cut\.jpg: cannot be read as an image \(image file is truncated"):
        RequireReadableImages(DatasetMapper(cfg, False))(record)
    assert SkipUnreadableImages(DatasetMapper(cfg, True), str(tmp_path))(record) is None
