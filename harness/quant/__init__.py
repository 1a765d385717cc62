"""Weight-only post-training quantization: RTN, GPTQ and SpQR in pure torch."""

from harness.quant.calibrate import (
    capture_layer_inputs,
    layer_stats,
    quantize_decoder_layers,
    replace_linears,
)
from harness.quant.gptq import Hessian, gptq_quantize
from harness.quant.grid import dequantize, fit_minmax, quantize, rtn_quantize
from harness.quant.linear import QuantizedWeight, QuantLinear, formula_bits_spqr, measured_bits
from harness.quant.pack import PackedCodes, pack, unpack
from harness.quant.spqr import spqr_quantize
from harness.quant.storage import load_quantized, save_quantized

__all__ = [
    "Hessian",
    "PackedCodes",
    "QuantLinear",
    "QuantizedWeight",
    "capture_layer_inputs",
    "dequantize",
    "fit_minmax",
    "formula_bits_spqr",
    "gptq_quantize",
    "layer_stats",
    "load_quantized",
    "measured_bits",
    "pack",
    "quantize",
    "quantize_decoder_layers",
    "replace_linears",
    "rtn_quantize",
    "save_quantized",
    "spqr_quantize",
    "unpack",
]
