"""``harness predict``: memory of every cell of an experiment, or of one model/precision/adapter
setting, from the model config alone (no weights loaded, no network).

Adapters are ``none``, ``full`` and the LoRA family (``lora-rN``, ``rslora-rN``, ``dora-rN``):
rsLoRA predicts what LoRA does; DoRA adds its magnitudes to the adapter, gradient and optimizer
columns and its forward to the activations and the training peak (``harness.memory_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = [
    ("weights", "weights"),
    ("quant state", "quant_state"),
    ("adapters", "adapters"),
    ("gradients", "gradients"),
    ("optimizer", "optimizer_state"),
    ("activations", "activations"),
    ("act. (ckpt)", "activations_checkpointed"),
    ("KV cache", "kv_cache"),
    ("inference peak", "inference_peak"),
    ("training peak", "training_peak"),
]


def _gb(value: float) -> str:
    return f"{value / 1e9:.3f}" if value else ""


def _row(model: str, shape: Any, precision: str, options: dict, adapter: str,
         work: Any) -> dict[str, Any]:
    from harness import memory_model as mm

    pred = mm.predict(shape, precision, options, adapter, work)
    values = {key: getattr(pred, key, 0) for _, key in COLUMNS[2:]}
    values["weights"] = pred.weight_bytes - pred.weights.get("quant_state", 0)
    values["quant_state"] = pred.weights.get("quant_state", 0)
    return {"model": model, "precision": precision, "adapter": adapter, "params": shape.params,
            **values, "notes": "; ".join(pred.notes)}


def _print(rows: list[dict[str, Any]], title: str, work: Any, console: Console) -> None:
    table = Table(title=title)
    for name in ["model", "precision", "adapter", *(c[0] for c in COLUMNS)]:
        left = name in ("model", "precision")
        table.add_column(name, justify="left" if left else "right", overflow="fold")
    for row in rows:
        table.add_row(row["model"], row["precision"], row["adapter"],
                      *(_gb(row[key]) for _, key in COLUMNS))
    console.print(table)
    for row in rows:
        if row["notes"]:
            console.print(f"{row['model']} {row['precision']} {row['adapter']}: {row['notes']}")
    console.print(
        f"batch {work.batch} x {work.seq} tokens (inference), {work.train_batch} x "
        f"{work.train_seq} (training, checkpointing {'on' if work.checkpointing else 'off'}, "
        f"{work.optimizer}, adapter dropout {work.lora_dropout:g}); terms documented in "
        "harness/memory_model.py; the measured error "
        "of the model is in every report's memory model section"
    )


def predict_setting(model: str, precisions: list[str], adapters: list[str], work: Any, *,
                    console: Console | None = None) -> list[dict[str, Any]]:
    """One model (a preset such as ``llama-65b``, ``builtin:...``, ``synthetic:...`` or a local
    directory with ``config.json``) under each precision and adapter."""
    from harness import memory_model as mm

    console = console or Console()
    shape = mm.model_shape(mm.load_config(model))
    rows = [_row(model, shape, p, {}, a, work) for p in precisions for a in adapters]
    _print(rows, f"{model}: predicted memory (GB = 1e9 B)", work, console)
    return rows


def predict_experiment(path: Path, *, console: Console | None = None) -> list[dict[str, Any]]:
    """One row per cell (model x precision x adapter; seeds do not change memory)."""
    from harness import memory_model as mm
    from harness.config import load_experiment

    console = console or Console()
    exp = load_experiment(path)
    work = mm.workload_from(exp.workloads, getattr(exp, "lora", None))
    rows = []
    for model in exp.models:
        shape = mm.model_shape(mm.load_config(model))
        for prec in exp.precisions:
            for adapter in exp.adapters:
                rows.append(_row(model, shape, prec.name, prec.resolved_options(), adapter, work))
    _print(rows, f"{exp.name}: predicted memory (GB = 1e9 B)", work, console)
    return rows
