"""The training workload: gradients reach only the adapter, memory parts add up, loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.adapters import attach_lora
from harness.config import expand, load_experiment
from harness.schemes import get_handler
from harness.workloads.settings import TrainingSettings
from harness.workloads.training import train
from tests.conftest import TINY_EXPERIMENT, write_experiment

PATTERN = torch.arange(10, 18)  # an 8-token cycle a tiny model can learn


def _lora_model(source, precision: str, r: int = 4):
    handler = get_handler(precision)
    loaded = handler.load(source, handler.options(), "cpu")
    opts = {"r": r, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear", "bias": "none"}
    model, _ = attach_lora(loaded.model, opts)
    return model


def _pattern_batches(batch_size: int = 2, seq_len: int = 64):
    ids = PATTERN.repeat(seq_len // len(PATTERN) + 2)

    def batch(k: int) -> torch.Tensor:
        starts = [(k * batch_size + j) % len(PATTERN) for j in range(batch_size)]
        return torch.stack([ids[s : s + seq_len] for s in starts])

    return batch


def _settings(**kw) -> TrainingSettings:
    base = {"enabled": True, "steps": 2, "warmup_steps": 0, "batch_size": 2, "seq_len": 64}
    return TrainingSettings(**{**base, **kw})


def _frozen_state(model) -> dict[str, torch.Tensor]:
    """Every frozen tensor, quantization state included, read without ``state_dict()`` (which
    repacks bitsandbytes' CPU weight layout in place)."""
    out = {n: t.detach().clone() for n, t in model.named_parameters() if "lora_" not in n}
    out.update({n: t.clone() for n, t in model.named_buffers()})
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        for owner, prefix in ((state, "qs"), (getattr(state, "state2", None), "qs2")):
            for key, value in getattr(owner, "__dict__", {}).items():
                if isinstance(value, torch.Tensor):
                    out[f"{name}.{prefix}.{key}"] = value.clone()
    return out


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_only_the_adapter_trains_and_the_base_is_bitwise_unchanged(tiny_source, precision):
    model = _lora_model(tiny_source, precision)
    model.train()  # as the workload does (bitsandbytes repacks 4-bit weights in eval on CPU)
    frozen = _frozen_state(model)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    ids = _pattern_batches()(0)
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n in lora_before if "lora_B" in n} | {
        n for n in lora_before if "lora_A" in n
    }
    model.zero_grad()
    train(model, _pattern_batches(), _settings(steps=3, lr=1e-2), "cpu")
    after = _frozen_state(model)
    assert after.keys() == frozen.keys()
    assert any(n.endswith("qs.absmax") for n in after) == (precision == "nf4")
    for name, tensor in frozen.items():
        assert torch.equal(after[name], tensor), name
    changed = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert all(not torch.equal(dict(model.named_parameters())[n], lora_before[n]) for n in changed)


def test_adamw_state_is_two_fp32_moments_per_trainable_param(tiny_source) -> None:
    model = _lora_model(tiny_source, "fp32", r=8)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    result = train(model, _pattern_batches(), _settings(), "cpu")
    # exp_avg and exp_avg_sq in fp32, plus torch's 0-d fp32 step counter per parameter tensor
    assert result.memory["mem.optimizer_state"] == 2 * 4 * n + 4 * len(params)
    assert result.memory["mem.gradients"] == 4 * n


def test_loss_falls_on_a_learnable_pattern(tiny_source) -> None:
    torch.manual_seed(0)
    model = _lora_model(tiny_source, "fp32", r=8)
    result = train(model, _pattern_batches(), _settings(steps=20, lr=1e-2), "cpu")
    # from ~ln(258) = 5.55 (uniform); the frozen random head and final norm bound the logits,
    # so the floor is near 4.3 nats, not 0
    assert result.losses[-1] < result.losses[0] - 1.0, result.losses


def test_gradient_checkpointing_lowers_saved_activations_and_keeps_the_maths(tiny_source) -> None:
    runs = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = _lora_model(tiny_source, "fp32")
        runs[ckpt] = train(model, _pattern_batches(), _settings(gradient_checkpointing=ckpt), "cpu")
    plain, ckpt = runs[False].memory, runs[True].memory
    assert 0 < ckpt["mem.activations"] < 0.5 * plain["mem.activations"]
    # the same gradients: the second step's loss matches to rounding
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-5)


def test_workload_rows_through_a_cell(tmp_path: Path, synthetic_cache: Path) -> None:
    from harness.runner.cell import run_cell

    text = (
        TINY_EXPERIMENT.replace("[fp32, bf16]", "[fp32]").replace(
            "footprint: {}",
            "footprint: {enabled: false}\n  training: {enabled: true, steps: 5, warmup_steps: 1,"
            " batch_size: 2, seq_len: 32, save_adapter: true}",
        )
        + "adapters: [none, lora-r4]\n"
    )
    none, lora = expand(load_experiment(write_experiment(tmp_path / "e.yaml", text)), "cpu")
    assert not [r for r in run_cell(none)["rows"] if r["workload"] == "training"]
    record = run_cell(lora)
    assert record["status"] == "ok", record
    load = {r["metric"]: r["value"] for r in record["rows"] if r["workload"] == "load"}
    assert load["allocator_memory_mmap_threshold_bytes"] == 128 * 1024
    assert load["allocator_timing_mmap_threshold_bytes"] == 32 * 1024 * 1024
    rows = [r for r in record["rows"] if r["workload"] == "training"]
    metrics = {(r["metric"], r.get("method")) for r in rows}
    for metric in ("mem.frozen_weights", "mem.adapter_params", "mem.gradients"):
        assert (metric, "live-tensors") in metrics
    assert ("mem.activations", "saved-tensors") in metrics
    tps = [r for r in rows if r["metric"] == "train_tokens_per_s"]
    # steps 0 and 1 are the memory window, step 2 grows the heap: steps 3 and 4 are timed
    assert {r["stat"] for r in tps} == {"median", "p10", "p90"} and tps[0]["n"] == 2
    assert "after the memory window" in tps[0]["method"]
    measured = [r for r in rows if r["metric"] != "wall_time_s"]  # the cell times each workload
    assert all(":train@" in r["protocol"] for r in measured)  # never the evaluation split
    value = {r["metric"]: r["value"] for r in rows}
    assert value["trainable_params"] == 2 * 4 * (128 + 96 + 96 + 128 + 192 * 3)
    assert value["mem.adapter_params"] == 4 * value["trainable_params"]
    adapter_bytes = value["mem.adapter_params"]  # the file is the fp32 tensors plus a header
    assert adapter_bytes < value["adapter_file_bytes"] < adapter_bytes + 65536
    assert value["train_peak_bytes"] > 0
    order = [r["workload"] for r in record["rows"]]
    assert order.index("training") < order.index("perplexity")  # ppl of the trained model


@pytest.mark.parametrize(
    ("steps", "warmup", "first"),
    [(10, 2, 3), (10, 0, 3), (6, 4, 4), (4, 0, 3), (3, 0, None), (3, 2, None), (5, 5, None)],
)
def test_steps_are_timed_after_the_memory_window_and_a_heap_step_or_not_at_all(
    steps, warmup, first
):
    from harness.workloads.training import timed_steps

    settings = TrainingSettings.model_construct(enabled=True, steps=steps, warmup_steps=warmup)
    got_first, method = timed_steps(settings)
    assert got_first == first
    assert ("after the memory window" in method) if first else ("no step to time" in method)


def test_memory_window_steps_use_memory_settings_and_later_steps_timing_ones(tiny_source):
    from harness.measure import allocator

    model = _lora_model(tiny_source, "fp32")
    modes: list[str | None] = []
    pattern = _pattern_batches(2, 16)

    def batch(k: int):
        modes.append(allocator.current())
        return pattern(k)

    allocator.use("memory")
    settings = TrainingSettings(enabled=True, steps=5, warmup_steps=1, batch_size=2, seq_len=16)
    result = train(model, batch, settings, "cpu")
    assert modes == ["memory", "memory", "timing", "timing", "timing"]
    assert allocator.current() == "memory" and len(result.step_s) == 5
