import pytest
import torch
from torch import nn

from harness.quant import QuantizedWeight, QuantLinear, load_quantized, save_quantized
from harness.quant.gptq import gptq_quantize
from harness.quant.linear import KERNEL_ENV
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize
from harness.quant.storage import read_header


@pytest.fixture(autouse=True)
def _exact_torch_path(monkeypatch):
    """The dequantize + matmul path is exact; packed layouts are checked in test_cpu_kernels."""
    monkeypatch.setenv(KERNEL_ENV, "torch")


def _spqr(layer):
    return spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)


def test_forward_equals_dequantized_matmul(layer):
    qw = _spqr(layer)
    bias = torch.randn(128, generator=torch.Generator().manual_seed(0))
    module = QuantLinear(qw, bias)
    x = layer.x[:7]
    expected = x @ qw.dequantize().t() + bias
    assert torch.allclose(module(x), expected, atol=1e-5)
    assert module(x.reshape(7, 1, 200)).shape == (7, 1, 128)
    assert torch.allclose(QuantLinear(qw)(x), x @ qw.dequantize().t(), atol=1e-5)
    # nothing dense is kept around after a forward
    assert set(dict(module.named_buffers())) == set(qw.tensors()) | {"bias"}
    assert not any(isinstance(v, torch.Tensor) for v in vars(module).values())


def test_forward_follows_input_dtype(layer):
    module = QuantLinear(_spqr(layer))
    out = module(layer.x[:3].to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    ref = layer.x[:3] @ module.quantized_weight().dequantize().t()
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max())


def test_buffers_carry_the_format_and_survive_dtype_casts(layer):
    qw = _spqr(layer)
    module = nn.Sequential(QuantLinear(qw))
    state = module.state_dict()
    assert set(state) == {f"0.{n}" for n in qw.tensors()}
    assert sum(t.numel() * t.element_size() for t in state.values()) == sum(
        qw.stored_bytes().values()
    )
    assert not any(t.dtype == torch.float32 for t in state.values())
    module.to(torch.bfloat16)
    assert module[0].scale2.dtype == torch.float16
    assert module[0].outlier_values.dtype == torch.float16
    assert torch.equal(module[0].quantized_weight().dequantize(), qw.dequantize())


def test_state_dict_round_trip(layer):
    for qw in (
        _spqr(layer),
        gptq_quantize(layer.weight, layer.hessian, 4, 64, act_order=True),
        rtn_quantize(layer.weight, 2, 48),
    ):
        tensors, meta = qw.state_dict()
        assert all(isinstance(v, (int, str, list)) for v in meta.values())
        back = QuantizedWeight.from_state_dict(tensors, meta)
        assert back.shape == qw.shape and back.method == qw.method
        assert torch.equal(back.dequantize(), qw.dequantize())


def test_safetensors_save_load(layer, tmp_path):
    quantized = {
        "0.mlp.up": _spqr(layer),
        "0.attn.q": gptq_quantize(layer.weight, layer.hessian, 4, 32),
    }
    path = tmp_path / "q.safetensors"
    save_quantized(path, quantized, extra={"bits": 3})
    loaded = load_quantized(path)
    assert set(loaded) == set(quantized)
    for name, qw in quantized.items():
        assert torch.equal(loaded[name].dequantize(), qw.dequantize())
        assert loaded[name].stored_bytes() == qw.stored_bytes()
    assert read_header(path)["extra"] == '{"bits": 3}'


def test_outlier_fraction_and_counts(layer):
    qw = _spqr(layer)
    assert qw.num_outliers == int(qw.outlier_rowptr[-1])
    assert qw.outlier_fraction == qw.num_outliers / (128 * 200)
    assert qw.outlier_cols.dtype == torch.int16 and qw.outlier_rowptr.dtype == torch.int32
