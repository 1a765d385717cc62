"""The environment a number was measured in; recorded on every result row.

``fingerprint`` is the part of it that decides whether a stored result may stand for a
measurement on this machine: the hardware kind and the software that computed it, nothing
volatile (no time, no free memory, no thread count a launcher chooses).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
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


# CPU features that decide which matmul kernels run (and so every speed figure): two CPUs that
# report the same model name in a VM ("AMD EPYC") can differ in them.
MATMUL_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                   "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``; empty where /proc/cpuinfo is
    absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> str:
    """The matmul-relevant CPU flags present here, comma-separated (empty if unknown)."""
    flags = cpu_flags()
    return ",".join(f for f in MATMUL_FEATURES if f in flags)


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
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": total_memory_bytes(),
        "git_sha": git_sha(),
        "harness_code": code_hash(),
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


RENDERING_ONLY = ("report/", "commands/", "cli.py", "summary.py")
"""Sources that read stored results and never take part in a measurement (figures, tables,
the command line)."""
STORAGE_AND_LAUNCH = (
    "results.py", "results_dir.py", "paths.py",
    "runner/matrix.py", "runner/local.py", "runner/ray_cluster.py",
)
"""Sources that store records, lay out results directories and hand cells to processes: they
move numbers around but never compute one (the cell process itself, ``runner/cell.py`` and
``runner/worker.py``, stays in the hash)."""
NOT_MEASURING = RENDERING_ONLY + STORAGE_AND_LAUNCH
"""Left out of the code hash, so editing a plot or the store keeps stored cells current."""


@lru_cache(maxsize=4)
def code_hash(root: Path | None = None) -> str:
    """SHA-256 (16 hex) of the harness sources that can change a measurement.

    Unlike ``git_sha`` it ignores documentation, tests, results and :data:`NOT_MEASURING`,
    so a commit that touches only those does not make stored measurements look foreign.
    """
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix().startswith(NOT_MEASURING):
            continue
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


HARDWARE_KEYS = ("device", "device_name", "cpu", "cpu_features", "cpu_count",
                 "compute_capability", "driver")
SOFTWARE_KEYS = ("python", "cuda", "harness_code", *(f"{lib}_version" for lib in LIBRARIES))


def fingerprint(env: dict[str, Any], *, hardware: bool = True) -> dict[str, Any]:
    """The keys of ``env`` that must match for two measurements to count as one environment.

    ``hardware=False`` compares software only (a Ray cluster picks the node per cell; each
    record still names its node). Keys absent from ``env`` stay ``None``, so an old record
    without ``harness_code`` never matches.
    """
    keys = (*HARDWARE_KEYS, *SOFTWARE_KEYS) if hardware else SOFTWARE_KEYS
    return {key: env.get(key) for key in keys}


def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short stable name of a fingerprint (12 hex), used for directories and table columns."""
    blob = json.dumps(fp, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: stored != current`` for each fingerprint key that differs, for messages."""
    return [
        f"{key} {stored.get(key)!r} (here {current.get(key)!r})"
        for key in current
        if stored.get(key) != current.get(key)
    ]
