# Pretraining: one job per expanded run (config x grid x seed), launched through workflow.launch.

rule pretrain:
    input:
        experiment=EXPERIMENT_RECORD,
    output:
        f"{OUT}/pretrain/{{run}}/pretrain.json",
    log:
        f"{OUT}/logs/pretrain/{{run}}.log",
    threads: job_threads(EXPERIMENT, lambda wc: EXPERIMENT.run(wc.run))
    resources:
        nodes=lambda wc: EXPERIMENT.run(wc.run).resources.get("nodes", 1),
        gpus_per_node=lambda wc: EXPERIMENT.run(wc.run).resources.get("gpus_per_node", 0),
        cpus_per_task=lambda wc: EXPERIMENT.run(wc.run).resources.get("cpus_per_task", 2),
        mem_mb=lambda wc: EXPERIMENT.run(wc.run).resources.get("mem_mb", 8000),
        runtime=lambda wc: EXPERIMENT.run(wc.run).resources.get("runtime", 60),
    params:
        resources=stage_resources,
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
    shell:
        "{params.stage} --log {log:q} pretrain --experiment {input.experiment:q} --config {params.config}"
        " --run {wildcards.run} --resources {params.resources} --output {output:q}"
