"""The builtin corpus: Python's own documentation topics (``pydoc_data.topics``), offline.

About 113k tokens of real English prose. Topics repeat each other (``compound`` holds the text
of ``if``, ``while`` and ``with``; ``specialnames`` holds ``customization``), so a plain cut
would leak evaluation text into calibration and fine-tuning. The split rule (``SPLIT_RULE``):

1. topics that share text are grouped: two topics whose 64-character spans overlap by more
   than 2% of the smaller one's, and topics of one name family (``atom-*``, ``types*``), are
   kept together, transitively;
2. whole groups go to ``test`` in sorted order of their first topic until it holds half the
   text; the other groups are ``train``;
3. every 64-character span of train that also occurs in test is removed from train (what is
   left of a topic stays as separate pieces), repeated until none is left.

So no quantizer or adapter ever sees a 64-character span of the evaluation text. Each split's
SHA-256 (of its text, which depends on the Python version and the rule) and the rule name are
recorded with every number computed on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Literal

from harness.errors import HarnessError, UnknownNameError

Split = Literal["test", "train"]
SEPARATOR = "\n\n"
SPAN = 64
"""No span of this many characters occurs in both splits."""
LINK_FRACTION = 0.02
"""Topics sharing more than this fraction of their spans are grouped together."""
MIN_PIECE = SPAN
"""Train fragments shorter than this after span removal are dropped."""
SPLIT_RULE = f"topic-groups+dedup{SPAN}-v2"
BUILTIN_NAME = f"pydoc-topics[{SPLIT_RULE}]"


@dataclass(frozen=True)
class Corpus:
    name: str
    split: str
    text: str
    sha256: str
    """Hash of this split's text: identifies the corpus version and the split rule."""


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {key: topics[key].strip() for key in sorted(topics)}


def spans(text: str, width: int = SPAN) -> set[str]:
    """Every ``width``-character substring of ``text``."""
    return {text[i : i + width] for i in range(len(text) - width + 1)}


def _family(key: str) -> str:
    return "types" if key.startswith("types") else key.split("-")[0]


def topic_groups(texts: dict[str, str]) -> list[list[str]]:
    """Topics joined transitively by shared text or name family, in sorted order."""
    parent = {key: key for key in texts}

    def root(key: str) -> str:
        while parent[key] != key:
            key = parent[key]
        return key

    by_family: dict[str, str] = {}
    for key in texts:
        first = by_family.setdefault(_family(key), key)
        parent[root(key)] = root(first)
    sets = {key: spans(text) for key, text in texts.items()}
    for a, b in combinations(texts, 2):
        smaller = min(len(sets[a]), len(sets[b])) or 1
        if len(sets[a] & sets[b]) / smaller > LINK_FRACTION:
            parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for key in texts:
        groups.setdefault(root(key), []).append(key)
    return sorted(groups.values())


def remove_shared(pieces: list[str], test_spans: set[str]) -> list[str]:
    """Cut out of ``pieces`` every ``SPAN``-character span found in ``test_spans``.

    Joining what is left could form a new shared span across a cut, so pieces stay apart
    and the caller checks the joined text again.
    """
    out = []
    for text in pieces:
        keep = [True] * len(text)
        for i in range(len(text) - SPAN + 1):
            if text[i : i + SPAN] in test_spans:
                keep[i : i + SPAN] = [False] * SPAN
        start = None
        for i, kept in enumerate([*keep, False]):
            if kept and start is None:
                start = i
            elif not kept and start is not None:
                piece = text[start:i].strip()
                if len(piece) >= MIN_PIECE:
                    out.append(piece)
                start = None
    return out


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    texts = _topics()
    groups = topic_groups(texts)
    half = len(SEPARATOR.join(texts.values())) / 2
    test: list[str] = []
    for group in groups:
        if sum(len(texts[k]) + len(SEPARATOR) for k in test) >= half:
            break
        test += group
    test_docs = [texts[k] for k in sorted(test)]
    train = [texts[k] for k in texts if k not in test]
    test_spans = set().union(*(spans(d) for d in test_docs), spans(SEPARATOR.join(test_docs)))
    while True:  # pieces joined by SEPARATOR may form a shared span again: repeat until clean
        train = remove_shared(train, test_spans)
        leaks = remove_shared([SEPARATOR.join(train)], test_spans)
        if leaks == [SEPARATOR.join(train)]:
            return tuple(test_docs), tuple(train)
        train = leaks


def builtin_documents(split: Split = "test") -> list[str]:
    """One split as documents: whole test topics; train topics or what is left of them."""
    if split not in ("test", "train"):
        raise UnknownNameError("corpus split", split, ["test", "train"])
    test, train = _split()
    return list(test if split == "test" else train)


@lru_cache(maxsize=4)
def builtin_corpus(split: Split = "test") -> Corpus:
    text = SEPARATOR.join(builtin_documents(split))
    return Corpus(BUILTIN_NAME, split, text, hashlib.sha256(text.encode()).hexdigest())


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
