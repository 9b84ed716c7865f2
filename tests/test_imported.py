"""Evaluating an existing backbone without pretraining: `backbone:` run groups, `import_backbone_job`, and
`mec evaluate` through the DAG; plus the experiment config's single sources (launcher names, schema checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_MODEL, write_tiny_mec_config
from mlflow.tracking import MlflowClient

from mec import checkpoint as ckpt
from mec.checkpoint import file_sha256
from mec.config import ConfigError, load_config
from mec.models import build_backbone
from workflow.experiment import SCHEMA, build_experiment
from workflow.imported import SHA256_TAG, SOURCE_TAG, import_backbone_job
from workflow.launch import CLUSTERS


def _tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(TINY_MODEL["arch"], width=TINY_MODEL["width"], cifar_stem=TINY_MODEL["cifar_stem"],
                          zero_init_residual=False)


def _exported(path: Path) -> tuple[Path, torch.nn.Module]:
    backbone = _tiny_backbone()
    ckpt.export_backbone(backbone.state_dict(), path, {"arch": TINY_MODEL["arch"], "source_checkpoint": "test"})
    return path, backbone


def _released(path: Path, drop: str | None = None) -> tuple[Path, torch.nn.Module]:
    """Saved the way the authors' code saves a checkpoint: DDP's `module.`, the encoder, projector and predictor."""
    backbone = _tiny_backbone()
    state = {f"module.encoder.{k}": v for k, v in backbone.state_dict().items() if k != drop}
    state["module.predictor.0.weight"] = torch.zeros(4, 4)
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": {}}, path)
    return path, backbone


def _config_tree(tmp_path: Path, uri: str) -> dict:
    cfg = load_config(str(write_tiny_mec_config(tmp_path)), [f"train.output_dir={tmp_path / 'run'}",
                                                            f"tracking.tracking_uri={uri}"])
    return cfg.model_dump(mode="json")


@pytest.mark.parametrize("save", [_exported, _released])
def test_an_imported_backbone_is_loaded_strictly_exported_and_tagged(tmp_path, save):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("imp")).info.run_id
    source, original = save(tmp_path / "source.pt")
    result = import_backbone_job(_config_tree(tmp_path, uri), run_id, source)

    assert set(result) == {"run_id", "backbone", "metrics"} and result["run_id"] == run_id
    assert Path(result["backbone"]) == tmp_path / "run" / "backbone.pt"
    exported = torch.load(result["backbone"], weights_only=True)
    assert exported["metadata"]["source_checkpoint"] == str(source.resolve())
    assert exported["metadata"]["source_sha256"] == file_sha256(source)
    for name, tensor in original.state_dict().items():
        assert torch.equal(exported["state_dict"][name], tensor), name
    tags = client.get_run(run_id).data.tags
    assert tags[SOURCE_TAG] == str(source.resolve()) and tags[SHA256_TAG] == file_sha256(source)


def test_a_backbone_file_missing_weights_stops_naming_the_file_and_the_keys(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("imp")).info.run_id
    source, _ = _released(tmp_path / "partial.pt", drop="layer4.1.bn2.weight")
    with pytest.raises(ckpt.MissingBackboneKeysError, match=r"partial\.pt.*layer4\.1\.bn2\.weight"):
        import_backbone_job(_config_tree(tmp_path, uri), run_id, source)
    assert not (tmp_path / "run" / "backbone.pt").exists()


def test_a_backbone_group_is_one_run_named_after_it(tmp_path):
    source, _ = _exported(tmp_path / "released.pt")
    tree = {"experiment": "e", "pretrain": {"released": {"config": "digits", "backbone": str(source)},
                                            "seeded": {"config": "digits", "backbone": str(source), "seeds": [1]}},
            "evaluate": {"knn": {"runs": ["released"]}}}
    exp = build_experiment(tree)
    assert sorted(exp.runs) == ["released", "seeded_s1"]
    assert exp.run("released").backbone == str(source) and not exp.run("released").random_init
    assert exp.evaluation("knn").runs == ("released",)


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"config": "digits", "backbone": "nowhere.pt"}, r"pretrain\.imp\.backbone: no file nowhere\.pt"),
        ({"config": "digits", "backbone": "{file}", "random_init": True}, "'random_init' and 'grid' do not apply"),
        ({"config": "digits", "backbone": "{file}", "grid": {"loss.eps": [1, 2]}}, "do not apply"),
        ({"config": "digits", "backbone": 3}, r"pretrain\.imp\.backbone: 3 is not of type 'string'"),
    ],
)
def test_bad_backbone_groups_stop_in_one_line(tmp_path, group, message):
    source, _ = _exported(tmp_path / "b.pt")
    group = {k: (str(source) if v == "{file}" else v) for k, v in group.items()}
    with pytest.raises(ConfigError, match=message):
        build_experiment({"experiment": "e", "pretrain": {"imp": group}})


def test_the_schema_names_exactly_the_launchers_the_launcher_knows():
    assert tuple(yaml.safe_load(SCHEMA.read_text())["properties"]["launcher"]["enum"]) == CLUSTERS


def _mec(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "workflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=cwd, env=env)


def test_mec_evaluate_rejects_a_missing_file_or_an_unknown_protocol_in_one_line(tmp_path):
    source, _ = _exported(tmp_path / "b.pt")
    missing = _mec("evaluate", "--backbone", str(tmp_path / "nope.pt"), "--config", "digits", "--protocol", "knn",
                   cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == \
        f"mec: error: --backbone {tmp_path / 'nope.pt'}: no such file"
    unknown = _mec("evaluate", "--backbone", str(source), "--config", "digits", "--protocol", "knnn", cwd=tmp_path)
    assert unknown.returncode == 2 and "mec: error: --protocol knnn: unknown; protocols: [" in unknown.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_mec_evaluate_probes_a_released_style_checkpoint_through_the_dag(tmp_path):
    source, _ = _released(tmp_path / "mec_released.pt")
    config = write_tiny_mec_config(tmp_path)  # data.root: the written ImageFolder tree
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _mec("evaluate", "--backbone", str(source), "--config", str(config), "--protocol", "knn",
                "--option", "knn.k=[5]", "--experiment", "released", "--tracking-uri", uri, "--cores", "1",
                cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = tmp_path / "results" / "released"
    written = yaml.safe_load((results / "experiment.yaml").read_text())
    assert written["pretrain"]["mec_released"]["backbone"] == str(source)
    assert written["evaluate"]["knn"]["options"] == {"k": [5]}
    record = json.loads((results / "eval" / "knn" / "mec_released" / "result.json").read_text())
    assert 0.0 <= record["metrics"]["knn/top1_k5"] <= 1.0
    assert f"MLflow run {record['run_id']}" in proc.stdout and f"results: {results}" in proc.stdout

    client = MlflowClient(uri)
    evaluation = client.get_run(record["run_id"])
    pretrain = client.get_run(evaluation.data.tags["mec.pretrain_run_id"])
    assert pretrain.data.tags[SHA256_TAG] == file_sha256(source)
    assert pretrain.data.tags["mec.stage"] == "pretrain" and pretrain.info.status == "FINISHED"
    assert "| kNN top-1 (k=5) |" in (results / "tables" / "summary.md").read_text()
    # The DAG's tables rule ran `mec tables`: its report run sits in the experiment with tables and figures.
    (report,) = client.search_runs([evaluation.info.experiment_id], "tags.`mec.stage` = 'tables'")
    logged = {a.path for folder in ("tables", "figures") for a in client.list_artifacts(report.info.run_id, folder)}
    assert {"tables/summary.md", "figures/taylor_error.png", "figures/taylor_error.csv"} <= logged

    # Another file into the same experiment would be skipped as done: refused in one line instead.
    other, _ = _exported(tmp_path / "other.pt")
    again = _mec("evaluate", "--backbone", str(other), "--config", str(config), "--protocol", "knn",
                 "--experiment", "released", "--tracking-uri", uri, cwd=tmp_path)
    assert again.returncode == 2 and f"mec: error: {results} holds the evaluation of" in again.stderr


def test_options_go_to_every_protocol_or_to_the_one_they_name():
    from workflow.evaluate import parse_options

    assert parse_options(["knn.k=[5]", "seed=1"], ["knn", "linear_probe"]) == {
        "knn": {"k": [5], "seed": 1}, "linear_probe": {"seed": 1}}
    with pytest.raises(ConfigError, match="protocol 'tsne' is not among --protocol"):
        parse_options(["tsne.max_points=3"], ["knn"])
