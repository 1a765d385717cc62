"""RTN / GPTQ / SpQR precisions on the tiny synthetic model, with a private quantized cache."""

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.quant import QuantLinear
from harness.schemes import get_handler, weight_only
from harness.schemes import quantized_cache as qc

PRESETS = ["rtn-w4g128", "rtn-w3g128", "gptq-w4g128", "gptq-w3g128", "spqr-w4", "spqr-w3"]
SMALL_CALIB = {"nsamples": 8, "seqlen": 64, "calib_batch_size": 4}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def source(tiny_source, tmp_path, monkeypatch):
    """The tiny model (built once per session) and an empty quantized-model cache."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    return tiny_source


def _load(source, name, **overrides):
    handler = get_handler(name)
    calib = {} if name.startswith("rtn") else SMALL_CALIB
    return handler.load(source, handler.options({**calib, **overrides}), "cpu")


def _metrics(loaded):
    return {r["metric"]: r["value"] for r in loaded.rows}


def _eval_ids(tokenizer, n=4, length=64):
    from harness.data.tokens import corpus_tokens

    ids = corpus_tokens(tokenizer, "builtin", "test")
    return ids[: n * length].view(n, length)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("name", PRESETS)
def test_preset_replaces_every_decoder_linear(source, name):
    loaded = _load(source, name)
    model = loaded.model
    layers = model.model.layers
    assert not [n for n, m in layers.named_modules() if isinstance(m, nn.Linear)]
    qlinears = [m for m in layers.modules() if isinstance(m, QuantLinear)]
    assert len(qlinears) == 7 * len(layers)
    family, _, rest = name.partition("-")
    assert {m.qmeta["method"] for m in qlinears} == {family}
    assert {m.qmeta["bits"] for m in qlinears} == {int(rest[1])}
    assert isinstance(model.lm_head, nn.Linear) and isinstance(
        model.model.embed_tokens, nn.Embedding
    )
    assert loaded.storage == "quantized" and loaded.compute_dtype == "float32"
    m = _metrics(loaded)
    assert m["cache_hit"] == 0 and m["quant_time_s"] > 0 and m["quant_peak_above_start_bytes"] > 0
    assert int(rest[1]) < m["bits_per_param_formula"] < int(rest[1]) + 1.5
    assert (m["outlier_fraction"] > 0) == (family == "spqr")
    assert m["matmul_kernel"] == 1.0  # loaded on CPU: every layer on a packed CPU kernel
    assert m["bytes.resident_weights"] == m["bytes.stored_weights"] + m["bytes.runtime_weights"]
    assert torch.isfinite(_logits(model, _eval_ids(loaded.tokenizer, 1, 16))).all()


@pytest.mark.parametrize("name", ["gptq-w4g128", "spqr-w3"])
def test_footprint_counts_the_stored_bytes(source, name):
    from harness.workloads.footprint import inventory, summarize

    loaded = _load(source, name)
    qws = [m.quantized_weight() for m in loaded.model.modules() if isinstance(m, QuantLinear)]
    summary = summarize(inventory(loaded.model))
    stored = sum(sum(qw.stored_bytes().values()) for qw in qws)
    assert summary["bytes.quantized_weights"] == sum(qw.stored_bytes()["codes"] for qw in qws)
    assert summary["bytes.quantized_weights"] + summary["bytes.quant_state"] == stored
    params = sum(qw.shape[0] * qw.shape[1] for qw in qws)
    assert summary["params.quantized_weights"] == params
    measured = _metrics(loaded)["bits_per_param_measured"]
    assert summary["bits_per_param_quantized"] == pytest.approx(measured)
    assert "bytes.linear_weights" not in summary  # no dense decoder weights left behind


def test_cache_hit_is_bitwise_identical_and_skips_calibration(source, monkeypatch, tmp_path):
    first = _load(source, "spqr-w3")
    ids = _eval_ids(first.tokenizer)
    reference = _logits(first.model, ids)
    entries = list((tmp_path / "quantized").iterdir())
    assert len(entries) == 1 and entries[0].name == first.notes["cache_key"]

    def no_calibration(*_args, **_kwargs):
        raise AssertionError("calibration ran on a cache hit")

    monkeypatch.setattr(weight_only, "calibration_batches", no_calibration)
    second = _load(source, "spqr-w3")
    assert _metrics(second)["cache_hit"] == 1
    assert _metrics(second)["quant_time_s"] == _metrics(first)["quant_time_s"]
    assert torch.equal(_logits(second.model, ids), reference)
    with pytest.raises(AssertionError, match="calibration ran"):
        _load(source, "spqr-w3", seed=1)  # another calibration setting is another entry


def test_cache_key_depends_on_options_model_files_and_family(source):
    opts = get_handler("gptq-w4g128").options(SMALL_CALIB).model_dump(mode="json")
    key = qc.cache_key(source, "gptq", opts, "cpu")
    assert key == qc.cache_key(source, "gptq", dict(opts), "cpu")
    assert key != qc.cache_key(source, "gptq", {**opts, "percdamp": 0.1}, "cpu")
    assert key != qc.cache_key(source, "spqr", opts, "cpu")
    assert key != qc.cache_key(source, "gptq", opts, "cuda")
    other = type(source)(source.spec, source.kind, str(source.path) + "-missing")
    assert key != qc.cache_key(other, "gptq", opts, "cpu")


def test_solver_code_is_part_of_the_key_but_the_exporter_is_not(tmp_path, monkeypatch):
    import shutil

    import harness.quant

    src = tmp_path / "quant"
    shutil.copytree(Path(harness.quant.__file__).parent, src)
    monkeypatch.setattr(harness.quant, "__file__", str(src / "__init__.py"))

    def fresh_hash() -> str:
        qc.quant_code_hash.cache_clear()
        return qc.quant_code_hash()

    before = fresh_hash()
    (src / "export.py").write_text("# changed\n")
    assert fresh_hash() == before
    (src / "spqr.py").write_text((src / "spqr.py").read_text() + "\n# changed\n")
    assert fresh_hash() != before
    qc.quant_code_hash.cache_clear()


def test_cache_store_is_atomic_and_ignores_damaged_entries(source, tmp_path):
    from harness.quant import rtn_quantize

    weights = {"0.proj": rtn_quantize(torch.randn(16, 32), 4, 16)}
    path = qc.store_entry("k1", weights, {"build": {"quant_time_s": 1.0, "memory": {}}})
    qc.store_entry("k1", weights, {"build": {"quant_time_s": 2.0, "memory": {}}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["k1"]  # no temporary dirs left
    loaded, meta = qc.load_entry("k1")
    assert meta["build"]["quant_time_s"] == 1.0  # the first complete entry wins
    assert torch.equal(loaded["0.proj"].dequantize(), weights["0.proj"].dequantize())
    (path / qc.META_FILE).write_text("{not json")
    assert qc.load_entry("k1") is None
    assert qc.load_entry("absent") is None


def _relative_logit_error(source, name, ids, reference):
    loaded = _load(source, name)
    out = _logits(loaded.model, ids)
    return float((out - reference).norm() / reference.norm())


def test_gptq_and_spqr_beat_rtn_at_three_bits(source):
    """Same bits and groups: GPTQ's error compensation must give closer outputs than RTN."""
    dense = source.load_model(dtype=torch.float32, device="cpu")
    ids = _eval_ids(source.tokenizer())  # test split: never seen by calibration
    reference = _logits(dense, ids)
    rtn = _relative_logit_error(source, "rtn-w3g128", ids, reference)
    gptq = _relative_logit_error(source, "gptq-w3g128", ids, reference)
    spqr = _relative_logit_error(source, "spqr-w3", ids, reference)
    assert gptq < 0.9 * rtn, (gptq, rtn)
    assert spqr < gptq, (spqr, gptq)


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("gptq-w4g128", {"bits": 9}, "bits"),
        ("gptq-w4g128", {"group_size": -1}, "group_size"),
        ("gptq-w4g128", {"nsamples": 0}, "nsamples"),
        ("rtn-w4g128", {"nsamples": 8}, "nsamples"),  # RTN does not calibrate
        ("spqr-w3", {"outlier_threshold": 0}, "outlier_threshold"),
        ("spqr-w3", {"outlier_threshold": float("nan")}, "outlier_threshold"),
        ("spqr-w3", {"qq_scale_bits": 0}, "qq_scale_bits"),
        ("spqr-w3", {"beta1": 1}, "beta1"),
        ("spqr-w3", {"groupsize": 16}, "groupsize"),
    ],
)
def test_bad_options_name_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=field):
        get_handler(name).options(overrides)


def test_bad_options_in_an_experiment_are_reported_with_the_precision():
    from harness.config import PrecisionSpec

    with pytest.raises(ValueError, match="bad options for precision 'spqr-w3'.*beta2"):
        PrecisionSpec(name="spqr-w3", options={"beta2": 0})
    spec = PrecisionSpec(name="spqr-w4", options={"outlier_threshold": float("inf")})
    assert get_handler("spqr-w4").Options(**spec.resolved_options()).outlier_threshold == float(
        "inf"
    )
