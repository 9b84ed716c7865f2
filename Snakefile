# The MEC pipeline: pretraining -> evaluations -> tables, one DAG for a laptop or a SLURM cluster.
#
#   snakemake --cores 2                  the default experiment (offline digits), locally
#   snakemake --profile slurm            the same DAG, heavy rules submitted to SLURM through submitit
#   snakemake --configfile X.yaml ...    another experiment config (see workflow/experiments/)
#   snakemake --config experiment=table1 a shipped experiment config by name

import sys
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

from mec.config import ConfigError
from workflow.experiment import (build_experiment, check_data_roots, check_schema, config_source,
                                 shipped_experiment)
from workflow.plan import print_plan_on_dry_run

min_version("9.0")

# Without --configfile: the default experiment, or the shipped one named by --config experiment=NAME (table1 or
# mec-table1), with any other --config values (e.g. the profile's launcher) on top.
# (The configfile directive would deep-merge the default's run groups into every other experiment.)
SHIPPED = None  # the shipped experiment config read, when no --configfile was given
if not workflow.config_settings.configfiles:
    try:
        SHIPPED = shipped_experiment(config.pop("experiment", "default"))
    except ConfigError as exc:
        sys.exit(str(exc))
    config.update({**yaml.safe_load(SHIPPED.read_text()), **config})
# A mistake in the config stops here in one line naming the file, the key and what was expected (not
# jsonschema's dump of the schema, nor a traceback), before any rule runs.
SOURCE = config_source(workflow.config_settings.configfiles, workflow.config_settings.config, SHIPPED)
try:
    check_schema(config, SOURCE)
    validate(config, "workflow/schemas/experiment.schema.yaml")  # valid now; sets the schema's defaults
    EXPERIMENT = build_experiment(config)
    check_data_roots(EXPERIMENT)  # a missing data folder stops here, naming the key, not hours later in a job
except ConfigError as exc:
    sys.exit(str(exc) if str(exc).startswith(SOURCE) else f"{SOURCE}: {exc}")
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


onstart:
    # Before the first job (not in a dry run, which plans a SLURM campaign on any machine).
    if missing := missing_launcher_commands(EXPERIMENT.launcher):
        sys.exit(missing)


onsuccess:
    print(where_results_are(EXPERIMENT, EXPERIMENT_RECORD))
