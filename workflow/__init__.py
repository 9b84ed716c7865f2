"""The Snakemake workflow's Python side: experiment configs (`experiment`) and the stage functions rules call."""
