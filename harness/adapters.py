"""The adapter axis: attach a LoRA-family adapter (LoRA, rsLoRA, DoRA; any rank) or unfreeze
everything (``full``) after loading.

LoRA goes through peft for ``nn.Linear``, GPT-2's ``Conv1D`` and bitsandbytes layers.
bitsandbytes models first go through peft's ``prepare_model_for_kbit_training``; whether that
upcast unquantized parameters to fp32 (and how many bytes it added) is recorded, because the
upcast is a common reason a QLoRA run holds more memory than the 4-bit weights suggest. The
harness's own ``QuantLinear`` holds buffers only, which peft cannot wrap, so
:class:`LoraQuantLinear` wraps it here with the same maths
(``base(x) + (alpha / r) * B A dropout(x)``, B zero at the start, A and B in fp32).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harness.adapter_names import parse_adapter
from harness.errors import HarnessError, SkipCell
from harness.modules import linear_like_types, set_module

ADAPTER_PREFIX = "lora_"
"""Trainable adapter parameters carry this in their names (peft's convention, kept here)."""


class LoraQuantLinear(nn.Module):
    """LoRA around a harness ``QuantLinear``: the quantized base stays frozen buffers."""

    def __init__(
        self, base: nn.Module, r: int, alpha: float, dropout: float, rslora: bool = False
    ) -> None:
        super().__init__()
        self.base_layer = base
        device = base.codes.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as peft initialises A
        nn.init.zeros_(self.lora_B.weight)  # the adapted model starts equal to the base
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r  # as peft scales
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        return out + (self.lora_B(self.lora_A(h)) * self.scaling).to(out.dtype)


def _quant_linear_type() -> type | None:
    try:
        from harness.quant.linear import QuantLinear
    except ImportError:  # the quant package is optional for dense/bnb-only installs
        return None
    return QuantLinear


def _linear_like_types() -> tuple[type, ...]:
    quant = _quant_linear_type()
    return linear_like_types() + ((quant,) if quant else ())


def is_kbit(model: Any) -> bool:
    """True when bitsandbytes stores some of the model's linear layers."""
    try:
        import bitsandbytes as bnb
    except Exception:
        return False
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return any(isinstance(m, kinds) for m in model.modules())


def _has_int8(model: Any) -> bool:
    try:
        import bitsandbytes as bnb
    except Exception:
        return False
    return any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())


def target_names(model: Any, targets: str | list[str]) -> list[str]:
    """Full names of the modules LoRA wraps.

    ``all-linear`` means what peft means by it: every linear-like layer (``nn.Linear``,
    GPT-2's ``Conv1D``, bitsandbytes layers, and the harness's QuantLinear standing in for
    either) except the output head. 3-D mixture-of-experts weights are not layers and are not
    targeted (peft does not target them either). A list matches module names by their last
    components.
    """
    kinds = _linear_like_types()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, kinds) or module is head:
            continue
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            names.append(name)
    return names


def trainable_parameters(model: Any) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _prepare_kbit(model: Any) -> list[dict[str, Any]]:
    """peft's k-bit preparation, measuring what it upcast (gradient checkpointing left off:
    it is a training setting, switched on by the training workload)."""
    from peft import prepare_model_for_kbit_training

    before = {id(p): (p.dtype, p.numel() * p.element_size()) for p in model.parameters()}
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    upcast, added = 0, 0
    for p in model.parameters():
        dtype, nbytes = before.get(id(p), (p.dtype, 0))
        if p.dtype == torch.float32 and dtype != torch.float32:
            upcast += p.numel()
            added += p.numel() * p.element_size() - nbytes
    method = "peft-prepare_model_for_kbit_training"
    return [
        {
            "metric": "kbit_upcast_to_fp32",
            "value": float(upcast > 0),
            "unit": "bool",
            "method": method,
        },
        {
            "metric": "kbit_upcast_params",
            "value": float(upcast),
            "unit": "params",
            "method": method,
        },
        {"metric": "kbit_upcast_bytes", "value": float(added), "unit": "bytes", "method": method},
    ]


def attach_lora(model: Any, options: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Freeze ``model`` and wrap its target modules with LoRA; returns the model to use."""
    r, alpha, dropout = options["r"], options["alpha"], options["dropout"]
    rows = _prepare_kbit(model) if is_kbit(model) else []
    for p in model.parameters():
        p.requires_grad_(False)
    names = target_names(model, options["target_modules"])
    if not names:
        found = sorted({n.rsplit(".", 1)[-1] for n in target_names(model, "all-linear")})
        raise HarnessError(
            f"no linear-like module matches target_modules={options['target_modules']}; "
            f"this model's linear layers: {', '.join(found) or 'none'} (or use all-linear)"
        )
    quant = _quant_linear_type()
    own = [n for n in names if quant is not None and isinstance(model.get_submodule(n), quant)]
    if own and options.get("use_dora"):
        raise SkipCell(
            "DoRA needs the base weight's row norms, and the harness's packed QuantLinear "
            f"({len(own)} layers here) has no weight peft can read; use lora-r<N> or "
            "rslora-r<N> on this precision, or DoRA on a dense or bitsandbytes base"
        )
    if options.get("use_dora") and _has_int8(model):
        # peft's DoRA reads an 8-bit layer's row scales from its state, which bitsandbytes
        # moves off the weight at the first forward: the next forward in the other mode
        # (train after eval, or eval after train) finds none ('NoneType' has no 'dtype')
        raise SkipCell(
            "peft's DoRA on bitsandbytes int8 layers fails once the layer has run a forward "
            "(bitsandbytes 0.50 moves the row scales peft reads); use dora-r<N> on a dense or "
            "4-bit base, or lora-r<N> / rslora-r<N> on int8"
        )
    if options.get("use_dora"):  # DoRA dequantizes 4-bit weights in every forward
        from harness.schemes.bnb import keep_trainable_layout

        keep_trainable_layout(model)
    rslora = bool(options.get("use_rslora"))
    for name in own:
        layer = LoraQuantLinear(model.get_submodule(name), r, alpha, dropout, rslora)
        set_module(model, name, layer)
    rest = [n for n in names if n not in own]
    if rest:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=rest,
            bias=options["bias"],
            use_rslora=bool(options.get("use_rslora")),
            use_dora=bool(options.get("use_dora")),
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, config)
        except (ValueError, TypeError, NotImplementedError) as exc:
            if not options.get("use_dora"):
                raise
            raise SkipCell(f"peft cannot apply DoRA to this model's layers: {exc}") from None
    backend = "+".join(b for b, used in (("peft", rest), ("harness-quantlinear", own)) if used)
    method = "dora" if options.get("use_dora") else "rslora" if rslora else "lora"
    rows.append(
        {
            "metric": "adapter_modules",
            "value": float(len(names)),
            "unit": "modules",
            "method": f"{method}:{backend}",
        }
    )
    return model, rows


def attach(loaded: Any, cell: Any) -> list[dict[str, Any]]:
    """Apply ``cell.adapter`` to ``loaded`` in place; rows describe what was attached.

    Raises SkipCell for ``full`` on quantized storage (its weights are codes, not trainable
    parameters): the one check that needs the loaded model. Everything decidable from the cell
    alone (the optimizer, the device) is asked in the preflight, before loading.
    """
    kind, _ = parse_adapter(cell.adapter)
    if kind == "none":
        return []
    if kind == "full":
        if loaded.storage == "quantized":
            raise SkipCell(
                f"full fine-tuning needs trainable weights, but precision '{cell.precision}' "
                "stores quantized codes (storage=quantized); use lora-r<N> on it instead"
            )
        for p in loaded.model.parameters():
            p.requires_grad_(True)
        count = sum(1 for _ in loaded.model.parameters())
        return [
            {
                "metric": "adapter_modules",
                "value": 0.0,
                "unit": "modules",
                "method": f"full:{count}-parameter-tensors",
            }
        ]
    loaded.model, rows = attach_lora(loaded.model, cell.adapter_options)
    return rows


def save_adapter(model: Any, directory: str) -> int:
    """Write the trainable parameters (peft's format when peft made them); returns file bytes."""
    from pathlib import Path

    path = Path(directory)
    if hasattr(model, "peft_config"):
        model.save_pretrained(path)
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    from safetensors.torch import save_file

    tensors = {n: p.detach().contiguous().cpu() for n, p in trainable_parameters(model)}
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return (path / "adapter_model.safetensors").stat().st_size
