"""torchao precisions on the tiny model: real stored bytes, stated bytes, a working forward."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harness.schemes import get_handler
from harness.workloads.footprint import inventory, summarize

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="torchao is not installed"
)


def _decoder_linears(model):
    return [
        m
        for n, m in model.named_modules()
        if n.startswith("model.layers.") and hasattr(m, "in_features")
    ]


@pytest.mark.parametrize("name", ["ao-int8wo", "ao-int8dq"])
def test_footprint_counts_inner_tensors_and_matches_linear_bytes(tiny_source, name):
    handler = get_handler(name)
    opts = handler.options()
    assert handler.unavailable(opts, "cpu") is None
    loaded = handler.load(tiny_source, opts, "cpu")
    model = loaded.model
    linears = _decoder_linears(model)
    assert linears and all(type(m.weight).__name__ == "Int8Tensor" for m in linears)
    s = summarize(inventory(model))
    weights = state = params = 0
    for m in linears:
        w, st = handler.linear_bytes(opts, m.out_features, m.in_features)
        weights, state, params = weights + w, state + st, params + m.out_features * m.in_features
    # int8 codes: one byte per weight, not the 4 of the dense fp32 view the subclass reports
    assert s["bytes.quantized_weights"] == weights == params
    assert s["bytes.quant_state"] == state
    assert s["params.quantized_weights"] == params
    assert s["bits_per_param_quantized"] == 8 * (weights + state) / params
    ids = torch.arange(1, 9).view(1, 8)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_int4_is_skipped_on_cpu_with_a_reason():
    handler = get_handler("ao-int4wo-g64")
    reason = handler.unavailable(handler.options(), "cpu")
    assert reason and "CPU" in reason and "CUDA" in reason
