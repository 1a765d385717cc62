"""Decode speed of quantized precisions against fp32 and bitsandbytes nf4, in one run.

Loads every precision once (GPTQ and SpQR from the quantized-model cache; a missing entry is
calibrated first, which takes minutes: run the ``quant-schemes`` experiment first), then times
decode round-robin, ``--rounds`` times, with the inference workload at batch 1 (prefill =
``generate`` of 1 token, decode = the rest). Prints median decode tokens/s, the ratios to fp32
and nf4 (targets: gptq-w4g128 >= 1.3x fp32 and >= nf4; spqr-w3 and spqr-w4 >= 1.0x fp32), the
matmul kernel of each harness-quantized precision with its runtime and stored weight bytes, and
the CPU. The allocator is set as in a cell process (timed calls with glibc's thresholds at
their ceiling; see harness/measure/allocator.py).

    .venv/bin/python benchmarks/quant_decode.py [--rounds 5] [--precisions fp32 nf4 ...]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from harness.config import Cell
from harness.measure import allocator
from harness.measure.env import cpu_name
from harness.models import resolve
from harness.schemes import get_handler
from harness.workloads import inference
from harness.workloads.settings import InferenceSettings, Workloads

DEFAULT = ["fp32", "nf4", "gptq-w4g128", "spqr-w4", "spqr-w3", "rtn-w4g128"]
DEFAULT += ["ao-int8wo", "ao-int8dq"]
TARGETS = {"gptq-w4g128": ("fp32", 1.3), "spqr-w4": ("fp32", 1.0), "spqr-w3": ("fp32", 1.0)}


def load(model: str, precision: str, settings: InferenceSettings):
    handler = get_handler(precision)
    opts = handler.options()
    reason = handler.unavailable(opts, "cpu")
    if reason:
        print(f"{precision}: skipped ({reason})")
        return None
    loaded = handler.load(resolve(model), opts, "cpu")
    cell = Cell(
        experiment="bench",
        model=model,
        precision=precision,
        precision_options=opts.model_dump(),
        adapter="none",
        seed=0,
        device="cpu",
        timeout_s=600,
        workloads=Workloads(inference=settings),
    )
    rows = {r["metric"]: r for r in loaded.rows}
    if "matmul_kernel" in rows:
        print(
            f"{precision}: {rows['matmul_kernel']['method']}; runtime weight bytes "
            f"{rows['bytes.runtime_weights']['value']:.0f}, stored "
            f"{rows['bytes.stored_weights']['value']:.0f}"
        )
    return loaded, cell


def decode_tps(loaded, cell, settings) -> float:
    rows = inference.run(loaded, cell, settings)
    decode = [r for r in rows if r["metric"] == "decode_tokens_per_s"]
    row = next(r for r in decode if r.get("stat", "median") == "median")
    if row.get("status") == "skipped":  # decode time within the prefill noise: no rate
        print(f"  decode not measured: {row['error']}")
        return float("nan")
    return row["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--precisions", nargs="+", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    allocator.use("memory")  # as a cell process does before loading
    settings = InferenceSettings(prompt_len=128, new_tokens=args.new_tokens, warmup=1, repeats=1)
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}; batch 1")
    print(f"allocator for timed calls: {allocator.describe('timing')}")
    models = {p: m for p in args.precisions if (m := load(args.model, p, settings)) is not None}
    samples: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(args.rounds):
        for precision, (loaded, cell) in models.items():
            samples[precision].append(decode_tps(loaded, cell, settings))
    median = {p: statistics.median(v) for p, v in samples.items()}
    for precision, tps in median.items():
        ratios = [f"{tps / median[ref]:.2f}x {ref}" for ref in ("fp32", "nf4") if ref in median]
        print(f"{precision:14s} decode {tps:7.2f} tokens/s  {', '.join(ratios)}")
    for precision, (ref, want) in TARGETS.items():
        if precision in median and ref in median:
            got = median[precision] / median[ref]
            verdict = "met" if got >= want else "MISSED"
            print(f"target {precision} >= {want}x {ref}: {got:.2f}x {verdict}")
    if "gptq-w4g128" in median and "nf4" in median:
        got = median["gptq-w4g128"] / median["nf4"]
        print(f"target gptq-w4g128 >= nf4: {got:.2f}x {'met' if got >= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
