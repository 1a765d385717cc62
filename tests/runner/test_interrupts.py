"""Interrupts and a dying driver leave no cell running, no half-written file, and resume works."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.config import expand, load_experiment
from harness.results import read_record
from harness.runner.isolation import Interrupted
from harness.runner.local import run_matrix
from harness.runner.worker import FAULT_ENV
from tests.conftest import write_experiment
from tests.runner.test_local import FAST


def cell_processes(marker: Path) -> list[int]:
    """Pids of live processes whose command line names ``marker`` (the results directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if str(marker) in cmdline and "harness.runner.worker" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_until(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def start_driver(exp: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "harness.cli", "run", str(exp), "--out", str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_driver_at_random_points_leaves_no_cell_and_resume_completes(
    tmp_path, synthetic_cache
) -> None:
    exp = write_experiment(tmp_path / "e.yaml", FAST)
    out = tmp_path / "out"
    env = {**os.environ, FAULT_ENV: "slow:*", f"{FAULT_ENV}_SECONDS": "1"}
    rng = random.Random()
    for signum in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM):
        # SIGINT/SIGTERM must find a cell running even if earlier rounds stored them all
        driver = start_driver(exp, out, env, *([] if signum == signal.SIGKILL else ["--force"]))
        if signum == signal.SIGKILL:
            delay = rng.uniform(0.3, 6.0)  # anywhere: startup, a cell, between cells
            time.sleep(delay)
        else:  # the driver has its handlers once a cell runs; then any moment of the cell
            assert wait_until(lambda: cell_processes(out), 60)
            delay = rng.uniform(0.0, 2.0)
            time.sleep(delay)
        driver.send_signal(signum)
        output = driver.communicate(timeout=60)[0].decode(errors="replace")
        where = f"{signum.name} after {delay:.2f} s"
        if signum != signal.SIGKILL and driver.returncode != 0:  # 0: it finished first
            assert driver.returncode == 128 + signum, (where, output[-2000:])
            assert "interrupted" in output
        assert wait_until(lambda: not cell_processes(out), 5), f"orphan cell after {where}"
    resumed = start_driver(exp, out, {**os.environ})
    output = resumed.communicate(timeout=180)[0].decode(errors="replace")
    assert resumed.returncode == 0, output[-2000:]
    cells = expand(load_experiment(exp), "cpu")
    stored = sorted(p.name for p in (out / "cells").iterdir())
    assert stored == sorted(f"{c.id}.json" for c in cells)  # nothing pending, no temp file
    assert all(read_record(out / "cells" / name)["status"] == "ok" for name in stored)
    assert not cell_processes(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_cell_whose_driver_is_sigkilled_ends_itself(tmp_path, synthetic_cache) -> None:
    """The cell would sleep forever: only its parent-death handling can end it."""
    exp = write_experiment(tmp_path / "e.yaml", FAST)
    out = tmp_path / "out"
    driver = start_driver(exp, out, {**os.environ, FAULT_ENV: "hang:*"})
    assert wait_until(lambda: cell_processes(out), 60)
    driver.kill()
    driver.wait(timeout=30)
    assert wait_until(lambda: not cell_processes(out), 3), "the cell outlived its driver"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_driver_ends_its_cell_before_it_returns(tmp_path, synthetic_cache) -> None:
    """In-process: the driver lives on, so only its own cleanup (not parent death) can act."""
    cells = expand(load_experiment(write_experiment(tmp_path / "e.yaml", FAST)), "cpu")[:1]
    out = tmp_path / "out"
    os.environ[FAULT_ENV] = "hang:*"
    before = signal.getsignal(signal.SIGTERM)
    try:
        timer = threading.Timer(0.1, _signal_when_running, (out,))
        timer.start()
        with pytest.raises(Interrupted):
            run_matrix(cells, out)
        timer.join()
    finally:
        del os.environ[FAULT_ENV]
    assert not cell_processes(out)  # at once: no waiting for the cell to notice
    assert not list(out.glob("cells/.*"))  # no pending or temporary file
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def _signal_when_running(out: Path) -> None:
    wait_until(lambda: cell_processes(out), 30)
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path) -> None:
    from harness.errors import HarnessError
    from harness.results_dir import ResultsDir

    results = ResultsDir(tmp_path / "out")
    with results.lock():
        held = results.lock()
        with pytest.raises(HarnessError, match="in use by another run"):
            held.__enter__()
    with results.lock():  # released with the first run
        pass


def test_stale_pending_and_temporary_files_are_removed(tmp_path) -> None:
    from harness.results_dir import ResultsDir

    out = tmp_path / "out"
    (out / "cells").mkdir(parents=True)
    stale = [out / "cells" / ".a.pending.json", out / "cells" / ".a.json.x1.tmp"]
    keep = out / "cells" / "a.json"
    for path in (*stale, keep):
        path.write_text("{}")
    assert sorted(ResultsDir(out).clean_stale()) == sorted(stale)
    assert [p.name for p in (out / "cells").iterdir()] == ["a.json"]


def test_a_cell_ended_by_sigterm_is_an_error_and_a_bare_sigkill_is_oom(tmp_path) -> None:
    from harness.config import Cell
    from harness.runner.isolation import failure_record
    from harness.runner.worker import ENDED_BY_SIGNAL
    from harness.workloads.settings import Workloads

    cell = Cell(experiment="t", model="synthetic:tiny-llama", precision="fp32",
                precision_options={}, adapter="none", seed=0, device="cpu", timeout_s=60,
                workloads=Workloads())  # fmt: skip
    log = tmp_path / "cell.log"
    log.write_text(f"loading\n{ENDED_BY_SIGNAL}\n")
    ended = failure_record(cell, -signal.SIGKILL, False, log, 0.0)
    assert ended["status"] == "error" and "SIGTERM" in ended["error"]
    log.write_text("loading\n")
    assert failure_record(cell, -signal.SIGKILL, False, log, 0.0)["status"] == "oom"
