"""GPTQ / RTN results in the standard GPTQ checkpoint layout, and an importer for it.

Per quantized linear ``<name>`` (``out x in`` weight) the checkpoint holds:

* ``<name>.qweight`` int32 ``[in * bits / 32, out]``: the codes of each output column packed
  along the input dimension as a little-endian bit stream, in *original* input order (for
  4 bits: 8 codes per word, code ``k`` in bits ``4k..4k+3``; 3 bits use the same stream, so
  32 codes fill 3 words exactly as AutoGPTQ's 3-bit packer);
* ``<name>.qzeros`` int32 ``[n_groups, out * bits / 32]``: zero points packed along the
  output dimension the same way;
* ``<name>.scales`` float16 ``[n_groups, out]``;
* ``<name>.g_idx`` int32 ``[in]``: group of each input column (non-monotonic with act-order);
* ``<name>.bias`` when the layer has one.

Dequantization: ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - z[g_idx[i], o])``.

Zero-point convention: ``checkpoint_format="gptq"`` (v1, what AutoGPTQ writes and the
default here) stores ``z - 1`` modulo ``2**bits``; ``"gptq_v2"`` (GPTQModel's internal
format) stores ``z``. v1 cannot represent ``z = 0`` for loaders that add 1 without wrapping
(a group whose weights are all >= 0); :func:`export_gptq` warns when that occurs and this
module's importer wraps, so its round trip is exact either way. GPTQModel refuses
asymmetric (``sym=False``) v1 checkpoints that it did not write itself, so asymmetric
exports meant for it need ``"gptq_v2"``; symmetric ones load in either format.

``quantize_config.json`` records bits, group_size, desc_act, sym, true_sequential (False:
the harness collects all Hessians of a block from the float block at once) and
checkpoint_format; ``config.json`` gets the same dict as ``quantization_config``.
Only weights on a GPTQ grid export: SpQR's bilevel statistics and outliers have no
place in this layout.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from harness.measure.tensor_identity import storage_key
from harness.quant.linear import QuantizedWeight, QuantLinear
from harness.quant.pack import pack, unpack

FORMATS = ("gptq", "gptq_v2")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quantize_config.json"


def _check_exportable(name: str, qw: QuantizedWeight) -> None:
    problems = []
    if qw.num_outliers or qw.scale2 is not None or qw.zero2 is not None:
        problems.append("has outliers or bilevel statistics (SpQR)")
    if qw.scale_bits != 16 or qw.zero_bits != qw.bits:
        problems.append(f"stats are {qw.scale_bits}/{qw.zero_bits}-bit, need 16/{qw.bits}")
    rows, cols = qw.shape
    if (cols * qw.bits) % 32 or (rows * qw.bits) % 32:
        problems.append(f"shape {rows}x{cols} does not pack into int32 words at {qw.bits} bits")
    if problems:
        raise ValueError(f"layer {name} cannot be exported as GPTQ: {'; '.join(problems)}")


def _pack_along_rows(codes: Tensor, bits: int) -> Tensor:
    """Pack ``codes[n, m]`` along dim 0: int32 ``[n * bits / 32, m]``."""
    n, m = codes.shape
    words = pack(codes.t().contiguous(), bits, torch.int32)
    return words.view(m, n * bits // 32).t().contiguous()


def _unpack_along_rows(words: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`_pack_along_rows`: uint8 ``[n, m]``."""
    m = words.shape[1]
    return unpack(words.t().contiguous(), bits, (m, n)).t().contiguous()


def gptq_tensors(qw: QuantizedWeight, checkpoint_format: str = "gptq") -> dict[str, Tensor]:
    """``qweight``, ``qzeros``, ``scales``, ``g_idx`` of one quantized weight."""
    if checkpoint_format not in FORMATS:
        raise ValueError(f"checkpoint_format must be one of {FORMATS}, got {checkpoint_format!r}")
    _check_exportable("?", qw)
    codes = qw.unpacked_codes()  # [out, in], stored column order
    if qw.perm is not None:
        codes = torch.empty_like(codes).index_copy_(1, qw.perm.long(), codes)
    zeros = qw.zero_values().round().to(torch.int64)  # [n_groups, out]
    if checkpoint_format == "gptq":
        zeros = (zeros - 1) % (2**qw.bits)
    return {
        "qweight": _pack_along_rows(codes.t().contiguous(), qw.bits),
        "qzeros": _pack_along_rows(zeros.t().to(torch.uint8), qw.bits).t().contiguous(),
        "scales": qw.scale.reshape(qw.n_groups, qw.shape[0]).half().contiguous(),
        "g_idx": qw.g_idx().to(torch.int32),
    }


def dequantize_gptq(
    tensors: dict[str, Tensor], bits: int, checkpoint_format: str = "gptq"
) -> Tensor:
    """Dense float32 ``[out, in]`` weight from one layer's GPTQ tensors."""
    scales, g_idx = tensors["scales"].float(), tensors["g_idx"].long()
    n_groups, out = scales.shape
    q = _unpack_along_rows(tensors["qweight"], bits, g_idx.numel()).float()  # [in, out]
    z = _unpack_along_rows(tensors["qzeros"].t().contiguous(), bits, out).t().long()
    if checkpoint_format == "gptq":
        z = (z + 1) % (2**bits)
    w = scales[g_idx] * (q - z.float()[g_idx])
    return w.t().contiguous()


def _layout_summary(quantized: dict[str, QuantizedWeight]) -> dict[str, Any]:
    """bits, group_size, desc_act and sym shared by every layer, or an error."""
    bits = {qw.bits for qw in quantized.values()}
    if len(bits) != 1:
        raise ValueError(f"all layers must share one bit width, got {sorted(bits)}")
    (b,) = bits
    grouped = {qw.group_size for qw in quantized.values() if qw.group_size < qw.shape[1]}
    if len(grouped) > 1:
        raise ValueError(f"all layers must share one group size, got {sorted(grouped)}")
    group_size = grouped.pop() if grouped else -1
    mid = float(2 ** (b - 1))
    sym = all(bool((qw.zero_values() == mid).all()) for qw in quantized.values())
    desc_act = any(qw.perm is not None for qw in quantized.values())
    return {"bits": b, "group_size": group_size, "desc_act": desc_act, "sym": sym}


def export_gptq(
    model: torch.nn.Module,
    out_dir: str | Path,
    checkpoint_format: str = "gptq",
    damp_percent: float | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Write ``model`` (with ``QuantLinear`` layers) as a GPTQ checkpoint; returns the config.

    Dense parameters (embeddings, norms, lm_head) are saved as they are; ``config.json``
    comes from ``model.config`` when the model has one. Pass ``tokenizer`` for a complete
    checkpoint: loaders such as ``GPTQModel.load`` read the tokenizer from the same folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qlayers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not qlayers:
        raise ValueError("model has no QuantLinear layers to export")
    quantized = {n: m.quantized_weight() for n, m in qlayers.items()}
    for name, qw in quantized.items():
        _check_exportable(name, qw)
    config = {
        **_layout_summary(quantized),
        "true_sequential": False,
        "static_groups": False,
        "checkpoint_format": checkpoint_format,
        "quant_method": "gptq",
        "damp_percent": damp_percent,
    }
    zero_wraps = 0
    tensors: dict[str, Tensor] = {}
    for name, qw in quantized.items():
        zero_wraps += int((qw.zero_values() == 0).sum())
        parts = gptq_tensors(qw, checkpoint_format)
        if qlayers[name].bias is not None:
            parts["bias"] = qlayers[name].bias
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in parts.items()})
    for key, t in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in qlayers:
            tensors.setdefault(key, t.detach().cpu().contiguous())
    if not config["sym"] and checkpoint_format == "gptq":
        warnings.warn(
            "asymmetric (sym=False) export in the v1 'gptq' format: GPTQModel refuses to load "
            "it (use checkpoint_format='gptq_v2' for GPTQModel)",
            stacklevel=2,
        )
    if zero_wraps and checkpoint_format == "gptq":
        warnings.warn(
            f"{zero_wraps} group zero points are 0: stored as {2 ** config['bits'] - 1} in the "
            "v1 format; loaders that add 1 without wrapping will misread them "
            "(use checkpoint_format='gptq_v2')",
            stacklevel=2,
        )
    _save_untied(tensors, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if hasattr(model, "config"):
        model.config.quantization_config = config
        model.config.save_pretrained(out)
        del model.config.quantization_config
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return config


def _save_untied(tensors: dict[str, Tensor], path: Path) -> None:
    """safetensors refuses shared storage (tied embeddings): store each tensor separately."""
    seen: set[int] = set()
    for key, t in tensors.items():
        ptr = storage_key(t)
        if ptr in seen:
            tensors[key] = t.clone()
        seen.add(ptr)
    save_file(tensors, str(path), metadata={"format": "pt"})


def import_gptq(path: str | Path) -> dict[str, Tensor]:
    """Dense float32 weights of every quantized layer in a GPTQ checkpoint directory."""
    path = Path(path)
    config = json.loads((path / CONFIG_FILE).read_text())
    fmt = config.get("checkpoint_format", "gptq")
    tensors = load_file(str(path / WEIGHTS_FILE))
    names = [k.removesuffix(".qweight") for k in tensors if k.endswith(".qweight")]
    parts = ("qweight", "qzeros", "scales", "g_idx")
    return {
        name: dequantize_gptq({p: tensors[f"{name}.{p}"] for p in parts}, config["bits"], fmt)
        for name in names
    }
