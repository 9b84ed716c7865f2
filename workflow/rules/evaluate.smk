# Evaluations: one job per (evaluation, pretraining run), nested under the pretraining run in MLflow; before them,
# the label splits and frozen features they read, each written once by a job of its own rule.

localrules:
    label_split,


rule label_split:
    # A class-balanced label subset, written once and read by every evaluation (all runs, all methods) on its data.
    output:
        f"{OUT}/splits/{{split}}.txt",
    log:
        f"{OUT}/logs/splits/{{split}}.log",
    params:
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
        run=lambda wc: EXPERIMENT.label_splits()[wc.split][0],
        fraction=lambda wc: EXPERIMENT.label_splits()[wc.split][1],
    shell:
        "{params.stage} --log {log:q} split --config {params.config} --run {params.run:q} --fraction {params.fraction}"
        " --output {output:q}"


rule features:
    # Frozen features of one run's backbone on one split, extracted once by a job of their own and read by every
    # evaluation of the run whose protocol needs them (evals.FEATURE_SPLITS: kNN, t-SNE). No MLflow run: the file
    # carries the backbone's sha256 and the data identity it was computed from.
    input:
        pretrain=f"{OUT}/pretrain/{{run}}/pretrain.json",
    output:
        f"{OUT}/features/{{run}}/{{split}}.pt",
    log:
        f"{OUT}/logs/features/{{run}}/{{split}}.log",
    threads: job_threads(EXPERIMENT, lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split))
    resources:
        nodes=lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split).resources.get("nodes", 1),
        gpus_per_node=lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split).resources.get("gpus_per_node", 0),
        cpus_per_task=lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split).resources.get("cpus_per_task", 2),
        mem_mb=lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split).resources.get("mem_mb", 8000),
        runtime=lambda wc: EXPERIMENT.feature_reader(wc.run, wc.split).resources.get("runtime", 60),
    params:
        resources=stage_resources,
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
    shell:
        "{params.stage} --log {log:q} features --config {params.config} --run {wildcards.run}"
        " --split {wildcards.split} --pretrain {input.pretrain:q} --resources {params.resources} --output {output:q}"


rule evaluate:
    input:
        experiment=EXPERIMENT_RECORD,
        pretrain=f"{OUT}/pretrain/{{run}}/pretrain.json",
        split=lambda wc: EXPERIMENT.split_inputs(wc.evaluation, wc.run),
        features=lambda wc: EXPERIMENT.feature_inputs(wc.evaluation, wc.run),
        detection=lambda wc: EXPERIMENT.detection_inputs(wc.evaluation, wc.run),
        generated=lambda wc: EXPERIMENT.generated_inputs(wc.evaluation, wc.run),
    output:
        f"{OUT}/eval/{{evaluation}}/{{run}}/result.json",
    log:
        f"{OUT}/logs/eval/{{evaluation}}/{{run}}.log",
    threads: job_threads(EXPERIMENT, lambda wc: EXPERIMENT.evaluation(wc.evaluation))
    resources:
        nodes=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("nodes", 1),
        gpus_per_node=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("gpus_per_node", 0),
        cpus_per_task=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("cpus_per_task", 2),
        mem_mb=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("mem_mb", 8000),
        runtime=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("runtime", 60),
    params:
        resources=stage_resources,
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
    shell:
        "{params.stage} --log {log:q} evaluate --experiment {input.experiment:q} --config {params.config}"
        " --evaluation {wildcards.evaluation} --run {wildcards.run} --pretrain {input.pretrain:q}"
        " --resources {params.resources} --output {output:q}"
