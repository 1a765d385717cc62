"""Token perplexity over non-overlapping windows: the GPTQ/SpQR papers' protocol.

The corpus is cut into windows of ``window`` tokens (no overlap, no special tokens); each
window is scored on its own, and perplexity is exp of the mean NLL over every predicted token.
Per-window mean NLLs are kept in the cell record; a bootstrap over windows gives the 95%
interval (``ci_low``/``ci_high``) and feeds paired comparisons between cells.
"""

from __future__ import annotations

import math
from typing import Any

from harness.data.corpus import CorpusUnavailable
from harness.data.tokens import corpus_info, corpus_tokens
from harness.stats import perplexity_interval


def windows_of(ids: Any, window: int, max_tokens: int) -> Any:
    n = min(len(ids), max_tokens) // window
    if n == 0:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than one window of {window}")
    return ids[: n * window].view(n, window)


def window_nlls(model: Any, windows: Any, batch_size: int) -> tuple[list[float], float, int]:
    """(mean NLL per window, summed NLL, predicted token count)."""
    import torch
    import torch.nn.functional as F

    per_window: list[float] = []
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            batch = batch.to(model.device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(targets.shape)
            per_window.extend(nll.mean(dim=1).tolist())
            total += float(nll.sum())
            count += targets.numel()
    return per_window, total, count


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    loaded.model.eval()
    try:
        ids = corpus_tokens(loaded.tokenizer, settings.corpus, "test")
    except CorpusUnavailable as exc:
        return [{"metric": "perplexity", "status": "skipped", "error": str(exc)}]
    windows = windows_of(ids, settings.window, settings.max_tokens)
    per_window, total, count = window_nlls(loaded.model, windows, settings.batch_size)
    info = corpus_info(settings.corpus, "test")
    protocol = (
        f"token-windows;window={settings.window};tokens={windows.numel()};"
        f"corpus={info.name}:{info.split}@{info.sha256[:12]}"
    )
    mean_nll = total / count
    # Windows have equal length, so the mean of window means is the token mean: the interval
    # resamples windows around exactly the reported perplexity.
    ci = perplexity_interval(per_window)
    return [
        {
            "metric": "perplexity",
            "value": math.exp(mean_nll),
            "unit": "ppl",
            "n": count,
            "protocol": protocol,
            "samples": per_window,
            "ci_low": ci.low,
            "ci_high": ci.high,
        },
        {
            "metric": "mean_nll",
            "value": mean_nll,
            "unit": "nats/token",
            "n": count,
            "protocol": protocol,
        },
    ]
