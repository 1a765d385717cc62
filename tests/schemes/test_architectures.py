"""Every precision family and LoRA on the GPT-2 (Conv1D), Mixtral (3-D experts) and Phi-3
(fused projections) presets: what each quantized, its coverage, the memory model, skips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.adapters import attach_lora, target_names
from harness.errors import HarnessError, SkipCell
from harness.memory_model import load_config, model_shape, predict
from harness.models import resolve
from harness.schemes import get_handler
from harness.workloads import footprint

PRESETS = ["tiny-gpt2", "tiny-mixtral", "tiny-phi3"]
FAMILIES = ["fp32", "int8", "nf4", "rtn-w4g128", "gptq-w4g128", "spqr-w3"]
SMALL_CALIB = {"nsamples": 4, "seqlen": 32, "calib_batch_size": 4, "expert_min_tokens": 4}
OWN = {"rtn-w4g128", "gptq-w4g128", "spqr-w3"}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _session_cache(synthetic_cache):
    """Models and quantized entries in the session's temporary cache (later loads hit it)."""


def _load(preset: str, precision: str):
    handler = get_handler(precision)
    extra = SMALL_CALIB if precision in OWN - {"rtn-w4g128"} else {}
    return handler.load(resolve(f"synthetic:{preset}"), handler.options(extra), "cpu")


def _ids(length: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(3))


def _coverage(model) -> dict[str, float]:
    return footprint.coverage(footprint.inventory(model))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("precision", FAMILIES)
def test_every_family_quantizes_adapts_and_trains(preset, precision):
    loaded = _load(preset, precision)
    cov = _coverage(loaded.model)
    if precision == "fp32":
        assert cov["coverage.params"] == 0
    else:  # every linear-like layer (Conv1D, fused qkv) is quantized by every scheme
        assert cov["coverage.linear"] == pytest.approx(1.0)
    experts = cov.get("coverage.experts")
    assert (experts is not None) == (preset == "tiny-mixtral")
    if experts is not None:  # bitsandbytes leaves the 3-D experts fp32; the own schemes pack them
        assert experts == (1.0 if precision in OWN else 0.0)
        assert cov["coverage.linear_like"] < 0.2 or precision in OWN
    lora = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear", "bias": "none"}
    model, rows = attach_lora(loaded.model, lora)
    adapted = rows[-1]["value"]
    assert adapted == len(target_names(_load(preset, "fp32").model, "all-linear"))
    ids = _ids()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert len(grads) == adapted and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_all_linear_is_what_peft_means_on_conv1d_models():
    from peft import LoraConfig, get_peft_model

    model = _load("tiny-gpt2", "fp32").model
    ours = set(target_names(model, "all-linear"))
    assert {n.rsplit(".", 1)[-1] for n in ours} == {"c_attn", "c_proj", "c_fc"}
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    theirs = {
        n.removeprefix("base_model.model.").removesuffix(".lora_A")
        for n, _ in peft_model.named_modules()
        if n.endswith(".lora_A")
    }
    assert ours == theirs


def test_unknown_target_names_the_model_layers():
    model = _load("tiny-gpt2", "fp32").model
    opts = {"r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["q_proj"], "bias": "none"}
    with pytest.raises(HarnessError, match=r"q_proj.*c_attn, c_fc, c_proj"):
        attach_lora(model, opts)


def test_mixtral_cell_rows_say_what_was_packed_and_fell_back():
    rows = {r["metric"]: r["value"] for r in _load("tiny-mixtral", "gptq-w4g128").rows}
    assert rows["quantized_experts"] == 2 * 4
    assert rows["quantized_expert_params"] == 2 * 4 * (256 * 64 + 64 * 128)
    assert 0 <= rows["expert_rtn_fallbacks"] <= 16
    starved = get_handler("gptq-w4g128")
    opts = starved.options({**SMALL_CALIB, "expert_min_tokens": 10**6})
    loaded = starved.load(resolve("synthetic:tiny-mixtral"), opts, "cpu")
    rows = {r["metric"]: r["value"] for r in loaded.rows}
    assert rows["expert_rtn_fallbacks"] == 16  # 2 layers x 4 experts x (gate_up, down)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "nf4", "rtn-w4g128"])
def test_memory_model_predicts_stored_weights(preset, precision):
    if preset == "tiny-mixtral" and precision == "rtn-w4g128":
        pytest.skip("the memory model counts expert weights as dense (see model_shape)")
    summary = footprint.summarize(footprint.inventory(_load(preset, precision).model))
    measured = summary["bytes.total"] - summary.get("bytes.buffers", 0)
    shape = model_shape(load_config(f"synthetic:{preset}"))
    assert predict(shape, precision).weight_bytes == measured


def test_nothing_to_quantize_skips_the_cell(monkeypatch):
    from harness.schemes import weight_only

    monkeypatch.setattr(weight_only, "decoder_layers", lambda _model: nn.ModuleList())
    with pytest.raises(SkipCell, match="found nothing to quantize.*no nn.Linear, Conv1D"):
        _load("tiny-gpt2", "rtn-w4g128")
