"""Generators of the builtin tasks' items: seeded, deterministic, balanced answer positions."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from harness.data.tasks.words import ANTONYM_GROUPS, CATEGORIES, CONTINENTS, COUNTRIES, PLURALS

SUITE_TAG = "harness_builtin"
TASK_PREFIX = "harness_"
DEFAULT_SEED = 20240611

Item = dict  # {"question": str, "choices": list[str], "label": int}


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(seed * 1_000_003 + zlib.crc32(name.encode("utf-8")))


def _place(rng: random.Random, answer: str, distractors: list[str], position: int) -> Item:
    """Return choices with ``answer`` at ``position`` and the distractors (shuffled) around it."""
    others = list(distractors)
    rng.shuffle(others)
    choices = others[:position] + [answer] + others[position:]
    return {"choices": choices, "label": position}


def _balanced_positions(rng: random.Random, n_items: int, n_choices: int) -> list[int]:
    positions = [i % n_choices for i in range(n_items)]
    rng.shuffle(positions)
    return positions


def _finish(
    rng: random.Random, raw: list[tuple[str, str, list[str]]], n_choices: int
) -> list[Item]:
    """Turn ``(question, answer, distractors)`` triples into items with balanced labels."""
    positions = _balanced_positions(rng, len(raw), n_choices)
    items = []
    for (question, answer, distractors), pos in zip(raw, positions, strict=True):
        if len(distractors) != n_choices - 1 or answer in distractors:
            raise AssertionError(f"bad distractors for {question!r}: {distractors}")
        item = _place(rng, answer, distractors, pos)
        items.append({"question": question, **item})
    return items


def _pick(rng: random.Random, pool: list[str], exclude: set[str], k: int) -> list[str]:
    candidates = sorted(set(pool) - exclude)
    return rng.sample(candidates, k)


def gen_capitals(seed: int) -> list[Item]:
    rng = _rng(seed, "capitals")
    capitals = [c[1] for c in COUNTRIES]
    countries = [c[0] for c in COUNTRIES]
    raw = []
    for country, capital, _ in COUNTRIES:
        raw.append(
            (f"What is the capital of {country}?", capital, _pick(rng, capitals, {capital}, 3))
        )
    for country, capital, _ in COUNTRIES:
        name = country[4:] if country.startswith("the ") else country
        wrong = [c[4:] if c.startswith("the ") else c for c in _pick(rng, countries, {country}, 3)]
        raw.append((f"{capital} is the capital city of which country?", name, wrong))
    rng.shuffle(raw)
    return _finish(rng, raw, 4)


def gen_continents(seed: int) -> list[Item]:
    rng = _rng(seed, "continents")
    raw = []
    for country, capital, continent in COUNTRIES:
        if continent is None:
            continue
        raw.append(
            (
                f"On which continent is {country}?",
                continent,
                _pick(rng, list(CONTINENTS), {continent}, 3),
            )
        )
        raw.append(
            (
                f"On which continent is the city of {capital}?",
                continent,
                _pick(rng, list(CONTINENTS), {continent}, 3),
            )
        )
    rng.shuffle(raw)
    return _finish(rng, raw, 4)


def gen_antonyms(seed: int) -> list[Item]:
    rng = _rng(seed, "antonyms")
    raw = []
    for g, group in enumerate(ANTONYM_GROUPS):
        pool = [w for h, other in enumerate(ANTONYM_GROUPS) if h != g for p in other for w in p]
        for a, b in group:
            for word, opposite in ((a, b), (b, a)):
                raw.append(
                    (f"What is the opposite of {word}?", opposite, _pick(rng, pool, set(), 3))
                )
    rng.shuffle(raw)
    return _finish(rng, raw, 4)


def gen_arithmetic(seed: int, n: int = 400) -> list[Item]:
    rng = _rng(seed, "arithmetic")
    pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
    rng.shuffle(pairs)
    raw = []
    for a, b in pairs[:n]:
        answer = a + b
        offsets = [d for d in range(-10, 11) if d != 0 and answer + d >= 0]
        wrong = [str(answer + d) for d in rng.sample(offsets, 3)]
        raw.append((f"What is {a} + {b}?", str(answer), wrong))
    return _finish(rng, raw, 4)


def gen_comparisons(seed: int, n: int = 400) -> list[Item]:
    rng = _rng(seed, "comparisons")
    raw = []
    seen: set[tuple[int, int]] = set()
    while len(raw) < n:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        larger = rng.random() < 0.5
        answer = max(a, b) if larger else min(a, b)
        other = min(a, b) if larger else max(a, b)
        word = "larger" if larger else "smaller"
        raw.append((f"Which number is {word}, {a} or {b}?", str(answer), [str(other)]))
    return _finish(rng, raw, 2)


def gen_categories(seed: int, per_word: int = 2) -> list[Item]:
    rng = _rng(seed, "categories")
    names = sorted(CATEGORIES)
    raw = []
    for category in names:
        pool = [w for c in names if c != category for w in CATEGORIES[c]]
        for word in CATEGORIES[category]:
            for _ in range(per_word):
                raw.append((f"Which of these is {category}?", word, _pick(rng, pool, set(), 3)))
    rng.shuffle(raw)
    return _finish(rng, raw, 4)


def _wrong_plurals(singular: str, plural: str) -> list[str]:
    cands = [singular + "s", singular + "es", singular, singular + "en", singular + "ies"]
    if singular.endswith("y"):
        cands += [singular[:-1] + "ies", singular + "s"]
    if singular.endswith("f") or singular.endswith("fe"):
        cands.append(singular.rstrip("e")[:-1] + "ves")
    out = []
    for c in cands:
        if c != plural and c not in out:
            out.append(c)
    return out


def gen_plurals(seed: int) -> list[Item]:
    rng = _rng(seed, "plurals")
    raw = []
    for singular, plural in PLURALS:
        wrong = rng.sample(_wrong_plurals(singular, plural), 3)
        raw.append((f"What is the plural of {singular}?", plural, wrong))
        wrong = rng.sample(_wrong_plurals(singular, plural), 3)
        raw.append((f"Complete the phrase: one {singular}, two ...", plural, wrong))
    rng.shuffle(raw)
    return _finish(rng, raw, 4)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    num_choices: int
    generate: Callable[[int], list[Item]]

    @property
    def chance(self) -> float:
        return 1.0 / self.num_choices


_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec("harness_capitals", "capital of a country, and country of a capital", 4, gen_capitals),
    TaskSpec(
        "harness_continents", "continent of a country or of a capital city", 4, gen_continents
    ),
    TaskSpec("harness_antonyms", "opposite of a common English word", 4, gen_antonyms),
    TaskSpec("harness_arithmetic", "sum of two numbers from 1 to 20", 4, gen_arithmetic),
    TaskSpec("harness_comparisons", "larger or smaller of two numbers", 2, gen_comparisons),
    TaskSpec("harness_categories", "which word belongs to a category", 4, gen_categories),
    TaskSpec("harness_plurals", "plural form of an English noun", 4, gen_plurals),
)

TASK_SPECS: dict[str, TaskSpec] = {s.name: s for s in _SPECS}

BUILTIN_TASKS: dict[str, dict] = {
    s.name: {"description": s.description, "num_choices": s.num_choices, "chance": s.chance}
    for s in _SPECS
}


def generate_items(name: str, seed: int = DEFAULT_SEED) -> list[Item]:
    """Items of one builtin task (deterministic for a given seed)."""
    try:
        spec = TASK_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown builtin task {name!r}; known: {sorted(TASK_SPECS)}") from None
    return spec.generate(seed)
