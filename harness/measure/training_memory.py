"""Memory of a training step, counted from the live tensors rather than inferred.

Process peaks (VmHWM, the CUDA allocator) say how much was held but not by what. These helpers
count each part from the objects that hold it: parameters (frozen or trained), ``.grad``
tensors, optimizer state, and the tensors autograd saves for backward (the activations), each
storage once. The saved-tensors count is exact and deterministic, so it can show what
gradient checkpointing saves even on a CPU where RSS is noisy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from harness.measure.tensor_identity import storage_key, tensor_key


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of distinct tensors (a tensor seen twice counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        key = tensor_key(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def gradient_bytes(params: Iterable[Any]) -> int:
    return tensor_bytes(p.grad for p in params if p.grad is not None)


def optimizer_state_bytes(optimizer: Any, *, paged_only: bool = False) -> int:
    """Every tensor in the optimizer's per-parameter state (moments, step counters, bnb's
    quantization maps), counted once; ``paged_only``: just the tensors bitsandbytes keeps in
    CUDA managed memory (``is_paged``), which the CUDA caching allocator never sees."""
    import torch

    tensors = [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and (not paged_only or getattr(v, "is_paged", False))
    ]
    return tensor_bytes(tensors)


class SavedTensorMeter:
    """Counts the bytes autograd keeps for backward while the ``measure()`` block runs.

    Each storage counts once (a layer input saved by q, k and v projections is one tensor), and
    storages of the model's own parameters and buffers are left out: they are weights, not
    activations. With reentrant gradient checkpointing a checkpointed layer saves only its
    inputs, which is exactly what this sees. Custom autograd functions that keep tensors as
    plain ``ctx`` attributes (bitsandbytes' int8 matmul keeps its input that way) bypass the
    hooks; :meth:`add_graph` finds those by walking the graph before backward.
    """

    def __init__(self, model: Any) -> None:
        self._static = {storage_key(t) for t in model.parameters()}
        self._static |= {storage_key(t) for t in model.buffers()}
        self._seen: set[int] = set()
        self.bytes = 0

    def _pack(self, tensor: Any) -> Any:
        key = storage_key(tensor)
        if key not in self._static and key not in self._seen:
            self._seen.add(key)
            try:
                self.bytes += tensor.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def add_graph(self, output: Any) -> None:
        """Count tensors held as attributes of custom-function contexts in ``output``'s graph."""
        import torch

        stack, visited = [output.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, torch.autograd.function.BackwardCFunction):
                for value in vars(node).values():
                    items = value if isinstance(value, (tuple, list)) else (value,)
                    for item in items:
                        if isinstance(item, torch.Tensor):
                            self._pack(item)
            stack.extend(fn for fn, _ in node.next_functions)

    @contextmanager
    def measure(self) -> Iterator[SavedTensorMeter]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self
