"""Inference timing: both phases are the same ``generate`` a user calls, never a bare forward,
timed outside every memory window."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.measure import allocator
from harness.schemes import get_handler
from harness.workloads import inference
from harness.workloads.settings import InferenceSettings


def test_prefill_is_generate_of_one_token_and_decode_the_rest(tiny_source, monkeypatch):
    handler = get_handler("fp32")
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    model = loaded.model
    calls: list[str] = []
    real_generate = model.generate
    real_forward = model.forward

    inside = [False]

    def generate(**kwargs):
        mode = allocator.current()
        calls.append(f"{mode}:generate:{kwargs['max_new_tokens']}:{kwargs['min_new_tokens']}")
        inside[0] = True
        try:
            return real_generate(**kwargs)
        finally:
            inside[0] = False

    def forward(*args, **kwargs):
        if not inside[0]:
            calls.append(f"{allocator.current()}:forward outside generate")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    monkeypatch.setattr(model, "forward", forward)
    allocator.use("memory")  # as a cell process starts
    clock = iter(range(1000))
    # fake timings: prefill runs take 1 s, decode runs 4 s (time_call reads perf_counter)
    monkeypatch.setattr(inference, "time_call", _fake_time_call(clock))
    settings = InferenceSettings(batch_size=1, prompt_len=8, new_tokens=4, warmup=1, repeats=2)
    rows = inference.run(loaded, SimpleNamespace(device="cpu"), settings)
    # memory first, with the memory settings: a warmup and a tracked call per phase, then the
    # untimed prompt forward and decode whose caches are counted; then per phase a warmup and
    # two timed calls with the timing settings; the cell is left with the memory settings
    assert calls == [
        *["memory:generate:1:1"] * 2,
        *["memory:generate:4:4"] * 2,
        "memory:forward outside generate",
        "memory:generate:4:4",
        *["timing:generate:1:1"] * 3,
        *["timing:generate:4:4"] * 3,
    ]
    assert allocator.current() == "memory"
    values = {(r["metric"], r.get("stat")): r["value"] for r in rows}
    assert values[("prefill_tokens_per_s", "median")] == 8 / 1.0
    # 3 decode steps after the first token, in 4 s minus the 1 s prefill
    assert values[("decode_tokens_per_s", "median")] == 3 / 3.0


def _fake_time_call(clock):
    def time_call(fn, device, warmup, repeats):
        for _ in range(warmup + repeats):
            fn()
        next(clock)
        seconds = 1.0 if fn.__name__ == "prefill" else 4.0
        return [seconds] * repeats

    return time_call


def _settings(repeats: int = 3) -> InferenceSettings:
    return InferenceSettings(batch_size=1, prompt_len=8, new_tokens=4, warmup=0, repeats=repeats)


def _decode_values(prefill_s: list[float], generate_s: list[float]) -> list[dict]:
    loaded = SimpleNamespace(model=SimpleNamespace(named_parameters=lambda: []))
    rows = inference._decode_rows(loaded, _settings(), prefill_s, generate_s, "t")
    return [r for r in rows if r["metric"] == "decode_tokens_per_s"]


@pytest.mark.parametrize(
    ("prefill_s", "generate_s"),
    [
        ([1.0, 1.0, 1.0], [0.9, 1.2, 1.3]),  # a generate shorter than the median prefill
        ([0.8, 1.0, 1.4], [1.3, 1.35, 1.4]),  # decode time (0.35 s) within the prefill spread
    ],
)
def test_decode_time_that_is_noise_gives_skipped_rows_not_a_rate(prefill_s, generate_s):
    rows = _decode_values(prefill_s, generate_s)
    assert [r["status"] for r in rows] == ["skipped"]
    assert rows[0]["value"] is None and "not measurable" in rows[0]["error"]


def test_measurable_decode_time_gives_the_rate(monkeypatch):
    monkeypatch.setattr(inference, "inventory", lambda model: [])
    rows = _decode_values([1.0, 1.0, 1.0], [4.0, 4.0, 4.0])
    assert {r["stat"]: r["value"] for r in rows} == {"median": 1.0, "p10": 1.0, "p90": 1.0}


def test_timed_calls_get_one_warm_call_even_with_no_warmup(tiny_source, monkeypatch):
    handler = get_handler("fp32")
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    seen: list[tuple[str, int, int]] = []

    def time_call(fn, device, warmup, repeats):
        seen.append((fn.__name__, warmup, repeats))
        return [1.0 if fn.__name__ == "prefill" else 4.0] * repeats

    monkeypatch.setattr(inference, "time_call", time_call)
    settings = InferenceSettings(batch_size=1, prompt_len=8, new_tokens=4, warmup=0, repeats=2)
    inference.run(loaded, SimpleNamespace(device="cpu"), settings)
    # before the tracked calls: the settings' warmup (none); before the timed calls: one
    assert seen == [("prefill", 0, 0), ("decode", 0, 0), ("prefill", 1, 2), ("decode", 1, 2)]
