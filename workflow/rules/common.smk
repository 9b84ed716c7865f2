# Shared by every stage: the run-name wildcard, and the MLflow experiment, created once before any job.

wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    evaluation=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def job_threads(resources_of):
    """Cores a rule takes from Snakemake's --cores: the job's cpus_per_task when the job runs on this machine
    (launchers inline/debug/local), so that `--cores 2` runs one two-thread job at a time instead of several
    that slow each other down; 1 for SLURM jobs, whose rule only waits on the login node."""
    if EXPERIMENT.launcher == "slurm":
        return 1
    return lambda wildcards: resources_of(wildcards).resources.get("cpus_per_task", 2)


localrules:
    mlflow_experiment,


rule mlflow_experiment:
    output:
        f"{OUT}/mlflow_experiment.json",
    run:
        stages.create_experiment(EXPERIMENT, output[0])

