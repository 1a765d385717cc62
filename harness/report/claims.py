"""Published claims checked against a results table.

Each claim in ``experiments/claims.yaml`` says how to compute its measured value with a small
declarative spec (no code is evaluated): a ``metric``, filters selecting cells (``precision``
may list alternatives, the first one measured is used), and a reducer over one or two operands:

* ``value``: operand ``a``;  ``ratio``: a / b;  ``difference``: a - b;
* ``relative_change``: (a - b) / b (e.g. perplexity degradation against a baseline).

The measured value is compared with ``target`` (default: ``published``) by ``comparison``
(``>=``, ``<=``, ``>``, ``<`` or ``~``); ``tolerance`` is absolute unless ``tolerance_kind:
relative``. Verdicts are computed per results directory (``run``) and model, so a CPU and a GPU
run are judged separately. A claim that cannot be computed is "not measured" with what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import HarnessError

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"
_SELECT_KEYS = ("precision", "adapter", "stat", "workload")


class Operand(BaseModel):
    """Which cells feed one side of the reducer; unset keys inherit from the measure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str | None = None
    precision: str | list[str] | None = None
    adapter: str | list[str] | None = None
    stat: str | None = None
    workload: str | None = None


class Measure(Operand):
    reducer: Literal["value", "ratio", "difference", "relative_change"] = "value"
    a: Operand = Operand()
    b: Operand | None = None


class Claim(BaseModel):
    """One published claim with how to measure it and when it is expected to hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    source: str
    statement: str
    measure: Measure
    published: float
    published_note: str = ""
    target: float | None = None
    comparison: Literal[">=", "<=", ">", "<", "~"]
    tolerance: float = Field(0.0, ge=0)
    tolerance_kind: Literal["absolute", "relative"] = "absolute"
    unit: str = ""
    scope: str = ""
    likely_reason: str = ""

    @property
    def threshold(self) -> float:
        return self.published if self.target is None else self.target


@dataclass
class Verdict:
    """The outcome of one claim for one run and model."""

    claim: Claim
    run: str
    model: str
    verdict: str
    measured: float | None = None
    detail: str = ""
    cells: list[str] = field(default_factory=list)


def default_registry() -> Path:
    from harness.paths import repo_root

    return repo_root() / "experiments" / "claims.yaml"


def load_claims(path: Path | None = None) -> list[Claim]:
    """Read and validate the registry; a bad entry is a HarnessError naming it."""
    path = path or default_registry()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"cannot read claims registry {path}: {exc}") from None
    claims = []
    for i, item in enumerate((data or {}).get("claims", [])):
        try:
            claims.append(Claim.model_validate(item))
        except ValidationError as exc:
            name = item.get("id", f"#{i}") if isinstance(item, dict) else f"#{i}"
            raise HarnessError(f"claim {name} in {path} is invalid: {exc}") from None
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise HarnessError(f"duplicate claim ids in {path}")
    return claims


def _merged(measure: Measure, side: Operand) -> dict[str, Any]:
    spec = {k: getattr(measure, k) for k in ("metric", *_SELECT_KEYS)}
    spec.update({k: v for k, v in side.model_dump().items() if v is not None})
    return spec


def _as_list(value: Any) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _operand(frame: Any, spec: dict[str, Any]) -> tuple[float | None, str, str]:
    """(value, cell description, why missing) for one operand within one run and model."""
    metric = spec["metric"]
    rows = frame[frame["metric"] == metric]
    if spec.get("workload"):
        rows = rows[rows["workload"] == spec["workload"]]
    stat = spec.get("stat")
    if stat:
        rows = rows[rows["stat"] == stat]
    else:
        rows = rows[rows["stat"].isna() | rows["stat"].isin(["", "median"])]
    if spec.get("adapter"):
        rows = rows[rows["adapter"].isin(_as_list(spec["adapter"]))]
    wanted = _as_list(spec.get("precision")) or list(dict.fromkeys(rows["precision"]))
    adapters = _as_list(spec.get("adapter")) or [None]
    for precision in wanted:
        for adapter in adapters:  # the first listed alternative that was measured
            sel = rows[(rows["precision"] == precision) & (rows["status"] == "ok")]
            if adapter is not None:
                sel = sel[sel["adapter"] == adapter]
            values = sel["value"].dropna()
            if len(values):  # several seeds: their mean
                label = f"{precision}/{adapter}" if adapter else precision
                return float(values.mean()), label, ""
    return None, "", _missing(frame, metric, wanted, spec)


def _precisions(frame: Any, spec: dict[str, Any]) -> set[str]:
    rows = frame[(frame["metric"] == spec["metric"]) & (frame["status"] == "ok")]
    if spec.get("adapter"):
        rows = rows[rows["adapter"].isin(_as_list(spec["adapter"]))]
    return set(rows["precision"])


def _missing(frame: Any, metric: str, precisions: list[str], spec: dict[str, Any]) -> str:
    """Why an operand has no value: the cell is absent, failed, or lacks the metric."""
    where = " or ".join(precisions) or "any precision"
    if spec.get("adapter"):
        where += f" with adapter {' or '.join(_as_list(spec['adapter']) or [])}"
    cells = frame[frame["precision"].isin(precisions)] if precisions else frame.iloc[0:0]
    if spec.get("adapter"):
        cells = cells[cells["adapter"].isin(_as_list(spec["adapter"]))]
    bad = cells[cells["cell_status"] != "ok"].drop_duplicates("cell_id")
    if len(bad):
        first = bad.iloc[0]
        error = first.get("error")
        reason = f": {str(error)[:120]}" if isinstance(error, str) and error else ""
        return f"{metric} for {where}: cell {first['cell_status']}{reason}"
    failed = cells[(cells["metric"] == metric) & (cells["status"] != "ok")]
    if len(failed):
        return f"{metric} for {where}: workload {failed.iloc[0]['status']}"
    return f"{metric} for {where}: not in the results"


def _reduce(reducer: str, a: float, b: float | None) -> float:
    if reducer == "value" or b is None:
        return a
    if reducer == "ratio":
        return a / b if b else float("inf")
    if reducer == "difference":
        return a - b
    return (a - b) / b if b else float("inf")


def compare(claim: Claim, measured: float) -> bool:
    """True when the measured value satisfies the claim's comparison and tolerance."""
    target = claim.threshold
    tol = claim.tolerance * (abs(target) if claim.tolerance_kind == "relative" else 1.0)
    return {
        ">=": measured >= target - tol,
        "<=": measured <= target + tol,
        ">": measured > target - tol,
        "<": measured < target + tol,
        "~": abs(measured - target) <= tol,
    }[claim.comparison]


def evaluate_one(claim: Claim, frame: Any, run: str = "", model: str = "") -> Verdict:
    """Verdict of one claim on the rows of one run and model."""
    m = claim.measure
    spec_a, spec_b = _merged(m, m.a), _merged(m, m.b or Operand())
    if m.reducer != "value" and spec_a["precision"] is None and spec_b["precision"] is None:
        # compare like with like: a precision both operands measured (e.g. full vs LoRA in bf16)
        common = _precisions(frame, spec_a) & _precisions(frame, spec_b)
        ordered = [p for p in dict.fromkeys(frame["precision"]) if p in common]
        spec_a["precision"] = spec_b["precision"] = ordered or None
    a, a_cell, a_why = _operand(frame, spec_a)
    b, b_cell, b_why = (None, "", "")
    if m.reducer != "value":
        b, b_cell, b_why = _operand(frame, spec_b)
    missing = [w for w in (a_why, b_why) if w]
    if a is None or (m.reducer != "value" and b is None):
        return Verdict(claim, run, model, NOT_MEASURED, detail="missing " + "; ".join(missing))
    measured = _reduce(m.reducer, a, b)
    ok = compare(claim, measured)
    cells = [c for c in (a_cell, b_cell) if c]
    detail = "" if ok else claim.likely_reason
    return Verdict(claim, run, model, REPRODUCED if ok else NOT_REPRODUCED, measured, detail, cells)


def evaluate(claims: list[Claim], frame: Any) -> list[Verdict]:
    """Every claim for every (run, model) in ``frame`` (``run`` column optional)."""
    if frame.empty:
        return [Verdict(c, "", "", NOT_MEASURED, detail="empty results") for c in claims]
    if "run" not in frame:
        frame = frame.assign(run="")
    groups = frame.groupby(["run", "model"], sort=False)
    return [
        evaluate_one(claim, group, run, model)
        for (run, model), group in groups
        for claim in claims
    ]


def _tolerance_text(claim: Claim) -> str:
    if not claim.tolerance:
        return ""
    if claim.tolerance_kind == "relative":
        return f" ± {100 * claim.tolerance:g}%"
    return f" ± {claim.tolerance:g}"


def verdict_table(verdicts: list[Verdict]) -> Any:
    """The verdicts as a DataFrame for reports and the console."""
    import pandas as pd

    rows = []
    for v in verdicts:
        c = v.claim
        rows.append({
            "claim": c.id,
            "run": v.run,
            "model": v.model,
            "verdict": v.verdict,
            "measured": None if v.measured is None else round(v.measured, 4),
            "expected": f"{c.comparison} {c.threshold:g}"
            + _tolerance_text(c),
            "published": f"{c.published:g} {c.unit}".strip()
            + (f" ({c.published_note})" if c.published_note else ""),
            "cells": ", ".join(v.cells),
            "scope": c.scope,
            "note": v.detail,
            "source": c.source,
        })
    return pd.DataFrame(rows)
