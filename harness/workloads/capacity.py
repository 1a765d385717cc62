"""Capacity: the largest batch (and sequence length) that fits a memory budget.

Each try runs one step at one size and measures its peak. ``inference``: a prefill pass as
``generate`` runs it (KV cache kept, logits of the last position only); ``training``: forward,
backward and an optimizer step at learning rate 0, so the model is left as it was.
Sizes double until a try does not fit, then bisect between the last fit and the first failure.
Every try is a row, so an out-of-memory try is a data point, not a failure of the cell. Next to
the measured capacity stands the analytic memory model's, for the same budget and bounds.

How the budget is held, named on every measured row:

* CUDA: the allocator is capped at the budget (``set_per_process_memory_fraction``), so a try
  that needs more raises out-of-memory; its peak is the allocator's maximum, weights included.
  The CUDA context itself is outside the allocator and outside the budget.
* CPU: no limit is enforced. An address-space limit (RLIMIT_AS) set at a try's start did not
  stop a tiny model's try that needed ten times the budget here: freed heap stays mapped and is
  reused without counting; and a forked child of a threaded torch process can deadlock. A try's
  peak is the model's stored bytes plus the resident high-water mark above the RSS at the try's
  start (freed heap returned to the system first); it fits when that is within the budget.
* Where the high-water mark cannot be reset, tries cannot be told apart: prediction only.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from harness.measure.memory import reset_hwm, track_phase

GB = 1e9
CPU_METHOD = (
    "cpu: stored weight bytes + VmHWM above RSS at try start; "
    "measured-peak-vs-budget, no limit enforced"
)
CUDA_METHOD = (
    "cuda: allocated bytes at try start + allocator peak above it; "
    "limit enforced by set_per_process_memory_fraction"
)
NO_RESET = "prediction only: VmHWM cannot be reset here, so a try's own peak cannot be measured"


@dataclass
class Try:
    """One size tried: its measured peak (None where nothing was measured) and the verdict."""

    size: int
    peak: int | None
    fits: bool
    oom: bool = False


def search(
    attempt: Callable[[int], Try], start: int, limit: int, max_tries: int, bisect: bool
) -> tuple[list[Try], int, int | None]:
    """Double from ``start`` until a try fails or ``limit``; then bisect the gap.

    Returns the tries, the largest size that fit (0: none) and the smallest size above it that
    did not (None: no failure within the bounds and tries).
    """
    tries: list[Try] = []
    fit, fail, size = 0, None, start
    while len(tries) < max_tries:
        tries.append(attempt(size))
        if not tries[-1].fits:
            fail = size
            break
        fit = size
        if size >= limit:
            break
        size = min(2 * size, limit)
    while bisect and fail is not None and fail - fit > 1 and len(tries) < max_tries:
        mid = (fit + fail) // 2
        tries.append(attempt(mid))
        fit, fail = (mid, fail) if tries[-1].fits else (fit, mid)
    return tries, fit, fail


def predicted_capacity(peak_at: Callable[[int], int], budget: int, limit: int) -> int:
    """Largest size in [1, limit] whose predicted peak is within budget (0: none); the
    prediction grows with the size, so a binary search over every integer finds it."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peak_at(mid) <= budget else (lo, mid - 1)
    return lo


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc)
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        "out of memory" in text or "can't allocate memory" in text
    )


@contextmanager
def _frozen_gc() -> Iterator[None]:
    """Move every object alive now (the loaded model, the libraries) out of the collector's
    view, so the collections before each try scan only what tries leave: seconds saved per try."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Stepper:
    """Runs one inference or training step at a given batch x seq, leaving the model as is."""

    def __init__(self, loaded: Any, cell: Any, mode: str):
        self.model, self.mode, self.device = loaded.model, mode, cell.device
        self.vocab = self.model.get_input_embeddings().num_embeddings
        self.training = cell.workloads.training
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if mode == "training":  # an earlier eval forward may have repacked 4-bit layers
            from harness.schemes.bnb import restore_trainable_layout

            restore_trainable_layout(self.model)
        # a serving prefill (generate) keeps only the last position's logits
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.prefill_kw: dict[str, Any] = {"use_cache": True}
        if keep:
            self.prefill_kw["logits_to_keep"] = 1

    def ids(self, batch: int, seq: int) -> Any:
        """Token values do not change memory; fixed random ids need no corpus of any size."""
        import torch

        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, self.vocab, (batch, seq), generator=gen).to(self.model.device)

    def __call__(self, batch: int, seq: int) -> None:
        import torch

        ids = self.ids(batch, seq)
        if self.mode == "inference":
            with torch.inference_mode():
                out = self.model(input_ids=ids, **self.prefill_kw)
            del out
            return
        from harness.workloads.training import make_optimizer

        optimizer = make_optimizer(self.training.optimizer, self.params, 0.0)
        self.model.train()
        try:
            self.model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            optimizer.step()  # allocates the optimizer state; lr 0 leaves parameters as they are
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.model.eval()


class Meter:
    """Measures one try's peak, weights included, and judges it against the budget."""

    def __init__(self, loaded: Any, device: str, budget: int):
        from harness.workloads.footprint import inventory

        self.device, self.budget = device, budget
        self.method = CUDA_METHOD if device == "cuda" else CPU_METHOD
        self.weights = sum(e.nbytes for e in inventory(loaded.model))

    def _start_bytes(self) -> int:
        if self.device == "cuda":
            import torch

            return torch.cuda.memory_allocated()
        return self.weights  # the RSS also holds the interpreter and libraries, not the model

    def attempt(self, step: Callable[[int, int], None], size: int, batch: int, seq: int) -> Try:
        start, oom = self._start_bytes(), False
        with track_phase(self.device) as mem:  # hands freed memory back before the try
            try:
                step(batch, seq)
            except Exception as exc:  # an out-of-memory try is a result; anything else is not
                if not _is_oom(exc):
                    raise
                oom = True
        peak = start + int(mem["peak_above_start_bytes"])
        return Try(size, peak, fits=not oom and peak <= self.budget, oom=oom)


@contextmanager
def _budget_limit(device: str, budget: int) -> Iterator[None]:
    """On CUDA, cap the caching allocator at the budget for the search, then lift the cap."""
    if device != "cuda":
        yield
        return
    import torch

    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def _predictor(loaded: Any, cell: Any, mode: str) -> tuple[Callable[[int, int], int], str]:
    """(batch, seq) -> predicted peak bytes of this cell, and the name of the term used."""
    from harness.memory_model import Workload, model_shape, predict

    shape = model_shape(loaded.model.config)
    term = "training_peak" if mode == "training" else "inference_peak"
    ckpt = mode == "training" and cell.workloads.training.gradient_checkpointing
    extra: dict[str, Any] = {}
    targets = cell.adapter_options.get("target_modules", "all-linear")
    if targets == "qv":
        extra["lora_targets"] = ["q_proj", "v_proj"]
    elif isinstance(targets, list | tuple):
        extra["lora_targets"] = list(targets)

    def peak_at(batch: int, seq: int) -> int:
        work = Workload(
            batch=batch, seq=seq, train_batch=batch, train_seq=seq, checkpointing=ckpt, **extra
        )
        return getattr(
            predict(shape, cell.precision, cell.precision_options, cell.adapter, work), term
        )

    return peak_at, term


@dataclass
class Axis:
    """One searched dimension: its bounds and how a size maps to (batch, seq)."""

    name: str
    start: int
    limit: int
    dims: Callable[[int], tuple[int, int]]
    fixed: str


def _axes(settings: Any, config: Any) -> list[Axis]:
    max_pos = getattr(config, "max_position_embeddings", None) or settings.max_seq
    seq_limit = min(settings.max_seq, max_pos)
    known = {
        "batch": Axis(
            "batch",
            1,
            settings.max_batch,
            lambda n: (n, settings.seq_len),
            f"seq={settings.seq_len}",
        ),
        "seq": Axis(
            "seq",
            min(settings.start_seq, seq_limit),
            seq_limit,
            lambda n: (settings.batch_size, n),
            f"batch={settings.batch_size}",
        ),
    }
    return [known[name] for name in settings.axes]


def _axis_rows(
    axis: Axis,
    settings: Any,
    meter: Meter | None,
    step: Stepper,
    predict_at: tuple[Callable[[int, int], int], str],
) -> list[dict[str, Any]]:
    peak_at, term = predict_at
    budget = int(settings.budget_gb * GB)
    protocol = (
        f"mode={settings.mode};axis={axis.name};{axis.fixed};budget_gb={settings.budget_gb};"
        f"start={axis.start};limit={axis.limit}"
    )
    predicted = predicted_capacity(lambda n: peak_at(*axis.dims(n)), budget, axis.limit)
    how = f"memory_model.{term}"
    metric = f"capacity_{axis.name}"
    rows = [
        {
            "metric": metric,
            "value": float(predicted),
            "unit": axis.name,
            "method": f"prediction: {how}" if meter else f"{NO_RESET}; {how}",
        }
    ]
    if meter is None:
        return [{**r, "protocol": protocol} for r in rows]
    tries, fit, fail = search(
        lambda n: meter.attempt(step, n, *axis.dims(n)),
        axis.start,
        axis.limit,
        settings.max_tries,
        settings.bisect,
    )
    for k, t in enumerate(tries):
        rows.extend(_try_rows(k, t, axis, meter.method, peak_at(*axis.dims(t.size)), how))
    rows.append({"metric": metric, "value": float(fit), "unit": axis.name, "method": meter.method})
    if fail is not None:
        rows.append(
            {
                "metric": f"{metric}_first_failure",
                "value": float(fail),
                "unit": axis.name,
                "method": meter.method,
            }
        )
    return [{**r, "protocol": ";".join(filter(None, (protocol, r.get("protocol"))))} for r in rows]


def _try_rows(
    k: int, t: Try, axis: Axis, method: str, predicted: int, how: str
) -> list[dict[str, Any]]:
    batch, seq = axis.dims(t.size)
    where = f"try={k};batch={batch};seq={seq}"
    measured = {"method": method, "protocol": where}
    return [
        {"metric": "try_peak_bytes", "value": float(t.peak or 0), "unit": "bytes", **measured},
        {"metric": "try_fits", "value": float(t.fits), "unit": "bool", **measured},
        {"metric": "try_oom", "value": float(t.oom), "unit": "bool", **measured},
        {
            "metric": "try_predicted_peak_bytes",
            "value": float(predicted),
            "unit": "bytes",
            "method": f"prediction: {how}",
            "protocol": where,
        },
    ]


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    from harness.adapter_names import parse_adapter

    if settings.mode == "training" and parse_adapter(cell.adapter)[0] == "none":
        reason = f"adapter '{cell.adapter}' trains nothing; training capacity needs lora-rN or full"
        return [{"metric": "capacity", "status": "skipped", "error": reason}]
    step = Stepper(loaded, cell, settings.mode)
    if settings.mode == "training" and cell.workloads.training.gradient_checkpointing:
        from harness.workloads.training import enable_checkpointing

        enable_checkpointing(loaded.model)
    budget = int(settings.budget_gb * GB)
    measurable = cell.device == "cuda" or reset_hwm()
    meter = Meter(loaded, cell.device, budget) if measurable else None
    predict_at = _predictor(loaded, cell, settings.mode)
    rows = [
        {
            "metric": "budget_bytes",
            "value": float(budget),
            "unit": "bytes",
            "method": "setting: budget_gb x 1e9",
        }
    ]
    axes = _axes(settings, loaded.model.config)
    step(*axes[0].dims(axes[0].start))  # first use allocates once (autograd, kernels): not a try
    with _frozen_gc(), _budget_limit(cell.device if meter else "cpu", budget):
        for axis in axes:
            rows.extend(_axis_rows(axis, settings, meter, step, predict_at))
    return rows
