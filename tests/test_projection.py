"""Projected workload time: the forwards each workload makes, counted against the real ones."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from harness import projection
from harness.schemes import get_handler
from harness.workloads import inference, perplexity
from harness.workloads.settings import (
    AccuracySettings,
    InferenceSettings,
    PerplexitySettings,
    TrainingSettings,
)


def test_the_probe_line_recovers_per_forward_and_per_token_costs():
    a, b = 0.02, 0.001
    probe = projection.fit(a + b, a + b * projection.PROBE_TOKENS)
    assert probe.per_forward_s == pytest.approx(a)
    assert probe.per_token_s == pytest.approx(b)
    assert probe.forward_s(1000) == pytest.approx(a + 1000 * b)
    # a longer single token than the whole probe (noise) never gives negative costs
    noisy = projection.fit(0.05, 0.04)
    assert noisy.per_token_s == 0.0 and noisy.per_forward_s == 0.05


def test_projection_sums_forwards():
    probe = projection.Probe(0.01, 0.001)
    assert projection.projected_s(probe, [(3, 100), (10, 1)]) == pytest.approx(
        3 * 0.11 + 10 * 0.011
    )


@pytest.fixture()
def counted(tiny_source):
    """The tiny model, loaded, with every forward's token count recorded."""
    handler = get_handler("fp32")
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    seen: Counter = Counter()

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen[ids.numel()] += 1

    loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    return loaded, seen


def test_inference_plan_counts_the_workloads_real_forwards(counted):
    loaded, seen = counted
    settings = InferenceSettings(batch_size=2, prompt_len=8, new_tokens=5, warmup=2, repeats=3)
    inference.run(loaded, SimpleNamespace(device="cpu"), settings)
    assert seen == {tokens: n for n, tokens in projection.forwards("inference", settings)}


def test_perplexity_plan_counts_the_workloads_real_forwards(counted):
    loaded, seen = counted
    settings = PerplexitySettings(max_tokens=100, window=32)
    perplexity.run(loaded, SimpleNamespace(device="cpu"), settings)
    assert projection.forwards("perplexity", settings) == [(3, 32)]
    assert seen == {32: 3}


def test_measure_times_warm_calls_then_the_best_of_each_size(counted):
    from harness.measure import allocator

    loaded, seen = counted
    modes: list[tuple[int, str]] = []
    loaded.model.register_forward_pre_hook(
        lambda m, args, kwargs: modes.append((kwargs["input_ids"].numel(), allocator.current())),
        with_kwargs=True,
    )
    allocator.use("memory")  # as in a cell
    probe = projection.measure(loaded.model)
    n = projection.PROBE_REPEATS + 1  # a warm call and the timed ones, per size
    assert seen == Counter({1: n, projection.PROBE_TOKENS: n})
    # every call keeps the cell's memory settings: what a forward keeps is mapped, not mixed
    # into the heap that the tracked phases reuse
    assert {mode for _, mode in modes} == {"memory"} and len(modes) == 2 * n
    assert allocator.current() == "memory"
    assert probe.per_forward_s >= 0 and probe.per_token_s >= 0
    assert probe.forward_s(1) > 0


def test_accuracy_plan_counts_requests_of_the_builtin_suite():
    from harness.data.tasks import TASK_SPECS

    settings = AccuracySettings(enabled=True, limit=10, rolling_docs=0, batch_size=8)
    requests = sum(10 * spec.num_choices for spec in TASK_SPECS.values())
    plan = projection.forwards("accuracy", settings)
    assert plan == [(-(-requests // 8), 8 * projection.ITEM_TOKENS)]
    one = AccuracySettings(enabled=True, tasks=("harness_comparisons",), limit=5, batch_size=1)
    assert projection.forwards("accuracy", one)[0] == (5 * 2, projection.ITEM_TOKENS)
    # rolling documents add windows of at most rolling_max_length tokens
    rolling = AccuracySettings(enabled=True, limit=1, rolling_docs=2, rolling_max_length=64)
    windows = projection.forwards("accuracy", rolling)[1:]
    assert windows and all(tokens <= 64 for _, tokens in windows)


def test_training_and_unplanned_workloads():
    settings = TrainingSettings(enabled=True, steps=4, grad_accum=2, batch_size=2, seq_len=16)
    assert projection.forwards("training", settings) == [(4 * 2 * projection.TRAIN_PASSES, 32)]
    assert projection.forwards("footprint", object()) == []
