"""Claims predicted at the scale they speak of: the memory model on the published architecture.

Most published memory claims are about 7B-65B models on GPUs this machine cannot load. A claim
may carry an ``at_scale`` block (data, validated here): which preset architecture, precision,
adapter and sequence sizes the paper used, and which predicted quantity is compared with which
threshold. The prediction is reported with the memory model's own measured error band (the
largest relative error of the model over the validated cells of the runs being judged), and the
verdict is "predicted: holds/fails", or "undecided" when the band straddles the threshold. It is
a prediction, never a measurement, and is reported apart from the measured verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

HOLDS, FAILS = "predicted: holds", "predicted: fails"
UNDECIDED = "predicted: within error band (undecided)"
_UNITS = {"x": 1.0, "GB": 1e9}


class Setting(BaseModel):
    """One published configuration the memory model predicts (no weights are loaded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preset: str
    precision: str
    options: dict[str, Any] = Field(default_factory=dict)
    adapter: str = "none"
    lora_targets: list[str] | None = None  # None: every linear layer of the decoder
    batch: int = Field(1, ge=1)
    seq: int = Field(160, ge=1)
    train_batch: int = Field(1, ge=1)
    train_seq: int = Field(512, ge=1)
    checkpointing: bool = False
    optimizer: Literal["adamw", "paged_adamw_32bit", "paged_adamw_8bit"] = "adamw"
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    adapter_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of LoRA weights and their gradients (the harness: float32, as peft keeps them)."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """dtype of activations; None: what the harness's scheme computes in."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from harness.memory_model import PRESETS

        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(PRESETS)}")
        return value

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from harness.schemes import REGISTRY

        if value not in REGISTRY:
            raise ValueError(f"unknown precision {value!r}; allowed: {', '.join(REGISTRY)}")
        return value

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        from harness.adapter_names import parse_adapter

        parse_adapter(value)  # raises naming the allowed forms
        return value

    def describe(self) -> str:
        text = f"{self.preset} {self.precision}"
        if self.adapter != "none":
            targets = "all linear" if self.lora_targets is None else "+".join(self.lora_targets)
            lora = self.adapter.startswith("lora")
            text += f" {self.adapter}" + (f" ({targets})" if lora else "")
            text += f", batch {self.train_batch} x {self.train_seq}, {self.optimizer}"
            text += ", checkpointing" if self.checkpointing else ""
        return text


class AtScale(BaseModel):
    """The predicted quantity, its reducer over one or two settings, and the threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    quantity: Literal["weight_bytes", "linear_bytes", "training_peak", "inference_peak"]
    reducer: Literal["value", "ratio", "difference"] = "value"
    a: Setting
    b: Setting | None = None
    unit: Literal["x", "GB"]
    """``x`` for a ratio, ``GB`` for a value or a difference of bytes."""
    published: float
    comparison: Literal[">=", "<=", ">", "<", "~"]
    tolerance: float = Field(0.0, ge=0)
    tolerance_kind: Literal["absolute", "relative"] = "absolute"
    note: str = ""

    def model_post_init(self, _context: Any) -> None:
        if (self.reducer == "value") != (self.b is None):
            raise ValueError(
                "at_scale: 'b' is required for ratio/difference and not allowed for value"
            )
        if (self.reducer == "ratio") != (self.unit == "x"):
            raise ValueError(
                f"at_scale: unit {self.unit!r} does not fit reducer {self.reducer!r} "
                "(a ratio is in 'x', a value or difference of bytes in 'GB')"
            )


@dataclass
class Predicted:
    """One claim's verdict at scale."""

    claim_id: str
    value: float
    low: float | None
    high: float | None
    band: float | None
    verdict: str
    text: str


@lru_cache(maxsize=8)
def _shape(preset: str) -> Any:
    from harness.memory_model import load_config, model_shape

    return model_shape(load_config(f"preset:{preset}"))


def predicted_bytes(setting: Setting, quantity: str) -> float:
    """The memory model's bytes for one setting and quantity."""
    from harness.memory_model import Workload, predict

    work = Workload(
        batch=setting.batch,
        seq=setting.seq,
        train_batch=setting.train_batch,
        train_seq=setting.train_seq,
        checkpointing=setting.checkpointing,
        lora_targets=setting.lora_targets,
        optimizer=setting.optimizer,
        lora_dropout=setting.lora_dropout,
        adapter_dtype=setting.adapter_dtype,
        compute_dtype=setting.compute_dtype,
    )
    pred = predict(
        _shape(setting.preset), setting.precision, setting.options or None, setting.adapter, work
    )
    if quantity == "linear_bytes":
        keys = ("quantized_weights", "quant_state", "linear_weights")
        return float(sum(pred.weights.get(k, 0) for k in keys))
    return float(
        {
            "weight_bytes": pred.weight_bytes,
            "training_peak": pred.training_peak,
            "inference_peak": pred.inference_peak,
        }[quantity]
    )


def _bounds(spec: AtScale, a: float, b: float | None, band: float) -> tuple[float, float]:
    """Worst case of the reduced quantity when each prediction may be off by ``band``."""
    a_lo, a_hi = a * (1 - band), a * (1 + band)
    if b is None:
        return a_lo, a_hi
    b_lo, b_hi = b * (1 - band), b * (1 + band)
    if spec.reducer == "ratio":
        return a_lo / b_hi, a_hi / b_lo
    return a_lo - b_hi, a_hi - b_lo


def _side(spec: AtScale, lo: float, hi: float) -> bool | None:
    """True/False when all of [lo, hi] satisfies / misses the threshold, None when it straddles."""
    from harness.report.claim_interval import interval_side

    return interval_side(
        spec.comparison, spec.published, spec.tolerance, spec.tolerance_kind, lo, hi
    )


def _reduced(spec: AtScale, a: float, b: float | None) -> float:
    if b is None:
        return a / _UNITS[spec.unit]
    if spec.reducer == "ratio":
        return a / b
    return (a - b) / _UNITS[spec.unit]


def _verdict(spec: AtScale, value: float, span: tuple[float, float] | None) -> str:
    if span is None:  # nothing validated the model on these runs: the point alone, flagged
        holds = _side(spec, value, value)
        return (HOLDS if holds else FAILS) + " (error band unknown: no validated cells)"
    side = _side(spec, *span)
    return UNDECIDED if side is None else HOLDS if side else FAILS


def predict_claim(claim_id: str, spec: AtScale, band: float | None) -> Predicted:
    """Predict one claim's quantity on its published setting and judge it with the band."""
    a = predicted_bytes(spec.a, spec.quantity)
    b = predicted_bytes(spec.b, spec.quantity) if spec.b is not None else None
    value = _reduced(spec, a, b)
    span = None
    if band is not None and band < 1:  # a band of 100% or more bounds nothing: undecided
        lo, hi = _bounds(spec, a, b, band)
        scale = 1.0 if spec.reducer == "ratio" else _UNITS[spec.unit]
        span = (lo / scale, hi / scale)
    verdict = UNDECIDED if band is not None and band >= 1 else _verdict(spec, value, span)
    band_text = "± ? (no error band)" if band is None else f"± {100 * band:.1f}% per prediction"
    where = "" if span is None else f" [{span[0]:.3g}, {span[1]:.3g}]"
    outcome = {HOLDS: "meets", FAILS: "misses"}.get(verdict.split(" (")[0], "straddles")
    text = (
        f"predicted {value:.3g} {spec.unit} {band_text}{where} → {outcome} "
        f"{spec.comparison} {spec.published:g} {spec.unit}"
    )
    return Predicted(
        claim_id,
        value,
        None if span is None else span[0],
        None if span is None else span[1],
        band,
        verdict,
        text,
    )


WEIGHT_QUANTITIES = ("weight_bytes", "linear_bytes")


def measured_error_band(frame: Any) -> dict[str, Any]:
    """The memory model's largest relative errors over the validated cells of ``frame``:
    ``weights`` (stored bytes, what weight claims predict; also per precision, since a
    scheme's stored format is exact or not whatever the model) and ``totals`` (live totals
    and peaks, what training and inference claims predict)."""
    from harness.memory_validation import error_band, error_by_precision

    return {
        "weights": error_band(frame, ("weights",)),
        "totals": error_band(frame),
        "weights_by_precision": error_by_precision(frame, ("weights",)),
    }


def band_for(
    band: float | dict[str, Any] | None, quantity: str, precisions: tuple[str, ...] = ()
) -> float | None:
    """The error band that applies to ``quantity`` (a single number applies to all). A weight
    quantity of precisions that were all validated takes their own largest weight error."""
    if not isinstance(band, dict):
        return band
    if quantity not in WEIGHT_QUANTITIES:
        return band["totals"]
    per = band.get("weights_by_precision") or {}
    if precisions and all(p in per for p in precisions):
        return max(per[p] for p in precisions)
    return band["weights"]


def at_scale_table(claims: list[Any], band: float | dict[str, float | None] | None) -> Any:
    """One row per claim with an ``at_scale`` block: setting, prediction, verdict."""
    import pandas as pd

    rows = []
    for claim in claims:
        spec = claim.at_scale
        if spec is None:
            continue
        precisions = tuple(x.precision for x in (spec.a, spec.b) if x is not None)
        p = predict_claim(claim.id, spec, band_for(band, spec.quantity, precisions))
        setting = spec.a.describe() + ("" if spec.b is None else f" vs {spec.b.describe()}")
        rows.append(
            {
                "claim": claim.id,
                "verdict": p.verdict,
                "prediction": p.text,
                "setting": f"{spec.quantity} ({spec.reducer}): {setting}",
                "published": f"{spec.published:g} {spec.unit}",
                "note": spec.note,
            }
        )
    return pd.DataFrame(
        rows, columns=["claim", "verdict", "prediction", "setting", "published", "note"]
    )
