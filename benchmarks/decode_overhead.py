"""Does the harness's decode figure match a plain timed ``generate``? Alternated pairs.

Sets the allocator as a cell process does, loads one precision once and alternates,
``--pairs`` times on the same model and prompt: the inference workload (its tracked memory
calls, then one timed prefill and one timed decode) and a plain timing of ``model.generate`` of
1 token and of ``new_tokens`` tokens with ``perf_counter`` and nothing else (after one untimed
call, with the allocator settings the workload times with). Both turn times
into decode tokens/s as ``(new_tokens - 1) / (t_n - t_1)``. Prints each pair, the median ratio
harness/plain (target: within 3% of 1.0) and the CPU.

The cell's timed calls run with glibc's thresholds at their ceiling (mmap 32 MiB, trim 64 MiB;
see harness/measure/allocator.py). ``--fresh-process`` adds, for information, the same plain
timing in a fresh process with glibc's defaults, whose dynamic thresholds may not have risen
yet: code that allocates large temporaries per step can run slower there.

    .venv/bin/python benchmarks/decode_overhead.py [--precision fp32] [--pairs 7] [--fresh-process]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time

import torch
from quant_decode import decode_tps, load  # this directory: the scripts run as files

from harness.measure import allocator
from harness.measure.env import cpu_name
from harness.workloads import inference
from harness.workloads.settings import InferenceSettings


def plain_decode_tps(model, prompts, n_new: int, pad: int, glibc_defaults: bool = False) -> float:
    """Decode tokens/s from one bare ``generate(1)`` and one bare ``generate(n_new)``, with the
    workload's timing settings of the allocator (or glibc's own, untouched)."""
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

    window = contextlib.nullcontext() if glibc_defaults else allocator.timing_window()
    with torch.inference_mode(), window:
        seconds(n_new)  # grows the heap the timed calls reuse, as the workload's warmup does
        t_first = seconds(1)
        t_all = seconds(n_new)
    return prompts.shape[0] * (n_new - 1) / (t_all - t_first)


def fresh_process_tps(args: argparse.Namespace, runs: int = 3) -> list[float]:
    """Plain decode tokens/s, each from a new process with glibc's default allocator."""
    cmd = [sys.executable, __file__, "--plain-only", "--model", args.model]
    cmd += ["--precision", args.precision, "--new-tokens", str(args.new_tokens)]
    out = []
    for _ in range(runs):
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(float(done.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--fresh-process", action="store_true")
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.plain_only:
        allocator.use("memory")  # as a cell process does before loading
    settings = InferenceSettings(prompt_len=128, new_tokens=args.new_tokens, warmup=0, repeats=1)
    built = load(args.model, args.precision, settings)
    if built is None:
        raise SystemExit(f"{args.precision} cannot run on this CPU")
    loaded, cell = built
    prompts = inference._prompts(loaded.tokenizer, settings, loaded.model.device)
    pad = loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id
    if args.plain_only:  # the --fresh-process child: one plain figure, glibc defaults
        print(plain_decode_tps(loaded.model, prompts, settings.new_tokens, pad, True))
        return
    plain_decode_tps(loaded.model, prompts, settings.new_tokens, pad)  # warm-up
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}; {args.precision}")
    print(f"allocator for timed calls: {allocator.describe('timing')}")
    ratios, harness_tps = [], []
    for i in range(args.pairs):
        harness = decode_tps(loaded, cell, settings)
        plain = plain_decode_tps(loaded.model, prompts, settings.new_tokens, pad)
        ratios.append(harness / plain)
        harness_tps.append(harness)
        print(f"pair {i}: harness {harness:.2f}, plain {plain:.2f} tok/s, ratio {ratios[-1]:.3f}")
    median = statistics.median(ratios)
    verdict = "within" if abs(median - 1) <= 0.03 else "OUTSIDE"
    print(f"median ratio harness/plain over {args.pairs} pairs: {median:.3f} ({verdict} 3% of 1.0)")
    if args.fresh_process:
        fresh = fresh_process_tps(args)
        ratio = statistics.median(harness_tps) / statistics.median(fresh)
        listed = ", ".join(f"{t:.2f}" for t in fresh)
        print(f"plain generate in fresh processes with glibc defaults: {listed} tok/s")
        print(f"median harness / median fresh-process plain: {ratio:.3f}")


if __name__ == "__main__":
    main()
