"""Does the harness's decode figure match a plain timed ``generate``? Alternated pairs.

Loads one precision once and alternates, ``--pairs`` times on the same model and prompt: the
inference workload (one timed prefill and one timed decode, memory tracking on) and a plain
timing of ``model.generate`` of 1 token and of ``new_tokens`` tokens with ``perf_counter`` and
nothing else. Both turn times into decode tokens/s as ``(new_tokens - 1) / (t_n - t_1)``. Prints
each pair, the median ratio harness/plain (target: within 3% of 1.0) and the CPU.

    .venv/bin/python benchmarks/decode_overhead.py [--precision fp32] [--pairs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.config import Cell
from harness.measure.env import cpu_name
from harness.models import resolve
from harness.schemes import get_handler
from harness.workloads import inference
from harness.workloads.settings import InferenceSettings, Workloads


def plain_decode_tps(model, prompts, n_new: int, pad: int) -> float:
    """Decode tokens/s from one bare ``generate(1)`` and one bare ``generate(n_new)``."""
    mask = torch.ones_like(prompts)

    def seconds(n: int) -> float:
        start = time.perf_counter()
        model.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
        )
        return time.perf_counter() - start

    with torch.inference_mode():
        t_first = seconds(1)
        t_all = seconds(n_new)
    return prompts.shape[0] * (n_new - 1) / (t_all - t_first)


def harness_decode_tps(loaded, cell, settings) -> float:
    rows = inference.run(loaded, cell, settings)
    return next(
        r["value"] for r in rows if r["metric"] == "decode_tokens_per_s" and r["stat"] == "median"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    settings = InferenceSettings(prompt_len=128, new_tokens=args.new_tokens, warmup=0, repeats=1)
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
    prompts = inference._prompts(loaded.tokenizer, settings, loaded.model.device)
    pad = loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id
    plain_decode_tps(loaded.model, prompts, settings.new_tokens, pad)  # warm-up
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}; {args.precision}")
    ratios = []
    for i in range(args.pairs):
        harness = harness_decode_tps(loaded, cell, settings)
        plain = plain_decode_tps(loaded.model, prompts, settings.new_tokens, pad)
        ratios.append(harness / plain)
        print(f"pair {i}: harness {harness:.2f}, plain {plain:.2f} tok/s, ratio {ratios[-1]:.3f}")
    median = statistics.median(ratios)
    verdict = "within" if abs(median - 1) <= 0.03 else "OUTSIDE"
    print(f"median ratio harness/plain over {args.pairs} pairs: {median:.3f} ({verdict} 3% of 1.0)")


if __name__ == "__main__":
    main()
