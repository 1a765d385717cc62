"""Shared synthetic layer: correlated inputs with a few high-variance features."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from harness.quant import Hessian, QuantizedWeight


@dataclass
class Layer:
    weight: Tensor
    x: Tensor
    hessian: Hessian

    def rel_error(self, qw: QuantizedWeight) -> float:
        """||W X - Q X|| / ||W X|| on the calibration inputs."""
        ref = self.x @ self.weight.t()
        return float((ref - self.x @ qw.dequantize().t()).norm() / ref.norm())


def make_layer(rows: int, cols: int, seed: int = 0, tokens: int = 1024) -> Layer:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=gen)
    x = torch.randn(tokens, cols, generator=gen) @ mix
    x[:, :5] *= 8.0  # a few high-variance input features
    w = 0.05 * torch.randn(rows, cols, generator=gen)
    spikes = torch.rand(rows, cols, generator=gen) < 0.005
    w = w + spikes * 0.5 * torch.randn(rows, cols, generator=gen)
    h = Hessian(cols)
    h.add_batch(x[: tokens // 2])
    h.add_batch(x[tokens // 2 :].reshape(2, -1, cols))  # leading dims are flattened
    return Layer(w, x, h)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every solver test runs single-threaded (see tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def layer() -> Layer:
    """128 x 200: 200 is not a multiple of 16 or of the 128-column block."""
    return make_layer(128, 200)


@pytest.fixture(scope="session")
def odd_layer() -> Layer:
    """100 x 90: rows not a multiple of beta2, columns not a multiple of beta1."""
    return make_layer(100, 90, seed=1)


@pytest.fixture(scope="session")
def aligned_layer() -> Layer:
    """Widths divisible by every group size, for exact formula checks."""
    return make_layer(64, 256, seed=3)
