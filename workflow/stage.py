"""The command a heavy Snakemake rule runs: ``python -m workflow.stage {experiment,pretrain,features,evaluate} ...``.

Its process submits the stage's job (workflow.launch) and waits for it, so it stays light: it imports submitit
and the experiment config, never torch or MLflow (a login node may hold dozens of them, one per rule in flight).
The MLflow bookkeeping runs in short-lived child processes (``python -m workflow.stages OPERATION``).

- Every launch is appended to ``launches.jsonl`` in the stage's folder (a submission, each SLURM restart seen,
  a re-attachment, a cancellation) and recorded as ``launcher.*`` tags: ``launcher.job_ids``, ``launcher.attempts``.
- A rerun whose previous SLURM job is still pending or running (the login session died) re-attaches to it
  instead of submitting a second job on the same checkpoints and MLflow run.
- Ctrl-C or SIGTERM cancels the job and ends the run KILLED; any failure ends it FAILED with the reason in
  ``mec.failure`` and the job's log in ``mec.failure_log``. Either way the command exits non-zero with one line.
- The job's id and log are printed when it starts, and its new log lines (the epochs) every few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evals import GENERATED_PROBE_SETS, TRACKING_TASKS, TRANSFER_DATASETS
from workflow.experiment import Experiment, build_experiment
from workflow.launch import (
    SLURM_ACTIVE_STATES,
    Interrupted,
    LaunchError,
    LaunchRecord,
    LaunchSpec,
    attach,
    follow,
    inside_slurm_allocation,
    interrupts_raise,
    record_of,
    resolve,
    slurm_job_info,
    submit,
)
from workflow.miniature import nominal_tags

log = logging.getLogger("mec.stage")
LAUNCHES_FILE = "launches.jsonl"


class StageError(RuntimeError):
    """A stage failed; the message is the one line the rule prints."""


# After Ctrl-C or SIGTERM the run's KILLED status is worth a short wait, never a rule that does not end: past this,
# the rule ends anyway and its log says the run may still say RUNNING (a busy or hung tracking store).
INTERRUPTED_BOOKKEEPING_S = 60.0


def bookkeeping(operation: str, *, in_process: bool = False, timeout_s: float | None = None, **kwargs: Any) -> Any:
    """Run ``workflow.stages.<operation>(**kwargs)`` in a child process, which imports MLflow and torch so that
    this one does not; returns its JSON result. ``in_process``: here instead, for the inline launcher, whose job
    imports both into this process anyway (a child costs some 4 s of imports per call, three calls per job).
    ``timeout_s``: the child is killed after that long and `StageError` says so (not in process)."""
    if in_process:
        from workflow.stages import OPERATIONS

        try:
            return json.loads(json.dumps(OPERATIONS[operation](**kwargs)))
        except Exception as exc:
            raise StageError(f"MLflow bookkeeping ({operation}) failed: {type(exc).__name__}: {one_line(exc)}") \
                from exc
    with tempfile.TemporaryDirectory(prefix="mec-stage-") as tmp:
        result = Path(tmp) / "result.json"
        try:
            proc = subprocess.run([sys.executable, "-m", "workflow.stages", operation, str(result)],
                                  input=json.dumps(kwargs), capture_output=True, text=True, check=False,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StageError(f"MLflow bookkeeping ({operation}) did not finish within {timeout_s:g} s") from None
        if proc.returncode != 0:
            log.debug("%s failed:\n%s", operation, proc.stderr)
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            reason = exception_line(lines) if lines else f"exit status {proc.returncode}"
            raise StageError(f"MLflow bookkeeping ({operation}) failed: {reason}")
        return json.loads(result.read_text())


# Lines printed after a traceback's exception line: submitit's pointers to the job's logs; SQLAlchemy's statement,
# its parameters and a link.
NOT_THE_EXCEPTION = ("You can check", "or at paths", "- ", "[SQL:", "[parameters:", "(Background on this error at:")


def exception_line(lines: list[str]) -> str:
    """The last of ``lines`` (stripped, not empty) that names the exception ("sqlalchemy.exc.OperationalError:
    (sqlite3.OperationalError) database is locked"), not a note printed after it."""
    return next((line for line in reversed(lines) if not line.startswith(NOT_THE_EXCEPTION)), lines[-1])


def bookkeeping_in_background(operation: str, **kwargs: Any) -> subprocess.Popen:
    """Start ``workflow.stages.<operation>(**kwargs)`` without waiting (tags while the job runs; the final
    bookkeeping records them again, so a lost one costs nothing)."""
    proc = subprocess.Popen([sys.executable, "-m", "workflow.stages", operation, os.devnull], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(json.dumps(kwargs))
    proc.stdin.close()
    return proc


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Atomically (temp file + rename): a killed rule leaves no half record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Launches:
    """``launches.jsonl`` of a stage's folder: one line per launch event, oldest first."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LAUNCHES_FILE

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, event: str, record: LaunchRecord, **extra: Any) -> list[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **record.as_dict(), **extra}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        return self.read()

    def active_slurm_job(self) -> str | None:
        """The last submitted SLURM job, if SLURM still has it pending or running."""
        jobs = [e["job_id"] for e in self.read() if e.get("cluster") == "slurm" and e.get("job_id")]
        if jobs and slurm_job_info(jobs[-1]).get("JobState") in SLURM_ACTIVE_STATES:
            return jobs[-1]
        return None


def run_job(target: str, args: tuple[Any, ...], *, spec: LaunchSpec, run_dir: Path, uri: str | None = None,
            run_id: str | None = None) -> tuple[Any, LaunchRecord]:
    """Run one stage's job as ``spec`` says and wait for it, recording every attempt (in ``run_dir``, and as tags
    of the MLflow run ``run_id`` if the stage has one); returns (result, record)."""
    launches = Launches(run_dir)

    def record_attempts(entries: list[dict[str, Any]]) -> None:
        if run_id is not None:
            bookkeeping_in_background("record_attempts", tracking_uri=uri, run_id=run_id, launches=entries)

    if spec.cluster == "inline" or (spec.cluster == "slurm" and inside_slurm_allocation()):
        record = LaunchRecord(cluster="slurm-allocation" if spec.cluster == "slurm" else "inline",
                              job_id=os.environ.get("SLURM_JOB_ID"), folder=None, stdout=None, stderr=None)
        record_attempts(launches.append("inline", record))
        return resolve(target)(*args), record
    previous = launches.active_slurm_job() if spec.cluster == "slurm" else None
    if previous is not None:
        job = attach(spec, previous)
        record = record_of(job, spec.cluster)
        record_attempts(launches.append("attached", record))
        log.info("re-attached to %s job %s, still %s; log %s", spec.cluster, record.job_id,
                 slurm_job_info(previous).get("JobState", "?").lower(), record.stdout)
    else:
        try:
            job = submit(target, *args, spec=spec)
        except Exception as exc:  # sbatch refused it (a missing partition, an account over its limits)
            launches.append("submission failed", LaunchRecord(spec.cluster, None, str(spec.folder), None, None),
                            error=one_line(exc))
            raise
        record = record_of(job, spec.cluster)
        record_attempts(launches.append("submitted", record))
        log.info("submitted %s job %s (%s); log %s", spec.cluster, record.job_id, spec.job_name, record.stdout)

    def on_attempt(attempt: int) -> None:
        log.info("%s job %s was requeued: attempt %d", spec.cluster, record.job_id, attempt)
        record_attempts(launches.append("restarted", record, attempt=attempt))

    try:
        with interrupts_raise():
            return follow(job, spec, on_attempt=on_attempt, echo=lambda line: log.info("| %s", line)), record
    except (KeyboardInterrupt, Interrupted):
        job.cancel(check=False)
        launches.append("cancelled", record)
        raise Interrupted(f"interrupted: cancelled {spec.cluster} job {record.job_id}; its checkpoints are kept; "
                          f"log {record.stdout}", log=record.stderr) from None


def tracked(uri: str | None, run_id: str | None, run_dir: Path, work: Callable[[], dict[str, Any]],
            in_process: bool = False) -> dict[str, Any]:
    """Do a stage's work; on any failure or interrupt, end its MLflow run (if it has one) FAILED or KILLED, then
    re-raise as one line. ``in_process``: as `bookkeeping`'s."""
    try:
        return work()
    except BaseException as exc:
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        reason = one_line(exc) or ("interrupted" if interrupted else type(exc).__name__)
        try:
            if run_id is not None:
                bookkeeping("fail_run", in_process=in_process,
                            timeout_s=INTERRUPTED_BOOKKEEPING_S if interrupted else None,
                            tracking_uri=uri, run_id=run_id, journal=str(run_dir / "metrics.jsonl"),
                            launches=Launches(run_dir).read(),
                            status="KILLED" if interrupted else "FAILED", reason=str(exc) or reason,
                            log_file=getattr(exc, "log", None))
        except StageError as bookkeeping_error:
            log.error("%s; the MLflow run %s may still say RUNNING", bookkeeping_error, run_id)
        if interrupted:
            raise Interrupted(reason, getattr(exc, "log", None)) from None
        raise StageError(reason if isinstance(exc, LaunchError | StageError)
                         else f"{type(exc).__name__}: {reason}") from exc


def one_line(exc: BaseException) -> str:
    """A failure in one line: the message's first line and, for a job's traceback, its last (the exception)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and set(line.strip()) != {"-"}]
    if len(lines) > 1:
        return f"{lines[0]} {exception_line(lines)}"
    return lines[0] if lines else ""


def load_experiment(experiment_file: str | Path, tree: Mapping[str, Any] | None) -> tuple[Experiment, str, dict]:
    """The experiment (``tree``: its config as the Snakefile has it; None: the one the record was made with)
    and the MLflow store of the experiment record."""
    record = json.loads(Path(experiment_file).read_text())
    tree = dict(tree if tree is not None else record["config"])
    return build_experiment(tree), record["tracking_uri"], tree


def launch_spec(experiment: Experiment, resources: Mapping[str, Any], folder: Path, job_name: str) -> LaunchSpec:
    return LaunchSpec.from_resources(resources, cluster=experiment.launcher, folder=folder, job_name=job_name)


def pretrain(experiment_file: str | Path, run: str, output: str | Path, resources: Mapping[str, Any],
             tree: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain one run of the experiment through the launcher and write its record."""
    experiment, uri, _ = load_experiment(experiment_file, tree)
    spec_run = experiment.run(run)
    # The job logs to the store the experiment rule resolved, wherever it starts.
    cfg = experiment.config_for(run, **{"tracking.tracking_uri": uri}).model_dump(mode="json")
    run_dir = experiment.pretrain_dir(run)
    tags = {"mec.stage": "pretrain", "mec.run": run, "mec.group": spec_run.group}
    backbone_source = getattr(spec_run, "backbone", None)
    if backbone_source:
        tags["mec.baseline"] = "imported"
    elif spec_run.random_init:
        tags["mec.baseline"] = "random_init"
    if experiment.scale == "miniature":
        tags |= nominal_tags(experiment.nominal_runs.get(run, {}))
    here = experiment.launcher == "inline"
    run_id = bookkeeping("start_pretrain_run", in_process=here, tracking_uri=uri, experiment=experiment.name, run=run,
                         run_dir=str(run_dir), tags=tags, config=cfg)
    record: LaunchRecord | None = None

    def work() -> dict[str, Any]:
        nonlocal record
        if backbone_source:  # an existing backbone file stands in for pretraining: no job
            target, args, spec = "workflow.imported:import_backbone_job", (cfg, run_id, backbone_source), None
        elif spec_run.random_init:  # a baseline costs a second: no job, the rule exports it
            target, args, spec = "workflow.stages:random_init_job", (cfg, run_id), None
        else:
            target, args = "workflow.stages:pretrain_job", (cfg, run_id)
            spec = launch_spec(experiment, resources, run_dir / "submitit", f"pretrain-{run}")
        result, record = run_job(target, args, spec=spec or LaunchSpec(cluster="inline"), run_dir=run_dir,
                                 uri=uri, run_id=run_id)
        bookkeeping("finish_run", in_process=here, tracking_uri=uri, run_id=run_id,
                    journal=str(run_dir / "metrics.jsonl"), launches=Launches(run_dir).read(),
                    artifacts={result["backbone"]: "backbone"})
        return result

    result = tracked(uri, run_id, run_dir, work, in_process=here)
    out = {"run": run, "run_id": run_id, "backbone": str(Path(result["backbone"]).resolve()), "config": cfg,
           "metrics": result["metrics"], "launch": record.as_dict(), "launches": Launches(run_dir).read()}
    write_json(Path(output), out)
    return out


def evaluate(experiment_file: str | Path, evaluation: str, run: str, pretrain_record: str | Path,
             output: str | Path, resources: Mapping[str, Any], tree: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one evaluation protocol on one pretraining run's backbone, as a nested MLflow run."""
    experiment, uri, tree = load_experiment(experiment_file, tree)
    spec_eval = experiment.evaluation(evaluation)
    pre = json.loads(Path(pretrain_record).read_text())
    out_dir = experiment.eval_dir(evaluation, run)
    here = experiment.launcher == "inline"
    started = bookkeeping("start_evaluation_run", in_process=here, tree=tree, tracking_uri=uri,
                          evaluation=evaluation, run=run, pretrain_record=str(pretrain_record))
    run_id = started["run_id"]
    fields = {"protocol": spec_eval.protocol, "backbone": pre["backbone"], "config": pre["config"],
              "output_dir": str(out_dir.resolve()), "feature_cache": str((experiment.output / "features").resolve()),
              "options": started["options"], "run_id": run_id, "tracking_uri": uri, "experiment": experiment.name,
              "features": {split: str(experiment.feature_file(run, split).resolve())
                           for split in experiment.feature_splits(evaluation)}}
    record: LaunchRecord | None = None

    def work() -> dict[str, Any]:
        nonlocal record
        spec = launch_spec(experiment, resources, out_dir / "submitit", f"{evaluation}-{run}")
        metrics, record = run_job("workflow.stages:evaluate_job", (fields,), spec=spec, run_dir=out_dir, uri=uri,
                                  run_id=run_id)
        bookkeeping("finish_run", in_process=here, tracking_uri=uri, run_id=run_id,
                    journal=str(out_dir / "metrics.jsonl"), launches=Launches(out_dir).read())
        return metrics

    metrics = tracked(uri, run_id, out_dir, work, in_process=here)
    out = {"evaluation": evaluation, "protocol": spec_eval.protocol, "run": run, "run_id": run_id,
           "pretrain_run_id": pre["run_id"], "metrics": metrics, "launch": record.as_dict(),
           "launches": Launches(out_dir).read()}
    write_json(Path(output), out)
    return out


def features(tree: Mapping[str, Any], run: str, split: str, pretrain_record: str | Path, output: str | Path,
             resources: Mapping[str, Any]) -> dict[str, Any]:
    """The features rule: extract one run's backbone features on one split through the launcher, into
    ``output`` (`Experiment.feature_file`), which every evaluation of the run that reads them is given. No
    MLflow run: the file carries what it was computed from (`evals.features`)."""
    experiment = build_experiment(tree)
    experiment.feature_reader(run, split)  # some evaluation reads them (else: one line saying none does)
    expected = experiment.feature_file(run, split)
    if Path(output).resolve() != expected.resolve():
        raise StageError(f"feature file {output} is not the one the experiment names for run {run}, split {split} "
                         f"({expected})")
    pre = json.loads(Path(pretrain_record).read_text())
    job_dir = experiment.feature_job_dir(run, split)

    def work() -> dict[str, Any]:
        spec = launch_spec(experiment, resources, job_dir / "submitit", f"features-{run}-{split}")
        result, _ = run_job("workflow.stages:features_job",
                            (pre["backbone"], pre["config"], split, str(Path(output).resolve())),
                            spec=spec, run_dir=job_dir)
        return result

    result = tracked(None, None, job_dir, work)
    log.info("features of run %s on %s: %s -> %s (%s)", run, split, result["shape"], output,
             "kept" if result["reused"] else "extracted")
    return result


def write_split(tree: Mapping[str, Any], run: str, fraction: float, output: Path) -> int:
    """The label_split rule: a short local step (it reads the data set's file list), no job."""
    from workflow.stages import label_split

    experiment = build_experiment(tree)
    written = label_split(experiment, run, fraction)
    if written.resolve() != output.resolve():
        raise StageError(f"split file {output} is not the one the experiment names for run {run} ({written})")
    log.info("label split %s: %d images (%g of run %s's training set)", written,
             len(written.read_text().splitlines()), fraction, run)
    return 0


def write_scenes(tree: Mapping[str, Any], run: str, fmt: str, output: Path) -> int:
    """The detection_scenes rule: a short local step rendering the offline detection data, no job."""
    from workflow.stages import detection_scenes

    written = detection_scenes(build_experiment(tree), run, fmt)
    if written.resolve() != output.resolve():
        raise StageError(f"scenes manifest {output} is not the one the experiment names for run {run} ({written})")
    counts = json.loads(written.read_text())["counts"]
    log.info("%s digit scenes %s: %s", fmt, written.parent,
             ", ".join(f"{split} {c['images']} images / {c['objects']} digits" for split, c in counts.items()))
    return 0


def write_videos(tree: Mapping[str, Any], run: str, task: str, output: Path) -> int:
    """The tracking_videos rule: a short local step rendering the offline tracking data, no job."""
    from workflow.stages import tracking_videos

    written = tracking_videos(build_experiment(tree), run, task)
    if written.resolve() != output.resolve():
        raise StageError(f"videos manifest {output} is not the one the experiment names for run {run} ({written})")
    counts = json.loads(written.read_text())["counts"]
    log.info("%s digit videos %s: %s", task, written.parent, ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def write_transfer_set(tree: Mapping[str, Any], run: str, dataset: str, output: Path) -> int:
    """The transfer_sets rule: a short local step rendering one offline transfer data set, no job."""
    from workflow.stages import transfer_set

    written = transfer_set(build_experiment(tree), run, dataset)
    if written.resolve() != output.resolve():
        raise StageError(f"transfer set manifest {output} is not the one the experiment names for run {run} "
                         f"({written})")
    log.info("%s miniature %s: %s", dataset, written.parent, json.loads(written.read_text()).get("counts", {}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow.stage", description=__doc__.split("\n")[0])
    parser.add_argument("--log", help="also write this command's lines to this file (the rule's log)")
    sub = parser.add_subparsers(dest="stage", required=True)
    exp = sub.add_parser("experiment", help="create the MLflow experiment; record it with the experiment config")
    exp.add_argument("--config", required=True, help="the experiment config as JSON")
    exp.add_argument("--output", required=True)
    split = sub.add_parser("split", help="write the class-balanced label subset of a run's training set")
    split.add_argument("--config", required=True, help="the experiment config as JSON")
    split.add_argument("--run", required=True, help="a pretraining run on the data to split")
    split.add_argument("--fraction", required=True, type=float)
    split.add_argument("--output", required=True, help="the split file (must be the one the experiment names)")
    scenes = sub.add_parser("scenes", help="write the digit scenes of a run's offline detection evaluations")
    scenes.add_argument("--config", required=True, help="the experiment config as JSON")
    scenes.add_argument("--run", required=True, help="a pretraining run on the data the scenes are drawn like")
    scenes.add_argument("--format", required=True, choices=("voc", "coco"))
    scenes.add_argument("--output", required=True, help="the scenes' manifest (must be the one the experiment names)")
    videos = sub.add_parser("videos", help="write the digit videos of a run's offline tracking evaluations")
    videos.add_argument("--config", required=True, help="the experiment config as JSON")
    videos.add_argument("--run", required=True, help="a pretraining run on the data the videos are drawn like")
    videos.add_argument("--task", required=True, choices=sorted(TRACKING_TASKS))
    videos.add_argument("--output", required=True, help="the videos' manifest (must be the one the experiment names)")
    tset = sub.add_parser("transfer-set", help="write the offline miniature of a transfer data set (or of a data set "
                          "a probe reads instead of its run's) for a run")
    tset.add_argument("--config", required=True, help="the experiment config as JSON")
    tset.add_argument("--run", required=True, help="a pretraining run on the data the set is drawn like")
    tset.add_argument("--dataset", required=True, choices=(*TRANSFER_DATASETS, *GENERATED_PROBE_SETS.values()))
    tset.add_argument("--output", required=True, help="the set's manifest (must be the one the experiment names)")
    feat = sub.add_parser("features", help="extract one run's backbone features on one split")
    feat.add_argument("--config", required=True, help="the experiment config as JSON")
    feat.add_argument("--run", required=True)
    feat.add_argument("--split", required=True)
    feat.add_argument("--pretrain", required=True, help="the pretraining run's record")
    feat.add_argument("--resources", default="{}", help="the rule's resources as JSON")
    feat.add_argument("--output", required=True, help="the feature file (must be the one the experiment names)")
    pre = sub.add_parser("pretrain", help="pretrain one run")
    ev = sub.add_parser("evaluate", help="evaluate one run's backbone with one evaluation")
    ev.add_argument("--evaluation", required=True)
    ev.add_argument("--pretrain", required=True, help="the pretraining run's record")
    for stage in (pre, ev):
        stage.add_argument("--experiment", required=True, help="the experiment record (mlflow_experiment.json)")
        stage.add_argument("--config", help="the experiment config as JSON (default: the record's)")
        stage.add_argument("--run", required=True)
        stage.add_argument("--resources", default="{}", help="the rule's resources as JSON")
        stage.add_argument("--output", required=True)
    return parser


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=handlers, force=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log)
    name = [args.stage, *filter(None, (getattr(args, key, None) for key in ("evaluation", "run", "split")))]
    try:
        with interrupts_raise():  # SIGTERM (Snakemake or the login session killed) like Ctrl-C
            return _run(args)
    except (KeyboardInterrupt, Interrupted) as exc:
        log.error("%s: %s", " ".join(name), str(exc) or "interrupted")
        return 130
    except (StageError, LaunchError) as exc:
        log.error("%s failed: %s", " ".join(name), exc)
        return 1
    except Exception as exc:  # a bad config or record: one line naming it, the traceback only in debug logs
        log.debug("traceback", exc_info=True)
        log.error("%s failed: %s: %s", " ".join(name), type(exc).__name__, exc)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.stage == "experiment":
        record = bookkeeping("create_experiment", tree=json.loads(args.config), output=args.output)
        log.info("MLflow experiment %s (id %s) in %s", record["experiment"], record["experiment_id"],
                 record["tracking_uri"])
        return 0
    if args.stage == "split":
        return write_split(json.loads(args.config), args.run, args.fraction, Path(args.output))
    if args.stage == "scenes":
        return write_scenes(json.loads(args.config), args.run, args.format, Path(args.output))
    if args.stage == "videos":
        return write_videos(json.loads(args.config), args.run, args.task, Path(args.output))
    if args.stage == "transfer-set":
        return write_transfer_set(json.loads(args.config), args.run, args.dataset, Path(args.output))
    if args.stage == "features":
        features(json.loads(args.config), args.run, args.split, args.pretrain, args.output,
                 json.loads(args.resources))
        return 0
    tree = json.loads(args.config) if args.config else None
    if args.stage == "pretrain":
        pretrain(args.experiment, args.run, args.output, json.loads(args.resources), tree)
    else:
        evaluate(args.experiment, args.evaluation, args.run, args.pretrain, args.output, json.loads(args.resources),
                 tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
