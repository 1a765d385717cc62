"""Shared fixtures: an isolated cache for synthetic models, tiny experiments, the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Without a GPU, Triton kernels are checked by Triton's interpreter on CPU tensors. It is
# chosen when triton is first imported, so it must be set before any test imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY = "synthetic:tiny-llama"


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the whole session, so the tiny model is built once."""
    path = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(path)
    return path


@pytest.fixture()
def tiny_source(synthetic_cache: Path):
    from harness.models import resolve

    return resolve(TINY)


def tiny_cell(precision: str = "fp32", **workloads):
    """One CPU cell of the tiny synthetic model in ``precision`` with these workload settings
    (the rest at their defaults), as ``run_cell`` takes it."""
    from harness.config import Cell
    from harness.schemes import get_handler
    from harness.workloads.settings import Workloads

    return Cell(
        experiment="t",
        model=TINY,
        precision=precision,
        precision_options=get_handler(precision).options().model_dump(),
        adapter="none",
        seed=0,
        device="cpu",
        timeout_s=60,
        workloads=Workloads(**workloads),
    )


def write_experiment(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_EXPERIMENT = """
name: tiny
models: [synthetic:tiny-llama]
precisions: [fp32, bf16]
timeout_s: 120
workloads:
  footprint: {}
  inference: {enabled: false}
  perplexity: {max_tokens: 256, window: 64}
"""


@pytest.fixture()
def single_thread():
    """The quantization solvers run many tiny ops; on a shared 2-core box threads add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
