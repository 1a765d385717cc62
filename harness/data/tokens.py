"""Token ids of a corpus split for a tokenizer, computed once per process."""

from __future__ import annotations

from typing import Any

from harness.data.corpus import Corpus, load_corpus

_CACHE: dict[tuple[int, str, str], Any] = {}


def corpus_tokens(tokenizer: Any, corpus: str = "builtin", split: str = "test") -> Any:
    """1-D LongTensor of the whole split, without special tokens (as the papers' protocol)."""
    import torch

    key = (id(tokenizer), corpus, split)
    if key not in _CACHE:
        text = load_corpus(corpus, split).text  # type: ignore[arg-type]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _CACHE[key]


def corpus_info(corpus: str = "builtin", split: str = "test") -> Corpus:
    return load_corpus(corpus, split)  # type: ignore[arg-type]
