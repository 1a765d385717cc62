"""Mixture-of-experts weights quantized per expert, with the model's own routing kept.

transformers 5 stores the experts of Mixtral-style models (Mixtral, Qwen MoE, DeepSeek,
gpt-oss, ...) in one module holding 3-D parameters, ``gate_up_proj`` and ``down_proj`` of
shape ``experts x out x in`` (``experts x in x out`` when the class sets ``is_transposed``),
and its eager forward indexes them one expert at a time (``self.gate_up_proj[e]``).

:class:`PackedExperts` replaces such a parameter with one packed :class:`QuantizedWeight` per
expert and answers the same indexing with that expert's dequantized matrix, in the layout the
forward expects. The router and the expert loop of the model therefore run unchanged, and
only the experts that receive tokens are rebuilt in a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from harness.quant.linear import TENSOR_FIELDS, QuantizedWeight

KEY_SEP = ":"
"""Quantized-weight keys of experts read ``<module>:<parameter>:<expert>``."""


def expert_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The 3-D per-expert weight parameters of an experts module (empty for other modules)."""
    n = getattr(module, "num_experts", None)
    if not isinstance(n, int):
        return {}
    return {
        name: p
        for name, p in module.named_parameters(recurse=False)
        if p.dim() == 3 and p.shape[0] == n
    }


def is_transposed(module: nn.Module) -> bool:
    """True when the module stores each expert as ``in x out`` (gpt-oss style)."""
    return bool(getattr(module, "is_transposed", False))


def expert_matrix(module: nn.Module, pname: str, expert: int) -> Tensor:
    """Expert ``expert``'s weight of ``pname`` as ``out x in`` (the orientation quantized)."""
    w = getattr(module, pname)[expert]
    return w.t() if is_transposed(module) else w


def expert_key(module_name: str, pname: str, expert: int) -> str:
    return f"{module_name}{KEY_SEP}{pname}{KEY_SEP}{expert}"


def split_key(key: str) -> tuple[str, str, int] | None:
    """``(module, parameter, expert)`` of an expert key, or None for a linear layer's key."""
    parts = key.split(KEY_SEP)
    if len(parts) != 3:
        return None
    return parts[0], parts[1], int(parts[2])


class PackedExperts(nn.Module):
    """Stands in for one 3-D expert parameter: ``packed[e]`` is expert ``e``'s dense weight.

    Every stored tensor is a buffer (``e<expert>_<field>``), so the footprint counts packed
    bytes; a 0-element ``probe`` follows ``model.to(dtype)`` so the rebuilt weight matches the
    activations' dtype while the stored statistics keep theirs.
    """

    holds_experts = True

    def __init__(self, weights: list[QuantizedWeight], transposed: bool) -> None:
        super().__init__()
        self.transposed = transposed
        self.metas = [qw.meta() for qw in weights]
        for e, qw in enumerate(weights):
            for name in TENSOR_FIELDS:
                self.register_buffer(f"e{e}_{name}", getattr(qw, name))
        self.register_buffer("probe", torch.empty(0))
        out, inp = weights[0].shape
        self.shape = (len(weights), inp, out) if transposed else (len(weights), out, inp)

    def __len__(self) -> int:
        return len(self.metas)

    def quantized_weight(self, expert: int) -> QuantizedWeight:
        tensors = {n: getattr(self, f"e{expert}_{n}") for n in TENSOR_FIELDS}
        present = {n: t for n, t in tensors.items() if t is not None}
        return QuantizedWeight.from_state_dict(present, self.metas[expert])

    def __getitem__(self, expert: Any) -> Tensor:
        w = self.quantized_weight(int(expert)).dequantize(dtype=self.probe.dtype)
        return w.t() if self.transposed else w

    def footprint_entries(self) -> Iterator[tuple[str, Tensor, str, int]]:
        """Codes represent each expert's ``out x in`` weights; the rest is quantization state."""
        for e, meta in enumerate(self.metas):
            rows, cols = meta["shape"]
            for name in TENSOR_FIELDS:
                t = getattr(self, f"e{e}_{name}")
                if t is None:
                    continue
                if name == "codes":
                    yield f"e{e}_{name}", t, "quantized_weights", rows * cols
                else:
                    yield f"e{e}_{name}", t, "quant_state", 0

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PackedExperts:
        # stored float16 statistics keep their dtype under model.to(dtype), as in QuantLinear
        kept = {
            n: b
            for n, b in self._buffers.items()
            if n != "probe" and b is not None and b.is_floating_point()
        }
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        m = self.metas[0]
        return f"experts={len(self)}, shape={self.shape}, bits={m['bits']}, method={m['method']!r}"


def install(root: nn.Module, module_name: str, pname: str, weights: list[QuantizedWeight]) -> None:
    """Replace the 3-D parameter ``pname`` of ``root.<module_name>`` by packed experts."""
    module = root.get_submodule(module_name) if module_name else root
    device = getattr(module, pname).device
    packed = PackedExperts([qw.to(device) for qw in weights], is_transposed(module))
    del module._parameters[pname]
    module.add_module(pname, packed)
    _eager_experts(module)


def _eager_experts(module: nn.Module) -> None:
    """Route the experts through the model's own eager loop, which indexes one expert at a
    time; fused implementations (grouped_mm, batched_mm) read the whole 3-D tensor."""
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "_experts_implementation", "eager") != "eager":
        config._experts_implementation = "eager"


def install_all(root: nn.Module, quantized: dict[str, QuantizedWeight]) -> None:
    """Install every expert key of ``quantized`` (the other keys are left to the caller)."""
    groups: dict[tuple[str, str], dict[int, QuantizedWeight]] = {}
    for key, qw in quantized.items():
        parts = split_key(key)
        if parts is not None:
            groups.setdefault(parts[:2], {})[parts[2]] = qw
    for (module_name, pname), by_expert in groups.items():
        install(root, module_name, pname, [by_expert[e] for e in sorted(by_expert)])


class ExpertRecorder:
    """Forward pre-hook on an experts module: Hessians of each expert's matrices built from
    the tokens the model's router sent to that expert.

    The first matrix (``gate_up_proj`` or ``up_proj``) sees the routed hidden states; the
    ``down_proj`` input is rebuilt from them with the module's own gate (``_apply_gate``) or
    activation. Other layouts record token counts only, so their experts fall back to RTN.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.tokens = [0] * module.num_experts
        self.hessians: dict[tuple[str, int], Any] = {}

    def __call__(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        hidden = hidden.reshape(-1, hidden.shape[-1])
        index = index.reshape(hidden.shape[0], -1)
        for e in range(self.module.num_experts):
            rows = (index == e).any(dim=-1).nonzero().flatten()
            if rows.numel():
                self.tokens[e] += int(rows.numel())
                self._add(e, hidden[rows])

    def _add(self, expert: int, x: Tensor) -> None:
        from harness.quant.gptq import Hessian

        params = expert_parameters(self.module)
        first = next((p for p in ("gate_up_proj", "up_proj") if p in params), None)
        if first is None or "down_proj" not in params:
            return
        inner = torch.nn.functional.linear(x, expert_matrix(self.module, first, expert))
        bias = getattr(self.module, f"{first}_bias", None)
        if bias is not None:
            inner = inner + bias[expert]
        gate = getattr(self.module, "_apply_gate", None)
        has_gate = first == "gate_up_proj" and gate is not None
        inner = gate(inner) if has_gate else self.module.act_fn(inner)
        for pname, inp in ((first, x), ("down_proj", inner)):
            key = (pname, expert)
            if key not in self.hessians:
                self.hessians[key] = Hessian(inp.shape[-1], inp.device)
            self.hessians[key].add_batch(inp)

    def hessian(self, pname: str, expert: int) -> tuple[Any, int]:
        """``(Hessian or None, tokens routed to the expert)``."""
        return self.hessians.get((pname, expert)), self.tokens[expert]
