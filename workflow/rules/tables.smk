# Tables: read back from MLflow once every pretraining run and evaluation has its record.

localrules:
    tables,
    figure_taylor,


rule tables:
    input:
        pretrain=[str(EXPERIMENT.pretrain_record(run)) for run in EXPERIMENT.runs],
        taylor=f"{OUT}/figures/taylor_error.png",  # so that Figure 6 is logged with the others
        evaluations=[str(path) for path in EXPERIMENT.eval_records()],
    output:
        csv=f"{OUT}/tables/summary.csv",
        md=f"{OUT}/tables/summary.md",
    run:
        stages.tables(EXPERIMENT, output.md)


rule figure_taylor:
    # Paper Figure 6: errors are hardware independent, times are this machine's (the CSV and figure say so).
    output:
        png=f"{OUT}/figures/taylor_error.png",
        csv=f"{OUT}/figures/taylor_error.csv",
    run:
        stages.taylor_figure(EXPERIMENT, output.png)
