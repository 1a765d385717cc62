"""How long a CPU cell's workloads will take, projected before they run.

Forwards of two sizes are timed on the loaded model (1 token and :data:`PROBE_TOKENS` tokens,
best of :data:`PROBE_REPEATS` after a warm call), giving a per-forward cost ``a`` and a
per-token cost ``b``; a forward of ``n`` tokens is projected at ``a + b * n``. Each workload's
settings say how many forwards of how many tokens it makes (:func:`forwards`), so the
projection is the sum over those. It is a planning figure:
attention's cost growing with the square of a window's length, lm-eval's padding and the
accuracy items' exact lengths (:data:`ITEM_TOKENS`, the builtin tasks' prompts and answers) are
left out, and so are one-off costs outside the cell's model (lm-eval's setup, loading the
agreement baseline where its reference is not stored yet). The projection and the measured wall
time of each workload are both recorded so the error shows: on the builtin model the workloads
took 0.7-1.6x their projection (``benchmarks/default_run_time.py`` prints both per cell).
:mod:`harness.budget` uses it to keep a cell within its time target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PROBE_TOKENS = 128
PROBE_REPEATS = 3
ITEM_TOKENS = 8
"""Effective tokens of one loglikelihood request of the builtin tasks: a prompt and answer are
~16 tokens, and lm-eval's batches of short rows cost about half as much per token as the
probe's single row (measured on the builtin model: 260 requests took 6 s against a per-token
cost of 2.8 ms)."""
CHARS_PER_TOKEN = 4
"""Characters per token of the builtin corpus, to size the rolling documents without a
tokenizer."""
OTHER_TASK_REQUESTS = 4
"""Requests per item assumed for a task outside the builtin suite (choices are unknown)."""
TRAIN_PASSES = 3
"""A training micro-batch as forwards: the forward and a backward of about twice its cost."""


@dataclass(frozen=True)
class Probe:
    """Measured forward costs of one loaded model: ``a + b * n`` seconds for ``n`` tokens."""

    per_forward_s: float
    per_token_s: float

    def forward_s(self, tokens: int) -> float:
        return self.per_forward_s + self.per_token_s * tokens


def fit(one_token_s: float, probe_s: float, probe_tokens: int = PROBE_TOKENS) -> Probe:
    """The line through a 1-token and a ``probe_tokens``-token forward (never negative)."""
    per_token = max(0.0, (probe_s - one_token_s) / (probe_tokens - 1))
    return Probe(max(0.0, one_token_s - per_token), per_token)


def measure(model: Any, repeats: int = PROBE_REPEATS) -> Probe:
    """Times a 1-token and a :data:`PROBE_TOKENS`-token forward of ``model``, best of
    ``repeats`` each, after one warm call of each size (lazy initialization, weight repacking
    and a kernel's first use of a shape are not a forward's cost).

    Every call runs with the cell's memory allocator settings, not in a timing window: in one,
    what a forward keeps (a 4-bit layout bitsandbytes repacks, Python's object arenas) lands
    on the heap between freed blocks that the later tracked phases would reuse (int8 and nf4-dq
    left 37-40 MB of free heap, and a 16 MB higher prefill peak). The price: bitsandbytes'
    forwards time up to 1.5x slower with these settings (fp32 1.1x), so the projection errs
    high for them."""
    import torch

    device = next(model.parameters()).device
    ids = torch.randint(0, 100, (1, PROBE_TOKENS), device=device)
    sizes = (1, PROBE_TOKENS)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for n in sizes:
                model(input_ids=ids[:, :n], use_cache=False)
            best = [_best(model, ids[:, :n], repeats) for n in sizes]
    finally:
        model.train(was_training)
    return fit(*best)


def _best(model: Any, ids: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        times.append(time.perf_counter() - start)
    return min(times)


def forwards(name: str, settings: Any) -> list[tuple[int, int]]:
    """``[(count, tokens), ...]``: the forwards workload ``name`` makes with ``settings``."""
    plan = _PLANS.get(name)
    return plan(settings) if plan else []


def projected_s(probe: Probe, plan: Iterable[tuple[int, int]]) -> float:
    return sum(count * probe.forward_s(tokens) for count, tokens in plan)


def _inference(s: Any) -> list[tuple[int, int]]:
    # see inference.run: untimed warmups, one tracked call per phase, the KV-cache measurement
    # (a forward and a generate), then max(1, warmup) warm and `repeats` timed calls per phase
    warm = max(1, s.warmup)
    prefills = s.warmup + 1 + warm + s.repeats + 1
    generates = s.warmup + 1 + 1 + warm + s.repeats
    prompt = s.batch_size * s.prompt_len
    return [(prefills + generates, prompt), (generates * (s.new_tokens - 1), s.batch_size)]


def _windows(s: Any) -> list[tuple[int, int]]:
    return [(max(1, s.max_tokens // s.window), s.window)]


def _accuracy(s: Any) -> list[tuple[int, int]]:
    # harness.data.lmeval evaluates each listed task (or tag) on its own, and lm-eval batches
    # the requests of a tag's tasks together; a few-shot prompt repeats num_fewshot solved
    # items before the question
    from harness.data.rolling_task import rolling_documents
    from harness.data.tasks import SUITE_TAG, TASK_SPECS, generate_items

    tokens = s.batch_size * ITEM_TOKENS * (1 + s.num_fewshot)
    plan = []
    for task in s.tasks:
        specs = list(TASK_SPECS.values()) if task == SUITE_TAG else [TASK_SPECS.get(task)]
        requests = 0
        for spec in specs:
            if spec is None:  # an lm-eval task: its size is unknown here
                requests += (s.limit or 100) * OTHER_TASK_REQUESTS
            else:
                items = len(generate_items(spec.name))
                requests += min(items, s.limit or items) * spec.num_choices
        plan.append((math.ceil(requests / s.batch_size), tokens))
    for doc in rolling_documents()[: s.rolling_docs]:
        # lm-eval's rolling windows are full-length once a document is longer than one
        n_tokens = len(doc) // CHARS_PER_TOKEN + 1
        windows = math.ceil(n_tokens / s.rolling_max_length)
        plan.append((windows, min(n_tokens, s.rolling_max_length)))
    return plan


def _training(s: Any) -> list[tuple[int, int]]:
    return [(s.steps * s.grad_accum * TRAIN_PASSES, s.batch_size * s.seq_len)]


_PLANS = {
    "inference": _inference,
    "perplexity": _windows,
    "agreement": _windows,
    "accuracy": _accuracy,
    "training": _training,
}
"""Workloads whose cost is their forwards; footprint makes none and capacity's tries depend on
what fits, so neither is projected."""
