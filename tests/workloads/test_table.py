"""The workload table and the ``Workloads`` settings model describe the same workloads."""

from __future__ import annotations

import pytest

from harness.errors import UnknownNameError
from harness.workloads import WORKLOADS, get_entry, get_runner
from harness.workloads.settings import Workloads


def test_every_settings_field_has_a_table_entry_in_the_same_order() -> None:
    assert list(Workloads.model_fields) == list(WORKLOADS)


@pytest.mark.parametrize("name", list(Workloads.model_fields))
def test_field_type_is_the_entrys_settings_model(name: str) -> None:
    assert Workloads.model_fields[name].annotation is WORKLOADS[name].settings


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_entry_has_a_runner_and_a_description(name: str) -> None:
    entry = get_entry(name)
    assert entry.description and callable(get_runner(name))


def test_unknown_workload_names_the_allowed_ones() -> None:
    with pytest.raises(UnknownNameError, match="allowed: footprint, inference"):
        get_entry("latency")


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_a_workload_tracks_memory_exactly_when_its_module_opens_a_tracked_phase(name) -> None:
    """A workload with tracked phases must say so: otherwise the cell runs it entirely with the
    allocator's timing settings and its memory figures would keep the heap's free blocks."""
    import importlib
    import inspect

    module = importlib.import_module(get_entry(name).runner.split(":")[0])
    assert ("track_phase(" in inspect.getsource(module)) == get_entry(name).tracks_memory


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_a_workload_runs_the_model_unless_its_module_never_calls_it(name) -> None:
    """A workload said not to run the model is run before the budget probe's forwards: it must
    not call the model, its generate or lm-eval itself."""
    import importlib
    import inspect

    module = importlib.import_module(get_entry(name).runner.split(":")[0])
    source = inspect.getsource(module)
    calls = any(
        c in source for c in ("model(", "generate(", "evaluate_tasks(", "_logits(", "sft.score(")
    )
    assert calls or not get_entry(name).runs_model
    assert get_entry(name).runs_model or not calls
