"""Hand-built results tables with the tidy schema, shaped like a real SmolLM2-135M matrix."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from harness.results import CELL_FIELDS, ROW_FIELDS

MODEL = "builtin:smollm2-135m"
EMB, LIN, NORM = 28_311_552, 106_168_320, 35_136  # params: tied embedding, linears, norms
ENV = {"device_name": "Intel(R) Xeon(R) Processor", "python": "3.11.7", "git_sha": "abc1234",
       "torch_version": "2.13.0+cpu", "transformers_version": "5.24.0",
       "bitsandbytes_version": "0.50.2", "cpu_count": 2, "memory_total_bytes": 25e9}
# precision -> (bytes per linear weight incl. state, quant-state share, ppl, prefill, decode)
PRECISIONS: dict[str, tuple[float, float, float, float, float]] = {
    "fp32": (4.0, 0.0, 12.882, 540, 21.7),
    "fp16": (2.0, 0.0, 12.883, 60, 16.8),
    "bf16": (2.0, 0.0, 12.896, 1378, 16.0),
    "int8": (1.0069, 0.0069, 12.95, 300, 8.6),
    "int8-nodecomp": (1.0069, 0.0069, 13.60, 320, 9.1),
    "nf4": (0.5626, 0.0626, 14.10, 310, 25.2),
    "nf4-dq": (0.5180, 0.0180, 14.12, 300, 24.0),
    "fp4": (0.5626, 0.0626, 15.30, 305, 24.8),
    "rtn-w4g128": (0.5195, 0.0195, 14.60, 200, 12.0),
    "gptq-w4g128": (0.5195, 0.0195, 13.70, 200, 12.0),
    "spqr-w4": (0.5900, 0.0900, 13.05, 150, 9.0),
}


def _row(cell: dict[str, Any], workload: str, metric: str, value: float | None, unit: str = "",
         stat: str | None = None, status: str = "ok", error: str | None = None) -> dict:
    row = {k: None for k in ROW_FIELDS}
    row.update(workload=workload, metric=metric, value=value, unit=unit, stat=stat,
               status=status, error=error)
    return {**cell, **row}


def _cell(precision: str, adapter: str = "none", status: str = "ok", device: str = "cpu",
          experiment: str = "hand") -> dict[str, Any]:
    cell = {k: None for k in CELL_FIELDS}
    rank = int(adapter.removeprefix("lora-r")) if adapter.startswith("lora-r") else None
    cell.update(experiment=experiment, cell_id=f"smollm2-135m__{precision}__{adapter}__{device}",
                model=MODEL, precision=precision, precision_options=json.dumps({}),
                storage="dense", adapter=adapter, rank=rank, seed=0, cell_status=status,
                device=device, **ENV)
    return cell


def inference_rows(cell: dict, precision: str, speed: float = 1.0) -> list[dict]:
    _, _, ppl, prefill, decode = PRECISIONS[precision]
    rows = []
    for metric, med, unit in (("prefill_tokens_per_s", prefill * speed, "tokens/s"),
                              ("decode_tokens_per_s", decode * speed, "tokens/s"),
                              ("decode_bandwidth_gb_per_s", decode * speed * 0.1, "GB/s")):
        for stat, f in (("median", 1.0), ("p10", 0.9), ("p90", 1.07)):
            rows.append(_row(cell, "inference", metric, med * f, unit, stat))
    # live tensors as a 160-position decode of this model holds them (weights as stored, a
    # 160 x 30 layers x 2 x 192 KV cache in the dense dtype), and a peak a little above them
    per_weight, _, *_ = PRECISIONS[precision]
    dense = 2 if precision in ("fp16", "bf16") else 4
    weights = LIN * per_weight + (EMB + NORM) * dense
    kv = 2 * 30 * 192 * 159 * dense
    live = (("decode_live_weights_bytes", weights), ("decode_live_kv_cache_bytes", kv),
            ("decode_peak_bytes", 1.03 * (weights + kv)))
    for metric, value in live:
        rows.append(_row(cell, "inference", metric, value, "bytes"))
    for row in rows:
        if row["workload"] == "inference":
            row["protocol"] = "batch=1;prompt=128;new=32"
    rows.append(_row(cell, "perplexity", "perplexity", ppl, "ppl"))
    return rows


def footprint_rows(cell: dict, precision: str) -> list[dict]:
    per_weight, state, *_ = PRECISIONS[precision]
    dense = 2 if precision in ("fp16", "bf16") else 4
    quantized = per_weight < 2
    lin_bytes = LIN * (per_weight - state)
    metrics = {"bytes.embeddings": EMB * dense, "bytes.norms": NORM * dense,
               "bytes.buffers": 256.0, "params.total": EMB + LIN + NORM}
    if quantized:
        metrics.update({"bytes.quantized_weights": lin_bytes, "bytes.quant_state": LIN * state,
                        "params.quantized_weights": LIN,
                        "saving_vs_fp32.quantized_layers": 4 / per_weight,
                        "saving_vs_fp16.quantized_layers": 2 / per_weight})
    else:
        metrics["bytes.linear_weights"] = lin_bytes
    total = EMB * dense + NORM * dense + LIN * per_weight
    metrics.update({"bytes.total": total + 256, "bits_per_param": 8 * total / (EMB + LIN + NORM),
                    "saving_vs_fp32.model": 4 * (EMB + LIN + NORM) / total,
                    "saving_vs_fp16.model": 2 * (EMB + LIN + NORM) / total})
    if precision == "nf4-dq":
        metrics.update({"dq_saving_bits.block_constants": 0.3732, "dq_saving_bits.total": 0.357})
    return [_row(cell, "footprint", m, v, "bytes") for m, v in metrics.items()]


def training_rows(cell: dict, precision: str, rank: int | None) -> list[dict]:
    per_weight = PRECISIONS[precision][0]
    trainable = 8 * rank * 576 * 30 if rank else EMB + LIN + NORM
    frozen = (EMB + LIN) * per_weight if rank else 0
    mem = {"mem.frozen_weights": frozen, "mem.adapter_params": 4 * trainable if rank else 0,
           "mem.gradients": 4 * trainable, "mem.optimizer_state": 8 * trainable,
           "mem.activations": 1.2e9}
    peak = sum(mem.values()) + (0 if rank else 4 * trainable)
    rows = [_row(cell, "training", m, v, "bytes") for m, v in mem.items()]
    # the training workload reports activations twice: saved tensors, then process growth
    rows.append(_row(cell, "training", "mem.activations", 3.3e9, "bytes"))
    rows += [_row(cell, "training", "train_peak_bytes", peak, "bytes"),
             _row(cell, "training", "trainable_fraction", trainable / (EMB + LIN + NORM)),
             _row(cell, "training", "trainable_params", trainable, "count"),
             _row(cell, "perplexity", "perplexity", PRECISIONS[precision][2] * 0.9, "ppl")]
    for stat, f in (("median", 1.0), ("p10", 0.9), ("p90", 1.1)):
        speed = (160 if rank else 90) / (1 + (rank or 0) / 64) / (2 if per_weight < 1 else 1)
        rows.append(_row(cell, "training", "train_tokens_per_s", speed * f, "tokens/s", stat))
    return rows


def results_table(device: str = "cpu", *, training: bool = True, failures: bool = True,
                  accuracy: bool = True) -> pd.DataFrame:
    """A full matrix: every precision, LoRA ranks, a skipped tf32, an oom and an error cell."""
    rows: list[dict] = []
    speed = 1.0 if device == "cpu" else 40.0
    for precision in PRECISIONS:
        cell = _cell(precision, device=device)
        rows += footprint_rows(cell, precision) + inference_rows(cell, precision, speed)
        if accuracy:
            acc = 0.62 - 0.01 * PRECISIONS[precision][2] + 0.1
            rows.append(_row(cell, "lmeval", "acc.harness_capitals", acc, "fraction"))
    if training:
        for precision in ("fp32", "bf16", "int8", "nf4-dq"):
            for rank in (4, 8, 16, 64):
                cell = _cell(precision, f"lora-r{rank}", device=device)
                rows += training_rows(cell, precision, rank)
        rows += training_rows(_cell("fp32", "full", device=device), "fp32", None)
    if failures:
        rows.append(_row(_cell("tf32", status="skipped", device=device), None, None, None,
                         status="skipped", error="tf32 needs CUDA compute capability >= 8.0"))
        rows.append(_row(_cell("bf16", "full", status="oom", device=device), None, None, None,
                         status="oom", error="CUDA out of memory. Tried to allocate 2.00 GiB"))
        rows.append(_row(_cell("fp4-dq", status="error", device=device), None, None, None,
                         status="error", error="RuntimeError: kernel crashed"))
    frame = pd.DataFrame(rows)
    frame["experiment"] = f"hand-{device}"
    return frame


@pytest.fixture()
def make_table() -> Any:
    """The table builder, so tests build the variant they need."""
    return results_table


def write_results(directory: Any, frame: pd.DataFrame) -> Any:
    """Store ``frame`` as a collected results directory (results.parquet)."""
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(directory / "results.parquet", index=False)
    return directory


@pytest.fixture()
def results_dir(tmp_path: Any) -> Any:
    return write_results(tmp_path / "cpu", results_table("cpu"))


@pytest.fixture()
def two_results_dirs(tmp_path: Any) -> list[Any]:
    return [write_results(tmp_path / "cpu", results_table("cpu")),
            write_results(tmp_path / "gpu", results_table("cuda", training=False))]


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One report over a CPU and a GPU run, built once: rendering is the slow part."""
    from harness.commands.report import make_report

    root = tmp_path_factory.mktemp("report")
    dirs = [write_results(root / "cpu", results_table("cpu")),
            write_results(root / "gpu", results_table("cuda", training=False))]
    make_report(dirs, out=root / "out")
    return root / "out"
