"""Budget caps for dtypes a CPU only emulates."""

from types import SimpleNamespace

import pytest

from harness import budget
from harness.workloads.settings import Workloads
from tests.conftest import tiny_cell

AVX2 = frozenset({"avx2", "fma"})
MEASURED_SLOWDOWN = budget.matmul_slowdown  # the real one, before any test replaces it
SAPPHIRE = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"})


@pytest.fixture(autouse=True)
def _native_speed(monkeypatch):
    """A 16-bit matmul as fast as fp32 unless a test says otherwise: the suite runs on CPUs
    with and without bf16 instructions."""
    monkeypatch.setattr(budget, "matmul_slowdown", lambda dtype: 0.5)


def _workloads():
    return Workloads(
        inference={"new_tokens": 32, "repeats": 3},
        perplexity={"max_tokens": 8192},
        accuracy={"enabled": True, "limit": 20, "rolling_docs": 3},
    )


def test_emulated_only_for_dense_cpu_cells_without_the_flags():
    assert budget.emulated_dtype("cpu", "dense", "bfloat16", AVX2)
    assert budget.emulated_dtype("cpu", "dense", "float16", AVX2)
    assert not budget.emulated_dtype("cpu", "dense", "bfloat16", SAPPHIRE)
    assert not budget.emulated_dtype("cpu", "dense", "float32", AVX2)
    assert not budget.emulated_dtype("cuda", "dense", "bfloat16", AVX2)
    assert not budget.emulated_dtype("cpu", "quantized", "float16", AVX2)


def test_flags_that_claim_bf16_while_its_matmul_is_measured_slow_mean_emulated():
    assert budget.emulated_dtype("cpu", "dense", "bfloat16", SAPPHIRE, slowdown=3.8)
    assert not budget.emulated_dtype("cpu", "dense", "bfloat16", SAPPHIRE, slowdown=0.3)
    assert not budget.emulated_dtype("cpu", "dense", "bfloat16", SAPPHIRE, slowdown=1.4)
    why = budget.emulation_reason("cpu", "dense", "bfloat16", SAPPHIRE, slowdown=3.8)
    assert "3.8x slower than float32" in why and "avx512_bf16" in why


def test_the_slowdown_is_a_ratio_of_measured_matmul_times():
    ratio = MEASURED_SLOWDOWN.__wrapped__("float32")  # fp32 against itself
    assert 0.5 < ratio < 2.0


def test_emulated_cell_gets_capped_settings_and_a_row(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    monkeypatch.setattr(budget, "cpu_flags", lambda: AVX2)
    wl = _workloads()
    names = wl.enabled()
    loaded = SimpleNamespace(storage="dense", compute_dtype="bfloat16")
    settings, rows = budget.adapt(wl, names, "cpu", loaded)
    assert settings["perplexity"].max_tokens == 2048
    assert settings["accuracy"].limit == 5 and settings["accuracy"].rolling_docs == 1
    assert settings["inference"].new_tokens == 16 and settings["inference"].repeats == 2
    assert settings["inference"].prompt_len == wl.inference.prompt_len  # uncapped keys kept
    assert [r["metric"] for r in rows] == ["budget.emulated", "budget.capped"]
    assert "avx512_bf16" in rows[0]["method"] and "max_tokens 8192->2048" in rows[1]["method"]
    # the experiment's own (smaller) values are never raised
    small = Workloads(perplexity={"max_tokens": 512})
    assert budget.adapt(small, ["perplexity"], "cpu", loaded)[0]["perplexity"].max_tokens == 512


@pytest.mark.parametrize(
    "flags,compute,env",
    [(SAPPHIRE, "bfloat16", None), (AVX2, "float32", None), (AVX2, "bfloat16", "1")],
)
def test_native_or_opted_out_cells_keep_the_full_budget(monkeypatch, flags, compute, env):
    monkeypatch.setattr(budget, "cpu_flags", lambda: flags)
    if env:
        monkeypatch.setenv(budget.FULL_BUDGET_ENV, env)
    else:
        monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    wl = _workloads()
    loaded = SimpleNamespace(storage="dense", compute_dtype=compute)
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", loaded)
    assert "budget.capped" not in [r["metric"] for r in rows]
    assert settings["perplexity"].max_tokens == 8192
    if env:  # opted out: still said, with the budget as asked
        emulated = next(r for r in rows if r["metric"] == "budget.emulated")
        assert emulated["method"].endswith("budget as asked")


def test_listed_flags_with_a_slow_measured_matmul_cap_the_budget_and_say_why(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    monkeypatch.setattr(budget, "cpu_flags", lambda: SAPPHIRE)
    monkeypatch.setattr(budget, "matmul_slowdown", lambda dtype: 3.8)
    wl = _workloads()
    loaded = SimpleNamespace(storage="dense", compute_dtype="bfloat16")
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", loaded)
    assert settings["perplexity"].max_tokens == 2048
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["budget.matmul_slowdown"]["value"] == 3.8
    assert "3.8x slower than float32" in by_metric["budget.emulated"]["method"]


def test_a_native_cell_records_the_measured_ratio_and_a_near_one_ratio_stays_native(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    monkeypatch.setattr(budget, "cpu_flags", lambda: SAPPHIRE)
    monkeypatch.setattr(budget, "matmul_slowdown", lambda dtype: 1.2)  # noise, not emulation
    wl = _workloads()
    loaded = SimpleNamespace(storage="dense", compute_dtype="bfloat16")
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", loaded)
    assert [(r["metric"], r["value"]) for r in rows] == [("budget.matmul_slowdown", 1.2)]
    assert settings["perplexity"].max_tokens == 8192


def test_run_cell_applies_the_caps_and_records_them(tiny_source, monkeypatch):
    from harness.runner.cell import run_cell

    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    monkeypatch.setattr(budget, "cpu_flags", lambda: AVX2)
    monkeypatch.setitem(budget.EMULATED_CAPS, "perplexity", {"max_tokens": 64})
    cell = tiny_cell(
        "bf16", footprint={"enabled": False}, perplexity={"max_tokens": 256, "window": 32}
    )
    rows = run_cell(cell)["rows"]
    assert [r["value"] for r in rows if r["metric"] == "budget.emulated"] == [1.0]
    ppl = next(r for r in rows if r["metric"] == "perplexity")
    assert ppl["n"] == 2 * 31  # two capped 32-token windows (31 predictions each), not eight


def _default_like():
    return Workloads(
        inference={"new_tokens": 32, "repeats": 3},
        perplexity={"max_tokens": 4096, "window": 1024},
        accuracy={"enabled": True, "limit": 10, "rolling_docs": 2},
        agreement={"enabled": True, "max_tokens": 2048, "window": 1024},
    )


def _probe(monkeypatch, per_forward_s, per_token_s):
    probe = budget.projection.Probe(per_forward_s, per_token_s)
    monkeypatch.setattr(budget.projection, "measure", lambda model: probe)
    return probe


FP32 = SimpleNamespace(storage="dense", compute_dtype="float32", model=None)


def test_a_cell_projected_within_its_target_keeps_the_full_budget(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    probe = _probe(monkeypatch, 0.001, 1e-5)
    wl = _default_like()
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=100)
    assert settings == {n: getattr(wl, n) for n in wl.enabled()}
    by_metric = {r["metric"]: r for r in rows}
    assert "budget.capped" not in by_metric
    full = budget.projected(probe, settings)
    assert (
        by_metric["budget.projected_full_s"]["value"]
        == by_metric["budget.projected_s"]["value"]
        == pytest.approx(full)
    )
    assert "1.0 ms per forward" in by_metric["budget.projected_full_s"]["method"]


def test_a_slow_cell_is_capped_until_its_projection_fits_the_target(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    probe = _probe(monkeypatch, 0.2, 0.01)  # ~10x slower than fp32 on a fast CPU
    wl = _default_like()
    asked = {n: getattr(wl, n) for n in wl.enabled()}
    full = budget.projected(probe, asked)
    level = [budget.projected(probe, budget.fit(asked, None, None, k)[0]) for k in (0, 1)]
    target = (level[0] + level[1]) / 2  # the first caps are not enough, halved ones are
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=target)
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["budget.projected_full_s"]["value"] == pytest.approx(full)
    run_s = by_metric["budget.projected_s"]["value"]
    assert run_s == pytest.approx(level[1]) and run_s <= target < full
    assert settings == budget.fit(asked, None, None, 1)[0]
    assert settings["perplexity"].max_tokens == 2048  # two windows: the floor
    assert settings["accuracy"].limit == 2  # 5 halved, at its floor
    assert settings["inference"].new_tokens == 8  # 16 halved
    assert "over the" in by_metric["budget.capped"]["method"]
    assert "emulated" not in by_metric["budget.capped"]["method"]
    assert "budget.emulated" not in by_metric  # fp32 is native


def test_halving_stops_at_the_floors(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    _probe(monkeypatch, 100.0, 1.0)  # nothing fits
    wl = _default_like()
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=1)
    assert settings["perplexity"].max_tokens == 2048  # two windows
    assert settings["agreement"].max_tokens == 2048
    assert settings["accuracy"].limit == 2 and settings["accuracy"].rolling_docs == 1
    assert settings["inference"].new_tokens == 8 and settings["inference"].repeats == 2
    assert settings["inference"].prompt_len == wl.inference.prompt_len
    assert {r["metric"] for r in rows} >= {"budget.capped", "budget.projected_s"}


def test_no_target_no_probe_and_the_opt_out_keeps_the_full_budget(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)

    def must_not_run(model):
        raise AssertionError("probed without a target")

    monkeypatch.setattr(budget.projection, "measure", must_not_run)
    wl = _default_like()
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32)
    assert rows == [] and settings["perplexity"].max_tokens == 4096
    _probe(monkeypatch, 100.0, 1.0)
    monkeypatch.setenv(budget.FULL_BUDGET_ENV, "1")
    settings, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=1)
    assert settings["perplexity"].max_tokens == 4096
    assert [r["metric"] for r in rows] == ["budget.projected_full_s", "budget.projected_s"]
    assert budget.adapt(wl, wl.enabled(), "cuda", FP32, target_s=1) == (
        {n: getattr(wl, n) for n in wl.enabled()},
        [],
    )


def test_an_emulated_and_slow_cell_names_both_reasons(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    monkeypatch.setattr(budget, "cpu_flags", lambda: AVX2)
    _probe(monkeypatch, 100.0, 1.0)
    wl = _default_like()
    loaded = SimpleNamespace(storage="dense", compute_dtype="bfloat16", model=None)
    _, rows = budget.adapt(wl, wl.enabled(), "cpu", loaded, target_s=1)
    capped = next(r for r in rows if r["metric"] == "budget.capped")["method"]
    assert "avx512_bf16" in capped and "over the 1 s left of the target" in capped


def test_run_cell_with_a_target_caps_and_records_workload_times(tiny_source, monkeypatch):
    from harness.runner.cell import run_cell

    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    cell = tiny_cell(
        "fp32",
        inference={"new_tokens": 16, "prompt_len": 8},
        perplexity={"max_tokens": 256, "window": 32},
    ).model_copy(update={"cell_target_s": 1e-6})
    rows = run_cell(cell)["rows"]
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["budget.capped"]["value"] == 1.0
    assert by_metric["budget.projected_full_s"]["value"] > by_metric["budget.projected_s"]["value"]
    ppl = by_metric["perplexity"]
    assert ppl["n"] == 2 * 31  # two 32-token windows, the floor
    walls = {r["workload"]: r["value"] for r in rows if r["metric"] == "wall_time_s"}
    assert set(walls) == {"footprint", "inference", "perplexity"}
    assert all(v > 0 for v in walls.values())
    # footprint counts the weights as loaded, before the probe's forwards
    order = [r["workload"] for r in rows]
    assert order.index("footprint") < order.index("budget") < order.index("inference")


def test_a_failing_probe_is_a_row_and_the_workloads_still_run(tiny_source, monkeypatch):
    from harness.runner.cell import run_cell

    def broken(model):
        raise RuntimeError("probe forward failed")

    monkeypatch.setattr(budget.projection, "measure", broken)
    cell = tiny_cell(
        "fp32",
        footprint={"enabled": False},
        inference={"enabled": False},
        perplexity={"max_tokens": 64, "window": 32},
    ).model_copy(update={"cell_target_s": 10.0})
    rows = run_cell(cell)["rows"]
    failed = [r for r in rows if r["workload"] == "budget"]
    assert failed and "probe forward failed" in failed[0]["error"]
    assert next(r for r in rows if r["metric"] == "perplexity")["n"] == 2 * 31


def test_nothing_reduced_is_not_capped_and_loading_counts_against_the_target(monkeypatch):
    monkeypatch.delenv(budget.FULL_BUDGET_ENV, raising=False)
    probe = _probe(monkeypatch, 0.001, 1e-5)
    small = Workloads(perplexity={"max_tokens": 2048, "window": 1024})  # already at the caps
    loaded = SimpleNamespace(storage="dense", compute_dtype="bfloat16", model=None)
    monkeypatch.setattr(budget, "cpu_flags", lambda: AVX2)
    settings, rows = budget.adapt(small, ["perplexity"], "cpu", loaded)
    assert settings["perplexity"] == small.perplexity
    assert [r["metric"] for r in rows] == ["budget.emulated"]
    # a cell projected well within its target runs the full budget, unless loading used it up
    wl = _default_like()
    full = budget.projected(probe, {n: getattr(wl, n) for n in wl.enabled()})
    _, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=2 * full)
    assert "budget.capped" not in {r["metric"] for r in rows}
    _, rows = budget.adapt(wl, wl.enabled(), "cpu", FP32, target_s=2 * full, elapsed_s=1.9 * full)
    capped = next(r for r in rows if r["metric"] == "budget.capped")["method"]
    assert f"over the {0.1 * full:.0f} s left of the target" in capped


def test_the_run_summary_line_says_a_cell_was_capped():
    from harness.summary import cell_line

    record = {
        "status": "ok",
        "duration_s": 1.0,
        "rows": [
            {"metric": "budget.capped", "method": "projected 300 s; ran accuracy: limit 10->5"}
        ],
    }
    line = cell_line(SimpleNamespace(record=record, reused=False, cell=SimpleNamespace(id="c")))
    assert "capped budget: projected 300 s; ran accuracy: limit 10->5" in line
