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
