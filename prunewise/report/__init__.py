"""Tables, plots and reports."""

from prunewise.report.html import build_report
from prunewise.report.tables import (
    analysis_records,
    format_table,
    group_rows,
    layer_rows,
    summary_rows,
)

__all__ = [
    "analysis_records",
    "build_report",
    "format_table",
    "group_rows",
    "layer_rows",
    "summary_rows",
]
