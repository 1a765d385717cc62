import importlib.util
import json
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.quant import QuantLinear, gptq_quantize, rtn_quantize, spqr_quantize
from harness.quant.export import dequantize_gptq, export_gptq, gptq_tensors, import_gptq


class Layer:
    """A 96 x 128 weight with a few spikes and a Hessian of correlated inputs."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(512, 128, generator=gen) @ (
            torch.eye(128) + 0.2 * torch.randn(128, 128, generator=gen)
        )
        self.weight = 0.05 * torch.randn(96, 128, generator=gen)
        self.weight[torch.rand(96, 128, generator=gen) < 0.01] *= 10
        self.hessian = x.t() @ x * (2 / 512)


@pytest.fixture(scope="module")
def layer():
    return Layer()


def _variants(layer):
    w, h = layer.weight, layer.hessian
    return {
        "rtn4": rtn_quantize(w, 4, 32),
        "rtn4-per-row": rtn_quantize(w, 4, None),
        "rtn3-sym": rtn_quantize(w, 3, 64, sym=True),
        "gptq4-act": gptq_quantize(w, h, 4, 32, act_order=True),
        "gptq3-act": gptq_quantize(w, h, 3, 32, act_order=True),
        "gptq8": gptq_quantize(w, h, 8, 64),
        "gptq2": gptq_quantize(w, h, 2, 32),
    }


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_round_trip_is_exact(layer, fmt):
    for name, qw in _variants(layer).items():
        t = gptq_tensors(qw, fmt)
        rows, cols = qw.shape
        assert t["qweight"].dtype == torch.int32 and t["qzeros"].dtype == torch.int32
        assert t["qweight"].shape == (cols * qw.bits // 32, rows), name
        assert t["qzeros"].shape == (qw.n_groups, rows * qw.bits // 32), name
        assert t["scales"].dtype == torch.float16 and t["scales"].shape == (qw.n_groups, rows)
        assert t["g_idx"].dtype == torch.int32 and t["g_idx"].shape == (cols,)
        assert torch.equal(dequantize_gptq(t, qw.bits, fmt), qw.dequantize()), name


def test_four_bit_word_layout_and_v1_zero_offset(layer):
    qw = rtn_quantize(layer.weight, 4, 32)
    t = gptq_tensors(qw, "gptq")
    codes = qw.unpacked_codes().long()  # no act-order: stored order is original order
    word = sum(int(codes[5, k]) << (4 * k) for k in range(8))
    assert int(t["qweight"][0, 5]) & 0xFFFFFFFF == word
    zeros = qw.zero_values().long()
    stored = (int(t["qzeros"][0, 0]) & 0xF, (int(t["qzeros"][0, 0]) >> 4) & 0xF)
    assert stored == ((int(zeros[0, 0]) - 1) % 16, (int(zeros[0, 1]) - 1) % 16)
    v2 = gptq_tensors(qw, "gptq_v2")
    assert int(v2["qzeros"][0, 0]) & 0xF == int(zeros[0, 0])


def test_three_bit_stream_matches_autogptq_packing(layer):
    """AutoGPTQ packs 32 3-bit codes into 3 words; code 10 straddles words 0 and 1."""
    qw = rtn_quantize(layer.weight, 3, 32)
    q = qw.unpacked_codes().long()[0]  # output row 0, first 32 inputs
    w0 = sum(int(q[k]) << (3 * k) for k in range(10)) | ((int(q[10]) << 30) & 0xFFFFFFFF)
    w1 = (int(q[10]) >> 2) & 1
    w1 |= sum(int(q[11 + k]) << (3 * k + 1) for k in range(10)) | ((int(q[21]) << 31) & 0xFFFFFFFF)
    qweight = gptq_tensors(qw)["qweight"][:, 0].tolist()
    assert [v & 0xFFFFFFFF for v in qweight[:2]] == [w0, w1]


def test_zero_point_zero_warns_in_v1_and_still_round_trips():
    w = torch.rand(32, 64)  # all weights >= 0: the grid starts at 0, so every zero is 0
    qw = rtn_quantize(w, 4, 32)
    assert bool((qw.zero_values() == 0).all())
    model = nn.Sequential(QuantLinear(qw))
    with pytest.warns(UserWarning, match="gptq_v2"):
        _export_and_check(model, "gptq")


def _export_and_check(model, fmt):
    with tempfile.TemporaryDirectory() as d:
        config = export_gptq(model, d, checkpoint_format=fmt)
        dense = import_gptq(d)
        saved = json.loads((Path(d) / "quantize_config.json").read_text())
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            assert torch.equal(dense[name], module.quantized_weight().dequantize())
    assert saved == config
    return config


def _tiny_quantized(method: str, bits: int | None = None, sym: bool = False):
    """One-layer Llama (in_features 64 and 128) with every linear of the block quantized."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    layers = model.model.layers
    for name, lin in [(n, m) for n, m in layers.named_modules() if isinstance(m, nn.Linear)]:
        x = torch.randn(256, lin.in_features)
        h = x.t() @ x * (2 / 256)
        if method == "gptq":
            qw = gptq_quantize(lin.weight, h, bits or 4, 32, act_order=True, sym=sym)
        elif method == "spqr":
            qw = spqr_quantize(lin.weight, h, bits or 3)
        else:
            qw = rtn_quantize(lin.weight, bits or 4, 32, sym=sym)
        parent, _, child = name.rpartition(".")
        setattr(layers.get_submodule(parent), child, QuantLinear(qw, lin.bias))
    return model


@pytest.mark.filterwarnings("ignore:asymmetric")
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_model_export_writes_standard_layout(tmp_path, fmt):
    model = _tiny_quantized("gptq")
    config = export_gptq(model, tmp_path, checkpoint_format=fmt, damp_percent=0.01)
    assert config["bits"] == 4 and config["group_size"] == 32
    assert config["desc_act"] is True and config["sym"] is False
    assert config["checkpoint_format"] == fmt and config["true_sequential"] is False
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["quantization_config"] == config
    assert not hasattr(model.config, "quantization_config")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "model.safetensors"))
    prefix = "model.layers.0.self_attn.q_proj"
    assert {f"{prefix}.{p}" for p in ("qweight", "qzeros", "scales", "g_idx")} <= set(stored)
    assert f"{prefix}.codes" not in stored and "model.embed_tokens.weight" in stored
    dense = import_gptq(tmp_path)
    assert len(dense) == 7
    for name, qw in dense.items():
        assert torch.equal(qw, model.get_submodule(name).quantized_weight().dequantize())


def test_spqr_layers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="SpQR"):
        export_gptq(_tiny_quantized("spqr"), tmp_path)


def test_asymmetric_v1_export_warns_that_gptqmodel_refuses_it(tmp_path):
    with pytest.warns(UserWarning, match="GPTQModel refuses"):
        export_gptq(_tiny_quantized("rtn"), tmp_path / "v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_gptq(_tiny_quantized("rtn", sym=True), tmp_path / "v1-sym")
        export_gptq(_tiny_quantized("rtn"), tmp_path / "v2", checkpoint_format="gptq_v2")


def _tiny_tokenizer(vocab_size: int = 64):
    """A word-level tokenizer over the tiny model's vocabulary (GPTQModel.load needs one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="t0", pad_token="t1", eos_token="t2", bos_token="t3"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None,
    reason="GPTQModel is not installed: loading the export with a third-party kernel is untested",
)
@pytest.mark.parametrize(
    ("method", "bits", "sym", "fmt"),
    [
        ("rtn", 4, False, "gptq_v2"),
        ("rtn", 4, True, "gptq"),
        ("gptq", 4, False, "gptq_v2"),  # act-order: permuted g_idx, desc_act=True
        ("gptq", 3, True, "gptq"),  # 3-bit words straddle int32 boundaries
        ("gptq", 3, False, "gptq_v2"),
        ("rtn", 8, False, "gptq_v2"),
    ],
)
def test_gptqmodel_loads_export_with_same_outputs(
    tmp_path, monkeypatch, method, bits, sym, fmt
):  # pragma: no cover - optional
    """GPTQModel's reference torch kernel reproduces every layer and the logits.

    The backend is pinned: on CPU, GPTQModel's ``torch_fused`` kernel (which ``auto`` may pick)
    drops the zero points of asymmetric checkpoints. fp16 keeps the kernel's own rounding
    (~5e-4 on the logits) far below what a layout error causes (> 0.1). Our layers run the exact
    dequantize + matmul path: the packed CPU kernels round activations to bf16 (~3e-3).
    """
    from gptqmodel import BACKEND, GPTQModel

    monkeypatch.setenv("HARNESS_QUANT_KERNEL", "torch")

    model = _tiny_quantized(method, bits, sym)
    config = export_gptq(model, tmp_path, checkpoint_format=fmt, tokenizer=_tiny_tokenizer())
    assert (config["bits"], config["sym"], config["desc_act"]) == (bits, sym, method == "gptq")
    loaded = GPTQModel.load(
        str(tmp_path), device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float16
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, ours in model.named_modules():
            if isinstance(ours, QuantLinear):
                theirs = loaded.model.get_submodule(name)
                assert type(theirs).__module__.startswith("gptqmodel."), name
                x = torch.randn(8, ours.in_features, generator=gen)
                ref, out = ours(x), theirs(x.half()).float()
                assert (out - ref).norm() <= 2e-3 * ref.norm(), name
        ids = torch.randint(0, 64, (2, 16), generator=gen)
        ref = model(input_ids=ids).logits
        out = loaded(input_ids=ids).logits.float()
    assert torch.allclose(out, ref, atol=3e-3, rtol=0)
