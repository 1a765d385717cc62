"""Accuracy: lm-eval tasks on the model exactly as the cell built it, and lm-eval's rolling
word/byte perplexity on the builtin corpus.

Task metrics become rows ``acc.<task>`` / ``acc_norm.<task>`` with a bootstrap interval over
items (per-item scores are kept in the cell record for paired comparisons). A task that cannot
be had offline is a ``skipped`` row naming what is missing; the other tasks still run.
"""

from __future__ import annotations

import math
import re
from typing import Any

from harness.data.corpus import builtin_corpus
from harness.data.lmeval import default_task_dir, evaluate_tasks
from harness.data.rolling_task import ROLLING_TASK, rolling_documents, write_rolling_task
from harness.stats import bootstrap_mean


def _task_rows(raw: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    rows = []
    for r in raw:
        if r.get("status") != "ok":
            rows.append(
                {
                    "metric": f"task.{r['task']}",
                    "status": "skipped",
                    "error": r.get("error"),
                    "protocol": protocol,
                }
            )
            continue
        row = {
            "metric": f"{r['metric']}.{r['task']}",
            "value": r["value"],
            "unit": "fraction",
            "n": r.get("n"),
            "protocol": protocol,
        }
        samples = r.get("samples")
        if samples:
            ci = bootstrap_mean([float(x) for x in samples])
            row.update(ci_low=ci.low, ci_high=ci.high, samples=samples)
        rows.append(row)
    return rows


def _words(text: str) -> int:
    return len(re.split(r"\s+", text))


def _rolling_rows(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    """Word and byte perplexity (lm-eval), and the token perplexity they imply."""
    docs = rolling_documents()[: settings.rolling_docs]
    task_dir = default_task_dir()
    write_rolling_task(task_dir, docs)
    raw = evaluate_tasks(
        loaded.model,
        loaded.tokenizer,
        [ROLLING_TASK],
        include_path=task_dir,
        batch_size=1,
        device=cell.device,
        max_length=settings.rolling_max_length,
        log_samples=False,
    )
    corpus = builtin_corpus("test")
    protocol = (
        f"lm-eval-rolling;max_length={settings.rolling_max_length};docs={len(docs)};"
        f"corpus={corpus.name}:test@{corpus.sha256[:12]}"
    )
    units = {"word_perplexity": "ppl/word", "byte_perplexity": "ppl/byte", "bits_per_byte": "bits"}
    rows = []
    for r in raw:
        if r.get("status") != "ok":
            rows.append(
                {
                    "metric": "word_perplexity",
                    "status": "skipped",
                    "error": r.get("error"),
                    "protocol": protocol,
                }
            )
            continue
        if r["metric"] in units:
            rows.append(
                {
                    "metric": r["metric"],
                    "value": r["value"],
                    "unit": units[r["metric"]],
                    "n": len(docs),
                    "protocol": protocol,
                }
            )
    word = next(
        (r["value"] for r in rows if r["metric"] == "word_perplexity" and "value" in r), None
    )
    if word is not None:
        rows.append(
            {
                "metric": "rolling_token_perplexity",
                "unit": "ppl",
                "protocol": protocol,
                "value": token_perplexity_from_words(word, docs, loaded.tokenizer),
            }
        )
    return rows


def token_perplexity_from_words(word_ppl: float, docs: list[str], tokenizer: Any) -> float:
    """Undo lm-eval's per-word normalisation: total log-likelihood over tokens instead."""
    words = sum(_words(d) for d in docs)
    tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    return math.exp(math.log(word_ppl) * words / tokens)


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if settings.tasks:
        protocol = f"lm-eval;fewshot={settings.num_fewshot};limit={settings.limit}"
        raw = evaluate_tasks(
            loaded.model,
            loaded.tokenizer,
            settings.tasks,
            num_fewshot=settings.num_fewshot,
            limit=settings.limit,
            batch_size=settings.batch_size,
            device=cell.device,
        )
        rows += _task_rows(raw, protocol)
    if settings.rolling_docs:
        rows += _rolling_rows(loaded, cell, settings)
    return rows
