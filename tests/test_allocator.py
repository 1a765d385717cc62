"""The allocator's two settings: tracked phases hand large blocks back at once, timed calls
reuse them from the heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.measure import allocator
from harness.measure.memory import track_phase
from tests.conftest import tiny_cell

_PROBE = """
import ctypes, sys
from harness.measure import allocator

from harness.measure.allocator import _MallInfo2 as MallInfo2

libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    sys.exit(77)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
for mode in sys.argv[1:]:
    allocator.use(mode)
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 20)
    print(mode, libc.mallinfo2().hblks - before)
    libc.free(block)
"""


def _mapped_1mib_blocks(*modes: str) -> dict[str, int]:
    """Per mode, how many mappings of its own glibc gave a 1 MiB block (``mallinfo2().hblks``),
    in a fresh interpreter: blocks this test process freed earlier would be reused instead."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *modes], capture_output=True, text=True)
    if done.returncode == 77:
        pytest.skip("glibc without mallinfo2")
    assert done.returncode == 0, done.stderr
    return {mode: int(n) for mode, n in (line.split() for line in done.stdout.splitlines())}


def test_memory_settings_map_a_1mib_block_and_timing_settings_do_not() -> None:
    assert _mapped_1mib_blocks("memory", "timing") == {"memory": 1, "timing": 0}


@pytest.mark.parametrize("outside", ["memory", "timing"])
def test_windows_set_their_mode_and_restore_the_previous_one(outside) -> None:
    allocator.use(outside)
    with track_phase("cpu"):
        assert allocator.current() == "memory"
    assert allocator.current() == outside
    with allocator.timing_window():
        assert allocator.current() == "timing"
    assert allocator.current() == outside
    with pytest.raises(RuntimeError), track_phase("cpu"):
        raise RuntimeError("a failing phase")
    assert allocator.current() == outside  # restored even when the body raises


def test_the_settings_are_described_as_they_are() -> None:
    allocator.use("timing")
    assert allocator.describe("memory") == "glibc mmap threshold 128 KiB, trim threshold 128 KiB"
    assert allocator.describe("timing") == "glibc mmap threshold 32 MiB, trim threshold 64 MiB"


def test_a_tracked_phase_reports_the_free_heap_it_started_with(monkeypatch) -> None:
    monkeypatch.setattr("harness.measure.memory.heap_free_bytes", lambda: 12345)
    with track_phase("cpu") as phase:
        pass
    assert phase["heap_free_at_start_bytes"] == 12345


_HEAP_PROBE = """
import ctypes
from harness.measure import allocator

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.malloc_trim(0)
before = allocator.heap_free_bytes()
with allocator.timing_window():  # 8 MiB from the heap, then 1 MiB above it; free the 8
    block = libc.malloc(8 << 20)
    keep = libc.malloc(1 << 20)  # from the top of the heap, above the block
    libc.free(block)
libc.malloc_trim(0)  # pages handed back, the free block stays
print(before, allocator.heap_free_bytes())
"""


def test_heap_blocks_freed_under_timing_settings_show_as_free_heap() -> None:
    done = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = (int(v) for v in done.stdout.split())
    assert after - before >= 7 << 20  # the 8 MiB block, less small blocks carved from it


def test_a_cell_runs_workloads_without_memory_phases_in_a_timing_window(tiny_source, monkeypatch):
    import harness.workloads as workloads
    from harness.runner.cell import run_cell

    seen: dict[str, str | None] = {}
    real = workloads.get_runner

    def recording(name):
        def run(*args):
            seen[name] = allocator.current()
            return real(name)(*args)

        return run

    monkeypatch.setattr(workloads, "get_runner", recording)
    cell = tiny_cell(
        inference={"prompt_len": 8, "new_tokens": 4, "repeats": 1},
        perplexity={"max_tokens": 64, "window": 32},
    )
    assert run_cell(cell)["status"] == "ok"
    # inference tracks memory itself (the cell's memory settings); the others are timed whole
    assert seen == {"footprint": "timing", "inference": "memory", "perplexity": "timing"}
    assert allocator.current() == "memory"
