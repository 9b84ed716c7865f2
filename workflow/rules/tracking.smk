# What tracking evaluations on the offline digits need before their jobs start: the digit videos they track in, in
# the layout of the task's benchmark (DAVIS, OTB, MOTChallenge, ...). Benchmarks on disk (datasets.<key>) need none.

localrules:
    tracking_videos,


rule tracking_videos:
    # Videos of moving digits (evals/tracking/videos.py) in the style of a run's pretraining digits, one folder per
    # data identity and layout: every run on that data tracks in the same files.
    output:
        f"{OUT}/data/{{videos}}/manifest.json",
    log:
        f"{OUT}/logs/tracking_videos/{{videos}}.log",
    wildcard_constraints:
        videos=r"digit-videos-[A-Za-z0-9_.-]+",
    params:
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
        run=lambda wc: EXPERIMENT.tracking_videos()[wc.videos][0],
        task=lambda wc: EXPERIMENT.tracking_videos()[wc.videos][1],
    shell:
        "{params.stage} --log {log:q} videos --config {params.config} --run {params.run:q} --task {params.task:q}"
        " --output {output:q}"

