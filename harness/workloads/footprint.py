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
from typing import Any

from harness.measure.inventory import CATEGORIES, Entry, inventory


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
