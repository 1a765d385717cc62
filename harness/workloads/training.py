"""Fine-tuning steps: throughput, loss, trainable parameters and where the memory goes.

Runs ``steps`` optimizer steps of ``grad_accum`` micro-batches on consecutive ``seq_len``-token
windows of the builtin corpus' *train* split (never the evaluation split), with a constant
learning rate. The first two steps are the memory window (allocator memory settings); the later
ones run with the allocator's timing settings, and throughput statistics leave out the window,
the step after it and the first ``warmup_steps`` steps. Memory is
reported twice: as a breakdown counted from live tensors (frozen weights, quantization state,
adapter, gradients, optimizer state, activations saved for backward) and as the phase figure
``train_peak_bytes`` (live model tensors + process growth: VmHWM on CPU, the allocator on
CUDA), so each can be checked against the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.measure import allocator
from harness.measure import training_memory as tm
from harness.measure.memory import phase_rows, track_phase
from harness.measure.timing import summary_rows, sync_device
from harness.optimizers import PAGED, optimizer_unavailable
from harness.schemes.bnb import restore_trainable_layout


def make_optimizer(name: str, params: list[Any], lr: float) -> Any:
    """torch AdamW, or a bitsandbytes paged AdamW (CUDA only). No weight decay."""
    reason = optimizer_unavailable(name, "cuda" if params and params[0].is_cuda else "cpu")
    if reason:
        raise ValueError(reason)
    if name in PAGED:
        import bitsandbytes as bnb

        return getattr(bnb.optim, PAGED[name])(params, lr=lr, weight_decay=0.0)
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def enable_checkpointing(model: Any) -> None:
    """Reentrant checkpointing of every decoder layer: a checkpointed layer keeps only its input
    for backward, which the saved-tensors measure sees exactly."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    enable = enable or base.gradient_checkpointing_enable
    enable({"use_reentrant": True})
    if getattr(base, "_require_grads_hook", None) is None:
        base.enable_input_require_grads()  # frozen embeddings: let gradients reach the layers


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    peak: Any = None


MEMORY_STEPS = 2
"""Steps inside the memory window: step 0 creates the optimizer state, step 1 is the first
with it held through forward and backward; later steps repeat step 1."""


def train(model: Any, batch: Callable[[int], Any], settings: Any, device: str) -> TrainResult:
    """``settings.steps`` optimizer steps; ``batch(k)`` is the k-th micro-batch of token ids.

    Step 0 is also the measured step: saved tensors of its first micro-batch, gradient bytes
    after its backward, optimizer state after its update. The phase peak (the model's live
    tensors plus the process growth above the phase start) covers the first
    :data:`MEMORY_STEPS` steps, with the allocator's memory settings; the steps after them run
    with its timing settings, and only those are timed (see :func:`timed_steps`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    restore_trainable_layout(model)  # an earlier eval forward may have repacked 4-bit layers
    if settings.gradient_checkpointing:
        enable_checkpointing(model)
    optimizer = make_optimizer(settings.optimizer, params, settings.lr)
    meter = tm.SavedTensorMeter(model)
    model.train()
    out = TrainResult()
    state = {"paged": 0}

    def step(k: int) -> None:
        sync_device(device)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for micro in range(settings.grad_accum):
            ids = batch(k * settings.grad_accum + micro)
            if k == 0 and micro == 0:
                with meter.measure():
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                meter.add_graph(loss)
            else:
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            (loss / settings.grad_accum).backward()
            loss_sum += float(loss.detach())
        if k == 0:
            sync_device(device)
            out.memory["mem.gradients"] = tm.gradient_bytes(params)
            out.memory["mem.activations"] = meter.bytes
        optimizer.step()
        if k == 0:
            out.memory["mem.optimizer_state"] = tm.optimizer_state_bytes(optimizer)
            state["paged"] = tm.optimizer_state_bytes(optimizer, paged_only=True)
        optimizer.zero_grad(set_to_none=True)
        sync_device(device)
        out.step_s.append(time.perf_counter() - t0)
        out.losses.append(loss_sum / settings.grad_accum)

    window = min(settings.steps, MEMORY_STEPS)
    with track_phase(device, model) as peak:
        for k in range(window):
            step(k)
    with allocator.timing_window():
        for k in range(window, settings.steps):
            step(k)
    paged = state["paged"]
    if device == "cuda" and paged and peak.get("peak_bytes") is not None:
        # paged state lives in managed memory, outside the allocator's peak: add it, say so
        peak.put(
            "peak_bytes",
            peak["peak_bytes"] + paged,
            f"{peak.method} + paged optimizer state ({paged} B, CUDA managed memory)",
        )
    out.peak = peak
    model.eval()
    return out


def timed_steps(settings: Any) -> tuple[int | None, str]:
    """``(first timed step, method)``: timing starts after the warmup steps, the memory window
    and one more step (it grows the heap the timed steps reuse); ``(None, why)`` when no step
    is left."""
    first = max(settings.warmup_steps, MEMORY_STEPS + 1)
    if first >= settings.steps:
        return None, (
            f"no step to time: steps {settings.steps} <= {first} (warmup_steps, the "
            f"{MEMORY_STEPS}-step memory window and one heap warm-up step); raise steps"
        )
    where = allocator.describe("timing")
    return first, f"steps {first}.. timed after the memory window ({where})"


def _throughput_rows(step_s: list[float], first: int | None, method: str, tokens: int) -> list:
    if first is None:
        return [
            {"metric": "train_tokens_per_s", "unit": "tokens/s", "value": None,
             "status": "skipped", "error": method}
        ]  # fmt: skip
    rates = [tokens / s for s in step_s[first:]]
    return [{**r, "method": method} for r in summary_rows("train_tokens_per_s", rates, "tokens/s")]


def parameter_rows(model: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Trainable / total logical parameters and the static memory parts."""
    from harness.workloads.footprint import inventory

    trained = [p for p in model.parameters() if p.requires_grad]
    entries = inventory(model)
    total = sum(e.params for e in entries)
    n_trained = sum(p.numel() for p in {tm.storage_key(p): p for p in trained}.values())
    trained_bytes = tm.tensor_bytes(trained)
    state = sum(e.nbytes for e in entries if e.category == "quant_state")
    frozen = sum(e.nbytes for e in entries) - trained_bytes - state
    rows = [
        {"metric": "trainable_params", "value": float(n_trained), "unit": "params"},
        {"metric": "total_params", "value": float(total), "unit": "params"},
        {"metric": "trainable_fraction", "value": n_trained / total, "unit": "fraction"},
    ]
    return rows, {
        "mem.frozen_weights": frozen,
        "mem.quant_state": state,
        "mem.adapter_params": trained_bytes,
    }


def corpus_batches(tokenizer: Any, settings: Any, device: Any) -> Callable[[int], Any]:
    """Micro-batch k: ``batch_size`` consecutive train-split windows, wrapping at the end."""
    from harness.data.tokens import corpus_tokens

    ids = corpus_tokens(tokenizer, "builtin", "train")
    n_seq = len(ids) // settings.seq_len
    if n_seq < settings.batch_size:
        raise ValueError(
            f"train split has {len(ids)} tokens, fewer than one batch of "
            f"{settings.batch_size} x {settings.seq_len}"
        )
    windows = ids[: n_seq * settings.seq_len].view(n_seq, settings.seq_len)

    def batch(k: int) -> Any:
        rows = [(k * settings.batch_size + j) % n_seq for j in range(settings.batch_size)]
        return windows[rows].to(device)

    return batch


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    from harness.adapters import save_adapter
    from harness.config import parse_adapter
    from harness.data.tokens import corpus_info

    kind, _ = parse_adapter(cell.adapter)
    if kind == "none":
        return []  # nothing is trainable: the untrained baseline of the matrix
    model = loaded.model
    # Before counting the frozen bytes: an inference forward earlier in this cell leaves
    # bitsandbytes' 4-bit layers in a CPU layout its autograd cannot train through (see
    # restore_trainable_layout); train() asks again for callers that skip run().
    restored = restore_trainable_layout(model)
    param_rows, static = parameter_rows(model)
    batch = corpus_batches(loaded.tokenizer, settings, model.device)
    result = train(model, batch, settings, cell.device)
    tokens = settings.batch_size * settings.seq_len * settings.grad_accum
    first, timing = timed_steps(settings)
    info = corpus_info("builtin", "train")
    protocol = (
        f"steps={settings.steps};warmup={settings.warmup_steps};batch={settings.batch_size};"
        f"seq={settings.seq_len};grad_accum={settings.grad_accum};lr={settings.lr};"
        f"optimizer={settings.optimizer};grad_ckpt={settings.gradient_checkpointing};"
        f"corpus={info.name}:{info.split}@{info.sha256[:12]}"
    )
    if kind == "lora":  # what the memory model needs to predict this cell's activations
        opts = cell.adapter_options
        targets = opts.get("target_modules", "all-linear")
        targets = targets if isinstance(targets, str) else ",".join(targets)
        protocol += f";lora_dropout={opts.get('dropout', 0.0)};lora_targets={targets}"
    mem = {**static, **result.memory}
    parts = (
        "mem.frozen_weights",
        "mem.quant_state",
        "mem.adapter_params",
        "mem.gradients",
        "mem.optimizer_state",
    )
    rows = [
        *_throughput_rows(result.step_s, first, timing, tokens),
        {"metric": "loss_start", "value": result.losses[0], "unit": "nats/token"},
        {"metric": "loss_end", "value": result.losses[-1], "unit": "nats/token"},
        *param_rows,
        *(
            {"metric": m, "value": float(mem[m]), "unit": "bytes", "method": "live-tensors"}
            for m in parts
        ),
        {
            "metric": "mem.activations",
            "value": float(mem["mem.activations"]),
            "unit": "bytes",
            "method": "saved-tensors",
        },
        {
            "metric": "mem.accounted",
            "unit": "bytes",
            "method": "live-tensors+saved-tensors",
            "value": float(sum(mem[m] for m in (*parts, "mem.activations"))),
        },
        *phase_rows("train", result.peak),
    ]
    if restored:
        rows.append(
            {
                "metric": "bnb_cpu_layers_unpacked",
                "value": float(restored),
                "unit": "layers",
                "method": "4-bit layers an earlier forward repacked for CPU inference, "
                "converted back before training (absmax keeps the repack's bf16 rounding)",
            }
        )
    if settings.save_adapter and kind == "lora":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            size = save_adapter(model, tmp)
        rows.append(
            {
                "metric": "adapter_file_bytes",
                "value": float(size),
                "unit": "bytes",
                "method": "safetensors",
            }
        )
    return [{**r, "protocol": protocol} for r in rows]
