"""Weight-only post-training quantization: RTN, GPTQ and SpQR in pure torch."""

from harness.modules import is_linear_like
from harness.quant.calibrate import (
    LinearView,
    as_linear,
    capture_layer_inputs,
    layer_stats,
    quantize_decoder_layers,
    quantize_uncalibrated,
    replace_linears,
)
from harness.quant.experts import PackedExperts
from harness.quant.gptq import Hessian, gptq_quantize
from harness.quant.grid import dequantize, fit_minmax, quantize
from harness.quant.linear import QuantizedWeight, QuantLinear, formula_bits_spqr, measured_bits
from harness.quant.pack import PackedCodes, pack, unpack
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize
from harness.quant.storage import load_quantized, save_quantized

__all__ = [
    "Hessian",
    "LinearView",
    "PackedCodes",
    "PackedExperts",
    "QuantLinear",
    "QuantizedWeight",
    "as_linear",
    "capture_layer_inputs",
    "dequantize",
    "fit_minmax",
    "formula_bits_spqr",
    "gptq_quantize",
    "is_linear_like",
    "layer_stats",
    "load_quantized",
    "measured_bits",
    "pack",
    "quantize",
    "quantize_decoder_layers",
    "quantize_uncalibrated",
    "replace_linears",
    "rtn_quantize",
    "save_quantized",
    "spqr_quantize",
    "unpack",
]
