"""Fine-tuning that shows what it buys: held-out quality before and after, on the same items.

Order inside a cell:

1. score the untrained model on the held-out items (completion loss, greedy exact match) and
   on a few corpus windows (forgetting);
2. train ``steps`` optimizer steps; step 0 is the tracked memory phase (``finetune_peak_*``,
   the allocator's memory settings, after freed memory is handed back; its
   ``heap_free_at_start`` row says what the scoring before it left in the heap), everything
   else runs with the timing settings; the held-out curve every ``eval_every`` steps and an
   early stop on divergence;
3. score the fine-tuned model on the same items; the paired per-item change is the effect;
4. save the adapter, load it into a freshly loaded base of the same precision and score that;
   merge it there (peft's ``merge_and_unload``: for bitsandbytes bases it dequantizes, adds the
   update and re-quantizes) and score the merged model. The cell's own model is left as
   trained, so later workloads (perplexity) see the fine-tuned adapter.

A run that diverged is the row ``finetune_outcome`` with status ``diverged``; one whose held-out
loss did not fall by ``min_improvement`` has status ``no_learning``. Either makes the cell's
status the same, never ``ok``.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import nullcontext
from typing import Any

from harness.data.instructions import DataUnavailable, InstructionData, load_instructions, spread
from harness.measure import allocator
from harness.measure.memory import phase_rows, track_phase
from harness.schemes.bnb import keep_trainable_layout
from harness.stats import bootstrap_mean, paired_bootstrap, perplexity_interval
from harness.workloads import sft

HELD = (
    "bitsandbytes 4-bit layers kept in their canonical layout (no CPU inference repack), so "
    "training, DoRA's weight norms and peft's merge read the weights the scores used"
)
EVAL_ORDER_SEED = 0
"""Held-out items are drawn in one fixed order, so every cell scores the same items."""


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def protocol(data: InstructionData, settings: Any, n_eval: int, cell: Any) -> str:
    lr = settings.full_lr if cell.adapter == "full" else settings.lr
    return (
        f"data={data.name};split={data.split_rule}@{data.heldout_sha256[:12]};"
        f"eval_items={n_eval};template={settings.template};steps={settings.steps};"
        f"batch={settings.batch_size};grad_accum={settings.grad_accum};lr={lr};"
        f"schedule={settings.schedule};warmup={settings.warmup_steps};"
        f"max_grad_norm={settings.max_grad_norm};weight_decay={settings.weight_decay};"
        f"completion_only={settings.completion_only};optimizer={settings.optimizer};"
        f"grad_ckpt={settings.gradient_checkpointing}"
    )


def _row(metric: str, value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "value": value, "unit": unit, **extra}


def _interval_row(metric: str, samples: list[float], unit: str, method: str) -> dict[str, Any]:
    ci = bootstrap_mean(samples)
    return _row(metric, ci.estimate, unit, n=ci.n, ci_low=ci.low, ci_high=ci.high,
                samples=samples, method=method)  # fmt: skip


GREEDY = (
    "greedy decoding reproduces the answer and its end token (teacher-forced argmax at every "
    "completion position); 95% bootstrap over items"
)


def _quality_rows(stage: str, scores: sft.Scores) -> list[dict[str, Any]]:
    loss = "per-item mean completion NLL; 95% bootstrap over items"
    return [
        _interval_row(f"heldout_loss_{stage}", scores.loss, "nats/token", loss),
        _interval_row(f"heldout_exact_match_{stage}", scores.exact, "fraction", GREEDY),
    ]


def _change_rows(name: str, before: list[float], after: list[float], unit: str) -> list:
    """``after - before`` over the same items, paired."""
    cmp = paired_bootstrap(before, after)
    method = "paired bootstrap over the same items (after - before)"
    return [_row(name, cmp.difference, unit, n=cmp.n, ci_low=cmp.low, ci_high=cmp.high,
                 method=method)]  # fmt: skip


def corpus_scores(model: Any, tokenizer: Any, settings: Any) -> list[float]:
    """Per-window mean NLL of the first ``corpus_windows`` windows of the corpus test split."""
    from harness.data.tokens import corpus_tokens
    from harness.workloads.perplexity import window_nlls, windows_of

    if not settings.corpus_windows:
        return []
    ids = corpus_tokens(tokenizer, "builtin", "test")
    width = settings.corpus_window
    windows = windows_of(ids, width, width * settings.corpus_windows)
    was_training = model.training
    per_window, _, _ = window_nlls(model, windows, 1)
    model.train(was_training)
    return per_window


def _corpus_rows(stage: str, nlls: list[float], settings: Any) -> list[dict[str, Any]]:
    if not nlls:
        return []
    from harness.data.tokens import corpus_info

    info = corpus_info("builtin", "test")
    ci = perplexity_interval(nlls)
    width = settings.corpus_window
    proto = (
        f"token-windows;window={width};tokens={len(nlls) * width};"
        f"corpus={info.name}:{info.split}@{info.sha256[:12]}"
    )
    value = math.exp(sum(nlls) / len(nlls))
    return [_row(f"corpus_perplexity_{stage}", value, "ppl", n=len(nlls), ci_low=ci.low,
                 ci_high=ci.high, samples=nlls, protocol_override=proto)]  # fmt: skip


def _outcome(run: sft.Run, before: float, after: float, settings: Any) -> dict[str, Any]:
    drop, ratio = settings.min_improvement, settings.divergence_ratio
    method = (
        f"held-out loss after - before; no_learning below a {drop:.0%} drop, diverged above "
        f"{ratio}x the start or on NaN/inf"
    )
    row = _row("finetune_outcome", after - before, "nats/token", method=method)
    if run.stopped:
        return {**row, "status": "diverged", "error": run.stopped}
    if not after < before * (1 - drop):
        why = f"held-out loss {before:.4f} -> {after:.4f}: less than a {drop:.0%} drop"
        return {**row, "status": "no_learning", "error": why}
    return row


def _curve_rows(run: sft.Run) -> list[dict[str, Any]]:
    last = run.train_loss[-1] if run.train_loss else None
    steps = list(range(1, len(run.train_loss) + 1))
    return [
        _row("train_loss_curve", last, "nats/token", n=len(run.train_loss),
             samples=run.train_loss, steps=steps, lr=run.lr,
             method="completion loss of each optimizer step (all its micro-batches)"),
        _row("heldout_loss_curve", run.eval_loss[-1], "nats/token", n=len(run.eval_loss),
             samples=run.eval_loss, steps=run.eval_steps,
             method="mean completion NLL of the curve items (the first held-out items)"),
        _row("grad_norm_max", max(run.grad_norm) if run.grad_norm else None, "norm",
             method="largest total gradient norm before clipping"),
    ]  # fmt: skip


def _speed_rows(run: sft.Run) -> list[dict[str, Any]]:
    tokens = "prompt and completion tokens of every micro-batch, padding excluded"
    rows = [
        _row("finetune_steps", float(len(run.train_loss)), "steps"),
        _row("finetune_tokens", float(run.tokens), "tokens", method=tokens),
    ]
    timed = run.step_s[1:]  # step 0 is the tracked memory phase
    if timed:
        rate = run.tokens / len(run.step_s) * len(timed) / sum(timed)
        method = f"steps 1.. ({allocator.describe('timing')}); step 0 is the memory phase"
        rows.append(_row("finetune_tokens_per_s", rate, "tokens/s", n=len(timed), method=method))
    return rows


def _optimizer(params: list[Any], settings: Any, lr: float) -> Any:
    from harness.workloads.training import make_optimizer

    opt = make_optimizer(settings.optimizer, params, lr)
    for group in opt.param_groups:
        group["weight_decay"] = settings.weight_decay
    return opt


def train(loaded: Any, cell: Any, settings: Any, train_items: list, curve: list, start: float):
    """The training run; returns (run, phase result of step 0)."""
    from harness.workloads.training import enable_checkpointing

    model, pad = loaded.model, _pad_id(loaded.tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if settings.gradient_checkpointing:
        enable_checkpointing(model)
    lr = settings.full_lr if cell.adapter == "full" else settings.lr
    optimizer = _optimizer(params, settings, lr)
    batches = sft.micro_batches(train_items, settings.batch_size, cell.seed)

    def on_step(k: int) -> Any:
        return track_phase(cell.device, model) if k == 0 else nullcontext()

    def evaluate() -> float:
        return sft.score(model, curve, pad, settings.batch_eval).mean_loss

    with allocator.timing_window():  # step 0's tracked phase sets the memory settings itself
        run = sft.train_steps(model, params, optimizer, batches, settings, evaluate, start, pad,
                              on_step)  # fmt: skip
    return run, run.first_step


def _adapter_checks(
    loaded: Any, cell: Any, settings: Any, items: list, after: sft.Scores
) -> list[dict[str, Any]]:
    """Reload the saved adapter into a fresh base and merge it there; score both."""
    model = loaded.model
    if not hasattr(model, "peft_config"):
        why = (
            "full fine-tuning ships the whole model; reload and merge are checked for adapters"
            if cell.adapter == "full"
            else "the harness's QuantLinear adapters are not peft's: peft cannot reload them"
        )
        return [{"metric": m, "status": "skipped", "error": why}
                for m, on in (("heldout_loss_reloaded", settings.check_reload),
                              ("heldout_loss_merged", settings.check_merge)) if on]  # fmt: skip
    from peft import PeftModel

    from harness import models
    from harness.schemes import get_handler

    pad = _pad_id(loaded.tokenizer)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        handler = get_handler(cell.precision)
        fresh = handler.load(models.resolve(cell.model), handler.Options(**cell.precision_options),
                             cell.device)  # fmt: skip
        keep_trainable_layout(fresh.model)  # as the trained model was scored
        reloaded = PeftModel.from_pretrained(fresh.model, tmp)
        reloaded.eval()
        again = sft.score(reloaded, items, pad, settings.batch_eval)
        diff = max(abs(a - b) for a, b in zip(again.loss, after.loss, strict=True))
        if settings.check_reload:
            rows += _quality_rows("reloaded", again)
            method = (
                "largest per-item |reloaded - trained| held-out loss (peft save_pretrained, "
                "PeftModel.from_pretrained on a freshly loaded base)"
            )
            rows.append(_row("reload_max_item_loss_diff", diff, "nats/token", method=method))
        if settings.check_merge:
            quantized = fresh.storage == "quantized"
            merged = reloaded.merge_and_unload()
            scores = sft.score(merged, items, pad, settings.batch_eval)
            rows += _quality_rows("merged", scores)
            change = _change_rows("merge_loss_change", again.loss, scores.loss, "nats/token")
            how = (
                "dequantize, add the update, re-quantize (peft merge_and_unload)"
                if quantized
                else "dense weights += update (peft merge_and_unload)"
            )
            rows += [{**r, "method": f"{r['method']}; merge: {how}"} for r in change]
        del reloaded, fresh
    return rows


def run(loaded: Any, cell: Any, settings: Any) -> list[dict[str, Any]]:
    from harness.adapter_names import parse_adapter
    from harness.workloads.training import parameter_rows

    try:
        data = load_instructions(settings.data, settings.heldout_fraction)
    except DataUnavailable as exc:
        return [{"metric": "heldout_loss_before", "status": "skipped", "error": str(exc)}]
    tok, model = loaded.tokenizer, loaded.model
    held = keep_trainable_layout(model)  # every score and step of the cell on one 4-bit layout
    prep = [sft.tokenize(tok, e, settings.template, settings.max_seq_len, settings.completion_only)
            for e in spread(data.heldout, settings.eval_items, EVAL_ORDER_SEED)]  # fmt: skip
    curve = prep[: settings.curve_items]
    pad = _pad_id(tok)
    proto = protocol(data, settings, len(prep), cell)
    with allocator.timing_window():  # scoring is timing work; only step 0 tracks memory
        before = sft.score(model, prep, pad, settings.batch_eval)
        corpus_before = corpus_scores(model, tok, settings)
    rows = [*_quality_rows("before", before), *_corpus_rows("before", corpus_before, settings)]
    if held:
        rows.append(_row("kbit_layout_held_layers", float(held), "layers", method=HELD))
    kind, _ = parse_adapter(cell.adapter)
    if kind == "none":  # nothing trainable: the base model's figures at this precision
        return _finish(rows, proto)
    train_items = [sft.tokenize(tok, e, settings.template, settings.max_seq_len,
                                settings.completion_only) for e in data.train]  # fmt: skip
    if len(train_items) < settings.batch_size:
        raise ValueError(
            f"{len(train_items)} train examples, fewer than one batch of {settings.batch_size}"
        )
    param_rows, _ = parameter_rows(model)
    start = sum(before.loss[: len(curve)]) / len(curve)  # the curve items lead ``prep``
    run_, peak = train(loaded, cell, settings, train_items, curve, start)
    with allocator.timing_window():
        after = sft.score(model, prep, pad, settings.batch_eval)
        if not run_.stopped:  # the curve ends on the finished model
            run_.eval_steps.append(len(run_.train_loss))
            run_.eval_loss.append(sum(after.loss[: len(curve)]) / len(curve))
        corpus_after = corpus_scores(model, tok, settings)
        rows += [
            *param_rows,
            *_quality_rows("after", after),
            *_change_rows("heldout_loss_change", before.loss, after.loss, "nats/token"),
            *_change_rows("heldout_exact_match_change", before.exact, after.exact, "fraction"),
            *_corpus_rows("after", corpus_after, settings),
            *(_change_rows("corpus_nll_change", corpus_before, corpus_after, "nats/token")
              if corpus_before else []),
            *_curve_rows(run_),
            *_speed_rows(run_),
            _outcome(run_, before.mean_loss, after.mean_loss, settings),
        ]  # fmt: skip
        if peak is not None:
            rows += phase_rows("finetune", peak)
        checks = settings.check_seeds is None or cell.seed in settings.check_seeds
        if checks and not run_.stopped and (settings.check_reload or settings.check_merge):
            rows += _adapter_checks(loaded, cell, settings, prep, after)
    return _finish(rows, proto)


def _finish(rows: list[dict[str, Any]], proto: str) -> list[dict[str, Any]]:
    """Every row carries the fine-tuning protocol (corpus rows their window protocol)."""
    out = []
    for r in rows:
        own = r.pop("protocol_override", None)
        out.append({**r, "protocol": own or proto})
    return out
