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
