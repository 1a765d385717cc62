"""Claims: verdicts on hand-built tables, comparisons, and the registry's coverage."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from claim_helpers import by_id as _by_id
from claim_helpers import with_accounted

from harness.errors import HarnessError
from harness.report.claims import (
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
    compare,
    load_claims,
)


def _set(frame: pd.DataFrame, precision: str, metric: str, value: float) -> pd.DataFrame:
    frame = frame.copy()
    mask = (frame["precision"] == precision) & (frame["metric"] == metric)
    assert mask.any()
    frame.loc[mask, "value"] = value
    return frame


def test_registry_covers_the_required_claims() -> None:
    ids = {c.id for c in load_claims()}
    assert {
        "int8-quarter-of-fp32-layers", "int8-half-of-fp16-layers", "int8-quarter-of-fp32-model",
        "int8-no-degradation", "int8-nodecomp-degrades", "dq-saves-0.373-bits-constants",
        "dq-saves-0.373-bits-total", "nf4-better-than-fp4", "gptq-better-than-rtn-4bit",
        "gptq-better-than-rtn-3bit", "spqr-near-lossless", "lora-r8-trainable-under-1pct",
        "lora-memory-reduction", "tf32-speedup", "qlora-65b-fits-48gb",
    } <= ids
    for claim in load_claims():
        assert claim.source and claim.statement and claim.scope and claim.likely_reason
        metric = claim.measure.metric if claim.measure else None
        assert not re.search("peak", metric or ""), "process-peak metric names are not stable"


def test_three_verdicts_on_a_hand_built_table(make_table) -> None:
    verdicts = _by_id(make_table())
    assert verdicts["int8-quarter-of-fp32-layers"].verdict == REPRODUCED
    assert verdicts["int8-quarter-of-fp32-layers"].measured == pytest.approx(4 / 1.0069)
    model = verdicts["int8-quarter-of-fp32-model"]
    assert model.verdict == NOT_REPRODUCED and "embeddings" in model.detail
    tf32 = verdicts["tf32-speedup"]
    assert tf32.verdict == NOT_MEASURED and "skipped" in tf32.detail and "tf32" in tf32.detail
    rtn3 = verdicts["gptq-better-than-rtn-3bit"]
    assert rtn3.verdict == NOT_MEASURED and "not in the results" in rtn3.detail


def test_perplexity_claims_follow_the_numbers(make_table) -> None:
    frame = make_table()
    assert _by_id(frame)["int8-no-degradation"].verdict == REPRODUCED  # 12.95 vs 12.882
    worse = _set(frame, "int8", "perplexity", 12.882 * 1.02)
    assert _by_id(worse)["int8-no-degradation"].verdict == NOT_REPRODUCED
    flipped = _set(frame, "fp4", "perplexity", 13.0)  # fp4 now better than nf4
    assert _by_id(flipped)["nf4-better-than-fp4"].verdict == NOT_REPRODUCED


def test_a_capped_operand_is_not_compared_with_a_full_one(make_table) -> None:
    frame = make_table()
    ppl = frame["metric"] == "perplexity"
    frame.loc[ppl, "protocol"] = "token-windows;window=1024;tokens=4096"
    assert _by_id(frame)["int8-no-degradation"].verdict == REPRODUCED
    frame.loc[ppl & (frame["precision"] == "int8"), "protocol"] = (
        "token-windows;window=1024;tokens=2048")
    verdict = _by_id(frame)["int8-no-degradation"]
    assert verdict.verdict == NOT_MEASURED and "measured differently" in verdict.detail
    assert "tokens 2048/4096" in verdict.detail
    # a capped baseline alternative is passed over for one measured like the other operand
    frame.loc[ppl & (frame["precision"] == "int8"), "protocol"] = (
        "token-windows;window=1024;tokens=4096")
    frame.loc[ppl & (frame["precision"] == "fp32"), "protocol"] = (
        "token-windows;window=1024;tokens=2048")
    verdict = _by_id(frame)["int8-no-degradation"]
    assert verdict.verdict != NOT_MEASURED
    assert not any("fp32" in c for c in verdict.cells)  # fp16 or bf16 instead


def test_settings_only_one_side_names_are_no_conflict(make_table) -> None:
    frame = with_accounted(make_table())
    rows = frame["metric"] == "mem.accounted"
    base = "lora-train;steps=6;batch=2;seq=128"
    frame.loc[rows, "protocol"] = base
    frame.loc[rows & (frame["adapter"] != "full"), "protocol"] = (
        base + ";lora_dropout=0.05;lora_targets=all-linear")
    verdict = _by_id(frame)["lora-memory-reduction"]
    assert verdict.verdict == NOT_REPRODUCED and 1 < verdict.measured < 3


def test_lora_ratio_compares_like_precisions(make_table) -> None:
    verdict = _by_id(with_accounted(make_table()))["lora-memory-reduction"]
    assert verdict.cells == ["smollm2-135m__fp32__full__cpu", "smollm2-135m__fp32__lora-r8__cpu"]
    assert verdict.verdict == NOT_REPRODUCED and 1 < verdict.measured < 3


def test_failed_cell_reason_reaches_not_measured(make_table) -> None:
    frame = make_table(training=False)
    frame = frame[frame["precision"] != "nf4-dq"]
    verdict = _by_id(frame)["dq-saves-0.373-bits-constants"]
    assert verdict.verdict == NOT_MEASURED
    assert "error" in verdict.detail and "kernel crashed" in verdict.detail  # fp4-dq failed


def _claim(comparison: str, tolerance: float = 0.0, kind: str = "absolute") -> Claim:
    return Claim(id="x", source="s", statement="s", kind="memory", measure={"metric": "m"},
                 published=4.0,
                 comparison=comparison, tolerance=tolerance, tolerance_kind=kind)


def test_comparisons_and_tolerances() -> None:
    assert compare(_claim("~", 0.02, "relative"), 3.93)
    assert not compare(_claim("~", 0.02, "relative"), 3.91)
    assert compare(_claim("~", 0.1), 4.1) and not compare(_claim("~", 0.1), 4.11)
    assert compare(_claim(">="), 4.0) and not compare(_claim(">"), 4.0)
    assert compare(_claim("<="), 4.0) and not compare(_claim("<"), 4.0)


def test_bad_registry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - id: broken\n    source: s\n")
    with pytest.raises(HarnessError, match="claim broken"):
        load_claims(path)
    path.write_text("claims:\n  - {id: x, source: s, statement: s, published: 1,\n"
                    "     comparison: '~', measure: {metric: m, code: 'import os'}}\n")
    with pytest.raises(HarnessError, match="claim x"):
        load_claims(path)
