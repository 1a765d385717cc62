"""The literal data of the builtin tasks, read once from ``words.json`` (shipped with the package).

Kept as data so the generators stay code and a word list can be reviewed on its own; the
generators see the same tuples they always did, so the items (pinned by sha256 in the tests)
do not change.
"""

from __future__ import annotations

import json
from importlib.resources import files

_DATA = json.loads(files("harness.data.tasks").joinpath("words.json").read_text("utf-8"))

CONTINENTS: tuple[str, ...] = tuple(_DATA["continents"])
COUNTRIES: tuple[tuple[str, str, str | None], ...] = tuple(tuple(c) for c in _DATA["countries"])
"""(country, capital, continent); see ``notes`` in words.json for what was left out and why."""
ANTONYM_GROUPS: tuple[tuple[tuple[str, str], ...], ...] = tuple(
    tuple(tuple(pair) for pair in group) for group in _DATA["antonym_groups"]
)
CATEGORIES: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _DATA["categories"].items()}
PLURALS: tuple[tuple[str, str], ...] = tuple(tuple(p) for p in _DATA["plurals"])
