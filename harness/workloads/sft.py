"""Supervised fine-tuning on instruction data: tokenising, the completion loss, held-out scoring
and the training loop with the settings PEFT / TRL / alpaca-lora users set.

The loss counts completion tokens only (alpaca-lora's ``train_on_inputs=False``) unless
``completion_only`` is off. Under gradient accumulation every completion token of a step
weighs the same: each micro-batch's summed loss is divided by the step's token count.
Greedy exact match is read from one teacher-forced forward: greedy decoding reproduces the
answer and its end token exactly when every completion position's argmax is the next answer
token (lm-eval's ``is_greedy``), so no generation loop is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.data.instructions import Example, Template

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens when only the completion is trained on
    completion: int  # completion tokens (answer + end token)


def tokenize(
    tokenizer: Any, example: Example, template: Template, max_len: int, completion_only: bool
) -> Tokenized:
    """Prompt and completion tokenised apart and joined, so the boundary is exact; the prompt
    is cut from the left when the whole does not fit ``max_len`` (the answer is never cut)."""
    prompt = tokenizer(example.prompt(template), add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.completion(template), add_special_tokens=False)["input_ids"]
    answer = answer + [tokenizer.eos_token_id]
    if len(answer) >= max_len:
        answer = answer[: max_len - 1]
    prompt = prompt[-(max_len - len(answer)) :]
    labels = ([IGNORE] * len(prompt) if completion_only else list(prompt)) + answer
    return Tokenized(prompt + answer, labels, len(answer))


def collate(items: list[Tokenized], pad_id: int, device: Any) -> dict[str, Any]:
    """Left-padded ids, attention mask, position ids and labels (padding never scored).

    Left padding puts every completion at the end of its row, so the head runs only on the
    last ``keep`` positions (``logits_to_keep``): with a 49k-token vocabulary the head costs
    as much as the rest of a small model, and prompt positions are never scored. Position ids
    count real tokens only, so a padded row sees the positions an unpadded one would."""
    import torch

    width = max(len(t.ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.ids)
        ids[row, width - n :] = torch.tensor(t.ids)
        labels[row, width - n :] = torch.tensor(t.labels)
        mask[row, width - n :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    scored = [len(t.ids) - next(i for i, x in enumerate(t.labels) if x != IGNORE) for t in items]
    keep = min(width, max(scored) + 1)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions.to(device), "labels": labels.to(device),
            "keep": keep}  # fmt: skip


def token_losses(model: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(per-position NLL, scored mask, greedy-correct mask) over the last ``keep`` positions,
    shifted so position t predicts token t+1; logits in fp32 as the models' own loss
    computes them."""
    import torch.nn.functional as F

    keep = batch["keep"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep,
                   use_cache=False).logits[:, :-1].float()  # fmt: skip
    targets = batch["labels"][:, -keep + 1 :] if keep > 1 else batch["labels"][:, :0]
    scored = targets != IGNORE
    safe = targets.clamp(min=0)
    nll = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none") * scored
    correct = (logits.argmax(-1) == safe) & scored
    return nll, scored, correct


@dataclass
class Scores:
    """Per held-out item: mean completion NLL and greedy exact match (1.0 or 0.0)."""

    loss: list[float] = field(default_factory=list)
    exact: list[float] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return sum(self.loss) / len(self.loss)

    @property
    def accuracy(self) -> float:
        return sum(self.exact) / len(self.exact)


def score(model: Any, items: list[Tokenized], pad_id: int, batch_size: int) -> Scores:
    """Held-out completion loss and greedy exact match of every item, in order."""
    import torch

    was_training = model.training
    model.eval()
    out = Scores()
    with torch.no_grad():  # not inference_mode: its tensors must never reach a later backward
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            nll, scored, correct = token_losses(model, collate(chunk, pad_id, model.device))
            counts = scored.sum(1).clamp(min=1)
            out.loss.extend((nll.sum(1) / counts).tolist())
            out.exact.extend((correct.sum(1) == scored.sum(1)).float().tolist())
    model.train(was_training)
    return out


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then constant, linear or cosine decay to 0 at
    ``total`` (transformers' ``get_*_schedule_with_warmup``)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class Run:
    """What a training run did: losses per step, held-out curve, and why it stopped."""

    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    tokens: int = 0
    first_step: Any = None
    """What ``on_step(0)``'s context manager yielded (the tracked memory phase)."""
    stopped: str = ""
    """Empty when every step ran; otherwise why the run stopped early (divergence)."""


def micro_batches(items: list[Tokenized], batch_size: int, seed: int) -> Iterator[list[Tokenized]]:
    """Endless epochs over ``items``, reshuffled each epoch with the cell's seed."""
    import random

    rng = random.Random(seed)
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [items[i] for i in order[start : start + batch_size]]


def train_steps(
    model: Any,
    params: list[Any],
    optimizer: Any,
    batches: Iterator[list[Tokenized]],
    settings: Any,
    evaluate: Callable[[], float],
    start_loss: float,
    pad_id: int,
    on_step: Callable[[int], Any] | None = None,
) -> Run:
    """``settings.steps`` optimizer steps of ``grad_accum`` micro-batches with warmup + decay,
    gradient clipping and held-out evaluation every ``eval_every`` steps.

    Stops early, saying why in ``Run.stopped``, when a training loss is NaN/inf or the held-out
    loss rises above ``divergence_ratio`` times ``start_loss`` (its value before training).
    ``on_step(k)`` returns a context manager wrapped around step k (step 0: the tracked memory
    phase). The curve's last point is left to the caller, which scores the finished model.
    """
    import time
    from contextlib import nullcontext

    import torch

    run = Run()
    run.eval_steps.append(0)
    run.eval_loss.append(start_loss)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    warmup = settings.warmup_steps
    model.train()
    for k in range(settings.steps):
        factor = lr_factor(settings.schedule, k, warmup, settings.steps)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        with on_step(k) if on_step else nullcontext() as entered:
            if k == 0:
                run.first_step = entered
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(settings.grad_accum)]
            count = sum(sum(1 for x in t.labels[1:] if x != IGNORE) for m in micro for t in m)
            total = 0.0
            for chunk in micro:
                nll, _, _ = token_losses(model, collate(chunk, pad_id, model.device))
                loss = nll.sum() / max(count, 1)
                loss.backward()
                total += float(loss.detach())
                run.tokens += sum(len(t.ids) for t in chunk)
            clip = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            if math.isfinite(total) and math.isfinite(norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.step_s.append(time.perf_counter() - t0)
        run.train_loss.append(total)
        run.grad_norm.append(norm)
        run.lr.append(base_lrs[0] * factor)
        if not math.isfinite(total) or not math.isfinite(norm):
            run.stopped = f"training loss {total} / gradient norm {norm} at step {k + 1}"
            break
        last = k + 1 == settings.steps  # the caller scores the finished model on every item
        if settings.eval_every and (k + 1) % settings.eval_every == 0 and not last:
            value = evaluate()
            run.eval_steps.append(k + 1)
            run.eval_loss.append(value)
            model.train()
            if not math.isfinite(value) or value > settings.divergence_ratio * start_loss:
                run.stopped = (
                    f"held-out loss {value:.4f} at step {k + 1} exceeds "
                    f"{settings.divergence_ratio} x its start {start_loss:.4f}"
                )
                break
    model.eval()
    return run
