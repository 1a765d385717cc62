"""Dense precisions really set the parameter dtype; tf32 is skipped off CUDA."""

from __future__ import annotations

import pytest
import torch

from harness.schemes import get_handler


@pytest.mark.parametrize(
    "name,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_dense_precision_sets_every_parameter_dtype(tiny_source, name: str, dtype) -> None:
    handler = get_handler(name)
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    dtypes = {p.dtype for p in loaded.model.parameters()}
    assert dtypes == {dtype}
    assert loaded.storage == "dense"


def test_tf32_is_unavailable_on_cpu_with_a_reason() -> None:
    handler = get_handler("tf32")
    reason = handler.unavailable(handler.options(), "cpu")
    assert reason is not None and "compute capability >= 8.0" in reason
    assert get_handler("fp32").unavailable(get_handler("fp32").options(), "cpu") is None
