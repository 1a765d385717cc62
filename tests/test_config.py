"""Experiment validation, matrix expansion and cell ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import expand, load_experiment
from harness.errors import ConfigError, HarnessError
from tests.conftest import TINY_EXPERIMENT, write_experiment


def test_valid_file_expands_to_matrix(tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT))
    cells = expand(exp, "cpu")
    assert [c.precision for c in cells] == ["fp32", "bf16"]
    assert cells[0].precision_options == {"dtype": "float32", "tf32": False}
    assert cells[0].workloads.perplexity.window == 64
    assert cells[0].workloads.enabled() == ["footprint", "perplexity"]


INVALID = {
    "unknown top-level key": (
        TINY_EXPERIMENT + "colour: red\n",
        ["colour: unknown key", "allowed keys: name, description, models"],
    ),
    "unknown nested key": (
        TINY_EXPERIMENT.replace("window: 64", "window: 64, stride: 2"),
        ["workloads.perplexity.stride: unknown key", "allowed keys: enabled, corpus, max_tokens"],
    ),
    "unknown precision": (
        TINY_EXPERIMENT.replace("[fp32, bf16]", "[fp32, fp8]"),
        ["precisions.1.name", "unknown precision 'fp8'", "allowed: fp32, tf32, fp16, bf16"],
    ),
    "wrong type": (
        TINY_EXPERIMENT.replace("timeout_s: 120", "timeout_s: soon"),
        ["timeout_s:", "valid number", "'soon'"],
    ),
    "missing models": (
        TINY_EXPERIMENT.replace("models: [synthetic:tiny-llama]\n", ""),
        ["models: required key is missing"],
    ),
    "unknown adapter": (
        TINY_EXPERIMENT + "adapters: [dora]\n",
        ["adapters", "unknown adapter 'dora'", "allowed: none"],
    ),
    "bad precision option": (
        TINY_EXPERIMENT.replace("[fp32, bf16]", "[{name: fp32, dtype: int3}]"),
        ["bad options for precision 'fp32'", "dtype", "allowed options: dtype, tf32"],
    ),
    "not yaml": ("name: [unclosed\n", ["not valid YAML"]),
    "not a mapping": ("- a\n- b\n", ["top level must be a mapping"]),
    "bad name": (TINY_EXPERIMENT.replace("name: tiny", "name: a/b"), ["name:", "pattern"]),
    "agreement baseline not among the precisions": (
        TINY_EXPERIMENT + "  agreement: {enabled: true, baseline: nf4}\n",
        ["workloads.agreement.baseline 'nf4'", "allowed: fp32, bf16"],
    ),
    "negative batch": (
        TINY_EXPERIMENT.replace("inference: {enabled: false}", "inference: {batch_size: 0}"),
        ["workloads.inference.batch_size", "greater than or equal to 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_files_name_file_key_and_allowed_values(tmp_path: Path, case: str) -> None:
    text, expected = INVALID[case]
    path = write_experiment(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")


def _tiny_cell(tmp_path: Path, text: str = TINY_EXPERIMENT):
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", text)), "cpu")[0]


def test_cell_id_is_stable_and_readable(tmp_path: Path) -> None:
    first, second = _tiny_cell(tmp_path), _tiny_cell(tmp_path)
    assert first.id == second.id
    assert first.id.startswith("tiny-llama__fp32__none__s0__")
    assert len(first.id.rsplit("__", 1)[1]) == 10


VARIATIONS = [
    ("window: 64", "window: 32"),
    ("max_tokens: 256", "max_tokens: 128"),
    ("footprint: {}", "footprint: {enabled: false}"),
    ("inference: {enabled: false}", "inference: {enabled: false, repeats: 5}"),
    ("[fp32, bf16]", "[{name: fp32, tf32: true}]"),
    ("[synthetic:tiny-llama]", "[builtin:smollm2-135m]"),
    ("timeout_s: 120", "timeout_s: 120\nseeds: [1]"),
]


@pytest.mark.parametrize("old,new", VARIATIONS)
def test_cell_id_changes_with_every_setting(tmp_path: Path, old: str, new: str) -> None:
    base = _tiny_cell(tmp_path)
    assert old in TINY_EXPERIMENT
    changed = _tiny_cell(tmp_path, TINY_EXPERIMENT.replace(old, new))
    assert changed.id != base.id


def test_cell_id_depends_on_device_not_on_timeout_or_experiment_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _tiny_cell(tmp_path)
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert expand(exp, "cuda")[0].id != base.id
    renamed = TINY_EXPERIMENT.replace("name: tiny", "name: other").replace("120", "999")
    assert _tiny_cell(tmp_path, renamed).id == base.id


def test_every_committed_experiment_file_validates() -> None:
    root = Path(__file__).resolve().parent.parent / "experiments"
    files = sorted(p for p in root.rglob("*.yaml") if p.name != "claims.yaml")
    assert files, "no experiment files found"
    for path in files:
        exp = load_experiment(path)
        assert expand(exp, "cpu"), path


def test_cuda_requested_without_a_gpu_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    exp = load_experiment(write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT))
    with pytest.raises(HarnessError, match="no CUDA GPU"):
        expand(exp, "cuda")
    assert expand(exp, "auto")[0].device == "cpu"


def test_documented_example_experiments_validate(tmp_path: Path) -> None:
    import re

    root = Path(__file__).resolve().parent.parent
    cli = (root / "docs" / "cli.md").read_text()
    block = re.search(r"## An experiment file\n\n```yaml\n(.*?)```", cli, re.S)
    assert block, "docs/cli.md lost its example experiment"
    exp = load_experiment(write_experiment(tmp_path / "cli.yaml", block.group(1)))
    assert "accuracy" in exp.workloads.enabled() and exp.precisions[-1].options
    readme = (root / "README.md").read_text()
    own = re.search(r"## On your own model and GPU\n.*?```yaml\n(.*?)```", readme, re.S)
    assert own, "README lost its own-model example"
    exp = load_experiment(write_experiment(tmp_path / "own.yaml", own.group(1)))
    assert exp.workloads.finetune.enabled and exp.workloads.finetune.data.startswith("hf:")


def test_a_cell_target_changes_cpu_ids_only_where_set() -> None:
    from tests.conftest import tiny_cell

    plain = tiny_cell("fp32")
    assert "cell_target_s" not in plain.content()
    targeted = plain.model_copy(update={"cell_target_s": 90.0})
    assert targeted.id != plain.id and targeted.content()["cell_target_s"] == 90.0
    on_gpu = plain.model_copy(update={"device": "cuda"})
    assert on_gpu.model_copy(update={"cell_target_s": 90.0}).id == on_gpu.id  # CPU only
