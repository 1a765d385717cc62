"""The quantized-model cache key: everything that changes the stored codes changes the key."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from harness.data.corpus import Corpus
from harness.schemes import get_handler
from harness.schemes import quantized_cache as qc


@pytest.fixture()
def opts() -> dict:
    return get_handler("gptq-w4g128").options().model_dump(mode="json")


@pytest.fixture()
def model_copy(tiny_source, tmp_path):
    """A private copy of the tiny model's directory, safe to edit."""
    path = tmp_path / "model"
    shutil.copytree(tiny_source.path, path)
    return replace(tiny_source, path=str(path))


@pytest.mark.parametrize(
    "change", [{"nsamples": 7}, {"seqlen": 96}, {"seed": 3}, {"percdamp": 0.2}]
)
def test_calibration_options_are_in_the_key(model_copy, opts, change) -> None:
    assert qc.cache_key(model_copy, "gptq", opts, "cpu") != qc.cache_key(
        model_copy, "gptq", {**opts, **change}, "cpu"
    )


@pytest.mark.parametrize("module", qc.CALIBRATION_MODULES)
def test_calibration_and_layer_selection_code_is_in_the_key(
    model_copy, opts, module, tmp_path, monkeypatch
) -> None:
    copies = []
    for path in qc.calibration_files():
        copies.append(tmp_path / "src" / path.name)
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy(path, copies[-1])
    monkeypatch.setattr(qc, "calibration_files", lambda: copies)
    qc.calibration_code_hash.cache_clear()
    before = qc.cache_key(model_copy, "gptq", opts, "cpu")
    changed = copies[qc.CALIBRATION_MODULES.index(module)]
    changed.write_text(changed.read_text() + "\n# changed\n")
    qc.calibration_code_hash.cache_clear()
    try:
        assert qc.cache_key(model_copy, "gptq", opts, "cpu") != before
    finally:
        qc.calibration_code_hash.cache_clear()


def test_layer_selection_and_split_rule_modules_are_covered() -> None:
    """The files defining what decides the stored codes are hashed into the key: layer
    selection, calibration batches, the solvers' wrappers, the split rule, tokenization."""
    import inspect

    from harness import models, modules
    from harness.data import corpus, tokens
    from harness.schemes import gptq, rtn, spqr, weight_only

    files = {Path(p).resolve() for p in qc.calibration_files()}
    deciding = [weight_only.calibration_batches, weight_only.decoder_layers, modules.linears,
                gptq.GPTQScheme, spqr.SpQRScheme, rtn.RTNScheme, corpus, tokens, models]
    assert [x for x in deciding if Path(inspect.getfile(x)).resolve() not in files] == []
    assert all(Path(p).is_file() for p in qc.calibration_files())


def test_calibration_text_is_in_the_key(model_copy, opts, monkeypatch) -> None:
    import harness.data.tokens as tokens

    before = qc.cache_key(model_copy, "gptq", opts, "cpu")
    other = Corpus("pydoc-topics[another-rule]", "train", "text", "f" * 64)
    monkeypatch.setattr(tokens, "corpus_info", lambda *a, **k: other)
    assert qc.cache_key(model_copy, "gptq", opts, "cpu") != before


def test_tokenizer_files_are_in_the_key(model_copy, opts) -> None:
    files = [p for p in Path(model_copy.path).iterdir() if p.name.startswith("tokenizer")]
    assert files, "the tiny model has tokenizer files"
    before = qc.cache_key(model_copy, "gptq", opts, "cpu")
    files[0].write_text(files[0].read_text().replace("</s>", "</S>", 1) + " ")
    assert qc.cache_key(model_copy, "gptq", opts, "cpu") != before


@pytest.mark.parametrize("library", ["torch", "transformers"])
def test_library_versions_are_in_the_key(model_copy, opts, library, monkeypatch) -> None:
    import importlib

    module = importlib.import_module(library)
    before = qc.cache_key(model_copy, "gptq", opts, "cpu")
    monkeypatch.setattr(module, "__version__", "0.0.1")
    assert qc.cache_key(model_copy, "gptq", opts, "cpu") != before
