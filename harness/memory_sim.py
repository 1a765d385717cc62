"""Activation memory of an architecture, found by running it on fake tensors.

Activations depend on every detail of a model's forward (which ops save what, in which dtype,
how attention is computed, what LoRA's dropout keeps), so instead of a hand-written formula per
architecture the memory model runs the real transformers forward on ``FakeTensor``s: shapes and
dtypes propagate exactly, nothing is allocated and nothing is computed. ``saved_bytes`` counts
the tensors autograd keeps for backward in one training forward (the count the training
workload makes from live tensors with ``SavedTensorMeter``), with LoRA adapters emulated the way
peft computes them (input cast to the adapter dtype, dropout, ``B(A(x)) * scale``; DoRA's
forward op by op, see :func:`_dora_forward`) and optional reentrant gradient checkpointing. On
Llama layouts it equals the live count exactly without checkpointing (tested); with
checkpointing it misses a few KB of per-run inputs.

A tensor counts when the graph still holds it as the forward ends (what backward keeps alive):
DoRA builds ``B @ A`` through a graph it throws away at once (``lora_B(lora_A(eye))``, only its
detached value is used), and the tensors that graph saved (the ``in x in`` identity) are freed
before backward, so they are not activations. ``SavedTensorMeter`` counts at pack time and keys
storages by address, so on DoRA it also counts those (when their freed address is not reused by
a later saved tensor, which it then skips).

A model of one and of two decoder layers is probed and the rest extrapolated linearly
(``outer + layers x per_layer``), so a 65B prediction takes as long as a small one.
Every layer after the first is predicted as the second one is: layers that differ from each
other (alternating attention kinds, sparse MoE every k layers) are not told apart.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA adapters to emulate: rank, dropout, targets (None = all linears, as peft's
    ``all-linear``), the adapters' dtype, the method (``lora`` and ``rslora`` differ only in
    the value of the scale, so they save the same tensors; ``dora``) and, for DoRA on quantized
    storage, the dtype peft dequantizes the base weight to (None: the base weight is a dense
    parameter that peft reads as it is)."""

    rank: int
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    dtype: str = "float32"
    method: str = "lora"
    dequantized_dtype: str | None = None


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
        if spec.method == "dora":
            # peft's magnitude: the row norms of W + scale * B @ A, in the dtype of that sum
            read = weight.dtype
            if spec.dequantized_dtype is not None:
                read = getattr(torch, spec.dequantized_dtype)
            mag_dtype = torch.promote_types(read, dtype)
            m = torch.nn.Parameter(torch.empty(out_f, dtype=mag_dtype), requires_grad=True)
            module.register_parameter("lora_magnitude_sim", m)
            forward = _dora_forward
        else:
            forward = _lora_forward
        module.forward = functools.partial(forward, module, module.forward, spec)


def _lora_forward(module: Any, base: Any, spec: LoraSpec, x: Any) -> Any:
    import torch.nn.functional as F

    result = base(x)
    xa = x.to(module.lora_A_sim.dtype)
    if spec.dropout > 0:
        xa = F.dropout(xa, spec.dropout, training=True)
    delta = F.linear(F.linear(xa, module.lora_A_sim), module.lora_B_sim) * 2.0
    return (result + delta).to(result.dtype)


def _dora_forward(module: Any, base: Any, spec: LoraSpec, x: Any) -> Any:
    """peft's ``Linear.forward`` with ``DoraLinearVariant`` (peft 0.21, ``lora/variants.py``
    and ``lora/dora.py``), op for op in what autograd saves:

    * ``lora_weight = lora_B(lora_A(eye(in))).T``: a graph whose value is only used detached,
      so what it saves is freed at once (not counted, see the module docstring);
    * the base weight (dequantized for bitsandbytes: a fresh tensor) cast to the input's dtype,
      the input having been cast to the adapters' dtype;
    * ``weight_norm = ||W + scale * lora_weight||`` per output row, detached; the magnitude
      divided by it (the division saves ``weight_norm``);
    * with dropout (in training) the input is dropped out and the base output computed again
      as ``F.linear(x, W)``, which saves ``W`` (a new tensor unless the weight already had the
      input's dtype); without dropout the base layer's output is reused, minus its bias;
    * ``(m / ||.|| - 1) * base + (m / ||.||) * B(A(x)) * scale``: the products save both
      operands of each.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    a, b, mag = module.lora_A_sim, module.lora_B_sim, module.lora_magnitude_sim
    scale = 2.0
    result = base(x)
    result_dtype = result.dtype
    x = x if x.dtype == a.dtype else x.to(a.dtype)
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    lora_weight = F.linear(F.linear(eye, a), b).T.to(x.dtype)
    # out x in (a view of GPT-2's in x out Conv1D weight: peft's fan_in_fan_out transpose)
    weight = module.weight if isinstance(module, nn.Linear) else module.weight.T
    if spec.dequantized_dtype is not None:  # dequantize_module_weight: a fresh tensor
        weight = weight.to(getattr(torch, spec.dequantized_dtype), copy=True)
    out_in = weight.to(x.dtype)
    total = out_in + scale * lora_weight.detach()
    weight_norm = torch.linalg.norm(total, dim=1).to(total.dtype).detach()
    mag_norm_scale = (mag / weight_norm).view(1, -1)
    if spec.dropout > 0:
        x = F.dropout(x, spec.dropout, training=True)
        base_result = F.linear(x, out_in)
    else:
        base_result = result
        bias = getattr(module, "bias", None)
        if bias is not None:
            base_result = base_result - bias
    lora_result = F.linear(F.linear(x, a), b)
    dora = (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scale
    return (result + dora).to(result_dtype)


class _Held:
    """What the pack hook hands autograd: the graph keeps it while it may still need the
    tensor, so a weak reference to it tells whether the tensor is still saved."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


class _Saved:
    """saved_tensors_hooks pack function: each non-parameter storage the graph still holds
    when asked (``bytes``) counts once."""

    def __init__(self, model: Any) -> None:
        self.static = {t.untyped_storage()._cdata for t in model.parameters()}
        self.static |= {t.untyped_storage()._cdata for t in model.buffers()}
        self.held: list[weakref.ref[_Held]] = []

    def __call__(self, tensor: Any) -> _Held:
        held = _Held(tensor)
        if tensor.untyped_storage()._cdata not in self.static:
            self.held.append(weakref.ref(held))
        return held

    @staticmethod
    def unpack(held: _Held) -> Any:
        return held.tensor

    @property
    def bytes(self) -> int:
        seen: dict[int, int] = {}  # storages alive now: their keys are distinct
        for ref in self.held:
            held = ref()
            if held is not None:
                storage = held.tensor.untyped_storage()
                seen[storage._cdata] = storage.nbytes()
        return sum(seen.values())


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
    hooks = torch.autograd.graph.saved_tensors_hooks(saved, saved.unpack)
    with _real_run_paths(), mode, hooks:
        ids = torch.zeros((batch, seq), dtype=torch.long)
        out = model(input_ids=ids, labels=ids, use_cache=False)  # holds the graph
    held = saved.bytes
    del out
    return held


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
