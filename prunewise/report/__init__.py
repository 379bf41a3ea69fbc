"""Tables, plots and reports."""

from prunewise.report.deployment import deploy_rows, deployment_rows, latency_rows, speedup_rows
from prunewise.report.html import build_report
from prunewise.report.tables import (
    analysis_records,
    format_table,
    group_rows,
    iterations_table,
    layer_rows,
    summary_rows,
)

__all__ = [
    "analysis_records",
    "build_report",
    "deploy_rows",
    "deployment_rows",
    "format_table",
    "group_rows",
    "iterations_table",
    "latency_rows",
    "layer_rows",
    "speedup_rows",
    "summary_rows",
]
