# Evaluations: one job per (evaluation, pretraining run), nested under the pretraining run in MLflow.

rule evaluate:
    input:
        experiment=EXPERIMENT_RECORD,
        pretrain=f"{OUT}/pretrain/{{run}}/pretrain.json",
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
