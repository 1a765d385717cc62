"""Block-by-block calibration of a stack of decoder layers (model-agnostic).

Each block sees the outputs of the *already quantized* previous blocks, so later layers
learn to compensate earlier quantization error (the GPTQ / SpQR protocol). Only one
block's Hessians and one set of hidden states are alive at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from harness.modules import linears, set_module
from harness.quant import experts as moe
from harness.quant.gptq import Hessian
from harness.quant.linear import QuantizedWeight, QuantLinear, measured_bits


class LinearView(NamedTuple):
    """A linear-like layer seen as ``y = x W^T + b`` with ``weight`` of shape ``out x in``."""

    weight: Tensor
    bias: Tensor | None


LayerInputs = tuple[tuple[Any, ...], dict[str, Any]]
QuantizeFn = Callable[[str, LinearView, Hessian], QuantizedWeight]
FallbackFn = Callable[[str, LinearView], QuantizedWeight]
Progress = Callable[[dict[str, Any]], None]
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


class _Captured(Exception):
    """Raised by the capture hook to stop the model once layer 0's inputs are known."""


def capture_layer_inputs(
    model_forward: Callable[[Tensor], Any], first_layer: nn.Module, batches: list[Tensor]
) -> list[LayerInputs]:
    """Record the ``(args, kwargs)`` the first layer receives for every batch.

    The forward is aborted right after recording, so the rest of the model never runs.
    """
    captured: list[LayerInputs] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((tuple(args), dict(kwargs)))
        raise _Captured

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Captured):
                    model_forward(batch)
    finally:
        handle.remove()
    return captured


def layer_stats(qw: QuantizedWeight, seconds: float | None = None) -> dict[str, Any]:
    """Summary of one quantized linear: outlier fraction, measured bits, solver time."""
    return {
        "shape": list(qw.shape),
        "method": qw.method,
        "outlier_fraction": qw.outlier_fraction,
        "measured_bits": measured_bits(qw),
        "stored_bytes": qw.stored_bytes(),
        "seconds": seconds,
    }


def _hidden(inputs: LayerInputs) -> Tensor:
    args, kwargs = inputs
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(inputs: LayerInputs, hidden: Tensor) -> LayerInputs:
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _clean_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop KV caches: calibration must not grow or reuse them across blocks."""
    out = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items()}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def _run(block: nn.Module, inputs: LayerInputs) -> Tensor:
    args, kwargs = inputs
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _move(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor in nested tuples / lists / dicts to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def as_linear(module: nn.Module) -> LinearView:
    """The one place a Conv1D's ``in x out`` weight is turned into ``out x in``."""
    if isinstance(module, nn.Linear):
        return LinearView(module.weight, module.bias)
    return LinearView(module.weight.t(), module.bias)


def _in_features(module: nn.Module) -> int:
    return as_linear(module).weight.shape[1]


def _collect_hessians(block: nn.Module, inputs: list[LayerInputs]) -> tuple[dict, dict, Tensor]:
    """Run the float block with hooks; returns the Hessians of its linear-like layers, the
    per-expert recorders of its experts modules, and the first batch's output."""
    hessians = {n: Hessian(_in_features(m), m.weight.device) for n, m in linears(block).items()}
    handles = [
        m.register_forward_hook(lambda _m, inp, _out, h=hessians[n]: h.add_batch(inp[0]))
        for n, m in linears(block).items()
    ]
    recorders = {n: moe.ExpertRecorder(m) for n, m in _expert_modules(block).items()}
    handles += [
        block.get_submodule(n).register_forward_pre_hook(r, with_kwargs=True)
        for n, r in recorders.items()
    ]
    try:
        reference = None
        for k, inp in enumerate(inputs):
            out = _run(block, inp)
            if k == 0:
                reference = out
    finally:
        for h in handles:
            h.remove()
    return hessians, recorders, reference


def _expert_modules(block: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in block.named_modules() if moe.expert_parameters(m)}


def _quantize_block(
    block: nn.Module,
    prefix: str,
    hessians: dict,
    quantize_fn: QuantizeFn,
    progress: Progress | None,
) -> dict[str, QuantizedWeight]:
    result = {}
    for name, linear in linears(block).items():
        start = time.perf_counter()
        qw = quantize_fn(f"{prefix}{name}", as_linear(linear), hessians.pop(name))
        seconds = time.perf_counter() - start
        set_module(block, name, QuantLinear(qw, linear.bias))
        result[f"{prefix}{name}"] = qw
        if progress is not None:
            progress({"kind": "linear", "name": f"{prefix}{name}", **layer_stats(qw, seconds)})
    return result


def _quantize_experts(
    block: nn.Module,
    prefix: str,
    recorders: dict[str, moe.ExpertRecorder],
    solve: Callable[[str, LinearView, Hessian | None], QuantizedWeight],
) -> dict[str, QuantizedWeight]:
    """Each expert matrix with the Hessian of the tokens routed to it (``None``: too few)."""
    result = {}
    for mod_name, recorder in recorders.items():
        module = block.get_submodule(mod_name)
        for pname in moe.expert_parameters(module):
            weights = []
            for e in range(module.num_experts):
                key = moe.expert_key(f"{prefix}{mod_name}", pname, e)
                view = LinearView(moe.expert_matrix(module, pname, e), None)
                weights.append(solve(key, view, recorder.hessian(pname, e)))
                result[key] = weights[-1]
            moe.install(block, mod_name, pname, weights)
    return result


@torch.no_grad()
def quantize_decoder_layers(
    layers: nn.ModuleList,
    first_layer_inputs: list[LayerInputs],
    quantize_fn: QuantizeFn,
    progress: Progress | None = None,
    device: torch.device | str | None = None,
    fallback_fn: FallbackFn | None = None,
    min_expert_tokens: int = 1,
) -> dict[str, QuantizedWeight]:
    """Quantize every linear-like layer (``nn.Linear``, ``Conv1D``) of every block, in order,
    replacing it by ``QuantLinear``, and every 3-D expert weight, per expert, into
    ``PackedExperts`` (``experts.py``).

    An expert is calibrated on the tokens the router sent to it; one that received fewer than
    ``min_expert_tokens`` is quantized by ``fallback_fn`` instead (no Hessian) and reported as a
    ``kind="expert_fallback"`` progress event.

    Keys of the result are relative to ``layers`` (``"3.mlp.down_proj"``), so
    :func:`replace_linears` can rebuild the modules from it. With ``device`` set, each block
    is moved there while it is processed and moved back afterwards. ``progress`` receives
    one dict per linear (``kind="linear"``) and per block (``kind="block"``, with the
    relative output error of the first calibration batch).
    """
    inputs = [(a, _clean_kwargs(k)) for a, k in first_layer_inputs]
    if device is not None:
        inputs = [_move(inp, device) for inp in inputs]
    result: dict[str, QuantizedWeight] = {}
    for idx, block in enumerate(layers):
        home = _module_device(block)
        if device is not None:
            block.to(device)
        start = time.perf_counter()
        hessians, recorders, reference = _collect_hessians(block, inputs)
        result.update(_quantize_block(block, f"{idx}.", hessians, quantize_fn, progress))
        solve = _expert_solver(quantize_fn, fallback_fn, min_expert_tokens, progress)
        result.update(_quantize_experts(block, f"{idx}.", recorders, solve))
        first = None
        for k, inp in enumerate(inputs):  # overwrite in place: one set of hidden states alive
            out = _run(block, inp)
            first = out if k == 0 else first
            inputs[k] = _with_hidden(inp, out)
        if progress is not None:
            rel = float((first - reference).norm() / reference.norm().clamp(min=1e-12))
            progress(
                {
                    "kind": "block",
                    "index": idx,
                    "relative_output_error": rel,
                    "seconds": time.perf_counter() - start,
                }
            )
        del hessians, recorders, reference, first
        if device is not None:
            block.to(home)
    return result


def _expert_solver(
    quantize_fn: QuantizeFn,
    fallback_fn: FallbackFn | None,
    min_tokens: int,
    progress: Progress | None,
) -> Callable[[str, LinearView, Any], QuantizedWeight]:
    def solve(key: str, view: LinearView, recorded: tuple[Hessian, int] | None) -> QuantizedWeight:
        hessian, tokens = recorded if recorded is not None else (None, 0)
        if hessian is not None and tokens >= max(min_tokens, 1):
            return quantize_fn(key, view, hessian)
        if fallback_fn is None:
            raise ValueError(f"expert {key} received {tokens} calibration tokens and no fallback")
        if progress is not None:
            progress({"kind": "expert_fallback", "name": key, "tokens": tokens})
        return fallback_fn(key, view)

    return solve


def quantize_uncalibrated(layers: nn.Module, fn: FallbackFn) -> dict[str, QuantizedWeight]:
    """Quantize every linear-like layer and expert matrix of ``layers`` without calibration
    data (round-to-nearest), installing the packed modules; keys as in
    :func:`quantize_decoder_layers`."""
    result = {name: fn(name, as_linear(m)) for name, m in linears(layers).items()}
    for mod_name, module in _expert_modules(layers).items():
        for pname in moe.expert_parameters(module):
            for e in range(module.num_experts):
                view = LinearView(moe.expert_matrix(module, pname, e), None)
                key = moe.expert_key(mod_name, pname, e)
                result[key] = fn(key, view)
    replace_linears(layers, result)
    return result


def replace_linears(module: nn.Module, quantized: dict[str, QuantizedWeight]) -> nn.Module:
    """Swap the named linear-like submodules for ``QuantLinear`` and the named 3-D expert
    parameters for ``PackedExperts`` (e.g. when loading a cache).

    Biases are taken from the existing modules; the device follows the existing module.
    """
    for name, qw in quantized.items():
        if moe.split_key(name) is not None:
            continue
        old = module.get_submodule(name)
        bias = getattr(old, "bias", None)
        new = QuantLinear(qw.to(_module_device(old)), bias)
        set_module(module, name, new)
    moe.install_all(module, quantized)
    return module
