"""Which tensors are the same memory: one rule for every byte count in the harness.

Tied weights share a storage, and so do views; a count that must see each byte once keys
tensors by (storage, offset), so two distinct views into one storage both count while a tied
weight seen twice counts once.
"""

from __future__ import annotations

from typing import Any


def storage_key(tensor: Any) -> int:
    """Identity of the memory behind ``tensor`` (views and tied weights share it)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta or other storage-less tensors
        return id(tensor)


def tensor_key(tensor: Any) -> tuple[int, int]:
    """Identity of ``tensor`` itself: its storage and where in it the tensor starts."""
    offset = tensor.storage_offset() if hasattr(tensor, "storage_offset") else 0
    return storage_key(tensor), offset
