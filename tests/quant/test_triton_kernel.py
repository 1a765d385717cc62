"""The fused Triton kernel against the torch dequantize + matmul path.

On a machine without CUDA the kernel runs in Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set in tests/conftest.py); with CUDA it runs for real.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from harness.quant import QuantLinear
from harness.quant.gptq import gptq_quantize
from harness.quant.group_stats import decode_stat, stat_at
from harness.quant.linear import KERNEL_ENV, QuantizedWeight, matmul_kernel
from harness.quant.pack import gather_codes, pack, unpack
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _schemes(layer) -> dict[str, QuantizedWeight]:
    w, h = layer.weight, layer.hessian
    return {
        "spqr-w3-bilevel-outliers-perm": spqr_quantize(w, h, 3, outlier_threshold=0.2),
        "spqr-w4-no-outliers": spqr_quantize(w, h, 4, outlier_threshold=float("inf")),
        "gptq-w4-g32-act-order": gptq_quantize(w, h, 4, 32, act_order=True),
        "gptq-w3-g128": gptq_quantize(w, h, 3, 128),
        "rtn-w2-g16": rtn_quantize(w, 2, 16),
        "rtn-w3-g48": rtn_quantize(w, 3, 48),
        "rtn-w5-g64": rtn_quantize(w, 5, 64),
        "rtn-w4-g20-groups-straddle-tiles": rtn_quantize(w, 4, 20),
        "rtn-w8-g64": rtn_quantize(w, 8, 64),
    }


def _reference(x, qw: QuantizedWeight, bias=None):
    out = x.float() @ qw.dequantize().t().to(x.device)
    return out if bias is None else out + bias.float()


@pytest.fixture()
def triton_kernel(monkeypatch):
    monkeypatch.setenv(KERNEL_ENV, "triton")


def test_fused_kernel_matches_dequantized_matmul(odd_layer, triton_kernel):
    """100 x 90: the width is not a multiple of any group size or of the kernel tiles."""
    x = odd_layer.x[:5]
    for name, qw in _schemes(odd_layer).items():
        module = QuantLinear(qw).to(DEVICE)
        out = module(x.to(DEVICE))
        ref = _reference(x, qw).to(DEVICE)
        err = float((out - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_prefill_sized_input_with_bias_and_leading_dims(layer, triton_kernel):
    qw = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
    bias = torch.randn(128, generator=torch.Generator().manual_seed(1))
    module = QuantLinear(qw, bias).to(DEVICE)
    x = layer.x[:70].reshape(2, 35, 200).to(DEVICE)  # M = 70 spans two row tiles
    out = module(x)
    assert out.shape == (2, 35, 128)
    assert module(x[:, :0]).shape == (2, 0, 128)
    ref = _reference(x.reshape(70, 200), qw, bias.to(DEVICE)).reshape(2, 35, 128)
    assert torch.allclose(out, ref, atol=1e-4 * float(ref.abs().max()))


def test_outliers_are_added_by_the_sparse_correction(layer):
    """The dense tiles hold grid values only; without the correction the result differs."""
    from harness.quant import _triton_kernel

    qw = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
    assert qw.num_outliers > 0
    x = layer.x[:4].to(DEVICE)
    stored = x.index_select(-1, qw.perm.long().to(DEVICE))
    dense_only = _triton_kernel.launch(stored.contiguous(), qw.to(DEVICE))
    gap = float((dense_only - _reference(x, qw)).abs().max())
    assert gap > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype(layer, triton_kernel, dtype):
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip("Triton's interpreter multiplies bfloat16 tiles as raw integers")
    qw = gptq_quantize(layer.weight, layer.hessian, 4, 64, act_order=True)
    x = layer.x[:6].to(DEVICE, dtype)
    out = QuantLinear(qw).to(DEVICE)(x)
    assert out.dtype == dtype
    ref = _reference(x, qw)
    assert torch.allclose(out.float(), ref, rtol=0.02, atol=0.02 * float(ref.abs().max()))


def test_gradient_flows_to_the_input(odd_layer, triton_kernel):
    qw = spqr_quantize(odd_layer.weight, odd_layer.hessian, 3, outlier_threshold=0.2)
    x = odd_layer.x[:3].to(DEVICE).requires_grad_()
    QuantLinear(qw).to(DEVICE)(x).square().sum().backward()
    w = qw.dequantize().to(DEVICE)
    x_ref = x.detach().clone().requires_grad_()
    (x_ref @ w.t()).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-3)


def test_kernel_choice(monkeypatch):
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert matmul_kernel(torch.zeros(1)) == "packed"  # CPU tensors take the packed CPU kernels
    monkeypatch.setenv(KERNEL_ENV, "Triton")
    assert matmul_kernel(torch.zeros(1)) == "triton"
    monkeypatch.setenv(KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match="auto, torch, packed, triton"):
        matmul_kernel(torch.zeros(1))
    monkeypatch.setenv(KERNEL_ENV, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device, or TRITON_INTERPRET=1"):
            matmul_kernel(torch.zeros(1))


@pytest.mark.parametrize("bits", range(1, 9))
def test_gather_codes_equals_unpack(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (13, 11), generator=gen)
    words = pack(codes, bits)
    index = torch.randperm(codes.numel(), generator=gen)[:50]
    assert torch.equal(gather_codes(words, bits, index), codes.reshape(-1)[index])
    assert torch.equal(unpack(words, bits, codes.shape).long(), codes)


def test_stat_at_equals_decode_stat(odd_layer):
    qw = spqr_quantize(odd_layer.weight, odd_layer.hessian, 3, outlier_threshold=0.2)
    rows = qw.shape[0]
    table = decode_stat(qw.scale, qw.scale_bits, qw.scale2, qw.n_groups, rows, 16)
    group = torch.tensor([0, 1, qw.n_groups - 1, 2])
    row = torch.tensor([0, 17, rows - 1, 50])
    got = stat_at(qw.scale, qw.scale_bits, qw.scale2, rows, qw.stats_group_size, group, row)
    assert torch.equal(got, table[group, row])


_COMPILE_SCRIPT = """
import sys, torch
sys.path.insert(0, "tests/quant")
from conftest import make_layer
from harness.quant import _triton_kernel as kernel
from harness.quant.gptq import gptq_quantize
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize

layer = make_layer(64, 80, tokens=256)
spqr = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
gptq = gptq_quantize(layer.weight, layer.hessian, 4, 32, act_order=True)
cases = [(90, spqr, d, m) for d in (torch.float32, torch.float16, torch.bfloat16) for m in (1, 64)]
cases += [(90, gptq, torch.float16, 1), (80, spqr, torch.bfloat16, 1)]
cases += [(80, gptq, torch.float32, 64), (90, rtn_quantize(layer.weight, 4, 20), torch.float16, 1)]
for arch, qw, dtype, m in cases:
    compiled = kernel.compile_for(qw, dtype, m, arch)
    assert len(compiled.asm["cubin"]) > 0
    print("compiled", arch, qw.method, dtype, m)
"""


def test_kernel_compiles_for_ampere_and_hopper(tmp_path):
    """Compiled code, not the interpreter: catches what only the real compiler rejects."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 10
