"""Analytic memory model: predicted bytes of a cell without loading any weights.

The model is built on the ``meta`` device from its config, so shapes are exact and nothing is
allocated; a 70B prediction takes seconds. Weight bytes follow each scheme's stored format
(the same tensors the footprint workload counts), so for dense, int8 and 4-bit bitsandbytes
schemes the prediction equals the measured ``bytes.total - bytes.buffers`` exactly. RTN/GPTQ and
SpQR use their published bit formulas (SpQR assumes no outliers: each outlier adds ~32 bits).

Training and inference terms are documented approximations:

* adapters: LoRA stores ``r * (in + out)`` fp32 params per targeted linear;
* gradients: one value per trainable param in its own dtype; AdamW: 8 B per trainable param;
* activations (per layer, per token, compute dtype ``a`` bytes): ``(6h + 2 kv + 4 i) * a``
  (norm inputs/outputs, q/k/v, attention output, the three MLP projections' inputs/outputs);
  attention probabilities are not stored (SDPA/flash). Logits and their gradient add
  ``2 * vocab * 4`` B per token. With gradient checkpointing only each layer's input
  (``h * a``) is kept, plus one layer recomputed at a time;
* KV cache: ``2 * layers * kv_heads * head_dim * seq * batch * a``;
* inference peak: weights + KV cache + one layer's prefill working set + last-token logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError

_LLAMA = dict(model_type="llama", max_position_embeddings=4096, rms_norm_eps=1e-5)
# Well-known architectures written as data, so predictions work offline and without weights.
PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(_LLAMA, vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "llama-13b": dict(_LLAMA, vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                      num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40),
    "llama-33b": dict(_LLAMA, vocab_size=32000, hidden_size=6656, intermediate_size=17920,
                      num_hidden_layers=60, num_attention_heads=52, num_key_value_heads=52),
    "llama-65b": dict(_LLAMA, vocab_size=32000, hidden_size=8192, intermediate_size=22016,
                      num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64),
    "llama-70b": dict(_LLAMA, vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                      num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8),
    "smollm2-135m": dict(_LLAMA, vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, max_position_embeddings=8192),
}
_BUILTIN_PRESET = {"builtin:smollm2-135m": "smollm2-135m"}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Shape:
    """What the memory model needs from a model: its linears and its other parameters."""

    linears: list[tuple[str, int, int]]  # (name, out, in) of quantizable linears
    dense_params: dict[str, int]  # category -> params kept dense (embeddings, norms, ...)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int

    @property
    def params(self) -> int:
        return sum(o * i for _, o, i in self.linears) + sum(self.dense_params.values())


def load_config(spec: str) -> Any:
    """A transformers config for a model spec, offline for presets, builtin and synthetic."""
    from transformers import AutoConfig, PretrainedConfig

    name = _BUILTIN_PRESET.get(spec, spec.removeprefix("preset:"))
    if name in PRESETS:
        data = dict(PRESETS[name])
        return AutoConfig.for_model(data.pop("model_type"), **data)
    if spec.startswith("builtin:"):
        raise HarnessError(f"no architecture known for {spec}; known: {', '.join(_BUILTIN_PRESET)}")
    from harness.models import resolve

    source = resolve(spec)
    try:
        config: PretrainedConfig = source.config()
    except OSError as exc:
        raise HarnessError(
            f"cannot read the config of {spec} ({str(exc).splitlines()[0][:160]}); offline, "
            "use a local directory with "
            f"config.json or a preset: {', '.join(PRESETS)}"
        ) from None
    return config


def model_shape(config: Any) -> Shape:
    """Build the model on the meta device (no memory) and classify its parameters.

    Linear-like layers (``nn.Linear`` and GPT-2's ``Conv1D``, whose weight is ``in x out``)
    are the quantizable linears. 3-D mixture-of-experts weights are counted as dense
    ``expert_weights``: what bitsandbytes and dense precisions store.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lm_head = model.get_output_embeddings()
    linears: list[tuple[str, int, int]] = []
    dense: dict[str, int] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # tied weights are stored once
            seen.add(id(param))
            out_in = _linear_out_in(module, pname)
            if out_in is not None and module is not lm_head:
                linears.append((mod_name, *out_in))
                continue
            cat = _category(module, pname, lm_head)
            dense[cat] = dense.get(cat, 0) + param.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    return Shape(linears, dense, text.num_hidden_layers, text.hidden_size,
                 getattr(text, "intermediate_size", 4 * text.hidden_size), kv * head_dim,
                 text.vocab_size)


def _linear_out_in(module: Any, pname: str) -> tuple[int, int] | None:
    """(out, in) of a linear-like layer's weight, else None."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if pname != "weight":
        return None
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, Conv1D):
        return module.nf, module.nx
    return None


def _category(module: Any, pname: str, lm_head: Any) -> str:
    from torch import nn

    param = getattr(module, pname)
    if param.dim() == 3 and param.shape[0] == getattr(module, "num_experts", None):
        return "expert_weights"
    if module is lm_head:
        return "lm_head" if pname == "weight" else "biases"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "Norm" in type(module).__name__:
        return "norms"
    return "biases" if pname == "bias" else "other"


def scheme_handler(precision: str, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(handler, validated options) of a registered precision; the handler states its bytes."""
    from harness.schemes import get_handler

    handler = get_handler(precision)
    return handler, handler.options(options)


@dataclass
class Workload:
    """Sequence sizes the non-weight terms depend on."""

    batch: int = 1
    seq: int = 160
    train_batch: int = 4
    train_seq: int = 256
    checkpointing: bool = False
    lora_targets: list[str] | None = None  # None: every quantizable linear


@dataclass
class Prediction:
    """Predicted bytes by component; ``weights`` splits stored bytes by footprint category."""

    weights: dict[str, int]
    adapters: int = 0
    trainable_params: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations: int = 0
    activations_checkpointed: int = 0
    kv_cache: int = 0
    inference_peak: int = 0
    training_peak: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())


def adapter_kind(adapter: str) -> tuple[str, int]:
    """``none`` / ``full`` / ``lora-r<N>`` -> (kind, rank)."""
    match = re.fullmatch(r"lora-r(\d+)", adapter)
    if match:
        return "lora", int(match.group(1))
    return adapter, 0


def predict(shape: Shape, precision: str, options: dict | None = None, adapter: str = "none",
            work: Workload | None = None) -> Prediction:
    """Every memory term of one cell (model shape x precision x adapter x sequence sizes)."""
    work = work or Workload()
    handler, opts = scheme_handler(precision, options)
    a = _DTYPE_BYTES[handler.dense_dtype(opts)]
    quantized = handler.quantizes_linears
    weights: dict[str, int] = {}
    for _, out, inp in shape.linears:
        w, s = handler.linear_bytes(opts, out, inp)
        key = "quantized_weights" if quantized else "linear_weights"
        weights[key] = weights.get(key, 0) + w
        if s:
            weights["quant_state"] = weights.get("quant_state", 0) + s
    for cat, n in shape.dense_params.items():
        weights[cat] = weights.get(cat, 0) + n * a
    pred = Prediction(weights)
    kind, rank = adapter_kind(adapter)
    if kind == "lora":
        targets = [(o, i) for name, o, i in shape.linears
                   if work.lora_targets is None or name.split(".")[-1] in work.lora_targets]
        pred.trainable_params = sum(rank * (o + i) for o, i in targets)
        pred.adapters = 4 * pred.trainable_params
        pred.gradients = pred.adapters
    elif kind == "full":
        if quantized:
            pred.notes.append("full fine-tuning of quantized weights is not possible")
        pred.trainable_params = shape.params
        pred.gradients = shape.params * a
    pred.optimizer_state = 8 * pred.trainable_params
    tokens = work.train_batch * work.train_seq
    per_layer = (6 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * a
    if kind in ("lora", "full"):
        logits = 2 * shape.vocab * 4 * tokens
        pred.activations = shape.layers * per_layer * tokens + logits
        pred.activations_checkpointed = (shape.layers * shape.hidden * a + per_layer) * tokens
        pred.activations_checkpointed += logits
    pred.kv_cache = 2 * shape.layers * shape.kv_dim * work.seq * work.batch * a
    prefill = per_layer * work.seq * work.batch + shape.vocab * 4 * work.batch
    pred.inference_peak = pred.weight_bytes + pred.kv_cache + prefill
    if kind in ("lora", "full"):
        act = pred.activations_checkpointed if work.checkpointing else pred.activations
        pred.training_peak = (pred.weight_bytes + pred.adapters + pred.gradients
                              + pred.optimizer_state + act)
    return pred


def workload_from(workloads: Any, lora: Any = None) -> Workload:
    """Sequence sizes from an experiment's workload settings and its ``lora:`` block."""
    work = Workload()
    inference = getattr(workloads, "inference", None)
    if inference is not None:
        work.batch = inference.batch_size
        work.seq = inference.prompt_len + inference.new_tokens
    training = getattr(workloads, "training", None)
    if training is not None:
        work.train_batch = getattr(training, "batch_size", work.train_batch)
        for key in ("seq_len", "seqlen", "max_length", "seq_length"):
            if hasattr(training, key):
                work.train_seq = getattr(training, key)
        work.checkpointing = bool(getattr(training, "gradient_checkpointing", False))
    targets = getattr(lora, "target_modules", "all-linear")
    if targets == "qv":
        work.lora_targets = ["q_proj", "v_proj"]
    elif isinstance(targets, list | tuple):
        work.lora_targets = list(targets)
    return work
