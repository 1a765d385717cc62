"""Settings of each workload as they appear under ``workloads:`` in an experiment file.

Pure pydantic (no torch) so validating an experiment is instant. Every field has a default, so
``workloads: {inference: {}}`` means "on, with defaults"; ``enabled: false`` switches one off.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    """Run this workload in every cell of the experiment."""


class FootprintSettings(_Settings):
    """Stored bytes of parameters and buffers by dtype and category; bits per parameter."""


class InferenceSettings(_Settings):
    """Prefill and decode throughput with the peak memory of each phase."""

    batch_size: int = Field(1, ge=1)
    """Sequences per forward pass."""
    prompt_len: int = Field(128, ge=1)
    """Prompt tokens per sequence (taken from the builtin corpus)."""
    new_tokens: int = Field(32, ge=2)
    """Tokens generated per sequence in the decode phase (greedy, exactly this many)."""
    warmup: int = Field(1, ge=0)
    """Untimed runs before each phase's tracked memory call and again (at least one) before its
    timed runs."""
    repeats: int = Field(3, ge=1)
    """Timed runs (after the tracked memory calls, outside them); median, p10 and p90 are
    reported."""


class TrainingSettings(_Settings):
    """A fixed number of optimizer steps on the builtin corpus' train split (adapter cells).

    Off by default; a cell with adapter ``none`` trains nothing. Perplexity, which runs after
    training in the same cell, then measures the fine-tuned model.
    """

    enabled: bool = False
    steps: int = Field(10, ge=1)
    """Optimizer steps (each of ``grad_accum`` micro-batches)."""
    warmup_steps: int = Field(2, ge=0)
    """First steps left out of the tokens/s statistics (lazy initialisation, allocator). The
    first two steps (the memory window) and the one after them are never timed either: timing
    starts at step ``max(warmup_steps, 3)``, and with fewer steps ``train_tokens_per_s`` is a
    skipped row saying why."""
    batch_size: int = Field(2, ge=1)
    """Sequences per micro-batch."""
    seq_len: int = Field(128, ge=2)
    """Tokens per sequence (consecutive windows of the train split)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches whose gradients are summed before each optimizer step."""
    lr: float = Field(2e-4, gt=0)
    """Constant learning rate (QLoRA's 2e-4 for 7B-13B models)."""
    optimizer: Literal["adamw", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw"
    """``adamw`` is torch's; the paged ones are bitsandbytes' and need CUDA."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer in backward instead of keeping its activations."""
    save_adapter: bool = False
    """Write the trained adapter to a temporary directory and report its file size."""

    @model_validator(mode="after")
    def _timed_steps(self) -> TrainingSettings:
        if self.enabled and self.steps <= self.warmup_steps:
            raise ValueError(
                f"steps ({self.steps}) must exceed warmup_steps ({self.warmup_steps}) "
                "so that some steps are timed"
            )
        return self


class FinetuneSettings(_Settings):
    """Fine-tuning to a budget on instruction data, with held-out quality before and after.

    Off by default. A cell with adapter ``none`` is scored before training only (the base
    model's figures at its precision). Trains with what PEFT / TRL / alpaca-lora users set:
    warmup and a decaying learning rate, gradient accumulation, gradient clipping, the loss on
    completion tokens only, held-out evaluation every ``eval_every`` steps and an early stop on
    divergence, which is the cell's status (``diverged``), as is a run whose held-out loss did
    not fall (``no_learning``). Then the adapter is saved, reloaded into a freshly loaded base
    and merged into it, and each is scored again on the same items.
    """

    enabled: bool = False
    data: str = "builtin"
    """``builtin`` (offline short-answer questions from the builtin tasks' word lists), a path
    to a JSONL file (alpaca ``instruction``/``input``/``output`` or ``prompt``/``completion``
    per line), or ``hf:<dataset>`` through ``datasets`` (skipped where it cannot be had)."""
    template: Literal["alpaca", "plain"] = "alpaca"
    """``alpaca``: alpaca-lora's prompt; ``plain``: ``Question: ...\nAnswer: <output>``."""
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of distinct questions held out of a user's data (the builtin set holds out 25%)."""
    eval_items: int | None = Field(64, ge=1)
    """Held-out items scored before and after (a fixed shuffle; None: all)."""
    curve_items: int = Field(32, ge=1)
    """Held-out items scored every ``eval_every`` steps for the curve and divergence check."""
    steps: int = Field(30, ge=1)
    """Optimizer steps (each of ``grad_accum`` micro-batches)."""
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_len: int = Field(256, ge=8)
    """Longest example in tokens; longer prompts are cut from the left."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate of adapter cells (LoRA-family)."""
    full_lr: float = Field(5e-5, gt=0)
    """Peak learning rate of ``full`` fine-tuning cells (full fine-tuning needs a smaller one)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping (0: off)."""
    completion_only: bool = True
    """Loss on the completion only (alpaca-lora's ``train_on_inputs: false``)."""
    eval_every: int = Field(10, ge=0)
    """Steps between held-out evaluations (0: before and after only)."""
    divergence_ratio: float = Field(1.5, gt=1)
    """Stop as ``diverged`` when the held-out loss exceeds this multiple of its start."""
    min_improvement: float = Field(0.02, ge=0)
    """``no_learning`` unless the held-out loss falls by at least this fraction."""
    optimizer: Literal["adamw", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw"
    gradient_checkpointing: bool = False
    corpus_windows: int = Field(2, ge=0)
    """Windows of the builtin corpus' test split scored before and after (forgetting; 0: off)."""
    corpus_window: int = Field(256, ge=16)
    batch_eval: int = Field(16, ge=1)
    """Held-out items per scoring forward."""
    check_reload: bool = True
    """Save the adapter, load it into a fresh base of the same precision and score it again."""
    check_merge: bool = True
    """Merge the reloaded adapter into its base (quantized bases: dequantize, merge,
    re-quantize, as peft does) and score the merged model."""
    check_seeds: tuple[int, ...] | None = None
    """Seeds whose cells run the reload and merge checks (None: every cell). Each check loads
    the base again, so a seed sweep can check once per precision and adapter."""

    @model_validator(mode="after")
    def _warmup(self) -> FinetuneSettings:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )
        return self


class PerplexitySettings(_Settings):
    """Token perplexity over non-overlapping windows (the GPTQ/SpQR papers' protocol)."""

    corpus: Literal["builtin", "wikitext2", "c4"] = "builtin"
    """``builtin`` (test split of Python's pydoc topics, offline), or WikiText-2 / C4 through
    ``datasets`` when they can be had (otherwise the row is ``skipped`` with the reason)."""
    max_tokens: int = Field(16384, ge=2)
    """Evaluate on at most this many tokens of the corpus (whole windows only)."""
    window: int = Field(1024, ge=2)
    """Window length in tokens; windows do not overlap."""
    batch_size: int = Field(1, ge=1)
    """Windows per forward pass."""


class AccuracySettings(_Settings):
    """lm-eval tasks on the cell's model, and lm-eval's rolling word/byte perplexity."""

    enabled: bool = False
    tasks: tuple[str, ...] = ("harness_builtin",)
    """lm-eval task names or tags; ``harness_builtin`` is the offline suite the harness ships."""
    num_fewshot: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)
    """At most this many items per task (None: all)."""
    batch_size: int = Field(8, ge=1)
    rolling_docs: int = Field(40, ge=0)
    """Documents of the corpus test split for rolling perplexity; 0 switches it off."""
    rolling_max_length: int = Field(1024, ge=16)
    """Context length of lm-eval's rolling windows."""


class AgreementSettings(_Settings):
    """Next-token KL divergence and top-1 agreement against the baseline precision."""

    enabled: bool = False
    baseline: str = "fp32"
    """Precision whose predictions are the reference (stored once per model and corpus)."""
    corpus: Literal["builtin", "wikitext2", "c4"] = "builtin"
    max_tokens: int = Field(4096, ge=2)
    window: int = Field(1024, ge=2)
    top_k: int = Field(64, ge=1)
    """Baseline log-probabilities kept per position (plus the tail mass)."""


class CapacitySettings(_Settings):
    """Largest batch (and sequence length) that fits a memory budget, measured and predicted.

    Sizes double from the start until a try does not fit (or a bound is reached), then bisect
    between the last fit and the first failure. Off by default; runs after the other workloads.
    """

    enabled: bool = False
    budget_gb: float = Field(0.5, gt=0)
    """Memory the cell may use, its weights included, in GB (1e9 bytes)."""
    mode: Literal["inference", "training"] = "inference"
    """``inference``: one prefill pass of batch x seq keeping its KV cache. ``training``: one
    forward, backward and optimizer step with the cell's adapter and the training workload's
    optimizer and checkpointing (learning rate 0, so the model is left unchanged)."""
    axes: tuple[Literal["batch", "seq"], ...] = ("batch",)
    """What to search: ``batch`` at ``seq_len`` tokens, ``seq`` at ``batch_size`` sequences."""
    seq_len: int = Field(128, ge=2)
    """Tokens per sequence while the batch is searched."""
    batch_size: int = Field(1, ge=1)
    """Sequences while the sequence length is searched."""
    start_seq: int = Field(16, ge=2)
    """First sequence length tried."""
    max_batch: int = Field(1024, ge=1)
    """Largest batch tried."""
    max_seq: int = Field(4096, ge=2)
    """Longest sequence tried (also bounded by the model's position embeddings)."""
    max_tries: int = Field(16, ge=1)
    """Tries per axis, doubling and bisection together."""
    bisect: bool = True
    """Bisect between the last size that fit and the first that did not."""

    @model_validator(mode="after")
    def _consistent(self) -> CapacitySettings:
        if not self.axes or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"axes must name batch and/or seq once each; got {list(self.axes)}")
        if self.start_seq > self.max_seq:
            raise ValueError(f"start_seq ({self.start_seq}) exceeds max_seq ({self.max_seq})")
        return self


class Workloads(BaseModel):
    """All workloads of an experiment; each can be switched off with ``enabled: false``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    footprint: FootprintSettings = FootprintSettings()
    inference: InferenceSettings = InferenceSettings()
    training: TrainingSettings = TrainingSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    perplexity: PerplexitySettings = PerplexitySettings()
    accuracy: AccuracySettings = AccuracySettings()
    agreement: AgreementSettings = AgreementSettings()
    capacity: CapacitySettings = CapacitySettings()

    def enabled(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name).enabled]


def protocol_settings(protocol: object) -> dict[str, str]:
    """The ``key=value`` parts of a row's protocol string (``token-windows;window=1024;
    tokens=4096``): the settings a workload ran with. Anything but a string has none."""
    if not isinstance(protocol, str):
        return {}
    return dict(part.split("=", 1) for part in protocol.split(";") if "=" in part)
