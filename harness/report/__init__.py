"""Reports from one or more results directories: figures, claims, tables, environment.

Several directories (e.g. a CPU and a GPU run of one experiment) are concatenated with a
``run`` label column; every figure facets or marks by that label so runs sit side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError

ENV_COLUMNS = [
    "device", "device_name", "driver", "cuda", "python", "platform", "cpu", "cpu_count",
    "torch_threads", "memory_total_bytes", "git_sha", "ray_node_ip",
]
RESULTS_DIRS = "results_dirs"
"""``frame.attrs`` key of a loaded table: run label -> its results directory, so a report can
read what only the cell records hold (the fine-tuning curves' steps)."""


def run_labels(dirs: list[Path]) -> list[str]:
    """Short unique labels: the directory name, or parent/name when names clash."""
    names = [d.resolve().name for d in dirs]
    if len(set(names)) == len(names):
        return names
    labels = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in dirs]
    return labels if len(set(labels)) == len(labels) else [f"{i}:{n}" for i, n in enumerate(names)]


def load_runs(dirs: list[Path], labels: list[str] | None = None) -> Any:
    """Read every results directory into one tidy table with a ``run`` column (and the
    directories in ``attrs[RESULTS_DIRS]``).

    A missing, empty or unreadable directory is a HarnessError naming it.
    """
    import pandas as pd

    from harness.results import load_table

    if not dirs:
        raise HarnessError("no results directory given")
    labels = labels or run_labels(dirs)
    if len(labels) != len(dirs):
        raise HarnessError(f"{len(labels)} labels for {len(dirs)} results directories")
    frames = []
    for path, label in zip(dirs, labels, strict=True):
        if not path.is_dir():
            raise HarnessError(f"results directory {path} does not exist")
        frame = load_table(path)
        if frame.empty:
            raise HarnessError(f"results directory {path} holds no cells")
        missing = {"cell_id", "precision", "metric", "value", "cell_status"} - set(frame.columns)
        if missing:
            raise HarnessError(f"results table in {path} lacks columns {sorted(missing)}")
        frames.append(frame.assign(run=label))
    out = normalize(pd.concat(frames, ignore_index=True))
    out.attrs[RESULTS_DIRS] = {label: str(path) for path, label in zip(dirs, labels, strict=True)}
    return out


def normalize(frame: Any) -> Any:
    """Plain object/float columns and the optional columns figures rely on."""
    import pandas as pd

    frame = frame.copy()
    for column, default in (("run", ""), ("model", ""), ("adapter", "none"), ("stat", None),
                            ("status", "ok"), ("workload", None), ("error", None),
                            ("unit", None), ("rank", None)):
        if column not in frame:
            frame[column] = default
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["rank"] = pd.to_numeric(frame["rank"], errors="coerce")
    for column in frame.columns:
        if str(frame[column].dtype) in ("string", "str"):
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["stat"] = frame["stat"].where(frame["stat"].notna() & (frame["stat"] != ""), None)
    return frame


def metric_values(frame: Any, metric: str, stat: str | None = None) -> Any:
    """Ok rows of one metric (and stat; None = the unsummarised value or the median)."""
    rows = frame[(frame["metric"] == metric) & (frame["status"] == "ok")]
    if stat is None:
        rows = rows[rows["stat"].isna() | (rows["stat"] == "median")]
    else:
        rows = rows[rows["stat"] == stat]
    return rows.dropna(subset=["value"])


def panels(frame: Any) -> list[tuple[str, Any]]:
    """(title, rows) per run and model, in the tables' order; titles only say what differs."""
    keys = frame[["run", "model"]].drop_duplicates()
    many_runs, many_models = frame["run"].nunique() > 1, frame["model"].nunique() > 1
    out = []
    for run, model in keys.itertuples(index=False):
        parts = ([str(run)] if many_runs else []) + ([str(model)] if many_models else [])
        out.append((" · ".join(parts), frame[(frame["run"] == run) & (frame["model"] == model)]))
    return out


def cell_table(frame: Any) -> Any:
    """One row per cell: run, model, precision, adapter, status, error (first failing row)."""
    cells = frame.drop_duplicates(["run", "cell_id"])[
        ["run", "cell_id", "model", "precision", "adapter", "cell_status"]
    ].copy()
    errors = {}
    for (run, cell_id), rows in frame.groupby(["run", "cell_id"], sort=False):
        bad = rows[(rows["status"] != "ok") & rows["error"].notna()]
        if len(bad):
            first = bad.iloc[0]
            where = f"{first['workload']}: " if isinstance(first["workload"], str) else ""
            errors[(run, cell_id)] = where + str(first["error"]).strip().splitlines()[-1][:200]
    cells["error"] = [errors.get((r, c), "") for r, c in zip(cells["run"], cells["cell_id"],
                                                              strict=True)]
    return cells.reset_index(drop=True)


def problems_table(frame: Any) -> Any:
    """Cells not ok, and failed workloads inside ok cells: nothing failed may vanish."""
    cells = cell_table(frame)
    failed_rows = frame[(frame["cell_status"] == "ok") & (frame["status"] != "ok")]
    bad_cells = set(failed_rows["cell_id"])
    mask = (cells["cell_status"] != "ok") | cells["cell_id"].isin(bad_cells)
    out = cells[mask].copy()
    out["status"] = [
        s if s != "ok" else "ok (workload " + ", ".join(
            sorted(set(failed_rows[failed_rows["cell_id"] == c]["status"]))) + ")"
        for s, c in zip(out["cell_status"], out["cell_id"], strict=True)
    ]
    return out[["run", "model", "precision", "adapter", "status", "error"]]


def capped_table(frame: Any) -> Any:
    """Cells that ran a smaller budget than their experiment asked for, and why
    (``harness.budget``): their figures rest on fewer tokens and items."""
    capped = frame[frame["metric"] == "budget.capped"]
    out = capped[["run", "model", "precision", "adapter"]].copy()
    out["why and caps"] = capped["method"].to_numpy()
    return out.reset_index(drop=True)


def environment_table(frame: Any) -> Any:
    """Environment of each run: device, versions, git sha (one column per run)."""
    import pandas as pd

    columns = [c for c in ENV_COLUMNS if c in frame] + sorted(
        c for c in frame.columns if c.endswith("_version")
    )
    data = {}
    for run, rows in frame.groupby("run", sort=False):
        first = rows.iloc[0]
        data[run] = [("" if pd.isna(first[c]) else str(first[c])) for c in columns]
    return pd.DataFrame(data, index=columns).rename_axis("key").reset_index()
