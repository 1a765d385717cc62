"""bitsandbytes precisions: exact stored bytes, accuracy sanity, double-quantization savings."""

from __future__ import annotations

import math

import pytest
import torch

from harness.measure.bnb_storage import double_quant_rows, dq_saving_for_layer
from harness.schemes import get_handler
from harness.workloads.footprint import inventory, savings, summarize
from tests.conftest import tiny_cell

# Quantized linears of tiny-llama per layer as (out, in); 2 layers; lm_head stays fp32.
SHAPES = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)] * 2
Q_PARAMS = sum(o * i for o, i in SHAPES)
BLOCKS = [o * i // 64 for o, i in SHAPES]  # bitsandbytes 4-bit: one absmax per 64 weights
N_LAYERS = len(SHAPES)


def _load(source, name: str):
    handler = get_handler(name)
    return handler.load(source, handler.options(), "cpu")


def _footprint(source, name: str) -> dict[str, float]:
    return summarize(inventory(_load(source, name).model))


def test_int8_bytes_by_hand(tiny_source) -> None:
    s = _footprint(tiny_source, "int8")
    assert s["bytes.quantized_weights"] == Q_PARAMS  # one int8 per weight
    assert s["bytes.quant_state"] == sum(o for o, _ in SHAPES) * 4  # fp32 scale per row (SCB)
    assert s["params.quantized_weights"] == Q_PARAMS
    assert s["bytes.lm_head"] == 258 * 64 * 4


def test_nf4_bytes_by_hand(tiny_source) -> None:
    s = _footprint(tiny_source, "nf4")
    assert s["bytes.quantized_weights"] == Q_PARAMS // 2  # two 4-bit codes per byte
    absmax = sum(BLOCKS) * 4  # fp32 per block
    code = N_LAYERS * 16 * 4  # 16-entry fp32 code table per layer
    assert s["bytes.quant_state"] == absmax + code


def test_nf4_dq_bytes_by_hand(tiny_source) -> None:
    s = _footprint(tiny_source, "nf4-dq")
    absmax = sum(BLOCKS)  # uint8 per block
    nested_absmax = sum(math.ceil(b / 256) * 4 for b in BLOCKS)  # fp32 per 256 blocks
    offset = N_LAYERS * 4
    codes = N_LAYERS * (16 * 4 + 256 * 4)  # first-level and nested code tables
    assert s["bytes.quant_state"] == absmax + nested_absmax + offset + codes


def test_double_quant_saving_equals_hand_value_on_tiny_model(tiny_source) -> None:
    rows = double_quant_rows(inventory(_load(tiny_source, "nf4-dq").model))
    fp32_constants = sum(BLOCKS) * 4
    dq_constants = sum(BLOCKS) + N_LAYERS * 4 + sum(math.ceil(b / 256) * 4 for b in BLOCKS)
    block = 8 * (fp32_constants - dq_constants) / Q_PARAMS
    assert rows["dq_saving_bits.block_constants"] == pytest.approx(block, rel=1e-12)
    total = block - 8 * N_LAYERS * 1024 / Q_PARAMS
    assert rows["dq_saving_bits.total"] == pytest.approx(total, rel=1e-12)
    assert rows["dq_saving_bits.total"] < 0  # tiny layers: the 1 KiB tables cost more
    assert double_quant_rows(inventory(_load(tiny_source, "nf4").model)) == {}


def test_double_quant_saving_approaches_0373_on_a_large_layer() -> None:
    result = dq_saving_for_layer(4096, 4096)
    assert abs(result["saving"] - 0.373) < 0.005
    assert result["bits_nf4"] == pytest.approx(4.5, abs=0.01)


def test_savings_ratios_on_int8(tiny_source) -> None:
    s = _footprint(tiny_source, "int8")
    r = savings(s)
    expected = Q_PARAMS * 4 / (s["bytes.quantized_weights"] + s["bytes.quant_state"])
    assert r["saving_vs_fp32.quantized_layers"] == pytest.approx(expected)
    assert 3.5 < r["saving_vs_fp32.quantized_layers"] < 4.0  # 4x minus the row scales
    assert r["saving_vs_fp16.quantized_layers"] == pytest.approx(expected / 2)
    assert r["saving_vs_fp32.model"] < r["saving_vs_fp32.quantized_layers"]


def _snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (reference - approx).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def test_int8_logits_close_to_fp32(tiny_source) -> None:
    # Per-row absmax int8 rounding of Gaussian-like weights leaves a relative error near
    # absmax / (127 * sqrt(12)) ~ 1% per layer, about 40 dB; 25 dB leaves room for the fp16
    # activations and two layers, while a wrong scale or layout falls below 10 dB.
    ids = torch.arange(2, 66).view(1, 64)
    with torch.no_grad():
        ref = _load(tiny_source, "fp32").model(ids).logits
        out = _load(tiny_source, "int8").model(ids).logits.float()
    assert _snr_db(ref, out) > 25


def test_nf4_reconstructs_normal_weights_better_than_fp4() -> None:
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    weight = torch.randn(256, 256)
    errors = {}
    for quant_type in ("nf4", "fp4"):
        packed, state = F.quantize_4bit(weight, quant_type=quant_type)
        errors[quant_type] = (F.dequantize_4bit(packed, state) - weight).pow(2).mean().item()
    assert errors["nf4"] < errors["fp4"]


def test_unsupported_platform_is_an_error_row_not_a_crash(tiny_source, monkeypatch) -> None:
    from harness.runner.cell import run_cell
    from harness.schemes import bnb

    monkeypatch.setattr(bnb, "SUPPORTED_DEVICES", ("cuda",))
    cell = tiny_cell("nf4")
    record = run_cell(cell)
    assert record["status"] == "error"
    assert "bitsandbytes does not support device 'cpu'" in record["error"]


def test_unknown_bnb_option_names_the_allowed_ones() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="quant_typ"):
        get_handler("nf4").options({"quant_typ": "nf4"})
    with pytest.raises(ValidationError):
        get_handler("nf4").options({"blocksize": 128})
