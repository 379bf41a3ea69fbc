"""What the machine has free: memory for tensors, read when asked (never at import)."""

from __future__ import annotations

import os

import torch

__all__ = ["available_bytes", "free_if_short", "gigabytes"]


def available_bytes(device: torch.device) -> int | None:
    """Memory free for tensors on `device` now (bytes), or None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def free_if_short(needed: int | None, device: torch.device | None = None) -> int | None:
    """The bytes free on `device` (the CPU by default) when `needed` bytes exceed them; None
    when they fit, or when `needed` or the free memory cannot be told."""
    free = available_bytes(device or torch.device("cpu"))
    return free if needed is not None and free is not None and needed > free else None


def gigabytes(n: int) -> str:
    """Bytes as '12.3 GB' (GiB, as memory is counted)."""
    return f"{n / 2**30:.1f} GB"
