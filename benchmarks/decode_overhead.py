"""Does measuring perturb what it measures? Harness decode figure vs a plain timed generate.

Runs the inference workload of one cell in-process and, in the same process and on the same
loaded model, times a bare ``model.generate`` loop. Prints both figures and their ratio; a
ratio near 1.0 means the harness's memory tracking and bookkeeping cost nothing measurable.

    .venv/bin/python benchmarks/decode_overhead.py [--precision fp32] [--model builtin:smollm2-135m]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.config import Cell
from harness.models import resolve
from harness.schemes import get_handler
from harness.workloads import inference
from harness.workloads.settings import InferenceSettings, Workloads


def plain_decode_tps(model, prompts, n_new: int, repeats: int) -> float:
    """Median tokens/s of bare greedy generate, decode part only (same formula as the harness)."""
    mask = torch.ones_like(prompts)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        model(input_ids=prompts, attention_mask=mask)  # warm up
        prefill = statistics.median(
            timed(lambda: model(input_ids=prompts, attention_mask=mask)) for _ in range(repeats)
        )
        gen = [
            timed(
                lambda: model.generate(
                    input_ids=prompts,
                    attention_mask=mask,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,
                    do_sample=False,
                )
            )
            for _ in range(repeats)
        ]
    rates = [prompts.shape[0] * (n_new - 1) / (g - prefill) for g in gen]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = InferenceSettings(prompt_len=128, new_tokens=32, warmup=1, repeats=args.repeats)
    handler = get_handler(args.precision)
    opts = handler.options()
    loaded = handler.load(resolve(args.model), opts, "cpu")
    cell = Cell(
        experiment="bench",
        model=args.model,
        precision=args.precision,
        precision_options=opts.model_dump(),
        adapter="none",
        seed=0,
        device="cpu",
        timeout_s=600,
        workloads=Workloads(inference=settings),
    )
    rows = inference.run(loaded, cell, settings)
    harness_tps = next(
        r["value"] for r in rows if r["metric"] == "decode_tokens_per_s" and r["stat"] == "median"
    )
    prompts = inference._prompts(loaded.tokenizer, settings, loaded.model.device)
    plain_tps = plain_decode_tps(loaded.model, prompts, settings.new_tokens, args.repeats)
    print(f"harness decode tokens/s: {harness_tps:.2f}")
    print(f"plain   decode tokens/s: {plain_tps:.2f}")
    print(f"ratio harness/plain:     {harness_tps / plain_tps:.3f}")


if __name__ == "__main__":
    main()
