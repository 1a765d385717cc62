import torch

from harness.quant.gptq import gptq_quantize
from harness.quant.grid import dequantize, fit_minmax, quantize
from harness.quant.rtn import rtn_quantize


def test_gptq_style_grid_contains_zero_exactly():
    w = torch.tensor([[0.5, 1.0, 2.0], [-3.0, -1.0, -0.5]])
    scale, zero = fit_minmax(w, 4, round_zero=True)
    assert torch.allclose(scale[:, 0], torch.tensor([2.0 / 15, 3.0 / 15]))
    assert torch.equal(zero[:, 0], torch.tensor([0.0, 15.0]))
    codes = quantize(torch.zeros(2, 1), scale, zero, 4)
    assert torch.equal(dequantize(codes, scale, zero), torch.zeros(2, 1))


def test_spqr_style_grid_is_plain_minmax_with_real_zero():
    w = torch.tensor([[0.5, 1.0, 2.0]])
    scale, zero = fit_minmax(w, 3, round_zero=False)
    assert torch.allclose(scale, torch.tensor([[1.5 / 7]]))
    assert torch.allclose(zero, torch.tensor([[-0.5 / (1.5 / 7)]]))
    rec = dequantize(quantize(w, scale, zero, 3), scale, zero)
    assert torch.allclose(rec[0, [0, 2]], torch.tensor([0.5, 2.0]), atol=1e-6)


def test_quantization_error_at_most_half_step():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    scale, zero = fit_minmax(w, 3, round_zero=False)
    rec = dequantize(quantize(w, scale, zero, 3), scale, zero)
    assert ((rec - w).abs() <= scale / 2 + 1e-6).all()


def test_constant_rows_do_not_produce_nan():
    w = torch.zeros(2, 4)
    w[1] = 3.0
    for round_zero in (True, False):
        scale, zero = fit_minmax(w, 4, round_zero=round_zero)
        rec = dequantize(quantize(w, scale, zero, 4), scale, zero)
        assert torch.isfinite(rec).all()
        assert torch.equal(rec[0], torch.zeros(4))


def test_rtn_non_dividing_group_size():
    w = torch.randn(8, 576, generator=torch.Generator().manual_seed(0))
    qw = rtn_quantize(w, 4, 128)
    assert qw.n_groups == 5 and qw.group_size == 128
    assert qw.scale_values().shape == (5, 8)
    deq = qw.dequantize()
    assert deq.shape == (8, 576)
    # the last group (64 columns) has its own grid: error bounded by its half step
    step = qw.scale_values()[4][:, None]
    assert ((deq[:, 512:] - w[:, 512:]).abs() <= step / 2 + 1e-5).all()
    whole = rtn_quantize(w, 4, None)
    assert whole.n_groups == 1
    assert (deq - w).norm() < (whole.dequantize() - w).norm()


def test_rtn_error_shrinks_with_bits():
    w = torch.randn(32, 96, generator=torch.Generator().manual_seed(1))
    errs = [float((rtn_quantize(w, b, 32).dequantize() - w).norm()) for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True)
    assert errs[-1] < 0.02 * errs[0]


def test_gptq_equals_rtn_for_uncorrelated_inputs(layer):
    """With a diagonal Hessian no error is propagated, so GPTQ must reduce to RTN."""
    h = torch.diag(torch.linspace(1.0, 2.0, layer.weight.shape[1]))
    gptq = gptq_quantize(layer.weight, h, 4, 32, percdamp=0.01)
    rtn = rtn_quantize(layer.weight, 4, 32)
    assert torch.equal(gptq.unpacked_codes(), rtn.unpacked_codes())
    assert torch.equal(gptq.dequantize(), rtn.dequantize())
