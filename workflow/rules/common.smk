# Shared by every stage: the run-name wildcard, the stage command, and the MLflow experiment, created once
# before any job and recorded with the experiment config (the stage commands read both from that record).

import json
import shlex
import sys

wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    evaluation=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


# A heavy rule runs this light command, which submits the stage's job and waits (workflow/stage.py).
STAGE = f"{shlex.quote(sys.executable)} -m workflow.stage"
EXPERIMENT_RECORD = f"{OUT}/mlflow_experiment.json"


def job_threads(resources_of):
    """Cores a rule takes from Snakemake's --cores: the job's cpus_per_task when the job runs on this machine
    (launchers inline/debug/local), so that `--cores 2` runs one two-thread job at a time instead of several
    that slow each other down; 1 for SLURM jobs, whose rule only waits on the login node."""
    if EXPERIMENT.launcher == "slurm":
        return 1
    return lambda wildcards: resources_of(wildcards).resources.get("cpus_per_task", 2)


class StageResources:
    """A job's resources (the profile's default-resources included) as the stage command's --resources JSON.

    An object rather than a string on purpose: Snakemake reruns a job whose params of plain types changed, and
    a finished pretraining must not run again because the profile now names another partition.
    """

    def __init__(self, resources):
        self.values = {key: value for key, value in dict(resources).items()
                       if not key.startswith("_") and key not in ("tmpdir", "mem", "mem_mib", "disk", "disk_mib")}

    def __str__(self):
        return shlex.quote(json.dumps(self.values, sort_keys=True))


def stage_resources(wildcards, resources):
    return StageResources(resources)


def print_where_results_are():
    """What `onsuccess` prints: where the tables and figures landed, and how to browse the MLflow runs."""
    record = Path(EXPERIMENT_RECORD)
    uri = json.loads(record.read_text())["tracking_uri"] if record.exists() else EXPERIMENT.tracking_uri
    print(f"Results of experiment {EXPERIMENT.name!r}:\n"
          f"  tables:  {(EXPERIMENT.output / 'tables').resolve()}\n"
          f"  figures: {(EXPERIMENT.output / 'figures').resolve()}\n"
          f"  logs:    {(EXPERIMENT.output / 'logs').resolve()}")
    if uri:
        print(f"  runs:    mlflow ui --backend-store-uri {shlex.quote(uri)}")


localrules:
    mlflow_experiment,


rule mlflow_experiment:
    output:
        EXPERIMENT_RECORD,
    params:
        # A changed experiment config rewrites this record; the stages read it as ancient(), so finished
        # runs are not redone for it.
        config=json.dumps(config, sort_keys=True),
    log:
        f"{OUT}/logs/mlflow_experiment.log",
    shell:
        "{STAGE} --log {log} experiment --config {params.config:q} --output {output}"
