"""Token and item budgets of cells whose compute dtype this CPU only emulates.

CPUs without bf16 (or fp16) instructions run those matmuls in software: on an AVX2-only CPU a
bf16 prefill runs ~20x slower than fp32, and one bf16 cell of the default experiment took 13
minutes. Such a cell (dense weights computing in a dtype the CPU lacks) keeps every workload but
runs it on a capped budget (:data:`EMULATED_CAPS`): fewer perplexity and agreement tokens,
fewer task items, a shorter decode. The cell records a ``budget.emulated`` row naming the missing
CPU feature and the caps; every workload's protocol names the budget it actually ran.
``HARNESS_FULL_BUDGET=1`` turns the caps off.
"""

from __future__ import annotations

import os
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


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def emulated_dtype(device: str, storage: str, compute_dtype: str, flags=None) -> bool:
    """True for a dense CPU cell computing in a dtype without native CPU instructions."""
    needed = NATIVE_FLAGS.get(compute_dtype)
    if device != "cpu" or storage != "dense" or needed is None:
        return False
    flags = cpu_flags() if flags is None else flags
    return not any(f in flags for f in needed)


def _capped(settings: Any, caps: dict[str, int]) -> Any:
    update = {}
    for key, cap in caps.items():
        value = getattr(settings, key, None)
        if value is None or value > cap:  # None = unlimited
            update[key] = cap
    return settings.model_copy(update=update) if update else settings


def adapt(workloads: Any, names: list[str], device: str, loaded: Any) -> tuple[dict, list[dict]]:
    """``({workload: settings to run}, rows)``; settings are capped for emulated cells."""
    settings = {n: getattr(workloads, n) for n in names}
    if os.environ.get(FULL_BUDGET_ENV) == "1" or not emulated_dtype(
        device, loaded.storage, loaded.compute_dtype
    ):
        return settings, []
    settings = {n: _capped(s, EMULATED_CAPS.get(n, {})) for n, s in settings.items()}
    flags = " or ".join(NATIVE_FLAGS[loaded.compute_dtype])
    caps = "; ".join(
        f"{n}: " + ", ".join(f"{k}<={v}" for k, v in c.items())
        for n, c in EMULATED_CAPS.items()
        if n in names
    )
    row = {
        "workload": "budget",
        "metric": "budget.emulated",
        "value": 1.0,
        "unit": "bool",
        "method": f"{loaded.compute_dtype} emulated (CPU lacks {flags}); capped budget: {caps}",
    }
    return settings, [row]
