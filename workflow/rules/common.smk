# Shared by every stage: the run-name wildcard, the stage command, and the MLflow experiment, created once
# before any job, with the store every stage logs to (its record, mlflow_experiment.json).

import json
import shlex

from workflow.dag import (PYTHON, STAGE, Untracked, job_threads, missing_launcher_commands, stage_resources,
                          where_results_are)

wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    evaluation=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    split=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


STAGE_COMMAND = Untracked(STAGE)
PYTHON_COMMAND = Untracked(PYTHON)
EXPERIMENT_RECORD = f"{OUT}/mlflow_experiment.json"
# The experiment config reaches every stage command on its command line, as the Snakefile resolved it. Not a
# rerun trigger (a finished run is not redone because another group was added), and not a file either: a rule
# writing it would be rerun on each change, and Snakemake 9 then skips the jobs downstream of it that are
# missing (an ancient() input) or redoes all of them (a plain input).
EXPERIMENT_CONFIG = Untracked(shlex.quote(json.dumps(config, sort_keys=True)))


localrules:
    mlflow_experiment,


rule mlflow_experiment:
    output:
        EXPERIMENT_RECORD,
    params:
        config=EXPERIMENT_CONFIG,
        stage=STAGE_COMMAND,
    log:
        f"{OUT}/logs/mlflow_experiment.log",
    shell:
        "{params.stage} --log {log:q} experiment --config {params.config} --output {output:q}"
