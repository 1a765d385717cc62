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

from harness.errors import UnknownNameError

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


def load_corpus(name: str, split: Split = "test") -> Corpus:
    if name != "builtin":
        raise UnknownNameError("corpus", name, ["builtin"])
    return builtin_corpus(split)
