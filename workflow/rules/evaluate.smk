# Evaluations: one job per (evaluation, pretraining run), nested under the pretraining run in MLflow.

rule evaluate:
    input:
        pretrain=f"{OUT}/pretrain/{{run}}/pretrain.json",
    output:
        f"{OUT}/eval/{{evaluation}}/{{run}}/result.json",
    threads: job_threads(lambda wc: EXPERIMENT.evaluation(wc.evaluation))
    resources:
        nodes=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("nodes", 1),
        gpus_per_node=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("gpus_per_node", 0),
        cpus_per_task=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("cpus_per_task", 2),
        mem_mb=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("mem_mb", 8000),
        runtime=lambda wc: EXPERIMENT.evaluation(wc.evaluation).resources.get("runtime", 60),
    run:
        stages.evaluate(EXPERIMENT, wildcards.evaluation, wildcards.run, input.pretrain, output[0],
                        dict(resources))
