"""Which cells feed one operand of a claim, and why an operand has none.

An operand names a metric and filters (precision alternatives, adapter, stat, workload). When it
names no adapter it means the base model: only ``adapter: none`` cells count, so fine-tuned
perplexities or LoRA weights never leak into a claim about the model itself. A memory claim
never uses a cell whose storage is ``simulated`` (its bytes are not what the scheme would store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.workloads.settings import protocol_settings

BASE_ADAPTER = "none"


@dataclass
class Operand:
    """The selected value of one operand: the mean over seeds, with the cells it came from."""

    value: float | None = None
    label: str = ""
    cells: list[str] = field(default_factory=list)
    samples: list[float] | None = None  # per-item samples, when exactly one cell was used
    seed_samples: dict[int, list[float]] = field(default_factory=dict)
    """Per-item samples of each seed's cell (fine-tuning cells: one held-out list per seed)."""
    ci: tuple[float, float] | None = None  # the cell's own interval, when exactly one
    why: str = ""
    protocols: frozenset[str] = frozenset()  # how the rows were measured (budget included)


def as_list(value: Any) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def adapters_of(spec: dict[str, Any]) -> list[str]:
    return as_list(spec.get("adapter")) or [BASE_ADAPTER]


def _rows(frame: Any, spec: dict[str, Any], memory: bool) -> Any:
    rows = frame[(frame["metric"] == spec["metric"]) & (frame["status"] == "ok")]
    if spec.get("workload"):
        rows = rows[rows["workload"] == spec["workload"]]
    stat = spec.get("stat")
    if stat:
        rows = rows[rows["stat"] == stat]
    else:
        rows = rows[rows["stat"].isna() | rows["stat"].isin(["", "median"])]
    rows = rows[rows["adapter"].isin(adapters_of(spec))]
    if memory and "storage" in rows:
        rows = rows[rows["storage"] != "simulated"]
    return rows.dropna(subset=["value"])


METHOD_SETTINGS = frozenset({"lr"})
"""Settings a training method chooses for itself (fine-tuning's ``lr`` for adapters, its
``full_lr`` for full fine-tuning, as the papers compare them): no conflict between methods."""


def conflicts(a: frozenset[str], b: frozenset[str]) -> list[str]:
    """Settings both sides' protocols name with different values (``tokens 4096/2048``): the
    two were measured differently, e.g. one cell on a capped budget. Settings only one side
    names (a LoRA cell's adapter options) and :data:`METHOD_SETTINGS` are no conflict."""
    out = []
    for pa in a:
        for pb in b:
            sa, sb = protocol_settings(pa), protocol_settings(pb)
            shared = sorted((sa.keys() & sb.keys()) - METHOD_SETTINGS)
            out += [f"{k} {sa[k]}/{sb[k]}" for k in shared if sa[k] != sb[k]]
    return sorted(set(out))


def select(
    frame: Any, spec: dict[str, Any], samples: dict, run: str, memory: bool, like: Any = None
) -> Operand:
    """The first listed precision (and adapter) alternative that was measured; given ``like``
    (the other operand), the first whose protocol does not conflict with it, else the first."""
    first = None
    for out in _alternatives(frame, spec, samples, run, memory):
        if like is None or not conflicts(out.protocols, like.protocols):
            return out
        first = first or out
    return first or Operand(why=missing(frame, spec, _wanted(frame, spec, memory), memory))


def _wanted(frame: Any, spec: dict[str, Any], memory: bool) -> list[str]:
    rows = _rows(frame, spec, memory)
    return as_list(spec.get("precision")) or list(dict.fromkeys(rows["precision"]))


def _alternatives(frame: Any, spec: dict[str, Any], samples: dict, run: str, memory: bool):
    rows = _rows(frame, spec, memory)
    wanted = _wanted(frame, spec, memory)
    for precision in wanted:
        for adapter in adapters_of(spec):
            sel = rows[(rows["precision"] == precision) & (rows["adapter"] == adapter)]
            if not len(sel):
                continue
            out = Operand(float(sel["value"].mean()), f"{precision}/{adapter}",
                          list(dict.fromkeys(sel["cell_id"])))
            if "protocol" in sel:
                out.protocols = frozenset(str(p) for p in sel["protocol"].dropna() if p)
            for _, row in sel.iterrows():
                values = samples.get((run, row["cell_id"]), {}).get(spec["metric"])
                if values and "seed" in row:
                    out.seed_samples[int(row["seed"])] = values
            if len(sel) == 1:
                row = sel.iloc[0]
                out.samples = samples.get((run, row["cell_id"]), {}).get(spec["metric"])
                low, high = row.get("ci_low"), row.get("ci_high")
                if low is not None and high is not None and low == low and high == high:
                    out.ci = (float(low), float(high))
            yield out


def precisions(frame: Any, spec: dict[str, Any], memory: bool) -> set[str]:
    return set(_rows(frame, spec, memory)["precision"])


def missing(frame: Any, spec: dict[str, Any], wanted: list[str], memory: bool) -> str:
    """Why an operand has no value: absent, failed, simulated storage, or metric missing."""
    metric = spec["metric"]
    where = " or ".join(wanted) or "any precision"
    where += f" with adapter {' or '.join(adapters_of(spec))}"
    cells = frame[frame["precision"].isin(wanted)] if wanted else frame.iloc[0:0]
    cells = cells[cells["adapter"].isin(adapters_of(spec))]
    bad = cells[cells["cell_status"] != "ok"].drop_duplicates("cell_id")
    if len(bad):
        first = bad.iloc[0]
        error = first.get("error")
        reason = f": {str(error)[:120]}" if isinstance(error, str) and error else ""
        return f"{metric} for {where}: cell {first['cell_status']}{reason}"
    if memory and "storage" in cells and (cells["storage"] == "simulated").any():
        ids = ", ".join(dict.fromkeys(cells[cells["storage"] == "simulated"]["cell_id"]))
        return f"{metric} for {where}: storage is simulated in {ids}, not real stored bytes"
    failed = cells[(cells["metric"] == metric) & (cells["status"] != "ok")]
    if len(failed):
        return f"{metric} for {where}: workload {failed.iloc[0]['status']}"
    return f"{metric} for {where}: not in the results"
