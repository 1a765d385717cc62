"""Options of the RTN, GPTQ and SpQR precisions (pure pydantic: validating needs no torch).

Calibration default: the papers use 128 sequences of 2048 tokens. Here the default is
32 sequences of 512 tokens (16k tokens, drawn from the ~56k-token train split of the builtin
corpus), which keeps ``spqr-w3`` on the builtin 135M model under 10 minutes on a 2-core CPU
(measured: 567 s for spqr-w3 and 248 s for gptq-w4g128 with the cores shared by other jobs);
a GPU run can raise ``nsamples`` / ``seqlen`` per cell.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from harness.schemes.base import SchemeOptions

DEFAULT_NSAMPLES = 32
DEFAULT_SEQLEN = 512


class RTNOptions(SchemeOptions):
    bits: int = Field(4, ge=2, le=8)
    """Code width."""
    group_size: int = Field(128, ge=0)
    """Input columns sharing a scale and zero point; 0 means one group per output row."""
    sym: bool = False
    """Symmetric grid (zero point fixed at the middle code)."""


class CalibrationOptions(SchemeOptions):
    nsamples: int = Field(DEFAULT_NSAMPLES, ge=1)
    """Calibration sequences (random windows of the ``train`` split)."""
    seqlen: int = Field(DEFAULT_SEQLEN, ge=8)
    """Tokens per calibration sequence."""
    seed: int = 0
    """Seed of the window positions (independent of the cell seed, so cells share a cache)."""
    calib_corpus: Literal["builtin"] = "builtin"
    """Corpus whose ``train`` split feeds calibration."""
    calib_batch_size: int = Field(8, ge=1)
    """Sequences per forward pass while calibrating (memory vs. speed only)."""
    expert_min_tokens: int = Field(16, ge=1)
    """Mixture-of-experts models: an expert the router sent fewer calibration tokens than
    this is quantized by round-to-nearest instead (the cell reports how many were)."""


class GPTQOptions(CalibrationOptions):
    bits: int = Field(4, ge=2, le=8)
    group_size: int = Field(128, ge=0)
    """Input columns per group (contiguous in act-order when ``act_order``); 0: per row."""
    sym: bool = False
    act_order: bool = True
    """Process columns by decreasing Hessian diagonal (GPTQ ``desc_act``)."""
    percdamp: float = Field(0.01, ge=0, le=10)
    """Hessian damping relative to its mean diagonal."""
    block_size: int = Field(128, ge=1)
    """Columns per lazy-update block (speed only)."""


class SpQROptions(CalibrationOptions):
    bits: int = Field(3, ge=2, le=8)
    beta1: int = Field(16, ge=2)
    """Group size of the first-level statistics (input columns)."""
    beta2: int = Field(16, ge=1)
    """Rows sharing a second-level (scale, zero) pair."""
    qq_scale_bits: int | None = Field(3, ge=1, le=8)
    """Bits of the quantized group scales; null keeps them in float16."""
    qq_zero_bits: int | None = Field(3, ge=1, le=8)
    """Bits of the quantized group zero points; null keeps them in float16."""
    outlier_threshold: float = Field(0.2, gt=0)
    """Relative outlier threshold tau; .inf disables outliers."""
    simplified_outliers: bool = False
    """Skip the leave-one-out pre-filter of the group statistics."""
    act_order: bool = True
    percdamp: float = Field(1.0, ge=0, le=10)
    block_size: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _threshold_not_nan(self) -> SpQROptions:
        if math.isnan(self.outlier_threshold):
            raise ValueError("outlier_threshold must be a positive number or .inf, not nan")
        return self
