"""A linear probe (or fine-tuning) reading another data set than the pretraining one (option ``dataset``, paper
Table 9's ImageNet column): planning checks the key and its folder, a run on the offline digits reads a stand-in the
DAG renders (an ImageFolder tree of other digits), and the evaluation's MLflow run says which data set it read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mec.config import ConfigError
from mec.data import build_eval_dataset
from workflow.experiment import PRETRAIN_DATASETS, build_experiment, check_data_roots


def _tree(tmp_path: Path, config: str = "digits", options: dict | None = None, **evaluation) -> dict:
    pretrain = {"config": config}
    if config == "digits":
        pretrain["overrides"] = {"data.root": str(tmp_path / "digits")}
    else:
        pretrain["overrides"] = {"data.name": "places365"}
    return {"experiment": "probe", "output": str(tmp_path / "out"),
            "datasets": {"places365": str(tmp_path / "places365")},
            "pretrain": {"a": pretrain},
            "evaluate": {"lin": {"protocol": "linear_probe", "options": {"dataset": "imagenet"} | (options or {}),
                                 **evaluation}}}


def test_the_pretraining_data_names_and_the_probe_keys_are_one_mapping():
    from evals import DATA_NAMES

    assert PRETRAIN_DATASETS == {"imagefolder": "imagenet", "places365": "places365", "cifar10": "cifar10",
                                 "cifar100": "cifar100"}
    assert {key: name for name, key in PRETRAIN_DATASETS.items()} == DATA_NAMES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": {"dataset": "imagenet1k"}},
         r"^evaluate\.lin\.options\.dataset: 'imagenet1k' is not one of \['imagenet', 'places365', 'cifar10', "
         r"'cifar100'\]$"),
        ({"options": {"dataset": "cifar10"}},
         r"^evaluate\.lin\.options\.dataset: 'cifar10' has no folder in the experiment's datasets block; set "
         r"datasets\.cifar10, or name one of \['places365'\]$"),
        ({"options": {"root": "/data/imagenet"}}, r"^evaluate\.lin\.options\.root: a probe reads options\.dataset's "
                                                  r"folder from datasets\.imagenet; set that instead$"),
        ({"fraction": 0.1}, r"^evaluate\.lin\.fraction: the label subset is drawn from the runs' own data, not "
                            r"options\.dataset 'imagenet'; give options\.split"),
    ],
)
def test_a_bad_probe_data_set_stops_at_planning_in_one_line_naming_the_option(tmp_path, change, message):
    tree = _tree(tmp_path, "imagenet-200ep", **{k: v for k, v in change.items() if k != "options"})
    tree["evaluate"]["lin"]["options"] |= change.get("options", {})
    with pytest.raises(ConfigError, match=message):
        build_experiment(tree)


def test_a_named_folder_is_what_the_probe_reads_and_a_missing_one_is_reported_at_planning(tmp_path):
    tree = _tree(tmp_path, "imagenet-200ep")
    # No datasets.imagenet: only runs on the offline digits have a stand-in.
    with pytest.raises(ConfigError, match=r"^evaluate\.lin: run a_s0 is pretrained on 'places365', not the offline "
                                          r"digits; set datasets\.imagenet \(the folder options\.dataset 'imagenet' "
                                          r"reads\)$"):
        build_experiment(tree)
    tree["datasets"]["imagenet"] = str(tmp_path / "imagenet")
    (tmp_path / "places365").mkdir()
    experiment = build_experiment(tree)
    assert experiment.probe_root("lin", "a_s0") == tmp_path / "imagenet"
    assert experiment.transfer_sets() == {} and experiment.generated_inputs("lin", "a_s0") == []
    with pytest.raises(ConfigError, match=r"^evaluate\.lin\.options\.dataset \(datasets\.imagenet\): no such file or "
                                          rf"folder {tmp_path / 'imagenet'} "):
        check_data_roots(experiment)
    (tmp_path / "imagenet").mkdir()
    check_data_roots(experiment)
    # A probe without the option reads its run's own data, as before.
    plain = build_experiment(tree | {"evaluate": {"lin": {"protocol": "linear_probe"}}})
    assert plain.probe_root("lin", "a_s0") is None and plain.probe_dataset("lin") is None


def test_a_digits_run_is_probed_on_a_dag_written_imagenet_stand_in_of_other_digits(tmp_path):
    from workflow.stage import main

    tree = _tree(tmp_path)
    experiment = build_experiment(tree)
    root = experiment.probe_root("lin", "a_s0")
    assert root == experiment.transfer_root("lin", "a_s0") == experiment.transfer_set_dir("a_s0", "ImageNet")
    assert root.name.startswith("digit-transfer-ImageNet-digits-")
    assert experiment.transfer_sets() == {root.name: ("a_s0", "ImageNet")}
    assert experiment.generated_inputs("lin", "a_s0") == [str(root / "manifest.json")]
    assert experiment.data_roots() == {}  # nothing to exist beforehand: the DAG writes it
    assert main(["transfer-set", "--config", json.dumps(tree), "--run", "a_s0", "--dataset", "ImageNet",
                 "--output", str(root / "manifest.json")]) == 0

    # ImageNet's on-disk layout, read as data.name imagefolder at the run's image size, ten digit classes.
    data = experiment.config_for("a_s0").data
    train = build_eval_dataset("imagefolder", root, None, "train")
    val = build_eval_dataset("imagefolder", root, None, "val")
    assert train.classes == [f"n{c:08d}" for c in range(10)] and val.classes == train.classes
    assert (len(train), len(val)) == (1000, 300)
    assert Path(train.samples[0][0]).name == "n00000000_0.JPEG"
    assert Path(val.samples[0][0]).name.startswith("ILSVRC2012_val_")
    assert train[0][0].size == (data.image_size, data.image_size)
    # Another data set than the pretraining digits: other colours, and texture where they have none.
    params = json.loads((root / "manifest.json").read_text())["params"]
    pretraining = data.digits.options
    assert params["style"]["palette_size"] > pretraining["palette_size"]
    assert params["style"]["texture_strength"] > pretraining["texture_strength"] == 0
    pretrain_images = build_eval_dataset("digits", data.root, None, "train", digits_params=data.digits_params())
    colours = {tuple(np.asarray(pretrain_images[i][0])[0, 0] // 64) for i in range(0, len(pretrain_images), 97)}
    stand_in = {tuple(np.asarray(train[i][0])[0, 0] // 64) for i in range(0, len(train), 17)}
    assert len(stand_in) > len(colours)


def test_the_evaluation_run_logs_the_data_set_and_folder_its_probe_reads(tmp_path):
    from workflow.stages import start_evaluation_run

    tree = _tree(tmp_path)
    tree["evaluate"]["own"] = {"protocol": "linear_probe"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    pre_id = client.create_run(client.create_experiment("probe")).info.run_id
    record = tmp_path / "pretrain.json"
    record.write_text(json.dumps({"run_id": pre_id, "backbone": str(tmp_path / "backbone.pt")}))
    started = start_evaluation_run(tree, uri, "lin", "a_s0", str(record))
    stand_in = build_experiment(tree).transfer_set_dir("a_s0", "ImageNet").resolve()
    assert started["options"] == {"dataset": "imagenet", "root": str(stand_in)}
    params = client.get_run(started["run_id"]).data.params
    assert params["eval.dataset"] == "imagenet" and params["eval.root"] == str(stand_in)
    own = start_evaluation_run(tree, uri, "own", "a_s0", str(record))
    assert own["options"] == {} and "eval.dataset" not in client.get_run(own["run_id"]).data.params
