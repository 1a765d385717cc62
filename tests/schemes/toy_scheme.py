"""A precision family that exists only in the tests: decoder linears in bfloat16, the rest fp32.

Everything the harness needs to know about it is stated here, which is the point: the test
that registers it touches no other file of the harness.
"""

from __future__ import annotations

from typing import Literal

from harness.schemes.base import LoadedModel, SchemeHandler, SchemeOptions


class ToyOptions(SchemeOptions):
    linear_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """dtype the decoder's linear weights are stored in."""


class ToyScheme(SchemeHandler):
    Options = ToyOptions
    quantizes_linears = False

    def linear_bytes(self, opts: ToyOptions, out: int, inp: int) -> tuple[int, int]:
        return out * inp * 2, 0

    def dense_dtype(self, opts: ToyOptions) -> str:
        return "float32"

    def unavailable(self, opts: ToyOptions, device: str) -> str | None:
        return None if device == "cpu" else "the toy scheme runs on cpu only"

    def load(self, source, opts: ToyOptions, device: str) -> LoadedModel:
        import torch
        from torch import nn

        model = source.load_model(dtype=torch.float32, device=device)
        head = model.get_output_embeddings()
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not head:
                module.to(getattr(torch, opts.linear_dtype))
                module.register_forward_pre_hook(_inputs_to_weight_dtype)
                module.register_forward_hook(_output_to_fp32)
        rows = [{"metric": "toy_linears_cast", "value": 1.0, "unit": "bool"}]
        return LoadedModel(model, source.tokenizer(), "dense", "mixed", rows=rows)


def _inputs_to_weight_dtype(module, args):
    return tuple(a.to(module.weight.dtype) for a in args)


def _output_to_fp32(module, args, output):
    return output.float()
