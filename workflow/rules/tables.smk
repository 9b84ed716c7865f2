# Tables and figures: read back from MLflow once every pretraining run and evaluation has its record, by the
# same command a user runs (`mec tables`, workflow/reports/regenerate.py). Both rules are light: they run on
# this machine (a login node under SLURM) in a process of their own, with their output in a log file.

import os
import shlex
import sys

localrules:
    tables,
    figure_taylor,

MEC_COMMAND = f"{shlex.quote(sys.executable)} -m workflow.cli"  # the `mec` command of this environment
# The experiment, its store (unset: resolved as the stages resolve it) and where the report run goes: the
# experiment itself, beside its runs.
TABLES_ARGUMENTS = shlex.join(["--experiment", EXPERIMENT.name, "--log-experiment", EXPERIMENT.name,
                               *(["--tracking-uri", EXPERIMENT.tracking_uri] if EXPERIMENT.tracking_uri else [])])


rule tables:
    input:
        pretrain=[str(EXPERIMENT.pretrain_record(run)) for run in EXPERIMENT.runs],
        taylor=f"{OUT}/figures/taylor_error.png",  # so that Figure 6 is logged with the others
        evaluations=[str(path) for path in EXPERIMENT.eval_records()],
    output:
        csv=f"{OUT}/tables/summary.csv",
        md=f"{OUT}/tables/summary.md",
    params:
        mec=MEC_COMMAND,
        arguments=TABLES_ARGUMENTS,
        tables=lambda wildcards, output: os.path.dirname(output.md),
        figures=lambda wildcards, input: os.path.dirname(input.taylor),
    log:
        f"{OUT}/logs/tables.log",
    shell:
        "{params.mec} tables {params.arguments} --out {params.tables:q} --figures {params.figures:q} > {log:q} 2>&1"


rule figure_taylor:
    # Paper Figure 6: errors are hardware independent, times are this machine's (the CSV and figure say so).
    output:
        png=f"{OUT}/figures/taylor_error.png",
        csv=f"{OUT}/figures/taylor_error.csv",
        by_lambda_png=f"{OUT}/figures/taylor_error_by_lambda.png",  # the error by lambda * m (synthetic views)
        by_lambda_csv=f"{OUT}/figures/taylor_error_by_lambda.csv",
    params:
        mec=MEC_COMMAND,
    log:
        f"{OUT}/logs/figure_taylor.log",
    shell:
        "{params.mec} taylor-figure --out {output.png:q} > {log:q} 2>&1"
