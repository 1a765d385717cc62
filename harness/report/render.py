"""Assemble the report: figures (PNG + SVG), tables, claims, environment -> Markdown and HTML.

Both documents are rendered from one list of sections, so they always say the same thing. The
HTML embeds its figures as base64 PNG and has no external references: one file to send.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report import capped_table, environment_table, problems_table
from harness.report.claims import NOT_MEASURED, combine, evaluate, load_claims, verdict_table
from harness.report.claims_scale import at_scale_table, measured_error_band
from harness.report.finetune import (
    TABLE_NOTE,
    Records,
    curve_points,
    finetune_summary,
    finetune_table,
    has_finetune,
    loss_curves,
    quality_vs_memory,
    records_for,
)
from harness.report.headline import headline_table, verdict_lines
from harness.report.plots import FIGURES, FigureSpec
from harness.report.style import apply_theme


@dataclass
class Section:
    """A heading with paragraphs, tables (DataFrames) and figures (file stems), in order."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    """Why the section does not apply to these results: left out, named once at the end."""

    def text(self, value: str) -> Section:
        self.blocks.append(("text", value))
        return self

    def table(self, frame: Any) -> Section:
        self.blocks.append(("table", frame))
        return self

    def figure(self, stem: str) -> Section:
        self.blocks.append(("figure", stem))
        return self

    def contents(self, titles: list[str]) -> Section:
        self.blocks.append(("contents", titles))
        return self

    def skip(self, why: str) -> Section:
        self.skipped = why
        return self


def anchor(title: str) -> str:
    """The id of a section's heading (GitHub's rule for Markdown headings, used in HTML too)."""
    import re

    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def render_figures(frame: Any, out_dir: Path) -> list[Section]:
    """Draw every figure of ``FIGURES``; an absent metric gives a note, never an error."""
    apply_theme()
    return [draw_figure(spec, frame, out_dir, Section(spec.title)) for spec in FIGURES]


def draw_figure(spec: FigureSpec, frame: Any, out_dir: Path, section: Section) -> Section:
    """``spec``'s figure saved as PNG + SVG and added to ``section``, or the note saying what
    these results lack."""
    import matplotlib.pyplot as plt

    fig = spec.build(frame)
    if fig is None:
        return section.skip(f"these results lack {spec.needs}")
    fig.savefig(out_dir / f"{spec.name}.png", bbox_inches="tight")
    fig.savefig(out_dir / f"{spec.name}.svg", bbox_inches="tight")
    plt.close(fig)
    return section.figure(spec.name)


def finetune_sections(frame: Any, out_dir: Path, records: Records) -> list[Section]:
    """Held-out quality before and after fine-tuning, the loss curves and quality against
    memory; no section at all when the results hold no fine-tuning rows."""
    if not has_finetune(frame):
        return []
    apply_theme()
    summary = finetune_summary(frame, records)
    table = Section("Fine-tuning: held-out quality before and after")
    table.text(TABLE_NOTE).table(finetune_table(summary))
    curves = Section("Fine-tuning: loss curves")
    curves.text(
        "Training loss of every optimizer step and held-out loss (the curve items, step 0 = "
        "before training) per precision; a colour per adapter, the mean over seeds bold and "
        "each seed thin.")
    specs = [
        (curves, FigureSpec("finetune_curves", curves.title,
                            "train_loss_curve samples in the cell records",
                            lambda f: loss_curves(f, records))),
        (Section("Fine-tuning: held-out loss against training memory").text(
            "Each trained precision and adapter: held-out loss after fine-tuning (mean over "
            "seeds, bars the 95% interval over seeds and items) against the first training "
            "step's peak memory (mean over seeds); the dashed line joins the points no other "
            "point beats on both. Hollow: not every seed ended ok."),
         FigureSpec("finetune_quality_vs_memory", "", "finetune_peak_bytes and "
                    "heldout_loss_after in trained cells", lambda f: quality_vs_memory(summary))),
    ]  # fmt: skip
    out = [table]
    for section, spec in specs:
        out.append(draw_figure(spec, frame, out_dir, section))
    if any(curve_points(records, k, "train_loss_curve")
           and not curve_points(records, k, "heldout_loss_curve") for k in records):
        curves.text("Held-out curves are drawn only where the cell records give their steps.")
    return out


def shown_validation(table: Any) -> Any:
    """The validation table as a report shows it: MB and a signed percentage error."""
    return (
        table.assign(
            measured=(table["measured"] / 1e6).round(2),
            predicted=(table["predicted"] / 1e6).round(2),
            error=[f"{100 * e:+.1f}%" for e in table["error"]],
        )
        .drop(columns=["cell_id"])
        .rename(columns={"measured": "measured MB", "predicted": "predicted MB"})
    )


def memory_model_section(frame: Any) -> Section:
    """Predicted against measured for every component and peak, and the largest errors."""
    from harness.memory_validation import summary, validate

    section = Section("Memory model against measurement")
    table, notes = validate(frame)
    if not len(table):
        return section.skip("no cell with memory measurements to compare")
    section.text(
        "Each ok cell predicted from its own settings (no weights loaded) beside what it "
        "measured: live tensors by component, their total, and the phase peak (live model "
        "tensors + process growth above the phase start). Largest error per phase:")
    section.table(summary(table))
    section.table(shown_validation(table))
    for note in notes:
        section.text(note)
    return section


def build_sections(
    frame: Any,
    out_dir: Path,
    claims_path: Path | None = None,
    paired: Any = None,
    samples: Any = None,
    finetune_records: Records | None = None,
) -> list[Section]:
    """Every section in order. ``finetune_records`` (``finetune.load_records``) gives the
    fine-tuning part its per-item samples and curve steps; without them they are read from
    the directories ``load_runs`` noted, else taken from ``samples``."""
    registry = load_claims(claims_path)
    verdicts = verdict_table(combine(evaluate(registry, frame, samples)))
    sections = [*render_figures(frame, out_dir)]
    if has_finetune(frame):
        records = finetune_records if finetune_records is not None else records_for(frame, samples)
        sections += finetune_sections(frame, out_dir, records)
    problems = problems_table(frame)
    failed = Section("Cells not ok")
    failed.table(problems) if len(problems) else failed.skip("every cell finished ok")
    budget = Section("Capped budgets")
    capped = capped_table(frame)
    if len(capped):
        budget.text("These cells ran fewer tokens and items than the experiment asks for "
                    "(each workload's protocol names the budget it ran):").table(capped)
    else:
        budget.skip("every cell ran the budget its experiment asks for")
    claims, at_scale = claims_sections(registry, verdicts, frame)
    tail = [failed, budget, paired_section(paired), claims, at_scale,
            memory_model_section(frame), Section("Environment").table(environment_table(frame))]
    body = [s for s in sections + tail if s.skipped is None]
    left_out = [s for s in sections + tail if s.skipped is not None]
    if left_out:
        body.append(Section("Not in this report").text(
            "; ".join(f"{s.title} ({s.skipped})" for s in left_out) + "."))
    return [overview(frame, verdicts, [s.title for s in body]), *body]


def overview(frame: Any, verdicts: Any, titles: list[str]) -> Section:
    """The first screen: what was run, the headline table, the verdicts, the contents."""
    env = frame.drop_duplicates("cell_id")
    cpu = ", ".join(dict.fromkeys(env["device_name"].dropna().astype(str))) \
        if "device_name" in env else ""
    section = Section("Overview").text(
        f"Runs: {', '.join(dict.fromkeys(frame['run']))}. "
        f"Models: {', '.join(dict.fromkeys(frame['model'].astype(str)))}. "
        f"{frame['cell_id'].nunique()} cells: precisions "
        f"{', '.join(dict.fromkeys(frame['precision'].astype(str)))}; adapters "
        f"{', '.join(dict.fromkeys(frame['adapter'].astype(str)))}; seeds "
        f"{', '.join(str(s) for s in sorted(set(frame['seed'].dropna().astype(int))))}."
        + (f" Measured on: {cpu}." if cpu else ""))
    headline = headline_table(frame)
    if len(headline):
        section.text(HEADLINE_NOTE).table(headline)
    lines = verdict_lines(verdicts)
    if lines:
        section.text("Published claims measured by these runs (details under Published "
                     "claims):").text("\n".join(f"- {line}" for line in lines))
    return section.contents(titles)


HEADLINE_NOTE = (
    "One row per precision and adapter (the mean over seeds where there are several); peaks "
    "are the largest phase peak of live tensors plus process growth, MB = 1e6 bytes; "
    "perplexity with its 95% interval over windows; throughput the median of repeats.")


def paired_section(paired: Any) -> Section:
    """Only the differences from fp32 whose interval excludes 0, measured on enough items."""
    section = Section("Differences against fp32 (paired bootstrap)")
    if paired is None or not len(paired):
        return section.skip("no fp32 cell with per-item samples to compare against")
    clear = paired[(paired["significant"] == "yes") & (paired["items"] >= MIN_PAIRED_ITEMS)]
    hidden = len(paired) - len(clear)
    section.text(
        "Item-by-item differences from the fp32 cell of the same model, adapter and seed: "
        "window NLL and held-out loss (positive = worse), task items and exact match "
        f"(negative = worse), with 95% intervals; shown only where the interval excludes 0 "
        f"and at least {MIN_PAIRED_ITEMS} items were paired ({hidden} of {len(paired)} "
        "comparisons left out).")
    if len(clear):
        section.table(clear.drop(columns="significant"))
    return section


MIN_PAIRED_ITEMS = 10
"""Below this many paired items a bootstrap interval is too rough to call a difference."""


def claims_sections(registry: list, verdicts: Any, frame: Any) -> list[Section]:
    """Measured verdicts (one per claim over every run, with intervals and cell ids), and
    apart from them the predictions."""
    columns = ["claim", "run", "verdict", "measured", "interval", "expected", "published",
               "cells", "scope", "note"]
    measured_rows = verdicts[verdicts["verdict"] != NOT_MEASURED] if len(verdicts) else verdicts
    unmeasured = verdicts[verdicts["verdict"] == NOT_MEASURED] if len(verdicts) else verdicts
    measured = Section("Published claims: measured")
    if len(measured_rows):
        measured.table(measured_rows[columns])
    if len(unmeasured):
        measured.text(f"Not measured by these runs ({len(unmeasured)}): "
                      + ", ".join(dict.fromkeys(unmeasured["claim"])) + ".")
    predicted = at_scale_table(registry, measured_error_band(frame))
    at_scale = Section("Published claims: predicted at scale (memory model, not measured)")
    if not len(predicted):
        return [measured, at_scale.skip("no claim has a setting at scale")]
    at_scale.text(
        "The analytic memory model on the published architecture and setting; each prediction "
        "may be off by the model's largest relative error over the validated cells of these "
        "runs, and a verdict is undecided when that band straddles the threshold."
    ).table(predicted)
    return [measured, at_scale]


def _md_table(frame: Any) -> str:
    def cell(v: Any) -> str:
        text = "" if v is None or (isinstance(v, float) and v != v) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)


def to_markdown(sections: list[Section], title: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, value in s.blocks:
            if kind == "text":
                out.append(value)
            elif kind == "table":
                out.append(_md_table(value))
            elif kind == "contents":
                out.append("\n".join(f"- [{t}](#{anchor(t)})" for t in value))
            else:
                out.append(f"![{s.title}]({value}.png)\n\n[SVG]({value}.svg)")
            out.append("")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid
#ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}img{max-width:100%}"""


def to_html(sections: list[Section], title: str, out_dir: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f'<h2 id="{anchor(s.title)}">{html.escape(s.title)}</h2>')
        for kind, value in s.blocks:
            if kind == "text":
                body.append(f"<p>{html.escape(value)}</p>".replace("\n", "<br>"))
            elif kind == "contents":
                links = "".join(f'<li><a href="#{anchor(t)}">{html.escape(t)}</a></li>'
                                for t in value)
                body.append(f"<nav><ul>{links}</ul></nav>")
            elif kind == "table":
                body.append(value.to_html(index=False, escape=True, na_rep="", border=0))
            else:
                data = base64.b64encode((out_dir / f"{value}.png").read_bytes()).decode()
                body.append(
                    f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">'
                )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(
    frame: Any,
    out_dir: Path,
    title: str = "Benchmark report",
    claims_path: Path | None = None,
    paired: Any = None,
    samples: Any = None,
    finetune_records: Records | None = None,
) -> dict[str, Path]:
    """Write report.md, report.html and the figures to ``out_dir``; returns their paths.

    ``samples`` (``claim_interval.load_samples``) gives the claims paired intervals."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(frame, out_dir, claims_path, paired, samples, finetune_records)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(sections, title))
    page.write_text(to_html(sections, title, out_dir))
    return {"markdown": md, "html": page}
