"""What the Snakemake rules call: one function per stage, each writing a small JSON record as the rule's output.

The records (run id, metrics, where the job ran) are how Snakemake knows a stage is done; MLflow holds the
full history. Every record is written atomically and only after the work and its logging succeeded, so an
interrupted DAG reruns exactly the stages without a record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from evals import run_protocol
from evals.job import EvalJob
from mec import checkpoint as ckpt
from workflow.launch import LaunchRecord, LaunchSpec, launch
from mec.tracking import (
    ensure_experiment,
    log_params,
    replay_journal,
    resolve_tracking_uri,
)
from workflow.experiment import Experiment

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the evaluation under its pretraining run
PRETRAIN_RUN_TAG = "mec.pretrain_run_id"
RUN_ID_FILE = "mlflow_run_id"


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a rule's JSON output atomically (temp file + rename): a killed rule leaves no half record."""
    return ckpt.write_text_atomically(Path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path}: not a readable stage record ({exc}); delete it and rerun its rule") from None


def tracking_client(experiment: Experiment) -> tuple[MlflowClient, str]:
    uri = resolve_tracking_uri(experiment.tracking_uri)
    return MlflowClient(tracking_uri=uri), uri


def create_experiment(experiment: Experiment, output: str | Path) -> dict[str, Any]:
    """Create the MLflow experiment once, before any parallel job could race to create it."""
    client, uri = tracking_client(experiment)
    experiment_id = ensure_experiment(client, experiment.name)
    record = {"experiment": experiment.name, "experiment_id": experiment_id, "tracking_uri": uri}
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


def launch_spec(experiment: Experiment, resources: Mapping[str, Any], folder: Path, job_name: str) -> LaunchSpec:
    return LaunchSpec.from_resources(resources, cluster=experiment.launcher, folder=folder, job_name=job_name)


def _record_launch(client: MlflowClient, run_id: str) -> Any:
    def on_submit(record: LaunchRecord) -> None:
        log.info("%s job %s started for run %s (log %s)", record.cluster, record.job_id, run_id, record.stdout)
        client.log_batch(run_id, tags=[_tag(k, v) for k, v in record.as_tags().items()])

    return on_submit


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def pretrain_job(config_tree: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Body of a pretraining job (pickled by submitit): resume or start, export the backbone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mec.config import build_config
    from mec.train import pretrain

    result = pretrain(build_config(config_tree), run_id=run_id)
    return {"run_id": result.run_id, "backbone": str(result.backbone_path), "metrics": result.metrics}


def random_init_job(config_tree: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Export the config's backbone, randomly initialised with the run's seed (every residual branch active)."""
    import torch

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


def pretrain(experiment: Experiment, run: str, output: str | Path, resources: Mapping[str, Any]) -> dict[str, Any]:
    """Pretrain one run of the experiment through the launcher and write its record."""
    client, uri = tracking_client(experiment)
    # The job logs to the store this rule resolved, wherever it starts.
    cfg = experiment.config_for(run, **{"tracking.tracking_uri": uri})
    run_dir = experiment.pretrain_dir(run)
    experiment_id = ensure_experiment(client, experiment.name)
    resumable = ckpt.find_resumable(run_dir / "checkpoints")
    resume_from = resumable[1].get(ckpt.RUN_ID_KEY) if resumable else None
    run_id = _owned_run(client, experiment_id, run_dir, run,
                        {"mec.stage": "pretrain", "mec.run": run, "mec.group": experiment.run(run).group},
                        resume_from=resume_from)
    # Params and the resolved config are logged here, where the store is reachable; the job may not reach it.
    log_params(client, run_id, cfg.flat())
    client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")
    if experiment.run(run).random_init:
        # A baseline costs a second: no job, the rule exports it (same network, standard init).
        client.set_tag(run_id, "mec.baseline", "random_init")
        spec = LaunchSpec(cluster="inline")
        job_fn = random_init_job
    else:
        spec = launch_spec(experiment, resources, run_dir / "submitit", f"pretrain-{run}")
        job_fn = pretrain_job
    result, record = launch(job_fn, cfg.model_dump(mode="json"), run_id, spec=spec,
                            on_submit=_record_launch(client, run_id))
    # Whatever the job could not deliver (server away, killed between flushes) goes now.
    replay_journal(client, run_id, run_dir / "metrics.jsonl")
    backbone = Path(result["backbone"])
    if not any(a.path == "backbone" for a in client.list_artifacts(run_id)):
        client.log_artifact(run_id, str(backbone), "backbone")
    client.set_terminated(run_id, "FINISHED")
    out = {
        "run": run,
        "run_id": run_id,
        "backbone": str(backbone.resolve()),
        "config": cfg.model_dump(mode="json"),
        "metrics": result["metrics"],
        "launch": record.as_dict(),
    }
    write_record(output, out)
    return out


def evaluate(experiment: Experiment, evaluation: str, run: str, pretrain_record: str | Path, output: str | Path,
             resources: Mapping[str, Any]) -> dict[str, Any]:
    """Run one evaluation protocol on one pretraining run's backbone, as a nested MLflow run."""
    spec_eval = experiment.evaluation(evaluation)
    pre = read_record(pretrain_record)
    out_dir = experiment.eval_dir(evaluation, run)
    client, uri = tracking_client(experiment)
    experiment_id = ensure_experiment(client, experiment.name)
    tags = {
        "mec.stage": "evaluate",
        "mec.evaluation": evaluation,
        "mec.protocol": spec_eval.protocol,
        "mec.run": run,
        PRETRAIN_RUN_TAG: pre["run_id"],
        PARENT_RUN_TAG: pre["run_id"],
    }
    run_id = _owned_run(client, experiment_id, out_dir, f"{evaluation}/{run}", tags)
    options = dict(spec_eval.options)
    if spec_eval.fraction is not None and "split" not in options:
        options["split"] = str(label_split(experiment, pre["config"], spec_eval.fraction).resolve())
    job = EvalJob(
        protocol=spec_eval.protocol,
        backbone=pre["backbone"],
        config=pre["config"],
        output_dir=str(out_dir.resolve()),
        feature_cache=str((experiment.output / "features").resolve()),
        options=options,
        run_id=run_id,
        tracking_uri=uri,
        experiment=experiment.name,
    )
    log_params(client, run_id, {f"eval.{k}": v for k, v in options.items()}
               | {"eval.protocol": spec_eval.protocol, "eval.backbone": pre["backbone"]})
    spec = launch_spec(experiment, resources, out_dir / "submitit", f"{evaluation}-{run}")
    metrics, record = launch(run_protocol, job, spec=spec, on_submit=_record_launch(client, run_id))
    replay_journal(client, run_id, out_dir / "metrics.jsonl")
    client.set_terminated(run_id, "FINISHED")
    out = {
        "evaluation": evaluation,
        "protocol": spec_eval.protocol,
        "run": run,
        "run_id": run_id,
        "pretrain_run_id": pre["run_id"],
        "metrics": metrics,
        "launch": record.as_dict(),
    }
    write_record(output, out)
    return out



def label_split(experiment: Experiment, config_tree: dict[str, Any], fraction: float, seed: int = 0) -> Path:
    """The class-balanced ``fraction`` subset of the run's training set, written once and shared by every run.

    The file is named by the data identity, so runs on the same data (all methods, all seeds) read the same
    images; it is never rewritten once it exists.
    """
    import hashlib

    from evals.splits import balanced_subset, split_lines_for, write_split
    from mec.config import build_config
    from mec.data import build_eval_dataset

    data = build_config(config_tree).data
    identity = json.dumps({"name": data.name, "root": str(Path(data.root).resolve()),
                           "digits": data.digits_params() if data.name == "digits" else None}, sort_keys=True)
    tag = hashlib.sha256(identity.encode()).hexdigest()[:10]
    path = experiment.output / "splits" / f"{data.name}-{tag}-{fraction:g}-seed{seed}.txt"
    if path.exists():
        return path
    dataset = build_eval_dataset(data.name, data.root, None, "train", download=data.download,
                                 digits_params=data.digits_params())
    samples = getattr(dataset, "samples", None)
    indices = balanced_subset(list(dataset.targets), fraction, seed)
    root = Path(dataset.root) if samples is not None else None
    return write_split(path, split_lines_for(samples, root, indices))


def tables(experiment: Experiment, output_md: str | Path) -> dict[str, Path]:
    """The experiment's summary table (Markdown + CSV with run ids), read back from MLflow."""
    from workflow.reports.paper_tables import write_tables
    from workflow.reports.tables import experiment_runs, write_summary

    out_dir = Path(output_md).parent
    paths = write_summary(experiment.name, out_dir, experiment.tracking_uri)
    paths |= write_tables(experiment_runs(experiment.name, experiment.tracking_uri), out_dir / "paper")
    paths |= tsne_figures(experiment)
    paths |= curve_figures(experiment)
    log_figures(experiment)
    log.info("tables and figures: %s", ", ".join(map(str, paths.values())))
    return paths


def curve_figures(experiment: Experiment) -> dict[str, Path]:
    """Pretraining loss / coding-length curves and linear-probe accuracy by epoch, from MLflow."""
    from workflow.reports.figures import probe_curves, training_curves
    from workflow.reports.tables import experiment_runs

    client, _ = tracking_client(experiment)
    runs = experiment_runs(experiment.name, experiment.tracking_uri)
    figures = experiment.output / "figures"
    made = {
        "figure:pretraining": training_curves(runs, client, figures / "pretraining_curves.png"),
        "figure:linear_probe": probe_curves(runs, client, figures / "linear_probe_curves.png"),
    }
    return {name: path for name, path in made.items() if path is not None}


def taylor_figure(experiment: Experiment, output_png: str | Path) -> Path:
    """Paper Figure 6 measured on this machine: Taylor error and time against the exact log-determinant."""
    import torch

    from workflow.reports.figures import taylor_error_figure, taylor_error_table

    table = taylor_error_table()
    png = Path(output_png)
    png.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(png.with_suffix(".csv"), index=False)
    device = f"CPU, {torch.get_num_threads()} threads"
    return taylor_error_figure(table, png, device=device)


def tsne_figures(experiment: Experiment) -> dict[str, Path]:
    """One multi-panel PNG per t-SNE evaluation (a panel per run, titled with its eps), also logged to MLflow."""
    import numpy as np

    from evals.tsne import plot_panels

    figures: dict[str, Path] = {}
    for evaluation in experiment.evaluations.values():
        if evaluation.protocol != "tsne":
            continue
        panels = []
        for run in evaluation.runs:
            embedding = np.load(experiment.eval_dir(evaluation.name, run) / "embedding.npz")
            eps = read_record(experiment.pretrain_record(run))["config"]["loss"]["eps"]
            panels.append((f"{run} (eps = {eps:g})", embedding["points"], embedding["labels"]))
        figures[f"figure:{evaluation.name}"] = plot_panels(panels, experiment.output / "figures" / f"{evaluation.name}.png")
    return figures


def log_figures(experiment: Experiment) -> None:
    """Every PNG of the experiment's figure folder (t-SNE, curves, Figure 6) as artifacts of its "figures" run."""
    folder = experiment.output / "figures"
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        return
    client, _ = tracking_client(experiment)
    experiment_id = ensure_experiment(client, experiment.name)
    run_id = _owned_run(client, experiment_id, folder, "figures", {"mec.stage": "figures"})
    for png in pngs:
        client.log_artifact(run_id, str(png), "figures")
    client.set_terminated(run_id, "FINISHED")
