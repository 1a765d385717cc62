"""The measuring code measures what its names say (each test fails when that code is broken)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from harness import memory_model as mm
from harness import memory_sim as sim
from harness.measure import memory as mem
from harness.measure.training_memory import SavedTensorMeter

MB = 1 << 20


def _fill(n_bytes: int) -> torch.Tensor:
    return torch.ones(n_bytes // 4, dtype=torch.float32)  # ones: every page is touched


def test_each_phase_peak_is_its_own_after_a_reset() -> None:
    with mem.track_phase("cpu") as big:
        x = _fill(300 * MB)
        del x
    with mem.track_phase("cpu") as small:
        y = _fill(40 * MB)
        del y
    assert big["peak_above_start_bytes"] > 250 * MB
    # a no-op reset would leave the first phase's high-water mark in the second one
    assert 30 * MB < small["peak_above_start_bytes"] < 120 * MB


def test_phase_peak_is_live_model_tensors_plus_growth() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 512))
    weights = sum(p.numel() * 4 for p in model.parameters())
    with mem.track_phase("cpu", model) as phase:
        y = _fill(64 * MB)
        del y
    assert phase["live_weights_bytes"] == weights  # counted from the tensors, not from RSS
    assert phase["peak_bytes"] == weights + phase["peak_above_start_bytes"]
    assert 60 * MB < phase["peak_bytes"] - weights < 140 * MB
    rows = {r["metric"]: r for r in mem.phase_rows("x", phase)}
    assert rows["x_peak_bytes"]["method"].startswith("live-model-tensors+")
    assert rows["x_peak_rss_absolute_bytes"]["value"] > rows["x_peak_bytes"]["value"]


def test_nvml_that_cannot_see_the_process_reports_missing_not_zero() -> None:
    poller = mem.NvmlPoller()
    poller._pid = 1234
    host_pid = SimpleNamespace(pid=98765, usedGpuMemory=5 * MB)  # what NVML shows in a container
    poller.observe([host_pid], device_used=7 * MB)
    result = mem.PhaseResult()
    mem._put_nvml(result, poller)
    rows = {r["metric"]: r for r in mem.phase_rows("decode", result)}
    process = rows["decode_peak_nvml_process_bytes"]
    assert process["value"] is None and process["status"] == "skipped"
    assert "host pids" in process["error"]
    assert rows["decode_peak_nvml_device_bytes"]["value"] == 7 * MB
    poller.observe([SimpleNamespace(pid=1234, usedGpuMemory=3 * MB)], device_used=8 * MB)
    assert poller.process_peak == 3 * MB


def test_phase_results_survive_a_json_round_trip() -> None:
    result = mem.PhaseResult()
    result.put("peak_bytes", 10, "m1")
    result.put("peak_nvml_process_bytes", None, "m2", "why")
    back = mem.PhaseResult.from_json(result.to_json())
    assert back == result and back.methods == result.methods and back.errors == result.errors


def _tiny_config(layers: int = 3):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "llama",
        vocab_size=300,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )


def _measured_saved(config, dtype: str, lora: tuple[int, float] | None, ckpt: bool) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    if lora:
        model = get_peft_model(
            model,
            LoraConfig(r=lora[0], lora_alpha=16, lora_dropout=lora[1], target_modules="all-linear"),
        )
    else:
        model.requires_grad_(True)
    model.train()
    if ckpt:
        base = model.get_base_model() if lora else model
        base.gradient_checkpointing_enable({"use_reentrant": True})
        base.enable_input_require_grads()
    meter = SavedTensorMeter(model)
    ids = torch.randint(0, 300, (2, 32))
    with meter.measure():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    meter.add_graph(loss)
    return meter.bytes


@pytest.mark.parametrize(
    "dtype,lora",
    [("float32", None), ("float32", (8, 0.05)), ("bfloat16", (4, 0.1)), ("float32", (8, 0.0))],
)
def test_predicted_activations_equal_the_saved_tensors(dtype, lora) -> None:
    """Exact on Llama layouts: a meter that counted weights as activations, or a model that
    missed LoRA's dropout or its fp32 input cast, fails here."""
    config = _tiny_config()
    spec = sim.LoraSpec(lora[0], lora[1]) if lora else None
    predicted = sim.saved_bytes(config, dtype, 2, 32, "lora" if lora else "full", spec)
    assert predicted == _measured_saved(config, dtype, lora, ckpt=False)


def test_checkpointed_activations_are_predicted_closely() -> None:
    config = _tiny_config()
    predicted = sim.saved_bytes(
        config, "float32", 2, 32, "lora", sim.LoraSpec(8, 0.05), checkpointing=True
    )
    measured = _measured_saved(config, "float32", (8, 0.05), ckpt=True)
    assert predicted == pytest.approx(measured, rel=0.12)
    assert predicted < sim.saved_bytes(config, "float32", 2, 32, "lora", sim.LoraSpec(8, 0.05))


def test_layers_are_extrapolated_from_one_and_two() -> None:
    """Eight layers predicted from probes of one and two equal a direct count of eight."""
    config = _tiny_config(layers=8)
    predicted = sim.saved_bytes(config, "float32", 2, 32, "full")
    assert predicted == _measured_saved(config, "float32", None, ckpt=False)


def test_training_prediction_matches_a_measured_cell(tiny_source) -> None:
    """The live-tensor total of a real training step against the memory model."""
    from harness.adapters import attach_lora
    from harness.schemes import get_handler
    from harness.workloads.settings import TrainingSettings
    from harness.workloads.training import parameter_rows, train

    handler = get_handler("fp32")
    model = handler.load(tiny_source, handler.options(), "cpu").model
    opts = {"r": 4, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear", "bias": "none"}
    model, _ = attach_lora(model, opts)
    _, static = parameter_rows(model)
    settings = TrainingSettings(enabled=True, steps=1, warmup_steps=0, batch_size=2, seq_len=32)
    ids = torch.randint(0, 200, (2, 32))
    result = train(model, lambda k: ids, settings, "cpu")
    measured = {**static, **result.memory}
    shape = mm.model_shape(mm.load_config("synthetic:tiny-llama"))
    work = mm.Workload(train_batch=2, train_seq=32, lora_dropout=0.05)
    pred = mm.predict(shape, "fp32", adapter="lora-r4", work=work)
    assert pred.activations == measured["mem.activations"]
    assert pred.optimizer_state == measured["mem.optimizer_state"]
    assert pred.gradients == measured["mem.gradients"] == pred.adapters
    live = sum(
        measured[k]
        for k in (
            "mem.frozen_weights",
            "mem.quant_state",
            "mem.adapter_params",
            "mem.gradients",
            "mem.optimizer_state",
            "mem.activations",
        )
    )
    assert pred.training_live == pytest.approx(live, rel=0.01)


def test_paged_optimizer_state_is_found_for_the_cuda_peak() -> None:
    """bitsandbytes keeps paged state in CUDA managed memory, which the allocator's peak never
    sees: the tensors marked ``is_paged`` are counted so the training peak can add them."""
    from harness.measure.training_memory import optimizer_state_bytes

    paged, plain = torch.zeros(1000), torch.zeros(10)
    paged.is_paged = True
    optimizer = SimpleNamespace(state={0: {"state1": paged, "step": plain}})
    assert optimizer_state_bytes(optimizer) == 4040
    assert optimizer_state_bytes(optimizer, paged_only=True) == 4000


def test_cpus_with_one_name_and_different_matmul_features_are_different_environments(
    tmp_path, monkeypatch
) -> None:
    from harness.measure import env

    base = {"device": "cpu", "cpu": "AMD EPYC", "cpu_features": "avx2,fma"}
    other = {**base, "cpu_features": "avx2,fma,avx512f,avx512_bf16"}
    assert env.fingerprint(base) != env.fingerprint(other)
    # only the matmul-relevant flags, in a fixed order, from x86 "flags" or Arm "Features"
    cpuinfo, real_open = tmp_path / "cpuinfo", open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )
    for line, expected in [
        ("flags\t\t: fpu sse2 avx512_bf16 avx2 fma avx512f ht", "avx2,fma,avx512f,avx512_bf16"),
        ("Features\t: fp asimd sve crc32", "asimd,sve"),
    ]:
        cpuinfo.write_text(f"processor\t: 0\n{line}\n")
        env.cpu_flags.cache_clear()
        assert env.cpu_features() == expected
    env.cpu_flags.cache_clear()


def test_weights_stored_as_tensor_subclasses_are_made_resident_and_measured() -> None:
    """torchao keeps quantized weights as tensor subclasses that support no ``view``: touching
    their pages goes through the inner tensors, and the phase still measures."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    quantize_(model, Int8WeightOnlyConfig())
    mem.make_resident(model)  # raised NotImplementedError (aten.view) before
    with torch.inference_mode(), mem.track_phase("cpu", model) as phase:  # as inference runs
        model(torch.randn(4, 256))
    # int8 codes (256 x 256 bytes) + fp32 bias counted from the inner tensors, not fp32 weights
    assert phase["live_weights_bytes"] == 256 * 256 + 256 * 4
    assert 0 < phase["live_quant_state_bytes"] <= 256 * 8  # per-row scale (and zero point)
    assert phase["peak_bytes"] >= phase["live_weights_bytes"] + phase["live_quant_state_bytes"]


def test_nvml_finds_torchs_device_by_uuid_and_a_refused_query_is_a_missing_row(monkeypatch):
    """NVML numbers every GPU and ignores CUDA_VISIBLE_DEVICES: the handle comes from the UUID;
    a query NVML refuses (MIG, vGPU) leaves the poller unavailable instead of raising."""
    import types

    import torch

    from harness.measure import memory

    asked: list[str] = []

    def refuse(handle):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: asked.append(uuid) or "handle",
        nvmlDeviceGetHandleByIndex=lambda i: pytest.fail("index used although a UUID exists"),
        nvmlDeviceGetComputeRunningProcesses=refuse,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="ab-12")
    )
    poller = memory.NvmlPoller()
    poller.start()
    assert asked == ["GPU-ab-12"]
    assert "NOT_SUPPORTED" in poller.unavailable and poller._thread is None
