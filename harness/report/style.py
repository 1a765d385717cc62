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
    return readable(precision_color(name))


def readable(color: str) -> str:
    """A colour darkened enough to read as text on white."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
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


# Adapters: one hue per method (LoRA blues, rsLoRA greens, DoRA purples), darker for a
# larger rank, full fine-tuning red; keyed by name like precisions.
ADAPTER_CMAPS = {"lora": "Blues", "rslora": "Greens", "dora": "Purples"}
ADAPTER_MARKERS = {"none": "X", "lora": "o", "rslora": "s", "dora": "D", "full": "^"}


def adapter_order(names: Any) -> list[str]:
    """none, then LoRA-family adapters by rank (lora, rslora, dora at one rank), then full;
    names the parser does not know last, alphabetically."""
    from harness.adapter_names import LORA_METHODS, lora_method, parse_adapter

    def key(name: str) -> tuple[int, int, int, str]:
        try:
            kind, rank = parse_adapter(name)
        except ValueError:
            return 3, 0, 0, name
        if kind != "lora":
            return (0 if kind == "none" else 2), 0, 0, name
        return 1, rank or 0, LORA_METHODS.index(lora_method(name) or "lora"), name

    return sorted(dict.fromkeys(str(n) for n in names), key=key)


def adapter_method(name: str) -> str:
    """``lora``, ``rslora``, ``dora``, ``none``, ``full`` (or the name when unknown)."""
    from harness.adapter_names import lora_method

    if name in ("none", "full"):
        return name
    try:
        return lora_method(name) or name
    except ValueError:
        return name


def adapter_color(name: str) -> str:
    """Stable colour of an adapter: its method's hue, shaded by log2 of its rank."""
    import math

    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from harness.adapter_names import adapter_rank

    if name == "full":
        return "#c0392b"
    if name == "none":
        return "#555555"
    method, rank = adapter_method(name), adapter_rank(name)
    if method not in ADAPTER_CMAPS or rank is None:
        return _EXTRA[sum(map(ord, name)) % len(_EXTRA)]
    shade = 0.35 + 0.6 * min(math.log2(rank), 7) / 7  # r1 lightest .. r128 and up darkest
    return to_hex(colormaps[ADAPTER_CMAPS[method]](shade))


def adapter_marker(name: str) -> str:
    return ADAPTER_MARKERS.get(adapter_method(name), "o")
