"""bitsandbytes precisions: LLM.int8() (with and without outlier decomposition), NF4 and FP4.

Weights are quantized by bitsandbytes while transformers loads the model, so the stored bytes
are real. ``int8`` keeps the published outlier threshold 6.0; ``int8-nodecomp`` sets it to 0,
which turns the mixed-precision decomposition off (a default some tools pick silently).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

from pydantic import Field

from harness.errors import HarnessError
from harness.schemes.base import LoadedModel, SchemeHandler, SchemeOptions

SUPPORTED_DEVICES = ("cpu", "cuda")


class Int8Options(SchemeOptions):
    threshold: float = Field(6.0, ge=0.0)
    """``llm_int8_threshold``: activations above it go through the fp16 outlier path; 0 = off."""
    skip_modules: tuple[str, ...] | None = None
    """Modules kept unquantized; None keeps transformers' default (the lm_head)."""


class FourBitOptions(SchemeOptions):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = False
    """Quantize the per-block absmax constants again (8-bit, blocks of 256): QLoRA's DQ."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Matmul dtype; auto = bfloat16 on CUDA, float32 on CPU."""
    blocksize: Literal[64] = 64
    """Weights per absmax constant. transformers' loader fixes it at 64."""
    skip_modules: tuple[str, ...] | None = None
    """Modules kept unquantized; None keeps transformers' default (the lm_head)."""


def _check_platform(device: str) -> None:
    if device not in SUPPORTED_DEVICES:
        raise HarnessError(
            f"bitsandbytes does not support device '{device}' here; supported: "
            f"{', '.join(SUPPORTED_DEVICES)}"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken native library raises more than ImportError
        raise HarnessError(f"bitsandbytes cannot be imported on this machine: {exc}") from exc


def _load(source, config, device: str, compute_dtype: str, tokenizer=None) -> LoadedModel:
    import torch

    model = source.load_model(dtype=torch.float32, device=device, quantization_config=config)
    return LoadedModel(model, tokenizer or source.tokenizer(), "quantized", compute_dtype)


class Int8Scheme(SchemeHandler):
    Options = Int8Options

    def linear_bytes(self, opts: Int8Options, out: int, inp: int) -> tuple[int, int]:
        return out * inp, 4 * out  # int8 codes + one fp32 scale (SCB) per output row

    def load(self, source, opts: Int8Options, device: str) -> LoadedModel:
        _check_platform(device)
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=opts.threshold,
            llm_int8_skip_modules=list(opts.skip_modules) if opts.skip_modules else None,
        )
        # int8 matmuls take fp16 inputs (bitsandbytes warns on every forward); the rest of
        # the model stays fp32.
        warnings.filterwarnings("ignore", message=".*inputs will be cast from")
        loaded = _load(source, config, device, "float16")
        loaded.notes["llm_int8_threshold"] = opts.threshold
        return loaded


class FourBitScheme(SchemeHandler):
    Options = FourBitOptions

    def linear_bytes(self, opts: FourBitOptions, out: int, inp: int) -> tuple[int, int]:
        n = out * inp
        blocks = math.ceil(n / opts.blocksize)
        code = 16 * 4  # the 16-entry fp32 code table
        if opts.double_quant:
            # uint8 absmax per block, fp32 absmax per 256 blocks, 1 KiB nested code, offset
            return (n + 1) // 2, blocks + 4 * math.ceil(blocks / 256) + 1024 + 4 + code
        return (n + 1) // 2, 4 * blocks + code

    def load(self, source, opts: FourBitOptions, device: str) -> LoadedModel:
        _check_platform(device)
        import torch
        from transformers import BitsAndBytesConfig

        compute = opts.compute_dtype
        if compute == "auto":
            compute = "bfloat16" if device == "cuda" else "float32"
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=opts.quant_type,
            bnb_4bit_use_double_quant=opts.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute),
            llm_int8_skip_modules=list(opts.skip_modules) if opts.skip_modules else None,
        )
        return _load(source, config, device, compute)


def restore_trainable_layout(model) -> int:
    """Convert 4-bit layers that bitsandbytes repacked for CPU inference back into the layout
    its autograd path reads; returns how many were converted (0: none was packed).

    Why: on a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode on an input that needs
    no gradient (the inference workload, the budget probe) rewrites its weight for good into an
    inference-only layout (``quant_state.packing_format_for_cpu``: codes re-tiled, absmax bf16
    and transposed, double quantization undone) and never converts back in train mode.
    ``matmul_4bit`` then sends training forwards to ``gemv_4bit``, which has no autograd
    kernel: gradients through the frozen base go wrong silently, and on layers with a bias
    (GPT-2's Conv1D) its in-place ``result += bias`` raises "a view of a leaf Variable that
    requires grad is being used in an in-place operation". bitsandbytes' own inverse restores
    the codes (and a nested absmax) but leaves a plain absmax in the packed (K/64, N) layout,
    which would scramble the weights, so that one is flattened back here. The absmax keeps its
    bf16 rounding: training uses the weights the earlier forwards used.
    """
    import torch

    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except Exception:  # no (working) bitsandbytes: nothing of it can be packed
        return 0
    restored = 0
    with torch.inference_mode(False):  # new tensors autograd may use
        for module in model.modules():
            if not isinstance(module, Linear4bit):
                continue
            state = module.weight.quant_state
            if not getattr(state, "packing_format_for_cpu", False):
                continue
            packed_absmax = state.absmax
            codes, state = _convert_weight_packed_for_cpu_inverse(module.weight.data, state)
            if not state.nested and packed_absmax.dim() == 2:  # (K / blocksize, N) -> blocks
                state.absmax = packed_absmax.T.reshape(-1).to(torch.float32)
            module.weight.data = codes
            module.weight.quant_state = state
            restored += 1
    return restored


def keep_trainable_layout(model) -> int:
    """Restore the 4-bit layers' canonical layout and stop bitsandbytes from repacking them
    for CPU inference again; returns how many layers it holds.

    Needed where something reads a 4-bit weight's codes outside bitsandbytes' own matmul:
    peft's DoRA dequantizes the base weight in every forward (its row norms) and peft's merge
    dequantizes it once, both assuming the canonical layout; after an eval forward repacked a
    layer they read scrambled weights (measured on the builtin model: nf4-dq + DoRA held-out
    loss 17.9 instead of 5.3, a merge that added 5.3 nats). Held layers run eval forwards
    through the same dequantizing path as training.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:
        return 0
    restore_trainable_layout(model)
    held = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            held += 1
    return held
