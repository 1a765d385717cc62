"""Content-addressed cache of calibrated quantized models.

Calibrating GPTQ / SpQR takes minutes while loading the result takes a second, so every
cell after the first reuses it. The key hashes everything the stored codes depend on:

* the model spec and the identity of its files (``config.json`` content plus name, size and
  mtime of every weight file, and the content of the tokenizer files; a hub id without local
  files contributes only its name);
* the scheme family and its validated options (quantizer and calibration settings: samples,
  window length, seed, corpus);
* the calibration text (the hash of the corpus train split, which changes with its split
  rule), the device type (CPU and CUDA round differently), the torch and transformers
  versions;
* a hash of the code the codes depend on: ``harness.quant`` (the solvers) and
  ``CALIBRATION_MODULES`` (layer selection and calibration batches, the corpus split rule,
  tokenization, model loading). Any change there makes old entries unreachable instead of
  silently reused; unreachable entries are not deleted.

An entry is ``<cache_dir>/quantized/<key>/`` holding ``model.safetensors``
(:func:`harness.quant.save_quantized`) and ``meta.json``. It is written into a temporary
sibling directory and renamed, so a crashed or concurrent writer never leaves a partial
entry that a reader could pick up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.paths import cache_dir

if TYPE_CHECKING:
    from harness.models import ModelSource
    from harness.quant import QuantizedWeight

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_NOT_ALGORITHM = frozenset({"__init__.py", "export.py"})
_TOKENIZER_FILES = frozenset(
    {"vocab.json", "vocab.txt", "merges.txt", "special_tokens_map.json", "added_tokens.json"}
)
CALIBRATION_MODULES = (
    "harness/schemes/weight_only.py",
    "harness/schemes/gptq.py",
    "harness/schemes/gptq_options.py",
    "harness/schemes/spqr.py",
    "harness/schemes/rtn.py",
    "harness/modules.py",
    "harness/data/corpus.py",
    "harness/data/tokens.py",
    "harness/models.py",
)
"""Sources outside ``harness.quant`` that decide which weights are calibrated on what text."""


@lru_cache(maxsize=1)
def quant_code_hash() -> str:
    """SHA-256 of the ``harness.quant`` sources: the version of the algorithms.

    Every module counts except those that cannot change stored codes (re-exports, the
    checkpoint exporter), so a new solver module invalidates entries by default.
    """
    import harness.quant

    root = Path(harness.quant.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.glob("*.py") if p.name not in _NOT_ALGORITHM):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def calibration_files() -> list[Path]:
    """The files of ``CALIBRATION_MODULES`` in this installation."""
    from harness.paths import repo_root

    return [repo_root() / name for name in CALIBRATION_MODULES]


@lru_cache(maxsize=1)
def calibration_code_hash() -> str:
    """SHA-256 of the calibration and layer-selection sources (see ``CALIBRATION_MODULES``)."""
    digest = hashlib.sha256()
    for path in calibration_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith("tokenizer") or name in _TOKENIZER_FILES or name.endswith(".tiktoken")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_identity(source: ModelSource) -> dict[str, Any]:
    """What identifies the model's weights without hashing gigabytes of them."""
    path = Path(source.path)
    if not path.is_dir():
        return {"spec": source.spec, "kind": source.kind, "files": None}
    config = path / "config.json"
    files = [
        [p.name, p.stat().st_size, int(p.stat().st_mtime)]
        for p in sorted(path.iterdir())
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    ]
    tokenizer = {
        p.name: _file_hash(p)
        for p in sorted(path.iterdir())
        if p.is_file() and _is_tokenizer_file(p.name)
    }
    config_hash = _file_hash(config) if config.is_file() else None
    return {
        "spec": source.spec,
        "kind": source.kind,
        "config": config_hash,
        "files": files,
        "tokenizer": tokenizer,
    }


def cache_key(source: ModelSource, family: str, options: dict[str, Any], device: str) -> str:
    """Hex key of one calibrated model (see the module docstring for what goes in)."""
    import torch
    import transformers

    from harness.data.tokens import corpus_info

    corpus = options.get("calib_corpus")
    payload = {
        "model": model_identity(source),
        "family": family,
        "options": options,
        "corpus": corpus_info(corpus, "train").sha256 if corpus else None,
        "device": device.split(":")[0],
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "quant_code": quant_code_hash(),
        "calibration_code": calibration_code_hash(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def entry_dir(key: str) -> Path:
    return cache_dir() / "quantized" / key


def load_entry(key: str, device: str = "cpu") -> tuple[dict[str, QuantizedWeight], dict] | None:
    """The cached weights and their meta dict, or None when absent or unreadable."""
    from harness.quant import load_quantized

    path = entry_dir(key)
    if not (path / META_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        return None
    try:
        meta = json.loads((path / META_FILE).read_text())
        return load_quantized(path / WEIGHTS_FILE, device=device), meta
    except (OSError, ValueError, KeyError):  # damaged entry: recalibrate rather than fail
        return None


def store_entry(key: str, quantized: dict[str, QuantizedWeight], meta: dict[str, Any]) -> Path:
    """Write an entry atomically; an entry another process finished first is kept."""
    from harness.quant import save_quantized

    target = entry_dir(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_quantized(tmp / WEIGHTS_FILE, quantized, extra={"key": key})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if target.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / META_FILE).is_file():
            raise
    return target
