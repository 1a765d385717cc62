"""The builtin corpus: stable hash, disjoint splits, documents are whole topics."""

from __future__ import annotations

from harness.data.corpus import SEPARATOR, builtin_corpus, builtin_documents
from harness.data.rolling_task import rolling_documents


def test_splits_are_disjoint_halves_with_one_hash() -> None:
    test, train = builtin_corpus("test"), builtin_corpus("train")
    assert test.sha256 == train.sha256
    assert 0.4 < len(test.text) / (len(test.text) + len(train.text)) < 0.6
    assert not set(builtin_documents("test")) & set(builtin_documents("train"))


def test_documents_are_whole_topics() -> None:
    from pydoc_data.topics import topics

    docs = rolling_documents()
    assert SEPARATOR.join(docs) == builtin_corpus("test").text
    whole = {t.strip() for t in topics.values()}
    assert all(d in whole for d in docs)
    assert len(docs) + len(builtin_documents("train")) == len(topics)
