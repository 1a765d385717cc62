"""Memory model: predicted bytes of a cell without loading any weights.

Shapes come from the model built on the ``meta`` device (nothing allocated). Each term:

* weights: every scheme states the bytes it stores per linear (``linear_bytes``) and the dtype
  of what it leaves dense, so this equals the footprint workload's stored bytes (SpQR leaves
  out outliers, unknown before calibration: each adds ~32 bits);
* adapters, gradients: LoRA's A and B per targeted linear in fp32 (peft keeps adapters in fp32
  on 16-bit bases), or every parameter for full fine-tuning, gradients in the trained dtype.
  The LoRA family (``lora-r<N>``, ``rslora-r<N>``, ``dora-r<N>``) shares A and B; rsLoRA only
  changes the scale's value (``alpha / sqrt(r)``) and adds nothing; DoRA adds one trained
  magnitude vector per targeted linear, ``out`` values in the dtype of ``W + scale * B @ A``
  (the base weight's dtype promoted with the adapters': fp32 with fp32 adapters on every base,
  bitsandbytes weights dequantized to fp32), so ``r x (in + out) + out`` values per layer,
  their gradients in the same dtypes;
* optimizer state, per implementation and dtype (``optimizer_bytes``): torch AdamW keeps its
  moments in the parameter's dtype (4 B/param for bf16, 8 for fp32); bitsandbytes' paged
  8-bit and 32-bit AdamW; DoRA's magnitudes are one more tensor per layer (AdamW: ``2 x out x
  4 + 4`` bytes each);
* activations: the tensors autograd saves for backward, counted by running the real forward of
  the architecture on fake tensors with LoRA (or DoRA: ``memory_sim._dora_forward``) emulated
  (``harness.memory_sim``), with or without reentrant gradient checkpointing. What DoRA adds
  per adapted layer of ``T`` tokens (adapters fp32): ``T x out x (c + 4)`` (the base output in
  the compute dtype's ``c`` bytes, or with dropout its fp32 recomputation, and the LoRA
  branch's output, both saved by DoRA's products) + ``3 x out x 4`` (norm and scales), and with
  dropout on a base not already fp32 (bf16, bitsandbytes, torchao) the weight itself cast or
  dequantized to fp32, ``out x in x 4`` (``dora_weight_copies``: 26 GB on LLaMA-7B). Measured
  by walking the graph from the loss (the saved tensors backward will read) on tiny-llama and
  tiny-gpt2 in fp32, bf16 and nf4 with and without dropout: equal to within 112 bytes
  (0.04%), see ``tests/test_memory_model_dora.py``;
* training peak: weights + adapters + optimizer state + the larger of activations and gradients
  (backward frees the one as it writes the other) + the larger of what is alive as backward
  starts (fp32 logits, their gradient and log-softmax's: ``3 x tokens x vocab x 4``) and DoRA's
  forward transient (``dora_forward_transient``) + with checkpointing one layer's rebuilt
  activations;
* KV cache: ``2 x layers x kv_dim x positions x batch`` in the compute dtype;
* inference peak: weights + adapters + the larger of the prefill case (the prompt's KV cache +
  one layer's prefill working set + last-position logits) and the decode case (the whole KV
  cache + one token's working set), + DoRA's forward transient (it rebuilds ``B @ A`` and the
  norms on every forward, also in inference).

``harness.memory_validation`` compares every term with what cells measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.adapter_names import lora_method, lora_targets
from harness.errors import HarnessError

_LLAMA = dict(model_type="llama", max_position_embeddings=4096, rms_norm_eps=1e-5)
# Well-known architectures written as data, so predictions work offline and without weights.
PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": dict(
        _LLAMA,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "llama-13b": dict(
        _LLAMA,
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "llama-33b": dict(
        _LLAMA,
        vocab_size=32000,
        hidden_size=6656,
        intermediate_size=17920,
        num_hidden_layers=60,
        num_attention_heads=52,
        num_key_value_heads=52,
    ),
    "llama-65b": dict(
        _LLAMA,
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=22016,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=64,
    ),
    "llama-70b": dict(
        _LLAMA,
        vocab_size=32000,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
    "smollm2-135m": dict(
        _LLAMA,
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
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
    experts: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(name, experts, out, in) of 3-D mixture-of-experts weights."""
    param_tensors: list[int] = field(default_factory=list)
    """Elements of every stored parameter tensor (what full fine-tuning trains)."""
    config: Any = None
    conv1d: frozenset[str] = frozenset()
    """Names of the linears that are GPT-2 ``Conv1D`` layers (weight stored ``in x out``)."""

    @property
    def params(self) -> int:
        return (
            sum(o * i for _, o, i in self.linears)
            + sum(self.dense_params.values())
            + sum(e * o * i for _, e, o, i in self.experts)
        )


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
    from transformers.pytorch_utils import Conv1D

    linears: list[tuple[str, int, int]] = []
    conv1d: set[str] = set()
    experts: list[tuple[str, int, int, int]] = []
    dense: dict[str, int] = {}
    tensors: list[int] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # tied weights are stored once
            seen.add(id(param))
            tensors.append(param.numel())
            out_in = _linear_out_in(module, pname)
            if out_in is not None and module is not lm_head:
                linears.append((mod_name, *out_in))
                if isinstance(module, Conv1D):
                    conv1d.add(mod_name)
                continue
            cat = _category(module, pname, lm_head)
            if cat == "expert_weights":
                experts.append((f"{mod_name}.{pname}", *param.shape))
                continue
            dense[cat] = dense.get(cat, 0) + param.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    return Shape(
        linears,
        dense,
        text.num_hidden_layers,
        text.hidden_size,
        getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        kv * head_dim,
        text.vocab_size,
        experts,
        tensors,
        config,
        frozenset(conv1d),
    )


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
    """What the non-weight terms depend on: sequence sizes, LoRA settings, optimizer."""

    batch: int = 1
    seq: int = 160  # prompt + new tokens
    prompt: int | None = None  # prompt tokens (None: all of ``seq``)
    train_batch: int = 4
    train_seq: int = 256
    checkpointing: bool = False
    lora_targets: list[str] | None = None  # None: every quantizable linear
    lora_dropout: float = 0.05
    optimizer: str = "adamw"
    adapter_dtype: str = "float32"  # peft keeps LoRA weights in fp32, also on 16-bit bases
    compute_dtype: str | None = None  # activations; None: the scheme's dense dtype


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
    backward_transient: int = 0
    forward_transient: int = 0
    """DoRA: the largest per-layer scratch of its forward (``dora_forward_transient``)."""
    untracked_gradients: int = 0
    """Gradients backward writes outside the model's parameters and the graph keeps until the
    loss is dropped (``dora_untracked_gradients``); the training workload's gradient count,
    which reads ``.grad`` of the model's parameters, does not see them."""
    kv_cache: int = 0
    prefill_transient: int = 0
    inference_peak: int = 0
    training_peak: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def training_live(self) -> int:
        """Live tensors of a training step: what ``mem.accounted`` counts."""
        act = self.activations_checkpointed if self.activations_checkpointed else self.activations
        return self.weight_bytes + self.adapters + self.gradients + self.optimizer_state + act


def adapter_kind(adapter: str) -> tuple[str, int]:
    """``none`` / ``full`` / ``lora-r<N>`` / ``rslora-r<N>`` / ``dora-r<N>`` -> (kind, rank),
    kind ``lora`` for the whole LoRA family; anything else is a HarnessError."""
    from harness.adapter_names import parse_adapter

    try:
        kind, rank = parse_adapter(adapter)
    except ValueError as exc:
        raise HarnessError(str(exc)) from None
    return kind, rank or 0


def _promoted(a: str, b: str) -> str:
    """torch's type promotion on the dtypes here: equal stays, any other pair is float32."""
    return a if a == b else "float32"


def magnitude_dtype(weight_dtype: str, work: Workload) -> str:
    """dtype of DoRA's magnitude: peft takes the row norms of ``W + scale * B @ A`` (the base
    weight as peft reads it, dequantized for bitsandbytes, plus the adapters' product) and keeps
    that sum's dtype (measured: fp32 on fp32, bf16, int8 and nf4 bases with fp32 adapters)."""
    return _promoted(weight_dtype, work.adapter_dtype)


def _dora_layers(shape: Shape, work: Workload) -> list[tuple[str, int, int]]:
    return [(n, o, i) for n, o, i in shape.linears if lora_targets(n, work.lora_targets)]


def dora_forward_transient(
    shape: Shape,
    rank: int,
    work: Workload,
    weight_dtype: str,
    dequantized: bool,
    training: bool = True,
) -> int:
    """Scratch bytes of the largest DoRA layer's forward, freed when it returns (in training,
    or in inference where dropout is off and peft recomputes the norms on every forward: its
    DoRA cache is off by default).

    peft builds ``B @ A`` as ``lora_B(lora_A(eye(in)))`` (the ``in x in`` identity and its
    ``in x r`` product stay alive with that graph until the layer returns), casts the base
    weight to the input's dtype (the adapters' dtype; a new ``out x in`` tensor when the
    dtypes differ or the weight is dequantized; with dropout it is saved for backward, so it is
    already among the activations) and holds ``scale * B @ A`` and ``W + scale * B @ A`` at
    once while taking the row norms. Measured on one ``nn.Linear`` (peak RSS growth of one
    forward, batch 1 x 4 tokens, glibc mmap threshold fixed): 4096 x 4096 fp32 256.0 MiB, bf16
    base 320.1 MiB, 4096 -> 1024 fp32 with dropout 112.0 MiB, 1024 -> 4096 51.9 MiB; this formula
    gives 256, 320, 112 and 52 MiB.
    """
    s = _DTYPE_BYTES[work.adapter_dtype]
    saved = training and work.lora_dropout > 0  # the cast weight is then an activation
    copy = (dequantized or weight_dtype != work.adapter_dtype) and not saved
    return max(
        (
            (i * i + i * rank + o * i) * s + 2 * o * i * s + (o * i * s if copy else 0)
            for _, o, i in _dora_layers(shape, work)
        ),
        default=0,
    )


def dora_weight_copies(shape: Shape, work: Workload, weight_dtype: str, dequantized: bool) -> int:
    """Bytes of the base weights DoRA saves for backward (already in the activations): with
    dropout, peft recomputes the base output from the weight cast (or dequantized) to the
    adapters' dtype, and ``F.linear`` saves that new tensor; a dense weight already in that
    dtype is the parameter itself (nothing new). The first layer's projections of an input
    that needs no gradient save nothing, which this upper bound ignores."""
    if work.lora_dropout == 0 or not (dequantized or weight_dtype != work.adapter_dtype):
        return 0
    size = _DTYPE_BYTES[work.adapter_dtype]
    return sum(o * i * size for _, o, i in _dora_layers(shape, work))


def dora_untracked_gradients(shape: Shape, work: Workload, weight_dtype: str, dense: bool) -> int:
    """Gradients peft's DoRA computes for frozen GPT-2 ``Conv1D`` weights.

    With dropout, peft recomputes the base output as ``F.linear(x, transpose(W))``, and its
    ``transpose`` wraps a transposed *Parameter* in a new ``nn.Parameter`` (requires grad) when
    the weight already has the input's dtype (a dense base in the adapters' dtype). Backward
    then writes a full ``out x in`` gradient into that temporary leaf, which the graph keeps
    until the loss is released (measured on tiny-gpt2 fp32: 393216 bytes after backward, the
    size of its adapted Conv1D weights in fp32; none without dropout or on a bf16 base).
    """
    if not dense or work.lora_dropout == 0 or weight_dtype != work.adapter_dtype:
        return 0
    size = _DTYPE_BYTES[weight_dtype]
    return sum(o * i * size for n, o, i in _dora_layers(shape, work) if n in shape.conv1d)


def weight_terms(shape: Shape, handler: Any, opts: Any) -> dict[str, int]:
    """Stored bytes by footprint category, as the scheme stores them."""
    a = _DTYPE_BYTES[handler.dense_dtype(opts)]
    key = "quantized_weights" if handler.quantizes_linears else "linear_weights"
    weights: dict[str, int] = {}

    def add(cat: str, n: int) -> None:
        if n:
            weights[cat] = weights.get(cat, 0) + n

    for _, out, inp in shape.linears:
        w, s = handler.linear_bytes(opts, out, inp)
        add(key, w)
        add("quant_state", s)
    for _, experts, out, inp in shape.experts:
        if getattr(handler, "quantizes_experts", False):
            w, s = handler.linear_bytes(opts, out, inp)
            add("quantized_weights", experts * w)
            add("quant_state", experts * s)
        else:
            add("expert_weights", experts * out * inp * a)
    for cat, n in shape.dense_params.items():
        add(cat, n * a)
    return weights


def trainable_tensors(
    shape: Shape,
    kind: str,
    rank: int,
    work: Workload,
    a: int,
    method: str = "lora",
    magnitude_bytes: int = 4,
) -> list[tuple[int, int]]:
    """(elements, bytes per element) of every trained tensor: LoRA's A (``r x in``) and B
    (``out x r``) per targeted linear (in ``work.adapter_dtype``), for DoRA also its magnitude
    (``out`` values of ``magnitude_bytes``), or every parameter tensor for full fine-tuning."""
    if kind == "lora":
        size = _DTYPE_BYTES[work.adapter_dtype]
        dora = method == "dora"
        return [
            t
            for name, o, i in shape.linears
            if lora_targets(name, work.lora_targets)
            for t in ((rank * i, size), (o * rank, size), *([(o, magnitude_bytes)] if dora else []))
        ]
    if kind == "full":
        return [(n, a) for n in shape.param_tensors]
    return []


def optimizer_bytes(tensors: list[tuple[int, int]], optimizer: str) -> int:
    """State of one optimizer over the trained tensors, as each implementation allocates it.

    torch AdamW: two moments in the parameter's dtype and a float32 step per tensor.
    bitsandbytes paged AdamW 32-bit: two float32 moments. 8-bit: two uint8 moments and a
    float32 absmax per 256 values for tensors of at least 4096 values (smaller ones get 32-bit
    state), plus the two 256-entry quantization maps once.
    """
    if optimizer == "adamw":
        return sum(2 * n * size + 4 for n, size in tensors)
    if optimizer == "paged_adamw_32bit":
        return sum(8 * n for n, _ in tensors)
    if optimizer == "paged_adamw_8bit":
        state = sum(2 * n + 8 * -(-n // 256) if n >= 4096 else 8 * n for n, _ in tensors)
        return state + 2 * 256 * 4
    raise HarnessError(
        f"no memory formula for optimizer {optimizer!r}; known: adamw, "
        "paged_adamw_32bit, paged_adamw_8bit"
    )


def predict(
    shape: Shape,
    precision: str,
    options: dict | None = None,
    adapter: str = "none",
    work: Workload | None = None,
) -> Prediction:
    """Every memory term of one cell (model shape x precision x adapter x workload)."""
    from harness import memory_sim as sim

    work = work or Workload()
    handler, opts = scheme_handler(precision, options)
    dtype = work.compute_dtype or handler.dense_dtype(opts)
    a = _DTYPE_BYTES[dtype]
    pred = Prediction(weight_terms(shape, handler, opts))
    kind, rank = adapter_kind(adapter)
    method = lora_method(adapter) or "lora"
    if kind == "full" and handler.quantizes_linears:
        pred.notes.append("full fine-tuning of quantized weights is not possible")
    # the base weight as peft reads it: the dense dtype, or what bitsandbytes and torchao
    # dequantize to (the dtype the harness loads them in, which is their dense dtype)
    weight_dtype = handler.dense_dtype(opts)
    dequantized = handler.quantizes_linears
    if method == "dora" and _quant_linear_scheme(handler):
        pred.notes.append("DoRA on the harness's QuantLinear is skipped (no weight peft can read)")
    if method == "dora" and _int8_scheme(handler):
        pred.notes.append(
            "DoRA on bitsandbytes int8 is skipped (peft's DoRA fails after the layer's first "
            "forward); predicted as peft would hold it"
        )
    stored = _DTYPE_BYTES[weight_dtype]
    mag = _DTYPE_BYTES[magnitude_dtype(weight_dtype, work)]
    tensors = trainable_tensors(shape, kind, rank, work, stored, method, mag)
    pred.trainable_params = sum(n for n, _ in tensors)
    if kind == "lora":
        pred.adapters = sum(n * size for n, size in tensors)
    pred.gradients = sum(n * size for n, size in tensors)
    pred.optimizer_state = optimizer_bytes(tensors, work.optimizer) if tensors else 0
    tokens = work.train_batch * work.train_seq
    if kind in ("lora", "full") and shape.config is not None:
        lora = (
            sim.LoraSpec(
                rank,
                work.lora_dropout,
                _targets(work),
                work.adapter_dtype,
                "dora" if method == "dora" else "lora",  # rsLoRA saves what LoRA saves
                weight_dtype if method == "dora" and dequantized else None,
            )
            if kind == "lora"
            else None
        )
        args = (shape.config, dtype, work.train_batch, work.train_seq, kind, lora)
        pred.activations = sim.saved_bytes(*args, checkpointing=False)
        if work.checkpointing:
            pred.activations_checkpointed = sim.saved_bytes(*args, checkpointing=True)
        # logits (fp32), their gradient and log-softmax's gradient alive as backward starts
        pred.backward_transient = 3 * tokens * shape.vocab * 4
        if method == "dora":
            pred.forward_transient = dora_forward_transient(
                shape, rank, work, weight_dtype, dequantized
            )
            pred.untracked_gradients = dora_untracked_gradients(
                shape, work, weight_dtype, not dequantized
            )
            copies = dora_weight_copies(shape, work, weight_dtype, dequantized)
            if copies:
                pred.notes.append(
                    f"peft's DoRA with dropout saves every adapted weight in "
                    f"{work.adapter_dtype} for backward ({copies / 1e9:.3f} GB of the "
                    "activations without checkpointing); with lora dropout 0 it reuses the "
                    "base output instead"
                )
            if pred.untracked_gradients:
                pred.notes.append(
                    f"peft's DoRA writes {pred.untracked_gradients / 1e9:.3f} GB of gradients "
                    "for the frozen Conv1D weights (counted in the training peak; the training "
                    "workload's gradient count does not see them)"
                )
        act = pred.activations_checkpointed or pred.activations
        if work.checkpointing:  # one layer's activations are rebuilt at a time in backward
            act += pred.activations // max(shape.layers, 1)
        # backward writes each gradient as it frees the activations that produced it, so the
        # two do not add up: the larger of them is held at once (measured: within 5% on the
        # builtin model for full fine-tuning and every LoRA rank, where their sum overstated
        # full fine-tuning's peak by 12-18%)
        # DoRA's per-layer scratch is held while a layer's forward runs, with (nearly) all the
        # activations saved and before the logits exist: the larger of it and the logits'
        pred.training_peak = (
            pred.weight_bytes
            + pred.adapters
            + pred.optimizer_state
            + max(act, pred.gradients + pred.untracked_gradients)
            + max(pred.backward_transient, pred.forward_transient)
        )
    kv_per_position = 2 * shape.layers * shape.kv_dim * work.batch * a
    prompt = work.prompt if work.prompt is not None else work.seq
    pred.kv_cache = kv_per_position * max(work.seq - 1, 1)  # after generating the new tokens

    # prefill: the prompt's cache, one layer's working set (norm, q/k/v, attention output, the
    # MLP's three intermediate tensors) and the last position's fp32 logits, as generate
    # computes them; decode: the full cache and one position's working set and logits
    def working_set(tokens: int) -> int:
        per_token = 4 * shape.hidden + 2 * shape.kv_dim + 3 * shape.intermediate
        return work.batch * tokens * per_token * a + work.batch * shape.vocab * 4

    pred.prefill_transient = working_set(prompt)
    static = pred.weight_bytes + pred.adapters
    if method == "dora":  # one layer's scratch at a time, beside the cache and working set
        static += dora_forward_transient(shape, rank, work, weight_dtype, dequantized, False)
    pred.inference_peak = max(
        static + kv_per_position * prompt + pred.prefill_transient,
        static + pred.kv_cache + working_set(1),
    )
    return pred


def _quant_linear_scheme(handler: Any) -> bool:
    """Precisions stored in the harness's own ``QuantLinear`` (RTN, GPTQ, SpQR)."""
    from harness.schemes.weight_only import QuantizedScheme

    return isinstance(handler, QuantizedScheme)


def _int8_scheme(handler: Any) -> bool:
    from harness.schemes.bnb import Int8Scheme

    return isinstance(handler, Int8Scheme)


def _targets(work: Workload) -> tuple[str, ...] | None:
    return tuple(work.lora_targets) if work.lora_targets is not None else None


def workload_from(workloads: Any, lora: Any = None) -> Workload:
    """Sequence sizes from an experiment's workload settings and its ``lora:`` block."""
    work = Workload()
    inference = getattr(workloads, "inference", None)
    if inference is not None:
        work.batch = inference.batch_size
        work.seq = inference.prompt_len + inference.new_tokens
        work.prompt = inference.prompt_len
    training = getattr(workloads, "training", None)
    if training is not None:
        work.train_batch = getattr(training, "batch_size", work.train_batch)
        for key in ("seq_len", "seqlen", "max_length", "seq_length"):
            if hasattr(training, key):
                work.train_seq = getattr(training, key)
        work.checkpointing = bool(getattr(training, "gradient_checkpointing", False))
        work.optimizer = getattr(training, "optimizer", work.optimizer)
    work.lora_dropout = float(getattr(lora, "dropout", work.lora_dropout))
    targets = getattr(lora, "target_modules", "all-linear")
    if targets == "qv":
        work.lora_targets = ["q_proj", "v_proj"]
    elif isinstance(targets, list | tuple):
        work.lora_targets = list(targets)
    return work
