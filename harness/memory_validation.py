"""The memory model against what cells measured: every component, the live total and the peak.

For each ok cell of a results table the model predicts the cell from its own settings (batch
and sequence sizes, optimizer, checkpointing and LoRA settings are read back from the rows'
``protocol``) and each predicted term is put beside the measured one:

* training cells: weights (frozen + quantization state), adapters, gradients, optimizer state,
  saved activations, the live total (``mem.accounted``) and the phase peak
  (``train_peak_bytes``);
* inference cells: stored weights, the KV cache after decode, the live total (weights + cache)
  and the larger of the prefill and decode peaks (``*_peak_bytes``).

``error_band`` is the largest relative error of the totals and peaks: the margin a prediction
at a scale this machine cannot run is quoted with.
"""

from __future__ import annotations

import json
from typing import Any

from harness.workloads.settings import protocol_settings

TOTALS = ("live total", "peak")
TARGETS = {"live total": 0.10, "peak": 0.15}


def _values(cell: Any) -> dict[str, float]:
    ok = cell[(cell["status"] == "ok") & cell["value"].notna()]
    ok = ok[ok["stat"].isna() | ok["stat"].isin(["", "median"])]
    return dict(zip(ok["metric"], ok["value"].astype(float), strict=False))


def _workload(cell: Any) -> tuple[Any, bool, bool]:
    """The memory model's workload for one cell, and whether it trained / ran inference."""
    from harness.memory_model import Workload

    work = Workload()
    train = protocol_settings(_first(cell, "training"))
    infer = protocol_settings(_first(cell, "inference"))
    if infer:
        work.batch = int(infer["batch"])
        work.prompt = int(infer["prompt"])
        work.seq = work.prompt + int(infer["new"])
    if train:
        work.train_batch, work.train_seq = int(train["batch"]), int(train["seq"])
        work.checkpointing = train.get("grad_ckpt") == "True"
        work.optimizer = train.get("optimizer", work.optimizer)
        work.lora_dropout = float(train.get("lora_dropout", Workload().lora_dropout))
        targets = train.get("lora_targets", "all-linear")
        work.lora_targets = None if targets == "all-linear" else targets.split(",")
    return work, bool(train), bool(infer)


def _first(cell: Any, workload: str) -> Any:
    rows = cell[(cell["workload"] == workload) & cell["protocol"].notna()]
    return rows["protocol"].iloc[0] if len(rows) else None


def _training_pairs(v: dict[str, float], pred: Any, adapter: str) -> list[tuple[str, float, float]]:
    full = adapter == "full"
    weights = v["mem.frozen_weights"] + v.get("mem.quant_state", 0.0)
    if full:
        weights += v["mem.adapter_params"]
    act = pred.activations_checkpointed or pred.activations
    pairs = [
        ("weights", weights, pred.weight_bytes),
        ("gradients", v["mem.gradients"], pred.gradients),
        ("optimizer state", v["mem.optimizer_state"], pred.optimizer_state),
        ("activations", v["mem.activations"], act),
        ("live total", v["mem.accounted"], pred.training_live),
    ]
    if not full:
        pairs.insert(1, ("adapters", v["mem.adapter_params"], pred.adapters))
    if "train_peak_bytes" in v:
        runtime = v.get("train_live_runtime_layouts_bytes", 0.0)  # not predicted: see below
        pairs.append(("peak", v["train_peak_bytes"], pred.training_peak + runtime))
    return pairs


def _inference_pairs(v: dict[str, float], pred: Any) -> list[tuple[str, float, float]]:
    live = sum(v.get(f"decode_live_{k}_bytes", 0.0) for k in ("weights", "quant_state", "adapters"))
    kv = v.get("decode_live_kv_cache_bytes")
    pairs = [("weights", live, pred.weight_bytes + pred.adapters)]
    if kv is not None:
        pairs += [
            ("KV cache", kv, pred.kv_cache),
            ("live total", live + kv, pred.weight_bytes + pred.adapters + pred.kv_cache),
        ]
    peaks = [v[m] for m in ("prefill_peak_bytes", "decode_peak_bytes") if m in v]
    # the model does not predict packed CPU runtime layouts: the cell's own count is added
    runtime = v.get("decode_live_runtime_layouts_bytes", 0.0)
    if peaks:
        pairs.append(("peak", max(peaks), pred.inference_peak + runtime))
    return pairs


def validate(frame: Any) -> tuple[Any, list[str]]:
    """One row per (cell, phase, component): measured, predicted and their relative error."""
    import pandas as pd

    from harness import memory_model as mm

    if "run" not in frame:
        frame = frame.assign(run="")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    shapes: dict[str, Any] = {}
    ok = frame[frame["cell_status"] == "ok"]
    for (run, cell_id), cell in ok.groupby(["run", "cell_id"], sort=False):
        first = cell.iloc[0]
        model, precision, adapter = (
            str(first["model"]),
            str(first["precision"]),
            str(first["adapter"]),
        )
        if model not in shapes:
            try:
                shapes[model] = mm.model_shape(mm.load_config(model))
            except Exception as exc:  # an architecture the model cannot build: a note
                shapes[model] = None
                notes.append(f"no prediction for {model}: {exc}")
        if shapes[model] is None:
            continue
        v = _values(cell)
        try:  # one cell that cannot be predicted is a note, never a failed report
            work, trained, inferred = _workload(cell)
            options = first.get("precision_options")
            options = json.loads(options) if isinstance(options, str) and options else {}
            pred = mm.predict(shapes[model], precision, options, adapter, work)
        except Exception as exc:
            notes.append(f"no prediction for {cell_id}: {type(exc).__name__}: {exc}")
            continue
        phases = []
        if trained and "mem.accounted" in v:
            phases.append(("training", _training_pairs(v, pred, adapter)))
        if inferred and "decode_peak_bytes" in v:
            phases.append(("inference", _inference_pairs(v, pred)))
        for phase, pairs in phases:
            for component, measured, predicted in pairs:
                error = (predicted - measured) / measured if measured else float("nan")
                rows.append(
                    {
                        "run": run,
                        "cell_id": cell_id,
                        "precision": precision,
                        "adapter": adapter,
                        "phase": phase,
                        "component": component,
                        "measured": int(measured),
                        "predicted": int(predicted),
                        "error": error,
                    }
                )
    return pd.DataFrame(rows), notes


def error_band(frame: Any, components: tuple[str, ...] = TOTALS) -> float | None:
    """Largest relative error of the predicted ``components`` (default: the live totals and
    peaks) over the ok cells of ``frame``; None when nothing can be validated there."""
    table, _ = validate(frame)
    if not len(table):
        return None
    rows = table[table["component"].isin(components)]
    return float(rows["error"].abs().max()) if len(rows) else None


def error_by_precision(frame: Any, components: tuple[str, ...] = TOTALS) -> dict[str, float]:
    """Largest relative error of ``components`` per precision over the ok cells of ``frame``."""
    table, _ = validate(frame)
    if not len(table):
        return {}
    rows = table[table["component"].isin(components)]
    return {str(p): float(g["error"].abs().max()) for p, g in rows.groupby("precision")}


def summary(table: Any) -> Any:
    """Per phase and total: cells, largest error, and whether it meets its target."""
    import pandas as pd

    out = []
    for (phase, component), group in table[table["component"].isin(TOTALS)].groupby(
        ["phase", "component"], sort=False
    ):
        worst = float(group["error"].abs().max())
        out.append(
            {
                "phase": phase,
                "component": component,
                "cells": len(group),
                "largest error": f"{100 * worst:.1f}%",
                "target": f"{100 * TARGETS[component]:.0f}%",
                "met": "yes" if worst <= TARGETS[component] else "no",
            }
        )
    return pd.DataFrame(out)
