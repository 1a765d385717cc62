"""Activation memory of an architecture, found by running it on fake tensors.

Activations depend on every detail of a model's forward (which ops save what, in which dtype,
how attention is computed, what LoRA's dropout keeps), so instead of a hand-written formula per
architecture the memory model runs the real transformers forward on ``FakeTensor``s: shapes and
dtypes propagate exactly, nothing is allocated and nothing is computed. Two probes:

* ``saved_bytes``: the tensors autograd keeps for backward in one training forward (the same
  count the training workload makes from live tensors with ``SavedTensorMeter``), with LoRA
  adapters emulated the way peft computes them (dropout, input cast to the adapter dtype,
  ``B(A(x)) * scale``) and optional reentrant gradient checkpointing;
* ``forward_peak_bytes``: the most bytes alive at once during one inference forward (weights
  excluded), tracking every tensor the forward creates until it is freed.

A model of one and of two decoder layers is probed and the rest extrapolated linearly
(``outer + layers x per_layer``), so a 65B prediction takes as long as a small one.
Layers that differ from each other (alternating attention kinds, sparse MoE every k layers)
are averaged over the first two.
"""

from __future__ import annotations

import copy
import functools
import weakref
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


def _is_linear_like(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _add_lora(model: Any, spec: LoraSpec) -> None:
    """Wrap targeted linears like peft's LoRA layer (the output layer is never targeted)."""
    import torch
    from torch import nn

    head = model.get_output_embeddings()
    dtype = getattr(torch, spec.dtype)
    for name, module in list(model.named_modules()):
        if not _is_linear_like(module) or module is head:
            continue
        if spec.targets is not None and name.rsplit(".", 1)[-1] not in spec.targets:
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
        model.gradient_checkpointing_enable({"use_reentrant": True})
        model.enable_input_require_grads()
    saved = _Saved(model)
    with mode, torch.autograd.graph.saved_tensors_hooks(saved, lambda t: t):
        ids = torch.zeros((batch, seq), dtype=torch.long)
        model(input_ids=ids, labels=ids, use_cache=False)
    return saved.bytes


class _LiveMeter:
    """Bytes of the storages alive during a forward (created by it), and their maximum."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self.refs: dict[int, int] = {}

    def track(self, tensor: Any) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.refs:
            self.refs[key] = 0
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(tensor, self._release, key, storage.nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes


def _probe_forward_peak(config: Any, dtype: str, batch: int, seq: int, last_only: bool) -> int:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    model, mode = _fake_model(config, dtype)
    meter = _LiveMeter()

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    meter.track(leaf)
            return out

    with mode, torch.inference_mode():
        ids = torch.zeros((batch, seq), dtype=torch.long)
        kwargs = {"logits_to_keep": 1} if last_only else {}
        with Track():
            out = model(input_ids=ids, use_cache=True, **kwargs)
        del out
    return meter.peak


@functools.lru_cache(maxsize=256)
def _extrapolated(kind: str, config_json: str, *args: Any) -> int:
    from transformers import AutoConfig

    data = __import__("json").loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    probe = _probe_saved if kind == "saved" else _probe_forward_peak
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


def forward_peak_bytes(
    config: Any, dtype: str, batch: int, seq: int, last_only: bool = True
) -> int:
    """Most bytes alive at once during one inference forward with a KV cache, weights
    excluded (cache and logits included; ``last_only``: logits of the last position only, as
    ``generate`` computes them)."""
    return _extrapolated("peak", _key(config), dtype, batch, seq, last_only)
