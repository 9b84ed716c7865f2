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
        "{params.python} -m workflow.detectron2_install --record {output} > {log} 2>&1"


rule detection_scenes:
    # Digit scenes (evals/detection/scenes.py) in VOC or COCO 2017 layout, deterministic, rewritten only when
    # their parameters change.
    output:
        f"{OUT}/data/digit-scenes-{{format}}/manifest.json",
    log:
        f"{OUT}/logs/detection_scenes/{{format}}.log",
    wildcard_constraints:
        format="voc|coco",
    params:
        folder=lambda wc, output: str(Path(output[0]).parent),
        python=PYTHON_COMMAND,
    shell:
        "{params.python} -m evals.detection.scenes --format {wildcards.format} --output {params.folder} > {log} 2>&1"
