# The MEC pipeline: pretraining -> evaluations -> tables, one DAG for a laptop or a SLURM cluster.
#
#   snakemake --cores 2                  the default experiment (offline digits), locally
#   snakemake --profile slurm            the same DAG, heavy rules submitted to SLURM through submitit
#   snakemake --configfile X.yaml ...    another experiment config (see workflow/experiments/)

from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

from workflow.experiment import build_experiment, check_data_roots
from workflow.plan import print_plan_on_dry_run

min_version("9.0")

# Without --configfile: the default experiment, with any --config values (e.g. the profile's launcher) on top.
# (The configfile directive would deep-merge the default's run groups into every other experiment.)
if "experiment" not in config:
    default = Path(workflow.current_basedir) / "workflow" / "experiments" / "default.yaml"
    config.update({**yaml.safe_load(default.read_text()), **config})
validate(config, "workflow/schemas/experiment.schema.yaml")

EXPERIMENT = build_experiment(config)
check_data_roots(EXPERIMENT)  # a missing data folder stops here, naming the key, not hours later in a job
print_plan_on_dry_run(EXPERIMENT)  # snakemake -n: the jobs with their GPUs and GPU hours
OUT = str(EXPERIMENT.output)

include: "workflow/rules/common.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/detection.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        rules.tables.output,
    default_target: True


onsuccess:
    print(where_results_are(EXPERIMENT, EXPERIMENT_RECORD))
