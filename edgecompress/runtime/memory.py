"""Process memory: peak resident set (VmHWM) and current RSS, from /proc where it exists,
else ``resource``/``psutil`` (optional: a board may have neither)."""

from __future__ import annotations

import sys
from pathlib import Path


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """The most resident memory this process has held (since start or the last
    :func:`reset_peak_rss`); ``None`` where the platform cannot tell."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes


def current_rss_bytes() -> int | None:
    """Resident memory now; ``None`` where neither /proc nor psutil is available."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Lower the peak-RSS mark to the current RSS (Linux >= 4.0: ``5`` into
    ``/proc/self/clear_refs``), so a later :func:`peak_rss_bytes` measures only what came
    after. Returns False where the mark cannot be reset (other OSes, locked-down /proc)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
