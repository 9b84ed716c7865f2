# Shared by every stage: the run-name wildcard, and the MLflow experiment, created once before any job.

wildcard_constraints:
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    evaluation=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


localrules:
    mlflow_experiment,


rule mlflow_experiment:
    output:
        f"{OUT}/mlflow_experiment.json",
    run:
        stages.create_experiment(EXPERIMENT, output[0])

