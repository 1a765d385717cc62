"""Experiment files: parsing, validation and expansion into cells.

An experiment names models, precisions, adapters, seeds and workload settings; its matrix is
their cross product. Each point is a frozen :class:`Cell` whose id is derived from its content,
so a rerun finds finished cells and a changed setting makes a new cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.adapter_names import lora_method, parse_adapter
from harness.errors import ConfigError, HarnessError
from harness.schemes import get_handler, scheme_names
from harness.workloads.settings import Workloads

DeviceName = Literal["auto", "cpu", "cuda"]
QV_MODULES = ("q_proj", "v_proj")
"""``target_modules: qv``: the query and value projections the LoRA paper adapts."""


class LoraSettings(BaseModel):
    """The ``lora:`` block: how every ``lora-rN`` adapter of the experiment is built.

    Defaults follow QLoRA (all linear layers, alpha 16); ``target_modules: qv`` is the LoRA
    paper's choice (query and value projections only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is ``(alpha / r) * B A x``."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter's input during training (0 switches it off)."""
    target_modules: Literal["all-linear", "qv"] | list[str] = "all-linear"
    """``all-linear`` (every linear layer but the output head), ``qv``, or module names."""
    bias: Literal["none"] = "none"
    """Biases stay frozen (the only mode measured here)."""

    @field_validator("target_modules")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("target_modules must name at least one module")
        return value

    def resolved_targets(self) -> str | list[str]:
        """``qv`` spelled out as module names; other values as given."""
        return list(QV_MODULES) if self.target_modules == "qv" else self.target_modules


def adapter_options(adapter: str, lora: LoraSettings) -> dict[str, Any]:
    """What an adapter cell trains with (empty for ``none`` and ``full``): part of its id.

    ``use_rslora`` / ``use_dora`` (peft's names) appear only for those methods, so the ids of
    plain LoRA cells stay what they were."""
    kind, rank = parse_adapter(adapter)
    if kind != "lora":
        return {}
    method = lora_method(adapter)
    switch = {"rslora": {"use_rslora": True}, "dora": {"use_dora": True}}.get(method, {})
    return {
        "r": rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": lora.resolved_targets(),
        "bias": lora.bias,
        **switch,
    }


class PrecisionSpec(BaseModel):
    """A precision by registry name, with optional overrides of its preset options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in scheme_names():
            raise ValueError(f"unknown precision '{name}'; allowed: {', '.join(scheme_names())}")
        return name

    @model_validator(mode="after")
    def _options_valid(self) -> PrecisionSpec:
        handler = get_handler(self.name)
        try:
            handler.options(self.options)
        except ValidationError as exc:
            allowed = ", ".join(handler.Options.model_fields) or "(none)"
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(
                f"bad options for precision '{self.name}': {problems}; allowed options: {allowed}"
            ) from None
        return self

    def resolved_options(self) -> dict[str, Any]:
        """Preset + overrides, validated by the scheme: the options a cell really runs with."""
        return get_handler(self.name).options(self.options).model_dump(mode="json")


def _precision_from_yaml(value: Any) -> Any:
    """``nf4`` or ``{name: nf4, blocksize: 128}`` -> PrecisionSpec fields."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and "name" in value and "options" not in value:
        return {"name": value["name"], "options": {k: v for k, v in value.items() if k != "name"}}
    return value


class Experiment(BaseModel):
    """One experiment file. Every key is checked; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the results directory ``results/NAME``."""
    description: str = ""
    models: list[str] = Field(min_length=1)
    """``builtin:smollm2-135m``, ``synthetic:<preset>``, a local HF directory or a hub id."""
    precisions: list[PrecisionSpec] = Field(min_length=1)
    """Registry names (``harness list``), optionally with option overrides."""
    adapters: list[str] = Field(default_factory=lambda: ["none"])
    """Adapter axis: ``none`` (the model as loaded), ``lora-rN`` / ``rslora-rN`` / ``dora-rN``
    (a LoRA-family adapter of rank N, through peft) or ``full``."""
    lora: LoraSettings = LoraSettings()
    """How ``lora-rN`` adapters are built (alpha, dropout, target modules)."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    device: DeviceName = "auto"
    timeout_s: float = Field(1800.0, gt=0)
    """Wall-clock limit of one cell; a cell past it is recorded with status ``timeout``."""
    cell_target_s: float | None = Field(None, gt=0)
    """Seconds a CPU cell should take, loading included: a cell whose workloads' forwards are
    projected to take longer than what loading left of it runs a capped budget and says so
    (``harness.budget``; process start and lm-eval's setup are not projected). None: the
    budget as written, however long it takes."""
    workloads: Workloads = Workloads()

    @field_validator("precisions", mode="before")
    @classmethod
    def _precisions(cls, value: Any) -> Any:
        return [_precision_from_yaml(v) for v in value] if isinstance(value, list) else value

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, value: list[str]) -> list[str]:
        for name in value:
            parse_adapter(name)
        return value

    @model_validator(mode="after")
    def _one_trainer(self) -> Experiment:
        """The 6-step training probe and the fine-tuning run would train the same adapter one
        after the other, so the second would start from the first's weights."""
        if self.workloads.training.enabled and self.workloads.finetune.enabled:
            raise ValueError(
                "workloads.finetune and training both train the cell's adapter; enable one of "
                "them per experiment (training: the memory/speed probe, finetune: quality)"
            )
        return self

    @model_validator(mode="after")
    def _agreement_baseline(self) -> Experiment:
        """The agreement baseline is one of this experiment's precisions, so its cells and
        the reference they are compared with are both in the results."""
        agreement = self.workloads.agreement
        names = [p.name for p in self.precisions]
        if agreement.enabled and agreement.baseline not in names:
            raise ValueError(
                f"workloads.agreement.baseline '{agreement.baseline}' is not one of this "
                f"experiment's precisions; allowed: {', '.join(names)}"
            )
        return self


class Cell(BaseModel):
    """One point of the matrix. Frozen; ``id`` is a readable name plus a content hash."""

    model_config = ConfigDict(frozen=True)
    experiment: str
    model: str
    precision: str
    precision_options: dict[str, Any]
    adapter: str
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    """Resolved LoRA settings (rank, alpha, dropout, targets); empty for none and full."""
    seed: int
    device: Literal["cpu", "cuda"]
    timeout_s: float
    cell_target_s: float | None = None
    workloads: Workloads

    def content(self) -> dict[str, Any]:
        """What the measurement depends on. The experiment name and the timeout are left out:
        the same cell in two experiments is the same measurement."""
        data = self.model_dump(mode="json")
        data.pop("experiment")
        data.pop("timeout_s")
        if data["cell_target_s"] is None or self.device != "cpu":  # only CPU cells use it;
            data.pop("cell_target_s")  # the ids of cells without one stay as they were
        return data

    @property
    def content_hash(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", self.model.split(":")[-1].split("/")[-1])
        return f"{slug}__{self.precision}__{self.adapter}__s{self.seed}__{self.content_hash}"


DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """``device`` when it is a known device name, else a HarnessError naming the allowed ones."""
    if device not in DEVICES:
        raise HarnessError(f"unknown device '{device}'; allowed: {', '.join(DEVICES)}")
    return device


def resolve_device(device: str) -> Literal["cpu", "cuda"]:
    """``auto`` picks CUDA when present; asking for CUDA where there is none is an error."""
    if check_device(device) == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise HarnessError("device 'cuda' requested but PyTorch sees no CUDA GPU here")
    return "cpu"


def expand(exp: Experiment, device: str | None = None) -> list[Cell]:
    """The matrix in a stable order: model, precision, adapter, seed."""
    dev = resolve_device(device or exp.device)
    cells = [
        Cell(
            experiment=exp.name,
            model=model,
            precision=prec.name,
            precision_options=prec.resolved_options(),
            adapter=adapter,
            adapter_options=adapter_options(adapter, exp.lora),
            seed=seed,
            device=dev,
            timeout_s=exp.timeout_s,
            cell_target_s=exp.cell_target_s,
            workloads=exp.workloads,
        )
        for model, prec, adapter, seed in itertools.product(
            exp.models, exp.precisions, exp.adapters, exp.seeds
        )
    ]
    ids = [c.id for c in cells]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise HarnessError(f"experiment {exp.name} lists the same cell twice: {', '.join(dupes)}")
    return cells


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; every problem is reported with its key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["top level must be a mapping of keys (name, models, ...)"])
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), [_describe(e) for e in exc.errors()]) from None


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as 'key: problem', with the allowed keys for unknown ones."""
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if not loc:  # a check across keys names its keys itself; the input is the whole file
        return msg
    return f"{key}: {msg} (got {error.get('input')!r})"


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the model found by walking ``loc`` down from Experiment."""
    model: Any = Experiment
    for part in loc:
        if part.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        args = getattr(model, "__args__", None)
        if args:  # list[PrecisionSpec] and the like
            model = args[0]
    return list(getattr(model, "model_fields", {}))
