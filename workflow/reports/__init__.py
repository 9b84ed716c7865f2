"""Reporting: run tables, the paper's tables and figures, all read back from MLflow."""
