"""The preflight: a cell that cannot run here is skipped before its model is loaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.config import expand, load_experiment
from harness.runner.preflight import preflight
from tests.conftest import write_experiment

EXPERIMENT = """
name: pre
models: [synthetic:tiny-llama]
precisions: [{precision}]
adapters: [{adapter}]
timeout_s: 60
workloads:
  footprint: {{}}
  inference: {{enabled: false}}
  perplexity: {{enabled: false}}
  training: {{enabled: true, optimizer: {optimizer}}}
"""


def _cell(tmp_path: Path, precision: str, adapter: str, optimizer: str):
    text = EXPERIMENT.format(precision=precision, adapter=adapter, optimizer=optimizer)
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", text)), "cpu")[0]


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded although the preflight should have refused")


def test_paged_optimizer_with_gptq_on_cpu_skips_before_calibrating(tmp_path, monkeypatch) -> None:
    import harness.models
    from harness.runner.cell import run_cell
    from harness.schemes.gptq import GPTQScheme

    monkeypatch.setattr(harness.models, "resolve", _never)
    monkeypatch.setattr(GPTQScheme, "load", _never)
    t0 = time.perf_counter()
    record = run_cell(_cell(tmp_path, "gptq-w4g128", "lora-r4", "paged_adamw_8bit"))
    assert record["status"] == "skipped"
    assert "paged_adamw_8bit" in record["error"] and "needs CUDA" in record["error"]
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    ("precision", "adapter", "optimizer", "expected"),
    [
        ("fp32", "lora-r4", "adamw", None),
        ("fp32", "none", "paged_adamw_32bit", None),  # trains nothing: optimizer irrelevant
        ("fp32", "full", "paged_adamw_32bit", "paged_adamw_32bit"),
        ("tf32", "none", "adamw", "tf32"),  # the scheme is asked first
    ],
)
def test_preflight_names_the_first_reason(tmp_path, precision, adapter, optimizer, expected):
    reason = preflight(_cell(tmp_path, precision, adapter, optimizer))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason.lower()
