"""Inference timing: both phases are the same ``generate`` a user calls, never a bare forward."""

from __future__ import annotations

from types import SimpleNamespace

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

    def generate(**kwargs):
        calls.append(f"generate:{kwargs['max_new_tokens']}:{kwargs['min_new_tokens']}")
        return real_generate(**kwargs)

    def forward(*args, **kwargs):
        if not calls or calls[-1].startswith("forward"):
            calls.append("forward outside generate")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    monkeypatch.setattr(model, "forward", forward)
    clock = iter(range(1000))
    # fake timings: prefill runs take 1 s, decode runs 4 s (time_call reads perf_counter)
    monkeypatch.setattr(inference, "time_call", _fake_time_call(clock))
    settings = InferenceSettings(batch_size=1, prompt_len=8, new_tokens=4, warmup=0, repeats=2)
    rows = inference.run(loaded, SimpleNamespace(device="cpu"), settings)
    # timed: two prefills then two decodes; then one untimed prompt forward and one decode
    # whose caches are counted (live KV cache bytes)
    assert calls[:4] == ["generate:1:1"] * 2 + ["generate:4:4"] * 2
    assert calls[4:] == ["generate:4:4"]
    values = {(r["metric"], r.get("stat")): r["value"] for r in rows}
    assert values[("prefill_tokens_per_s", "median")] == 8 / 1.0
    # 3 decode steps after the first token, in 4 s minus the 1 s prefill
    assert values[("decode_tokens_per_s", "median")] == 3 / 3.0


def _fake_time_call(clock):
    def time_call(fn, device, warmup, repeats):
        for _ in range(repeats):
            fn()
        next(clock)
        seconds = 1.0 if fn.__name__ == "prefill" else 4.0
        return [seconds] * repeats

    return time_call
