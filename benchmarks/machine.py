"""The machine a sweep ran on: CPU model, cores, load, library versions, threads, GPU."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from typing import Dict, Optional, Tuple


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _installed_version(distribution: str) -> Optional[str]:
    # From the metadata, not by importing: importing TorchRec loads FBGEMM, which takes seconds.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_revision() -> Optional[str]:
    """The recspec commit measured: `git describe` of this checkout (with "-dirty" when it has
    uncommitted changes), else $RECSPEC_COMMIT (for a copy of the tree without .git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return os.environ.get("RECSPEC_COMMIT")


def _cpu_times() -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def others_busy(interval_s: float = 1.0) -> Optional[float]:
    """Fraction of the machine's CPU time used over `interval_s` while this process sleeps:
    what other programs take (0 = quiet, 1 = every core busy); None where /proc/stat is absent."""
    before = _cpu_times()
    time.sleep(interval_s)
    after = _cpu_times()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def wait_until_quiet(max_wait_s: float, threshold: float = 0.15) -> Optional[float]:
    """Probe `others_busy` until it is below `threshold` or `max_wait_s` has passed (a 2-thread
    torch op slows down many times over while another program holds one of two cores);
    returns the last probe."""
    deadline = time.monotonic() + max_wait_s
    busy = others_busy()
    while busy is not None and busy >= threshold and time.monotonic() < deadline:
        busy = others_busy()
    return busy


def describe() -> Dict[str, object]:
    import numba
    import numpy
    import torch

    info: Dict[str, object] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torchrec": _installed_version("torchrec"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "recspec": source_revision(),
    }
    return info
