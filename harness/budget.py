"""Token and item budgets of cells whose compute dtype this CPU only emulates.

CPUs without bf16 (or fp16) instructions run those matmuls in software: on an AVX2-only CPU a
bf16 prefill runs ~20x slower than fp32, and one bf16 cell of the default experiment took 13
minutes. A dtype counts as emulated where the CPU lacks its flags, or where a small matmul in it
is measured more than 1.5x slower than in fp32 (a CPU whose flags claim it while torch is held
to a lower instruction set, e.g. ``ATEN_CPU_CAPABILITY=avx2`` with ``ONEDNN_MAX_CPU_ISA=AVX2``).
Such a cell (dense weights computing in a dtype the CPU lacks) keeps every workload but runs it
on a capped budget (:data:`EMULATED_CAPS`): fewer perplexity and agreement tokens, fewer task items,
a shorter decode. The cell records a ``budget.emulated`` row naming why (the missing CPU
feature or the measured slowdown) and the caps; every workload's protocol names the budget it
actually ran. ``HARNESS_FULL_BUDGET=1`` turns the caps off.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

# CPU flags (Linux /proc/cpuinfo) that make each dtype's matmuls native
NATIVE_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
# workload -> setting -> largest value an emulated cell runs
EMULATED_CAPS: dict[str, dict[str, int]] = {
    "perplexity": {"max_tokens": 2048},
    "agreement": {"max_tokens": 1024},
    "accuracy": {"limit": 5, "rolling_docs": 1},
    "inference": {"new_tokens": 16, "repeats": 2},
}
FULL_BUDGET_ENV = "HARNESS_FULL_BUDGET"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (read once, by :mod:`harness.measure.env`)."""
    from harness.measure.env import cpu_flags as read

    return read()


SLOWDOWN_LIMIT = 1.5
"""A 16-bit matmul measured more than this many times slower than fp32 is emulated. Native bf16
measured ~0.25x here, bf16 with torch held to AVX2 ~4x, an AVX2-only CPU's bf16 prefill ~20x:
the margin keeps timing noise from flipping the verdict between cells."""
SLOWDOWN_METHOD = "best of 5 after a warmup, 64x576 @ 576x1536, one thread, over float32"


@lru_cache(maxsize=4)
def matmul_slowdown(compute_dtype: str) -> float:
    """Time of a 64x576 @ 576x1536 matmul in ``compute_dtype`` over fp32 on this CPU, one
    thread (best of 5 after a warmup each; ~20 ms in all), with the allocator's timing
    settings."""
    import torch

    from harness.measure import allocator

    x, w = torch.randn(64, 576), torch.randn(1536, 576)

    def best(dtype: Any) -> float:
        a, b = x.to(dtype), w.to(dtype)
        torch.nn.functional.linear(a, b)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            torch.nn.functional.linear(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with allocator.timing_window():
            return best(getattr(torch, compute_dtype)) / best(torch.float32)
    finally:
        torch.set_num_threads(threads)


def emulation_reason(
    device: str, storage: str, compute_dtype: str, flags=None, slowdown: float | None = None
) -> str:
    """Why a dense CPU cell's compute dtype runs emulated here, or "" where it is native."""
    needed = NATIVE_FLAGS.get(compute_dtype)
    if device != "cpu" or storage != "dense" or needed is None:
        return ""
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in needed):
        return f"CPU lacks {' or '.join(needed)}"
    slowdown = matmul_slowdown(compute_dtype) if slowdown is None else slowdown
    if slowdown > SLOWDOWN_LIMIT:
        return (
            f"a {compute_dtype} matmul measured {slowdown:.1f}x slower than float32 although "
            f"the CPU lists {' or '.join(f for f in needed if f in flags)}"
        )
    return ""


def emulated_dtype(
    device: str, storage: str, compute_dtype: str, flags=None, slowdown=None
) -> bool:
    """True for a dense CPU cell computing in a dtype without native CPU instructions."""
    return bool(emulation_reason(device, storage, compute_dtype, flags, slowdown))


def _capped(settings: Any, caps: dict[str, int]) -> Any:
    update = {}
    for key, cap in caps.items():
        value = getattr(settings, key, None)
        if value is None or value > cap:  # None = unlimited
            update[key] = cap
    return settings.model_copy(update=update) if update else settings


def adapt(workloads: Any, names: list[str], device: str, loaded: Any) -> tuple[dict, list[dict]]:
    """``({workload: settings to run}, rows)``; settings are capped for emulated cells. A dense
    CPU cell computing in a 16-bit dtype whose flags the CPU lists also gets a
    ``budget.matmul_slowdown`` row: the measured ratio the verdict rests on."""
    settings = {n: getattr(workloads, n) for n in names}
    dtype = loaded.compute_dtype
    if device != "cpu" or loaded.storage != "dense" or dtype not in NATIVE_FLAGS:
        return settings, []
    rows, slowdown = [], None
    if any(f in cpu_flags() for f in NATIVE_FLAGS[dtype]):
        slowdown = matmul_slowdown(dtype)
        rows.append(_row("budget.matmul_slowdown", slowdown, "x float32", SLOWDOWN_METHOD))
    why = emulation_reason(device, loaded.storage, dtype, slowdown=slowdown)
    if os.environ.get(FULL_BUDGET_ENV) == "1" or not why:
        return settings, rows
    settings = {n: _capped(s, EMULATED_CAPS.get(n, {})) for n, s in settings.items()}
    caps = "; ".join(
        f"{n}: " + ", ".join(f"{k}<={v}" for k, v in c.items())
        for n, c in EMULATED_CAPS.items()
        if n in names
    )
    method = f"{dtype} emulated ({why}); capped budget: {caps}"
    return settings, [*rows, _row("budget.emulated", 1.0, "bool", method)]


def _row(metric: str, value: float, unit: str, method: str) -> dict[str, Any]:
    return {"workload": "budget", "metric": metric, "value": value, "unit": unit, "method": method}
