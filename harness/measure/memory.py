"""Peak memory per phase, read after the phase rather than polled where possible.

CPU: the kernel's resident high-water mark (VmHWM) is reset through /proc/self/clear_refs
before a phase and read after it, so the peak belongs to that phase; it is reported above the
RSS at phase start. Where the reset is refused the method name says the peak is since process
start. CUDA: the caching allocator's peak allocated and reserved bytes (reset per phase) and,
when NVML sees the GPU, the process's device memory from a light polling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False when the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PhaseResult(dict):
    """Metric name -> bytes, plus ``method`` naming how they were measured."""


@contextmanager
def track_phase(device: str) -> Iterator[PhaseResult]:
    """Measure the peak memory of the ``with`` body; fills the yielded dict on exit."""
    result = PhaseResult()
    if device == "cuda":
        with _track_cuda(result):
            yield result
    else:
        with _track_cpu(result):
            yield result


@contextmanager
def _track_cpu(result: PhaseResult) -> Iterator[None]:
    import gc

    gc.collect()
    was_reset = reset_hwm()
    start = rss_bytes()
    yield
    peak = (_status_kib("VmHWM") or 0) * 1024 or rss_bytes()
    result["method"] = "cpu-vmhwm" if was_reset else "cpu-vmhwm-since-start"
    result["peak_rss_bytes"] = peak
    result["peak_rss_delta_bytes"] = max(0, peak - start)
    result["peak_above_start_bytes"] = max(0, peak - start)


@contextmanager
def _track_cuda(result: PhaseResult) -> Iterator[None]:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    poller = NvmlPoller()
    poller.start()
    try:
        yield
    finally:
        torch.cuda.synchronize()
        poller.stop()
    result["method"] = "cuda-allocator"
    result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    result["peak_allocated_delta_bytes"] = torch.cuda.max_memory_allocated() - start
    result["peak_above_start_bytes"] = torch.cuda.max_memory_allocated() - start
    if poller.peak is not None:
        result["peak_nvml_process_bytes"] = poller.peak


class NvmlPoller:
    """Polls NVML for this process's GPU memory every 50 ms on a daemon thread.

    The sleep keeps it off the CPU the workload needs; it records nothing when NVML is absent.
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def start(self) -> None:
        try:
            import os

            import pynvml
            import torch

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self._pid = os.getpid()
        except Exception:  # no NVML: the allocator numbers still stand
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import pynvml

        while not self._stop.is_set():
            try:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                used = sum(p.usedGpuMemory or 0 for p in procs if p.pid == self._pid)
                self.peak = max(self.peak or 0, used)
            except Exception:
                return
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


def phase_rows(phase: str, result: PhaseResult) -> list[dict[str, Any]]:
    """Tidy rows for one phase's memory numbers."""
    method = result.get("method", "")
    return [
        {"metric": f"{phase}_{name}", "value": float(value), "unit": "bytes", "method": method}
        for name, value in result.items()
        if name != "method"
    ]
