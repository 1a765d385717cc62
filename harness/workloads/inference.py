"""Prefill and decode throughput, the bandwidth decode achieves, and each phase's peak memory.

Both phases are timed through the same greedy ``generate`` a user calls, so they compute the
same logits (``generate`` computes them at the last position only; a standalone forward would
compute all positions and overstate prefill time). Prefill: ``generate`` of one new token over
``batch_size x prompt_len`` corpus tokens (the prefill forward plus choosing the first token).
Decode: ``generate`` of exactly ``new_tokens`` tokens (``min_new_tokens == max_new_tokens``),
minus the median prefill time, so decode tokens/s is
``batch x (new_tokens - 1) / (generate time - median prefill time)``. Where that difference is
not above the prefill timings' own spread (max - min), it is noise, not decode: the decode rows
are then ``skipped`` with the times, never an absurd rate. Bandwidth achieved is the
stored weight bytes read once per decode step.
"""

from __future__ import annotations

from typing import Any

from harness.data.tokens import corpus_tokens
from harness.measure import allocator
from harness.measure.memory import phase_rows, track_phase
from harness.measure.timing import quantile, summary_rows, time_call
from harness.workloads.footprint import inventory


def _prompts(tokenizer: Any, settings: Any, device: Any) -> Any:
    ids = corpus_tokens(tokenizer)
    need = settings.batch_size * settings.prompt_len
    if len(ids) < need:
        raise ValueError(f"corpus has {len(ids)} tokens; the prompts need {need}")
    return ids[:need].view(settings.batch_size, settings.prompt_len).to(device)


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    import torch

    model, device = loaded.model, cell.device
    model.eval()
    prompts = _prompts(loaded.tokenizer, settings, model.device)
    mask = torch.ones_like(prompts)
    pad = loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id
    n_new = settings.new_tokens

    def generate(n: int) -> None:
        out = model.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
        )
        assert out.shape[1] == prompts.shape[1] + n

    def prefill() -> None:
        generate(1)

    def decode() -> None:
        generate(n_new)

    with torch.inference_mode():
        # Memory first, one tracked call per phase, each after untimed warmups outside the
        # window: a first call's one-off work (bitsandbytes repacks 4-bit weights on CPU, lazy
        # imports) is not what each prefill or decode needs. What it leaves in the model is
        # still counted (live tensors at the phase start), and
        # ``*_peak_above_baseline_bytes`` shows everything held since loading.
        time_call(prefill, device, settings.warmup, 0)
        with track_phase(device, model) as prefill_mem:
            prefill()
        time_call(decode, device, settings.warmup, 0)
        with track_phase(device, model) as decode_mem:
            decode()
        kv_prefill, kv_decode = kv_cache_bytes(model, prompts, mask, n_new, pad)
        # Then the timed calls, with the allocator's timing settings, each phase after at least
        # one untimed call: it grows the heap that the timed calls reuse.
        warm = max(1, settings.warmup)
        with allocator.timing_window():
            t_prefill = time_call(prefill, device, warm, settings.repeats)
            t_generate = time_call(decode, device, warm, settings.repeats)
    _add_kv(prefill_mem, kv_prefill)
    _add_kv(decode_mem, kv_decode)
    return _rows(loaded, settings, t_prefill, t_generate, prefill_mem, decode_mem)


def kv_cache_bytes(model: Any, prompts: Any, mask: Any, n_new: int, pad: int) -> tuple[int, int]:
    """Live bytes of the KV cache after the prompt and after generating ``n_new`` tokens,
    counted from the cache's tensors (one untimed extra run of each)."""
    from harness.measure.training_memory import tensor_bytes

    def cache_tensors(cache: Any) -> list[Any]:
        layers = getattr(cache, "layers", None)
        if layers is not None:  # transformers' Cache: one layer object per decoder layer
            pairs = [(layer.keys, layer.values) for layer in layers]
        else:  # legacy tuple of (key, value) per layer
            pairs = list(cache)
        return [t for pair in pairs for t in pair if t is not None]

    first = model(input_ids=prompts, attention_mask=mask, use_cache=True).past_key_values
    out = model.generate(
        input_ids=prompts,
        attention_mask=mask,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        do_sample=False,
        pad_token_id=pad,
        return_dict_in_generate=True,
    )
    return tensor_bytes(cache_tensors(first)), tensor_bytes(cache_tensors(out.past_key_values))


def _add_kv(mem: Any, kv: int) -> None:
    """The KV cache as a live category, and the rest of the growth as activations/workspace."""
    mem.put("live_kv_cache_bytes", kv, "live-tensors of the cache at phase end")
    if mem.get("peak_above_start_bytes") is not None:
        mem.put(
            "activations_and_workspace_bytes",
            max(0, mem["peak_above_start_bytes"] - kv),
            f"{mem.methods['peak_above_start_bytes']} minus KV cache",
        )


def _rows(loaded, settings, t_prefill, t_generate, prefill_mem, decode_mem) -> list[dict]:
    batch, n_new = settings.batch_size, settings.new_tokens
    prefill_tps = [batch * settings.prompt_len / t for t in t_prefill]
    protocol = f"batch={batch};prompt={settings.prompt_len};new={n_new}"
    timed = f"timed after the memory calls ({allocator.describe('timing')})"
    rows = [
        *_with_method(summary_rows("prefill_tokens_per_s", prefill_tps, "tokens/s"), timed),
        *_decode_rows(loaded, settings, t_prefill, t_generate, timed),
        *_with_method(summary_rows("generate_time_s", t_generate, "s"), timed),
        *phase_rows("prefill", prefill_mem),
        *phase_rows("decode", decode_mem),
    ]
    return [{**r, "protocol": protocol} for r in rows]


def _with_method(rows: list[dict], method: str) -> list[dict]:
    return [{**r, "method": method} for r in rows]


def _decode_rows(loaded, settings, t_prefill, t_generate, timed: str) -> list[dict]:
    """Decode tokens/s and bandwidth, or skipped rows where the decode time is noise."""
    batch, n_new = settings.batch_size, settings.new_tokens
    prefill_median = quantile(t_prefill, 0.5)
    decode_s = [t - prefill_median for t in t_generate]
    noise = max(t_prefill) - min(t_prefill)
    if min(decode_s) <= 0 or quantile(decode_s, 0.5) <= noise:
        why = (
            f"decode time not measurable: generate({n_new}) took {_times(t_generate)} s against "
            f"a median prefill of {prefill_median:.4g} s (spread {noise:.2g} s); "
            "raise new_tokens"
        )
        return [
            {"metric": m, "unit": u, "value": None, "status": "skipped", "error": why}
            for m, u in (("decode_tokens_per_s", "tokens/s"), ("decode_bandwidth_gb_per_s", "GB/s"))
        ]
    decode_tps = [batch * (n_new - 1) / s for s in decode_s]
    weight_bytes = sum(e.nbytes for e in inventory(loaded.model) if e.category != "buffers")
    bandwidth = [weight_bytes * tps / batch / 1e9 for tps in decode_tps]
    return _with_method(
        [
            *summary_rows("decode_tokens_per_s", decode_tps, "tokens/s"),
            *summary_rows("decode_bandwidth_gb_per_s", bandwidth, "GB/s"),
        ],
        timed,
    )


def _times(samples: list[float]) -> str:
    return "/".join(f"{t:.4g}" for t in samples)
