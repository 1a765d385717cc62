"""Token and item budgets of CPU cells that would otherwise run too long.

Two reasons cap a CPU cell's budget, and its rows say which:

* Its dense weights compute in a dtype this CPU only emulates. CPUs without bf16 (or fp16)
  instructions run those matmuls in software: on an AVX2-only CPU a bf16 prefill runs ~20x
  slower than fp32, and one bf16 cell of the default experiment took 13 minutes. A dtype
  counts as emulated where the CPU lacks its flags, or where a small matmul in it is measured
  more than 1.5x slower than in fp32 (a CPU whose flags claim it while torch is held to a lower
  instruction set, e.g. ``ATEN_CPU_CAPABILITY=avx2`` with ``ONEDNN_MAX_CPU_ISA=AVX2``); a
  ``budget.emulated`` row names why.
* The experiment sets a cell time target (``cell_target_s``, loading included) and the cell's
  workloads are projected (:mod:`harness.projection`, from timed forwards of the loaded model)
  to take longer than what loading left of it at the budget the experiment asks for: a slow
  CPU, a slow kernel.

Such a cell keeps every workload but runs it on a capped budget (:data:`EMULATED_CAPS`: fewer
perplexity and agreement tokens, fewer task items, a shorter decode), halved further while the
projection is still over the target, never below :data:`FLOORS`. A ``budget.capped`` row names
the reasons and what changed (only where something did); ``budget.projected_full_s`` and
``budget.projected_s`` give the projections of the asked-for and the run budget; every
workload's protocol names the budget it actually ran. ``HARNESS_FULL_BUDGET=1`` turns the
caps off (the rows saying why stay).
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

from harness import projection

# CPU flags (Linux /proc/cpuinfo) that make each dtype's matmuls native
NATIVE_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
# workload -> setting -> largest value an emulated cell runs
EMULATED_CAPS: dict[str, dict[str, int]] = {
    "perplexity": {"max_tokens": 2048},
    "agreement": {"max_tokens": 1024},
    "accuracy": {"limit": 5, "rolling_docs": 1},
    "inference": {"new_tokens": 16, "repeats": 2},
}
FLOORS = {"limit": 2, "rolling_docs": 1, "new_tokens": 8, "repeats": 2}
"""Halved caps stop here (perplexity and agreement at two windows): every workload still
measures something with a spread."""
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


def _floor(settings: Any, key: str) -> int:
    """The smallest value halving may reach: two windows, two items, two timed calls."""
    if key == "max_tokens":
        return 2 * settings.window
    return FLOORS.get(key, 1)


def caps_at(settings: dict[str, Any], level: int) -> dict[str, dict[str, int]]:
    """:data:`EMULATED_CAPS` halved ``level`` times, never below a workload's floor (a cap
    above a workload's own value leaves that value as it is: see ``_capped``)."""
    caps = {}
    for name, base in EMULATED_CAPS.items():
        if name not in settings:
            continue
        caps[name] = {
            key: max(_floor(settings[name], key), cap >> level) for key, cap in base.items()
        }
    return caps


def _apply(settings: dict[str, Any], caps: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {n: _capped(s, caps.get(n, {})) for n, s in settings.items()}


def projected(probe: projection.Probe, settings: dict[str, Any]) -> float:
    """Seconds the workloads' forwards project to on the probed model."""
    return sum(
        projection.projected_s(probe, projection.forwards(n, s)) for n, s in settings.items()
    )


def fit(
    settings: dict[str, Any], probe: projection.Probe | None, target_s: float | None, level: int
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The settings capped at ``level`` and, with a probe and a target, at the first deeper
    level projected within the target (or the floors, where none is)."""
    while True:
        caps = caps_at(settings, level)
        capped = _apply(settings, caps)
        if probe is None or target_s is None or projected(probe, capped) <= target_s:
            return capped, caps
        if caps_at(settings, level + 1) == caps:  # every cap at its floor
            return capped, caps
        level += 1


def adapt(
    workloads: Any,
    names: list[str],
    device: str,
    loaded: Any,
    target_s: float | None = None,
    elapsed_s: float = 0.0,
) -> tuple[dict, list[dict]]:
    """``({workload: settings to run}, rows)``. A CPU cell runs capped settings when its dense
    weights compute in a dtype this CPU emulates (:data:`EMULATED_CAPS`) or when, given a cell
    time target, its workloads are projected (:mod:`harness.projection`) to take longer than
    what is left of it (``target_s - elapsed_s``: loading has used the rest); the caps are then
    halved until the projection fits or every cap is at its floor. A dense CPU cell computing
    in a 16-bit dtype whose flags the CPU lists also gets a ``budget.matmul_slowdown`` row: the
    measured ratio the emulation verdict rests on."""
    asked = {n: getattr(workloads, n) for n in names}
    if device != "cpu":
        return asked, []
    rows, why = _dtype_rows(loaded)
    probe, left_s = None, None
    if target_s:
        left_s = max(0.0, target_s - elapsed_s)
        try:
            probe = projection.measure(loaded.model)
        except Exception as exc:  # no projection: the dtype rule still applies
            rows.append(_probe_failure(exc))
    full_s = projected(probe, asked) if probe else None
    slow = full_s is not None and full_s > left_s
    if probe:
        rows.append(_row("budget.projected_full_s", full_s, "s", _projection_method(probe)))
    settings = asked
    if os.environ.get(FULL_BUDGET_ENV) != "1" and (why or slow):
        settings = fit(asked, probe if slow else None, left_s, 0)[0]
    changes = _changes(asked, settings)
    if why:
        ran = "capped (budget.capped)" if changes else "as asked"
        method = f"{loaded.compute_dtype} emulated ({why}); budget {ran}"
        rows.append(_row("budget.emulated", 1.0, "bool", method))
    if probe:
        run_s = projected(probe, settings)
        method = _left(target_s, left_s, run_s, bool(changes))
        rows.append(_row("budget.projected_s", run_s, "s", method))
    if changes:
        reasons = [why] if why else []
        if slow:
            reasons.append(f"projected {full_s:.0f} s, over the {left_s:.0f} s left of the target")
        rows.append(_row("budget.capped", 1.0, "bool", f"{'; '.join(reasons)}; ran {changes}"))
    return settings, rows


def _changes(asked: dict[str, Any], run: dict[str, Any]) -> str:
    """What capping changed, as ``workload: key old->new``; "" where nothing did."""
    parts = []
    for name, before in asked.items():
        after = run[name]
        diff = [
            f"{k} {getattr(before, k)}->{getattr(after, k)}"
            for k in EMULATED_CAPS.get(name, {})
            if getattr(before, k) != getattr(after, k)
        ]
        if diff:
            parts.append(f"{name}: " + ", ".join(diff))
    return "; ".join(parts)


def _left(target_s: float, left_s: float, run_s: float, capped: bool) -> str:
    budget = "capped budget" if capped else "budget as asked"
    over = ""
    if run_s > left_s:
        over = "; still over it at the floors" if capped else "; over it (caps turned off)"
    return f"{budget}; {left_s:.0f} s left of the {target_s:g} s cell target after loading{over}"


def _probe_failure(exc: Exception) -> dict[str, Any]:
    error = f"probe forward failed, budget as asked: {type(exc).__name__}: {exc}"
    return {
        "workload": "budget",
        "metric": "budget.projected_full_s",
        "status": "skipped",
        "error": error,
    }


def _dtype_rows(loaded: Any) -> tuple[list[dict[str, Any]], str]:
    """The measured 16-bit slowdown row (where the CPU lists the dtype's flags) and the
    emulation reason ("" where the cell's dtype is native or not dense 16-bit)."""
    dtype = loaded.compute_dtype
    if loaded.storage != "dense" or dtype not in NATIVE_FLAGS:
        return [], ""
    rows, slowdown = [], None
    if any(f in cpu_flags() for f in NATIVE_FLAGS[dtype]):
        slowdown = matmul_slowdown(dtype)
        rows.append(_row("budget.matmul_slowdown", slowdown, "x float32", SLOWDOWN_METHOD))
    return rows, emulation_reason("cpu", loaded.storage, dtype, slowdown=slowdown)


def _projection_method(probe: projection.Probe) -> str:
    return (
        f"each workload's forwards at {probe.per_forward_s * 1e3:.1f} ms per forward + "
        f"{probe.per_token_s * 1e3:.2f} ms per token (a 1-token and a "
        f"{projection.PROBE_TOKENS}-token forward timed on this model); full budget"
    )


def _row(metric: str, value: float, unit: str, method: str) -> dict[str, Any]:
    return {"workload": "budget", "metric": metric, "value": value, "unit": unit, "method": method}
