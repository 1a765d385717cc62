"""lm-eval evaluation of an already-loaded model (quantized, with an adapter, or plain).

``evaluate_tasks`` wraps ``lm_eval``'s ``HFLM`` around the caller's model and runs each requested
task on its own, so that a task whose data cannot be had offline (an unknown name, a hub dataset
that is not in the local cache) yields a ``skipped`` row instead of aborting the others.

Rows returned (one per task and metric)::

    {"task": "harness_capitals", "metric": "acc", "value": 0.61, "stderr": 0.026, "n": 342,
     "num_fewshot": 0, "status": "ok", "samples": [1, 0, 1, ...]}
    {"task": "arc_easy", "status": "skipped", "error": "..."}

``samples`` holds the per-document score (0/1 for ``acc``/``acc_norm``) in document order, for
bootstrap confidence intervals.  lm-eval is imported lazily.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


def default_task_dir() -> Path:
    """Directory where the builtin task suite is written when no ``include_path`` is given."""
    env = os.environ.get("HARNESS_TASK_DIR")
    if env:
        return Path(env)
    from harness.paths import cache_dir

    return cache_dir() / "lm_eval_tasks"


def _set_offline() -> None:
    for var in _OFFLINE_ENV:
        os.environ.setdefault(var, "1")


def _as_paths(include_path: Path | str | Iterable[Path | str] | None) -> list[Path]:
    if include_path is None:
        return []
    if isinstance(include_path, (str, Path)):
        return [Path(include_path)]
    return [Path(p) for p in include_path]


def _num(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        x = float(x)
        return None if math.isnan(x) else x
    return None


def _skip(task: str, error: str) -> dict:
    return {"task": task, "status": "skipped", "error": error}


def _describe_failure(task: str, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lowered = text.lower()
    offline_markers = (
        "offline",
        "couldn't reach",
        "could not reach",
        "connection",
        "not find",
        "doesn't exist on the hub",
        "localentrynotfound",
        "no such file",
        "filenotfound",
        "datasetnotfound",
    )
    if any(m in lowered for m in offline_markers):
        return (
            f"data for task {task!r} is not available offline (dataset not in the local cache "
            f"or file missing); {text}"
        )
    return f"task {task!r} failed: {text}"


def _rows_from_results(results: dict, requested: str, num_fewshot: int) -> list[dict]:
    rows: list[dict] = []
    per_task = results.get("results", {})
    n_samples = results.get("n-samples", {})
    samples = results.get("samples") or {}
    groups = set(results.get("groups", {}) or {})
    for name in sorted(per_task):
        if name in groups and name not in n_samples:
            continue  # aggregate of subtasks; the subtasks have their own rows
        metrics = per_task[name]
        n_info = n_samples.get(name, {})
        n = n_info.get("effective") if isinstance(n_info, dict) else None
        docs = sorted(samples.get(name, []), key=lambda s: s.get("doc_id", 0))
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, _filter = key.split(",", 1)
            val = _num(value)
            if val is None:
                continue
            stderr = _num(metrics.get(f"{metric}_stderr,{_filter}"))
            row = {
                "task": name,
                "metric": metric,
                "value": val,
                "stderr": stderr,
                "n": int(n) if n is not None else len(docs) or None,
                "num_fewshot": int(num_fewshot),
                "status": "ok",
            }
            if _filter != "none":
                row["filter"] = _filter
            if name != requested:
                row["requested"] = requested
            per_doc = [_num(d.get(metric)) for d in docs]
            if docs and all(v is not None for v in per_doc):
                row["samples"] = [int(v) if float(v).is_integer() else v for v in per_doc]
            rows.append(row)
    return rows


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    num_fewshot: int = 0,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_path: Path | str | Sequence[Path | str] | None = None,
    device: str | None = "cpu",
    log_samples: bool = True,
    bootstrap_iters: int = 1000,
    offline: bool = True,
    max_length: int | None = None,
) -> list[dict]:
    """Evaluate a preloaded ``model`` on lm-eval ``tasks``; one row per task and metric.

    Builtin tasks (``harness.data.tasks.BUILTIN_TASKS``) are written to ``include_path`` when
    given, else to :func:`default_task_dir`, before evaluation.  Each task is run separately;
    failures become ``{"status": "skipped", "error": ...}`` rows and are never raised.
    ``device`` is where the model is expected to live: a non-quantized model elsewhere is moved
    there, a quantized or dispatched one is left where it is.
    """
    from harness.data.tasks import BUILTIN_TASKS, SUITE_TAG, write_task_suite

    if offline:
        _set_offline()

    tasks = list(tasks)
    if not tasks:
        return []

    paths = _as_paths(include_path)
    ours = set(BUILTIN_TASKS) | {SUITE_TAG}
    builtin = [t for t in tasks if t in ours]
    if builtin:
        suite_dir = paths[0] if paths else default_task_dir()
        try:
            write_task_suite(suite_dir)
        except OSError as exc:  # pragma: no cover - unwritable directory
            return [
                _skip(t, f"cannot write builtin task files to {suite_dir}: {exc}") for t in tasks
            ]
        if suite_dir not in paths:
            paths.insert(0, suite_dir)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_manager = _task_manager(TaskManager, paths, tasks)
    known = set(task_manager.all_tasks)

    _place_model(model, device)
    extra = {"max_length": max_length} if max_length else {}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **extra)

    rows: list[dict] = []
    for task in tasks:
        if task not in known:
            where = ", ".join(str(p) for p in paths) or "none"
            rows.append(
                _skip(
                    task,
                    f"unknown task {task!r}: not an lm-eval task, tag or group, nor defined in "
                    f"the include paths ({where})",
                )
            )
            continue
        try:
            results = simple_evaluate(
                model=lm,
                tasks=[task],
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=task_manager,
                log_samples=log_samples,
                bootstrap_iters=bootstrap_iters,
                device=device,
            )
        except Exception as exc:  # noqa: BLE001 - one task must not stop the others
            log.warning("task %s skipped: %s", task, exc)
            rows.append(_skip(task, _describe_failure(task, exc)))
            continue
        if not results:
            rows.append(_skip(task, f"task {task!r} produced no results"))
            continue
        task_rows = _rows_from_results(results, task, num_fewshot)
        if not task_rows:
            rows.append(_skip(task, f"task {task!r} produced no numeric metrics"))
        rows.extend(task_rows)
    return rows


def _task_manager(manager_cls: Any, paths: list[Path], tasks: list[str]) -> Any:
    """Index only the include paths; lm-eval's ~15k bundled tasks (seconds to index) only when a
    requested task is not defined there."""
    if paths:
        local = manager_cls(include_path=[str(p) for p in paths], include_defaults=False)
        if all(t in set(local.all_tasks) for t in tasks):
            return local
    return manager_cls(include_path=[str(p) for p in paths] or None, include_defaults=True)


def _place_model(model: Any, device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        current = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return
    target = torch.device(device)
    if current.type == target.type and (target.index is None or current.index == target.index):
        return
    quantized = bool(
        getattr(model, "is_quantized", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_loaded_in_4bit", False)
    )
    dispatched = len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1
    if quantized or dispatched:
        log.warning(
            "model is on %s (quantized or dispatched); not moving it to %s", current, device
        )
        return
    model.to(target)


def results_table(rows: Sequence[dict], metric: str = "acc") -> str:
    """Plain-text table of ``rows`` for one metric (skipped tasks listed with their reason)."""
    lines = [f"{'task':32s} {metric:>8s} {'stderr':>8s} {'n':>6s}"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['task']:32s} skipped: {r.get('error', '')}")
        elif r["metric"] == metric:
            se = "" if r["stderr"] is None else f"{r['stderr']:.4f}"
            lines.append(f"{r['task']:32s} {r['value']:8.4f} {se:>8s} {r['n']!s:>6s}")
    return "\n".join(lines)
