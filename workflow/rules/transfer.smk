# What transfer evaluations on the offline digits need before their jobs start: the miniature of each data set of
# paper Table 8 they read; and the stand-in of the data set a probe with option dataset reads instead of its run's
# (paper Table 9's ImageNet column: an ImageFolder tree of other digits). Data sets on disk (datasets.transfer,
# datasets.<key>) need none.

localrules:
    transfer_sets,


rule transfer_sets:
    # The offline miniature of a transfer data set, or a probe's stand-in (evals/transfer_sets.py: digits in the
    # layout torchvision reads for it), drawn like a run's pretraining digits, one folder per data identity and set.
    output:
        f"{OUT}/data/{{transfer}}/manifest.json",
    log:
        f"{OUT}/logs/transfer_sets/{{transfer}}.log",
    wildcard_constraints:
        transfer=r"digit-transfer-[A-Za-z0-9_.-]+",
    params:
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
        run=lambda wc: EXPERIMENT.transfer_sets()[wc.transfer][0],
        dataset=lambda wc: EXPERIMENT.transfer_sets()[wc.transfer][1],
    shell:
        "{params.stage} --log {log:q} transfer-set --config {params.config} --run {params.run:q}"
        " --dataset {params.dataset:q} --output {output:q}"
