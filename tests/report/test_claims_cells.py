"""Claims take the cells they speak of and judge noisy values on intervals."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from claim_helpers import by_id as _by_id
from claim_helpers import window_samples, with_accounted

from harness.report import normalize
from harness.report.claim_interval import COMBINED, PAIRED, interval_side
from harness.report.claims import (
    BY_CONSTRUCTION,
    NO_INTERVAL,
    NOT_MEASURED,
    REPRODUCED,
    WITHIN_NOISE,
    evaluate,
    load_claims,
)

INT8, FP32 = "smollm2-135m__int8__none__cpu", "smollm2-135m__fp32__none__cpu"


def _with_lora_saving(frame: pd.DataFrame) -> pd.DataFrame:
    """LoRA cells that also report a (much worse) whole-model saving, as adapter cells do."""
    lora = frame[(frame["adapter"] != "none") & (frame["metric"] == "mem.gradients")].copy()
    lora["metric"], lora["value"], lora["workload"] = "saving_vs_fp32.model", 1.5, "footprint"
    return pd.concat([frame, lora], ignore_index=True)


def test_base_claims_use_adapter_none_cells_only(make_table) -> None:
    frame = _with_lora_saving(make_table())
    verdicts = _by_id(frame)
    ppl = verdicts["int8-no-degradation"]
    # LoRA and full fine-tune cells carry their own perplexities (0.9 x); they must not leak in
    assert ppl.cells == [INT8, FP32]
    assert ppl.measured == pytest.approx(12.95 / 12.882 - 1)
    model = verdicts["int8-quarter-of-fp32-model"]
    assert model.cells == [INT8] and model.measured > 2.0  # not averaged with the LoRA 1.5s


def test_a_claim_naming_an_adapter_uses_it(make_table) -> None:
    verdict = _by_id(make_table())["lora-r8-trainable-under-1pct"]
    assert verdict.cells == ["smollm2-135m__fp32__lora-r8__cpu"]


def test_ratio_numerator_and_denominator_are_the_claims(make_table) -> None:
    verdicts = _by_id(with_accounted(make_table()))
    assert verdicts["int8-nodecomp-degrades"].measured == pytest.approx(13.60 / 12.95)
    assert verdicts["nf4-better-than-fp4"].measured == pytest.approx(15.30 / 14.10)
    assert verdicts["int8-quarter-of-fp32-layers"].measured == pytest.approx(4 / 1.0069)
    assert verdicts["lora-memory-reduction"].measured > 1  # full / LoRA, not LoRA / full


def test_memory_claims_refuse_simulated_storage(make_table) -> None:
    frame = make_table()
    frame.loc[frame["cell_id"] == INT8, "storage"] = "simulated"
    verdicts = _by_id(frame)
    layers = verdicts["int8-quarter-of-fp32-layers"]
    assert layers.verdict == NOT_MEASURED
    assert "simulated" in layers.detail and INT8 in layers.detail
    # a quality claim may use the simulated cell: its perplexity is real
    assert verdicts["int8-no-degradation"].verdict == REPRODUCED


def test_a_tautology_is_labelled_and_not_counted_as_reproduced(make_table) -> None:
    verdicts = _by_id(make_table(training=False, failures=False))
    constants = verdicts["dq-saves-0.373-bits-constants"]
    assert constants.verdict == BY_CONSTRUCTION
    assert "formula" in constants.detail
    reproduced = [v.claim.id for v in verdicts.values() if v.verdict == REPRODUCED]
    assert "dq-saves-0.373-bits-constants" not in reproduced


def test_noise_decides_a_ratio_near_one(make_table) -> None:
    frame = make_table()
    close = frame.copy()
    close.loc[(close["precision"] == "int8-nodecomp") & (close["metric"] == "perplexity"),
              "value"] = 12.95 * 1.0097
    tight = _by_id(close)["int8-nodecomp-degrades"]
    assert tight.verdict == REPRODUCED and tight.interval[0] > 1 and tight.method == PAIRED
    noisy = _by_id(close, window_samples(normalize(close.assign(run="r")), noise=0.3))
    verdict = noisy["int8-nodecomp-degrades"]
    assert verdict.verdict == WITHIN_NOISE and verdict.interval[0] < 1 < verdict.interval[1]
    assert verdict.measured == pytest.approx(1.0097)
    bare = _by_id(close, samples={})["int8-nodecomp-degrades"]
    assert bare.verdict == NO_INTERVAL and bare.interval is None


def test_per_cell_intervals_when_no_samples(make_table) -> None:
    frame = make_table()
    ppl = frame["metric"] == "perplexity"
    frame.loc[ppl, "ci_low"] = frame.loc[ppl, "value"] * 0.97
    frame.loc[ppl, "ci_high"] = frame.loc[ppl, "value"] * 1.03
    verdicts = _by_id(frame, samples={})
    nodecomp = verdicts["int8-nodecomp-degrades"]  # 1.050, worst case [0.96, 1.11]
    assert nodecomp.verdict == WITHIN_NOISE and nodecomp.method == COMBINED
    assert nodecomp.interval == pytest.approx((13.60 * 0.97 / (12.95 * 1.03),
                                               13.60 * 1.03 / (12.95 * 0.97)))
    gptq = verdicts["gptq-better-than-rtn-4bit"]  # 14.60 / 13.70, worst case [1.004, 1.131]
    assert gptq.verdict == REPRODUCED and gptq.interval[0] == pytest.approx(1.0036, abs=1e-4)


def test_paired_interval_is_the_ratio_of_perplexities(make_table) -> None:
    frame = normalize(make_table().assign(run="r"))
    verdict = {v.claim.id: v for v in evaluate(load_claims(), frame, window_samples(frame))}
    low, high = verdict["nf4-better-than-fp4"].interval
    assert low == pytest.approx(15.30 / 14.10, rel=1e-9)  # the shared difficulty cancels
    assert high == pytest.approx(math.exp(math.log(15.30 / 14.10)), rel=1e-9)


@pytest.mark.parametrize(("comparison", "low", "high", "side"), [
    (">", 1.01, 1.2, True), (">", 0.99, 1.2, None), (">", 0.8, 1.0, False),
    ("<=", 0.5, 1.0, True), ("<=", 0.5, 1.1, None), ("<=", 1.01, 2, False),
    ("~", 0.95, 1.05, True), ("~", 0.95, 1.2, None), ("~", 1.2, 1.3, False),
])
def test_interval_side(comparison: str, low: float, high: float, side: bool | None) -> None:
    tolerance = 0.1 if comparison == "~" else 0.0
    assert interval_side(comparison, 1.0, tolerance, "absolute", low, high) is side
