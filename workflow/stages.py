"""What the heavy Snakemake rules do, run in short-lived processes: MLflow bookkeeping and the job bodies.

A rule runs `python -m workflow.stage` (workflow/stage.py), whose process only submits a job and waits: it never
imports torch or MLflow. It calls the bookkeeping here (create or resume the stage's MLflow run, record every
launch attempt, replay the journal and finish, or mark the run FAILED/KILLED) through ``python -m
workflow.stages OPERATION`` (JSON in on stdin, JSON out in a file), and submits the job bodies
(`pretrain_job`, `random_init_job`, `features_job`, `evaluate_job`) by name. The records (run id, metrics, where
the job ran) are how Snakemake knows a stage is done; MLflow holds the full history.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from mec.tracking import (
    ensure_experiment,
    log_params,
    replay_journal,
    require_tracking_store,
    resolve_tracking_uri,
)
from workflow.experiment import Experiment, build_experiment
from workflow.miniature import nominal_tags

log = logging.getLogger(__name__)
# torch and the evaluation code are imported by the functions that need them: the bookkeeping processes that
# only talk to MLflow start in a few seconds.

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the evaluation under its pretraining run
PRETRAIN_RUN_TAG = "mec.pretrain_run_id"
RUN_ID_FILE = "mlflow_run_id"


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a rule's JSON output atomically (temp file + rename): a killed rule leaves no half record."""
    from mec import checkpoint as ckpt

    return ckpt.write_text_atomically(Path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path}: not a readable stage record ({exc}); delete it and rerun its rule") from None


def store(uri: str, uri_source: str = "MLFLOW_TRACKING_URI or the experiment's tracking_uri") -> MlflowClient:
    """A client of ``uri``; a tracking server that does not answer stops the stage in seconds, in one line."""
    require_tracking_store(uri, uri_source)
    return MlflowClient(tracking_uri=uri)


def tracking_client(experiment: Experiment) -> tuple[MlflowClient, str]:
    uri = resolve_tracking_uri(experiment.tracking_uri)
    source = "the experiment's tracking_uri" if experiment.tracking_uri else "MLFLOW_TRACKING_URI"
    return store(uri, source), uri


def create_experiment(tree: Mapping[str, Any], output: str | Path) -> dict[str, Any]:
    """Create the MLflow experiment once, before any parallel job could race to create it.

    The record keeps the resolved store: the stage commands read it, so the jobs of one DAG log to one store
    whatever their environment (and the experiment config it was created with, for a reader).
    """
    experiment = build_experiment(tree)
    client, uri = tracking_client(experiment)
    experiment_id = ensure_experiment(client, experiment.name)
    record = {"experiment": experiment.name, "experiment_id": experiment_id, "tracking_uri": uri, "config": tree}
    write_record(output, record)
    return record


def _owned_run(client: MlflowClient, experiment_id: str, run_dir: Path, name: str, tags: dict[str, str],
               resume_from: str | None = None) -> str:
    """The MLflow run of a stage: the checkpoint's, else the one this stage created earlier, else a new one.

    The id is kept in ``run_dir/mlflow_run_id`` as soon as the run exists, so a job that dies before its first
    checkpoint still continues the same run when the rule runs again.
    """
    id_file = run_dir / RUN_ID_FILE
    run_id = resume_from or (id_file.read_text().strip() if id_file.exists() else None)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


def start_pretrain_run(tracking_uri: str, experiment: str, run: str, run_dir: str, tags: dict[str, str],
                       config: dict[str, Any]) -> str:
    """Create or resume a pretraining run (the newest checkpoint's run first) and log its params and config.

    Params and the resolved config are logged here, where the store is reachable; the job may not reach it.
    """
    from mec import checkpoint as ckpt
    from mec.config import build_config

    client = store(tracking_uri)
    resumable = ckpt.find_resumable(Path(run_dir) / "checkpoints")
    resume_from = resumable[1].get(ckpt.RUN_ID_KEY) if resumable else None
    run_id = _owned_run(client, ensure_experiment(client, experiment), Path(run_dir), run, tags, resume_from)
    log_params(client, run_id, build_config(config).flat())
    client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config/resolved.yaml")
    return run_id


def start_evaluation_run(tree: dict[str, Any], tracking_uri: str, evaluation: str, run: str,
                         pretrain_record: str) -> dict[str, Any]:
    """Create or resume an evaluation's run, nested under its pretraining run; its options, label split included."""
    experiment = build_experiment(tree)
    spec = experiment.evaluation(evaluation)
    pre = read_record(pretrain_record)
    client = store(tracking_uri)
    tags = {"mec.stage": "evaluate", "mec.evaluation": evaluation, "mec.protocol": spec.protocol, "mec.run": run,
            PRETRAIN_RUN_TAG: pre["run_id"], PARENT_RUN_TAG: pre["run_id"]}
    if experiment.scale == "miniature":
        tags |= nominal_tags(experiment.nominal_evaluations.get(evaluation, {}))
    run_id = _owned_run(client, ensure_experiment(client, experiment.name), experiment.eval_dir(evaluation, run),
                        f"{evaluation}/{run}", tags)
    options = dict(spec.options)
    if spec.fraction is not None and "split" not in options:
        options["split"] = str(label_split(experiment, run, spec.fraction).resolve())
    # the DAG-written offline data of the digits detection recipes, tracking tasks and transfer sets, or the folder
    # of the data set a probe reads instead of its run's (option dataset; eval.dataset tells the probes apart)
    generated = (experiment.scenes_root(evaluation, run) or experiment.videos_root(evaluation, run)
                 or experiment.transfer_root(evaluation, run) or experiment.probe_root(evaluation, run))
    if generated is not None:
        options["root"] = str(generated.resolve())
    log_params(client, run_id, {f"eval.{k}": v for k, v in options.items()}
               | {"eval.protocol": spec.protocol, "eval.backbone": pre["backbone"]})
    return {"run_id": run_id, "options": options}


def record_attempts(tracking_uri: str, run_id: str, launches: list[dict[str, Any]]) -> None:
    """Every launch of the stage as tags: all job ids in order, the number of attempts, the last job's log."""
    if not launches:
        return
    last = launches[-1]
    tags = {key: str(last[key]) for key in ("cluster", "job_id", "folder", "stdout", "stderr") if last.get(key)}
    tags["job_ids"] = ",".join(dict.fromkeys(str(entry["job_id"]) for entry in launches if entry.get("job_id")))
    tags["attempts"] = str(sum(entry["event"] in ("submitted", "restarted", "inline") for entry in launches))
    client = store(tracking_uri)
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(f"launcher.{key}", value) for key, value in tags.items()])


def finish_run(tracking_uri: str, run_id: str, journal: str, launches: list[dict[str, Any]],
               artifacts: dict[str, str] | None = None) -> None:
    """Replay what the job could not deliver (server away, killed between flushes), log artifacts, FINISHED."""
    record_attempts(tracking_uri, run_id, launches)
    client = store(tracking_uri)
    replay_journal(client, run_id, Path(journal))
    logged = {a.path for a in client.list_artifacts(run_id)}
    for path, folder in (artifacts or {}).items():
        if folder not in logged:
            client.log_artifact(run_id, path, folder)
    client.set_terminated(run_id, "FINISHED")


def fail_run(tracking_uri: str, run_id: str, journal: str, launches: list[dict[str, Any]], status: str, reason: str,
             log_file: str | None) -> None:
    """End a stage's run FAILED (or KILLED when interrupted), keeping what the job logged and saying why."""
    record_attempts(tracking_uri, run_id, launches)
    client = store(tracking_uri)
    if Path(journal).exists():
        replay_journal(client, run_id, Path(journal))
    client.set_tag(run_id, "mec.failure", reason[:4000])
    if log_file:
        client.set_tag(run_id, "mec.failure_log", log_file)
    client.set_terminated(run_id, status)


def pretrain_job(config_tree: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Body of a pretraining job (run by submitit): resume or start, export the backbone."""
    from mec.config import build_config
    from mec.train import pretrain

    result = pretrain(build_config(config_tree), run_id=run_id)
    return {"run_id": result.run_id, "backbone": str(result.backbone_path), "metrics": result.metrics}


def random_init_job(config_tree: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Export the config's backbone, randomly initialised with the run's seed (every residual branch active)."""
    import torch

    from mec import checkpoint as ckpt
    from mec.config import build_config
    from mec.train import build_backbone_from_config

    cfg = build_config(config_tree)
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone_from_config(cfg, zero_init_residual=False)
    path = Path(cfg.train.output_dir) / "backbone.pt"
    m = cfg.model
    ckpt.export_backbone(backbone.state_dict(), path, {
        "arch": m.arch, "width": m.width, "cifar_stem": m.cifar_stem, "feature_dim": backbone.feature_dim,
        "source_checkpoint": "random_init", "mlflow_run_id": run_id, "config_name": cfg.name,
    })
    return {"run_id": run_id, "backbone": str(path), "metrics": {}}


def features_job(backbone: str, config_tree: dict[str, Any], split: str, output: str) -> dict[str, Any]:
    """Body of a features job: ``split``'s frozen features under ``backbone``, written atomically to ``output``
    with what they were computed from (`evals.features.write_features`)."""
    from evals.features import write_features
    from mec.config import build_config

    features, reused = write_features(Path(output), Path(backbone), build_config(config_tree), split)
    return {"path": output, "shape": list(features.features.shape), "reused": reused}


def evaluate_job(fields: dict[str, Any]) -> dict[str, float]:
    """Body of an evaluation job: one protocol on one backbone (`evals.job.EvalJob` fields)."""
    from evals import run_protocol
    from evals.job import EvalJob

    return run_protocol(EvalJob(**fields))


def label_split(experiment: Experiment, run: str, fraction: float, seed: int = 0) -> Path:
    """The class-balanced ``fraction`` subset of ``run``'s training set (`Experiment.split_file`), written once.

    Runs on the same data (all methods, all seeds) read the same images; the file is never rewritten once it
    exists. The DAG's label_split rule writes it before any evaluation that reads it starts.
    """
    from evals.splits import balanced_subset, split_lines_for, write_split
    from mec.data import build_eval_dataset

    path = experiment.split_file(run, fraction, seed)
    if path.exists():
        return path
    data = experiment.config_for(run).data
    dataset = build_eval_dataset(data.name, data.root, None, "train", **data.dataset_options())
    samples = getattr(dataset, "samples", None)
    indices = balanced_subset(list(dataset.targets), fraction, seed)
    root = Path(dataset.root) if samples is not None else None
    return write_split(path, split_lines_for(samples, root, indices))


def detection_scenes(experiment: Experiment, run: str, fmt: str) -> Path:
    """The digit scenes of ``run``'s offline detection evaluations (`Experiment.scenes_dir`), in the style of its
    pretraining digits (`evals.pretraining_style`); rewritten only when their parameters change. Returns the
    manifest."""
    from evals import pretraining_style
    from evals.detection import SCENES, write_scenes
    from evals.detection.scenes import MANIFEST_NAME

    params = dict(SCENES) | pretraining_style(experiment.config_for(run).data)
    return write_scenes(fmt, experiment.scenes_dir(run, fmt), params) / MANIFEST_NAME


def transfer_set(experiment: Experiment, run: str, dataset: str) -> Path:
    """The offline miniature of a transfer data set, or the stand-in of a probe's data set, for ``run``'s
    evaluations (`Experiment.transfer_set_dir`), drawn like its pretraining digits
    (`evals.transfer_sets.generated_set_params`); rewritten only when its parameters change. Returns the manifest."""
    from evals.transfer_sets import generated_set_params, write_transfer_set
    from mec.trees import MANIFEST_NAME

    params = generated_set_params(dataset, experiment.config_for(run).data)
    return write_transfer_set(dataset, experiment.transfer_set_dir(run, dataset), **params) / MANIFEST_NAME


def tracking_videos(experiment: Experiment, run: str, task: str) -> Path:
    """The digit videos of ``run``'s offline tracking evaluations of ``task`` (`Experiment.videos_dir`), in the
    style of its pretraining digits; rewritten only when their parameters change. Returns the manifest."""
    from evals.tracking import video_parameters, write_videos
    from mec.trees import MANIFEST_NAME

    params = video_parameters(experiment.config_for(run).data)
    return write_videos(task, experiment.videos_dir(run, task), params) / MANIFEST_NAME


OPERATIONS = {f.__name__: f for f in (create_experiment, start_pretrain_run, start_evaluation_run, record_attempts,
                                      finish_run, fail_run)}

if __name__ == "__main__":
    # python -m workflow.stages OPERATION RESULT_FILE, keyword arguments as JSON on stdin (see workflow/stage.py).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    operation, result_file = sys.argv[1], Path(sys.argv[2])
    result_file.write_text(json.dumps(OPERATIONS[operation](**json.loads(sys.stdin.read()))))
