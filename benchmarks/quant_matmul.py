"""QuantLinear forward: packed CPU kernels / fused Triton kernel vs dequantize + matmul vs dense.

For each layer shape, scheme and number of input rows (1 = one decode step, larger =
prefill), times in one process, on the same weights:

* ``dense``: ``F.linear`` with the unquantized weight in the input dtype;
* ``torch``: the portable path (rebuild the dense weight, then matmul);
* ``packed``: torch's packed int4/int8 CPU kernels (CPU only, ``cpu_kernels.py``);
* ``triton``: the fused kernel (CUDA only).

and prints the ratios ``dense / packed`` (speed-up over the dense layer on CPU),
``torch / triton`` (speed-up of fusing) and ``triton / dense`` (cost of reading quantized
weights instead of dense ones) plus the bandwidth the fused kernel achieves on the stored bytes.

    .venv/bin/python benchmarks/quant_matmul.py [--out results.json] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.measure.env import cpu_name
from harness.quant import QuantLinear
from harness.quant.gptq import Hessian
from harness.quant.linear import KERNEL_ENV, QuantizedWeight, measured_bits
from harness.quant.rtn import rtn_quantize
from harness.quant.spqr import spqr_quantize

SHAPES = {
    "builtin mlp (1536x576)": (1536, 576),
    "7B attention (4096x4096)": (4096, 4096),
    "7B mlp (11008x4096)": (11008, 4096),
}


def build(kind: str, rows: int, cols: int, device: str) -> QuantizedWeight:
    gen = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(rows, cols, generator=gen)
    if kind.startswith("rtn-"):
        return rtn_quantize(w.to(device), int(kind[5]), 128)
    h = Hessian(cols)
    h.add_batch(torch.randn(4 * cols, cols, generator=gen).to(device))
    return spqr_quantize(w.to(device), h, 3, outlier_threshold=0.2)


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls (which also compile the kernel)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_with(kernel: str, module: QuantLinear, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        os.environ[KERNEL_ENV] = kernel
        with torch.no_grad():
            return module(x)

    return run


def measure(shape_name: str, kind: str, tokens: int, device: str, repeats: int) -> dict:
    rows, cols = SHAPES[shape_name]
    dtype = torch.float16 if device == "cuda" else torch.float32
    qw = build(kind, rows, cols, device)
    module = QuantLinear(qw).to(device)
    dense_w = qw.dequantize(dtype).to(device)
    x = torch.randn(tokens, cols, device=device, dtype=dtype)
    out = {"shape": shape_name, "scheme": kind, "tokens": tokens, "dtype": str(dtype)}
    out["bits_per_weight"] = measured_bits(qw)
    out["dense_s"] = timed(lambda: F.linear(x, dense_w), device, repeats)
    out["torch_s"] = timed(forward_with("torch", module, x), device, repeats)
    if device == "cuda":
        out["triton_s"] = timed(forward_with("triton", module, x), device, repeats)
        out["torch_over_triton"] = out["torch_s"] / out["triton_s"]
        out["triton_over_dense"] = out["triton_s"] / out["dense_s"]
        stored = sum(qw.stored_bytes().values())
        out["triton_GBps_on_stored_bytes"] = stored / out["triton_s"] / 1e9
    else:
        out["packed_s"] = timed(forward_with("packed", module, x), device, repeats)
        out["dense_over_packed"] = out["dense_s"] / out["packed_s"]
        out["packed_runtime_bytes"] = module.runtime_bytes("cpu")
    out["torch_over_dense"] = out["torch_s"] / out["dense_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 512])
    parser.add_argument("--out", help="write the measurements as JSON here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = list(SHAPES) if device == "cuda" else list(SHAPES)[:2]
    print(f"cpu: {cpu_name()}; torch threads: {torch.get_num_threads()}")
    results = []
    for shape in shapes:
        for kind in ("rtn-w4g128", "spqr-w3", "rtn-w8g128"):
            for tokens in args.tokens:
                row = measure(shape, kind, tokens, device, args.repeats)
                results.append(row)
                print(json.dumps({k: round(v, 6) if isinstance(v, float) else v
                                  for k, v in row.items()}))  # fmt: skip
    env = {"device": device, "torch": torch.__version__, "cpu": cpu_name()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"env": env, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
