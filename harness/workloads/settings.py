"""Settings of each workload as they appear under ``workloads:`` in an experiment file.

Pure pydantic (no torch) so validating an experiment is instant. Every field has a default, so
``workloads: {inference: {}}`` means "on, with defaults"; ``enabled: false`` switches one off.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    """Untimed runs before measuring."""
    repeats: int = Field(3, ge=1)
    """Timed runs; median, p10 and p90 are reported."""


class PerplexitySettings(_Settings):
    """Token perplexity over non-overlapping windows (the GPTQ/SpQR papers' protocol)."""

    corpus: str = "builtin"
    """Text to evaluate on; ``builtin`` is the test split of Python's pydoc topics."""
    max_tokens: int = Field(16384, ge=2)
    """Evaluate on at most this many tokens of the corpus (whole windows only)."""
    window: int = Field(1024, ge=2)
    """Window length in tokens; windows do not overlap."""
    batch_size: int = Field(1, ge=1)
    """Windows per forward pass."""


class Workloads(BaseModel):
    """All workloads of an experiment; each can be switched off with ``enabled: false``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    footprint: FootprintSettings = FootprintSettings()
    inference: InferenceSettings = InferenceSettings()
    perplexity: PerplexitySettings = PerplexitySettings()

    def enabled(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name).enabled]
