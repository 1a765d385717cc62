"""Activation memory of an architecture, found by running it on fake tensors.

Activations depend on every detail of a model's forward (which ops save what, in which dtype,
how attention is computed, what LoRA's dropout keeps), so instead of a hand-written formula per
architecture the memory model runs the real transformers forward on ``FakeTensor``s: shapes and
dtypes propagate exactly, nothing is allocated and nothing is computed. ``saved_bytes`` counts
the tensors autograd keeps for backward in one training forward (the count the training
workload makes from live tensors with ``SavedTensorMeter``), with LoRA adapters emulated the way
peft computes them (input cast to the adapter dtype, dropout, ``B(A(x)) * scale``) and optional
reentrant gradient checkpointing. On Llama layouts it equals the live count exactly without
checkpointing (tested); with checkpointing it misses a few KB of per-run inputs.

A model of one and of two decoder layers is probed and the rest extrapolated linearly
(``outer + layers x per_layer``), so a 65B prediction takes as long as a small one.
Every layer after the first is predicted as the second one is: layers that differ from each
other (alternating attention kinds, sparse MoE every k layers) are not told apart.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA adapters to emulate: rank, dropout, targets (None = all linears, as peft's
    ``all-linear``), the adapters' dtype."""

    rank: int
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    dtype: str = "float32"


def _layers_key(config: Any) -> str:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(text, key):
            return key
    raise ValueError(f"cannot find the number of layers of {type(config).__name__}")


def num_layers(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(text, _layers_key(config)))


def _with_layers(config: Any, n: int) -> Any:
    small = copy.deepcopy(config)
    text = small.get_text_config() if hasattr(small, "get_text_config") else small
    setattr(text, _layers_key(config), n)
    for key in ("layer_types", "mlp_only_layers"):  # per-layer lists must match the count
        value = getattr(text, key, None)
        if isinstance(value, list) and len(value) > n:
            setattr(text, key, value[:n])
    return small


def _fake_model(config: Any, dtype: str) -> tuple[Any, Any]:
    """The architecture with fake parameters (built on meta, then wrapped: no memory)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    # Fake tensors that claim to live on the CPU, so device-dependent choices (which
    # attention kernel runs, hence what it saves) are those of a real run.
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    cpu = torch.device("cpu")
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                fake = FakeTensor(mode, param.detach(), cpu)
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=False)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = FakeTensor(mode, buf, cpu)
    return model, mode


@contextmanager
def _real_run_paths() -> Iterator[None]:
    """Make transformers take the branches a real run takes.

    Fake tensors look like tracing to transformers, which then builds an explicit causal mask
    and repeats grouped KV heads; a real run skips the mask and lets SDPA handle the groups.
    Both change what is saved, so the tracing checks of the masking code are answered as in a
    real run (sequences are never packed here).
    """
    from transformers import masking_utils

    saved = masking_utils.is_tracing, masking_utils.find_packed_sequence_indices
    masking_utils.is_tracing = lambda *_args, **_kw: False
    masking_utils.find_packed_sequence_indices = lambda *_args, **_kw: None
    try:
        yield
    finally:
        masking_utils.is_tracing, masking_utils.find_packed_sequence_indices = saved


def _is_linear_like(module: Any) -> bool:
    from harness.modules import is_linear_like

    return is_linear_like(module)


def _add_lora(model: Any, spec: LoraSpec) -> None:
    """Wrap targeted linears like peft's LoRA layer (the output layer is never targeted)."""
    import torch
    from torch import nn

    from harness.adapter_names import lora_targets

    head = model.get_output_embeddings()
    dtype = getattr(torch, spec.dtype)
    for name, module in list(model.named_modules()):
        if not _is_linear_like(module) or module is head:
            continue
        if not lora_targets(name, spec.targets):
            continue
        weight = module.weight
        out_f, in_f = weight.shape if isinstance(module, nn.Linear) else weight.shape[::-1]
        a = torch.nn.Parameter(torch.empty(spec.rank, in_f, dtype=dtype), requires_grad=True)
        b = torch.nn.Parameter(torch.empty(out_f, spec.rank, dtype=dtype), requires_grad=True)
        module.register_parameter("lora_A_sim", a)
        module.register_parameter("lora_B_sim", b)
        module.forward = functools.partial(_lora_forward, module, module.forward, spec.dropout)


def _lora_forward(module: Any, base: Any, dropout: float, x: Any) -> Any:
    import torch.nn.functional as F

    result = base(x)
    xa = x.to(module.lora_A_sim.dtype)
    if dropout > 0:
        xa = F.dropout(xa, dropout, training=True)
    delta = F.linear(F.linear(xa, module.lora_A_sim), module.lora_B_sim) * 2.0
    return (result + delta).to(result.dtype)


class _Saved:
    """saved_tensors_hooks pack function counting each non-parameter storage once."""

    def __init__(self, model: Any) -> None:
        self.static = {t.untyped_storage()._cdata for t in model.parameters()}
        self.static |= {t.untyped_storage()._cdata for t in model.buffers()}
        self.seen: dict[int, int] = {}

    def __call__(self, tensor: Any) -> Any:
        key = tensor.untyped_storage()._cdata
        if key not in self.static and key not in self.seen:
            self.seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def _probe_saved(
    config: Any,
    dtype: str,
    batch: int,
    seq: int,
    train: str,
    lora: LoraSpec | None,
    checkpointing: bool,
) -> int:
    import torch

    model, mode = _fake_model(config, dtype)
    if lora is not None:
        with mode:
            _add_lora(model, lora)
    elif train == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    model.train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)({"use_reentrant": True})
        model.enable_input_require_grads()
    saved = _Saved(model)
    hooks = torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t)
    with _real_run_paths(), mode, hooks:
        ids = torch.zeros((batch, seq), dtype=torch.long)
        model(input_ids=ids, labels=ids, use_cache=False)
    return saved.bytes


@functools.lru_cache(maxsize=256)
def _extrapolated(kind: str, config_json: str, *args: Any) -> int:
    from transformers import AutoConfig

    data = __import__("json").loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    probe = _probe_saved
    one = probe(_with_layers(config, 1), *args)
    layers = num_layers(config)
    if layers == 1:
        return one
    two = probe(_with_layers(config, 2), *args)
    return one + (layers - 1) * (two - one)


def _key(config: Any) -> str:
    import json

    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def saved_bytes(
    config: Any,
    dtype: str,
    batch: int,
    seq: int,
    train: str,
    lora: LoraSpec | None = None,
    checkpointing: bool = False,
) -> int:
    """Bytes autograd saves for backward in one training forward (``train``: lora or full)."""
    return _extrapolated("saved", _key(config), dtype, batch, seq, train, lora, checkpointing)
