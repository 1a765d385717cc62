"""lm-eval indexes only the task directories a cell needs (its bundled index takes seconds)."""

from pathlib import Path

from harness.data.lmeval import _task_manager


class FakeManager:
    """Records how it was built; knows the local tasks, plus bundled ones with defaults."""

    built: list[bool] = []

    def __init__(self, include_path=None, include_defaults=True):
        FakeManager.built.append(include_defaults)
        self.all_tasks = ["harness_pydoc_rolling", "harness_builtin"] if include_path else []
        if include_defaults:
            self.all_tasks += ["arc_easy"]


def test_local_tasks_never_index_the_bundled_ones(tmp_path: Path):
    FakeManager.built = []
    tm = _task_manager(FakeManager, [tmp_path], ["harness_pydoc_rolling", "harness_builtin"])
    assert FakeManager.built == [False]
    assert "arc_easy" not in tm.all_tasks


def test_a_task_missing_locally_falls_back_to_the_bundled_index(tmp_path: Path):
    FakeManager.built = []
    tm = _task_manager(FakeManager, [tmp_path], ["harness_builtin", "arc_easy"])
    assert FakeManager.built == [False, True]
    assert {"arc_easy", "harness_builtin"} <= set(tm.all_tasks)
    FakeManager.built = []
    _task_manager(FakeManager, [], ["arc_easy"])
    assert FakeManager.built == [True]


def test_real_task_manager_on_the_builtin_suite_is_fast(tmp_path: Path):
    import time

    from lm_eval.tasks import TaskManager

    from harness.data.tasks import write_task_suite

    write_task_suite(tmp_path)
    start = time.perf_counter()
    tm = _task_manager(TaskManager, [tmp_path], ["harness_builtin"])
    assert "harness_builtin" in tm.all_tasks
    assert len(tm.all_tasks) < 50  # the builtin suite, not lm-eval's thousands
    assert time.perf_counter() - start < 5
