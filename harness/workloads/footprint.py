"""Stored bytes of a model by category and dtype, and effective bits per parameter.

Counts what the model really holds: each tensor once (tied embeddings share storage), packed
quantized codes at their packed size, quantization state (scales, absmax, code tables,
outliers) as its own category. "Parameters" means logical weights: a 4-bit layer of
out x in weights counts out x in parameters even though it stores out x in / 2 bytes.

Coverage rows say how much of the model a scheme actually quantized: quantized parameters
over all parameters, and over the linear-like weights (``nn.Linear``, GPT-2's ``Conv1D``,
bitsandbytes layers and 3-D mixture-of-experts weights), by kind. A "4-bit" cell whose
experts stayed fp32 shows it here, next to its bits per parameter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

CATEGORIES = [
    "quantized_weights",
    "quant_state",
    "linear_weights",
    "expert_weights",
    "lm_head",
    "embeddings",
    "norms",
    "biases",
    "buffers",
    "other",
]


@dataclass(frozen=True)
class Entry:
    """One stored tensor: where it sits, what it is, its bytes and the weights it represents."""

    name: str
    category: str
    dtype: str
    nbytes: int
    params: int
    kind: str = ""
    """``linear`` (linear-like layer weight), ``experts`` (3-D expert weight) or empty."""


def _tensor_entry(
    name: str, tensor: Any, category: str, params: int | None = None, kind: str = ""
) -> Entry:
    nbytes = tensor.numel() * tensor.element_size()
    dtype = str(tensor.dtype).removeprefix("torch.")
    logical = tensor.numel() if params is None else params
    return Entry(name, category, dtype, nbytes, logical, kind)


def _kind(module: Any, category: str) -> str:
    """What a weight is, whatever its storage: a linear-like layer's or an expert's."""
    if category == "expert_weights" or getattr(module, "holds_experts", False):
        return "experts" if category in ("expert_weights", "quantized_weights") else ""
    return "linear" if category in ("linear_weights", "quantized_weights") else ""


def _plain_category(module: Any, pname: str, full_name: str, lm_head: Any) -> str:
    import torch.nn as nn

    cls = type(module).__name__
    if module is lm_head:
        return "lm_head" if pname == "weight" else "biases"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "Norm" in cls:
        return "norms"
    if pname == "bias":
        return "biases"
    if pname == "weight" and _is_linear_like(module):
        return "linear_weights"
    param = getattr(module, pname, None)
    n = getattr(module, "num_experts", None)
    if param is not None and param.dim() == 3 and param.shape[0] == n:
        return "expert_weights"
    return "other"


def _is_linear_like(module: Any) -> bool:
    import torch.nn as nn

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return isinstance(module, nn.Linear)
    return isinstance(module, (nn.Linear, Conv1D))


def inventory(model: Any) -> list[Entry]:
    """Every stored tensor of ``model`` once, categorised.

    Modules that store quantized weights describe themselves: a ``footprint_entries()`` method
    (the harness's own QuantLinear) or a known bitsandbytes class.
    """
    from harness.measure import bnb_storage

    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: set[int] = set()
    entries: list[Entry] = []
    for mod_name, module in model.named_modules():
        special = _special_entries(mod_name, module, bnb_storage)
        if special is not None:
            tensors = special
        else:
            tensors = [
                (f"{mod_name}.{p}", t, _plain_category(module, p, mod_name, lm_head), None)
                for p, t in module.named_parameters(recurse=False)
            ]
        tensors += [
            (f"{mod_name}.{b}", t, "buffers", 0)
            for b, t in module.named_buffers(recurse=False)
            if special is None
        ]
        for name, tensor, category, params in tensors:
            key = _storage_key(tensor)
            if key in seen:
                continue
            seen.add(key)
            kind = _kind(module, category)
            entries.append(_tensor_entry(name, tensor, category, params, kind))
    return entries


def _special_entries(mod_name: str, module: Any, bnb_storage: Any) -> list | None:
    if hasattr(module, "footprint_entries"):
        return [(f"{mod_name}.{n}", t, c, p) for n, t, c, p in module.footprint_entries()]
    return bnb_storage.entries(mod_name, module)


def _storage_key(tensor: Any) -> int:
    try:
        return tensor.untyped_storage().data_ptr() + tensor.storage_offset()
    except (RuntimeError, NotImplementedError):  # meta tensors have no storage
        return id(tensor)


def summarize(entries: list[Entry]) -> dict[str, float]:
    """Totals by category and dtype, and effective bits per parameter."""
    by_cat: dict[str, int] = defaultdict(int)
    params_cat: dict[str, int] = defaultdict(int)
    by_dtype: dict[str, int] = defaultdict(int)
    for e in entries:
        by_cat[e.category] += e.nbytes
        params_cat[e.category] += e.params
        by_dtype[e.dtype] += e.nbytes
    total = sum(by_cat.values())
    params = sum(params_cat.values())
    out: dict[str, float] = {"bytes.total": total, "params.total": params}
    out.update({f"bytes.{c}": by_cat[c] for c in CATEGORIES if c in by_cat})
    out.update({f"params.{c}": params_cat[c] for c in CATEGORIES if params_cat.get(c)})
    out.update({f"bytes_by_dtype.{d}": n for d, n in sorted(by_dtype.items())})
    if params:
        out["bits_per_param"] = 8 * (total - by_cat.get("buffers", 0)) / params
    qparams = params_cat.get("quantized_weights", 0)
    if qparams:
        qbytes = by_cat["quantized_weights"] + by_cat.get("quant_state", 0)
        out["bits_per_param_quantized"] = 8 * qbytes / qparams
    return out


def coverage(entries: list[Entry]) -> dict[str, float]:
    """Fraction of parameters stored quantized: overall, over linear-like weights (linear
    layers and experts, the output head excluded), and per kind present in the model."""
    total: dict[str, int] = defaultdict(int)
    quantized: dict[str, int] = defaultdict(int)
    for e in entries:
        for key in ("params", *((e.kind, "linear_like") if e.kind else ())):
            total[key] += e.params
            quantized[key] += e.params if e.category == "quantized_weights" else 0
    out = {f"coverage.{k}": quantized[k] / total[k] for k in sorted(total) if total[k]}
    out["params.unquantized"] = total["params"] - quantized["params"]
    return out


def _unit(metric: str) -> str:
    if metric.startswith("coverage"):
        return "fraction"
    if metric.startswith("saving_vs"):
        return "x"
    if metric.startswith(("bits", "dq_saving_bits")):
        return "bits"
    return "count" if metric.startswith("params") else "bytes"


def savings(summary: dict[str, float]) -> dict[str, float]:
    """How many times smaller than fp32 / fp16 storage of the same parameters.

    ``quantized_layers`` compares only the layers the scheme quantized (where "8-bit is 4x
    smaller than fp32" applies); ``model`` compares everything stored, embeddings included.
    """
    out = {}
    weights = summary["bytes.total"] - summary.get("bytes.buffers", 0)
    qparams = summary.get("params.quantized_weights")
    for ref, width in (("fp32", 4), ("fp16", 2)):
        out[f"saving_vs_{ref}.model"] = summary["params.total"] * width / weights
        if qparams:
            qbytes = summary["bytes.quantized_weights"] + summary.get("bytes.quant_state", 0)
            out[f"saving_vs_{ref}.quantized_layers"] = qparams * width / qbytes
    return out


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    from harness.measure.bnb_storage import double_quant_rows

    entries = inventory(loaded.model)
    summary = summarize(entries)
    summary.update(savings(summary))
    summary.update(double_quant_rows(entries))
    summary.update(coverage(entries))
    return [
        {"metric": m, "value": float(v), "unit": _unit(m), "method": _method(m)}
        for m, v in summary.items()
    ]


def _method(metric: str) -> str:
    if metric == "coverage.linear_like":
        return "stored-tensors; quantized share of linear, Conv1D and expert weights (no head)"
    if metric.startswith("coverage."):
        return "stored-tensors; quantized share of logical parameters"
    return "stored-tensors"
