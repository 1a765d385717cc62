"""Per-expert packed storage of 3-D MoE weights, routed calibration, and Conv1D as a linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.pytorch_utils import Conv1D

from harness.quant import (
    PackedExperts,
    QuantLinear,
    as_linear,
    capture_layer_inputs,
    quantize_decoder_layers,
    quantize_uncalibrated,
    replace_linears,
    rtn_quantize,
)
from harness.quant.experts import ExpertRecorder, expert_parameters

pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(autouse=True)
def _exact_matmul(monkeypatch):
    """These tests compare against dequantized dense weights exactly; the packed CPU kernels
    round activations to bf16, so the exact dequantize + matmul path is used here."""
    monkeypatch.setenv("HARNESS_QUANT_KERNEL", "torch")

def _mixtral() -> MixtralForCausalLM:
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=128,
    )  # fmt: skip
    return MixtralForCausalLM(config).eval()


def _ids(n: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(1))


def _rtn(bits: int):
    return lambda _name, lin: rtn_quantize(lin.weight, bits, 16)


def test_conv1d_is_seen_as_out_by_in_and_quantlinear_matches_it():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs, weight stored 16 x 24
    view = as_linear(conv)
    assert view.weight.shape == (24, 16)
    x = torch.randn(3, 5, 16)
    assert torch.allclose(nn.functional.linear(x, view.weight, view.bias), conv(x), atol=1e-6)
    qw = rtn_quantize(view.weight, 8, 16)
    quant = QuantLinear(qw, conv.bias)
    dense = nn.functional.linear(x, qw.dequantize(), conv.bias)
    assert torch.allclose(quant(x), dense, atol=1e-6)
    assert (quant(x) - conv(x)).abs().max() < 0.02 * conv(x).abs().max()


def test_packed_experts_answer_indexing_with_each_dequantized_expert():
    model = _mixtral()
    experts = model.model.layers[0].mlp.experts
    original = experts.gate_up_proj.detach().clone()
    quantized = quantize_uncalibrated(model.model.layers, _rtn(4))
    packed = experts.gate_up_proj
    assert isinstance(packed, PackedExperts) and len(packed) == 4
    assert packed.shape == tuple(original.shape)
    for e in range(4):
        expected = quantized[f"0.mlp.experts:gate_up_proj:{e}"].dequantize()
        assert torch.equal(packed[e], expected)
        assert not torch.equal(packed[e], original[e])  # 4-bit codes, not the float weights
    assert "gate_up_proj" not in dict(experts.named_parameters(recurse=False))


def test_forward_keeps_routing_and_matches_dense_dequantized_experts():
    model, ref = _mixtral(), _mixtral()
    quantized = quantize_uncalibrated(model.model.layers, _rtn(4))
    ref.set_experts_implementation("eager")
    with torch.no_grad():
        for key, qw in quantized.items():  # put the dequantized weights back, densely
            layer, rest = key.split(".", 1)
            target = ref.model.layers[int(layer)]
            if ":" in rest:
                mod, pname, e = rest.split(":")
                getattr(target.get_submodule(mod), pname)[int(e)].copy_(qw.dequantize())
            else:
                target.get_submodule(rest).weight.copy_(qw.dequantize())
        ids = _ids()
        out, expected = model(ids).logits, ref(ids).logits
    assert torch.allclose(out, expected, atol=1e-5)
    assert model.config._experts_implementation == "eager"


def test_eight_bit_experts_stay_close_to_float():
    model, ref = _mixtral(), _mixtral()
    quantize_uncalibrated(model.model.layers, _rtn(8))
    with torch.no_grad():
        ids = _ids()
        err = (model(ids).logits - ref(ids).logits).norm() / ref(ids).logits.norm()
    assert err < 0.01


def test_recorder_builds_each_experts_hessian_from_its_routed_tokens_only():
    model = _mixtral()
    experts = model.model.layers[0].mlp.experts
    recorder = ExpertRecorder(experts)
    seen = {}

    def spy(_m, args, _kwargs):
        seen["hidden"], seen["index"] = args[0].clone(), args[1].clone()

    handles = [
        experts.register_forward_pre_hook(spy, with_kwargs=True),
        experts.register_forward_pre_hook(recorder, with_kwargs=True),
    ]
    with torch.no_grad():
        model(_ids(1, 24))
    for h in handles:
        h.remove()
    index, hidden = seen["index"], seen["hidden"]
    assert sum(recorder.tokens) == index.numel()  # top-2: every token counted twice
    for e in range(4):
        x = hidden[(index == e).any(-1)]
        hessian, tokens = recorder.hessian("gate_up_proj", e)
        assert tokens == x.shape[0]
        assert torch.allclose(hessian.matrix, 2 * x.t() @ x / tokens, atol=1e-5)
        gate, up = nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        inner = experts.act_fn(gate) * up
        down, _ = recorder.hessian("down_proj", e)
        assert torch.allclose(down.matrix, 2 * inner.t() @ inner / tokens, atol=1e-5)


def _calibrate(model, min_tokens: int, events: list):
    from harness.quant import gptq_quantize

    layers = model.model.layers
    batches = [_ids(2, 16) for _ in range(2)]
    inputs = capture_layer_inputs(
        lambda ids: model(input_ids=ids, use_cache=False), layers[0], batches
    )
    return quantize_decoder_layers(
        layers, inputs, lambda _n, lin, h: gptq_quantize(lin.weight, h, 4, 16), events.append,
        fallback_fn=lambda _n, lin: rtn_quantize(lin.weight, 4, 16), min_expert_tokens=min_tokens,
    )  # fmt: skip


def test_calibration_quantizes_experts_and_falls_back_below_min_tokens():
    events: list = []
    model = _mixtral()
    quantized = _calibrate(model, 1, events)
    expert_keys = [k for k in quantized if ":" in k]
    assert len(expert_keys) == 2 * 2 * 4  # layers x (gate_up, down) x experts
    assert not [e for e in events if e["kind"] == "expert_fallback"]
    float_weight = _mixtral().model.layers[0].mlp.experts.down_proj[0].detach()
    rounded = rtn_quantize(float_weight, 4, 16).unpacked_codes()
    calibrated = quantized["0.mlp.experts:down_proj:0"]
    assert calibrated.perm is None  # no act-order here, so codes are comparable
    assert not torch.equal(calibrated.unpacked_codes(), rounded)  # the Hessian was used
    events.clear()
    _calibrate(_mixtral(), 10**6, events)
    fallbacks = [e for e in events if e["kind"] == "expert_fallback"]
    assert len(fallbacks) == 16 and all(e["tokens"] > 0 for e in fallbacks)


def test_replace_linears_rebuilds_experts_from_saved_weights(tmp_path):
    from harness.quant import load_quantized, save_quantized

    model = _mixtral()
    quantized = quantize_uncalibrated(model.model.layers, _rtn(4))
    save_quantized(tmp_path / "q.safetensors", quantized)
    fresh = _mixtral()
    replace_linears(fresh.model.layers, load_quantized(tmp_path / "q.safetensors"))
    assert not any(expert_parameters(m) for m in fresh.modules())
    with torch.no_grad():
        ids = _ids()
        assert torch.equal(fresh(ids).logits, model(ids).logits)
