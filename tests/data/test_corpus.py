"""The builtin corpus: no text shared between splits, whole test topics, rule and hash named."""

from __future__ import annotations

import hashlib

from harness.data.corpus import (
    SEPARATOR,
    SPLIT_RULE,
    builtin_corpus,
    builtin_documents,
    remove_shared,
    spans,
    topic_groups,
)
from harness.data.rolling_task import rolling_documents


def _shared_positions(test: str, train: str, width: int) -> int:
    seen = spans(test, width)
    return sum(train[i : i + width] in seen for i in range(len(train) - width + 1))


def test_no_64_character_span_of_test_occurs_in_train() -> None:
    test, train = builtin_corpus("test").text, builtin_corpus("train").text
    assert _shared_positions(test, train, 64) == 0
    assert not spans(test, 64) & spans(train, 64)


def test_a_plain_half_cut_would_leak_which_is_why_the_rule_exists() -> None:
    from pydoc_data.topics import topics

    texts = [topics[k].strip() for k in sorted(topics)]
    half = len(texts) // 2
    test, train = SEPARATOR.join(texts[:half]), SEPARATOR.join(texts[half:])
    assert _shared_positions(test, train, 64) > 1000


def test_splits_keep_enough_text_and_one_rule_names_them() -> None:
    test, train = builtin_corpus("test"), builtin_corpus("train")
    assert 0.4 < len(test.text) / (len(test.text) + len(train.text)) < 0.6
    assert SPLIT_RULE in test.name and test.name == train.name
    assert test.sha256 == hashlib.sha256(test.text.encode()).hexdigest() != train.sha256


def test_related_topics_stay_in_one_group() -> None:
    from pydoc_data.topics import topics

    groups = topic_groups({k: topics[k].strip() for k in sorted(topics)})
    together = [{"compound", "if", "while", "with"}, {"specialnames", "customization"}]
    assert all(any(t <= set(g) for g in groups) for t in together)
    assert sum(map(len, groups)) == len(topics)


def test_remove_shared_cuts_exactly_the_shared_spans() -> None:
    shared = "x" * 70
    train = ["a" * 80 + shared + "b" * 80]
    (left, right) = remove_shared(train, spans("zz" + shared + "zz"))
    assert left == "a" * 80 and right == "b" * 80


def test_test_documents_are_whole_topics() -> None:
    from pydoc_data.topics import topics

    docs = rolling_documents()
    assert SEPARATOR.join(docs) == builtin_corpus("test").text
    whole = {t.strip() for t in topics.values()}
    assert all(d in whole for d in docs)
    assert not set(docs) & set(builtin_documents("train"))


def test_hub_corpus_offline_is_a_skipped_row(monkeypatch, tiny_source) -> None:
    from types import SimpleNamespace

    from harness.data import corpus
    from harness.schemes import get_handler
    from harness.workloads import perplexity
    from harness.workloads.settings import PerplexitySettings

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus.hub_corpus.cache_clear()
    loaded = get_handler("fp32").load(tiny_source, get_handler("fp32").options(), "cpu")
    settings = PerplexitySettings(corpus="wikitext2", max_tokens=64, window=32)
    (row,) = perplexity.run(loaded, SimpleNamespace(device="cpu"), settings)
    assert row["status"] == "skipped"
    assert (
        "corpus 'wikitext2' (wikitext wikitext-2-raw-v1 split test) is not available"
        in row["error"]
    )


def test_unknown_corpus_names_the_allowed_ones() -> None:
    import pytest

    from harness.data.corpus import load_corpus
    from harness.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="allowed: builtin, wikitext2, c4"):
        load_corpus("ptb")
