import hashlib
import os

import pytest

from harness.data import tasks as T

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# sha256 of each generated <task>.jsonl.  A change here means the items changed, so the
# accuracies recorded in harness/data/tasks.py no longer apply and must be measured again.
GOLDEN_SHA256 = {
    "harness_capitals": "4bb2a1407f6b1289b47ca9662e2ea863947f67c416b5b0c16bf5fa2013038b45",
    "harness_continents": "c626b3fad9221a09b9bc3ad570bc6ef8af0d42d330eaf0e2e520f4bb3574bd21",
    "harness_antonyms": "dc14d8d12a653cd571e061c745c169c27e41c41358a7a17934ed063e941441f5",
    "harness_arithmetic": "0444b54499bfdd549b13f5f61bd2c37e6289484abac5b8b1a11bbc6b22a99307",
    "harness_comparisons": "99eeae7ece9ef1a8dd319bfad42b1b18562b1d7514219a2ac6a845574e4c0e98",
    "harness_categories": "272f9b8bb1ac08394efc2f2818340231b14eeeacd7f15bb8c4f85e8f5e81caa0",
    "harness_plurals": "6b7c6ef1aa015c0b7af245a9b36c96f202a4736db703f16af4e6a98fa24a497e",
}


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    names = T.write_task_suite(out)
    assert names == list(T.BUILTIN_TASKS)
    return out


def test_builtin_tasks_metadata():
    assert len(T.BUILTIN_TASKS) >= 4
    for name, info in T.BUILTIN_TASKS.items():
        assert name.startswith("harness_")
        assert info["description"]
        assert info["chance"] == pytest.approx(1.0 / info["num_choices"])


@pytest.mark.parametrize("name", list(T.BUILTIN_TASKS))
def test_items_are_well_formed(name):
    items = T.generate_items(name)
    k = T.BUILTIN_TASKS[name]["num_choices"]
    assert 200 <= len(items) <= 600
    for it in items:
        assert len(it["choices"]) == k
        assert len(set(it["choices"])) == k, it
        assert 0 <= it["label"] < k
        assert all(c and c == c.strip() for c in it["choices"])
    # the correct position is balanced: each position within one of its fair share
    counts = [sum(it["label"] == p for it in items) for p in range(k)]
    assert max(counts) - min(counts) <= 1


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    T.write_task_suite(a)
    T.write_task_suite(b)
    for name in T.BUILTIN_TASKS:
        assert (a / f"{name}.jsonl").read_bytes() == (b / f"{name}.jsonl").read_bytes()
    assert T.generate_items("harness_arithmetic", seed=1) != T.generate_items("harness_arithmetic")


def test_generation_matches_golden_digest(suite_dir):
    digests = {
        name: hashlib.sha256((suite_dir / f"{name}.jsonl").read_bytes()).hexdigest()
        for name in T.BUILTIN_TASKS
    }
    assert digests == GOLDEN_SHA256


def test_write_is_idempotent(tmp_path):
    T.write_task_suite(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    for p in tmp_path.iterdir():
        os.utime(p, ns=(1, 1))
    T.write_task_suite(tmp_path)
    assert all(p.stat().st_mtime_ns == 1 for p in tmp_path.iterdir())
    assert set(stamps) == {f"{n}.{ext}" for n in T.BUILTIN_TASKS for ext in ("jsonl", "yaml")}
    # a damaged file is repaired
    victim = tmp_path / "harness_capitals.jsonl"
    victim.write_text("garbage\n")
    T.write_task_suite(tmp_path)
    assert victim.read_bytes() == T._jsonl_bytes(T.generate_items("harness_capitals"))


def test_yaml_points_at_absolute_data_file(suite_dir):
    text = (suite_dir / "harness_capitals.yaml").read_text()
    assert f'"{(suite_dir / "harness_capitals.jsonl").resolve()}"' in text
    assert "output_type: multiple_choice" in text
    assert "harness_builtin" in text


def test_unknown_builtin_task_raises():
    with pytest.raises(KeyError, match="harness_nope"):
        T.generate_items("harness_nope")


def test_tasks_load_through_lm_eval_offline(suite_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(suite_dir), include_defaults=False)
    assert set(T.BUILTIN_TASKS) <= set(tm.all_tasks)
    assert T.SUITE_TAG in tm.all_tasks
    loaded = tm.load(list(T.BUILTIN_TASKS))["tasks"]
    for name in T.BUILTIN_TASKS:
        task = loaded[name]
        docs = list(task.test_docs())
        items = T.generate_items(name)
        assert len(docs) == len(items)
        doc = docs[0]
        assert task.doc_to_text(doc) == f"Question: {items[0]['question']}\nAnswer:"
        assert task.doc_to_choice(doc) == items[0]["choices"]
        assert task.doc_to_target(doc) == items[0]["label"]
