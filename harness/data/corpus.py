"""The builtin corpus: Python's own documentation topics (``pydoc_data.topics``), offline.

About 113k tokens of real English prose. It changes with the Python version, so its SHA-256 is
recorded with every number computed on it. The topics are joined in sorted key order and split
at a topic boundary: the first half ("test") is for evaluation only; the second half ("train")
feeds calibration and fine-tuning, so no quantizer or adapter ever sees the evaluation text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from harness.errors import HarnessError, UnknownNameError

Split = Literal["test", "train"]
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    name: str
    split: str
    text: str
    sha256: str
    """Hash of the whole corpus (both splits), identifying its version."""


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics)]


def builtin_documents(split: Split = "test") -> list[str]:
    """The topics of one split, one document each (they contain blank lines themselves)."""
    if split not in ("test", "train"):
        raise UnknownNameError("corpus split", split, ["test", "train"])
    texts = _topics()
    half = len(SEPARATOR.join(texts)) / 2
    cut, total = 0, 0
    while total < half:
        total += len(texts[cut]) + len(SEPARATOR)
        cut += 1
    return texts[:cut] if split == "test" else texts[cut:]


@lru_cache(maxsize=4)
def builtin_corpus(split: Split = "test") -> Corpus:
    digest = hashlib.sha256(SEPARATOR.join(_topics()).encode()).hexdigest()
    return Corpus("pydoc-topics", split, SEPARATOR.join(builtin_documents(split)), digest)


class CorpusUnavailable(HarnessError):
    """A hub corpus that cannot be had here (offline, not cached): recorded as skipped."""


# name -> (datasets path, config, split for "test", split for "train", text field, data files)
HUB_CORPORA: dict[str, tuple[str, str | None, str, str, str, dict[str, str] | None]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test", "train", "text", None),
    "c4": ("allenai/c4", None, "validation", "train", "text",
           {"train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz"}),
}  # fmt: skip
CORPORA = ["builtin", *HUB_CORPORA]


@lru_cache(maxsize=4)
def hub_corpus(name: str, split: Split = "test") -> Corpus:
    """WikiText-2 or C4 through ``datasets``, joined with blank lines as the GPTQ protocol does.

    The exact dataset path, config and split are part of the corpus name on every row.
    """
    path, config, test_split, train_split, field, files = HUB_CORPORA[name]
    hub_split = test_split if split == "test" else train_split
    try:
        from datasets import load_dataset

        kwargs = {"data_files": {hub_split: files[hub_split]}} if files else {}
        data = load_dataset(path, config, split=hub_split, **kwargs)
    except Exception as exc:  # offline, not cached, or the hub refused
        raise CorpusUnavailable(
            f"corpus '{name}' ({path} {config or ''} split {hub_split}) is not available: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    text = SEPARATOR.join(t for t in data[field] if t.strip())
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Corpus(f"{path}:{config or 'default'}:{hub_split}", split, text, digest)


def load_corpus(name: str, split: Split = "test") -> Corpus:
    if name == "builtin":
        return builtin_corpus(split)
    if name in HUB_CORPORA:
        return hub_corpus(name, split)
    raise UnknownNameError("corpus", name, CORPORA)
