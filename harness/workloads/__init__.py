"""The workload table: name -> settings model, runner, description, availability.

A workload runner is ``run(loaded, cell, settings) -> list[row dict]`` (``loaded`` is the
cell's :class:`~harness.schemes.base.LoadedModel` with the adapter attached). Runner modules
are imported only when a cell runs them; settings models and availability checks are light
(no torch), so validating an experiment or deciding that a cell cannot run here loads nothing.

Adding a workload: a settings model in ``settings.py``, a field of that type on
``settings.Workloads`` (its position is the run order), a runner module here and one entry in
``_ENTRIES``. ``tests/workloads/test_table.py`` checks that fields and entries agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from harness.errors import UnknownNameError
from harness.workloads import settings as s
from harness.workloads.availability import training_unavailable

Availability = Callable[[Any, Any], "str | None"]
"""``(cell, settings) -> reason`` the workload cannot run in this cell here, or None."""


@dataclass(frozen=True)
class WorkloadEntry:
    """One workload: its settings model, runner (``module:function``) and what it measures."""

    name: str
    settings: type[BaseModel]
    runner: str
    description: str
    unavailable: Availability | None = None
    """Asked before the model is loaded; None means the workload can always run."""
    tracks_memory: bool = False
    """Whether it has tracked memory phases. One that has none runs entirely with the
    allocator's timing settings (:mod:`harness.measure.allocator`); one that has them measures
    memory with the memory settings and opens a timing window only around its timed calls."""
    runs_model: bool = True
    """Whether it calls the model. The cell's budget probe (:mod:`harness.projection`) runs
    forwards, and bitsandbytes changes its 4-bit CPU layout at the first one: the probe runs
    just before the first workload (in run order) that calls the model, so footprint, first in
    the run order, counts the weights as loaded."""


_ENTRIES: list[WorkloadEntry] = [
    WorkloadEntry(
        "footprint",
        s.FootprintSettings,
        "harness.workloads.footprint:run",
        "stored bytes of parameters and buffers by dtype and category, bits per parameter",
        runs_model=False,
    ),
    WorkloadEntry(
        "inference",
        s.InferenceSettings,
        "harness.workloads.inference:run",
        "prefill and decode tokens/s (median, p10, p90), bandwidth achieved, peak memory",
        tracks_memory=True,
    ),
    WorkloadEntry(
        "training",
        s.TrainingSettings,
        "harness.workloads.training:run",
        "LoRA / full fine-tuning steps: tokens/s, loss, trainable params, memory breakdown",
        training_unavailable,
        tracks_memory=True,
    ),
    WorkloadEntry(
        "finetune",
        s.FinetuneSettings,
        "harness.workloads.finetune:run",
        "fine-tuning to a budget on instruction data: held-out loss, exact match and corpus "
        "perplexity before and after, curves, divergence, adapter reload and merge",
        training_unavailable,
        tracks_memory=True,
    ),
    WorkloadEntry(
        "perplexity",
        s.PerplexitySettings,
        "harness.workloads.perplexity:run",
        "token perplexity over non-overlapping windows of the builtin corpus",
    ),
    WorkloadEntry(
        "accuracy",
        s.AccuracySettings,
        "harness.workloads.accuracy:run",
        "lm-eval tasks (builtin offline suite or any task) and rolling word/byte perplexity",
    ),
    WorkloadEntry(
        "agreement",
        s.AgreementSettings,
        "harness.workloads.agreement:run",
        "next-token KL divergence and top-1 agreement with the baseline precision",
    ),
    WorkloadEntry(
        "capacity",
        s.CapacitySettings,
        "harness.workloads.capacity:run",
        "largest batch / sequence length within a memory budget, measured and predicted",
        tracks_memory=True,
    ),
]

WORKLOADS: dict[str, WorkloadEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> WorkloadEntry:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise UnknownNameError("workload", name, list(WORKLOADS)) from None


def get_runner(name: str) -> Callable[..., list[dict[str, Any]]]:
    """The runner function of workload ``name`` (imports its module on first use)."""
    module_name, func = get_entry(name).runner.split(":")
    return getattr(importlib.import_module(module_name), func)


def unavailable(name: str, cell: Any) -> str | None:
    """Why workload ``name`` cannot run in ``cell`` on its device (None when it can)."""
    check = get_entry(name).unavailable
    return check(cell, getattr(cell.workloads, name)) if check else None
