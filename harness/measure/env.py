"""The environment a number was measured in; recorded on every result row."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.paths import repo_root

LIBRARIES = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "lm_eval", "harness"]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


OUTPUT_DIRS = ("results", "reports")


@lru_cache(maxsize=4)
def git_sha(root: Path | None = None) -> str | None:
    """HEAD of the harness checkout, with ``-dirty`` when tracked code differs from it.

    Changes under ``results/`` and ``reports/`` do not count: a matrix that writes into a
    committed results directory must not mark its own later cells as run on dirty code.
    """
    root = root or repo_root()
    outputs = [f":(exclude){d}" for d in OUTPUT_DIRS]
    try:
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def collect(device: str = "cpu") -> dict[str, Any]:
    """Device, driver, versions, git sha, python, cpu: flat keys for the results table."""
    import torch

    env: dict[str, Any] = {
        "device": device,
        "device_name": cpu_name(),
        "driver": None,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": total_memory_bytes(),
        "git_sha": git_sha(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device_name"] = props.name
        env["device_memory_bytes"] = props.total_memory
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["driver"] = _nvidia_driver()
    for lib in LIBRARIES:
        env[f"{lib}_version"] = _version(lib)
    return env


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
