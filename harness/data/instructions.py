"""Instruction data for fine-tuning: the builtin offline set, a local JSONL, or a hub dataset.

Every source becomes :class:`InstructionData`: train and held-out :class:`Example` lists, a
split rule and the held-out split's hash (recorded on every row, like the corpus splits).
Examples carry a ``group``; all examples of one group land on the same side, so no held-out
question is ever trained on (the builtin set groups by subject: both questions about a country
share its group; user data groups by the text of the instruction and input).

The builtin set is generated from the word lists the builtin tasks use (capitals, continents,
plurals, antonyms, word categories) and asks for a short answer. The builtin model answers
such questions in whole sentences, so its greedy exact match on the held-out items starts near
zero while a fine-tuned model learns the answer form on the train items and keeps its knowledge
for the held-out subjects: a fine-tuning effect a 135M model shows in tens of steps.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import HarnessError

Template = Literal["alpaca", "plain"]
TEMPLATES = ("alpaca", "plain")
BUILTIN = "builtin"
HUB_PREFIX = "hf:"

# alpaca-lora's prompt templates (templates/alpaca.json), with and without an input
_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    instruction: str
    output: str
    input: str = ""
    group: str = ""
    task: str = ""

    def prompt(self, template: Template) -> str:
        """The text before the completion, in ``template``'s layout."""
        if template == "alpaca":
            layout = _ALPACA_INPUT if self.input else _ALPACA
            return layout.format(instruction=self.instruction, input=self.input)
        extra = f"\n{self.input}" if self.input else ""
        return f"Question: {self.instruction}{extra}\nAnswer:"

    def completion(self, template: Template) -> str:
        """What the model is trained to write (the tokenizer's end token is added after it)."""
        return self.output if template == "alpaca" else f" {self.output}"


@dataclass(frozen=True)
class InstructionData:
    name: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    split_rule: str

    @property
    def heldout_sha256(self) -> str:
        return _digest(self.heldout)

    @property
    def train_sha256(self) -> str:
        return _digest(self.train)


def _digest(examples: tuple[Example, ...]) -> str:
    blob = json.dumps([[e.instruction, e.input, e.output] for e in examples])
    return hashlib.sha256(blob.encode()).hexdigest()


class DataUnavailable(HarnessError):
    """A hub dataset that cannot be had here (offline, not cached): a skipped row."""


def _heldout_group(group: str, fraction: float, salt: str) -> bool:
    """Whether ``group`` is held out: a stable hash of its name, the same on every machine."""
    return zlib.crc32(f"{salt}:{group}".encode()) / 2**32 < fraction


def split_examples(
    name: str, examples: list[Example], fraction: float, salt: str = "heldout"
) -> InstructionData:
    """Held-out = the groups whose hash falls under ``fraction``; the rest is train."""
    if not examples:
        raise HarnessError(f"instruction data {name} has no examples")
    held = tuple(e for e in examples if _heldout_group(e.group, fraction, salt))
    train = tuple(e for e in examples if not _heldout_group(e.group, fraction, salt))
    if not held or not train:
        raise HarnessError(
            f"instruction data {name}: a held-out fraction of {fraction} over "
            f"{len({e.group for e in examples})} distinct questions leaves "
            f"{len(train)} train and {len(held)} held-out examples; both need at least one"
        )
    rule = f"group-hash<{fraction}:{salt}"
    return InstructionData(name, train, held, rule)


# ---- the builtin set ------------------------------------------------------------------------


def builtin_examples() -> list[Example]:
    """Short-answer questions from the builtin tasks' word lists, in a fixed order."""
    from harness.data.tasks.words import ANTONYM_GROUPS, CATEGORIES, COUNTRIES, PLURALS

    out: list[Example] = []
    for country, capital, continent in COUNTRIES:
        group = f"country:{country}"
        out.append(Example(f"What is the capital of {country}?", capital, "", group, "capital"))
        if continent:
            q = f"On which continent is {country}?"
            out.append(Example(q, continent, "", group, "continent"))
    for singular, plural in PLURALS:
        q = f'What is the plural of "{singular}"?'
        out.append(Example(q, plural, "", f"plural:{singular}", "plural"))
    for pairs in ANTONYM_GROUPS:
        for a, b in pairs:  # both directions of a pair share its group
            group = f"antonym:{a}/{b}"
            out.append(Example(f'What is the opposite of "{a}"?', b, "", group, "antonym"))
            out.append(Example(f'What is the opposite of "{b}"?', a, "", group, "antonym"))
    for category, words in CATEGORIES.items():
        for word in words:
            q = f'What kind of thing is "{word}"?'
            out.append(Example(q, category, "", f"category:{word}", "category"))
    return out


BUILTIN_HELDOUT_FRACTION = 0.25


def builtin_data() -> InstructionData:
    return split_examples(BUILTIN, builtin_examples(), BUILTIN_HELDOUT_FRACTION, "builtin-v1")


# ---- user data ------------------------------------------------------------------------------


def _from_mapping(row: dict, where: str) -> Example:
    """alpaca (``instruction``/``input``/``output``) or ``prompt``/``completion`` keys."""
    if "instruction" in row and "output" in row:
        instruction, inp, output = row["instruction"], row.get("input") or "", row["output"]
    elif "prompt" in row and "completion" in row:
        instruction, inp, output = row["prompt"], "", row["completion"]
    else:
        raise HarnessError(
            f"{where}: expected keys instruction/input/output (alpaca) or prompt/completion; "
            f"got {', '.join(sorted(map(str, row))) or 'none'}"
        )
    if not all(isinstance(v, str) for v in (instruction, inp, output)):
        raise HarnessError(f"{where}: instruction, input and output must be strings")
    if not output.strip():
        raise HarnessError(f"{where}: empty output")
    return Example(instruction, output, inp, f"{instruction}\n{inp}", "user")


def jsonl_examples(path: Path) -> list[Example]:
    if not path.is_file():
        raise HarnessError(f"instruction data file {path} not found")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise HarnessError(f"{path}:{number}: each line must be a JSON object")
        out.append(_from_mapping(row, f"{path}:{number}"))
    return out


def hub_examples(name: str) -> list[Example]:
    """A Hugging Face dataset's train split through ``datasets`` (alpaca or prompt/completion
    columns); DataUnavailable when it cannot be had here."""
    try:
        from datasets import load_dataset

        data = load_dataset(name, split="train")
    except Exception as exc:  # offline, not cached, or the hub refused
        raise DataUnavailable(
            f"dataset '{name}' is not available: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    return [_from_mapping(dict(row), f"{name}[{i}]") for i, row in enumerate(data)]


def load_instructions(source: str, heldout_fraction: float) -> InstructionData:
    """``builtin``, ``hf:<dataset>`` or a path to a JSONL file."""
    if source == BUILTIN:
        return builtin_data()
    if source.startswith(HUB_PREFIX):
        name = source[len(HUB_PREFIX) :]
        return split_examples(f"hf:{name}", hub_examples(name), heldout_fraction)
    path = Path(source)
    return split_examples(f"jsonl:{path.name}", jsonl_examples(path), heldout_fraction)


def spread(examples: tuple[Example, ...], n: int | None, seed: int = 0) -> list[Example]:
    """``n`` examples in a fixed shuffled order (all when ``n`` is None): the same items for
    every cell of an experiment, whatever its own seed."""
    items = list(examples)
    random.Random(seed).shuffle(items)
    return items if n is None else items[:n]
