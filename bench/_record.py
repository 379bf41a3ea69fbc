"""What every benchmark result records beside its figures: command, machine, date."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "header"]


def cpu_name() -> str:
    """CPU model name (from /proc/cpuinfo where there is one) and core count."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def header(commands: list[str]) -> dict[str, Any]:
    """The exact command, the prunewise commands it ran, the UTC date and the machine."""
    return {
        "command": " ".join([sys.executable, *sys.argv]),
        "prunewise_commands": commands,
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "python": platform.python_version()},
    }
