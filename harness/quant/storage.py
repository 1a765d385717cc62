"""Saving and loading sets of quantized weights as one safetensors file.

Tensors are stored under ``"<name>.<field>"``; the per-weight meta dicts travel as JSON in
the safetensors header (key ``"quantized"``), so a file is self-describing.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, safe_open, save_file

from harness.quant.linear import QuantizedWeight

_META_KEY = "quantized"


def save_quantized(
    path: str | Path, quantized: dict[str, QuantizedWeight], extra: dict | None = None
) -> None:
    """Write all weights (on CPU) plus their meta and an optional JSON-able ``extra``."""
    tensors, metas = {}, {}
    for name, qw in quantized.items():
        parts, meta = qw.state_dict()
        metas[name] = meta
        for field, t in parts.items():
            tensors[f"{name}.{field}"] = t.detach().cpu().contiguous()
    header = {_META_KEY: json.dumps(metas), "extra": json.dumps(extra or {})}
    save_file(tensors, str(path), metadata=header)


def load_quantized(path: str | Path, device: str = "cpu") -> dict[str, QuantizedWeight]:
    """Inverse of :func:`save_quantized`."""
    tensors = load_file(str(path), device=device)
    metas = json.loads(read_header(path)[_META_KEY])
    out = {}
    for name, meta in metas.items():
        prefix = f"{name}."
        parts = {
            k[len(prefix) :]: v
            for k, v in tensors.items()
            if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        out[name] = QuantizedWeight.from_state_dict(parts, meta)
    return out


def read_header(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``extra`` holds the caller's dict)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
