"""Agreement with the unquantized model: next-token KL divergence and top-1 agreement.

The baseline (``fp32`` by default) is scored once per model, corpus and protocol and stored in
the cache as its top-k log-probabilities plus the remaining tail mass per position, not full
logits (a 49k vocabulary x 4k tokens would be 800 MB). KL is computed between the two
distributions coarsened to {top-k tokens of the baseline, everything else}: by the data
processing inequality it is a lower bound of the full KL, exact when the baseline's mass sits
in its top k (k = 64 keeps > 99% of it on the builtin model). Top-1 agreement is exact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.data.corpus import CorpusUnavailable
from harness.data.tokens import corpus_info, corpus_tokens
from harness.paths import cache_dir
from harness.results import atomic_write
from harness.stats import bootstrap_mean
from harness.workloads.perplexity import windows_of


def _tail_logprob(top_logprobs: Any) -> Any:
    import torch

    mass = top_logprobs.exp().sum(-1).clamp(max=1.0 - 1e-7)
    return torch.log1p(-mass)


def summarize_logits(logits: Any, k: int) -> dict[str, Any]:
    """Top-k log-probs, their token ids and the tail log-mass, per position."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    return {"values": values, "ids": ids.to(torch.int32), "tail": _tail_logprob(values)}


def compare(logits: Any, ref: dict[str, Any]) -> tuple[Any, Any]:
    """Per-position KL(baseline || model) on the coarsened distributions, and top-1 match."""
    import torch

    logq = torch.log_softmax(logits.float(), dim=-1)
    q_top = logq.gather(-1, ref["ids"].long())
    q_tail = _tail_logprob(q_top)
    p_top, p_tail = ref["values"], ref["tail"]
    kl = (p_top.exp() * (p_top - q_top)).sum(-1) + p_tail.exp() * (p_tail - q_tail)
    top1 = (logq.argmax(-1) == ref["ids"][..., 0].long()).float()
    return kl.clamp(min=0.0), top1


def _window_logits(model: Any, windows: Any):
    import torch

    with torch.inference_mode():
        for window in windows:
            yield model(input_ids=window[None].to(model.device), use_cache=False).logits[0]


def reference_key(cell: Any, settings: Any, source_path: str) -> str:
    config = Path(source_path, "config.json")
    identity = {
        "model": cell.model,
        "config": config.read_text() if config.is_file() else source_path,
        "corpus": corpus_info(settings.corpus).sha256,
        # max_tokens only sets how many windows: one stored reference serves every prefix
        "settings": settings.model_dump(mode="json", exclude={"max_tokens"}),
        "format": 2,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def build_reference(model: Any, windows: Any, k: int) -> dict[str, Any]:
    import torch

    parts = [summarize_logits(logits, k) for logits in _window_logits(model, windows)]
    return {key: torch.stack([p[key] for p in parts]) for key in parts[0]}


def load_or_build_reference(cell: Any, settings: Any, windows: Any) -> dict[str, Any]:
    """The stored baseline summary of ``windows``, built on first use by loading the baseline
    precision. Windows are consecutive slices of one token stream, so a stored reference of
    more windows serves fewer (a cell on a capped budget) by its first ones; one of fewer is
    rebuilt for all of them."""
    from safetensors.torch import load_file, save_file

    from harness.models import resolve
    from harness.schemes import get_handler

    source = resolve(cell.model)
    path = cache_dir() / "references" / f"{reference_key(cell, settings, source.path)}.safetensors"
    if path.is_file():
        stored = load_file(path)
        if min(len(v) for v in stored.values()) >= len(windows):
            return {k: v[: len(windows)] for k, v in stored.items()}
    handler = get_handler(settings.baseline)
    with _preserved_matmul_flags():
        baseline = handler.load(source, handler.options(), cell.device).model
    baseline.eval()
    ref = build_reference(baseline, windows, settings.top_k)
    del baseline
    if _stored_windows(path) < len(windows):  # never replace a longer one built meanwhile
        tensors = {k: v.contiguous().cpu() for k, v in ref.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return ref


def _stored_windows(path: Path) -> int:
    from safetensors import safe_open

    if not path.is_file():
        return 0
    try:
        with safe_open(str(path), "pt") as stored:
            return min(stored.get_slice(k).get_shape()[0] for k in stored.keys())  # noqa: SIM118
    except Exception:  # unreadable: replace it
        return 0


class _preserved_matmul_flags:
    """Loading the baseline must not change the cell's TF32 settings."""

    def __enter__(self) -> None:
        import torch

        self.saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision(),
        )

    def __exit__(self, *exc: object) -> None:
        import torch

        matmul, cudnn, precision = self.saved
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.set_float32_matmul_precision(precision)


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    try:
        ids = corpus_tokens(loaded.tokenizer, settings.corpus, "test")
    except CorpusUnavailable as exc:
        return [{"metric": "kl_divergence", "status": "skipped", "error": str(exc)}]
    windows = windows_of(ids, settings.window, settings.max_tokens)
    ref = load_or_build_reference(cell, settings, windows)
    loaded.model.eval()
    kls, top1s = [], []
    for i, logits in enumerate(_window_logits(loaded.model, windows)):
        window_ref = {k: v[i].to(logits.device) for k, v in ref.items()}
        kl, top1 = compare(logits, window_ref)
        kls.append(float(kl.mean()))
        top1s.append(float(top1.mean()))
    info = corpus_info(settings.corpus)
    protocol = (
        f"baseline={settings.baseline};top_k={settings.top_k}+tail;window={settings.window};"
        f"tokens={windows.numel()};corpus={info.name}:test@{info.sha256[:12]}"
    )
    n = windows.numel()
    kl_ci, top1_ci = bootstrap_mean(kls), bootstrap_mean(top1s)
    return [
        {
            "metric": "kl_divergence",
            "value": kl_ci.estimate,
            "unit": "nats/token",
            "n": n,
            "ci_low": kl_ci.low,
            "ci_high": kl_ci.high,
            "protocol": protocol,
            "samples": kls,
        },
        {
            "metric": "top1_agreement",
            "value": top1_ci.estimate,
            "unit": "fraction",
            "n": n,
            "ci_low": top1_ci.low,
            "ci_high": top1_ci.high,
            "protocol": protocol,
            "samples": top1s,
        },
    ]
