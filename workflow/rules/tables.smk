# Tables: read back from MLflow once every pretraining run and evaluation has its record.

localrules:
    tables,


rule tables:
    input:
        pretrain=[str(EXPERIMENT.pretrain_record(run)) for run in EXPERIMENT.runs],
        evaluations=[str(path) for path in EXPERIMENT.eval_records()],
    output:
        csv=f"{OUT}/tables/summary.csv",
        md=f"{OUT}/tables/summary.md",
    run:
        stages.tables(EXPERIMENT, output.md)
