"""Peak memory per phase, as what the phase needs rather than what the process happens to hold.

A phase's figure is ``peak_bytes`` = the model's live tensors at the phase start (weights,
quantization state, adapters, counted from the tensors themselves) + the process growth during
the phase above its start. Before the start, freed memory is handed back to the system
(``gc`` + glibc ``malloc_trim`` on CPU, ``empty_cache`` on CUDA), so pages left behind by
loading (a 4-bit model is built from fp32 first) are not counted, and neither are imported
libraries (~0.5 GB of a CPU process): those are what whole-process RSS adds, and RSS
ranks precisions backwards. A tracked phase runs with the allocator's ``memory`` settings
(:mod:`harness.measure.allocator`: freed tensors leave the process at once), which slow some
code down: workloads time their calls outside every tracked phase. Whole-process figures stay
available under their own names (``peak_rss_absolute_bytes``, NVML rows), never as the figure
tables, plots and claims use.

CPU: the growth is the kernel's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs) above the RSS at phase start; where the reset is refused the method says
so and only the absolute figure is reported. CUDA: the caching allocator's peak allocated bytes
(which already hold every live tensor) and peak reserved bytes; NVML's per-process and
whole-device memory from a light polling thread as separate rows. Inside a container NVML
reports host PIDs, so the per-process row is then missing with that reason, never 0.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.measure.allocator import heap_free_bytes, memory_window

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_NVML_NO_PID = (
    "NVML lists no process with this pid (in a container NVML reports host pids); "
    "see peak_nvml_device_bytes for the whole device"
)


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


def hwm_bytes() -> int:
    """Resident high-water mark since the last reset (or process start)."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib else rss_bytes()


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False when the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return False


def release_freed_memory(device: str) -> None:
    """Collect garbage and give freed allocator memory back to the system."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    _malloc_trim()


def make_resident(model: Any) -> None:
    """Touch one element per page of every CPU tensor of the model.

    Weights loaded from safetensors may be file-backed mappings that become resident only when
    first read; untouched, the first forward would show the whole model as phase growth.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            for plain in _plain_tensors(tensor):
                if plain.device.type != "cpu" or plain.numel() == 0 or not plain.is_contiguous():
                    continue  # a non-contiguous one is a view of a tensor that is touched
                step = max(1, 4096 // plain.element_size())
                plain.view(-1)[::step].sum()


def _plain_tensors(tensor: Any) -> list[Any]:
    """The plain tensors holding ``tensor``'s data: itself, or a tensor subclass's inner
    tensors (torchao's quantized weights), found through ``__tensor_flatten__`` (no detach:
    this also runs under ``inference_mode``, where subclasses refuse it)."""
    import torch

    if type(tensor) in (torch.Tensor, torch.nn.Parameter) or not hasattr(
        tensor, "__tensor_flatten__"
    ):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [t for n in names for t in _plain_tensors(getattr(tensor, n))]


class Baseline:
    """The process after loading: RSS (or CUDA allocated) and the model's live tensor bytes,
    taken once freed memory has been handed back. Phases measure their peak above it."""

    current: Baseline | None = None

    def __init__(self, held: int, live: dict[str, int], how: str) -> None:
        self.held, self.live, self.how = held, live, how


def take_baseline(model: Any, device: str) -> Baseline:
    """Record the post-load baseline that later phases of this process measure above."""
    if device != "cuda":
        make_resident(model)
    release_freed_memory(device)
    live = model_tensor_bytes(model)
    if device == "cuda":
        import torch

        held, how = torch.cuda.memory_allocated(), "cuda-allocator-allocated"
    else:
        held, how = rss_bytes(), "cpu-rss after gc and malloc_trim"
    Baseline.current = Baseline(held, live, how)
    return Baseline.current


def model_tensor_bytes(model: Any) -> dict[str, int]:
    """Live bytes of the model's own tensors: weights, quant_state, adapters, buffers and
    runtime_layouts.

    Counted from the stored tensors (each storage once, packed codes at their packed size), the
    same inventory the footprint workload uses; LoRA tensors are ``adapters``; a packed CPU
    layout a quantized layer keeps for its matmul kernel is ``runtime_layouts``.
    """
    from harness.measure.inventory import inventory

    out = {"weights": 0, "quant_state": 0, "adapters": 0, "buffers": 0, "runtime_layouts": 0}
    for module in model.modules():  # packed CPU layouts held beside the stored tensors
        out["runtime_layouts"] += getattr(module, "runtime_layout_bytes", lambda: 0)()
    for entry in inventory(model):
        if "lora_" in entry.name:
            out["adapters"] += entry.nbytes
        elif entry.category in ("quant_state", "buffers"):
            out[entry.category] += entry.nbytes
        else:
            out["weights"] += entry.nbytes
    return out


class PhaseResult(dict):
    """Metric name -> bytes (None when missing); ``methods`` and ``errors`` per metric."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: dict[str, str] = {}
        self.errors: dict[str, str] = {}

    def put(self, name: str, value: float | None, method: str, error: str = "") -> None:
        self[name] = value
        self.methods[name] = method
        if error:
            self.errors[name] = error

    @property
    def method(self) -> str:
        return self.methods.get("peak_bytes", "")

    def to_json(self) -> dict[str, Any]:
        return {"values": dict(self), "methods": self.methods, "errors": self.errors}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhaseResult:
        """Inverse of ``to_json``; a flat ``{name: bytes, "method": ...}`` (older cache
        entries) gets that one method on every value."""
        out = cls()
        if "values" not in data:
            data = {
                "values": {k: v for k, v in data.items() if k != "method"},
                "methods": dict.fromkeys(data, data.get("method", "")),
            }
        for name, value in data["values"].items():
            out.put(
                name, value, data["methods"].get(name, ""), data.get("errors", {}).get(name, "")
            )
        return out


@contextmanager
def track_phase(device: str, model: Any = None) -> Iterator[PhaseResult]:
    """Measure the ``with`` body; fills the yielded dict on exit.

    The body runs with the allocator's ``memory`` settings (see :mod:`harness.measure.allocator`):
    time nothing inside it.

    With ``model``, ``peak_bytes`` is its live tensors at the start plus the growth during the
    body; without it (loading: there is no model yet) only the growth and absolute figures.
    """
    result = PhaseResult()
    with memory_window():  # set before freed memory is handed back
        if model is not None and device != "cuda":
            make_resident(model)
        release_freed_memory(device)
        live = model_tensor_bytes(model) if model is not None else None
        tracker = _track_cuda if device == "cuda" else _track_cpu
        with tracker(result, live, Baseline.current if model is not None else None):
            yield result


@contextmanager
def _track_cpu(
    result: PhaseResult, live: dict[str, int] | None, base: Baseline | None
) -> Iterator[None]:
    heap_free = heap_free_bytes()
    was_reset = reset_hwm()
    start = rss_bytes()
    yield
    if heap_free is not None:
        result.put(
            "heap_free_at_start_bytes",
            heap_free,
            "glibc mallinfo2 fordblks after the trim: freed heap blocks the phase may reuse "
            "(resident again only when reused)",
        )
    peak = hwm_bytes()
    result.put(
        "peak_rss_absolute_bytes",
        peak,
        "cpu-vmhwm, whole process: libraries and allocator slack included",
    )
    if not was_reset:  # the high-water mark is since process start: no phase figure
        return
    growth = max(0, peak - start)
    result.put(
        "peak_above_start_bytes",
        growth,
        "cpu-vmhwm-above-phase-start (freed memory trimmed)",
    )
    if live is None:
        return
    _put_live(result, live)
    result.put(
        "peak_bytes",
        sum(live.values()) + growth,
        "live-model-tensors+cpu-vmhwm-above-phase-start",
    )
    if base is not None:  # includes what later phases left and libraries imported since
        result.put(
            "peak_above_baseline_bytes",
            max(0, peak - base.held),
            "cpu-vmhwm-above-post-load-baseline (libraries imported after loading too)",
        )


def _put_live(result: PhaseResult, live: dict[str, int]) -> None:
    for name, value in live.items():
        result.put(f"live_{name}_bytes", value, "live-tensors at phase start")


@contextmanager
def _track_cuda(
    result: PhaseResult, live: dict[str, int] | None, base: Baseline | None
) -> Iterator[None]:
    import torch

    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    poller = NvmlPoller()
    poller.start()
    try:
        yield
    finally:
        torch.cuda.synchronize()
        poller.stop()
    peak = torch.cuda.max_memory_allocated()
    result.put("peak_bytes", peak, "cuda-allocator-peak-allocated")
    result.put(
        "peak_reserved_bytes",
        torch.cuda.max_memory_reserved(),
        "cuda-allocator-peak-reserved (cached blocks included)",
    )
    result.put("peak_above_start_bytes", peak - start, "cuda-allocator-above-phase-start")
    if base is not None:
        result.put(
            "peak_above_baseline_bytes", peak - base.held, "cuda-allocator-above-post-load-baseline"
        )
    if live is not None:
        _put_live(result, live)
    _put_nvml(result, poller)


def _put_nvml(result: PhaseResult, poller: NvmlPoller) -> None:
    if poller.unavailable:
        result.put(
            "peak_nvml_process_bytes", None, "nvml", f"NVML unavailable: {poller.unavailable}"
        )
        return
    if poller.process_peak is None:
        result.put("peak_nvml_process_bytes", None, "nvml-process", _NVML_NO_PID)
    else:
        result.put(
            "peak_nvml_process_bytes",
            poller.process_peak,
            "nvml-process (driver view: CUDA context and cached blocks included)",
        )
    if poller.device_peak is not None:
        result.put(
            "peak_nvml_device_bytes",
            poller.device_peak,
            "nvml-device-used (every process on the GPU)",
        )


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of torch's CUDA device ``index``. NVML numbers every GPU of the machine
    and ignores ``CUDA_VISIBLE_DEVICES``, so the device is found by its UUID where torch
    reports one; the index is used only when the two numberings agree (nothing hidden)."""
    import os

    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        raise RuntimeError("CUDA_VISIBLE_DEVICES is set and torch reports no device UUID")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class NvmlPoller:
    """Polls NVML every 50 ms on a daemon thread: this process's GPU memory and the device's.

    The sleep keeps it off the CPU the workload needs. ``process_peak`` stays None when NVML
    never lists this pid (containers), so a missing value is never mistaken for 0 bytes.
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.unavailable = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None

    def start(self) -> None:
        try:
            import os

            import pynvml
            import torch

            pynvml.nvmlInit()
            self._handle = _nvml_handle(pynvml, torch.cuda.current_device())
            self._pid = os.getpid()
            self._poll()  # a query NVML refuses (MIG, vGPU) is a missing row, not a failed phase
        except Exception as exc:  # no NVML: the allocator numbers still stand
            self.unavailable = f"{type(exc).__name__}: {exc}"[:160]
            return
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import pynvml

        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        self.observe(procs, pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def observe(self, procs: list[Any], device_used: int) -> None:
        """Fold one NVML reading in (separate from the thread so tests can drive it)."""
        mine = [p.usedGpuMemory or 0 for p in procs if p.pid == self._pid]
        if mine:
            self.process_peak = max(self.process_peak or 0, sum(mine))
        self.device_peak = max(self.device_peak or 0, int(device_used))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except Exception:
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)


def baseline_rows(model: Any, device: str) -> list[dict[str, Any]]:
    """Take the post-load baseline and report it: the model's live tensors, and the rest of
    the process (imported libraries, allocator slack) named as such."""
    base = take_baseline(model, device)
    live = sum(base.live.values())
    return [
        {
            "metric": "baseline_process_bytes",
            "value": float(base.held),
            "unit": "bytes",
            "method": base.how,
        },
        {
            "metric": "baseline_model_tensor_bytes",
            "value": float(live),
            "unit": "bytes",
            "method": "live-tensors",
        },
        {
            "metric": "baseline_not_model_bytes",
            "value": float(max(0, base.held - live)),
            "unit": "bytes",
            "method": f"{base.how} minus live model tensors (libraries, slack)",
        },
    ]


def phase_rows(phase: str, result: PhaseResult | dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows for one phase's memory numbers (a missing value is a skipped row with why)."""
    if not isinstance(result, PhaseResult):
        result = PhaseResult.from_json(result)
    rows = []
    for name, value in result.items():
        row = {"metric": f"{phase}_{name}", "unit": "bytes", "method": result.methods.get(name, "")}
        if value is None:
            row.update(value=None, status="skipped", error=result.errors.get(name, "not measured"))
        else:
            row["value"] = float(value)
        rows.append(row)
    return rows
