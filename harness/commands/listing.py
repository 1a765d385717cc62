"""``harness list``: what can go in an experiment file."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_listing(console: Console) -> None:
    from harness.models import BUILTIN, SYNTHETIC
    from harness.schemes import REGISTRY
    from harness.workloads import WORKLOADS

    precisions = Table("precision", "description", title="Precisions")
    for entry in REGISTRY.values():
        precisions.add_row(entry.name, entry.description)
    models = Table("model", "description", title="Models")
    for name, text in BUILTIN.items():
        models.add_row(f"builtin:{name}", text)
    for name, (text, _) in SYNTHETIC.items():
        models.add_row(f"synthetic:{name}", text)
    models.add_row("PATH", "a local Hugging Face model directory (with config.json)")
    models.add_row(
        "ORG/NAME", "a Hugging Face hub id (downloaded only when an experiment names it)"
    )
    workloads = Table("workload", "description", title="Workloads")
    for entry in WORKLOADS.values():
        workloads.add_row(entry.name, entry.description)
    for table in (precisions, models, workloads):
        console.print(table)
