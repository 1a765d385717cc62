"""The report: every figure drawn from a hand-built table, failures shown, graceful skips."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd

from harness.report import load_runs, problems_table
from harness.report.plots import FIGURES
from harness.report.render import write_report


def test_every_figure_is_written_as_png_and_svg(full_report: Path) -> None:
    for spec in FIGURES:
        png, svg = full_report / f"{spec.name}.png", full_report / f"{spec.name}.svg"
        assert png.is_file() and png.stat().st_size > 5000, spec.name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.is_file() and b"<svg" in svg.read_bytes()[:2000], spec.name


def test_markdown_links_every_figure_and_html_embeds_them(full_report: Path) -> None:
    md = (full_report / "report.md").read_text()
    page = (full_report / "report.html").read_text()
    for spec in FIGURES:
        assert f"({spec.name}.png)" in md
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert "http://" not in page and "https://" not in page  # self-contained


def test_failed_cells_appear_with_their_status(full_report: Path) -> None:
    md = (full_report / "report.md").read_text()
    section = md.split("## Cells not ok")[1].split("## ")[0]
    assert re.search(r"\| bf16 \| full \| oom \| CUDA out of memory", section)
    assert re.search(r"\| fp4-dq \| none \| error \| RuntimeError: kernel crashed", section)
    assert re.search(r"\| tf32 \| none \| skipped \|", section)
    assert "oom" in (full_report / "report.html").read_text()


def test_report_has_claims_prediction_and_environment(full_report: Path) -> None:
    md = (full_report / "report.md").read_text()
    assert "| int8-quarter-of-fp32-layers | cpu, gpu | reproduced |" in md  # one verdict, both runs
    assert re.search(r"Not measured by these runs \(\d+\): [^\n]*tf32-speedup", md)
    assert "| tf32-speedup |" not in md
    # the memory model beside what cells measured: fp32 weights agree to the byte, the KV
    # cache exactly, and the per-phase summary states the targets
    section = md.split("## Memory model against measurement")[1].split("\n## ")[0]
    assert "| cpu | fp32 | none | inference | weights | 538.06 | 538.06 | +0.0% |" in section
    assert "| cpu | fp32 | none | inference | KV cache | 7.33 | 7.33 | +0.0% |" in section
    assert "| inference | peak |" in section and "15%" in section
    assert "abc1234" in md and "torch_version" in md


def test_missing_metrics_skip_figures_with_a_note(tmp_path: Path, make_table) -> None:
    frame = make_table(training=False, accuracy=False)
    frame = frame[~frame["metric"].fillna("").str.contains("tokens_per_s|bandwidth")]
    directory = tmp_path / "run"
    directory.mkdir()
    frame.to_parquet(directory / "results.parquet", index=False)
    out = tmp_path / "out"
    write_report(load_runs([directory]), out)
    md = (out / "report.md").read_text()
    for name in ("training_memory", "accuracy_vs_bits", "throughput", "lora_peak_memory"):
        assert not (out / f"{name}.png").exists()
    left_out = md.split("## Not in this report")[1]
    assert left_out.count("these results lack") == 6
    assert "## Training memory" not in md  # a figure that cannot be drawn gets no heading
    assert (out / "memory_breakdown.png").is_file()


def test_failed_workload_inside_ok_cell_is_listed(make_table) -> None:
    frame = make_table(training=False, failures=False, accuracy=False)
    extra = frame[frame["precision"] == "nf4"].iloc[[0]].copy()
    extra[["workload", "metric", "value", "status", "error"]] = [
        "perplexity", "perplexity", None, "oom", "out of memory in window 3"]
    frame = pd.concat([frame, extra], ignore_index=True).assign(run="r")
    from harness.report import normalize

    table = problems_table(normalize(frame))
    assert list(table["precision"]) == ["nf4"]
    assert table.iloc[0]["status"] == "ok (workload oom)"
    assert "out of memory in window 3" in table.iloc[0]["error"]


def test_repeated_metric_is_stacked_once(make_table) -> None:
    from harness.report import normalize
    from harness.report.plots import training_memory

    fig = training_memory(normalize(make_table().assign(run="r")))
    assert 2.8 < fig.axes[0].get_ylim()[1] < 3.5  # 2.81 GB peak bar, activations counted once


def test_capped_cells_are_listed_with_why(full_report: Path, make_table) -> None:
    from harness.report import capped_table

    md = (full_report / "report.md").read_text()
    section = md.split("## Capped budgets")[1].split("\n## ")[0] if "## Capped" in md else ""
    assert not section  # nothing capped: no section, named once at the end instead
    left_out = md.split("## Not in this report")[1]
    assert "Capped budgets (every cell ran the budget its experiment asks for)" in left_out
    frame = make_table().assign(run="cpu")
    row = frame[frame["precision"] == "bf16"].iloc[[0]].copy()
    row["metric"], row["method"] = "budget.capped", "projected 300 s, over the 90 s cell target"
    capped = capped_table(pd.concat([frame, row], ignore_index=True))
    assert capped[["precision", "why and caps"]].values.tolist() == [
        ["bf16", "projected 300 s, over the 90 s cell target"]
    ]


def test_the_first_screen_leads_with_the_answer(full_report: Path) -> None:
    md = (full_report / "report.md").read_text()
    first = md.split("\n## ")[1]
    assert first.startswith("Overview")
    assert "| precision | adapter | bits/param |" in first  # the headline table
    assert "| cpu | int8 | none | 13.10 | 220 | 12.950 | 234 |" in first  # bits, MB, ppl, peak
    assert "- int8-quarter-of-fp32-layers: reproduced" in first  # verdicts, one line each
    assert "- [Cells not ok](#cells-not-ok)" in first  # contents, linked
    page = (full_report / "report.html").read_text()
    assert '<a href="#cells-not-ok">' in page and '<h2 id="cells-not-ok">' in page


def test_paired_section_keeps_only_clear_differences_on_enough_items() -> None:
    from harness.report.render import MIN_PAIRED_ITEMS, paired_section

    paired = pd.DataFrame([
        {"precision": "int8", "metric": "window NLL", "difference": 0.1, "95% interval": "x",
         "significant": "yes", "items": 40},
        {"precision": "nf4", "metric": "window NLL", "difference": 0.0, "95% interval": "y",
         "significant": "no", "items": 40},
        {"precision": "fp4", "metric": "window NLL", "difference": 0.3, "95% interval": "z",
         "significant": "yes", "items": MIN_PAIRED_ITEMS - 8},
    ])
    section = paired_section(paired)
    (table,) = [v for kind, v in section.blocks if kind == "table"]
    assert list(table["precision"]) == ["int8"] and "significant" not in table
    assert "2 of 3 comparisons left out" in section.blocks[0][1]


def _cell_rows(cell_id: str, precision: str, adapter: str, metric: str, value: float,
               stat: str | None = "median") -> dict:
    return {"run": "r", "model": "m", "cell_id": cell_id, "precision": precision,
            "adapter": adapter, "metric": metric, "value": value, "stat": stat,
            "status": "ok", "cell_status": "ok", "rank": None, "seed": 0, "storage": "dense"}


def test_throughput_bars_keep_adapters_apart() -> None:
    from harness.report import normalize
    from harness.report.plots import throughput

    frame = normalize(pd.DataFrame([
        _cell_rows("a", "fp32", "none", "prefill_tokens_per_s", 65.0),
        _cell_rows("b", "fp32", "lora-r8", "prefill_tokens_per_s", 369.0),
    ]))
    ax = throughput(frame).axes[0]
    heights = sorted(round(p.get_height()) for p in ax.patches)
    assert heights == [65, 369], "one bar per precision and adapter, never their mean"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fp32 · none", "fp32 · lora-r8"]


def test_many_accuracy_panels_wrap_and_draw_intervals() -> None:
    from harness.report import normalize
    from harness.report.plots import MAX_COLUMNS, accuracy_vs_bits

    rows = []
    for i, prec in enumerate(("fp32", "int8")):
        rows.append(_cell_rows(f"c{i}", prec, "none", "bits_per_param", 32.0 / (i + 1), None))
        for task in range(9):
            row = _cell_rows(f"c{i}", prec, "none", f"acc.task{task}", 0.5 + 0.01 * i, None)
            rows.append({**row, "ci_low": 0.4, "ci_high": 0.6})
    fig = accuracy_vs_bits(normalize(pd.DataFrame(rows)))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 9
    width, _ = fig.get_size_inches()
    assert width <= MAX_COLUMNS * 5.8 + 0.01  # wrapped into rows, not one 9-panel strip
    assert visible[0].collections and any(
        len(c.get_segments()) for c in visible[0].collections if hasattr(c, "get_segments"))


def test_headline_averages_seeds_and_keeps_adapters_apart() -> None:
    from harness.report import normalize
    from harness.report.headline import headline_table

    rows = []
    for seed, loss in ((0, 1.0), (1, 2.0)):
        row = _cell_rows(f"l{seed}", "fp32", "lora-r8", "heldout_loss_after", loss, None)
        rows.append({**row, "seed": seed})
    rows.append(_cell_rows("n0", "fp32", "none", "prefill_peak_bytes", 5e8, None))
    rows.append(_cell_rows("n0", "fp32", "none", "decode_peak_bytes", 6e8, None))
    table = headline_table(normalize(pd.DataFrame(rows))).set_index("adapter")
    assert table.loc["lora-r8", "held-out loss after"] == "1.500"
    assert table.loc["lora-r8", "seeds"] == 2 and table.loc["none", "seeds"] == 1
    assert table.loc["none", "inference peak MB"] == "600"  # the larger phase peak
