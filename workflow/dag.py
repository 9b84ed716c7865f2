"""Helpers of the Snakefile's rules (workflow/rules/*.smk): light, imported when Snakemake parses the DAG."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workflow.experiment import Experiment

# A heavy rule runs this light command, which submits the stage's job and waits (workflow/stage.py).
PYTHON = shlex.quote(sys.executable)  # the interpreter Snakemake runs in: the project's environment
STAGE = f"{PYTHON} -m workflow.stage"
SLURM_COMMANDS = ("sbatch", "srun")  # what submitit runs to submit a job and to start its tasks
SNAKEMAKE_BOOKKEEPING = ("tmpdir", "mem", "mem_mib", "disk", "disk_mib")


class Untracked:
    """A param that reaches the command but is not a rerun trigger: Snakemake compares params of plain types
    between runs, and a finished pretraining must not run again because the interpreter's path or the
    profile's partition changed."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def stage_resources(wildcards: Any, resources: Any) -> Untracked:
    """A job's resources (the profile's default-resources included) as the stage command's --resources JSON."""
    values = {key: value for key, value in dict(resources).items()
              if not key.startswith("_") and key not in SNAKEMAKE_BOOKKEEPING}
    return Untracked(shlex.quote(json.dumps(values, sort_keys=True)))


def job_threads(experiment: Experiment, resources_of: Callable[[Any], Any]) -> Any:
    """Cores a rule takes from Snakemake's --cores: the job's cpus_per_task when the job runs on this machine
    (launchers inline/debug/local), so that `--cores 2` runs one two-thread job at a time instead of several
    that slow each other down; 1 for SLURM jobs, whose rule only waits on the login node."""
    if experiment.launcher == "slurm":
        return 1
    return lambda wildcards: resources_of(wildcards).resources.get("cpus_per_task", 2)


def where_results_are(experiment: Experiment, experiment_record: str | Path) -> str:
    """What `onsuccess` prints: where the tables, figures and logs landed, and how to browse the MLflow runs."""
    record = Path(experiment_record)
    uri = json.loads(record.read_text())["tracking_uri"] if record.exists() else experiment.tracking_uri
    lines = [f"Results of experiment {experiment.name!r}:"]
    lines += [f"  {name + ':':8} {(experiment.output / name).resolve()}" for name in ("tables", "figures", "logs")]
    if uri:
        lines.append(f"  {'runs:':8} mlflow ui --backend-store-uri {shlex.quote(uri)}")
    return "\n".join(lines)


def missing_launcher_commands(launcher: str, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why this machine cannot launch the experiment's jobs, in one line (None when it can): launcher slurm needs
    SLURM's commands on PATH. Checked by the Snakefile's onstart, before any rule, instead of every heavy rule
    failing on its own with submitit's 'Could not detect "srun"'. A dry run plans a campaign anywhere."""
    if launcher != "slurm":
        return None
    for command in SLURM_COMMANDS:
        if which(command) is None:
            return (f"launcher slurm: {command} not found on PATH; run on a SLURM login node, "
                    "or use launcher=local")
    return None
