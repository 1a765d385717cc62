"""What every precision handler provides: validated options, an availability check, a loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from harness.models import ModelSource
    from harness.schemes import SchemeEntry

Storage = Literal["dense", "quantized", "simulated"]


class SchemeOptions(BaseModel):
    """Base of every scheme's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class LoadedModel:
    """A model as a cell's precision built it, ready for the workloads.

    ``storage`` says whether memory savings are real: ``quantized`` stores low-bit codes,
    ``simulated`` keeps 16/32-bit weights and can never back a memory claim.
    ``rows`` carries metrics produced while loading (quantization time, outlier fraction, ...).
    """

    model: Any
    tokenizer: Any
    storage: Storage
    compute_dtype: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


class SchemeHandler:
    """A precision family. Subclasses set ``Options`` and implement ``load``."""

    Options: type[SchemeOptions] = SchemeOptions

    def __init__(self, entry: SchemeEntry):
        self.entry = entry

    def options(self, overrides: dict[str, Any] | None = None) -> SchemeOptions:
        """Preset values overlaid with the experiment's overrides, validated."""
        return self.Options(**{**self.entry.preset, **(overrides or {})})

    def unavailable(self, opts: SchemeOptions, device: str) -> str | None:
        """A reason this precision cannot run on ``device``, or None when it can."""
        return None

    def load(self, source: ModelSource, opts: SchemeOptions, device: str) -> LoadedModel:
        raise NotImplementedError

    # What the memory model asks of a scheme; answered without loading anything.
    quantizes_linears: bool = True
    """False for dense precisions: their linears are counted as ``linear_weights``."""
    quantizes_experts: bool = False
    """True when 3-D mixture-of-experts weights are quantized (per expert, like a linear)."""

    def linear_bytes(self, opts: SchemeOptions, out: int, inp: int) -> tuple[int, int]:
        """(weight bytes, quantization-state bytes) this scheme stores for one ``out x in``
        linear, exactly as the footprint workload counts them."""
        raise NotImplementedError(f"{type(self).__name__} states no linear_bytes")

    def dense_dtype(self, opts: SchemeOptions) -> str:
        """dtype of the parameters the scheme leaves unquantized (embeddings, norms, ...)."""
        return "float32"
