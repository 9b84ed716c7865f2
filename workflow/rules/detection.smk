# What detection evaluations need before their jobs start: detectron2 in this environment (the project's pinned
# install step: an importable detectron2, e.g. built from source on a GPU cluster, is kept as it is) and, for the
# offline recipes, the digit scenes they train and test on.

localrules:
    detectron2,
    detection_scenes,


rule detectron2:
    output:
        EXPERIMENT.detectron2_record(),
    log:
        f"{OUT}/logs/detectron2.log",
    params:
        python=PYTHON_COMMAND,
    shell:
        "{params.python} -m workflow.detectron2_install --record {output:q} > {log:q} 2>&1"


rule detection_scenes:
    # Digit scenes (evals/detection/scenes.py) in VOC or COCO 2017 layout, in the style of a run's pretraining
    # digits, one folder per data identity and format: every run on that data trains and tests on the same files.
    output:
        f"{OUT}/data/{{scenes}}/manifest.json",
    log:
        f"{OUT}/logs/detection_scenes/{{scenes}}.log",
    wildcard_constraints:
        scenes=r"digit-scenes-[A-Za-z0-9_.-]+",
    params:
        stage=STAGE_COMMAND,
        config=EXPERIMENT_CONFIG,
        run=lambda wc: EXPERIMENT.detection_scenes()[wc.scenes][0],
        format=lambda wc: EXPERIMENT.detection_scenes()[wc.scenes][1],
    shell:
        "{params.stage} --log {log:q} scenes --config {params.config} --run {params.run:q} --format {params.format:q}"
        " --output {output:q}"
