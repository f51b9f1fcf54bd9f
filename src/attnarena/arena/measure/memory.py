"""Peak memory of one call, on CUDA (allocator statistics) and on Linux CPUs (peak RSS).

On CPU the kernel's high-water mark of resident memory is reset through
/proc/self/clear_refs before the call and read from /proc/self/status after it; the peak
is reported relative to the resident size at the start, after returning freed heap to the
system so that reused pages do not hide new allocations.
"""
from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager; ``.peak_bytes`` is the extra memory at the peak, or None if unknown."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak_bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _trim_heap()
            self._start = _status_kib("VmRSS")
            try:
                _CLEAR.write_text("5")
            except OSError:
                self._start = None
        return self

    def restart(self) -> float | None:
        """Start a new peak from here, against the same baseline (a CPU's resident size
        when the block began): returns the peak so far in bytes (None if unknown). A
        second phase's peak then counts what the first phase left allocated, not its
        transient peak (decoding after a prefill)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            so_far = torch.cuda.max_memory_allocated(self.device) - self._start
            torch.cuda.reset_peak_memory_stats(self.device)
            return so_far
        if self._start is None:
            return None
        peak = _status_kib("VmHWM")
        _trim_heap()  # what the first phase freed leaves the resident size
        try:
            _CLEAR.write_text("5")
        except OSError:
            return None
        return None if peak is None else max(0, peak - self._start) * 1024

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start is not None:
            peak = _status_kib("VmHWM")
            if peak is not None:
                self.peak_bytes = max(0, peak - self._start) * 1024
        return False
