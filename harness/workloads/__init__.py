"""Workload registry: name -> (runner ``module:function``, one-line description).

A workload runner is ``run(loaded, cell, settings, tracker) -> list[row dict]``. Modules are
imported only when a cell runs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

WORKLOADS: dict[str, tuple[str, str]] = {
    "footprint": (
        "harness.workloads.footprint:run",
        "stored bytes of parameters and buffers by dtype and category, bits per parameter",
    ),
    "inference": (
        "harness.workloads.inference:run",
        "prefill and decode tokens/s (median, p10, p90), bandwidth achieved, peak memory",
    ),
    "training": (
        "harness.workloads.training:run",
        "LoRA / full fine-tuning steps: tokens/s, loss, trainable params, memory breakdown",
    ),
    "perplexity": (
        "harness.workloads.perplexity:run",
        "token perplexity over non-overlapping windows of the builtin corpus",
    ),
    "accuracy": (
        "harness.workloads.accuracy:run",
        "lm-eval tasks (builtin offline suite or any task) and rolling word/byte perplexity",
    ),
    "agreement": (
        "harness.workloads.agreement:run",
        "next-token KL divergence and top-1 agreement with the baseline precision",
    ),
    "capacity": (
        "harness.workloads.capacity:run",
        "largest batch / sequence length within a memory budget, measured and predicted",
    ),
}


def get_runner(name: str) -> Callable[..., list[dict[str, Any]]]:
    module_name, func = WORKLOADS[name][0].split(":")
    return getattr(importlib.import_module(module_name), func)
