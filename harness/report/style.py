"""One look for every figure: a fixed colour per precision, a fixed order, readable defaults.

Colours are keyed by precision name (never by position in a plot), so fp16 is the same blue in
the memory bars, the Pareto scatter and the throughput panels, whichever cells a run holds.
Families share a hue: dense blues/greys, int8 greens, bitsandbytes 4-bit oranges/reds,
RTN browns, GPTQ purples, SpQR teals.
"""

from __future__ import annotations

from typing import Any

PRECISION_COLORS: dict[str, str] = {
    "fp32": "#1f3b73",
    "tf32": "#6b7a99",
    "fp16": "#3f7fd6",
    "bf16": "#8fb9ec",
    "int8": "#1a9850",
    "int8-nodecomp": "#91cf60",
    "nf4": "#d95f02",
    "nf4-dq": "#fdae61",
    "fp4": "#b2182b",
    "fp4-dq": "#f4a5ae",
    "rtn-w4g128": "#8c510a",
    "rtn-w3g128": "#c7a26b",
    "gptq-w4g128": "#5e3c99",
    "gptq-w3g128": "#b2abd2",
    "spqr-w4": "#01665e",
    "spqr-w3": "#5ab4ac",
}
_EXTRA = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#7570b3", "#1b9e77"]

# Footprint categories and training terms, bottom to top of a stacked bar.
CATEGORY_COLORS: dict[str, str] = {
    "quantized_weights": "#2c7fb8",
    "quant_state": "#f03b20",
    "linear_weights": "#7fcdbb",
    "expert_weights": "#a1dab4",
    "lm_head": "#fec44f",
    "embeddings": "#d95f0e",
    "norms": "#756bb1",
    "biases": "#bcbddc",
    "other": "#969696",
    "frozen_weights": "#2c7fb8",
    "adapter_params": "#31a354",
    "gradients": "#de2d26",
    "optimizer_state": "#fd8d3c",
    "activations": "#9e9ac8",
}
CATEGORY_LABELS = {
    "quantized_weights": "quantized weights",
    "quant_state": "quant state (scales, absmax)",
    "linear_weights": "linear weights (unquantized)",
    "expert_weights": "expert weights (unquantized)",
    "lm_head": "lm_head",
    "embeddings": "embeddings",
    "norms": "norms",
    "biases": "biases",
    "other": "other",
    "frozen_weights": "frozen weights",
    "adapter_params": "adapters",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "activations": "activations",
}
RUN_MARKERS = ["o", "s", "^", "D", "v", "P"]


def precision_order(names: Any) -> list[str]:
    """Known precisions in registry order, then unknown ones alphabetically."""
    present = list(dict.fromkeys(str(n) for n in names))
    known = [p for p in PRECISION_COLORS if p in present]
    return known + sorted(p for p in present if p not in PRECISION_COLORS)


def precision_color(name: str) -> str:
    """The colour of a precision; unknown names get a stable colour from a spare list."""
    if name in PRECISION_COLORS:
        return PRECISION_COLORS[name]
    return _EXTRA[sum(map(ord, name)) % len(_EXTRA)]


def text_color(name: str) -> str:
    """The precision colour darkened enough to read as text on white."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(precision_color(name))
    light = 0.299 * r + 0.587 * g + 0.114 * b
    k = min(1.0, 0.5 / light) if light > 0.5 else 1.0
    return "#{:02x}{:02x}{:02x}".format(*(int(255 * c * k) for c in (r, g, b)))


def palette(names: Any) -> dict[str, str]:
    return {n: precision_color(n) for n in precision_order(names)}


def apply_theme() -> None:
    """Agg backend, seaborn whitegrid, font sizes readable in a report at 100% zoom."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)
    matplotlib.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "axes.titleweight": "bold",
        "svg.fonttype": "none",
        "legend.frameon": True,
        "legend.fontsize": 8.5,
    })


def human_bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, unit) so a byte axis reads in KB, MB or GB (decimal, as the papers use)."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if max_bytes >= div:
            return div, unit
    return 1.0, "B"
