"""The paper's campaigns (workflow/experiments/table*.yaml, figure*.yaml): each plans at full scale and as its
miniature, prints its GPU budget, and every bad campaign stops at planning with one line naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, campaign_data, planned_jobs, run_snakemake

from mec.config import ConfigError
from workflow.experiment import build_experiment, check_data_roots
from workflow.plan import format_plan, is_dry_run

EXPERIMENTS = REPO / "workflow" / "experiments"
CAMPAIGNS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p.stem.startswith(("table", "figure")))
MINIATURES = [p for p in CAMPAIGNS if "miniature" in yaml.safe_load(p.read_text())]


def _tree(name: str) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())


def test_every_campaign_names_its_source_and_the_tables_have_miniatures():
    assert {p.stem for p in CAMPAIGNS} >= {"table1", "table2", "table3", "table4", "table5", "table9", "figure4"}
    for campaign in CAMPAIGNS:
        assert campaign.read_text().startswith(("# Paper Table", "# Paper Figure")), campaign.name
    assert {p.stem for p in MINIATURES} >= {"table1", "table2", "table5", "table9", "figure4"}


@pytest.mark.parametrize("campaign", CAMPAIGNS, ids=lambda p: p.stem)
def test_every_campaign_plans_with_its_gpu_budget(tmp_path, campaign):
    campaign_data(tmp_path, campaign)
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(campaign))
    assert dry.returncode == 0, dry.stderr[-3000:]
    experiment = build_experiment(yaml.safe_load(campaign.read_text()), tmp_path)
    jobs = planned_jobs(dry.stdout)
    assert [job["rule"] for job in jobs].count("pretrain") == len(experiment.runs)
    assert [job["rule"] for job in jobs].count("evaluate") == sum(len(e.runs) for e in experiment.evaluations.values())
    assert f"Plan of {experiment.name} (full scale, launcher slurm): GPU hours" in dry.stderr
    assert "total" in dry.stderr


@pytest.mark.parametrize("campaign", MINIATURES, ids=lambda p: p.stem)
def test_every_miniature_plans_the_same_dag_shape_on_this_machine(tmp_path, campaign):
    dry = run_snakemake(tmp_path, "-n", "--configfile", str(campaign), "--config", "scale=miniature")
    assert dry.returncode == 0, dry.stderr[-3000:]
    tree = yaml.safe_load(campaign.read_text())
    full = build_experiment(tree, tmp_path)
    mini = build_experiment(tree | {"scale": "miniature"}, tmp_path)
    assert sorted(mini.runs) == sorted(full.runs) and sorted(mini.evaluations) == sorted(full.evaluations)
    assert mini.name == f"{full.name}-miniature" and mini.output == tmp_path / "results" / mini.name
    assert mini.launcher == "local" and all(r.resources.get("gpus_per_node", 0) == 0 for r in mini.runs.values())
    assert "(miniature scale, launcher local)" in dry.stderr


def test_a_miniature_run_knows_what_it_stands_for():
    mini = build_experiment(_tree("table1") | {"scale": "miniature"})
    assert mini.scale == "miniature"
    nominal = mini.nominal_runs["mec800_s0"]
    assert nominal["optim.epochs"] == 800 and nominal["data.name"] == "imagefolder"
    assert nominal["data.augment"] == "imagenet" and "train.output_dir" not in nominal
    assert mini.config_for("mec800_s0").data.name == "digits"
    table2 = build_experiment(_tree("table2") | {"scale": "miniature"})
    assert Path(table2.nominal_evaluations["finetune_1pct"]["split"]).name == "1percent.txt"
    finetune = table2.evaluation("finetune_1pct")
    assert finetune.fraction == 0.01 and "split" not in finetune.options


def test_the_miniatures_resources_replace_every_jobs_and_an_entry_updates_them():
    tree = _tree("table7")
    tree["miniature"]["resources"] = {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 10}
    tree["miniature"]["pretrain"]["plain"]["resources"] = {"cpus_per_task": 2, "runtime": 20}
    mini = build_experiment(tree | {"scale": "miniature"})
    assert mini.run("plain_s0").resources == {"cpus_per_task": 2, "mem_mb": 2000, "runtime": 20}
    assert mini.run("multi_crop_s0").resources == {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 10}
    assert mini.evaluation("linear").resources == {"cpus_per_task": 1, "mem_mb": 2000, "runtime": 10}
    tree["miniature"]["resources"] = 4
    with pytest.raises(ConfigError, match="miniature.resources: expected a mapping"):
        build_experiment(tree | {"scale": "miniature"})


def test_the_plan_estimates_pretraining_from_the_stated_throughput():
    text = format_plan(build_experiment(_tree("table1")))
    line = next(row for row in text.splitlines() if row.startswith("pretrain mec100_s0"))
    # 100 epochs x 1,281,167 images / 102 images/s per GPU = 349 GPU hours; 8 GPUs x 24 h reserved per attempt
    assert line.split()[-2:] == ["192", "349"]
    assert "need more than one time limit" in text
    assert is_dry_run(["-n"]) and is_dry_run(["--cores", "2", "-np"]) and not is_dry_run(["--cores", "2"])


def test_a_missing_data_root_stops_at_planning_with_the_path_it_expected(tmp_path):
    experiment = build_experiment(_tree("table2"), tmp_path)
    with pytest.raises(ConfigError, match=rf"data\.root of imagefolder\): no such file or folder "
                                          rf"{tmp_path / 'datasets' / 'imagenet'}"):
        check_data_roots(experiment)
    (tmp_path / "datasets" / "imagenet").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"evaluate\.finetune_1pct\.options\.split: no such file or folder .*"
                                          r"simclr-imagenet-subsets/1percent\.txt"):
        check_data_roots(experiment)


def _bad(tree: dict, where: list, value) -> dict:
    tree = copy.deepcopy(tree)
    node = tree
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    return tree


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (["evaluate", "linear", "runs"], ["mec100", "mec1000"], r"evaluate\.linear\.runs: unknown pretrain groups "
                                                                 r"\['mec1000'\]; groups: \['mec100', 'mec200'"),
        (["evaluate", "linear", "protocol"], "linear_prob", r"evaluate\.linear\.protocol: 'linear_prob' is not one of"),
        (["evaluate", "linear", "runs"], [], r"evaluate\.linear\.runs is empty; name run groups \(\['mec100'"),
        (["evaluate", "linear", "options", "epochz"], 3,
         r"evaluate\.linear: linear_probe reads no option \['epochz'\]; its options: \['base_lr', 'batch_size'"),
        (["evaluate", "linear", "grid"], {"base_lrr": [0.1, 0.2]}, r"evaluate\.linear: linear_probe reads no option "
                                                                    r"\['base_lrr'\]"),
        (["evaluate", "linear", "seeds"], [0, 1], r"evaluate\.linear: linear_probe reads no option \['seed'\]"),
        (["pretrain", "mec100", "grid"], {"loss.epz": [1, 2]}, r"pretrain\.mec100 \(run mec100_epz1_s0\): .*loss\.epz"),
        (["pretrain", "mec100", "resources", "tasks_per_node"], 4, r"pretrain\.mec100\.resources\.tasks_per_node=4: "
                                                                  r"jobs run one task per GPU; with gpus_per_node=8"),
        (["launcher"], "local", r"pretrain\.mec400\.resources\.nodes=2: launcher 'local' runs on one node"),
        (["miniature", "pretrain", "mec1600"], {"config": "digits"},
         r"miniature\.pretrain\.mec1600: the campaign has no such run group"),
        (["miniature", "pretrain", "mec100", "seeds"], [0, 1],
         r"miniature\.pretrain\.mec100\.seeds: a miniature keeps"),
    ],
)
def test_bad_campaigns_stop_at_planning_naming_the_key(where, value, message):
    tree = _bad(_tree("table1"), where, value)
    if where[0] == "miniature":
        tree["scale"] = "miniature"
    with pytest.raises(ConfigError, match=message):
        build_experiment(tree)


def test_an_unknown_transfer_data_set_or_scale_stops_at_planning():
    tree = {"experiment": "t", "datasets": {"transfer": "/data/transfer"}, "pretrain": {"a": {"config": "digits"}},
            "evaluate": {"tr": {"protocol": "transfer", "options": {"dataset": "Food100"}}}}
    with pytest.raises(ConfigError, match=r"evaluate\.tr\.options\.dataset: 'Food100' is not one of \['Food101'"):
        build_experiment(tree)
    tree["evaluate"]["tr"]["options"]["dataset"] = "Food101"
    assert build_experiment(tree).evaluation("tr").options["root"] == "/data/transfer/Food101"
    with pytest.raises(ConfigError, match=r"scale=miniature: experiment 't' has no miniature block"):
        build_experiment(tree | {"scale": "miniature"})


def test_transfer_on_the_offline_digits_reads_the_dags_miniature_of_each_data_set(tmp_path):
    from workflow.stage import main

    tree = {"experiment": "t", "output": str(tmp_path / "out"),
            "pretrain": {"a": {"config": "digits", "overrides": {"data.root": str(tmp_path / "digits")}}},
            "evaluate": {"tr": {"protocol": "transfer", "grid": {"dataset": ["DTD", "Pets"]}}}}
    exp = build_experiment(tree)
    root = exp.transfer_root("tr_datasetDTD", "a_s0")
    assert root == exp.transfer_set_dir("a_s0", "DTD") and root.name.startswith("digit-transfer-DTD-digits-")
    assert exp.generated_inputs("tr_datasetPets", "a_s0") == [str(exp.transfer_set_dir("a_s0", "Pets") /
                                                                  "manifest.json")]
    assert sorted(exp.transfer_sets().values()) == [("a_s0", "DTD"), ("a_s0", "Pets")]
    manifest = root / "manifest.json"
    assert main(["transfer-set", "--config", json.dumps(tree), "--run", "a_s0", "--dataset", "DTD",
                 "--output", str(manifest)]) == 0
    assert (root / "dtd" / "dtd" / "labels" / "train1.txt").is_file()
    other = tree | {"pretrain": {"a": {"config": "cifar10"}}}
    with pytest.raises(ConfigError, match=r"evaluate\.tr_datasetDTD: run a_s0 is pretrained on 'cifar10'.*"
                                          r"set datasets\.transfer \(the folder holding DTD/\)"):
        build_experiment(other)
