# Evaluations: one job per (evaluation, pretraining run), nested under the pretraining run in MLflow.

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
        "{params.stage} --log {log} split --config {params.config} --run {params.run} --fraction {params.fraction}"
        " --output {output}"


rule evaluate:
    input:
        experiment=EXPERIMENT_RECORD,
        pretrain=f"{OUT}/pretrain/{{run}}/pretrain.json",
        split=lambda wc: EXPERIMENT.split_inputs(wc.evaluation, wc.run),
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
        "{params.stage} --log {log} evaluate --experiment {input.experiment} --config {params.config}"
        " --evaluation {wildcards.evaluation} --run {wildcards.run} --pretrain {input.pretrain}"
        " --resources {params.resources} --output {output}"
