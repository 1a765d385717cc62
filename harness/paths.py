"""Where the harness keeps things: the cache (converted models, quantized models, references)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``HARNESS_CACHE`` or ``~/.cache/harness``; created on first use."""
    root = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
