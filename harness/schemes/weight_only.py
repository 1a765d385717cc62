"""Shared base of the weight-only precisions built by the harness itself (RTN, GPTQ, SpQR).

Every linear-like layer inside the decoder blocks (``nn.Linear``, GPT-2's ``Conv1D``) is
replaced by a ``QuantLinear`` holding packed codes, and 3-D expert weights by
``PackedExperts``; embeddings, norms and ``lm_head`` stay dense fp32 (as in the GPTQ and SpQR
papers, which quantize only the transformer blocks). GPTQ and SpQR calibrate block by block on
random windows of the corpus's ``train`` split, never on the evaluation text.

Calibration defaults and every option are in ``gptq_options``. Results are cached by
content (``quantized_cache``), so each setting calibrates once. Each family's handler lives
in its own module (``rtn``, ``gptq``, ``spqr``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness.errors import SkipCell
from harness.schemes.base import LoadedModel, SchemeHandler
from harness.schemes.gptq_options import CalibrationOptions

log = logging.getLogger(__name__)

SOLVER_SINGLE_THREAD_MAX = 4 * 2**20


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder blocks (Llama/Mistral/Qwen, GPT-2, GPT-NeoX layouts)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise SkipCell(
        f"cannot find the decoder layers of {type(model).__name__} (looked for model.layers, "
        "transformer.h, gpt_neox.layers, model.decoder.layers): nothing to quantize"
    )


def quantizable_count(layers: Any) -> int:
    """Linear-like layers plus 3-D expert weights inside ``layers`` (what the schemes pack)."""
    from harness.modules import is_linear_like
    from harness.quant.experts import expert_parameters

    return sum(1 for m in layers.modules() if is_linear_like(m) or expert_parameters(m))


def calibration_batches(tokenizer: Any, opts: CalibrationOptions, device: str) -> list[Any]:
    """``nsamples`` random ``seqlen`` windows of the train split, in batches (GPTQ protocol)."""
    import torch

    from harness.data.tokens import corpus_tokens

    ids = corpus_tokens(tokenizer, opts.calib_corpus, "train")
    if len(ids) <= opts.seqlen:
        raise ValueError(f"train split has {len(ids)} tokens; seqlen {opts.seqlen} is too long")
    gen = torch.Generator().manual_seed(opts.seed)
    starts = torch.randint(0, len(ids) - opts.seqlen, (opts.nsamples,), generator=gen)
    windows = torch.stack([ids[s : s + opts.seqlen] for s in starts.tolist()])
    return [b.to(device) for b in windows.split(opts.calib_batch_size)]


@contextmanager
def solver_threads(weight: Any) -> Iterator[None]:
    """Run the column-by-column solvers single-threaded on CPU for small layers.

    Their cost is thousands of small ops per layer; for layers up to a few million weights,
    extra intra-op threads only add synchronisation (measured 5-20x slower with 2 threads on
    a busy 2-core machine). Large layers and GPUs keep the default.
    """
    import torch

    if weight.device.type != "cpu" or weight.numel() > SOLVER_SINGLE_THREAD_MAX:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class QuantizedScheme(SchemeHandler):
    """Shared loader: fp32 model, quantize (or take the cache), report what it cost."""

    quantizes_experts = True  # 3-D expert weights are quantized per expert

    family = ""

    def quantize(self, model: Any, layers: Any, tokenizer: Any, opts: Any, device: str) -> dict:
        raise NotImplementedError

    def formula_bits(self, opts: Any, rows: int, cols: int, outlier_fraction: float) -> float:
        """Published average bits per weight of one ``rows x cols`` layer."""
        raise NotImplementedError

    def linear_bytes(self, opts: Any, out: int, inp: int) -> tuple[int, int]:
        """Codes at ``bits`` each; the formula's remaining bits are statistics, plus the
        act-order permutation (int16 or int32 per input column). SpQR outliers are not known before
        calibration and are left out (each adds ~32 bits)."""
        n = out * inp
        extra = self.formula_bits(opts, out, inp, 0.0) - opts.bits
        # the act-order permutation is stored as int16 up to 32767 columns, else int32
        perm = (2 if inp <= 2**15 - 1 else 4) * inp if getattr(opts, "act_order", False) else 0
        return math.ceil(n * opts.bits / 8), math.ceil(n * extra / 8) + perm

    def load(self, source: Any, opts: Any, device: str) -> LoadedModel:
        import torch

        from harness.measure.memory import track_phase
        from harness.quant import replace_linears
        from harness.schemes import quantized_cache as qc

        model = source.load_model(dtype=torch.float32, device=device).eval()
        tokenizer = source.tokenizer()
        layers = decoder_layers(model)
        if not quantizable_count(layers):
            raise SkipCell(
                f"{self.family} found nothing to quantize in {type(model).__name__}: its decoder "
                "layers hold no nn.Linear, Conv1D or 3-D expert weights"
            )
        options = opts.model_dump(mode="json")
        key = qc.cache_key(source, self.family, options, device)
        hit = qc.load_entry(key, device)
        if hit is not None:
            quantized, meta = hit
            replace_linears(layers, quantized)
            build = meta["build"]
        else:
            with torch.no_grad(), track_phase(device) as mem:
                start = time.perf_counter()
                quantized = self.quantize(model, layers, tokenizer, opts, device)
                build = {"quant_time_s": time.perf_counter() - start}
            # first calibration batch, output of each quantized block vs. the float block
            build["block_rel_output_error"] = getattr(self, "block_errors", [])
            build["expert_rtn_fallbacks"] = getattr(self, "expert_fallbacks", 0)
            build["memory"] = mem.to_json()
            meta = {"family": self.family, "model": source.spec, "options": options}
            qc.store_entry(key, quantized, {**meta, "build": build})
        rows = self.rows(quantized, opts, build, cache_hit=hit is not None)
        rows += _kernel_rows(model, device)
        notes = {
            "cache_key": key,
            "quantized_layers": len(quantized),
            "block_rel_output_error": build.get("block_rel_output_error", []),
        }
        return LoadedModel(model, tokenizer, "quantized", "float32", rows=rows, notes=notes)

    def rows(self, quantized: dict, opts: Any, build: dict, cache_hit: bool) -> list[dict]:
        """Metrics of the quantized layers; timings come from the run that calibrated."""
        from harness.measure.memory import phase_rows

        how = "measured when the cache entry was built" if cache_hit else "measured"
        from harness.quant.experts import split_key

        params = outliers = stored = expert_params = 0
        formula = 0.0
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for name, qw in quantized.items():
            n = qw.shape[0] * qw.shape[1]
            params += n
            outliers += qw.num_outliers
            stored += sum(qw.stored_bytes().values())
            formula += n * self.formula_bits(opts, *qw.shape, qw.outlier_fraction)
            parts = split_key(name)
            if parts is not None:
                expert_params += n
            kind = by_type[f"experts.{parts[1]}" if parts else name.rsplit(".", 1)[-1]]
            kind[0] += qw.num_outliers
            kind[1] += n
        mem_rows = phase_rows("quant", build["memory"])
        out = [
            {
                "metric": "quant_time_s",
                "value": build["quant_time_s"],
                "unit": "s",
                "method": f"{how}, inside the quantization memory window (glibc mmap "
                "threshold 128 KiB where glibc)",
            },
            *({**r, "method": f"{r['method']}; {how}"} for r in mem_rows),
            {"metric": "cache_hit", "value": float(cache_hit), "unit": "bool"},
            {"metric": "quantized_params", "value": float(params), "unit": "count"},
            {"metric": "outlier_fraction", "value": outliers / params, "unit": "fraction"},
            {"metric": "bits_per_param_formula", "value": formula / params, "unit": "bits",
             "method": f"{self.family} published formula, weighted by layer size"},
            {"metric": "bits_per_param_measured", "value": 8 * stored / params, "unit": "bits",
             "method": "stored bytes of the quantized layers (codes, stats, outliers, perm)"},
        ]  # fmt: skip
        if expert_params:
            out += _expert_rows(quantized, expert_params, build)
        if outliers:
            out += [
                {"metric": f"outlier_fraction.layer.{k}", "value": o / n, "unit": "fraction"}
                for k, (o, n) in sorted(by_type.items())
            ]
        return out


def _expert_rows(quantized: dict, expert_params: int, build: dict) -> list[dict]:
    """How much of the quantized weight sits in experts, and how many experts got too few
    routed calibration tokens and were rounded to nearest instead."""
    from harness.quant.experts import split_key

    count = len({(k[0], k[2]) for k in map(split_key, quantized) if k is not None})
    fallbacks = build.get("expert_rtn_fallbacks", 0)
    return [
        {"metric": "quantized_expert_params", "value": float(expert_params), "unit": "count",
         "method": "3-D expert weights packed per expert"},
        {"metric": "quantized_experts", "value": float(count), "unit": "count"},
        {"metric": "expert_rtn_fallbacks", "value": float(fallbacks), "unit": "count",
         "method": "expert matrices quantized by RTN: too few routed calibration tokens"},
    ]  # fmt: skip


class _CalibratedScheme(QuantizedScheme):
    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.block_errors: list[float] = []
        self.expert_fallbacks = 0

    def solve(self, weight: Any, hessian: Any, opts: Any) -> Any:
        raise NotImplementedError

    def rtn_fallback(self, weight: Any, opts: Any) -> Any:
        """Round-to-nearest on this family's grid, for experts without calibration tokens."""
        raise NotImplementedError

    def quantize(self, model: Any, layers: Any, tokenizer: Any, opts: Any, device: str) -> dict:
        from harness.quant import capture_layer_inputs, quantize_decoder_layers

        self.block_errors = []
        self.expert_fallbacks = 0
        batches = calibration_batches(tokenizer, opts, device)
        inputs = capture_layer_inputs(
            lambda ids: model(input_ids=ids, use_cache=False), layers[0], batches
        )
        del batches

        def solve(_name: str, linear: Any, hessian: Any) -> Any:
            with solver_threads(linear.weight):
                return self.solve(linear.weight, hessian, opts)

        def fallback(_name: str, linear: Any) -> Any:
            return self.rtn_fallback(linear.weight, opts)

        def progress(event: dict) -> None:
            if event["kind"] == "expert_fallback":
                self.expert_fallbacks += 1
            if event["kind"] == "block":
                self.block_errors.append(event["relative_output_error"])
                log.info(
                    "%s: block %d/%d quantized in %.1fs, relative output error %.4f",
                    self.entry.name, event["index"] + 1, len(layers), event["seconds"],
                    event["relative_output_error"],
                )  # fmt: skip

        return quantize_decoder_layers(
            layers, inputs, solve, progress, fallback_fn=fallback,
            min_expert_tokens=opts.expert_min_tokens,
        )  # fmt: skip


def _kernel_rows(model: Any, device: str) -> list[dict]:
    """Which QuantLinear matmul the workloads of this cell run, and the bytes its weights occupy
    while running next to the stored bytes (see quant.linear; packed layouts are built here, at
    load time, so conversion time is load time)."""
    from collections import Counter

    from harness.quant import QuantLinear

    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    names = Counter(m.kernel_name(device) for m in layers)
    runtime = sum(m.runtime_bytes(device) for m in layers)
    stored = sum(_stored(m) for m in layers)
    extra = sum(m.runtime_bytes(device) for m in layers if _packed(m.kernel_name(device)))
    how = "; ".join(f"{n} layers: {k}" for k, n in sorted(names.items()))
    share = sum(n for k, n in names.items() if _packed(k)) / max(len(layers), 1)
    rows = [
        ("matmul_kernel", share, "fraction", f"quantized layers on a packed kernel; {how}"),
        ("bytes.runtime_weights", runtime, "bytes", "quantized layers' weights as matmuls read"),
        ("bytes.stored_weights", stored, "bytes", "quantized layers' stored tensors"),
        ("bytes.resident_weights", stored + extra, "bytes", "stored tensors + runtime layouts"),
    ]
    return [{"metric": m, "value": float(v), "unit": u, "method": h} for m, v, u, h in rows]


def _packed(kernel_name: str) -> bool:
    return kernel_name.startswith("aten.")


def _stored(layer: Any) -> int:
    return sum(t.numel() * t.element_size() for _, t, _, _ in layer.footprint_entries())
