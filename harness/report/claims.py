"""Published claims checked against a results table.

Each claim in ``experiments/claims.yaml`` says how to compute its measured value with a small
declarative spec (no code is evaluated): a ``metric``, filters selecting cells (``precision``
may list alternatives, the first one measured is used), and a reducer over one or two operands:

* ``value``: operand ``a``;  ``ratio``: a / b;  ``difference``: a - b;
* ``relative_change``: (a - b) / b (e.g. perplexity degradation against a baseline).

Cells are chosen as the claim speaks of them: a claim that names no adapter is about the base
model and uses ``adapter: none`` cells only; a ``memory`` claim refuses cells whose storage is
``simulated``. The measured value is compared with ``target`` (default: ``published``) by
``comparison`` (``>=``, ``<=``, ``>``, ``<`` or ``~``); ``tolerance`` is absolute unless
``tolerance_kind: relative``. Counts (``memory``, ``parameters``) are exact; a noisy quantity
(``quality``, ``speed``) is judged on its interval (``claim_interval``): "reproduced" only when
the whole interval clears the threshold, "within noise" when it straddles it, "no interval" when
there is none. A claim whose metric is the published formula's own arithmetic is "holds by
construction", never counted as a reproduction. Verdicts are computed per results directory
(``run``) and model and list the cell ids they used. A claim that cannot be computed is "not
measured" with what is missing. Predictions at the published scale are in ``claims_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import HarnessError
from harness.report import claim_cells
from harness.report.claim_interval import Samples, interval_side, measured_interval
from harness.report.claims_scale import AtScale

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"
WITHIN_NOISE, NO_INTERVAL = "within noise (undecided)", "no interval (undecided)"
BY_CONSTRUCTION = "holds by construction"
EXACT_KINDS = ("memory", "parameters")  # counted, not sampled: the value has no noise
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
    kind: Literal["memory", "parameters", "quality", "speed"]
    measure: Measure | None = None  # None: nothing at this machine's scale measures it
    published: float
    published_note: str = ""
    target: float | None = None
    comparison: Literal[">=", "<=", ">", "<", "~"]
    tolerance: float = Field(0.0, ge=0)
    tolerance_kind: Literal["absolute", "relative"] = "absolute"
    unit: str = ""
    scope: str = ""
    likely_reason: str = ""
    by_construction: str = ""  # why the metric satisfies the claim whatever the model
    at_scale: AtScale | None = None

    @property
    def threshold(self) -> float:
        return self.published if self.target is None else self.target


@dataclass
class Verdict:
    """The outcome of one claim for one run and model; ``cells`` are the cell ids used."""

    claim: Claim
    run: str
    model: str
    verdict: str
    measured: float | None = None
    detail: str = ""
    cells: list[str] = field(default_factory=list)
    interval: tuple[float, float] | None = None
    method: str = ""


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
    return bool(_side(claim, measured, measured))


def _side(claim: Claim, low: float, high: float) -> bool | None:
    return interval_side(claim.comparison, claim.threshold, claim.tolerance,
                         claim.tolerance_kind, low, high)


def _operands(claim: Claim, frame: Any, samples: Samples, run: str
              ) -> tuple[claim_cells.Operand, claim_cells.Operand | None]:
    m = claim.measure
    assert m is not None
    memory = claim.kind == "memory"
    spec_a, spec_b = _merged(m, m.a), _merged(m, m.b or Operand())
    if m.reducer != "value" and spec_a["precision"] is None and spec_b["precision"] is None:
        # compare like with like: a precision both operands measured (e.g. full vs LoRA in bf16)
        common = (claim_cells.precisions(frame, spec_a, memory)
                  & claim_cells.precisions(frame, spec_b, memory))
        ordered = [p for p in dict.fromkeys(frame["precision"]) if p in common]
        spec_a["precision"] = spec_b["precision"] = ordered or None
    a = claim_cells.select(frame, spec_a, samples, run, memory)
    if m.reducer == "value":
        return a, None
    like = a if spec_a["metric"] == spec_b["metric"] else None  # same metric: same protocol
    return a, claim_cells.select(frame, spec_b, samples, run, memory, like=like)


def _judged(claim: Claim, measured: float, a: Any, b: Any) -> tuple[str, Any, str, str]:
    """(verdict, interval, method, detail) of a measured value."""
    if claim.kind in EXACT_KINDS:
        ok = compare(claim, measured)
        if ok and claim.by_construction:
            return BY_CONSTRUCTION, None, "exact count", claim.by_construction
        return (REPRODUCED if ok else NOT_REPRODUCED), None, "exact count", (
            "" if ok else claim.likely_reason)
    m = claim.measure
    assert m is not None
    metric_b = _merged(m, m.b or Operand())["metric"] if b is not None else None
    interval, method = measured_interval(
        m.reducer, _merged(m, m.a)["metric"], metric_b, a, b)
    if interval is None:
        side = "meets" if compare(claim, measured) else "misses"
        return NO_INTERVAL, None, "", f"point estimate {side} the threshold; no interval"
    side = _side(claim, *interval)
    if side is None:
        return WITHIN_NOISE, interval, method, "the interval straddles the threshold"
    return (REPRODUCED if side else NOT_REPRODUCED), interval, method, (
        "" if side else claim.likely_reason)


def _unlike(claim: Claim, a: Any, b: Any) -> str:
    """Why two operands of one metric are not like for like ("" where they are): measured
    under different protocols, e.g. a cell on a capped budget against one on the full one."""
    m = claim.measure
    if b is None or _merged(m, m.a)["metric"] != _merged(m, m.b or Operand())["metric"]:
        return ""
    differ = claim_cells.conflicts(a.protocols, b.protocols)
    if not differ:
        return ""
    return (f"operands measured differently ({a.label} / {b.label}: {', '.join(differ)}); "
            "a capped budget is not compared with a full one")


def evaluate_one(claim: Claim, frame: Any, run: str = "", model: str = "",
                 samples: Samples | None = None) -> Verdict:
    """Verdict of one claim on the rows of one run and model."""
    if claim.measure is None:
        return Verdict(claim, run, model, NOT_MEASURED,
                       detail="no measured counterpart: see the prediction at scale")
    a, b = _operands(claim, frame, samples or {}, run)
    if a.value is None or (b is not None and b.value is None):
        missing = [o.why for o in (a, b) if o is not None and o.why]
        return Verdict(claim, run, model, NOT_MEASURED, detail="missing " + "; ".join(missing))
    unlike = _unlike(claim, a, b)
    if unlike:
        return Verdict(claim, run, model, NOT_MEASURED, detail=unlike, cells=a.cells + b.cells)
    measured = _reduce(claim.measure.reducer, a.value, None if b is None else b.value)
    verdict, interval, method, detail = _judged(claim, measured, a, b)
    cells = a.cells + ([] if b is None else b.cells)
    return Verdict(claim, run, model, verdict, measured, detail, cells, interval, method)


def evaluate(claims: list[Claim], frame: Any, samples: Samples | None = None) -> list[Verdict]:
    """Every claim for every (run, model) in ``frame`` (``run`` column optional).

    ``samples`` (``claim_interval.load_samples``) holds the per-window values of the cells, for
    paired intervals; without them noisy claims fall back to the cells' own intervals."""
    if frame.empty:
        return [Verdict(c, "", "", NOT_MEASURED, detail="empty results") for c in claims]
    if "run" not in frame:
        frame = frame.assign(run="")
    groups = frame.groupby(["run", "model"], sort=False)
    return [
        evaluate_one(claim, group, run, model, samples)
        for (run, model), group in groups
        for claim in claims
    ]


DISAGREE = "runs disagree (undecided)"


def combine(verdicts: list[Verdict]) -> list[Verdict]:
    """One verdict per claim and model from every run's evidence.

    Runs that measured a claim decide it: one run, its verdict; several that agree, that
    verdict with every run and cell named; several that disagree, ``DISAGREE`` with each run's
    verdict in the note (they come from different cells or machines, so neither is dropped).
    A claim no run measured stays one "not measured" verdict.
    """
    groups: dict[tuple[str, str], list[Verdict]] = {}
    for v in verdicts:
        groups.setdefault((v.claim.id, v.model), []).append(v)
    out = []
    for group in groups.values():
        measured = [v for v in group if v.verdict != NOT_MEASURED]
        if not measured:
            out.append(group[0])
            continue
        if len(measured) == 1:
            out.append(measured[0])
            continue
        runs = ", ".join(v.run for v in measured)
        cells = [c for v in measured for c in v.cells]
        first = measured[0]
        if len({v.verdict for v in measured}) == 1:
            out.append(Verdict(first.claim, runs, first.model, first.verdict, first.measured,
                               first.detail, cells, first.interval, first.method))
            continue
        note = "; ".join(f"{v.run}: {v.verdict}" + (f" {v.measured:g}" if v.measured is not None
                                                     else "") for v in measured)
        out.append(Verdict(first.claim, runs, first.model, DISAGREE, detail=note, cells=cells))
    return out


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
            "interval": "" if v.interval is None
            else f"[{v.interval[0]:.4g}, {v.interval[1]:.4g}] ({v.method})",
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
