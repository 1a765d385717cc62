"""Packed CPU layouts of QuantLinear: exactness against the dequantized weight (up to the
kernels' bfloat16 activations), runtime bytes, and a backward that keeps no dense weight."""

import pytest
import torch

from harness.measure.training_memory import SavedTensorMeter
from harness.quant import QuantLinear
from harness.quant.cpu_kernels import PackedLinear, packed_ops_available
from harness.quant.gptq import gptq_quantize
from harness.quant.linear import KERNEL_ENV, TORCH_PATH, matmul_kernel
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize

pytestmark = pytest.mark.skipif(not packed_ops_available(), reason="no packed CPU kernels")

CASES = {
    # name: (build, kernel name fragment)
    "spqr-w3 (g16 spread, outliers, act-order)": (
        lambda ly: spqr_quantize(ly.weight, ly.hessian, 3, outlier_threshold=0.2),
        "spread g16->g32",
    ),
    "gptq-w4g64 act-order": (
        lambda ly: gptq_quantize(ly.weight, ly.hessian, 4, 64, act_order=True),
        "int4pack_mm_for_cpu (g64",
    ),
    "rtn-w4g128 (200 columns, padded)": (lambda ly: rtn_quantize(ly.weight, 4, 128), "(g128"),
    "rtn-w2g48": (lambda ly: rtn_quantize(ly.weight, 2, 48), "spread g48->g64"),
    "rtn-w8g64": (lambda ly: rtn_quantize(ly.weight, 8, 64), "int8pack_mm (per group of 64"),
    "rtn-w6g100": (lambda ly: rtn_quantize(ly.weight, 6, 100), "per group of 100"),
}


def _rel_error(y, x, qw):
    w = qw.dequantize()
    return float(((y - x @ w.t()).abs() / (x.abs() @ w.abs().t())).max())


@pytest.mark.parametrize("case", CASES)
def test_packed_layout_equals_dequantized_matmul(layer, case):
    build, fragment = CASES[case]
    qw = build(layer)
    packed = PackedLinear.build(qw)
    assert fragment in packed.name
    x = layer.x[:5]
    # bfloat16 activations and statistics inside the kernel: errors of a few 2**-9
    assert _rel_error(packed.matmul(x), x, qw) < 1e-2
    # the 3-D input of a transformer keeps its leading dims
    assert packed.matmul(x.reshape(5, 1, 200)).shape == (5, 1, 128)


def test_outlier_correction_is_what_makes_spqr_exact(layer):
    qw = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
    assert qw.num_outliers > 0
    packed = PackedLinear.build(qw)
    x = layer.x[:5]
    assert _rel_error(packed.matmul(x), x, qw) < 3e-3
    packed.correction = None
    assert _rel_error(packed.matmul(x), x, qw) > 1e-2


def test_module_defaults_to_packed_on_cpu_and_counts_runtime_bytes(layer, monkeypatch):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert matmul_kernel(torch.zeros(1)) == "packed"
    qw = gptq_quantize(layer.weight, layer.hessian, 4, 64, act_order=True)
    module = QuantLinear(qw)
    assert module.kernel_name("cpu").startswith("aten._weight_int4pack_mm_for_cpu")
    # 200 columns padded to 4 groups of 64: 4-bit codes two per byte, a bf16 scale and zero
    # per row and group, the int64 act-order permutation
    rows, cols = qw.shape
    expected = rows * 256 // 2 + rows * 4 * 2 * 2 + 8 * cols
    assert module.runtime_bytes("cpu") == expected
    x = layer.x[:3]
    assert _rel_error(module(x), x, qw) < 1e-2
    monkeypatch.setenv(KERNEL_ENV, "torch")
    assert module.kernel_name("cpu") == TORCH_PATH
    assert module.runtime_bytes("cpu") == sum(qw.stored_bytes().values())
    assert torch.allclose(module(x), x @ qw.dequantize().t(), atol=1e-5)


@pytest.mark.parametrize("kernel", ["packed", "torch"])
def test_backward_recomputes_the_weight(layer, monkeypatch, kernel):
    monkeypatch.setenv(KERNEL_ENV, kernel)
    qw = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
    module = QuantLinear(qw)
    x = layer.x[:4].clone().requires_grad_()
    meter = SavedTensorMeter(module)
    with meter.measure():
        y = module(x)
    meter.add_graph(y)
    # only the tiny input could be kept; a saved dense weight would be 128 * 200 * 4 bytes
    assert meter.bytes < 128 * 200 * 4 // 4
    y.square().sum().backward()
    x_ref = layer.x[:4].clone().requires_grad_()
    (x_ref @ qw.dequantize().t()).square().sum().backward()
    tol = 1e-5 if kernel == "torch" else 2e-2
    assert torch.allclose(x.grad, x_ref.grad, rtol=tol, atol=tol * float(x_ref.grad.abs().max()))


def test_g128_on_a_width_it_does_not_divide_runs_as_exact_g64():
    # the builtin model's 576-wide inputs: g128 does not divide them, g64 does
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 192, generator=gen), torch.randn(3, 192, generator=gen)
    qw = rtn_quantize(w, 4, 128)
    packed = PackedLinear.build(qw)
    assert "(g64" in packed.name
    # no padded columns: 4-bit codes of 192 columns, bf16 scale + zero for 3 groups of 64
    assert packed.nbytes() == 64 * 192 // 2 + 3 * 64 * 2 * 2
    assert _rel_error(packed.matmul(x), x, qw) < 1e-2


def test_runtime_layout_survives_dtype_casts_and_is_built_once(layer, monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "packed")
    module = QuantLinear(rtn_quantize(layer.weight, 4, 64))
    built = module.prepare_packed()
    module.to(torch.bfloat16)
    module(layer.x[:2].to(torch.bfloat16))
    assert module.prepare_packed() is built


def test_lora_on_a_quantized_layer_saves_no_dense_weight(layer, monkeypatch):
    from harness.adapters import LoraQuantLinear

    monkeypatch.delenv(KERNEL_ENV, raising=False)
    qw = gptq_quantize(layer.weight, layer.hessian, 4, 64, act_order=True)
    lora = LoraQuantLinear(QuantLinear(qw), r=4, alpha=8.0, dropout=0.0)
    x = layer.x[:4].clone().requires_grad_()  # input of a layer that is not the first
    meter = SavedTensorMeter(lora)
    with meter.measure():
        y = lora(x)
    meter.add_graph(y)
    dense = 128 * 200 * 4
    assert meter.bytes < dense // 4
    y.sum().backward()
    assert lora.lora_A.weight.grad is not None and x.grad.shape == x.shape
