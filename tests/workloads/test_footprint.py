"""Footprint equals the bytes computed by hand from the tiny model's shapes."""

from __future__ import annotations

import pytest
import torch

from harness.schemes import get_handler
from harness.workloads.footprint import inventory, summarize

# tiny-llama: vocab 258 (256 bytes + BOS/EOS), hidden 64, intermediate 128, 2 layers,
# 4 heads of 16 dims, 2 KV heads (k/v projections 64 -> 32), untied lm_head.
V, H, FF, L, KV = 258, 64, 128, 2, 32
LINEAR_PER_LAYER = H * H + H * KV + H * KV + H * H + 3 * H * FF
NORMS = L * 2 * H + H


@pytest.mark.parametrize("name,width", [("fp32", 4), ("bf16", 2)])
def test_footprint_matches_hand_count(tiny_source, name: str, width: int) -> None:
    handler = get_handler(name)
    model = handler.load(tiny_source, handler.options(), "cpu").model
    s = summarize(inventory(model))
    assert s["params.linear_weights"] == L * LINEAR_PER_LAYER
    assert s["bytes.linear_weights"] == L * LINEAR_PER_LAYER * width
    assert s["bytes.embeddings"] == V * H * width
    assert s["bytes.lm_head"] == V * H * width
    assert s["bytes.norms"] == NORMS * width
    params = L * LINEAR_PER_LAYER + 2 * V * H + NORMS
    assert s["params.total"] == params
    assert s["bits_per_param"] == 8 * width
    # rotary inv_freq buffers stay fp32 whatever the weights are
    assert s["bytes.total"] == params * width + s["bytes.buffers"]
    buffers_same_dtype = s["bytes.buffers"] if width == 4 else 0
    dtype = str(model.dtype).removeprefix("torch.")
    assert s[f"bytes_by_dtype.{dtype}"] == params * width + buffers_same_dtype


def test_tied_weights_are_counted_once() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    s = summarize(inventory(model))
    assert s["bytes.embeddings"] == 100 * 32 * 4
    assert "bytes.lm_head" not in s
    assert s["params.total"] == sum(p.numel() for p in model.parameters())
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_coverage_counts_quantized_share_by_kind():
    from harness.workloads.footprint import Entry, coverage

    entries = [
        Entry("a.codes", "quantized_weights", "uint8", 50, 100, "linear"),
        Entry("a.scale", "quant_state", "float16", 8, 0, ""),
        Entry("x.gate_up_proj", "expert_weights", "float32", 1200, 300, "experts"),
        Entry("embed", "embeddings", "float32", 400, 100, ""),
    ]
    cov = coverage(entries)
    assert cov["coverage.linear"] == 1.0
    assert cov["coverage.experts"] == 0.0
    assert cov["coverage.linear_like"] == pytest.approx(100 / 400)
    assert cov["coverage.params"] == pytest.approx(100 / 500)
    assert cov["params.unquantized"] == 400
