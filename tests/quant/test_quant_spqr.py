import math

import pytest
import torch

from harness.quant.gptq import gptq_quantize
from harness.quant.grid import dequantize, fit_minmax, quantize
from harness.quant.linear import formula_bits_spqr, measured_bits
from harness.quant.spqr import leave_one_out_gain, spqr_quantize

INF = math.inf


def test_formula_published_example():
    assert formula_bits_spqr(3, 16, 16, 3, 3, 0.0) == pytest.approx(3.625)
    assert formula_bits_spqr(3, 16, 16, 3, 3, 0.01) == pytest.approx(3.945)


def test_spqr_beats_gptq_at_similar_bits(layer):
    gptq = gptq_quantize(layer.weight, layer.hessian, 3, 16, act_order=True, percdamp=0.01)
    spqr = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.5, percdamp=0.01)
    assert measured_bits(spqr) <= measured_bits(gptq) + 0.1
    assert layer.rel_error(spqr) < 0.85 * layer.rel_error(gptq)


def test_outliers_reduce_error(layer):
    none = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=INF)
    some = spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=0.2)
    assert none.num_outliers == 0 and none.outlier_values is None
    assert some.num_outliers > 0
    assert layer.rel_error(some) < 0.8 * layer.rel_error(none)


def test_outlier_fraction_grows_as_threshold_drops(layer):
    fractions = [
        spqr_quantize(layer.weight, layer.hessian, 3, outlier_threshold=t).outlier_fraction
        for t in (INF, 2.0, 0.5, 0.2, 0.1)
    ]
    assert fractions[0] == 0.0
    assert fractions == sorted(fractions)
    assert fractions[-1] > fractions[1] > 0


def test_stored_bytes_by_hand(layer):
    qw = spqr_quantize(layer.weight, layer.hessian, 3, beta1=16, beta2=16)
    rows, cols, nnz = 128, 200, qw.num_outliers
    groups, runs = 13, 8  # ceil(200 / 16), ceil(128 / 16)
    assert qw.stored_bytes() == {
        "codes": 128 * 200 * 3 // 8,
        "stats": 2 * (groups * rows * 3 // 8),  # 3-bit scale and zero codes
        "stats2": 2 * groups * runs * 2 * 2,  # (scale, zero) fp16 pairs for scale and zero
        "outliers": nnz * (2 + 2) + (rows + 1) * 4,
        "perm": cols * 2,
    }


def test_measured_bits_match_formula_on_aligned_shape(aligned_layer):
    layer = aligned_layer
    qw = spqr_quantize(layer.weight, layer.hessian, 3, beta1=16, beta2=16)
    rows, cols = 64, 256
    overhead = 8 * (cols * 2 + (rows + 1) * 4) / (rows * cols)  # perm + row pointers
    expected = formula_bits_spqr(3, 16, 16, 3, 3, qw.outlier_fraction)
    assert measured_bits(qw) == pytest.approx(expected + overhead, abs=1e-9)


def test_odd_shapes(odd_layer):
    qw = spqr_quantize(odd_layer.weight, odd_layer.hessian, 3, beta1=16, beta2=16, block_size=32)
    assert qw.shape == (100, 90) and qw.n_groups == 6
    assert qw.scale2.shape == (6, 7, 2)
    assert qw.dequantize().shape == (100, 90)
    gptq = gptq_quantize(odd_layer.weight, odd_layer.hessian, 3, 16, act_order=True)
    assert odd_layer.rel_error(qw) < odd_layer.rel_error(gptq)


def test_diagonal_hessian_outliers_are_exact_weights(layer):
    """Without error propagation outliers must be the original weights (in fp16)."""
    h = torch.diag(torch.linspace(1.0, 3.0, 200))
    qw = spqr_quantize(layer.weight, h, 3, outlier_threshold=0.2)
    assert qw.num_outliers > 0
    rows = torch.repeat_interleave(torch.arange(128), qw.outlier_rowptr.long().diff())
    cols = qw.outlier_cols.long()
    assert torch.equal(qw.outlier_values, layer.weight[rows, cols].half())
    assert torch.equal(qw.dequantize()[rows, cols], layer.weight[rows, cols].half().float())
    # CSR is sorted by row then column
    key = rows * 200 + cols
    assert torch.equal(key, torch.sort(key).values)


def test_bilevel_stats_are_small_codes(layer):
    qw = spqr_quantize(layer.weight, layer.hessian, 3)
    assert qw.scale_bits == 3 and qw.zero_bits == 3 and qw.stats_group_size == 16
    assert qw.scale.dtype == torch.uint8 and qw.scale2.dtype == torch.float16
    scales = qw.scale_values()
    assert (scales > 0).all()
    # each run of 16 rows of a group takes at most 8 distinct scale values
    runs = scales.view(13, 8, 16)
    assert max(len(torch.unique(r)) for r in runs.reshape(-1, 16)) <= 8


def test_fp16_stats_option(layer):
    qw = spqr_quantize(
        layer.weight, layer.hessian, 3, qq_scale_bits=None, qq_zero_bits=None, outlier_threshold=INF
    )
    assert qw.scale.dtype == torch.float16 and qw.scale2 is None
    assert qw.stored_bytes()["stats"] == 2 * 13 * 128 * 2


def test_leave_one_out_gain_flags_the_spike():
    group = torch.tensor([[0.1, -0.1, 0.05, 0.0, 3.0, -0.05, 0.08, 0.02]])
    gain = leave_one_out_gain(group, torch.ones(8), 3)
    assert int(gain.argmax()) == 4
    # without the spike the other seven weights fit a fine grid: almost all error goes
    scale, zero = fit_minmax(group, 3, round_zero=False)
    base = float((dequantize(quantize(group, scale, zero, 3), scale, zero) - group).square().sum())
    assert float(gain[0, 4]) > 0.9 * base
    assert float(gain[0, 4]) > 1.5 * float(gain[0, :4].max())


def test_spqr_deterministic(layer):
    a = spqr_quantize(layer.weight, layer.hessian, 3)
    b = spqr_quantize(layer.weight, layer.hessian, 3)
    for name, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[name]), name
