"""Dense precisions: fp32, tf32, fp16, bf16. Weights are stored in the named dtype."""

from __future__ import annotations

from typing import Literal

from harness.schemes.base import LoadedModel, SchemeHandler, SchemeOptions

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class DenseOptions(SchemeOptions):
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Parameter and compute dtype."""
    tf32: bool = False
    """Allow TF32 tensor-core matmuls (fp32 storage, 10-bit mantissa inputs)."""


class DenseScheme(SchemeHandler):
    Options = DenseOptions

    def unavailable(self, opts: DenseOptions, device: str) -> str | None:
        if not opts.tf32:
            return None
        if device != "cuda":
            return "tf32 needs a CUDA GPU with compute capability >= 8.0; this cell runs on cpu"
        import torch

        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return f"tf32 needs compute capability >= 8.0; this GPU has {major}.{minor}"
        return None

    quantizes_linears = False

    def linear_bytes(self, opts: DenseOptions, out: int, inp: int) -> tuple[int, int]:
        return out * inp * DTYPE_BYTES[opts.dtype], 0

    def dense_dtype(self, opts: DenseOptions) -> str:
        return opts.dtype

    def load(self, source, opts: DenseOptions, device: str) -> LoadedModel:
        import torch

        # Set both knobs explicitly so fp32 cells never inherit TF32 from a library default.
        torch.backends.cuda.matmul.allow_tf32 = opts.tf32
        torch.backends.cudnn.allow_tf32 = opts.tf32
        torch.set_float32_matmul_precision("high" if opts.tf32 else "highest")
        dtype = getattr(torch, opts.dtype)
        model = source.load_model(dtype=dtype, device=device)
        return LoadedModel(model, source.tokenizer(), "dense", opts.dtype)
